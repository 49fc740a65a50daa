//! [`PeftModel`]: a [`SequenceClassifier`] with named adapters of any method, like peft's
//! `PeftModelForSequenceClassification`. It is a thin host: the registry of adapters (each a
//! [`Tuner`]), the `modules_to_save` heads ([`heads`]), the forward pass and training
//! interface; the methods do the rest. The peft file format is in [`crate::format`], merging in
//! [`crate::merge`].

pub(crate) mod heads;
mod mixed;
mod train;

use crate::layer::AdapterLayer;
use crate::quant::{quantize_model, BnbConfig};
use crate::routing::BASE_ADAPTER;
use crate::tuner::{PrefixSource, Tuner};
use crate::{AdapterConfig, AdapterError, Bias, LoraConfig, Result};
use heads::Heads;
use peftkit_models::{
    ClassifierOutput, ForwardOptions, PrefixProvider, PromptProvider, SequenceClassifier,
};
use std::collections::BTreeMap;
use tch::Tensor;

/// Whether the adapter's initialisation reads the full-precision base weight before a 4-bit
/// quantization (LoftQ).
pub(crate) fn initialises_from_full_precision(config: &AdapterConfig) -> bool {
    config.as_lora().is_some_and(LoraConfig::is_loftq)
}

/// The adapter name peft uses when none is given.
pub const DEFAULT_ADAPTER: &str = "default";

/// A classifier with adapters. The base is frozen; the active adapter's own tensors, its copy of
/// the classification head (peft's `modules_to_save`) and, for LoRA, the biases chosen by
/// `bias` are trained.
pub struct PeftModel {
    pub(crate) base: SequenceClassifier,
    pub(crate) tuners: BTreeMap<String, Box<dyn Tuner>>,
    pub(crate) active: String,
    /// Inside [`PeftModel::with_adapter_disabled`].
    disabled: bool,
    /// How the base was quantized (QLoRA), recorded with the adapter.
    pub(crate) quantization: Option<Box<BnbConfig>>,
}

impl std::fmt::Debug for PeftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeftModel")
            .field("architecture", &self.base.architecture())
            .field("adapters", &self.tuners.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field(
                "quantization",
                &self.quantization.as_ref().map(|q| q.bnb_4bit_quant_type),
            )
            .finish()
    }
}

impl PeftModel {
    /// Wraps `base` with a new adapter (peft's `get_peft_model`): freezes the base, creates the
    /// adapter (LoRA layers in the target modules, a prefix encoder, …) and its trainable copy
    /// of the head.
    pub fn new(base: SequenceClassifier, config: impl Into<AdapterConfig>) -> Result<Self> {
        Self::with_adapter_name(base, config, DEFAULT_ADAPTER)
    }

    /// Like [`PeftModel::new`] with an adapter name.
    pub fn with_adapter_name(
        base: SequenceClassifier,
        config: impl Into<AdapterConfig>,
        name: &str,
    ) -> Result<Self> {
        for (_, t) in base.var_store().variables() {
            let _ = t.set_requires_grad(false);
        }
        let mut model = Self {
            base,
            tuners: BTreeMap::new(),
            active: name.to_string(),
            disabled: false,
            quantization: None,
        };
        model.add_adapter(name, config)?;
        model.activate(name);
        Ok(model)
    }

    /// QLoRA: quantizes the base to 4 bits as `quantization` says (transformers'
    /// `load_in_4bit`: every linear but the head and `llm_int8_skip_modules`), then wraps it with
    /// the adapter. The config is saved beside the adapter so a reload quantizes the same way.
    ///
    /// ```no_run
    /// use peftkit_adapters::quant::{BnbConfig, QuantType};
    /// use peftkit_adapters::{LoraConfig, PeftModel};
    /// use peftkit_models::{LoadOptions, SequenceClassifier};
    ///
    /// let (base, _) = SequenceClassifier::load("roberta-base".as_ref(), &LoadOptions::new(tch::Device::Cpu))?;
    /// let bnb = BnbConfig { bnb_4bit_quant_type: QuantType::Nf4, bnb_4bit_use_double_quant: true, ..BnbConfig::default() };
    /// let model = PeftModel::new_quantized(base, LoraConfig::new(&["query", "key", "value"], 32, 32.0), bnb)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new_quantized(
        mut base: SequenceClassifier,
        config: impl Into<AdapterConfig>,
        quantization: BnbConfig,
    ) -> Result<Self> {
        let config = config.into();
        let mut model = if initialises_from_full_precision(&config) {
            // LoftQ needs the full-precision weight; the base it leaves (the NF4-dequantized
            // weight) quantizes back to the same bytes.
            let mut m = Self::new(base, config)?;
            quantize_model(&mut m.base, &quantization)?;
            m
        } else {
            quantize_model(&mut base, &quantization)?;
            Self::new(base, config)?
        };
        model.quantization = Some(Box::new(quantization));
        Ok(model)
    }

    /// How the base was quantized, when it was (QLoRA).
    pub fn quantization(&self) -> Option<&BnbConfig> {
        self.quantization.as_deref()
    }

    /// Adds another adapter; its head starts as a copy of the original head. The active adapter
    /// does not change.
    pub fn add_adapter(&mut self, name: &str, config: impl Into<AdapterConfig>) -> Result<()> {
        if self.tuners.contains_key(name) || name == BASE_ADAPTER {
            return Err(AdapterError::Invalid(format!(
                "an adapter named `{name}` exists already (or the name is reserved)"
            )));
        }
        let mut tuner = match config.into().inject(&mut self.base, name) {
            Ok(t) => t,
            Err(e) => {
                // Nothing of a failed adapter stays behind in the layers it reached.
                for linear in self.base.linears_mut() {
                    let empty = linear.hook_as_mut::<AdapterLayer>().is_some_and(|h| {
                        h.remove(name);
                        h.is_empty()
                    });
                    if empty {
                        linear.take_hook();
                    }
                }
                return Err(e);
            }
        };
        let extra = tuner
            .config()
            .modules_to_save()
            .unwrap_or_default()
            .to_vec();
        Heads::add(&mut self.base, name, &extra);
        tuner.set_trainable(&mut self.base, false);
        Heads::set_trainable(&mut self.base, name, false);
        self.tuners.insert(name.to_string(), tuner);
        Ok(())
    }

    /// Removes adapter `name` (peft's `delete_adapter`); the active adapter cannot be removed
    /// while others exist unless another is made active first.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        if !self.tuners.contains_key(name) {
            return Err(self.no_adapter(name));
        }
        if name == self.active {
            return Err(AdapterError::Invalid(format!(
                "`{name}` is the active adapter: set another one active before deleting it"
            )));
        }
        if self.is_merged() {
            return Err(AdapterError::Invalid(
                "unmerge before deleting adapters".into(),
            ));
        }
        let mut tuner = self.tuners.remove(name).expect("checked");
        tuner.remove(&mut self.base);
        Heads::remove(&mut self.base, name);
        Ok(())
    }

    /// Removes every adapter without merging and returns the base with its original head
    /// (peft's `unload()`). A quantized base stays quantized.
    pub fn unload(mut self) -> SequenceClassifier {
        self.unmerge_adapter();
        for name in self.adapters() {
            let mut tuner = self.tuners.remove(&name).expect("listed");
            tuner.remove(&mut self.base);
            Heads::remove(&mut self.base, &name);
        }
        for linear in self.base.linears_mut() {
            if linear.hook_as::<AdapterLayer>().is_some()
                || linear.hook_as::<heads::HeadCopies>().is_some()
            {
                linear.take_hook();
            }
        }
        self.base
    }

    pub(crate) fn no_adapter(&self, name: &str) -> AdapterError {
        AdapterError::Invalid(format!(
            "no adapter `{name}` (there are: {})",
            self.adapters().join(", ")
        ))
    }

    /// Makes `name` the active adapter (its tensors and its head).
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        if !self.tuners.contains_key(name) {
            return Err(self.no_adapter(name));
        }
        if name == self.active {
            return Ok(());
        }
        if self.is_merged() {
            return Err(AdapterError::Invalid(
                "unmerge before switching adapters".into(),
            ));
        }
        self.activate(name);
        Ok(())
    }

    /// Points every layer and head at `name` and makes only its tensors (and its chosen biases)
    /// trainable.
    fn activate(&mut self, name: &str) {
        self.active = name.to_string();
        for (n, tuner) in self.tuners.iter_mut() {
            tuner.set_trainable(&mut self.base, n == name);
            Heads::set_trainable(&mut self.base, n, n == name);
        }
        for linear in self.base.linears_mut() {
            if let Some(layer) = linear.hook_as_mut::<AdapterLayer>() {
                layer.set_active(Some(name));
            }
        }
        Heads::set_active(&mut self.base, name);
        let biases = self.bias_names();
        for (n, t) in self.base.var_store().variables() {
            let _ = t.set_requires_grad(biases.contains(&n));
        }
    }

    /// The active adapter's name.
    pub fn active_adapter(&self) -> &str {
        &self.active
    }

    /// The active adapter's config.
    pub fn config(&self) -> &AdapterConfig {
        self.tuners[&self.active].config()
    }

    /// The active adapter's LoRA config, when it is a LoRA adapter.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.config().as_lora()
    }

    /// The active adapter's prefix, when it is a prompt-learning adapter (and adapters are not
    /// disabled).
    pub fn active_prefix(&self) -> Option<&dyn PrefixSource> {
        if self.disabled {
            return None;
        }
        self.tuners[&self.active].prefix()
    }

    /// The active adapter's virtual tokens, when it is prompt tuning or P-tuning (and adapters
    /// are not disabled).
    pub fn active_prompt(&self) -> Option<&dyn PromptProvider> {
        if self.disabled {
            return None;
        }
        self.tuners[&self.active].prompt()
    }

    /// The most positions any adapter's virtual tokens take before the input (prefix or prompt):
    /// what a caller subtracts from the model's positions when truncating.
    pub fn virtual_positions(&self) -> i64 {
        self.tuners
            .values()
            .map(|t| {
                t.prefix().map_or(0, |p| p.position_offset())
                    + t.prompt().map_or(0, |p| p.num_tokens())
            })
            .max()
            .unwrap_or(0)
    }

    /// The adapters' names.
    pub fn adapters(&self) -> Vec<String> {
        self.tuners.keys().cloned().collect()
    }

    /// The paths of the modules the active adapter applies to.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.tuners[&self.active].adapted_modules(&self.base)
    }

    /// The base model (with the adapters in its linears).
    pub fn base(&self) -> &SequenceClassifier {
        &self.base
    }

    /// The base variables (biases) the active adapter trains and saves (LoRA's `bias`): the
    /// head's own are in its copy.
    pub(crate) fn bias_names(&self) -> Vec<String> {
        let vars = self.base.var_store().variables();
        let heads: Vec<String> = self
            .base
            .architecture()
            .head_modules()
            .iter()
            .map(|h| format!("{h}."))
            .collect();
        let mut names: Vec<String> = match self.tuners[&self.active].bias() {
            Bias::None => vec![],
            Bias::All => vars
                .keys()
                .filter(|k| k.ends_with(".bias"))
                .cloned()
                .collect(),
            Bias::LoraOnly => self
                .adapted_modules()
                .into_iter()
                .map(|p| format!("{p}.bias"))
                .filter(|n| vars.contains_key(n))
                .collect(),
        };
        names.retain(|n| !heads.iter().any(|h| n.starts_with(h.as_str())));
        names.sort();
        names
    }

    /// Runs `f` with every adapter disabled (peft's `disable_adapter()` context): the base
    /// model's own computation, with the original head. A merged adapter is unmerged first.
    pub fn with_adapter_disabled<T>(&mut self, f: impl FnOnce(&Self) -> T) -> T {
        self.unmerge_adapter();
        self.set_disabled(true);
        let out = f(self);
        self.set_disabled(false);
        out
    }

    fn set_disabled(&mut self, disabled: bool) {
        for linear in self.base.linears_mut() {
            if let Some(layer) = linear.hook_as_mut::<AdapterLayer>() {
                layer.set_disabled(disabled);
            }
        }
        Heads::set_disabled(&mut self.base, disabled);
        self.disabled = disabled;
    }

    /// A forward pass of the classifier with the active adapter (a prompt-learning adapter
    /// supplies its prefix; `opts`' own prefix is then ignored).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
    ) -> peftkit_models::Result<ClassifierOutput> {
        let computed = self.active_prefix().map(|p| p.compute());
        let opts = ForwardOptions {
            train: opts.train,
            prefix: match &computed {
                Some(p) => Some(p.as_ref() as &dyn PrefixProvider),
                None => opts.prefix,
            },
            prompt: self.active_prompt().or(opts.prompt),
        };
        self.base.forward(input_ids, attention_mask, &opts)
    }

    /// Trainable and total parameter counts as peft's `get_nb_trainable_parameters` gives them
    /// (the head counts once more per adapter: peft keeps the original beside each copy).
    pub fn parameter_counts(&self) -> (i64, i64) {
        let (base_trainable, base_all) = self.base.parameter_counts();
        let mut adapter_all = Heads::numel(&self.base);
        let mut trainable = base_trainable;
        for (name, tuner) in &self.tuners {
            let n = tuner.numel(&self.base);
            adapter_all += n + tuner.frozen_numel(&self.base);
            if *name == self.active {
                trainable += n + Heads::parameters(&self.base, name)
                    .iter()
                    .map(|(_, t)| t.numel() as i64)
                    .sum::<i64>();
            }
        }
        (trainable, base_all + adapter_all)
    }

    /// peft's `print_trainable_parameters` line.
    pub fn trainable_summary(&self) -> String {
        let (t, a) = self.parameter_counts();
        format!(
            "trainable params: {t} || all params: {a} || trainable%: {:.4}",
            100.0 * t as f64 / a.max(1) as f64
        )
    }
}
