//! `PrefixTuningConfig` with peft's field names and defaults.

use peftkit_models::ModelConfig;
use serde::{Deserialize, Serialize};

fn d_peft_type() -> String {
    "PREFIX_TUNING".into()
}
fn is_true(b: &bool) -> bool {
    *b
}

/// A prefix-tuning adapter's configuration, with peft's names and defaults. `token_dim`,
/// `num_layers` and `num_attention_heads` are filled in from the model when unset (as peft does).
///
/// ```
/// use peftkit_adapters::PrefixTuningConfig;
/// let cfg = PrefixTuningConfig::new(20);
/// assert!(!cfg.prefix_projection);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    /// Always `PREFIX_TUNING`.
    #[serde(default = "d_peft_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Number of virtual tokens (prefix length).
    #[serde(default = "d_virtual")]
    pub num_virtual_tokens: i64,
    /// The model's hidden size.
    #[serde(default)]
    pub token_dim: Option<i64>,
    /// 1 for encoder-only and decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<i64>,
    /// The model's attention heads.
    #[serde(default)]
    pub num_attention_heads: Option<i64>,
    /// The model's layers.
    #[serde(default)]
    pub num_layers: Option<i64>,
    /// Hidden size of the projection MLP.
    #[serde(default)]
    pub encoder_hidden_size: Option<i64>,
    /// Reparameterise the prefix with an MLP (embedding → Linear → tanh → Linear).
    #[serde(default)]
    pub prefix_projection: bool,
    /// `"zero"`: start from zeros (the last projection layer, or the embedding); unset: random.
    #[serde(default)]
    pub init_weights: Option<String>,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model's hub id or path.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// peft writes it; true in saved adapters (the prefix is then stored already projected).
    #[serde(default)]
    pub inference_mode: bool,
    /// peftkit extension: real tokens take positions after the prefix, as transformers computes
    /// them with a cache of `num_virtual_tokens` (what peft does). `false` keeps them at 0, 1, …;
    /// written to the file only when false.
    #[serde(default = "crate::tuner::d_true", skip_serializing_if = "is_true")]
    pub shift_position_ids: bool,
}

fn d_virtual() -> i64 {
    20
}

impl Default for PrefixTuningConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl PrefixTuningConfig {
    /// `num_virtual_tokens` virtual tokens, no projection.
    pub fn new(num_virtual_tokens: i64) -> Self {
        Self {
            num_virtual_tokens,
            ..Self::default()
        }
    }

    /// Checks values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::prompt_learning::common_checks(
            self.num_virtual_tokens,
            self.num_transformer_submodules,
        )?;
        if self.prefix_projection && self.encoder_hidden_size.is_some_and(|h| h <= 0) {
            return Err("encoder_hidden_size must be positive".into());
        }
        match self.init_weights.as_deref() {
            None | Some("zero") => Ok(()),
            Some(other) => Err(format!(
                "init_weights `{other}` (expected \"zero\" or null)"
            )),
        }
    }

    /// Fills `token_dim`, `num_layers`, `num_attention_heads` (and the projection's hidden size,
    /// peft's default being `token_dim`) from the model; errors when set values disagree with it.
    pub fn resolve(&mut self, model: &ModelConfig) -> std::result::Result<(), String> {
        crate::prompt_learning::resolve_dims(
            model,
            true,
            &mut self.token_dim,
            &mut self.num_layers,
            &mut self.num_attention_heads,
            &mut self.num_transformer_submodules,
        )?;
        if self.prefix_projection {
            self.encoder_hidden_size
                .get_or_insert(self.token_dim.expect("resolved"));
        }
        Ok(())
    }

    pub(crate) fn dims(&self) -> (i64, i64, i64) {
        (
            self.token_dim.expect("resolved"),
            self.num_layers.expect("resolved"),
            self.num_attention_heads.expect("resolved"),
        )
    }
}
