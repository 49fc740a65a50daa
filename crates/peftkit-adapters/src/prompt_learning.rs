//! The [`Tuner`] of every prompt-learning method (prefix tuning, prompt tuning, P-tuning): an
//! encoder of virtual tokens, not wrapping the base model (peft saves their head under
//! `base_model.`), saved as its encoded tokens (`prompt_embeddings`), never merged.

use crate::tuner::{LoadMismatch, PrefixSource, Tuner, PROMPT_LEARNING_PREFIX};
use crate::AdapterConfig;
use peftkit_models::{PromptProvider, SequenceClassifier};
use std::collections::BTreeMap;
use tch::Tensor;

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
