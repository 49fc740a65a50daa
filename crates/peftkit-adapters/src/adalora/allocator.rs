//! AdaLoRA's budget allocation (peft's `RankAllocator`): after each optimizer step, the
//! importance of every entry of `A`, `E`, `B` (`|p · ∂L/∂p|`, smoothed and weighted by its
//! uncertainty) scores each singular triplet; the lowest-scoring triplets beyond the step's
//! budget get `E = 0`.

use super::config::AdaLoraConfig;
use super::layer::AdaLoraLayer;
use crate::layer::AdapterLayer;
use peftkit_models::SequenceClassifier;
use std::collections::BTreeMap;
use tch::Tensor;

/// The smoothed importance of one tensor.
#[derive(Debug)]
struct Importance {
    ipt: Tensor,
    unc: Tensor,
}

/// The allocation's state for one adapter.
#[derive(Debug, Default)]
pub struct RankAllocator {
    /// Per `{path}.lora_{A,E,B}`.
    importance: BTreeMap<String, Importance>,
}

/// The layers of adapter `name`, by module path.
pub(crate) fn layers<'a>(
    base: &'a SequenceClassifier,
    name: &str,
) -> Vec<(String, &'a AdaLoraLayer)> {
    base.linears()
        .into_iter()
        .filter_map(|l| {
            let layer = l.hook_as::<AdapterLayer>()?.get(name)?;
            let ada = layer.as_any()?.downcast_ref::<AdaLoraLayer>()?;
            Some((l.path().to_string(), ada))
        })
        .collect()
}

impl RankAllocator {
    /// `(budget, mask now)` at `step` (peft's `budget_schedule`): the initial budget until
    /// `tinit`, then a cubic decrease to the target, reached at `total_step - tfinal`.
    pub fn budget(config: &AdaLoraConfig, modules: i64, step: i64) -> (i64, bool) {
        let init = config.init_r * modules;
        let target = config.target_r * modules;
        let total = config.total_step.unwrap_or(1);
        if step <= config.tinit {
            (init, false)
        } else if step > total - config.tfinal {
            (target, true)
        } else {
            let mul =
                1.0 - (step - config.tinit) as f64 / (total - config.tfinal - config.tinit) as f64;
            let budget = ((init - target) as f64 * mul.powi(3) + target as f64) as i64;
            (budget, step % config.delta_t == 0)
        }
    }

    /// peft's `update_ipt`: `ipt = |p · grad|`, `ipt ← β₁ ipt + (1 − β₁) ipt_now`, `unc ← β₂ unc +
    /// (1 − β₂) |ipt_now − ipt|`.
    /// `grad_scale`: fp16's loss scale, which the gradients still carry (divided out here).
    fn update(
        &mut self,
        config: &AdaLoraConfig,
        layers: &[(String, &AdaLoraLayer)],
        grad_scale: Option<&Tensor>,
    ) {
        tch::no_grad(|| {
            for (path, l) in layers {
                for (which, p) in [("lora_A", &l.a), ("lora_E", &l.e), ("lora_B", &l.b)] {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let now = match grad_scale {
                        Some(scale) => (p * g / scale).abs(),
                        None => (p * g).abs(),
                    };
                    let e = self
                        .importance
                        .entry(format!("{path}.{which}"))
                        .or_insert_with(|| Importance {
                            ipt: now.zeros_like(),
                            unc: now.zeros_like(),
                        });
                    e.ipt = &e.ipt * config.beta1 + &now * (1.0 - config.beta1);
                    e.unc = &e.unc * config.beta2 + (&now - &e.ipt).abs() * (1.0 - config.beta2);
                }
            }
        });
    }

    fn score(&self, key: &str) -> Option<Tensor> {
        self.importance.get(key).map(|i| &i.ipt * &i.unc)
    }

    /// The triplet scores of one module: `s(E)ᵢ + meanⱼ s(A)ᵢⱼ + meanⱼ s(B)ⱼᵢ`.
    pub fn triplet_scores(&self, path: &str) -> Option<Tensor> {
        let e = self.score(&format!("{path}.lora_E"))?.view([-1]);
        let a = self
            .score(&format!("{path}.lora_A"))?
            .mean_dim(1, false, None);
        let b = self
            .score(&format!("{path}.lora_B"))?
            .mean_dim(0, false, None);
        Some(e + a + b)
    }

    /// peft's `mask_to_budget`: the triplets scoring at or below the `(total − budget)`-th
    /// smallest score get `E = 0`; returns the kept triplets per `{path}.lora_E`.
    fn mask_to_budget(
        &self,
        layers: &[(String, &AdaLoraLayer)],
        budget: i64,
    ) -> Option<BTreeMap<String, Vec<bool>>> {
        let scores: Vec<(String, Tensor)> = layers
            .iter()
            .map(|(p, _)| Some((p.clone(), self.triplet_scores(p)?)))
            .collect::<Option<_>>()?;
        let all = Tensor::cat(
            &scores
                .iter()
                .map(|(_, s)| s.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let k = all.size()[0] - budget;
        let mut pattern = BTreeMap::new();
        tch::no_grad(|| {
            let threshold = if k >= 1 {
                Some(all.kthvalue(k, 0, false).0)
            } else {
                None
            };
            for ((path, scores), (_, layer)) in scores.iter().zip(layers) {
                let keep = match &threshold {
                    Some(t) => scores.gt_tensor(t),
                    None => scores.ones_like().to_kind(tch::Kind::Bool),
                };
                let mut e = layer.e.shallow_clone();
                let _ = e.masked_fill_(&keep.logical_not().view([-1, 1]), 0.0);
                pattern.insert(
                    format!("{path}.lora_E"),
                    Vec::<bool>::try_from(&keep).unwrap_or_default(),
                );
            }
        });
        Some(pattern)
    }

    /// Zeroes the `E` entries a rank pattern drops (after the budgeting phase, every step).
    pub fn mask_by_pattern(
        base: &SequenceClassifier,
        name: &str,
        pattern: &BTreeMap<String, Vec<bool>>,
    ) {
        for (path, layer) in layers(base, name) {
            if let Some(keep) = pattern.get(&format!("{path}.lora_E")) {
                let drop: Vec<bool> = keep.iter().map(|k| !k).collect();
                let drop = Tensor::from_slice(&drop)
                    .to_device(layer.e.device())
                    .view([-1, 1]);
                let mut e = layer.e.shallow_clone();
                tch::no_grad(|| {
                    let _ = e.masked_fill_(&drop, 0.0);
                });
            }
        }
    }

    /// peft's `AdaLoraModel.update_and_allocate(step)`, after the optimizer step (the
    /// gradients still there): returns the new rank pattern when it changed.
    pub fn step(
        &mut self,
        config: &AdaLoraConfig,
        base: &SequenceClassifier,
        name: &str,
        step: i64,
        current: Option<&BTreeMap<String, Vec<bool>>>,
        grad_scale: Option<&Tensor>,
    ) -> Option<BTreeMap<String, Vec<bool>>> {
        let layers = layers(base, name);
        let t = config.total_step.unwrap_or(1) - config.tfinal;
        let modules = layers.len() as i64;
        if step < t {
            self.update(config, &layers, grad_scale);
            let (budget, mask) = Self::budget(config, modules, step);
            return if mask {
                self.mask_to_budget(&layers, budget)
            } else {
                None
            };
        }
        if step == t {
            let (budget, _) = Self::budget(config, modules, step);
            let pattern = self.mask_to_budget(&layers, budget);
            self.importance.clear();
            return pattern;
        }
        if let Some(p) = current {
            Self::mask_by_pattern(base, name, p);
        }
        None
    }
}
