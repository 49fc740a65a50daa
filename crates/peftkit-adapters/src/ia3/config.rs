//! `IA3Config` with peft's field names and defaults.

use crate::lora::config::TargetModules;
use serde::{Deserialize, Serialize};

fn d_peft_type() -> String {
    "IA3".into()
}

/// An IA³ adapter's configuration (peft's `IA3Config`).
///
/// ```
/// use peftkit_adapters::{Ia3Config, TargetModules};
/// let cfg = Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"]);
/// assert!(cfg.init_ia3_weights);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Always `IA3`.
    #[serde(default = "d_peft_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Modules to adapt.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// Modules never adapted.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// The targets whose input (not output) is rescaled; a subset of `target_modules`.
    #[serde(default)]
    pub feedforward_modules: Option<TargetModules>,
    /// The base weight is stored `[in, out]` (GPT-2's `Conv1D`); set automatically.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// `true`: the vectors start at one (the adapter starts as a no-op); `false`: N(0, 1).
    #[serde(default = "crate::tuner::d_true")]
    pub init_ia3_weights: bool,
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

impl Default for Ia3Config {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

fn list(names: &[&str]) -> TargetModules {
    TargetModules::List(names.iter().map(|s| s.to_string()).collect())
}

impl Ia3Config {
    /// A config with these targets, of which `feedforward` rescale their input.
    pub fn new(targets: &[&str], feedforward: &[&str]) -> Self {
        Self {
            target_modules: Some(list(targets)),
            feedforward_modules: Some(list(feedforward)),
            ..Self::default()
        }
    }

    /// Checks values: as peft, list-valued `feedforward_modules` must be a subset of list-valued
    /// `target_modules`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let (Some(TargetModules::List(ff)), Some(TargetModules::List(t))) =
            (&self.feedforward_modules, &self.target_modules)
        {
            if let Some(extra) = ff.iter().find(|f| !t.contains(f)) {
                return Err(format!(
                    "`feedforward_modules` should be a subset of `target_modules` (`{extra}` is not a target)"
                ));
            }
        }
        Ok(())
    }
}
