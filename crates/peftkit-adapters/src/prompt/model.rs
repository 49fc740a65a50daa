//! Prompt tuning and P-tuning adapters on a classifier: the virtual tokens, their tensors under
//! peft's names, and their initialisation from the model's word embeddings.

use super::config::{
    PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, Reparameterization,
};
use super::PromptEncoder;
use crate::lora::seq_cls_modules;
use crate::prompt_learning::{resolve_dims, PromptLearningTuner, VirtualTokens};
use crate::tuner::{MethodConfig, Tuner};
use crate::{AdapterError, Result};
use peftkit_models::{PromptProvider, SequenceClassifier};
use tch::{Kind, Tensor};

impl PromptProvider for PromptEncoder {
    fn num_tokens(&self) -> i64 {
        PromptEncoder::num_tokens(self)
    }

    fn embeddings(&self, train: bool) -> Tensor {
        self.compute(train)
    }
}

impl VirtualTokens for PromptEncoder {
    fn parameters(&self) -> Vec<(String, &Tensor)> {
        PromptEncoder::parameters(self)
    }

    fn encoded(&self) -> Tensor {
        self.compute(false)
    }

    fn load_encoded(&mut self, tokens: &Tensor) -> std::result::Result<(), String> {
        self.load_prompt_embeddings(tokens)
    }

    fn set_trainable(&mut self, on: bool) {
        PromptEncoder::set_trainable(self, on)
    }

    fn prompt(&self) -> Option<&dyn PromptProvider> {
        Some(self)
    }
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
    if c.inference_mode {
        // A saved adapter (peft initialises from the text only when not in inference mode):
        // the tokens come from its file.
        return Ok(Tensor::zeros([n, dim], (Kind::Float, device)));
    }
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
            false,
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

impl MethodConfig for PromptEncoderConfig {
    const PEFT_TYPE: &'static str = "P_TUNING";

    fn validate(&self) -> std::result::Result<(), String> {
        PromptEncoderConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        resolve_dims(
            base.config(),
            false,
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
