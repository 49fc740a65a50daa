//! [`SequenceClassifier`]: one type over the three architectures, like
//! `AutoModelForSequenceClassification`.

use crate::bert::BertForSequenceClassification;
use crate::checkpoint::{load_into, save_safetensors, write_dir_atomically, LoadReport, Naming};
use crate::config::{ModelConfig, ProblemType};
use crate::deberta_v2::DebertaV2ForSequenceClassification;
use crate::distilbert::DistilBertForSequenceClassification;
use crate::gpt2::Gpt2ForSequenceClassification;
use crate::linear::Linear;
use crate::llama::LlamaForSequenceClassification;
use crate::modernbert::ModernBertForSequenceClassification;
use crate::prefix::{PrefixProvider, PromptProvider};
use crate::roberta::RobertaForSequenceClassification;
use crate::{io_err, ModelError, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `GPT2ForSequenceClassification`.
    Gpt2,
    /// `RobertaForSequenceClassification`.
    Roberta,
    /// `BertForSequenceClassification`.
    Bert,
    /// `DistilBertForSequenceClassification`.
    DistilBert,
    /// `LlamaForSequenceClassification` (and Qwen2's, Mistral's).
    Llama,
    /// `ModernBertForSequenceClassification`.
    ModernBert,
    /// `DebertaV2ForSequenceClassification` (DeBERTa-v2 and v3).
    DebertaV2,
}

impl Architecture {
    fn naming(self) -> Naming {
        match self {
            Architecture::Gpt2 => Naming {
                arch: "GPT2ForSequenceClassification",
                base_prefix: "transformer",
                head_prefixes: &["score."],
                ignored_prefixes: &["lm_head."],
                ignored_suffixes: &[".attn.bias", ".attn.masked_bias"],
            },
            Architecture::Roberta => Naming {
                arch: "RobertaForSequenceClassification",
                base_prefix: "roberta",
                head_prefixes: &["classifier."],
                ignored_prefixes: &["lm_head.", "pooler."],
                ignored_suffixes: &["position_ids"],
            },
            Architecture::Bert => Naming {
                arch: "BertForSequenceClassification",
                base_prefix: "bert",
                head_prefixes: &["classifier.", "bert.pooler."],
                ignored_prefixes: &["cls."],
                ignored_suffixes: &["position_ids"],
            },
            Architecture::DebertaV2 => Naming {
                arch: "DebertaV2ForSequenceClassification",
                base_prefix: "deberta",
                head_prefixes: &["classifier.", "pooler."],
                ignored_prefixes: &["lm_predictions.", "mask_predictions.", "cls."],
                ignored_suffixes: &["position_ids"],
            },
            Architecture::ModernBert => Naming {
                arch: "ModernBertForSequenceClassification",
                base_prefix: "model",
                head_prefixes: &["classifier.", "head."],
                ignored_prefixes: &["decoder."],
                ignored_suffixes: &["inv_freq"],
            },
            Architecture::Llama => Naming {
                arch: "LlamaForSequenceClassification",
                base_prefix: "model",
                head_prefixes: &["score."],
                ignored_prefixes: &["lm_head."],
                ignored_suffixes: &["rotary_emb.inv_freq"],
            },
            Architecture::DistilBert => Naming {
                arch: "DistilBertForSequenceClassification",
                base_prefix: "distilbert",
                head_prefixes: &["classifier.", "pre_classifier."],
                ignored_prefixes: &["vocab_transform.", "vocab_layer_norm.", "vocab_projector."],
                ignored_suffixes: &["position_ids"],
            },
        }
    }

    /// The HF module names of the classification head (`score`; `classifier`), which peft saves
    /// as `modules_to_save` for sequence classification.
    pub fn head_modules(self) -> &'static [&'static str] {
        match self {
            Architecture::Gpt2 | Architecture::Llama => &["score"],
            // ModernBERT's `head` (dense + norm) is the masked-LM head's, loaded from the base.
            Architecture::Roberta | Architecture::Bert | Architecture::ModernBert => {
                &["classifier"]
            }
            // The pooler is new in every DeBERTa base checkpoint: saved with adapters too.
            Architecture::DebertaV2 => &["pooler", "classifier"],
            // `pre_classifier` is new in every base checkpoint too: peft's default
            // (`classifier`, `score`) would leave it random on reload, so it is saved as well.
            Architecture::DistilBert => &["pre_classifier", "classifier"],
        }
    }

    /// The prefix of the base model's parameters (`transformer`, `roberta`, `bert`).
    pub fn base_prefix(self) -> &'static str {
        match self {
            Architecture::Gpt2 => "transformer",
            Architecture::Roberta => "roberta",
            Architecture::Bert => "bert",
            Architecture::DistilBert => "distilbert",
            Architecture::Llama | Architecture::ModernBert => "model",
            Architecture::DebertaV2 => "deberta",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Gpt2(Gpt2ForSequenceClassification),
    Roberta(RobertaForSequenceClassification),
    Bert(BertForSequenceClassification),
    DistilBert(DistilBertForSequenceClassification),
    Llama(LlamaForSequenceClassification),
    ModernBert(ModernBertForSequenceClassification),
    DebertaV2(Box<DebertaV2ForSequenceClassification>),
}

/// Options of [`SequenceClassifier::load`], like the keyword arguments of `from_pretrained`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the parameters live.
    pub device: Device,
    /// Label names in id order; sets `num_labels`/`id2label` (the head is sized by them).
    pub labels: Option<Vec<String>>,
    /// The tokenizer's pad id, used when the config has none (GPT-2: eos).
    pub pad_token_id: Option<i64>,
}

impl LoadOptions {
    /// Defaults on a device.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            labels: None,
            pad_token_id: None,
        }
    }

    /// Sets the labels.
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Sets the pad token id.
    pub fn with_pad_token_id(mut self, id: i64) -> Self {
        self.pad_token_id = Some(id);
        self
    }
}

/// The attention mask with ones for `prompt`'s virtual tokens first (peft extends it so).
fn prompted_mask(attention_mask: &Tensor, prompt: Option<&dyn PromptProvider>) -> Tensor {
    match prompt {
        None => attention_mask.shallow_clone(),
        Some(p) => {
            let batch = attention_mask.size()[0];
            let ones = Tensor::ones(
                [batch, p.num_tokens()],
                (attention_mask.kind(), attention_mask.device()),
            );
            Tensor::cat(&[&ones, attention_mask], 1)
        }
    }
}

/// Options of one forward pass.
#[derive(Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// Training mode: dropout on.
    pub train: bool,
    /// Per-layer prefix keys/values (prefix tuning).
    pub prefix: Option<&'a dyn PrefixProvider>,
    /// Virtual-token embeddings before the input (prompt tuning, P-tuning).
    pub prompt: Option<&'a dyn PromptProvider>,
}

impl<'a> ForwardOptions<'a> {
    /// Evaluation mode, no prefix.
    pub fn eval() -> Self {
        Self::default()
    }

    /// Training mode, no prefix.
    pub fn train() -> Self {
        Self {
            train: true,
            ..Self::default()
        }
    }

    /// With a prefix provider.
    pub fn with_prefix(mut self, prefix: &'a dyn PrefixProvider) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// With virtual-token embeddings before the input.
    pub fn with_prompt(mut self, prompt: &'a dyn PromptProvider) -> Self {
        self.prompt = Some(prompt);
        self
    }
}

/// The output of a forward pass.
#[derive(Debug)]
pub struct ClassifierOutput {
    /// `[batch, num_labels]`.
    pub logits: Tensor,
    /// The pooled representation the head reads: GPT-2's last real token, BERT's pooler output,
    /// RoBERTa's `classifier.dense` + tanh output.
    pub pooled: Tensor,
    /// transformers' `hidden_states`: embeddings, then each layer (the last is the final output).
    pub hidden_states: Vec<Tensor>,
}

/// A sequence classifier of any supported architecture with its parameters.
#[derive(Debug)]
pub struct SequenceClassifier {
    vs: nn::VarStore,
    inner: Inner,
    config: ModelConfig,
    gradient_checkpointing: std::sync::atomic::AtomicBool,
}

/// What the layers of one checkpointed forward share (no parameters in it, so each layer's
/// recomputed graph needs none of it again): the attention mask, and for the rotary families
/// their masks and rotary tables too.
enum LayerShared {
    /// The additive mask (DeBERTa: the 0/1 mask it builds its own from).
    Mask(Tensor),
    /// Llama / Qwen2 / Mistral: the additive mask and the rotary tables.
    Llama(Tensor, (Tensor, Tensor)),
    /// ModernBERT: the global and local masks and their rotary tables.
    ModernBert((Tensor, Tensor), crate::modernbert::Ropes),
}

impl SequenceClassifier {
    /// A randomly initialised model (transformers' `from_config`).
    pub fn from_config(config: ModelConfig, device: Device) -> Self {
        Self::from_config_in(config, device, tch::Kind::Float)
    }

    /// [`SequenceClassifier::from_config`] with every parameter created in `kind`: a large base
    /// built in bf16 takes half the memory of fp32 until its linears are quantized. The forward
    /// computes in the parameters' kind; cast to fp32 (`var_store_mut().float()`) before
    /// training, as a bf16 checkpoint is loaded into fp32.
    ///
    /// ```no_run
    /// # use peftkit_models::{ModelConfig, SequenceClassifier};
    /// let config = ModelConfig::from_file(std::path::Path::new("llama-2-7b/config.json"))?;
    /// let mut base = SequenceClassifier::from_config_in(config, tch::Device::Cpu, tch::Kind::BFloat16);
    /// // … quantize the linears (peftkit_adapters::quant::quantize_model), then:
    /// base.var_store_mut().float();
    /// # Ok::<(), peftkit_models::ModelError>(())
    /// ```
    pub fn from_config_in(config: ModelConfig, device: Device, kind: tch::Kind) -> Self {
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let inner = match &config {
            ModelConfig::Gpt2(c, _) => Inner::Gpt2(Gpt2ForSequenceClassification::new(&root, c)),
            ModelConfig::Roberta(c, _) => {
                Inner::Roberta(RobertaForSequenceClassification::new(&root, c))
            }
            ModelConfig::Bert(c, _) => Inner::Bert(BertForSequenceClassification::new(&root, c)),
            ModelConfig::DistilBert(c, _) => {
                Inner::DistilBert(DistilBertForSequenceClassification::new(&root, c))
            }
            ModelConfig::Llama(c, _) => Inner::Llama(LlamaForSequenceClassification::new(&root, c)),
            ModelConfig::ModernBert(c, _) => {
                Inner::ModernBert(ModernBertForSequenceClassification::new(&root, c))
            }
            ModelConfig::DebertaV2(c, _) => {
                Inner::DebertaV2(Box::new(DebertaV2ForSequenceClassification::new(&root, c)))
            }
        };
        Self {
            vs,
            inner,
            config,
            gradient_checkpointing: Default::default(),
        }
    }

    /// Loads an HF checkpoint directory (`config.json` + safetensors). Parameters are matched by
    /// HF name; a checkpoint of the base model (no `transformer.`/`roberta.`/`bert.` prefix) or
    /// of another head loads too; a missing classification head is initialised (normal with
    /// `initializer_range`) and listed in the report; unknown or mis-shaped keys are errors.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
        if let Some(labels) = &opts.labels {
            config.set_labels(labels);
        }
        if config.classifier().pad_token_id.is_none() {
            if let Some(pad) = opts.pad_token_id {
                config.set_pad_token_id(pad);
            }
        }
        let mut model = Self::from_config(config, opts.device);
        let report = model.load_weights(dir)?;
        tracing::info!(dir = %dir.display(), %report, "loaded checkpoint");
        Ok((model, report))
    }

    /// Loads weights from a checkpoint directory or safetensors file into this model.
    pub fn load_weights(&mut self, path: &Path) -> Result<LoadReport> {
        load_into(&self.vs.variables(), path, &self.architecture().naming())
    }

    /// Saves an HF checkpoint directory (`config.json` + `model.safetensors`) atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        write_dir_atomically(dir, |tmp| self.write_checkpoint_files(tmp))
    }

    /// Writes `config.json` and `model.safetensors` into an existing directory (use
    /// [`write_dir_atomically`] to add more files to the same atomic save).
    pub fn write_checkpoint_files(&self, dir: &Path) -> Result<()> {
        if let Some(l) = self.linears().into_iter().find(|l| l.packed().is_some()) {
            return Err(ModelError::Input(format!(
                "`{}` holds a packed (quantized) weight: an HF checkpoint needs full-precision weights; merge_and_unload the adapter (it dequantizes) or save the adapter instead",
                l.path()
            )));
        }
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let config =
            serde_json::to_string_pretty(&self.config.to_json()).expect("JSON value serialises");
        save_safetensors(&dir.join("model.safetensors"), &tensors)?;
        std::fs::write(dir.join("config.json"), &config)
            .map_err(|e| io_err(&dir.join("config.json"), e))
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        match self.inner {
            Inner::Gpt2(_) => Architecture::Gpt2,
            Inner::Roberta(_) => Architecture::Roberta,
            Inner::Bert(_) => Architecture::Bert,
            Inner::DistilBert(_) => Architecture::DistilBert,
            Inner::Llama(_) => Architecture::Llama,
            Inner::ModernBert(_) => Architecture::ModernBert,
            Inner::DebertaV2(_) => Architecture::DebertaV2,
        }
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of labels.
    pub fn num_labels(&self) -> usize {
        self.config.classifier().num_labels()
    }

    /// Label names in id order.
    pub fn label_names(&self) -> Vec<String> {
        self.config.classifier().label_names()
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The parameter store (names are HF parameter names).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The parameter store, mutably (to freeze, cast, move).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Every linear projection (the adapter seam), with its HF path.
    pub fn linears(&self) -> Vec<&Linear> {
        match &self.inner {
            Inner::Gpt2(m) => m.linears(),
            Inner::Roberta(m) => m.linears(),
            Inner::Bert(m) => m.linears(),
            Inner::DistilBert(m) => m.linears(),
            Inner::Llama(m) => m.linears(),
            Inner::ModernBert(m) => m.linears(),
            Inner::DebertaV2(m) => m.linears(),
        }
    }

    /// Every linear projection, mutably, to attach or remove hooks.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match &mut self.inner {
            Inner::Gpt2(m) => m.linears_mut(),
            Inner::Roberta(m) => m.linears_mut(),
            Inner::Bert(m) => m.linears_mut(),
            Inner::DistilBert(m) => m.linears_mut(),
            Inner::Llama(m) => m.linears_mut(),
            Inner::ModernBert(m) => m.linears_mut(),
            Inner::DebertaV2(m) => m.linears_mut(),
        }
    }

    /// The longest input the position embeddings allow.
    pub fn max_length(&self) -> i64 {
        match &self.config {
            ModelConfig::Gpt2(c, _) => c.n_positions,
            ModelConfig::Bert(c, _) => c.max_position_embeddings,
            ModelConfig::DistilBert(c, _) => c.max_position_embeddings,
            ModelConfig::Llama(c, _) => c.max_position_embeddings,
            ModelConfig::ModernBert(c, _) => c.max_position_embeddings,
            ModelConfig::DebertaV2(c, _) => c.max_position_embeddings,
            ModelConfig::Roberta(c, _) => {
                c.max_position_embeddings - c.classifier.pad_token_id.unwrap_or(1) - 1
            }
        }
    }

    /// Logits (and pooled output and hidden states) for a batch. `input_ids` and
    /// `attention_mask` are `[batch, seq]` int64 on the model's device. Only shapes are checked
    /// (no host-device synchronisation).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<ClassifierOutput> {
        self.check_inputs(input_ids, attention_mask, opts)?;
        let prompt = opts.prompt.map(|p| p.embeddings(opts.train));
        let mask = prompted_mask(attention_mask, opts.prompt);
        let (ids, mask, prefix, prompt, train) =
            (input_ids, &mask, opts.prefix, prompt.as_ref(), opts.train);
        let (hidden_states, pooled, logits) = match &self.inner {
            Inner::Gpt2(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::Roberta(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::Bert(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::DistilBert(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::Llama(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::ModernBert(m) => m.forward(ids, mask, prefix, prompt, train),
            Inner::DebertaV2(m) => m.forward(ids, mask, prompt, train),
        };
        Ok(ClassifierOutput {
            logits,
            pooled,
            hidden_states,
        })
    }

    /// The input checks of every pass: shapes, dtype, and the positions left after a prefix or
    /// virtual tokens.
    fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<()> {
        let size = input_ids.size();
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return Err(ModelError::Input(format!(
                "input_ids must be a non-empty [batch, seq] tensor, got {size:?}"
            )));
        }
        if attention_mask.size() != size {
            return Err(ModelError::Input(format!(
                "attention_mask has shape {:?} but input_ids {size:?}",
                attention_mask.size()
            )));
        }
        let offset = opts.prefix.map_or(0, |p| p.position_offset())
            + opts.prompt.map_or(0, |p| p.num_tokens());
        if size[1] + offset > self.max_length() {
            return Err(ModelError::Input(format!(
                "sequence length {}{} exceeds the model's {} positions (truncate to max_length)",
                size[1],
                if offset > 0 {
                    format!(" after a prefix of {offset} positions")
                } else {
                    String::new()
                },
                self.max_length()
            )));
        }
        if matches!(self.inner, Inner::DebertaV2(_)) && opts.prefix.is_some() {
            return Err(ModelError::Input(
                "prefix tuning needs past key values, which DeBERTa does not have (as in transformers, so peft cannot prefix-tune it either): use prompt tuning, P-tuning or LoRA".into(),
            ));
        }
        if matches!(self.inner, Inner::Llama(_))
            && size[0] > 1
            && self.config.classifier().pad_token_id.is_none()
            && opts.prompt.is_none()
        {
            // transformers: "Cannot handle batch sizes > 1 if no padding token is defined."
            return Err(ModelError::Input(
                "a batch of more than one row needs a pad token to find each row's last token, and config.json has no pad_token_id (set it, e.g. to the tokenizer's eos id)".into(),
            ));
        }
        if input_ids.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "input_ids must be int64, got {:?}",
                input_ids.kind()
            )));
        }
        Ok(())
    }

    /// Turns gradient checkpointing on or off (HF's `gradient_checkpointing_enable`): training
    /// steps then keep only each layer's input and recompute the layer in the backward pass.
    pub fn set_gradient_checkpointing(&self, on: bool) {
        self.gradient_checkpointing
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether gradient checkpointing is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The embeddings; `mask` is the attention mask with any virtual tokens (DeBERTa zeroes the
    /// padding's embeddings).
    fn embed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        match &self.inner {
            Inner::Gpt2(m) => m.embed(ids, offset, prompt, train),
            Inner::Roberta(m) => m.embed(ids, offset, prompt, train),
            Inner::Bert(m) => m.embed(ids, offset, prompt, train),
            Inner::DistilBert(m) => m.embed(ids, offset, prompt, train),
            Inner::Llama(m) => m.embed(ids, offset, prompt, train),
            Inner::ModernBert(m) => m.embed(ids, offset, prompt, train),
            Inner::DebertaV2(m) => m.embed(ids, mask, prompt, train),
        }
    }

    fn num_layers(&self) -> usize {
        match &self.inner {
            Inner::Gpt2(m) => m.num_layers(),
            Inner::Roberta(m) => m.encoder().num_layers(),
            Inner::Bert(m) => m.encoder().num_layers(),
            Inner::DistilBert(m) => m.num_layers(),
            Inner::Llama(m) => m.num_layers(),
            Inner::ModernBert(m) => m.num_layers(),
            Inner::DebertaV2(m) => m.num_layers(),
        }
    }

    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        shared: &LayerShared,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        match (&self.inner, shared) {
            (Inner::Gpt2(m), LayerShared::Mask(mask)) => m.layer(i, x, mask, prefix, train),
            (Inner::Roberta(m), LayerShared::Mask(mask)) => {
                m.encoder().layer(i, x, mask, prefix, train)
            }
            (Inner::Bert(m), LayerShared::Mask(mask)) => {
                m.encoder().layer(i, x, mask, prefix, train)
            }
            (Inner::DistilBert(m), LayerShared::Mask(mask)) => m.layer(i, x, mask, prefix, train),
            (Inner::Llama(m), LayerShared::Llama(mask, rope)) => {
                m.layer(i, x, mask, rope, prefix, train)
            }
            (Inner::ModernBert(m), LayerShared::ModernBert(masks, ropes)) => {
                m.layer(i, x, masks, ropes, prefix, train)
            }
            (Inner::DebertaV2(m), LayerShared::Mask(mask)) => m.layer(i, x, mask, train),
            _ => unreachable!("layer context built by `layer_shared` for this model"),
        }
    }

    /// What every layer of one checkpointed forward shares, built once from the attention mask
    /// (with any virtual tokens) and the embeddings' output `x`.
    fn layer_shared(
        &self,
        full_mask: &Tensor,
        x: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
    ) -> LayerShared {
        let prefix_len = prefix.map_or(0, |p| p.num_tokens());
        let additive =
            |causal| crate::attention::additive_mask(full_mask, prefix_len, causal, x.kind());
        match &self.inner {
            Inner::Llama(m) => {
                LayerShared::Llama(m.mask(full_mask, prefix_len, x.kind()), m.rope(x, prefix))
            }
            Inner::ModernBert(m) => {
                LayerShared::ModernBert(m.masks(additive(false)), m.ropes(x, prefix))
            }
            // DeBERTa builds its boolean mask and relative embeddings in each layer: they carry
            // gradients (and dropout) that each layer's recomputed graph must hold itself.
            Inner::DebertaV2(_) => LayerShared::Mask(full_mask.shallow_clone()),
            Inner::Gpt2(_) => LayerShared::Mask(additive(true)),
            _ => LayerShared::Mask(additive(false)),
        }
    }

    /// The head on the last layer's output; `mask` is the attention mask with any virtual tokens
    /// (ModernBERT's mean pooling reads it).
    fn head(
        &self,
        last: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
        prompted: bool,
        train: bool,
    ) -> Tensor {
        match &self.inner {
            Inner::Gpt2(m) => m.head(last, ids, prompted, train),
            Inner::Roberta(m) => m.head(last, train),
            Inner::Bert(m) => m.head(last, train),
            Inner::DistilBert(m) => m.head(last, train),
            Inner::Llama(m) => m.head(last, ids, prompted, train),
            Inner::ModernBert(m) => m.head(last, mask, train),
            Inner::DebertaV2(m) => m.head(last, train),
        }
    }

    /// One training micro-batch with `opts` (its prefix, if any): accumulates the gradients of
    /// `loss × factor` into the trainable parameters and returns the loss (detached); with
    /// gradient checkpointing on, through [`SequenceClassifier::checkpointed_loss_backward`].
    pub fn loss_backward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        opts: &ForwardOptions,
        factor: &Tensor,
    ) -> Result<Tensor> {
        if self.gradient_checkpointing() {
            return self.checkpointed_loss_backward(
                input_ids,
                attention_mask,
                labels,
                opts,
                factor,
            );
        }
        let logits = self.forward(input_ids, attention_mask, opts)?.logits;
        let loss = self.loss(&logits, labels);
        (&loss * factor).backward();
        Ok(loss.detach())
    }

    /// One training micro-batch with gradient checkpointing: accumulates the gradients of
    /// `loss × factor` into the trainable parameters and returns the loss (detached).
    ///
    /// The forward pass runs without building a graph and keeps only each layer's input; the
    /// head runs with gradients and backpropagates into the last hidden state; then every layer
    /// is recomputed from its saved input with gradients and backpropagated with the incoming
    /// gradient, last layer first. Each layer reseeds the generator before running in both
    /// passes, so dropout masks are the same in the recomputation.
    pub fn checkpointed_loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        opts: &ForwardOptions,
        factor: &Tensor,
    ) -> Result<Tensor> {
        self.check_inputs(input_ids, attention_mask, opts)?;
        let train = opts.train;
        // A base seed from the CPU generator (seeded by the trainer each step): no device sync.
        let base = Tensor::randint(i64::MAX / 4, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        let seeded = |i: i64| {
            if train {
                tch::manual_seed(base + i)
            }
        };
        let n = self.num_layers();
        let offset = opts.prefix.map_or(0, |p| p.position_offset());
        // The virtual tokens' embeddings are computed once, with gradients; the embedding
        // layer runs without in the forward pass and again with them at the end.
        let prompt = opts.prompt.map(|p| p.embeddings(opts.train));
        let full_mask = prompted_mask(attention_mask, opts.prompt);
        let mut inputs = Vec::with_capacity(n + 1);
        tch::no_grad(|| {
            seeded(0);
            inputs.push(self.embed(input_ids, &full_mask, offset, prompt.as_ref(), train));
        });
        let shared = self.layer_shared(&full_mask, &inputs[0], opts.prefix);
        for i in 0..n {
            let next = tch::no_grad(|| {
                seeded(1 + i as i64);
                self.layer(i, &inputs[i], &shared, opts.prefix, train)
            });
            inputs.push(next);
        }
        let last = inputs
            .pop()
            .expect("layer outputs")
            .detach()
            .set_requires_grad(true);
        seeded(1 + n as i64);
        let logits = self.head(&last, input_ids, &full_mask, prompt.is_some(), train);
        let loss = self.loss(&logits, labels);
        (&loss * factor).backward();
        let mut grad = last.grad();
        for i in (0..n).rev() {
            let x = inputs
                .pop()
                .expect("saved layer input")
                .detach()
                .set_requires_grad(true);
            seeded(1 + i as i64);
            let y = self.layer(i, &x, &shared, opts.prefix, train);
            (y * &grad).sum(Kind::Float).backward();
            grad = x.grad();
        }
        seeded(0);
        let emb = self.embed(input_ids, &full_mask, offset, prompt.as_ref(), train);
        if emb.requires_grad() {
            (emb * &grad).sum(Kind::Float).backward();
        }
        Ok(loss.detach())
    }

    /// The loss transformers computes for these logits and labels: cross-entropy (mean) for
    /// single-label classification, MSE for regression, BCE-with-logits for multi-label.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        match self.config.classifier().problem_type() {
            ProblemType::SingleLabelClassification => {
                logits.to_kind(Kind::Float).cross_entropy_for_logits(labels)
            }
            ProblemType::Regression => logits
                .to_kind(Kind::Float)
                .squeeze()
                .mse_loss(&labels.to_kind(Kind::Float).squeeze(), tch::Reduction::Mean),
            ProblemType::MultiLabelClassification => logits
                .to_kind(Kind::Float)
                .binary_cross_entropy_with_logits::<Tensor>(
                    &labels.to_kind(Kind::Float),
                    None,
                    None,
                    tch::Reduction::Mean,
                ),
        }
    }

    /// Number of parameters: `(trainable, all)`; packed (quantized) weights count their
    /// elements.
    pub fn parameter_counts(&self) -> (i64, i64) {
        let mut trainable = 0;
        let mut all: i64 = self
            .linears()
            .iter()
            .filter_map(|l| l.packed().map(|p| p.numel()))
            .sum();
        for t in self.vs.variables().values() {
            let n = t.numel() as i64;
            all += n;
            if t.requires_grad() {
                trainable += n;
            }
        }
        (trainable, all)
    }
}
