//! The IA³ layer (peft's `ia3.Linear`): a learned vector `l` that scales the base layer's output
//! (`base(x) · l`, `l` of shape `[out, 1]`) or, for feed-forward layers, its input
//! (`base(x · l)`, `l` of shape `[1, in]`).

use crate::layer::{LayerAdapter, TensorKey};
use peftkit_models::{Linear, WeightLayout};
use tch::Tensor;

const IA3_L: TensorKey = TensorKey::new("ia3_l", None);

/// The `1e-8` peft adds to the vector before dividing it out of merged weights.
const UNMERGE_EPS: f64 = 1e-8;

/// One IA³ adapter at one layer.
#[derive(Debug)]
pub struct Ia3Layer {
    /// `ia3_l`: `[1, in]` on a feed-forward layer, `[out, 1]` otherwise.
    pub l: Tensor,
    /// Whether the input is scaled (feed-forward) rather than the output.
    pub feedforward: bool,
}

impl Ia3Layer {
    /// The layer for `linear`: ones (`init` true, peft's default) or N(0, 1).
    pub fn new(linear: &Linear, feedforward: bool, init: bool) -> Self {
        let shape = if feedforward {
            [1, linear.in_features()]
        } else {
            [linear.out_features(), 1]
        };
        let opts = (tch::Kind::Float, linear.weight().device());
        let l = if init {
            Tensor::ones(shape, opts)
        } else {
            Tensor::randn(shape, opts)
        };
        Self { l, feedforward }
    }

    /// The vector shaped to multiply the stored weight (`[out, in]` or Conv1D's `[in, out]`).
    fn weight_factor(&self, layout: WeightLayout) -> Tensor {
        match layout {
            WeightLayout::OutIn => self.l.shallow_clone(),
            WeightLayout::InOut => self.l.tr(),
        }
    }

    fn rescale(&self, base: &mut Linear, divide: bool) {
        let mut weight = base.weight().shallow_clone();
        let factor = self.weight_factor(base.layout()).to_kind(weight.kind());
        let factor = if divide { factor + UNMERGE_EPS } else { factor };
        tch::no_grad(|| {
            let _ = if divide {
                weight.g_div_(&factor)
            } else {
                weight.g_mul_(&factor)
            };
            if !self.feedforward {
                if let Some(b) = base.bias() {
                    let mut b = b.shallow_clone();
                    let f = factor.reshape(b.size().as_slice());
                    let _ = if divide { b.g_div_(&f) } else { b.g_mul_(&f) };
                }
            }
        });
    }
}

impl LayerAdapter for Ia3Layer {
    fn forward(&self, base: &Linear, x: &Tensor, base_out: Option<Tensor>, _: bool) -> Tensor {
        let l = self.l.flatten(0, -1);
        if self.feedforward {
            return base.base_forward(&(x * l.to_kind(x.kind())));
        }
        let y = base_out.unwrap_or_else(|| base.base_forward(x));
        let k = y.kind();
        y * l.to_kind(k)
    }

    fn transforms_input(&self) -> bool {
        self.feedforward
    }

    fn merges_into_packed(&self) -> bool {
        false
    }

    fn tensors(&self) -> Vec<(TensorKey, &Tensor)> {
        vec![(IA3_L, &self.l)]
    }

    fn tensors_mut(&mut self) -> Vec<(TensorKey, &mut Tensor)> {
        vec![(IA3_L, &mut self.l)]
    }

    fn merge(&mut self, base: &mut Linear) {
        self.rescale(base, false)
    }

    fn unmerge(&mut self, base: &mut Linear) {
        self.rescale(base, true)
    }
}
