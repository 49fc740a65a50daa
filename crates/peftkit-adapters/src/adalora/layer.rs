//! The AdaLoRA layer (peft's `SVDLinear`): `base(x) + (dropout(x) (A ⊙ E)ᵀ Bᵀ) · alpha /
//! (ranknum + 1e-5)`, with `E` the singular values the allocation masks to zero.

use crate::layer::{LayerAdapter, TensorKey};
use peftkit_models::{Linear, WeightLayout};
use tch::{Kind, Tensor};

const LORA_A: TensorKey = TensorKey::new("lora_A", None);
const LORA_E: TensorKey = TensorKey::new("lora_E", None);
const LORA_B: TensorKey = TensorKey::new("lora_B", None);

/// One AdaLoRA adapter at one layer.
#[derive(Debug)]
pub struct AdaLoraLayer {
    /// `lora_A`: `[r, in]` (right singular vectors).
    pub a: Tensor,
    /// `lora_E`: `[r, 1]` (singular values).
    pub e: Tensor,
    /// `lora_B`: `[out, r]` (left singular vectors).
    pub b: Tensor,
    /// `lora_alpha`.
    pub alpha: f64,
    /// peft's `ranknum`: the rank the layer was created with (`init_r`), kept through masking.
    pub ranknum: f64,
    /// Dropout on the input.
    pub dropout: f64,
}

impl AdaLoraLayer {
    /// A layer of rank `r` on `linear` (peft's `reset_lora_parameters`: `E = 0`, then `A`, `B`
    /// ~ N(0, 0.02) in that order; `init = false`: all N(0, 1)).
    pub fn new(
        linear: &Linear,
        r: i64,
        ranknum: f64,
        alpha: f64,
        dropout: f64,
        init: bool,
    ) -> Self {
        let opts = (Kind::Float, linear.weight().device());
        let (i, o) = (linear.in_features(), linear.out_features());
        let (a, e, b) = if init {
            let e = Tensor::zeros([r, 1], opts);
            let a = Tensor::randn([r, i], opts) * 0.02;
            let b = Tensor::randn([o, r], opts) * 0.02;
            (a, e, b)
        } else {
            let a = Tensor::randn([r, i], opts);
            let e = Tensor::randn([r, 1], opts);
            let b = Tensor::randn([o, r], opts);
            (a, e, b)
        };
        Self {
            a,
            e,
            b,
            alpha,
            ranknum,
            dropout,
        }
    }

    fn scale(&self) -> f64 {
        self.alpha / (self.ranknum + 1e-5)
    }

    /// `B (A ⊙ E) · scale` in the base weight's layout.
    fn delta(&self, layout: WeightLayout) -> Tensor {
        let d = self.b.matmul(&(&self.a * &self.e)) * self.scale();
        match layout {
            WeightLayout::OutIn => d,
            WeightLayout::InOut => d.tr(),
        }
    }
}

impl LayerAdapter for AdaLoraLayer {
    fn forward(&self, base: &Linear, x: &Tensor, base_out: Option<Tensor>, train: bool) -> Tensor {
        let y = base_out.unwrap_or_else(|| base.base_forward(x));
        let x = crate::layer::adapter_input(x, self.dropout, train);
        let kind = x.kind();
        let ae = (&self.a * &self.e).to_kind(kind);
        let update = x
            .linear::<Tensor>(&ae, None)
            .linear::<Tensor>(&self.b.to_kind(kind), None)
            * self.scale();
        let k = y.kind();
        y + update.to_kind(k)
    }

    fn tensors(&self) -> Vec<(TensorKey, &Tensor)> {
        vec![(LORA_A, &self.a), (LORA_B, &self.b), (LORA_E, &self.e)]
    }

    fn tensors_mut(&mut self) -> Vec<(TensorKey, &mut Tensor)> {
        vec![
            (LORA_A, &mut self.a),
            (LORA_B, &mut self.b),
            (LORA_E, &mut self.e),
        ]
    }

    fn merge(&mut self, base: &mut Linear) {
        let mut w = base.weight().shallow_clone();
        tch::no_grad(|| {
            let _ = w.g_add_(&self.delta(base.layout()).to_kind(w.kind()));
        });
    }

    fn unmerge(&mut self, base: &mut Linear) {
        let mut w = base.weight().shallow_clone();
        tch::no_grad(|| {
            let _ = w.g_sub_(&self.delta(base.layout()).to_kind(w.kind()));
        });
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
