//! The tuner seam (peft's `BaseTuner`): what [`crate::PeftModel`] asks of one named adapter,
//! whatever its method, and the shared injection of weight-based methods at the linear seam.
//!
//! A method is one folder with `config.rs` (peft's fields, a [`MethodConfig`]), `layer.rs` (a
//! [`LayerAdapter`] for weight-based methods, or an encoder for prompt-learning ones) and
//! `model.rs` (its [`MethodConfig::inject`]: creating the adapter on a classifier). The host
//! keeps the registry, the `modules_to_save` heads and the forward pass; it calls the methods
//! only through [`Tuner`].

use crate::layer::{AdapterLayer, LayerAdapter};
use crate::lora::config::{Bias, LayerIndexes, TargetModules};
use crate::targets::is_target;
use crate::{AdapterConfig, AdapterError, Result};
use peftkit_models::{Linear, PrefixProvider, PromptProvider, SequenceClassifier, WeightLayout};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// The key prefix peft gives the saved tensors of methods that wrap the base model (LoRA, IA³,
/// …) and their in-model names.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The key prefix of the head's tensors in a saved prompt-learning adapter (prefix tuning):
/// those methods do not wrap the base model.
pub const PROMPT_LEARNING_PREFIX: &str = "base_model.";

/// `true`, for serde defaults.
pub(crate) fn d_true() -> bool {
    true
}

/// A tensor that does not fit while loading: its key and what is wrong (the caller adds the
/// file).
#[derive(Debug)]
pub struct LoadMismatch {
    /// The key in the file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl LoadMismatch {
    /// A missing key.
    pub fn missing(key: &str, why: &str) -> Self {
        Self {
            key: key.to_string(),
            message: format!("missing: {why}"),
        }
    }

    /// A tensor of the wrong shape.
    pub fn shape(key: &str, file: &[i64], model: &[i64]) -> Self {
        Self {
            key: key.to_string(),
            message: format!("shape {file:?} in the adapter but {model:?} in the model: the adapter was made for another base model"),
        }
    }
}

/// A prompt-learning method's contribution to the forward pass: per-layer key/value prefixes.
pub trait PrefixSource: PrefixProvider {
    /// The prefix computed once for one pass (an encoder's MLP runs once, not once per layer).
    fn compute(&self) -> Box<dyn PrefixProvider + '_>;
}

/// One named adapter as the host sees it (peft's tuner for one adapter name).
pub trait Tuner: std::fmt::Debug + Send {
    /// Its configuration (what `adapter_config.json` holds).
    fn config(&self) -> &AdapterConfig;
    /// Its configuration, mutably (the host records the base model's id before saving).
    fn config_mut(&mut self) -> &mut AdapterConfig;
    /// The key prefix of its saved head tensors: [`PEFT_PREFIX`] or [`PROMPT_LEARNING_PREFIX`].
    fn saved_prefix(&self) -> &'static str {
        PEFT_PREFIX
    }
    /// Its own tensors under peft's in-model names (e.g.
    /// `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight`).
    fn parameters(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)>;
    /// Its own tensors under peft's saved keys.
    fn state_dict(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)>;
    /// Takes its own tensors out of a saved adapter's tensors (keys as [`Tuner::state_dict`]).
    fn load_state_dict(
        &mut self,
        base: &mut SequenceClassifier,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch>;
    /// Makes its tensors require gradients (the active adapter) or not.
    fn set_trainable(&mut self, base: &mut SequenceClassifier, on: bool);
    /// The module paths it applies to.
    fn adapted_modules(&self, base: &SequenceClassifier) -> Vec<String>;
    /// Elements of its own tensors.
    fn numel(&self, base: &SequenceClassifier) -> i64 {
        self.parameters(base)
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
    /// Which of the base's biases it trains and saves (LoRA's `bias` option).
    fn bias(&self) -> Bias {
        Bias::None
    }
    /// The prefix it supplies to attention, when it is a prompt-learning method.
    fn prefix(&self) -> Option<&dyn PrefixSource> {
        None
    }
    /// The virtual tokens it puts before the input, when it is prompt tuning or P-tuning.
    fn prompt(&self) -> Option<&dyn PromptProvider> {
        None
    }
    /// Whether it can be folded into the base weights.
    fn mergeable(&self) -> bool {
        true
    }
    /// Removes it from the base (peft's `delete_adapter`).
    fn remove(&mut self, base: &mut SequenceClassifier);
    /// Elements of frozen tensors peft counts in the total but does not train (AdaLoRA's
    /// `ranknum`).
    fn frozen_numel(&self, _base: &SequenceClassifier) -> i64 {
        0
    }
    /// The config to save (a method whose training changes it, as AdaLoRA's `rank_pattern`).
    fn saved_config(&self) -> AdapterConfig {
        self.config().clone()
    }
    /// A term the method adds to the training loss (AdaLoRA's orthogonality regulariser).
    fn regularization(&self, _base: &SequenceClassifier) -> Option<Tensor> {
        None
    }
    /// Called after each optimizer step (0-based `step`), before the gradients are cleared
    /// (AdaLoRA's budget allocation).
    fn after_optimizer_step(&self, _base: &SequenceClassifier, _step: usize) {}
}

/// What every method's config provides (peft's `PeftConfig` subclasses); listed in
/// [`AdapterConfig`].
pub trait MethodConfig:
    Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + 'static
{
    /// peft's `peft_type` (`LORA`, `IA3`, …).
    const PEFT_TYPE: &'static str;
    /// Keys of `adapter_config.json` whose non-default value would change what the adapter
    /// computes and that peftkit does not implement: reading such a file is an error.
    const UNSUPPORTED: &'static [&'static str] = &[];
    /// Checks values.
    fn validate(&self) -> std::result::Result<(), String>;
    /// Creates the adapter `name` on `base` (it validates first).
    fn inject(self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>>;
    /// The base model's id and revision fields.
    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>);
    /// Modules trained in full and saved with the adapter, beyond the classification head.
    fn modules_to_save(&self) -> Option<&[String]>;
    /// `adapter_config.json` as peft writes it.
    fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        v["inference_mode"] = serde_json::json!(true);
        v["peft_type"] = serde_json::json!(Self::PEFT_TYPE);
        v
    }
    /// Reads the JSON of `adapter_config.json` (`path` for errors): unknown keys peft writes are
    /// ignored, but a set [`MethodConfig::UNSUPPORTED`] key is an error.
    fn from_json(raw: serde_json::Value, path: &Path) -> Result<Self> {
        let bad = |message: String| AdapterError::Config {
            path: path.into(),
            message,
        };
        for key in Self::UNSUPPORTED {
            if let Some(v) = raw.get(*key) {
                let unset = v.is_null()
                    || *v == serde_json::json!(false)
                    || *v == serde_json::json!({})
                    || *v == serde_json::json!([]);
                if !unset {
                    return Err(bad(format!("`{key}: {v}` is not supported by peftkit")));
                }
            }
        }
        let cfg: Self = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }
}

/// Which linears a weight-based method adapts (peft's matching rules).
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// `target_modules`.
    pub targets: &'a TargetModules,
    /// `exclude_modules`.
    pub exclude: Option<&'a TargetModules>,
    /// `layers_to_transform`.
    pub layers: Option<&'a LayerIndexes>,
    /// `layers_pattern`.
    pub layers_pattern: Option<&'a TargetModules>,
}

/// What [`inject_layers`] found.
#[derive(Debug, Default)]
pub struct Injected {
    /// The adapted module paths.
    pub modules: Vec<String>,
    /// Whether any is a GPT-2 `Conv1D` (`[in, out]` weight).
    pub conv1d: bool,
}

impl Injected {
    /// Records in a method's config what peft records after injecting: `"all-linear"` becomes
    /// the (sorted) list of matched module paths, `fan_in_fan_out` is set for GPT-2's `Conv1D`
    /// (with peft's warning), `modules_to_save` defaults to the head (`classifier`, `score`).
    pub fn record(
        &self,
        target_modules: &mut Option<TargetModules>,
        fan_in_fan_out: &mut bool,
        modules_to_save: &mut Option<Vec<String>>,
        method: &str,
        adapter: &str,
    ) {
        if matches!(target_modules, Some(TargetModules::Regex(r)) if r == "all-linear") {
            let mut names = self.modules.clone();
            names.sort();
            *target_modules = Some(TargetModules::List(names));
        }
        if self.conv1d && !*fan_in_fan_out {
            tracing::warn!("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            *fan_in_fan_out = true;
        }
        modules_to_save.get_or_insert_with(crate::lora::seq_cls_modules);
        tracing::info!(adapter, modules = self.modules.len(), "{method} injected");
    }
}

/// `target_modules`, which must be set (peftkit has no per-model default list yet).
pub fn required_targets(targets: &Option<TargetModules>) -> Result<TargetModules> {
    targets.clone().ok_or_else(|| {
        AdapterError::Invalid(
            "target_modules is not set (peftkit has no per-model default list)".into(),
        )
    })
}

/// Adds adapter `name` to every linear that `targets` selects (never the head or other
/// `modules_to_save`), making each layer with `make(linear)` (which may change the base weight,
/// as PiSSA does). No match is an error listing the
/// model's linear modules; a layer that already carries adapter `name` is an error.
pub fn inject_layers(
    base: &mut SequenceClassifier,
    name: &str,
    targets: Targets<'_>,
    modules_to_save: &[String],
    mut make: impl FnMut(&mut Linear) -> Result<Box<dyn LayerAdapter>>,
) -> Result<Injected> {
    let all_paths: Vec<String> = base
        .linears()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    let mut save: Vec<String> = base
        .architecture()
        .head_modules()
        .iter()
        .map(|s| s.to_string())
        .collect();
    save.extend(modules_to_save.iter().cloned());
    let mut found = Injected::default();
    for linear in base.linears_mut() {
        let path = linear.path().to_string();
        if !is_target(
            &path,
            targets.targets,
            targets.exclude,
            targets.layers,
            targets.layers_pattern,
            &save,
        ) {
            continue;
        }
        found.conv1d |= linear.layout() == WeightLayout::InOut;
        let layer = make(linear)?;
        if linear.hook().is_some() && linear.hook_as::<AdapterLayer>().is_none() {
            return Err(AdapterError::Invalid(format!(
                "{path} already has another kind of hook"
            )));
        }
        if linear.hook().is_none() {
            linear.set_hook(Box::new(AdapterLayer::default()));
        }
        let host = linear.hook_as_mut::<AdapterLayer>().expect("just set");
        host.insert(name, layer)?;
        found.modules.push(path);
    }
    if found.modules.is_empty() {
        let mut names: Vec<String> = all_paths
            .iter()
            .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
            .collect();
        names.sort();
        names.dedup();
        return Err(AdapterError::NoTargets {
            targets: targets.targets.to_string(),
            available: names,
            example: all_paths.first().cloned().unwrap_or_default(),
        });
    }
    Ok(found)
}

/// The [`Tuner`] of every weight-based method (LoRA, DoRA, IA³): its tensors live in the
/// [`AdapterLayer`] hooks of the linears it adapts, so saving, loading, counting and removal
/// are the same for all of them.
#[derive(Debug)]
pub struct LayerTuner {
    name: String,
    config: AdapterConfig,
    bias: Bias,
}

impl LayerTuner {
    /// The tuner of adapter `name`, whose layers are injected already.
    pub fn new(name: &str, config: AdapterConfig, bias: Bias) -> Self {
        Self {
            name: name.to_string(),
            config,
            bias,
        }
    }

    fn layers<'a>(
        &'a self,
        base: &'a SequenceClassifier,
    ) -> impl Iterator<Item = (&'a str, &'a dyn LayerAdapter)> + 'a {
        base.linears().into_iter().filter_map(move |l| {
            let layer = l.hook_as::<AdapterLayer>()?.get(&self.name)?;
            Some((l.path(), layer))
        })
    }
}

impl Tuner for LayerTuner {
    fn config(&self) -> &AdapterConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut AdapterConfig {
        &mut self.config
    }

    fn parameters(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, layer) in self.layers(base) {
            for (key, t) in layer.tensors() {
                out.push((
                    format!("{PEFT_PREFIX}{path}.{}", key.in_model(&self.name)),
                    t.shallow_clone(),
                ));
            }
        }
        out
    }

    fn state_dict(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, layer) in self.layers(base) {
            for (key, t) in layer.tensors() {
                out.push((format!("{PEFT_PREFIX}{path}.{}", key.saved()), t.detach()));
            }
        }
        out
    }

    fn load_state_dict(
        &mut self,
        base: &mut SequenceClassifier,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch> {
        let device = base.device();
        for linear in base.linears_mut() {
            let path = linear.path().to_string();
            let Some(layer) = linear
                .hook_as_mut::<AdapterLayer>()
                .and_then(|h| h.get_mut(&self.name))
            else {
                continue;
            };
            for (key, slot) in layer.tensors_mut() {
                let key = format!("{PEFT_PREFIX}{path}.{}", key.saved());
                let t = tensors.remove(&key).ok_or_else(|| {
                    LoadMismatch::missing(
                        &key,
                        "the adapter's config targets this module but its weights lack it",
                    )
                })?;
                if t.size() != slot.size() {
                    return Err(LoadMismatch::shape(&key, &t.size(), &slot.size()));
                }
                let requires = slot.requires_grad();
                *slot = t
                    .to_kind(slot.kind())
                    .to_device(device)
                    .detach()
                    .set_requires_grad(requires);
            }
            layer.loaded();
        }
        Ok(())
    }

    fn set_trainable(&mut self, base: &mut SequenceClassifier, on: bool) {
        for linear in base.linears_mut() {
            if let Some(layer) = linear
                .hook_as_mut::<AdapterLayer>()
                .and_then(|h| h.get_mut(&self.name))
            {
                for (_, t) in layer.tensors_mut() {
                    *t = t.detach().set_requires_grad(on);
                }
            }
        }
    }

    fn adapted_modules(&self, base: &SequenceClassifier) -> Vec<String> {
        self.layers(base).map(|(p, _)| p.to_string()).collect()
    }

    fn bias(&self) -> Bias {
        self.bias
    }

    fn remove(&mut self, base: &mut SequenceClassifier) {
        for linear in base.linears_mut() {
            let empty = linear.hook_as_mut::<AdapterLayer>().is_some_and(|h| {
                h.remove(&self.name);
                h.is_empty()
            });
            if empty {
                linear.take_hook();
            }
        }
    }
}
