//! Model configs deserialised straight from HF `config.json`.

use crate::{io_err, ModelError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// An activation function, by its HF name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation (GPT-2's `gelu_new`).
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    #[serde(rename = "gelu_tanh")]
    GeluTanh,
    /// ReLU.
    #[serde(rename = "relu")]
    Relu,
    /// SiLU / swish.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// tanh.
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Applies the activation.
    pub fn forward(&self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// How the loss is computed, as transformers' `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// Cross-entropy over classes (the default when num_labels > 1).
    #[default]
    SingleLabelClassification,
    /// Mean squared error (num_labels == 1).
    Regression,
    /// Binary cross-entropy per label.
    MultiLabelClassification,
}

/// The classification fields every `…ForSequenceClassification` config shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClassifierConfig {
    /// `id2label`; its size is `num_labels` (transformers' default: 2 labels).
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Explicit `num_labels` (rare in files, but allowed).
    #[serde(default)]
    pub num_labels: Option<usize>,
    /// `problem_type`.
    #[serde(default)]
    pub problem_type: Option<ProblemType>,
    /// `pad_token_id`.
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// `classifier_dropout` (BERT/RoBERTa; falls back to `hidden_dropout_prob`).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

impl ClassifierConfig {
    /// Number of labels.
    pub fn num_labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// Label names in id order (`LABEL_i` when the config has none).
    pub fn label_names(&self) -> Vec<String> {
        let n = self.num_labels();
        (0..n)
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// The problem type in force.
    pub fn problem_type(&self) -> ProblemType {
        self.problem_type.unwrap_or(if self.num_labels() == 1 {
            ProblemType::Regression
        } else {
            ProblemType::SingleLabelClassification
        })
    }
}

fn default_initializer_range() -> f64 {
    0.02
}
fn default_ln_eps_gpt2() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_dropout() -> f64 {
    0.1
}

/// GPT-2's `config.json` (`GPT2Config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Maximum sequence length.
    pub n_positions: i64,
    /// Hidden size.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Attention heads.
    pub n_head: i64,
    /// MLP inner size (4 × n_embd when null).
    #[serde(default)]
    pub n_inner: Option<i64>,
    /// MLP activation.
    pub activation_function: Activation,
    /// Residual dropout.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Embedding dropout.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Attention dropout.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps_gpt2")]
    pub layer_norm_epsilon: f64,
    /// Std of the normal initialisation.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Scale attention scores by 1/√head_dim.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Also scale by 1/(layer index + 1).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// End-of-text token (the pad token of every GPT-2 study).
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    /// Classification fields.
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

impl Gpt2Config {
    /// The MLP inner size.
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// The `config.json` of BERT and RoBERTa (`BertConfig`, `RobertaConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Feed-forward size.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Dropout after embeddings and sub-layers.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Attention probability dropout.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Position embeddings.
    pub max_position_embeddings: i64,
    /// Token type embeddings.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps_bert")]
    pub layer_norm_eps: f64,
    /// Std of the normal initialisation.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Classification fields.
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

fn default_type_vocab() -> i64 {
    2
}
fn default_ln_eps_bert() -> f64 {
    1e-12
}

impl BertConfig {
    /// Dropout of the classification head.
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier
            .classifier_dropout
            .unwrap_or(self.hidden_dropout_prob)
    }
}

/// A parsed `config.json` of a supported architecture, with the raw JSON kept so that a saved
/// checkpoint carries every field the original had.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type: gpt2`.
    Gpt2(Gpt2Config, serde_json::Value),
    /// `model_type: roberta`.
    Roberta(BertConfig, serde_json::Value),
    /// `model_type: bert`.
    Bert(BertConfig, serde_json::Value),
    /// `model_type: distilbert`.
    DistilBert(crate::distilbert::DistilBertConfig, serde_json::Value),
    /// `model_type: llama`, `qwen2` or `mistral`.
    Llama(crate::llama_config::LlamaConfig, serde_json::Value),
    /// `model_type: modernbert`.
    ModernBert(crate::modernbert::ModernBertConfig, serde_json::Value),
    /// `model_type: deberta-v2` (DeBERTa-v2 and v3).
    DebertaV2(crate::deberta_v2::DebertaV2Config, serde_json::Value),
}

/// The most layers a `config.json` may ask for (the largest published encoders and decoders that
/// are fine-tuned as classifiers have under 200).
const MAX_LAYERS: i64 = 1024;

impl ModelConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        Self::from_json_str(&text).map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses a `config.json` document; the error is a message without the path.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or("no `model_type` field")?
            .to_string();
        let parse_err = |e: serde_json::Error| e.to_string();
        let cfg = match model_type.as_str() {
            "gpt2" => {
                ModelConfig::Gpt2(serde_json::from_value(raw.clone()).map_err(parse_err)?, raw)
            }
            "roberta" => {
                ModelConfig::Roberta(serde_json::from_value(raw.clone()).map_err(parse_err)?, raw)
            }
            "bert" => {
                ModelConfig::Bert(serde_json::from_value(raw.clone()).map_err(parse_err)?, raw)
            }
            "distilbert" => ModelConfig::DistilBert(
                serde_json::from_value(raw.clone()).map_err(parse_err)?,
                raw,
            ),
            "deberta-v2" => ModelConfig::DebertaV2(
                serde_json::from_value(raw.clone()).map_err(parse_err)?,
                raw,
            ),
            "modernbert" => ModelConfig::ModernBert(
                serde_json::from_value(raw.clone()).map_err(parse_err)?,
                raw,
            ),
            "llama" | "qwen2" | "mistral" => {
                use crate::llama_config::{LlamaConfig, LlamaFamily};
                let mut c: LlamaConfig =
                    serde_json::from_value(raw.clone()).map_err(parse_err)?;
                c.family = match model_type.as_str() {
                    "qwen2" => LlamaFamily::Qwen2,
                    "mistral" => LlamaFamily::Mistral,
                    _ => LlamaFamily::Llama,
                };
                ModelConfig::Llama(c, raw)
            }
            other => {
                return Err(format!(
                    "model_type `{other}` is not supported (peftkit has gpt2, roberta, bert, distilbert, deberta-v2, modernbert, llama, qwen2 and mistral)"
                ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        // Every size that allocates or indexes must be positive (a negative one would panic in
        // libtorch or, cast to usize, ask for ~2^64 layers). Layer counts are also bounded.
        let sizes: Vec<(&str, i64)> = match self {
            ModelConfig::Gpt2(c, _) => vec![
                ("vocab_size", c.vocab_size),
                ("n_positions", c.n_positions),
                ("n_embd", c.n_embd),
                ("n_layer", c.n_layer),
                ("n_head", c.n_head),
                ("n_inner", c.n_inner.unwrap_or(1)),
            ],
            ModelConfig::Roberta(c, _) | ModelConfig::Bert(c, _) => vec![
                ("vocab_size", c.vocab_size),
                ("hidden_size", c.hidden_size),
                ("num_hidden_layers", c.num_hidden_layers),
                ("num_attention_heads", c.num_attention_heads),
                ("intermediate_size", c.intermediate_size),
                ("max_position_embeddings", c.max_position_embeddings),
                ("type_vocab_size", c.type_vocab_size),
            ],
            ModelConfig::DistilBert(c, _) => c.sizes(),
            ModelConfig::Llama(c, _) => c.check()?,
            ModelConfig::ModernBert(c, _) => c.check()?,
            ModelConfig::DebertaV2(c, _) => c.check()?,
        };
        for (key, v) in sizes {
            if v <= 0 {
                return Err(format!("`{key}` is {v}: it must be a positive number"));
            }
            if key.contains("layer") && v > MAX_LAYERS {
                return Err(format!(
                    "`{key}` is {v}: more than {MAX_LAYERS} layers is not a model peftkit can build"
                ));
            }
        }
        let (hidden, heads) = match self {
            ModelConfig::Gpt2(c, _) => (c.n_embd, c.n_head),
            ModelConfig::Roberta(c, _) | ModelConfig::Bert(c, _) => {
                if let Some(p) = c.position_embedding_type.as_deref() {
                    if p != "absolute" {
                        return Err(format!(
                            "position_embedding_type `{p}` is not supported (only absolute)"
                        ));
                    }
                }
                (c.hidden_size, c.num_attention_heads)
            }
            ModelConfig::DistilBert(c, _) => (c.dim, c.n_heads),
            // An explicit head_dim need not divide the hidden size.
            ModelConfig::Llama(c, _) => {
                (c.num_attention_heads * c.head_dim(), c.num_attention_heads)
            }
            ModelConfig::ModernBert(c, _) => (c.hidden_size, c.num_attention_heads),
            ModelConfig::DebertaV2(c, _) => (c.hidden_size, c.num_attention_heads),
        };
        if heads <= 0 || hidden <= 0 || hidden % heads != 0 {
            return Err(format!(
                "hidden size {hidden} is not a positive multiple of the {heads} attention heads"
            ));
        }
        if self.classifier().num_labels() == 0 {
            return Err("id2label is empty: a classifier needs at least one label".into());
        }
        Ok(())
    }

    /// The classification fields.
    pub fn classifier(&self) -> &ClassifierConfig {
        match self {
            ModelConfig::Gpt2(c, _) => &c.classifier,
            ModelConfig::Roberta(c, _) | ModelConfig::Bert(c, _) => &c.classifier,
            ModelConfig::DistilBert(c, _) => &c.classifier,
            ModelConfig::Llama(c, _) => &c.classifier,
            ModelConfig::ModernBert(c, _) => &c.classifier,
            ModelConfig::DebertaV2(c, _) => &c.classifier,
        }
    }

    fn classifier_mut(&mut self) -> &mut ClassifierConfig {
        match self {
            ModelConfig::Gpt2(c, _) => &mut c.classifier,
            ModelConfig::Roberta(c, _) | ModelConfig::Bert(c, _) => &mut c.classifier,
            ModelConfig::DistilBert(c, _) => &mut c.classifier,
            ModelConfig::Llama(c, _) => &mut c.classifier,
            ModelConfig::ModernBert(c, _) => &mut c.classifier,
            ModelConfig::DebertaV2(c, _) => &mut c.classifier,
        }
    }

    /// transformers' `model_type` (`gpt2`, `bert`, `qwen2`, ...), which peft keys its defaults by.
    pub fn model_type(&self) -> &str {
        self.raw()
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
    }

    /// The raw JSON.
    pub fn raw(&self) -> &serde_json::Value {
        match self {
            ModelConfig::Gpt2(_, r)
            | ModelConfig::Roberta(_, r)
            | ModelConfig::Bert(_, r)
            | ModelConfig::DistilBert(_, r)
            | ModelConfig::Llama(_, r)
            | ModelConfig::ModernBert(_, r)
            | ModelConfig::DebertaV2(_, r) => r,
        }
    }

    fn raw_mut(&mut self) -> &mut serde_json::Value {
        match self {
            ModelConfig::Gpt2(_, r)
            | ModelConfig::Roberta(_, r)
            | ModelConfig::Bert(_, r)
            | ModelConfig::DistilBert(_, r)
            | ModelConfig::Llama(_, r)
            | ModelConfig::ModernBert(_, r)
            | ModelConfig::DebertaV2(_, r) => r,
        }
    }

    /// Sets the labels (names in id order): `id2label`, `label2id` and `num_labels`.
    pub fn set_labels(&mut self, names: &[String]) {
        let id2label: BTreeMap<String, String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n.clone()))
            .collect();
        let cls = self.classifier_mut();
        cls.id2label = Some(id2label.clone());
        cls.num_labels = None;
        let raw = self.raw_mut();
        raw["id2label"] = serde_json::json!(id2label);
        raw["label2id"] = serde_json::Value::Object(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), serde_json::json!(i)))
                .collect(),
        );
        if let Some(obj) = raw.as_object_mut() {
            obj.remove("num_labels");
        }
    }

    /// Sets `pad_token_id` (GPT-2 classifiers need it to find the last real token).
    pub fn set_pad_token_id(&mut self, id: i64) {
        self.classifier_mut().pad_token_id = Some(id);
        self.raw_mut()["pad_token_id"] = serde_json::json!(id);
    }

    /// The config as written to a checkpoint (`architectures` set to the classifier class).
    pub fn to_json(&self) -> serde_json::Value {
        let mut raw = self.raw().clone();
        let arch = match self {
            ModelConfig::Gpt2(..) => "GPT2ForSequenceClassification",
            ModelConfig::Roberta(..) => "RobertaForSequenceClassification",
            ModelConfig::Bert(..) => "BertForSequenceClassification",
            ModelConfig::DistilBert(..) => "DistilBertForSequenceClassification",
            ModelConfig::ModernBert(..) => "ModernBertForSequenceClassification",
            ModelConfig::DebertaV2(..) => "DebertaV2ForSequenceClassification",
            ModelConfig::Llama(c, _) => match c.family {
                crate::llama_config::LlamaFamily::Llama => "LlamaForSequenceClassification",
                crate::llama_config::LlamaFamily::Qwen2 => "Qwen2ForSequenceClassification",
                crate::llama_config::LlamaFamily::Mistral => "MistralForSequenceClassification",
            },
        };
        raw["architectures"] = serde_json::json!([arch]);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_activation_is_an_error() {
        let err = ModelConfig::from_json_str(
            r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
               "intermediate_size":16,"hidden_act":"mish","max_position_embeddings":16}"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown variant `mish`"), "{err}");
    }

    #[test]
    fn unsupported_model_and_bad_heads() {
        assert!(ModelConfig::from_json_str(r#"{"model_type":"t5"}"#)
            .unwrap_err()
            .contains("not supported"));
        let err = ModelConfig::from_json_str(
            r#"{"model_type":"gpt2","vocab_size":10,"n_positions":8,"n_embd":10,"n_layer":1,"n_head":3,"activation_function":"gelu_new"}"#,
        )
        .unwrap_err();
        assert!(err.contains("multiple of the 3 attention heads"), "{err}");
        assert!(ModelConfig::from_json_str("{")
            .unwrap_err()
            .contains("invalid JSON"));
    }

    #[test]
    fn labels_default_and_set() {
        let mut cfg = ModelConfig::from_json_str(
            r#"{"model_type":"gpt2","vocab_size":10,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"activation_function":"gelu_new"}"#,
        )
        .unwrap();
        assert_eq!(cfg.classifier().num_labels(), 2);
        assert_eq!(cfg.classifier().label_names(), vec!["LABEL_0", "LABEL_1"]);
        cfg.set_labels(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(cfg.classifier().num_labels(), 3);
        assert_eq!(cfg.to_json()["label2id"]["c"], 2);
        assert_eq!(
            cfg.to_json()["architectures"][0],
            "GPT2ForSequenceClassification"
        );
    }
}
