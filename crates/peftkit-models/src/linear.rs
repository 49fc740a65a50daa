//! The linear seam: every projection of every model is a [`Linear`] that knows its HF path, and an
//! adapter can attach a [`LinearHook`] to it without the model knowing the adapter.

use tch::{nn, Tensor};

/// How the weight is stored, as in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `nn.Linear`: weight `[out, in]`.
    OutIn,
    /// GPT-2's `Conv1D`: weight `[in, out]` (peft's `fan_in_fan_out = True`).
    InOut,
}

/// Replaces the computation of one [`Linear`]: LoRA adds a low-rank path to
/// [`Linear::base_forward`]; QLoRA computes the base from a quantized weight instead.
pub trait LinearHook: std::fmt::Debug + Send {
    /// The layer's output for `x` (`[..., in_features]` → `[..., out_features]`).
    fn forward(&self, base: &Linear, x: &Tensor, train: bool) -> Tensor;
    /// Lets an owner downcast the hook (to merge, save or remove an adapter).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Mutable downcast.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// A linear projection at an HF module path (e.g. `transformer.h.3.attn.c_attn`), with its
/// checkpoint weight layout and an optional adapter hook.
#[derive(Debug)]
pub struct Linear {
    path: String,
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
    in_features: i64,
    out_features: i64,
    hook: Option<Box<dyn LinearHook>>,
}

impl Linear {
    /// Creates the parameters `weight` (and `bias`) under `vs`, normally initialised with `std`
    /// as transformers' `_init_weights` does (bias zero).
    pub fn new(
        vs: nn::Path,
        in_features: i64,
        out_features: i64,
        bias: bool,
        layout: WeightLayout,
        std: f64,
    ) -> Self {
        let shape = match layout {
            WeightLayout::OutIn => [out_features, in_features],
            WeightLayout::InOut => [in_features, out_features],
        };
        let weight = vs.var(
            "weight",
            &shape,
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let bias = bias.then(|| vs.var("bias", &[out_features], nn::Init::Const(0.0)));
        let path = vs.components().collect::<Vec<_>>().join(".");
        Self {
            path,
            weight,
            bias,
            layout,
            in_features,
            out_features,
            hook: None,
        }
    }

    /// The HF module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Input features.
    pub fn in_features(&self) -> i64 {
        self.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        self.out_features
    }

    /// The weight layout.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// The weight as stored (shallow handle: in-place changes affect the model).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Replaces the weight tensor (QLoRA swaps in an empty tensor once it has quantized it).
    pub fn replace_weight(&mut self, weight: Tensor) -> Tensor {
        std::mem::replace(&mut self.weight, weight)
    }

    /// Attaches a hook, returning the previous one.
    pub fn set_hook(&mut self, hook: Box<dyn LinearHook>) -> Option<Box<dyn LinearHook>> {
        self.hook.replace(hook)
    }

    /// Removes the hook.
    pub fn take_hook(&mut self) -> Option<Box<dyn LinearHook>> {
        self.hook.take()
    }

    /// The hook, if any.
    pub fn hook(&self) -> Option<&dyn LinearHook> {
        self.hook.as_deref()
    }

    /// The hook, mutably.
    pub fn hook_mut(&mut self) -> Option<&mut (dyn LinearHook + 'static)> {
        self.hook.as_deref_mut()
    }

    /// `x W^T + b` with the stored weight, ignoring any hook; in the compute dtype of
    /// [`crate::with_compute_dtype`] when one is set.
    pub fn base_forward(&self, x: &Tensor) -> Tensor {
        let cast = crate::precision::compute_dtype().filter(|k| *k != self.weight.kind());
        let (x, w, b) = match cast {
            Some(k) => (
                x.to_kind(k),
                self.weight.to_kind(k),
                self.bias.as_ref().map(|b| b.to_kind(k)),
            ),
            None => (
                x.shallow_clone(),
                self.weight.shallow_clone(),
                self.bias.as_ref().map(Tensor::shallow_clone),
            ),
        };
        match self.layout {
            WeightLayout::OutIn => x.linear(&w, b.as_ref()),
            WeightLayout::InOut => {
                // Conv1D: addmm(bias, x, W) over the flattened leading dimensions.
                let mut out_shape = x.size();
                *out_shape.last_mut().expect("input has a feature dimension") = self.out_features;
                let x2 = x.reshape([-1, self.in_features]);
                let y = match &b {
                    Some(b) => b.addmm(&x2, &w),
                    None => x2.matmul(&w),
                };
                y.reshape(out_shape.as_slice())
            }
        }
    }

    /// The layer's output: the hook's when one is attached, the base projection otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.hook {
            Some(h) => h.forward(self, x, train),
            None => self.base_forward(x),
        }
    }
}
