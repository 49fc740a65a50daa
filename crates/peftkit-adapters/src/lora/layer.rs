//! The LoRA layer: `base(x) + scale · B(A(dropout(x)))` as a separate low-rank path on a base
//! [`Linear`], with several named adapters, merge and unmerge.

use peftkit_models::{Linear, LinearHook, PackedWeight, WeightLayout};
use std::collections::BTreeMap;
use tch::Tensor;

/// One adapter's low-rank factors at one layer.
#[derive(Debug)]
pub struct LoraWeights {
    /// `lora_A`: `[r, in]`.
    pub a: Tensor,
    /// `lora_B`: `[out, r]`.
    pub b: Tensor,
    /// `lora_alpha / r` (or `/ √r`).
    pub scale: f64,
    /// Dropout on the input of A.
    pub dropout: f64,
}

impl LoraWeights {
    /// The dense update `scale · B A` in the base weight's layout.
    pub fn delta(&self, layout: WeightLayout) -> Tensor {
        let d = self.b.matmul(&self.a) * self.scale;
        match layout {
            WeightLayout::OutIn => d,
            WeightLayout::InOut => d.transpose(0, 1),
        }
    }
}

/// The hook LoRA attaches to a base linear: named adapters, the active one, and which are
/// merged into the base weight.
#[derive(Debug, Default)]
pub struct LoraLayer {
    pub(crate) adapters: BTreeMap<String, LoraWeights>,
    pub(crate) active: Option<String>,
    pub(crate) merged: Vec<String>,
    pub(crate) disabled: bool,
    /// The packed (quantized) base weight while an adapter is merged into a dense or re-quantized
    /// copy: unmerging puts it back exactly.
    pub(crate) stashed: Option<Box<dyn PackedWeight>>,
}

impl LoraLayer {
    /// A layer with one active adapter.
    pub fn new(name: &str, weights: LoraWeights) -> Self {
        let mut adapters = BTreeMap::new();
        adapters.insert(name.to_string(), weights);
        Self {
            adapters,
            active: Some(name.to_string()),
            ..Default::default()
        }
    }

    /// Folds adapter `name` into `base`'s weight (see [`crate::PeftModel::merge_adapter`]).
    pub fn merge_into(&mut self, base: &mut Linear, name: &str) {
        self.merge(base, name)
    }

    /// Takes every merged adapter out of `base`'s weight.
    pub fn unmerge_from(&mut self, base: &mut Linear) {
        self.unmerge(base)
    }

    /// The adapters of this layer.
    pub fn adapters(&self) -> &BTreeMap<String, LoraWeights> {
        &self.adapters
    }

    /// The adapters merged into the base weight.
    pub fn merged(&self) -> &[String] {
        &self.merged
    }

    /// Adds `delta` of `name` into the base weight (no-op when already merged). A packed
    /// (quantized) base is dequantized first and the delta added to that (as peft merges into a
    /// bitsandbytes 4-bit layer); the packed original is kept for an exact unmerge.
    pub(crate) fn merge(&mut self, base: &mut Linear, name: &str) {
        if self.merged.iter().any(|m| m == name) {
            return;
        }
        if !self.adapters.contains_key(name) {
            return;
        }
        if base.packed().is_some() {
            let packed = base.unpack().expect("packed");
            if self.stashed.is_none() {
                self.stashed = Some(packed);
            }
        }
        if let Some(w) = self.adapters.get(name) {
            let mut weight = base.weight().shallow_clone();
            tch::no_grad(|| {
                let d = w.delta(base.layout()).to_kind(weight.kind());
                let _ = weight.g_add_(&d);
            });
            self.merged.push(name.to_string());
        }
    }

    /// Subtracts every merged adapter's delta from the base weight (restores the packed weight
    /// when the base was quantized).
    pub(crate) fn unmerge(&mut self, base: &mut Linear) {
        if let Some(packed) = self.stashed.take() {
            base.repack(packed);
            self.merged.clear();
            return;
        }
        for name in std::mem::take(&mut self.merged) {
            if let Some(w) = self.adapters.get(&name) {
                let mut weight = base.weight().shallow_clone();
                tch::no_grad(|| {
                    let d = w.delta(base.layout()).to_kind(weight.kind());
                    let _ = weight.g_sub_(&d);
                });
            }
        }
    }
}

impl LinearHook for LoraLayer {
    fn forward(&self, base: &Linear, x: &Tensor, train: bool) -> Tensor {
        let y = base.base_forward(x);
        if self.disabled {
            return y;
        }
        match self
            .active
            .as_deref()
            .and_then(|a| self.adapters.get(a).map(|w| (a, w)))
        {
            Some((name, w)) if !self.merged.iter().any(|m| m == name) => {
                let x = if train && w.dropout > 0.0 {
                    x.dropout(w.dropout, true)
                } else {
                    x.shallow_clone()
                };
                let x = match peftkit_models::compute_dtype() {
                    Some(k) => x.to_kind(k),
                    None => x,
                };
                // scale · (x Aᵀ) is [N, r]: scaling it is cheap, and B accumulates into the base
                // output in one GEMM (no [N, out] temporaries).
                let xa = x.linear::<Tensor>(&w.a.to_kind(x.kind()), None) * w.scale;
                let out = *y.size().last().expect("output features");
                let r = w.a.size()[0];
                let mut y2 = y.reshape([-1, out]);
                let _ = y2.addmm_(&xa.reshape([-1, r]), &w.b.to_kind(y2.kind()).tr());
                y2.view(y.size().as_slice())
            }
            _ => y,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
