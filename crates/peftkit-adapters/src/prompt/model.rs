//! Prompt tuning and P-tuning adapters on a classifier: the virtual tokens, their tensors under
//! peft's names, and their initialisation from the model's word embeddings.

use super::config::{
    resolve_dims, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, Reparameterization,
};
use super::PromptEncoder;
use crate::lora::seq_cls_modules;
use crate::tuner::{LoadMismatch, MethodConfig, Tuner, PROMPT_LEARNING_PREFIX};
use crate::{AdapterConfig, AdapterError, Result};
use peftkit_models::{PromptProvider, SequenceClassifier};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The key of the virtual tokens in a saved prompt-learning adapter.
const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// One prompt-tuning or P-tuning adapter.
#[derive(Debug)]
struct PromptTuner {
    name: String,
    config: AdapterConfig,
    encoder: PromptEncoder,
}

impl PromptProvider for PromptTuner {
    fn num_tokens(&self) -> i64 {
        self.encoder.num_tokens()
    }

    fn embeddings(&self, train: bool) -> Tensor {
        self.encoder.compute(train)
    }
}

impl Tuner for PromptTuner {
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
            tch::no_grad(|| self.encoder.compute(false)).detach(),
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

    fn prompt(&self) -> Option<&dyn PromptProvider> {
        Some(self)
    }

    fn mergeable(&self) -> bool {
        false
    }

    fn remove(&mut self, _: &mut SequenceClassifier) {}
}

/// The model's word-embedding matrix `[vocab, hidden]`.
fn word_embeddings(base: &SequenceClassifier) -> Result<Tensor> {
    base.var_store()
        .variables()
        .into_iter()
        .find(|(k, _)| {
            k.ends_with("embeddings.word_embeddings.weight") || k.ends_with(".wte.weight")
        })
        .map(|(_, t)| t.detach())
        .ok_or_else(|| {
            AdapterError::Invalid(
                "the model has no word embeddings to initialise the prompt from".into(),
            )
        })
}

/// peft's `PromptEmbedding` initialisation.
fn initial_prompt(base: &SequenceClassifier, c: &PromptTuningConfig, dim: i64) -> Result<Tensor> {
    let n = c.num_virtual_tokens;
    let device = base.device();
    Ok(match c.prompt_tuning_init {
        PromptTuningInit::Random => Tensor::randn([n, dim], (Kind::Float, device)),
        PromptTuningInit::SampleVocab => {
            let words = word_embeddings(base)?;
            let ids = Tensor::randint(words.size()[0], [n], (Kind::Int64, device));
            words.index_select(0, &ids).to_kind(Kind::Float)
        }
        PromptTuningInit::Text => {
            let ids = c.init_token_ids.as_ref().filter(|v| !v.is_empty()).ok_or_else(|| {
                AdapterError::Invalid(
                    "prompt_tuning_init = TEXT needs the init text's token ids (PromptTuningConfig::init_token_ids; peftkit's pipeline sets them with the model's tokenizer)".into(),
                )
            })?;
            // As peft: the text's tokens repeated to fill the prompt, then cut to its length.
            let ids: Vec<i64> = ids.iter().cycle().take(n as usize).copied().collect();
            let words = word_embeddings(base)?;
            words
                .index_select(0, &Tensor::from_slice(&ids).to_device(device))
                .to_kind(Kind::Float)
        }
    })
}

impl MethodConfig for PromptTuningConfig {
    const PEFT_TYPE: &'static str = "PROMPT_TUNING";

    fn validate(&self) -> std::result::Result<(), String> {
        PromptTuningConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        resolve_dims(
            base.config(),
            &mut self.token_dim,
            &mut self.num_layers,
            &mut self.num_attention_heads,
            &mut self.num_transformer_submodules,
        )
        .map_err(AdapterError::Invalid)?;
        self.modules_to_save.get_or_insert_with(seq_cls_modules);
        let dim = self.token_dim.expect("resolved");
        let encoder = PromptEncoder::embedding(initial_prompt(base, &self, dim)?);
        tracing::info!(
            adapter = name,
            virtual_tokens = self.num_virtual_tokens,
            "prompt tuning"
        );
        Ok(Box::new(PromptTuner {
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

impl MethodConfig for PromptEncoderConfig {
    const PEFT_TYPE: &'static str = "P_TUNING";

    fn validate(&self) -> std::result::Result<(), String> {
        PromptEncoderConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        resolve_dims(
            base.config(),
            &mut self.token_dim,
            &mut self.num_layers,
            &mut self.num_attention_heads,
            &mut self.num_transformer_submodules,
        )
        .map_err(AdapterError::Invalid)?;
        self.modules_to_save.get_or_insert_with(seq_cls_modules);
        let dim = self.token_dim.expect("resolved");
        let hidden = *self.encoder_hidden_size.get_or_insert(dim);
        let (n, device) = (self.num_virtual_tokens, base.device());
        let encoder = match self.encoder_reparameterization_type {
            Reparameterization::Mlp => PromptEncoder::mlp(n, dim, hidden, device),
            Reparameterization::Lstm => PromptEncoder::lstm(
                n,
                dim,
                hidden,
                self.encoder_num_layers,
                self.encoder_dropout,
                device,
            ),
        };
        tracing::info!(adapter = name, virtual_tokens = n, "P-tuning");
        Ok(Box::new(PromptTuner {
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
