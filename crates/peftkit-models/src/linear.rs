//! The linear seam: every projection of every model is a [`Linear`] that knows its HF path, and an
//! adapter can attach a [`LinearHook`] to it without the model knowing the adapter.

use tch::{nn, Kind, Tensor};

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

/// A weight stored in a compressed form (e.g. 4-bit blocks): the layer unpacks it for each
/// product instead of holding a full-precision copy. Quantization lives outside the models;
/// this is only the storage seam.
pub trait PackedWeight: std::fmt::Debug + Send {
    /// The weight as `[out_features, in_features]` in `kind`, on the layer's device.
    fn unpack(&self, kind: Kind) -> Tensor;
    /// The dtype the product is computed in when no global one is set (bitsandbytes'
    /// `bnb_4bit_compute_dtype`); `None`: the input's.
    fn compute_dtype(&self) -> Option<Kind>;
    /// Number of weight elements represented.
    fn numel(&self) -> i64;
    /// Bytes of storage.
    fn storage_bytes(&self) -> i64;
    /// Another handle on the same storage (tensors shallow-cloned): the backward pass of a
    /// product unpacks the weight again through it instead of keeping the unpacked copy.
    fn share(&self) -> Box<dyn PackedWeight>;
    /// Lets an owner downcast the storage.
    fn as_any(&self) -> &dyn std::any::Any;
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
    packed: Option<Box<dyn PackedWeight>>,
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
            packed: None,
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

    /// The weight as `[out, in]` whatever the layout (a view of the stored weight; unpacked when
    /// packed).
    pub fn weight_out_in(&self, kind: Kind) -> Tensor {
        if let Some(p) = &self.packed {
            return p.unpack(kind);
        }
        let w = self.weight.to_kind(kind);
        match self.layout {
            WeightLayout::OutIn => w,
            WeightLayout::InOut => w.tr(),
        }
    }

    /// Stores the weight packed: `pack` gets the dense weight as `[out, in]` fp32 and returns the
    /// packed form; the dense storage is then released (the variable stays, empty, in the var
    /// store). Fails without changing anything when `pack` fails.
    pub fn pack<E>(
        &mut self,
        pack: impl FnOnce(&Tensor) -> std::result::Result<Box<dyn PackedWeight>, E>,
    ) -> std::result::Result<(), E> {
        let dense = self.weight_out_in(Kind::Float).detach();
        let packed = pack(&dense)?;
        drop(dense);
        let empty = Tensor::empty([0], (self.weight.kind(), self.weight.device()));
        tch::no_grad(|| self.weight.set_data(&empty));
        self.packed = Some(packed);
        Ok(())
    }

    /// Takes the packed weight out, restoring a dense weight (fp32, the checkpoint layout) from it.
    pub fn unpack(&mut self) -> Option<Box<dyn PackedWeight>> {
        let packed = self.packed.take()?;
        let dense = packed.unpack(Kind::Float);
        let dense = match self.layout {
            WeightLayout::OutIn => dense,
            WeightLayout::InOut => dense.tr().contiguous(),
        };
        tch::no_grad(|| self.weight.set_data(&dense));
        Some(packed)
    }

    /// Stores `packed` as the weight again (after [`Linear::unpack`]), releasing the dense one.
    pub fn repack(&mut self, packed: Box<dyn PackedWeight>) {
        let empty = Tensor::empty([0], (self.weight.kind(), self.weight.device()));
        tch::no_grad(|| self.weight.set_data(&empty));
        self.packed = Some(packed);
    }

    /// The packed weight, if the weight is stored packed.
    pub fn packed(&self) -> Option<&dyn PackedWeight> {
        self.packed.as_deref()
    }

    /// Number of weight elements (dense or packed).
    pub fn weight_numel(&self) -> i64 {
        self.in_features * self.out_features
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

    /// The hook when it is a `T` (an owner's typed view of its own hook).
    pub fn hook_as<T: 'static>(&self) -> Option<&T> {
        self.hook()?.as_any().downcast_ref::<T>()
    }

    /// The hook when it is a `T`, mutably.
    pub fn hook_as_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.hook_mut()?.as_any_mut().downcast_mut::<T>()
    }

    /// Runs `f` with the hook of type `T` taken out and the layer itself (a hook that changes the
    /// layer's weight, e.g. to merge, needs both); the hook is put back afterwards. `None` when
    /// the layer has no hook of that type.
    pub fn with_hook<T: 'static, R>(
        &mut self,
        f: impl FnOnce(&mut T, &mut Linear) -> R,
    ) -> Option<R> {
        let mut hook = self.hook.take()?;
        let out = hook.as_any_mut().downcast_mut::<T>().map(|h| f(h, self));
        self.hook = Some(hook);
        out
    }

    /// `x W^T + b` with the stored weight, ignoring any hook; in the compute dtype of
    /// [`crate::with_compute_dtype`] when one is set.
    pub fn base_forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.packed {
            // As bitsandbytes' Linear4bit: the product in the compute dtype, the output in the
            // input's dtype (unless a global compute dtype is set: then it stays in that).
            let global = crate::precision::compute_dtype();
            let kind = global.or(p.compute_dtype()).unwrap_or(x.kind());
            // The unpacked weight is not saved for backward: the input gradient unpacks it again
            // (as bitsandbytes' MatMul4Bit), so only the layer in use holds a full copy.
            let shared = p.share();
            let mut y =
                crate::ops::recomputed_linear(&x.to_kind(kind), move || shared.unpack(kind))
                    .unwrap_or_else(|e| panic!("{}: {e}", self.path));
            if let Some(b) = &self.bias {
                y += b.to_kind(kind);
            }
            return if global.is_some() {
                y
            } else {
                y.to_kind(x.kind())
            };
        }
        self.dense_forward(x, &self.weight, self.bias.as_ref())
    }

    /// `x W^T + b` with another weight and bias of this layer's shape and layout (e.g. an
    /// adapter's trained copy of a head), in the compute dtype when one is set.
    pub fn dense_forward(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let cast = crate::precision::compute_dtype().filter(|k| *k != weight.kind());
        let (x, w, b) = match cast {
            Some(k) => (x.to_kind(k), weight.to_kind(k), bias.map(|b| b.to_kind(k))),
            None => (
                x.shallow_clone(),
                weight.shallow_clone(),
                bias.map(Tensor::shallow_clone),
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
