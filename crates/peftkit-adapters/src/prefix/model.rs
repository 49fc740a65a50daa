//! A prefix-tuning adapter on a classifier: the encoder and its tensors under peft's names.

use super::{PrefixEncoder, PrefixTuningConfig};
use crate::lora::seq_cls_modules;
use crate::prompt_learning::{PromptLearningTuner, VirtualTokens};
use crate::tuner::{MethodConfig, PrefixSource, Tuner};
use crate::{AdapterError, Result};
use peftkit_models::SequenceClassifier;
use tch::Tensor;

impl VirtualTokens for PrefixEncoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        PrefixEncoder::parameters(self)
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect()
    }

    fn encoded(&self) -> Tensor {
        self.prompt_embeddings()
    }

    fn load_encoded(&mut self, tokens: &Tensor) -> std::result::Result<(), String> {
        self.load_prompt_embeddings(tokens)
    }

    fn set_trainable(&mut self, on: bool) {
        PrefixEncoder::set_trainable(self, on)
    }

    fn prefix(&self) -> Option<&dyn PrefixSource> {
        Some(self)
    }
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
        Ok(Box::new(PromptLearningTuner::new(
            name,
            self.into(),
            encoder,
        )))
    }

    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.base_model_name_or_path, &mut self.revision)
    }

    fn modules_to_save(&self) -> Option<&[String]> {
        self.modules_to_save.as_deref()
    }
}
