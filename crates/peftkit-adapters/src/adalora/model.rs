//! Injecting AdaLoRA into a classifier (peft's `AdaLoraModel`): SVD-form layers, the
//! orthogonality regulariser, the allocation after each optimizer step, and saving each module
//! at its kept rank.

use super::allocator::{layers, RankAllocator};
use super::config::AdaLoraConfig;
use super::layer::AdaLoraLayer;
use crate::layer::LayerAdapter;
use crate::tuner::{inject_layers, LayerTuner, LoadMismatch, MethodConfig, Targets, Tuner};
use crate::{AdapterConfig, AdapterError, Bias, Result};
use peftkit_models::{LossScaling, SequenceClassifier};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tch::Tensor;

type Pattern = BTreeMap<String, Vec<bool>>;

/// One AdaLoRA adapter.
#[derive(Debug)]
struct AdaLoraTuner {
    name: String,
    inner: LayerTuner,
    /// The budgeting schedule and importance (training a fresh adapter).
    allocator: Mutex<RankAllocator>,
    /// The kept triplets, once allocated.
    pattern: Mutex<Option<Pattern>>,
    /// The layers were built at the saved ranks (a reloaded adapter): no allocation, and saving
    /// does not cut them again.
    resized: bool,
    modules: i64,
}

impl AdaLoraTuner {
    fn ada(&self) -> &AdaLoraConfig {
        match self.inner.config() {
            AdapterConfig::AdaLora(c) => c,
            _ => unreachable!("an AdaLoRA tuner holds an AdaLoRA config"),
        }
    }
}

impl Tuner for AdaLoraTuner {
    fn config(&self) -> &AdapterConfig {
        self.inner.config()
    }

    fn config_mut(&mut self) -> &mut AdapterConfig {
        self.inner.config_mut()
    }

    fn parameters(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        self.inner.parameters(base)
    }

    /// peft's `_get_adapter_state_dict`: each module cut to its kept triplets (`E[idx]`,
    /// `A[idx]`, `B[:, idx]`; a module with none keeps zero-size tensors, as peft saves them).
    fn state_dict(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        let all = self.inner.state_dict(base);
        let pattern = self.pattern.lock().expect("pattern lock").clone();
        let (Some(pattern), false) = (pattern, self.resized) else {
            return all;
        };
        all.into_iter()
            .map(|(key, t)| {
                let Some((module, which)) = key
                    .strip_prefix(crate::PEFT_PREFIX)
                    .and_then(|k| k.rsplit_once('.'))
                else {
                    return (key, t);
                };
                let Some(keep) = pattern.get(&format!("{module}.lora_E")) else {
                    return (key, t);
                };
                let idx: Vec<i64> = (0..keep.len() as i64)
                    .filter(|i| keep[*i as usize])
                    .collect();
                let idx = Tensor::from_slice(&idx).to_device(t.device());
                let cut = match which {
                    "lora_B" => t.index_select(1, &idx),
                    _ => t.index_select(0, &idx),
                };
                (key, cut)
            })
            .collect()
    }

    fn load_state_dict(
        &mut self,
        base: &mut SequenceClassifier,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch> {
        self.inner.load_state_dict(base, tensors)
    }

    fn set_trainable(&mut self, base: &mut SequenceClassifier, on: bool) {
        self.inner.set_trainable(base, on)
    }

    fn adapted_modules(&self, base: &SequenceClassifier) -> Vec<String> {
        self.inner.adapted_modules(base)
    }

    fn bias(&self) -> Bias {
        self.inner.bias()
    }

    fn remove(&mut self, base: &mut SequenceClassifier) {
        self.inner.remove(base)
    }

    fn frozen_numel(&self, _: &SequenceClassifier) -> i64 {
        self.modules
    }

    fn saved_config(&self) -> AdapterConfig {
        let mut c = self.ada().clone();
        if let Some(p) = self.pattern.lock().expect("pattern lock").clone() {
            c.rank_pattern = Some(p);
        }
        c.into()
    }

    /// peft's orthogonality regulariser, `orth_reg_weight · mean ‖P Pᵀ − I‖_F` over every `A`
    /// (`A Aᵀ`) and `B` (`Bᵀ B`) of the adapter.
    fn regularization(&self, base: &SequenceClassifier) -> Option<Tensor> {
        let w = self.ada().orth_reg_weight;
        let orth = |gram: Tensor| {
            let eye = Tensor::eye(gram.size()[0], (gram.kind(), gram.device()));
            (gram - eye).square().sum(tch::Kind::Float).sqrt()
        };
        let terms: Vec<Tensor> = layers(base, &self.name)
            .into_iter()
            .flat_map(|(_, l)| [orth(l.a.matmul(&l.a.tr())), orth(l.b.tr().matmul(&l.b))])
            .collect();
        if terms.is_empty() || w == 0.0 {
            return None;
        }
        let n = terms.len() as f64;
        Some(Tensor::stack(&terms, 0).sum(tch::Kind::Float) / n * w)
    }

    fn after_optimizer_step(
        &self,
        base: &SequenceClassifier,
        step: usize,
        scaling: Option<&LossScaling>,
    ) {
        // A step fp16's scaler skipped applied nothing, and its gradients are not finite: no
        // allocation from them (the one host read of the flag, AdaLoRA's alone).
        if self.resized || scaling.is_some_and(|s| s.skipped.double_value(&[]) != 0.0) {
            return;
        }
        let mut pattern = self.pattern.lock().expect("pattern lock");
        let changed = self.allocator.lock().expect("allocator lock").step(
            self.ada(),
            base,
            &self.name,
            step as i64,
            pattern.as_ref(),
            scaling.map(|s| &s.scale),
        );
        if let Some(p) = changed {
            *pattern = Some(p);
        }
    }
}

impl MethodConfig for AdaLoraConfig {
    const PEFT_TYPE: &'static str = "ADALORA";
    const UNSUPPORTED: &'static [&'static str] = &[
        "use_dora",
        "lora_bias",
        "loftq_config",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
        "megatron_config",
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        AdaLoraConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        let targets = crate::targets::targets_or_default(
            &mut self.target_modules,
            base.config().model_type(),
            "ADALORA",
        )?;
        let extra = self.modules_to_save.clone().unwrap_or_default();
        // A saved adapter (peft's inference mode) is built at its kept ranks; a rank pattern in a
        // config being trained is only the allocation's starting record (peft builds init_r).
        let inference = self.inference_mode;
        let saved = self.rank_pattern.clone().filter(|_| inference);
        let (init_r, alpha) = (self.init_r, self.lora_alpha);
        let scale_alpha = if alpha > 0.0 { alpha } else { init_r as f64 };
        let (dropout, init) = (self.lora_dropout, self.init_lora_weights);
        let found = inject_layers(
            base,
            name,
            Targets {
                targets: &targets,
                exclude: self.exclude_modules.as_ref(),
                layers: self.layers_to_transform.as_ref(),
                layers_pattern: self.layers_pattern.as_ref(),
            },
            &extra,
            |linear| {
                // A saved adapter: each module at its kept rank (peft's
                // resize_modules_by_rank_pattern; ranknum stays init_r, so does the scale).
                let r = saved
                    .as_ref()
                    .and_then(|p| p.get(&format!("{}.lora_E", linear.path())))
                    .map_or(init_r, |keep| keep.iter().filter(|k| **k).count() as i64);
                Ok(Box::new(AdaLoraLayer::new(
                    linear,
                    r,
                    init_r as f64,
                    scale_alpha,
                    dropout,
                    init,
                )) as Box<dyn LayerAdapter>)
            },
        )?;
        found.record(
            &mut self.target_modules,
            &mut self.fan_in_fan_out,
            &mut self.modules_to_save,
            "AdaLoRA",
            name,
        );
        let bias = self.bias;
        Ok(Box::new(AdaLoraTuner {
            name: name.to_string(),
            resized: saved.is_some() && inference,
            pattern: Mutex::new(saved),
            allocator: Mutex::new(RankAllocator::default()),
            modules: found.modules.len() as i64,
            inner: LayerTuner::new(name, self.into(), bias),
        }))
    }

    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.base_model_name_or_path, &mut self.revision)
    }

    fn modules_to_save(&self) -> Option<&[String]> {
        self.modules_to_save.as_deref()
    }

    fn patch_json(&self, v: &mut serde_json::Value) {
        v["lora_alpha"] = crate::tuner::json_number(self.lora_alpha);
    }
}
