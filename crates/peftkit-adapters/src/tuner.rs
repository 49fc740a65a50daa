//! The tuner seam (peft's `BaseTuner`): what [`crate::PeftModel`] asks of one named adapter,
//! whatever its method, and the shared injection of weight-based methods at the linear seam.
//!
//! A method is one folder with `config.rs` (peft's fields, a [`MethodConfig`]), `layer.rs` (a
//! [`LayerAdapter`] for weight-based methods, or an encoder for prompt-learning ones) and
//! `model.rs` (its [`MethodConfig::inject`]: creating the adapter on a classifier). The host
//! keeps the registry, the `modules_to_save` heads and the forward pass; it calls the methods
//! only through [`Tuner`].

use crate::lora::config::Bias;
use crate::{AdapterConfig, AdapterError, Result};
use peftkit_models::{LossScaling, PrefixProvider, PromptProvider, SequenceClassifier};
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

/// `SEQ_CLS`, every config's default `task_type` (peftkit classifies sequences).
pub(crate) fn d_task() -> Option<String> {
    Some("SEQ_CLS".into())
}

/// A float as peft writes it: an integer when it is one (`lora_alpha = 8`, not `8.0`).
pub(crate) fn json_number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        serde_json::json!(x as i64)
    } else {
        serde_json::json!(x)
    }
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
    /// (AdaLoRA's budget allocation); `scaling` as in [`TrainModel::after_optimizer_step`].
    fn after_optimizer_step(
        &self,
        _base: &SequenceClassifier,
        _step: usize,
        _scaling: Option<&LossScaling>,
    ) {
    }
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
        self.patch_json(&mut v);
        v
    }
    /// Method-specific touches to [`MethodConfig::to_json`] (peft's integers where peftkit keeps
    /// floats, fields peft always writes).
    fn patch_json(&self, _json: &mut serde_json::Value) {}
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

pub use crate::layer_tuner::{inject_layers, Injected, LayerTuner, Targets};
