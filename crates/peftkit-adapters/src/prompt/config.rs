//! `PromptTuningConfig` and `PromptEncoderConfig` with peft's field names and defaults.

use serde::{Deserialize, Serialize};

fn d_virtual() -> i64 {
    20
}
fn d_layers() -> i64 {
    2
}
fn d_prompt_type() -> String {
    "PROMPT_TUNING".into()
}
fn d_ptuning_type() -> String {
    "P_TUNING".into()
}

/// `prompt_tuning_init`: how the virtual tokens start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PromptTuningInit {
    /// N(0, 1) (an `nn.Embedding`'s initialisation; peft's default).
    #[default]
    Random,
    /// The word embeddings of `prompt_tuning_init_text`'s tokens (repeated and cut to
    /// `num_virtual_tokens`).
    Text,
    /// The word embeddings of tokens drawn uniformly from the vocabulary.
    SampleVocab,
}

/// A prompt-tuning adapter's configuration (peft's `PromptTuningConfig`).
///
/// ```
/// use peftkit_adapters::PromptTuningConfig;
/// let cfg = PromptTuningConfig::new(8);
/// assert_eq!(cfg.num_virtual_tokens, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// Always `PROMPT_TUNING`.
    #[serde(default = "d_prompt_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Number of virtual tokens.
    #[serde(default = "d_virtual")]
    pub num_virtual_tokens: i64,
    /// The model's hidden size (filled in from the model).
    #[serde(default)]
    pub token_dim: Option<i64>,
    /// 1 for encoder-only and decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<i64>,
    /// The model's attention heads (filled in).
    #[serde(default)]
    pub num_attention_heads: Option<i64>,
    /// The model's layers (filled in).
    #[serde(default)]
    pub num_layers: Option<i64>,
    /// `RANDOM`, `TEXT` or `SAMPLE_VOCAB`.
    #[serde(default)]
    pub prompt_tuning_init: PromptTuningInit,
    /// The text whose tokens initialise the prompt (`TEXT`).
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    /// The tokenizer of the text (`TEXT`); peftkit's pipeline tokenizes with the model's own.
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    /// Keyword arguments of the tokenizer (peft's; must be unset).
    #[serde(default)]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model's hub id or path.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// peft writes it; true in saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
    /// The token ids of `prompt_tuning_init_text` as peft's tokenizer call gives them (special
    /// tokens included), for `TEXT` initialisation: set by the caller that has the tokenizer.
    #[serde(skip)]
    pub init_token_ids: Option<Vec<i64>>,
}

/// P-tuning's reparameterisation of the virtual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Reparameterization {
    /// Linear → ReLU → Linear → ReLU → Linear (peft's default).
    #[default]
    Mlp,
    /// A bidirectional LSTM, then Linear → ReLU → Linear.
    Lstm,
}

/// A P-tuning adapter's configuration (peft's `PromptEncoderConfig`).
///
/// ```
/// use peftkit_adapters::{PromptEncoderConfig, prompt::Reparameterization};
/// let cfg = PromptEncoderConfig::new(8, Reparameterization::Lstm, 128);
/// assert_eq!(cfg.encoder_num_layers, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEncoderConfig {
    /// Always `P_TUNING`.
    #[serde(default = "d_ptuning_type")]
    pub peft_type: String,
    /// `SEQ_CLS` for sequence classification.
    #[serde(default = "crate::tuner::d_task")]
    pub task_type: Option<String>,
    /// Number of virtual tokens.
    #[serde(default = "d_virtual")]
    pub num_virtual_tokens: i64,
    /// The model's hidden size (filled in from the model).
    #[serde(default)]
    pub token_dim: Option<i64>,
    /// 1 for encoder-only and decoder-only models.
    #[serde(default)]
    pub num_transformer_submodules: Option<i64>,
    /// The model's attention heads (filled in).
    #[serde(default)]
    pub num_attention_heads: Option<i64>,
    /// The model's layers (filled in).
    #[serde(default)]
    pub num_layers: Option<i64>,
    /// `MLP` or `LSTM`.
    #[serde(default)]
    pub encoder_reparameterization_type: Reparameterization,
    /// The encoder's hidden size (default: the model's hidden size).
    #[serde(default)]
    pub encoder_hidden_size: Option<i64>,
    /// The LSTM's layers (the MLP always has peft's two hidden layers).
    #[serde(default = "d_layers")]
    pub encoder_num_layers: i64,
    /// Dropout between the LSTM's layers.
    #[serde(default)]
    pub encoder_dropout: f64,
    /// Modules trained in full and saved with the adapter (the classification head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model's hub id or path.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// peft writes it; true in saved adapters (the prompt is then stored already encoded).
    #[serde(default)]
    pub inference_mode: bool,
}

impl Default for PromptTuningConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl PromptTuningConfig {
    /// `num_virtual_tokens` randomly initialised virtual tokens.
    pub fn new(num_virtual_tokens: i64) -> Self {
        Self {
            num_virtual_tokens,
            ..Self::default()
        }
    }

    /// Checks values (peft's `__post_init__` rules for `TEXT`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::prompt_learning::common_checks(
            self.num_virtual_tokens,
            self.num_transformer_submodules,
        )?;
        if self.prompt_tuning_init == PromptTuningInit::Text
            && self
                .prompt_tuning_init_text
                .as_deref()
                .is_none_or(str::is_empty)
        {
            return Err("prompt_tuning_init = TEXT needs prompt_tuning_init_text".into());
        }
        if self.tokenizer_kwargs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("tokenizer_kwargs is not supported by peftkit (the model's tokenizer encodes the init text)".into());
        }
        Ok(())
    }
}

impl PromptEncoderConfig {
    /// `num_virtual_tokens` virtual tokens through `kind` with hidden size `hidden`.
    pub fn new(num_virtual_tokens: i64, kind: Reparameterization, hidden: i64) -> Self {
        Self {
            num_virtual_tokens,
            encoder_reparameterization_type: kind,
            encoder_hidden_size: Some(hidden),
            ..Self::default()
        }
    }

    /// Checks values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::prompt_learning::common_checks(
            self.num_virtual_tokens,
            self.num_transformer_submodules,
        )?;
        if self.encoder_hidden_size.is_some_and(|h| h <= 0) {
            return Err("encoder_hidden_size must be positive".into());
        }
        if self.encoder_num_layers <= 0 {
            return Err("encoder_num_layers must be positive".into());
        }
        if !(0.0..1.0).contains(&self.encoder_dropout) {
            return Err(format!(
                "encoder_dropout {} is outside [0, 1)",
                self.encoder_dropout
            ));
        }
        Ok(())
    }
}
