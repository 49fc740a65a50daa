//! The LoRA layer: `base(x) + scale · B(A(dropout(x)))`, a low-rank path beside a base
//! [`Linear`] (peft's `lora.Linear`), with merge and unmerge.

use crate::layer::{LayerAdapter, TensorKey};
use peftkit_models::{Linear, WeightLayout};
use tch::Tensor;

const LORA_A: TensorKey = TensorKey::new("lora_A", Some("weight"));
const LORA_B: TensorKey = TensorKey::new("lora_B", Some("weight"));

/// One LoRA adapter at one layer.
#[derive(Debug)]
pub struct LoraLayer {
    /// `lora_A`: `[r, in]`.
    pub a: Tensor,
    /// `lora_B`: `[out, r]`.
    pub b: Tensor,
    /// `lora_alpha / r` (or `/ √r`).
    pub scale: f64,
    /// Dropout on the input of A.
    pub dropout: f64,
}

impl LoraLayer {
    /// The dense update `scale · B A` in the base weight's layout.
    pub fn delta(&self, layout: WeightLayout) -> Tensor {
        let d = self.b.matmul(&self.a) * self.scale;
        match layout {
            WeightLayout::OutIn => d,
            WeightLayout::InOut => d.transpose(0, 1),
        }
    }

    /// `dropout(x)` in training, in the compute dtype when one is set.
    pub(crate) fn input(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        match peftkit_models::compute_dtype() {
            Some(k) => x.to_kind(k),
            None => x,
        }
    }

    /// `y + scale · (x Aᵀ) Bᵀ`, accumulated into `y` in one GEMM: `scale · (x Aᵀ)` is `[N, r]`, so
    /// scaling it is cheap and no `[N, out]` temporary is made.
    pub(crate) fn add_to(&self, y: Tensor, x: &Tensor) -> Tensor {
        let xa = x.linear::<Tensor>(&self.a.to_kind(x.kind()), None) * self.scale;
        let out = *y.size().last().expect("output features");
        let r = self.a.size()[0];
        let mut y2 = y.reshape([-1, out]);
        let _ = y2.addmm_(&xa.reshape([-1, r]), &self.b.to_kind(y2.kind()).tr());
        y2.view(y.size().as_slice())
    }
}

impl LayerAdapter for LoraLayer {
    fn forward(&self, base: &Linear, x: &Tensor, base_out: Option<Tensor>, train: bool) -> Tensor {
        let y = base_out.unwrap_or_else(|| base.base_forward(x));
        self.add_to(y, &self.input(x, train))
    }

    fn tensors(&self) -> Vec<(TensorKey, &Tensor)> {
        vec![(LORA_A, &self.a), (LORA_B, &self.b)]
    }

    fn tensors_mut(&mut self) -> Vec<(TensorKey, &mut Tensor)> {
        vec![(LORA_A, &mut self.a), (LORA_B, &mut self.b)]
    }

    fn merge(&mut self, base: &mut Linear) {
        let mut weight = base.weight().shallow_clone();
        tch::no_grad(|| {
            let d = self.delta(base.layout()).to_kind(weight.kind());
            let _ = weight.g_add_(&d);
        });
    }

    fn unmerge(&mut self, base: &mut Linear) {
        let mut weight = base.weight().shallow_clone();
        tch::no_grad(|| {
            let d = self.delta(base.layout()).to_kind(weight.kind());
            let _ = weight.g_sub_(&d);
        });
    }
}
