//! The `config.json` of the Llama family — `LlamaConfig`, `Qwen2Config`, `MistralConfig` — with
//! the rotary embedding parameters in either of transformers' forms (`rope_parameters` of v5, or
//! `rope_theta` + `rope_scaling`).

use crate::config::{Activation, ClassifierConfig};
use serde::Deserialize;

/// Which member of the family a config is (`model_type`); they differ in defaults only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlamaFamily {
    /// `llama`: no biases.
    #[default]
    Llama,
    /// `qwen2`: biases on `q_proj`, `k_proj`, `v_proj`.
    Qwen2,
    /// `mistral`: an optional sliding window.
    Mistral,
}

fn default_silu() -> Activation {
    Activation::Silu
}
fn default_eps() -> f64 {
    1e-6
}
fn default_init() -> f64 {
    0.02
}

/// The rotary embedding's frequencies: `theta` and a scaling transformers supports for these
/// models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// `linear`: positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: f64,
    },
}

/// A Llama-family `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention; default: as many as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head size (default: hidden / heads).
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// MLP activation (SwiGLU's gate).
    #[serde(default = "default_silu")]
    pub hidden_act: Activation,
    /// Positions.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4 form).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4 form).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// RoPE parameters (transformers 5 form).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Biases on the attention projections (Llama's flag; Qwen2 has them on q/k/v always).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's sliding window (keys within the last `sliding_window` positions).
    #[serde(default)]
    pub sliding_window: Option<i64>,
    /// Qwen2's switch for its sliding window.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Attention probability dropout.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Std of the normal initialisation.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// The member of the family (from `model_type`).
    #[serde(skip)]
    pub family: LlamaFamily,
    /// Classification fields.
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head size.
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether `q_proj`/`k_proj`/`v_proj` have biases.
    pub fn qkv_bias(&self) -> bool {
        self.family == LlamaFamily::Qwen2 || self.attention_bias
    }

    /// Whether `o_proj` has a bias.
    pub fn o_bias(&self) -> bool {
        self.family != LlamaFamily::Qwen2 && self.attention_bias
    }

    /// The sliding window in force (Mistral's; Qwen2's only when switched on, refused then).
    pub fn window(&self) -> Option<i64> {
        match self.family {
            LlamaFamily::Mistral => self.sliding_window,
            _ => None,
        }
    }

    /// RoPE's base.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// RoPE's scaling, or a message naming the unsupported type or missing field.
    pub fn rope(&self) -> Result<RopeScaling, String> {
        let spec = self
            .rope_parameters
            .as_ref()
            .or(self.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let Some(spec) = spec else {
            return Ok(RopeScaling::None);
        };
        let kind = spec
            .get("rope_type")
            .or_else(|| spec.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let num = |key: &str| {
            spec.get(key)
                .and_then(|v| v.as_f64())
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("rope `{kind}` needs a positive `{key}`"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = s
                {
                    if high_freq_factor <= low_freq_factor {
                        return Err("rope `llama3` needs high_freq_factor > low_freq_factor".into());
                    }
                }
                Ok(s)
            }
            other => Err(format!(
                "rope type `{other}` is not supported (peftkit has default, linear and llama3)"
            )),
        }
    }

    /// The sizes that allocate, by their keys (all must be positive), and the other checks.
    pub(crate) fn check(&self) -> Result<Vec<(&'static str, i64)>, String> {
        self.rope()?;
        if !(self.theta().is_finite() && self.theta() > 1.0) {
            return Err(format!(
                "rope_theta {} must be a number above 1",
                self.theta()
            ));
        }
        let kv = self.kv_heads();
        if kv <= 0 || self.num_attention_heads % kv != 0 {
            return Err(format!(
                "num_key_value_heads {kv} must divide num_attention_heads {}",
                self.num_attention_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "head_dim {} must be even (rotary embeddings)",
                self.head_dim()
            ));
        }
        if self.family == LlamaFamily::Qwen2 && self.use_sliding_window == Some(true) {
            return Err("use_sliding_window = true is not supported for qwen2".into());
        }
        if let Some(w) = self.window() {
            if w <= 0 {
                return Err(format!("sliding_window is {w}: it must be positive"));
            }
        }
        Ok(vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", kv),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ])
    }
}
