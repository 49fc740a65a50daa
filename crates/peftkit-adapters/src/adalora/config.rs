//! `AdaLoraConfig` with peft's field names and defaults (LoRA's targeting fields, and the
//! budget schedule).

use crate::lora::config::{Bias, LayerIndexes, TargetModules};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn d_peft_type() -> String {
    "ADALORA".into()
}
fn d_r() -> i64 {
    8
}
fn d_alpha() -> f64 {
    8.0
}
fn d_target_r() -> i64 {
    8
}
fn d_init_r() -> i64 {
    12
}
fn d_one() -> i64 {
    1
}
fn d_beta() -> f64 {
    0.85
}
fn d_orth() -> f64 {
    0.5
}

/// An AdaLoRA adapter's configuration (peft's `AdaLoraConfig`).
///
/// ```
/// use peftkit_adapters::AdaLoraConfig;
/// let cfg = AdaLoraConfig::new(&["query", "value"], 12, 8, 1000);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    /// Always `ADALORA`.
    #[serde(default = "d_peft_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Unused by AdaLoRA (peft keeps LoRA's field; `init_r` is the starting rank).
    #[serde(default = "d_r")]
    pub r: i64,
    /// The update's scale (AdaLoRA: `lora_alpha / ranknum`, not `/ r`).
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Modules to adapt.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never adapted.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Which biases to train.
    #[serde(default)]
    pub bias: Bias,
    /// The base weight is stored `[in, out]` (GPT-2's `Conv1D`); set automatically.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `true`: `E = 0`, `A`, `B` ~ N(0, 0.02) (the adapter starts as a no-op).
    #[serde(default = "crate::tuner::d_true")]
    pub init_lora_weights: bool,
    /// Only adapt layers with these indexes.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndexes>,
    /// The name of the layer list used with `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<TargetModules>,
    /// The average rank to end with.
    #[serde(default = "d_target_r")]
    pub target_r: i64,
    /// The rank every module starts with.
    #[serde(default = "d_init_r")]
    pub init_r: i64,
    /// Steps of warm-up before the budget shrinks.
    #[serde(default)]
    pub tinit: i64,
    /// Final steps at the target budget (the ranks fixed).
    #[serde(default)]
    pub tfinal: i64,
    /// Steps between two allocations.
    #[serde(default = "d_one", rename = "deltaT")]
    pub delta_t: i64,
    /// EMA factor of the importance.
    #[serde(default = "d_beta")]
    pub beta1: f64,
    /// EMA factor of the importance's uncertainty.
    #[serde(default = "d_beta")]
    pub beta2: f64,
    /// Weight of the orthogonality regulariser.
    #[serde(default = "d_orth")]
    pub orth_reg_weight: f64,
    /// Total optimizer steps of the training (required: the schedule depends on it).
    #[serde(default)]
    pub total_step: Option<i64>,
    /// The singular values kept, per module (`{path}.lora_E`: one bool per `init_r` triplet):
    /// set by the allocation, and saved so a reload builds each module at its final rank.
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
    /// The base model's hub id or path.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// peft writes it; true in saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl AdaLoraConfig {
    /// These targets, starting at rank `init_r` and ending at `target_r` on average over
    /// `total_step` steps.
    pub fn new(targets: &[&str], init_r: i64, target_r: i64, total_step: i64) -> Self {
        Self {
            target_modules: Some(TargetModules::List(
                targets.iter().map(|s| s.to_string()).collect(),
            )),
            init_r,
            target_r,
            total_step: Some(total_step),
            ..Self::default()
        }
    }

    /// Checks values (peft's `__post_init__` rules).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let total = match self.total_step {
            Some(t) if t > 0 => t,
            _ => {
                return Err(
                    "AdaLoRA does not work when `total_step` is None, supply a value > 0".into(),
                )
            }
        };
        if self.init_r <= 0 || self.target_r <= 0 {
            return Err(format!(
                "init_r and target_r must be positive, got {} and {}",
                self.init_r, self.target_r
            ));
        }
        if self.orth_reg_weight < 0.0 {
            return Err("orth_reg_weight must be at least 0".into());
        }
        if self.delta_t <= 0 || self.tinit < 0 || self.tfinal < 0 {
            return Err("deltaT must be positive, tinit and tfinal at least 0".into());
        }
        if self.tinit >= total - self.tfinal {
            return Err(format!(
                "the schedule leaves no budgeting phase: tinit ({}) must be below total_step - tfinal ({})",
                self.tinit,
                total - self.tfinal
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            ));
        }
        Ok(())
    }
}
