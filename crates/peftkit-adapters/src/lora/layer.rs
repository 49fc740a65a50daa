//! The LoRA layer: `base(x) + scale · B(A(dropout(x)))`, a low-rank path beside a base
//! [`Linear`] (peft's `lora.Linear`), with merge and unmerge; and DoRA (Liu et al. 2024,
//! "DoRA: Weight-Decomposed Low-Rank Adaptation", peft's `use_dora`), which rescales each output
//! row of `W + scale · B A` to a learned magnitude `m`.

use crate::layer::{LayerAdapter, TensorKey};
use peftkit_models::{Linear, WeightLayout};
use tch::{Kind, Tensor};

const LORA_A: TensorKey = TensorKey::new("lora_A", Some("weight"));
const LORA_B: TensorKey = TensorKey::new("lora_B", Some("weight"));
const MAGNITUDE: TensorKey = TensorKey::saved_bare("lora_magnitude_vector", "weight");

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
    /// DoRA's magnitude `m` (`lora_magnitude_vector`, `[out]`), when `use_dora`.
    pub magnitude: Option<Tensor>,
    /// DoRA: the row norms of `W + ΔW` at merge time, for an exact unmerge.
    merged_norm: Option<Tensor>,
}

impl LoraLayer {
    /// A plain LoRA layer.
    pub fn new(a: Tensor, b: Tensor, scale: f64, dropout: f64) -> Self {
        Self {
            a,
            b,
            scale,
            dropout,
            magnitude: None,
            merged_norm: None,
        }
    }

    /// Makes it a DoRA layer on `base`: the magnitude starts as the row norms of
    /// `W + scale · B A` (peft's `DoraLinearLayer.update_layer`), so the layer starts where plain
    /// LoRA would.
    pub fn with_dora(mut self, base: &Linear) -> Self {
        let m = tch::no_grad(|| self.weight_norm(&base.weight_out_in(Kind::Float)));
        self.magnitude = Some(m);
        self
    }

    /// `‖W + scale · B A‖` over the input dimension, for `W` as `[out, in]` (detached: DoRA
    /// does not backpropagate through the norm).
    fn weight_norm(&self, w: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let lora = self.b.matmul(&self.a).to_kind(w.kind()) * self.scale;
            (w + lora).norm_scalaropt_dim(2, [1], false)
        })
    }

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
        crate::layer::adapter_input(x, self.dropout, train)
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

impl LoraLayer {
    /// DoRA's forward (peft's `DoraLinearLayer.forward`): with `s = m / ‖W + scale·BA‖` per
    /// output, `y + (s − 1) · (x_d Wᵀ) + s · scale · B A x_d`, where `x_d` is the dropped-out input
    /// and `y` the base output (so without dropout, `s · (x (W + scale·BA)ᵀ) + b`).
    fn dora_forward(
        &self,
        base: &Linear,
        m: &Tensor,
        x: &Tensor,
        y: Tensor,
        train: bool,
    ) -> Tensor {
        let xd = self.input(x, train);
        let kind = xd.kind();
        // The magnitude's scale in fp32 whatever the compute dtype (as peft: m and the norm stay
        // fp32), so a bf16/fp16 layer still starts exactly as plain LoRA.
        let scale = (m / self.weight_norm(&base.weight_out_in(Kind::Float))).view([1, -1]);
        let k = y.kind();
        if !(train && self.dropout > 0.0) {
            // Without dropout the update is s · (x Wᵀ + scale · B A x) + b: the low-rank path is
            // accumulated into the base output in one GEMM, then one scaling (fewer passes over
            // the [N, out] activations than peft's three-term sum; the same values).
            let bias = base.bias().map(|b| b.to_kind(k));
            let t = match &bias {
                Some(b) => &y - b,
                None => y,
            };
            let t = self.add_to(t, &xd);
            let out = t.to_kind(Kind::Float) * &scale;
            let out = match &bias {
                Some(b) => out + b,
                None => out,
            };
            return out.to_kind(k);
        }
        let base_part = xd.linear::<Tensor>(&base.weight_out_in(kind), None);
        let lora = xd
            .linear::<Tensor>(&self.a.to_kind(kind), None)
            .linear::<Tensor>(&self.b.to_kind(kind), None)
            * self.scale;
        let update =
            (&scale - 1.0) * base_part.to_kind(Kind::Float) + &scale * lora.to_kind(Kind::Float);
        let k = y.kind();
        y + update.to_kind(k)
    }

    /// DoRA's merge factor `m / ‖W + ΔW‖`, shaped for the stored weight.
    fn dora_factor(&self, m: &Tensor, norm: &Tensor, layout: WeightLayout) -> Tensor {
        let f = m / norm;
        match layout {
            WeightLayout::OutIn => f.view([-1, 1]),
            WeightLayout::InOut => f.view([1, -1]),
        }
    }
}

impl LayerAdapter for LoraLayer {
    fn forward(&self, base: &Linear, x: &Tensor, base_out: Option<Tensor>, train: bool) -> Tensor {
        let y = base_out.unwrap_or_else(|| base.base_forward(x));
        match &self.magnitude {
            Some(m) => self.dora_forward(base, m, x, y, train),
            None => self.add_to(y, &self.input(x, train)),
        }
    }

    fn tensors(&self) -> Vec<(TensorKey, &Tensor)> {
        let mut v = vec![(LORA_A, &self.a), (LORA_B, &self.b)];
        if let Some(m) = &self.magnitude {
            v.push((MAGNITUDE, m));
        }
        v
    }

    fn tensors_mut(&mut self) -> Vec<(TensorKey, &mut Tensor)> {
        let mut v = vec![(LORA_A, &mut self.a), (LORA_B, &mut self.b)];
        if let Some(m) = &mut self.magnitude {
            v.push((MAGNITUDE, m));
        }
        v
    }

    fn merge(&mut self, base: &mut Linear) {
        let mut weight = base.weight().shallow_clone();
        let layout = base.layout();
        tch::no_grad(|| {
            let d = self.delta(layout).to_kind(weight.kind());
            match &self.magnitude {
                None => {
                    let _ = weight.g_add_(&d);
                }
                Some(m) => {
                    // The norm of the unmerged weight, kept for unmerging (peft's cache).
                    let norm = self.weight_norm(&base.weight_out_in(weight.kind()));
                    let f = self.dora_factor(&m.to_kind(weight.kind()), &norm, layout);
                    let _ = weight.g_add_(&d);
                    let _ = weight.g_mul_(&f);
                    self.merged_norm = Some(norm);
                }
            }
        });
    }

    fn unmerge(&mut self, base: &mut Linear) {
        let mut weight = base.weight().shallow_clone();
        let layout = base.layout();
        tch::no_grad(|| {
            let d = self.delta(layout).to_kind(weight.kind());
            if let (Some(m), Some(norm)) = (&self.magnitude, self.merged_norm.take()) {
                let f = self.dora_factor(&m.to_kind(weight.kind()), &norm, layout);
                let _ = weight.g_div_(&f);
            }
            let _ = weight.g_sub_(&d);
        });
    }
}
