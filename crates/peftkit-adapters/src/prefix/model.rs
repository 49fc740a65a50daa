//! A prefix-tuning adapter on a classifier: the encoder and its tensors under peft's names.

use super::{PrefixEncoder, PrefixTuningConfig};
use crate::lora::seq_cls_modules;
use crate::tuner::{LoadMismatch, MethodConfig, PrefixSource, Tuner, PROMPT_LEARNING_PREFIX};
use crate::{AdapterConfig, AdapterError, Result};
use peftkit_models::SequenceClassifier;
use std::collections::BTreeMap;
use tch::Tensor;

/// The key of the prefix in a saved prefix-tuning adapter.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// One prefix-tuning adapter.
#[derive(Debug)]
struct PrefixTuner {
    name: String,
    config: AdapterConfig,
    encoder: PrefixEncoder,
}

impl Tuner for PrefixTuner {
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
            tch::no_grad(|| self.encoder.prompt_embeddings()).detach(),
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
                "a prefix-tuning adapter stores its prefix there",
            )
        })?;
        self.encoder
            .load_prompt_embeddings(&t)
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
        Some(&self.encoder)
    }

    fn mergeable(&self) -> bool {
        false
    }

    fn remove(&mut self, _: &mut SequenceClassifier) {}
}

impl MethodConfig for PrefixTuningConfig {
    const PEFT_TYPE: &'static str = "PREFIX_TUNING";

    fn validate(&self) -> std::result::Result<(), String> {
        PrefixTuningConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        self.resolve(base.config()).map_err(AdapterError::Invalid)?;
        self.modules_to_save.get_or_insert_with(seq_cls_modules);
        let encoder = PrefixEncoder::new(&self, base.device());
        tracing::info!(
            adapter = name,
            virtual_tokens = self.num_virtual_tokens,
            "prefix tuning"
        );
        Ok(Box::new(PrefixTuner {
            name: name.to_string(),
            config: self.into(),
            encoder,
        }))
    }

    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.base_model_name_or_path, &mut self.revision)
    }

    fn modules_to_save(&self) -> Option<&[String]> {
        self.modules_to_save.as_deref()
    }
}
