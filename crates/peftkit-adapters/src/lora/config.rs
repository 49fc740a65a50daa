//! `LoraConfig` with peft's field names and defaults, read from and written to
//! `adapter_config.json`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `target_modules`: names matched as suffixes of module paths, or one regular expression that
/// must match the whole path (peft's rules), or `all-linear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A module matches when its path equals a name or ends with `.name`.
    List(Vec<String>),
    /// A regular expression matched against the whole path (`"all-linear"`: every linear
    /// except the classification head).
    Regex(String),
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::List(v) => write!(f, "{v:?}"),
            TargetModules::Regex(r) => write!(f, "{r:?}"),
        }
    }
}

/// `bias`: which biases are trained and saved with the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// None (peft's default).
    #[default]
    None,
    /// Every bias of the model.
    All,
    /// The biases of the layers LoRA is applied to.
    LoraOnly,
}

/// `init_lora_weights`: `true` (A Kaiming-uniform, B zero: the adapter starts as a no-op),
/// `false` (both random: for tests), `"gaussian"` (A normal with std 1/r, B zero), or a
/// data-dependent start from the base weight: `"pissa"`, `"pissa_niter_K"`, `"olora"`
/// ([`crate::lora::init::WeightInit`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true` or `false`.
    Bool(bool),
    /// `"gaussian"`, `"pissa"`, `"pissa_niter_K"`, `"olora"`.
    Named(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Bool(true)
    }
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndexes {
    /// One layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerIndexes {
    /// Whether `i` is one of them.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerIndexes::One(x) => *x == i,
            LayerIndexes::Many(v) => v.contains(&i),
        }
    }
}

fn d_r() -> i64 {
    8
}
fn d_alpha() -> f64 {
    8.0
}
fn d_peft_type() -> String {
    "LORA".into()
}

/// A LoRA adapter's configuration (peft's `LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always `LORA`.
    #[serde(default = "d_peft_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Rank.
    #[serde(default = "d_r")]
    pub r: i64,
    /// Scaling numerator: the update is scaled by `lora_alpha / r` (or `/ √r` with rsLoRA).
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
    /// Scale by `lora_alpha / √r` (rank-stabilised LoRA).
    #[serde(default)]
    pub use_rslora: bool,
    /// The base weight is stored `[in, out]` (GPT-2's `Conv1D`); set automatically.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Initialisation.
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// Only adapt layers with these indexes.
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndexes>,
    /// The name of the layer list (`h`, `layer`) used with `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<TargetModules>,
    /// Per-module ranks: `{pattern: r}`.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, i64>,
    /// Per-module alphas: `{pattern: alpha}`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The base model's hub id or path.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// DoRA: weight-decomposed LoRA (a learned magnitude per output).
    #[serde(default)]
    pub use_dora: bool,
    /// peft writes it; true in saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
    /// LoftQ's settings with `init_lora_weights = "loftq"`: `loftq_bits` (4) and `loftq_iter`
    /// (1); peft writes `{}` otherwise.
    #[serde(default)]
    pub loftq_config: BTreeMap<String, i64>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl LoraConfig {
    /// A config with these targets, rank and alpha (other fields: peft's defaults).
    pub fn new(targets: &[&str], r: i64, lora_alpha: f64) -> Self {
        Self {
            target_modules: Some(TargetModules::List(
                targets.iter().map(|s| s.to_string()).collect(),
            )),
            r,
            lora_alpha,
            ..Default::default()
        }
    }

    /// Checks values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.r <= 0 {
            return Err(format!("r must be positive, got {}", self.r));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} is outside [0, 1)",
                self.lora_dropout
            ));
        }
        for (k, r) in &self.rank_pattern {
            if *r <= 0 {
                return Err(format!(
                    "rank_pattern `{k}`: the rank must be positive, got {r}"
                ));
            }
        }
        for k in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            if let Err(e) = regex::Regex::new(&format!(r"^(.*\.)?({k})$")) {
                return Err(format!(
                    "rank_pattern / alpha_pattern key `{k}` is not a regular expression: {e}"
                ));
            }
        }
        if let Some(k) = self
            .loftq_config
            .keys()
            .find(|k| !["loftq_bits", "loftq_iter"].contains(&k.as_str()))
        {
            return Err(format!(
                "loftq_config has an unknown key `{k}` (loftq_bits, loftq_iter)"
            ));
        }
        if matches!(&self.init_lora_weights, InitLoraWeights::Named(n) if n == "loftq") {
            let bits = self.loftq_config.get("loftq_bits").copied().unwrap_or(4);
            let iters = self.loftq_config.get("loftq_iter").copied().unwrap_or(1);
            if bits != 4 {
                return Err(format!(
                    "loftq_bits {bits}: peftkit's LoftQ quantizes to 4 bits (NF4)"
                ));
            }
            if iters < 1 {
                return Err(format!("loftq_iter must be at least 1, got {iters}"));
            }
        }
        if let InitLoraWeights::Named(n) = &self.init_lora_weights {
            if n != "gaussian" && n != "loftq" && crate::lora::init::WeightInit::parse(n).is_none()
            {
                return Err(format!(
                    "init_lora_weights `{n}` is not supported (true, false, \"gaussian\", \"pissa\", \"pissa_niter_K\", \"olora\" or \"loftq\")"
                ));
            }
        }
        Ok(())
    }

    /// Whether the initialisation moves the weights' principal part into the adapter (PiSSA,
    /// OLoRA): the trained adapter can then be converted to a plain LoRA for the original base.
    pub fn moves_base_into_adapter(&self) -> bool {
        matches!(&self.init_lora_weights, InitLoraWeights::Named(n) if crate::lora::init::WeightInit::parse(n).is_some())
    }

    /// Whether the initialisation is LoftQ's (it reads the full-precision weight, before any
    /// 4-bit quantization of the base).
    pub fn is_loftq(&self) -> bool {
        matches!(&self.init_lora_weights, InitLoraWeights::Named(n) if n == "loftq")
    }

    /// The rank and scale of the adapter at `path`, with `rank_pattern` / `alpha_pattern`
    /// applied as peft does (the key matches the end of the path at a `.` boundary).
    pub fn rank_and_scale(&self, path: &str) -> (i64, f64) {
        let matching = |k: &String| {
            regex::Regex::new(&format!(r"^(.*\.)?({k})$")).is_ok_and(|re| re.is_match(path))
        };
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| matching(k))
            .map_or(self.r, |(_, v)| *v);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| matching(k))
            .map_or(self.lora_alpha, |(_, v)| *v);
        let scale = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, scale)
    }
}
