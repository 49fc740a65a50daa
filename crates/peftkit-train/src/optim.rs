//! AdamW and SGD over one flat fp32 buffer.
//!
//! The trainable parameters are re-pointed (`set_data`) at views of a single contiguous tensor,
//! so an optimizer step is a handful of kernels whatever the number of parameters: one `cat` of
//! the gradients, the clipping norm, and the update on the flat buffer. Nothing in a step reads a
//! value back to the host.

use crate::args::Optim;
use crate::{Result, TrainError};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Whether HF applies weight decay to a parameter: not to biases, not to LayerNorm weights
/// (transformers' `get_decay_parameter_names`).
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let module = lower.rsplit_once('.').map_or("", |(m, _)| m);
    let last = module.rsplit('.').next().unwrap_or("");
    !(lower.ends_with("bias")
        || last.contains("layernorm")
        || last == "ln_f"
        || last.starts_with("ln_"))
}

/// Hyperparameters of an optimizer step that do not change during training.
#[derive(Debug, Clone, Copy)]
pub struct OptimConfig {
    /// AdamW or SGD.
    pub kind: Optim,
    /// β1 (AdamW).
    pub beta1: f64,
    /// β2 (AdamW).
    pub beta2: f64,
    /// ε (AdamW).
    pub eps: f64,
    /// Decoupled weight decay (AdamW) or L2 (SGD).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Clip the total gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
}

impl Default for OptimConfig {
    /// AdamW with torch's defaults (β 0.9/0.999, ε 1e-8), no weight decay, clipping at 1.0.
    fn default() -> Self {
        Self {
            kind: Optim::Adamw,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

impl From<&crate::args::TrainingArgs> for OptimConfig {
    fn from(a: &crate::args::TrainingArgs) -> Self {
        Self {
            kind: a.optim,
            beta1: a.adam_beta1,
            beta2: a.adam_beta2,
            eps: a.adam_epsilon,
            weight_decay: a.weight_decay,
            momentum: a.momentum,
            max_grad_norm: a.max_grad_norm,
        }
    }
}

/// The trainable parameters as views into one buffer, with the optimizer state.
#[derive(Debug)]
pub struct FlatOptimizer {
    names: Vec<String>,
    params: Vec<Tensor>,
    sizes: Vec<i64>,
    flat: Tensor,
    decay: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Persistent work buffers (gradient, AdamW denominator): a step allocates nothing the size
    /// of the parameters, so no fresh pages are faulted in every step.
    grad: Tensor,
    work: Tensor,
    step: u64,
    /// The updates applied so far, as a device scalar (the fused Adam kernel's step, and fp16's
    /// count without reading back whether a step was skipped; created from `step` at the first
    /// update after a start or a resume). A skipped step does not count, as in PyTorch where the
    /// scaler skips `optimizer.step()`: AdamW's bias correction and SGD's first momentum step
    /// follow the applied updates.
    applied: Option<Tensor>,
    cfg: OptimConfig,
    last_grad_norm: Option<Tensor>,
}

impl FlatOptimizer {
    /// Takes over `params` (name, trainable tensor): their data moves into one fp32 buffer.
    pub fn new(params: Vec<(String, Tensor)>, cfg: OptimConfig) -> Result<Self> {
        if params.is_empty() {
            return Err(TrainError::Config(
                "no trainable parameters: nothing to train".into(),
            ));
        }
        let device = params[0].1.device();
        let sizes: Vec<i64> = params.iter().map(|(_, p)| p.numel() as i64).collect();
        let flat = tch::no_grad(|| {
            Tensor::cat(
                &params
                    .iter()
                    .map(|(_, p)| p.detach().to_kind(Kind::Float).reshape([-1]))
                    .collect::<Vec<_>>(),
                0,
            )
        });
        let decay_values: Vec<f32> = params
            .iter()
            .flat_map(|(n, p)| std::iter::repeat_n(if decays(n) { 1.0f32 } else { 0.0 }, p.numel()))
            .collect();
        let decay = Tensor::from_slice(&decay_values).to_device(device);
        let mut offset = 0;
        let mut names = Vec::new();
        let mut tensors = Vec::new();
        for ((name, p), &n) in params.into_iter().zip(&sizes) {
            let mut p = p;
            let view = flat.narrow(0, offset, n).view(p.size().as_slice());
            tch::no_grad(|| p.set_data(&view));
            offset += n;
            names.push(name);
            tensors.push(p);
        }
        Ok(Self {
            grad: flat.zeros_like(),
            work: flat.zeros_like(),
            exp_avg: flat.zeros_like(),
            exp_avg_sq: if cfg.kind == Optim::Adamw {
                flat.zeros_like()
            } else {
                Tensor::zeros([0], (Kind::Float, device))
            },
            names,
            params: tensors,
            sizes,
            flat,
            decay,
            step: 0,
            applied: None,
            cfg,
            last_grad_norm: None,
        })
    }

    /// Number of trainable values.
    pub fn numel(&self) -> i64 {
        self.sizes.iter().sum()
    }

    /// The parameter names, in buffer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The parameters (views into the buffer).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        match &self.applied {
            Some(a) => a.double_value(&[]) as u64,
            None => self.step,
        }
    }

    /// The total gradient norm before clipping at the last step (a device tensor; reading it
    /// synchronises).
    pub fn last_grad_norm(&self) -> Option<&Tensor> {
        self.last_grad_norm.as_ref()
    }

    /// Copies all gradients into the flat gradient buffer (zeros for parameters that got none).
    fn gather_grads(&mut self) {
        let mut offset = 0;
        for (p, &n) in self.params.iter().zip(&self.sizes) {
            let mut slot = self.grad.narrow(0, offset, n);
            let g = p.grad();
            if g.defined() {
                slot.copy_(&g.reshape([-1]));
            } else {
                let _ = slot.zero_();
            }
            offset += n;
        }
    }

    /// Copies the flat gradient buffer back into the parameters' gradients (those that have one).
    fn scatter_grads(&mut self) {
        let mut offset = 0;
        for (p, &n) in self.params.iter().zip(&self.sizes) {
            let mut g = p.grad();
            if g.defined() {
                g.copy_(&self.grad.narrow(0, offset, n).view(p.size().as_slice()));
            }
            offset += n;
        }
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One step at learning rate `lr`. With `loss_scale` (fp16), gradients are unscaled first and
    /// the update is skipped where they are not finite; the returned tensor says whether it was
    /// (1.0 = skipped), without reading it back.
    pub fn step(&mut self, lr: f64, loss_scale: Option<&Tensor>) -> Tensor {
        self.step_with(lr, loss_scale, |_| {
            Ok::<bool, std::convert::Infallible>(false)
        })
        .unwrap_or_else(|e| match e {})
    }

    /// [`FlatOptimizer::step`] with `reduce` applied to the flat gradient buffer first (a
    /// distributed run averages it over the ranks there), before unscaling and clipping. When
    /// `reduce` says it changed the buffer (`Ok(true)`), the parameters' own gradients are set to
    /// the reduced values too, as DDP leaves them: what reads them after the step (AdaLoRA's
    /// importance scores) sees the same gradient on every rank.
    pub fn step_with<E>(
        &mut self,
        lr: f64,
        loss_scale: Option<&Tensor>,
        reduce: impl FnOnce(&mut Tensor) -> std::result::Result<bool, E>,
    ) -> std::result::Result<Tensor, E> {
        tch::no_grad(|| {
            self.gather_grads();
            if reduce(&mut self.grad)? {
                self.scatter_grads();
            }
            let device = self.grad.device();
            let found_inf = match loss_scale {
                Some(scale) => {
                    let _ = self.grad.g_div_(scale);
                    let inf = self
                        .grad
                        .isfinite()
                        .logical_not()
                        .any()
                        .to_kind(Kind::Float);
                    // Non-finite gradients are zeroed so the arithmetic stays finite; the update
                    // is then masked out entirely.
                    let _ = self.grad.nan_to_num_(0.0, 0.0, 0.0);
                    inf
                }
                None => Tensor::zeros([], (Kind::Float, device)),
            };
            let norm = self.grad.norm();
            if self.cfg.max_grad_norm > 0.0 {
                let coef = (norm.shallow_clone() + 1e-6).reciprocal() * self.cfg.max_grad_norm;
                let _ = self.grad.g_mul_(&coef.clamp_max(1.0));
            }
            self.last_grad_norm = Some(norm);
            self.step += 1;
            if loss_scale.is_some() {
                self.masked_step(lr, &found_inf);
            } else {
                self.plain_step(lr);
            }
            Ok(found_inf)
        })
    }

    /// The flat parameter buffer (every trainable parameter is a view of it).
    pub(crate) fn buffer(&self) -> &Tensor {
        &self.flat
    }

    /// The update in place on the flat buffers (the fp32 path: no skipped steps).
    fn plain_step(&mut self, lr: f64) {
        // AdamW's step count stays on the device: no host-to-device copy per step.
        let step =
            (self.cfg.kind == Optim::Adamw).then(|| self.applied_counter().g_add_scalar_(1.0));
        let g = &self.grad;
        let w = &mut self.work;
        match self.cfg.kind {
            Optim::Adamw => {
                // Decoupled weight decay on the decayed parameters, p −= lr · wd · decay · p (one
                // pass), then Adam in one fused pass (libtorch's `_fused_adam_`, what
                // `torch.optim.AdamW(fused=True)` runs); the separate element-wise passes it
                // replaces were most of full fine-tuning's element-wise time (BENCHMARKS.md).
                if self.cfg.weight_decay != 0.0 && lr != 0.0 {
                    w.copy_(&self.decay);
                    let _ = w.g_mul_scalar_(-lr * self.cfg.weight_decay);
                    let p = self.flat.shallow_clone();
                    let _ = self.flat.addcmul_(w, &p);
                }
                peftkit_models::fused_adam_(
                    &self.flat,
                    g,
                    &self.exp_avg,
                    &self.exp_avg_sq,
                    step.as_ref().expect("counted above for AdamW"),
                    lr,
                    self.cfg.beta1,
                    self.cfg.beta2,
                    self.cfg.eps,
                )
                .expect("fused Adam on the optimizer's own buffers");
            }
            Optim::Sgd => {
                // d = g + wd · p (torch.optim.SGD's weight_decay), momentum buffer in exp_avg.
                w.copy_(&self.decay);
                let _ = w
                    .g_mul_(&self.flat)
                    .g_mul_scalar_(self.cfg.weight_decay)
                    .g_add_(g);
                if self.cfg.momentum > 0.0 {
                    if self.step == 1 {
                        self.exp_avg.copy_(w);
                    } else {
                        let _ = self.exp_avg.g_mul_scalar_(self.cfg.momentum).g_add_(w);
                    }
                    w.copy_(&self.exp_avg);
                }
                let _ = w.g_mul_scalar_(-lr);
                let _ = self.flat.g_add_(w);
            }
        }
    }

    /// The device count of updates applied before this call (which has already counted itself in
    /// `step`), created from the host count at the first update after a start or a resume.
    fn applied_counter(&mut self) -> Tensor {
        let before = self.step as f64 - 1.0;
        let device = self.flat.device();
        self.applied
            .get_or_insert_with(|| Tensor::full([], before, (Kind::Float, device)))
            .shallow_clone()
    }

    /// The fp16 path: the update is applied only where `found_inf` is 0, without reading it back.
    fn masked_step(&mut self, lr: f64, found_inf: &Tensor) {
        let keep = found_inf.ones_like() - found_inf; // 1 when the step is applied
        let mut applied = self.applied_counter();
        let first = applied.eq_tensor(&applied.zeros_like());
        let _ = applied.g_add_(&keep);
        let t = applied.clamp_min(1.0);
        let g = &self.grad;
        let lr_eff = keep.shallow_clone() * lr;
        let skip = found_inf.to_kind(Kind::Bool);
        match self.cfg.kind {
            Optim::Adamw => {
                let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
                let decay = &self.decay * &lr_eff * (-self.cfg.weight_decay) + 1.0;
                let new_m = self.exp_avg.lerp(g, 1.0 - b1);
                let new_v = &self.exp_avg_sq * b2 + g.square() * (1.0 - b2);
                // 1 - beta^t with t on the device.
                let bc1 = -(&t * b1.ln()).exp() + 1.0;
                let bc2 = -(&t * b2.ln()).exp() + 1.0;
                let denom = new_v.sqrt() / bc2.sqrt() + self.cfg.eps;
                let update = new_m.shallow_clone() / denom * (lr_eff / bc1);
                let new_p = &self.flat * decay - update;
                self.exp_avg
                    .copy_(&new_m.where_self(&skip.logical_not(), &self.exp_avg));
                self.exp_avg_sq
                    .copy_(&new_v.where_self(&skip.logical_not(), &self.exp_avg_sq));
                self.flat.copy_(&new_p);
            }
            Optim::Sgd => {
                let d = g + &self.flat * &self.decay * self.cfg.weight_decay;
                let d = if self.cfg.momentum > 0.0 {
                    let buf = d.where_self(&first, &(&self.exp_avg * self.cfg.momentum + &d));
                    self.exp_avg
                        .copy_(&buf.where_self(&skip.logical_not(), &self.exp_avg));
                    buf
                } else {
                    d
                };
                let new_p = &self.flat - d * lr_eff;
                self.flat.copy_(&new_p);
            }
        }
    }

    /// The parameters by name (shallow handles), for saving.
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.params.iter().map(Tensor::shallow_clone))
            .collect()
    }

    /// The optimizer state as named tensors (for a checkpoint).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("exp_avg".into(), self.exp_avg.shallow_clone()),
            ("exp_avg_sq".into(), self.exp_avg_sq.shallow_clone()),
            ("step".into(), Tensor::from_slice(&[self.steps() as i64])),
        ]
    }

    /// Restores the state written by [`FlatOptimizer::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            state
                .get(k)
                .ok_or_else(|| TrainError::Checkpoint(format!("optimizer state has no `{k}`")))
        };
        let m = get("exp_avg")?;
        let v = get("exp_avg_sq")?;
        if m.size() != self.exp_avg.size() || v.size() != self.exp_avg_sq.size() {
            return Err(TrainError::Checkpoint(format!(
                "optimizer state is for {} values, the model has {} trainable",
                m.numel(),
                self.exp_avg.numel()
            )));
        }
        tch::no_grad(|| {
            self.exp_avg.copy_(m);
            self.exp_avg_sq.copy_(v);
        });
        self.step = get("step")?.int64_value(&[0]) as u64;
        self.applied = None;
        Ok(())
    }

    /// Copies parameter values by name (resume, best checkpoint): every trainable parameter must
    /// be present with the same shape.
    pub fn load_params(&mut self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, p) in self.names.iter().zip(self.params.iter_mut()) {
            let v = values.get(name).ok_or_else(|| {
                TrainError::Checkpoint(format!("checkpoint has no trainable parameter `{name}`"))
            })?;
            if v.size() != p.size() {
                return Err(TrainError::Checkpoint(format!(
                    "`{name}` has shape {:?} in the checkpoint but {:?} in the model",
                    v.size(),
                    p.size()
                )));
            }
            tch::no_grad(|| p.copy_(v));
        }
        Ok(())
    }

    /// The device of the buffer.
    pub fn device(&self) -> Device {
        self.flat.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_hf_names() {
        assert!(decays("transformer.h.0.attn.c_attn.weight"));
        assert!(decays("transformer.wte.weight"));
        assert!(!decays("transformer.h.0.attn.c_attn.bias"));
        assert!(!decays("transformer.h.0.ln_1.weight"));
        assert!(!decays("transformer.ln_f.weight"));
        assert!(!decays(
            "bert.encoder.layer.0.attention.output.LayerNorm.weight"
        ));
        assert!(decays("classifier.out_proj.weight"));
        assert!(decays(
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight"
        ));
    }

    #[test]
    fn adamw_step_matches_the_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let cfg = OptimConfig {
            kind: Optim::Adamw,
            weight_decay: 0.1,
            max_grad_norm: 0.0,
            ..OptimConfig::default()
        };
        let mut opt = FlatOptimizer::new(
            vec![
                ("w.weight".into(), p.shallow_clone()),
                ("w.bias".into(), b.shallow_clone()),
            ],
            cfg,
        )
        .unwrap();
        let loss = (&p * &p).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float);
        loss.backward();
        let _ = opt.step(0.01, None);
        // step 1: m_hat = g, v_hat = g², update = lr * g / (|g| + eps) = lr * sign(g)
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        let want = [
            1.0 * (1.0 - 0.01 * 0.1) - 0.01,
            -2.0 * (1.0 - 0.01 * 0.1) + 0.01,
        ];
        assert!(
            (got[0] as f64 - want[0]).abs() < 1e-6 && (got[1] as f64 - want[1]).abs() < 1e-6,
            "{got:?}"
        );
        // the bias is not decayed
        assert!((b.double_value(&[0]) - (0.5 - 0.01)).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let cfg = OptimConfig {
            kind: Optim::Sgd,
            ..OptimConfig::default()
        };
        let mut opt = FlatOptimizer::new(vec![("w".into(), p.shallow_clone())], cfg).unwrap();
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let _ = opt.step(1.0, None);
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!(
            (got[0] + 0.6).abs() < 1e-5 && (got[1] + 0.8).abs() < 1e-5,
            "{got:?}"
        );
        assert!((opt.last_grad_norm().unwrap().double_value(&[]) - 5.0).abs() < 1e-6);
    }

    #[test]
    fn non_finite_scaled_gradients_skip_the_step() {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let cfg = OptimConfig {
            kind: Optim::Adamw,
            ..OptimConfig::default()
        };
        let mut opt = FlatOptimizer::new(vec![("w".into(), p.shallow_clone())], cfg).unwrap();
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        let skipped = opt.step(0.1, Some(&Tensor::from_slice(&[1024.0f32])));
        assert_eq!(skipped.double_value(&[]), 1.0);
        assert_eq!(p.double_value(&[0]), 1.0);
    }

    /// Skipped fp16 steps do not count: after two skips, the first applied AdamW (or momentum
    /// SGD) update is a first step's (bias correction at t = 1), as with PyTorch's GradScaler,
    /// which does not call `optimizer.step()` on a skip; the saved step count is the applied one.
    #[test]
    fn skipped_steps_do_not_advance_the_step_count() {
        for kind in [Optim::Adamw, Optim::Sgd] {
            let cfg = OptimConfig {
                kind,
                momentum: 0.9,
                ..OptimConfig::default()
            };
            let fresh = |v: f32| Tensor::from_slice(&[v, -2.0]).set_requires_grad(true);
            let (p, q) = (fresh(1.0), fresh(1.0));
            let mut skipping =
                FlatOptimizer::new(vec![("w".into(), p.shallow_clone())], cfg).unwrap();
            let mut plain = FlatOptimizer::new(vec![("w".into(), q.shallow_clone())], cfg).unwrap();
            let scale = Tensor::from_slice(&[4.0f32]);
            for _ in 0..2 {
                skipping.zero_grad();
                (&p * f64::INFINITY).sum(Kind::Float).backward();
                assert_eq!(skipping.step(0.1, Some(&scale)).double_value(&[]), 1.0);
            }
            assert_eq!(skipping.steps(), 0);
            skipping.zero_grad();
            (&p * &p * 4.0).sum(Kind::Float).backward(); // scaled by 4
            assert_eq!(skipping.step(0.1, Some(&scale)).double_value(&[]), 0.0);
            (&q * &q).sum(Kind::Float).backward();
            let _ = plain.step(0.1, None);
            let (a, b): (Vec<f32>, Vec<f32>) = (
                Vec::try_from(&p.detach()).unwrap(),
                Vec::try_from(&q.detach()).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
                "{kind:?}: {a:?} vs {b:?}"
            );
            assert_eq!(skipping.steps(), 1);
            assert_eq!(skipping.state()[2].1.int64_value(&[0]), 1);
        }
    }
}
