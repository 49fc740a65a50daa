//! The [`Tuner`] of every prompt-learning method (prefix tuning, prompt tuning, P-tuning): an
//! encoder of virtual tokens, not wrapping the base model (peft saves their head under
//! `base_model.`), saved as its encoded tokens (`prompt_embeddings`), never merged.

use crate::tuner::{LoadMismatch, PrefixSource, Tuner, PROMPT_LEARNING_PREFIX};
use crate::AdapterConfig;
use peftkit_models::{ModelConfig, PromptProvider, SequenceClassifier};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The key of the encoded virtual tokens in a saved prompt-learning adapter.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// A prompt-learning method's encoder of virtual tokens.
pub trait VirtualTokens: std::fmt::Debug + Send {
    /// Its tensors with peft's names below `prompt_encoder.{adapter}.`.
    fn parameters(&self) -> Vec<(String, &Tensor)>;
    /// What peft saves as `prompt_embeddings`: the tokens as the model receives them.
    fn encoded(&self) -> Tensor;
    /// Takes saved, encoded tokens (an encoder's reparameterisation is dropped, as in peft).
    fn load_encoded(&mut self, tokens: &Tensor) -> std::result::Result<(), String>;
    /// Sets whether its tensors require gradients.
    fn set_trainable(&mut self, on: bool);
    /// Per-layer keys and values (prefix tuning).
    fn prefix(&self) -> Option<&dyn PrefixSource> {
        None
    }
    /// Embeddings before the input (prompt tuning, P-tuning).
    fn prompt(&self) -> Option<&dyn PromptProvider> {
        None
    }
}

/// One prompt-learning adapter.
#[derive(Debug)]
pub(crate) struct PromptLearningTuner<E> {
    name: String,
    config: AdapterConfig,
    encoder: E,
}

impl<E: VirtualTokens> PromptLearningTuner<E> {
    /// Adapter `name` with its config and encoder.
    pub fn new(name: &str, config: AdapterConfig, encoder: E) -> Self {
        Self {
            name: name.to_string(),
            config,
            encoder,
        }
    }
}

impl<E: VirtualTokens> Tuner for PromptLearningTuner<E> {
    fn config(&self) -> &AdapterConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut AdapterConfig {
        &mut self.config
    }

    fn saved_prefix(&self) -> &'static str {
        PROMPT_LEARNING_PREFIX
    }

    fn parameters(&self, _: &SequenceClassifier) -> Vec<(String, Tensor)> {
        self.encoder
            .parameters()
            .into_iter()
            .map(|(n, t)| {
                (
                    format!("prompt_encoder.{}.{n}", self.name),
                    t.shallow_clone(),
                )
            })
            .collect()
    }

    fn state_dict(&self, _: &SequenceClassifier) -> Vec<(String, Tensor)> {
        vec![(
            PROMPT_EMBEDDINGS.to_string(),
            tch::no_grad(|| self.encoder.encoded()).detach(),
        )]
    }

    fn load_state_dict(
        &mut self,
        _: &mut SequenceClassifier,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch> {
        let t = tensors.remove(PROMPT_EMBEDDINGS).ok_or_else(|| {
            LoadMismatch::missing(
                PROMPT_EMBEDDINGS,
                "a prompt-learning adapter stores its virtual tokens there",
            )
        })?;
        self.encoder
            .load_encoded(&t)
            .map_err(|message| LoadMismatch {
                key: PROMPT_EMBEDDINGS.into(),
                message,
            })
    }

    fn set_trainable(&mut self, _: &mut SequenceClassifier, on: bool) {
        self.encoder.set_trainable(on);
    }

    fn adapted_modules(&self, _: &SequenceClassifier) -> Vec<String> {
        Vec::new()
    }

    fn prefix(&self) -> Option<&dyn PrefixSource> {
        self.encoder.prefix()
    }

    fn prompt(&self) -> Option<&dyn PromptProvider> {
        self.encoder.prompt()
    }

    fn mergeable(&self) -> bool {
        false
    }

    fn remove(&mut self, _: &mut SequenceClassifier) {}
}

/// The dimensions peft fills in from the model config: `(token_dim, num_layers, heads)`; for a
/// prefix on grouped-query attention, those of the key/value heads (peft #1901).
fn model_dims(model: &ModelConfig, prefix: bool) -> (i64, i64, i64) {
    match model {
        ModelConfig::Gpt2(c, _) => (c.n_embd, c.n_layer, c.n_head),
        ModelConfig::Bert(c, _) | ModelConfig::Roberta(c, _) => {
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
        }
        ModelConfig::DistilBert(c, _) => (c.dim, c.n_layers, c.n_heads),
        ModelConfig::Llama(c, _) if prefix => (
            c.kv_heads() * c.head_dim(),
            c.num_hidden_layers,
            c.kv_heads(),
        ),
        ModelConfig::Llama(c, _) => (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
        ModelConfig::ModernBert(c, _) => {
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
        }
        ModelConfig::DebertaV2(c, _) => (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
    }
}

/// Fills unset dimensions from the model; a set one that disagrees is an error.
pub(crate) fn resolve_dims(
    model: &ModelConfig,
    prefix: bool,
    token_dim: &mut Option<i64>,
    layers: &mut Option<i64>,
    heads: &mut Option<i64>,
    submodules: &mut Option<i64>,
) -> std::result::Result<(), String> {
    let (h, l, a) = model_dims(model, prefix);
    for (name, slot, value) in [
        ("token_dim", token_dim, h),
        ("num_layers", layers, l),
        ("num_attention_heads", heads, a),
    ] {
        match *slot {
            None => *slot = Some(value),
            Some(v) if v != value => {
                return Err(format!(
                    "{name} is {v} in the adapter but {value} in the model: the adapter was made for another base model"
                ))
            }
            Some(_) => {}
        }
    }
    submodules.get_or_insert(1);
    Ok(())
}

pub(crate) fn common_checks(
    virtual_tokens: i64,
    submodules: Option<i64>,
) -> std::result::Result<(), String> {
    if virtual_tokens <= 0 {
        return Err(format!(
            "num_virtual_tokens must be positive, got {virtual_tokens}"
        ));
    }
    if submodules.is_some_and(|n| n != 1) {
        return Err(
            "num_transformer_submodules must be 1 (encoder-only or decoder-only models)".into(),
        );
    }
    Ok(())
}

/// `nn.Linear`'s default initialisation, `(weight [out, in], bias [out])` uniform in ±1/√in (the
/// weight drawn first, as torch).
pub(crate) fn linear_init(fan_in: i64, fan_out: i64, device: Device) -> (Tensor, Tensor) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let opts = (Kind::Float, device);
    (
        Tensor::empty([fan_out, fan_in], opts).uniform_(-bound, bound),
        Tensor::empty([fan_out], opts).uniform_(-bound, bound),
    )
}
