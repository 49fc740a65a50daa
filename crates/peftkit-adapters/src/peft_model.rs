//! [`PeftModel`]: a [`SequenceClassifier`] with LoRA, QLoRA or prefix-tuning adapters, like
//! peft's `PeftModelForSequenceClassification`.

use crate::adapter_config::AdapterConfig;
use crate::lora::config::{Bias, InitLoraWeights, LoraConfig};
use crate::lora::layer::{LoraLayer, LoraWeights};
use crate::prefix::PrefixEncoder;
use crate::quant::{quantize_4bit, quantize_model, BnbConfig, Packed4bit, QUANT_CONFIG_FILE};
use crate::targets::is_target;
use crate::{AdapterError, Result};
use peftkit_models::{
    read_safetensors, save_safetensors, write_dir_atomically, ForwardOptions, Linear, ModelError,
    PrefixProvider, SequenceClassifier, TrainModel,
};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The key prefix peft gives every saved tensor of a LoRA adapter (and the in-model names).
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The key prefix of the head's tensors in a saved prefix-tuning adapter (prompt-learning methods
/// do not wrap the base model).
pub const PROMPT_LEARNING_PREFIX: &str = "base_model.";
/// The key of the prefix in a saved prefix-tuning adapter.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";
/// The adapter name peft uses when none is given.
pub const DEFAULT_ADAPTER: &str = "default";

fn lora_of(linear: &Linear) -> Option<&LoraLayer> {
    linear
        .hook()
        .and_then(|h| h.as_any().downcast_ref::<LoraLayer>())
}

/// A classifier with adapters (LoRA, QLoRA, prefix tuning). The base is frozen; the active
/// adapter's weights (LoRA factors, or the prefix encoder), the classification head (peft's
/// `modules_to_save`) and, for LoRA, the biases chosen by `bias` are trained.
pub struct PeftModel {
    base: SequenceClassifier,
    configs: BTreeMap<String, AdapterConfig>,
    /// The prefix encoders of prefix-tuning adapters.
    prefixes: BTreeMap<String, PrefixEncoder>,
    /// Inside [`PeftModel::with_adapter_disabled`].
    prefix_disabled: bool,
    active: String,
    /// The head as it was before any training: a new adapter starts from a copy (peft's
    /// `ModulesToSaveWrapper`).
    original_head: Vec<(String, Tensor)>,
    /// The heads of inactive adapters (the active one's is in the model).
    heads: BTreeMap<String, Vec<(String, Tensor)>>,
    /// Names of the base variables of the head.
    head_names: Vec<String>,
    /// How the base was quantized (QLoRA), recorded with the adapter.
    quantization: Option<Box<BnbConfig>>,
}

impl std::fmt::Debug for PeftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeftModel")
            .field("architecture", &self.base.architecture())
            .field("adapters", &self.configs.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field(
                "quantization",
                &self.quantization.as_ref().map(|q| q.bnb_4bit_quant_type),
            )
            .finish()
    }
}

impl PeftModel {
    /// Wraps `base` with a new adapter (peft's `get_peft_model`): freezes the base, injects LoRA
    /// into the target modules (or creates the prefix encoder), and makes the head (and LoRA's
    /// chosen biases) trainable.
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
        let head_prefixes: Vec<String> = base
            .architecture()
            .head_modules()
            .iter()
            .map(|h| format!("{h}."))
            .collect();
        let mut head_names: Vec<String> = base
            .var_store()
            .variables()
            .keys()
            .filter(|k| head_prefixes.iter().any(|h| k.starts_with(h.as_str())))
            .cloned()
            .collect();
        head_names.sort();
        let vars = base.var_store().variables();
        let original_head = head_names
            .iter()
            .map(|n| (n.clone(), vars[n].detach().copy()))
            .collect();
        let mut model = Self {
            base,
            configs: BTreeMap::new(),
            active: name.to_string(),
            original_head,
            heads: BTreeMap::new(),
            head_names,
            quantization: None,
            prefixes: BTreeMap::new(),
            prefix_disabled: false,
        };
        model.inject(name, config.into())?;
        model.refresh_trainable();
        Ok(model)
    }

    /// QLoRA: quantizes the base to 4 bits as `quantization` says (transformers'
    /// `load_in_4bit`: every linear but the head and `llm_int8_skip_modules`), then wraps it with a
    /// LoRA adapter. The config is saved beside the adapter so a reload quantizes the same way.
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
        quantize_model(&mut base, &quantization)?;
        let mut model = Self::new(base, config)?;
        model.quantization = Some(Box::new(quantization));
        Ok(model)
    }

    /// How the base was quantized, when it was (QLoRA).
    pub fn quantization(&self) -> Option<&BnbConfig> {
        self.quantization.as_deref()
    }

    fn modules_to_save(&self, config: &LoraConfig) -> Vec<String> {
        let mut m: Vec<String> = self
            .base
            .architecture()
            .head_modules()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for extra in config.modules_to_save.iter().flatten() {
            if !m.contains(extra) {
                m.push(extra.clone());
            }
        }
        m
    }

    /// Creates adapter `name`.
    fn inject(&mut self, name: &str, config: AdapterConfig) -> Result<()> {
        match config {
            AdapterConfig::Lora(c) => self.inject_lora(name, c),
            AdapterConfig::PrefixTuning(mut c) => {
                c.validate().map_err(AdapterError::Invalid)?;
                c.resolve(self.base.config())
                    .map_err(AdapterError::Invalid)?;
                if c.modules_to_save.is_none() {
                    c.modules_to_save = Some(vec!["classifier".into(), "score".into()]);
                }
                let encoder = PrefixEncoder::new(&c, self.base.device());
                tracing::info!(
                    adapter = name,
                    virtual_tokens = c.num_virtual_tokens,
                    "prefix tuning"
                );
                self.prefixes.insert(name.to_string(), encoder);
                self.configs
                    .insert(name.to_string(), AdapterConfig::PrefixTuning(c));
                Ok(())
            }
        }
    }

    /// Creates LoRA adapter `name` in every matching module.
    fn inject_lora(&mut self, name: &str, mut config: LoraConfig) -> Result<()> {
        config.validate().map_err(AdapterError::Invalid)?;
        let targets = config.target_modules.clone().ok_or_else(|| {
            AdapterError::Invalid(
                "target_modules is not set (peftkit has no per-model default list)".into(),
            )
        })?;
        let save = self.modules_to_save(&config);
        let device = self.base.device();
        let mut matched = Vec::new();
        let mut conv1d = false;
        let all_paths: Vec<String> = self
            .base
            .linears()
            .iter()
            .map(|l| l.path().to_string())
            .collect();
        for linear in self.base.linears_mut() {
            let path = linear.path().to_string();
            if !is_target(
                &path,
                &targets,
                config.exclude_modules.as_ref(),
                config.layers_to_transform.as_ref(),
                config.layers_pattern.as_ref(),
                &save,
            ) {
                continue;
            }
            if linear.layout() == peftkit_models::WeightLayout::InOut {
                conv1d = true;
            }
            let (r, scale) = config.rank_and_scale(&path);
            let (fan_in, fan_out) = (linear.in_features(), linear.out_features());
            let opts = (Kind::Float, device);
            let (a, b) = match &config.init_lora_weights {
                InitLoraWeights::Bool(true) => {
                    // kaiming_uniform_(a=√5) on [r, in]: bound 1/√in; B zero.
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    (
                        Tensor::empty([r, fan_in], opts).uniform_(-bound, bound),
                        Tensor::zeros([fan_out, r], opts),
                    )
                }
                InitLoraWeights::Bool(false) => {
                    let (ba, bb) = (1.0 / (fan_in as f64).sqrt(), 1.0 / (r as f64).sqrt());
                    (
                        Tensor::empty([r, fan_in], opts).uniform_(-ba, ba),
                        Tensor::empty([fan_out, r], opts).uniform_(-bb, bb),
                    )
                }
                InitLoraWeights::Named(_) => (
                    Tensor::randn([r, fan_in], opts) / r as f64,
                    Tensor::zeros([fan_out, r], opts),
                ),
            };
            let weights = LoraWeights {
                a,
                b,
                scale,
                dropout: config.lora_dropout,
            };
            match linear
                .hook_mut()
                .and_then(|h| h.as_any_mut().downcast_mut::<LoraLayer>())
            {
                Some(layer) => {
                    layer.adapters.insert(name.to_string(), weights);
                }
                None => {
                    if linear.hook().is_some() {
                        return Err(AdapterError::Invalid(format!(
                            "{path} already has another kind of adapter"
                        )));
                    }
                    let mut layer = LoraLayer {
                        active: Some(self.active.clone()),
                        ..Default::default()
                    };
                    layer.adapters.insert(name.to_string(), weights);
                    linear.set_hook(Box::new(layer));
                }
            }
            matched.push(path);
        }
        if matched.is_empty() {
            let mut names: Vec<String> = all_paths
                .iter()
                .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
                .collect();
            names.sort();
            names.dedup();
            return Err(AdapterError::NoTargets {
                targets: targets.to_string(),
                available: names,
                example: all_paths.first().cloned().unwrap_or_default(),
            });
        }
        if conv1d && !config.fan_in_fan_out {
            tracing::warn!("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config.fan_in_fan_out = true;
        }
        if config.modules_to_save.is_none() {
            // What peft records for sequence classification.
            config.modules_to_save = Some(vec!["classifier".into(), "score".into()]);
        }
        tracing::info!(adapter = name, modules = matched.len(), "LoRA injected");
        self.configs
            .insert(name.to_string(), AdapterConfig::Lora(config));
        Ok(())
    }

    /// A copy of the head's current values.
    fn head_snapshot(&self) -> Vec<(String, Tensor)> {
        let vars = self.base.var_store().variables();
        self.head_names
            .iter()
            .map(|n| (n.clone(), vars[n].detach().copy()))
            .collect()
    }

    /// Writes saved values into the head.
    fn restore_head(&self, values: &[(String, Tensor)]) {
        let vars = self.base.var_store().variables();
        for (n, t) in values {
            let mut v = vars[n].shallow_clone();
            tch::no_grad(|| v.copy_(t));
        }
    }

    /// Adds another adapter; its head starts as a copy of the original head. The active adapter
    /// does not change.
    pub fn add_adapter(&mut self, name: &str, config: impl Into<AdapterConfig>) -> Result<()> {
        if self.configs.contains_key(name) {
            return Err(AdapterError::Invalid(format!(
                "an adapter named `{name}` exists already"
            )));
        }
        self.inject(name, config.into())?;
        let head = self
            .original_head
            .iter()
            .map(|(n, t)| (n.clone(), t.copy()))
            .collect();
        self.heads.insert(name.to_string(), head);
        Ok(())
    }

    /// Makes `name` the active adapter (its LoRA factors and its head).
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        if !self.configs.contains_key(name) {
            return Err(AdapterError::Invalid(format!(
                "no adapter `{name}` (there are: {})",
                self.configs.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if name == self.active {
            return Ok(());
        }
        if self.is_merged() {
            return Err(AdapterError::Invalid(
                "unmerge before switching adapters".into(),
            ));
        }
        let live = self.head_snapshot();
        self.heads.insert(self.active.clone(), live);
        if let Some(head) = self.heads.remove(name) {
            self.restore_head(&head);
        }
        self.active = name.to_string();
        for linear in self.base.linears_mut() {
            if let Some(layer) = linear
                .hook_mut()
                .and_then(|h| h.as_any_mut().downcast_mut::<LoraLayer>())
            {
                layer.active = Some(name.to_string());
            }
        }
        self.refresh_trainable();
        Ok(())
    }

    /// The active adapter's name.
    pub fn active_adapter(&self) -> &str {
        &self.active
    }

    /// The active adapter's config.
    pub fn config(&self) -> &AdapterConfig {
        &self.configs[&self.active]
    }

    /// The active adapter's LoRA config, when it is a LoRA adapter.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.config().as_lora()
    }

    /// The active adapter's prefix encoder, when it is a prefix-tuning adapter (and adapters are
    /// not disabled).
    pub fn active_prefix(&self) -> Option<&PrefixEncoder> {
        if self.prefix_disabled {
            return None;
        }
        self.prefixes.get(&self.active)
    }

    /// The key prefix of the head's tensors in the active adapter's saved file.
    fn saved_prefix(&self) -> &'static str {
        match self.config() {
            AdapterConfig::Lora(_) => PEFT_PREFIX,
            AdapterConfig::PrefixTuning(_) => PROMPT_LEARNING_PREFIX,
        }
    }

    /// The adapters' names.
    pub fn adapters(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// The paths of the modules the active adapter applies to.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.base
            .linears()
            .into_iter()
            .filter(|l| lora_of(l).is_some_and(|h| h.adapters.contains_key(&self.active)))
            .map(|l| l.path().to_string())
            .collect()
    }

    /// The base model (with the adapters in its linears).
    pub fn base(&self) -> &SequenceClassifier {
        &self.base
    }

    fn bias_names(&self) -> Vec<String> {
        let bias = match &self.configs[&self.active] {
            AdapterConfig::Lora(c) => c.bias,
            AdapterConfig::PrefixTuning(_) => Bias::None,
        };
        let vars = self.base.var_store().variables();
        let mut names: Vec<String> = match bias {
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
        names.retain(|n| !self.head_names.contains(n));
        names.sort();
        names
    }

    /// Only the active adapter's factors, the head and the chosen biases require gradients.
    fn refresh_trainable(&mut self) {
        let vars = self.base.var_store().variables();
        let bias = self.bias_names();
        for (name, t) in &vars {
            let _ = t.set_requires_grad(self.head_names.contains(name) || bias.contains(name));
        }
        let active = self.active.clone();
        for linear in self.base.linears_mut() {
            if let Some(layer) = linear
                .hook_mut()
                .and_then(|h| h.as_any_mut().downcast_mut::<LoraLayer>())
            {
                for (name, w) in layer.adapters.iter_mut() {
                    let on = *name == active;
                    w.a = w.a.detach().set_requires_grad(on);
                    w.b = w.b.detach().set_requires_grad(on);
                }
            }
        }
        for (name, encoder) in self.prefixes.iter_mut() {
            encoder.set_trainable(*name == active);
        }
    }

    /// Whether any adapter is merged into the base weights.
    pub fn is_merged(&self) -> bool {
        self.base
            .linears()
            .iter()
            .any(|l| lora_of(l).is_some_and(|h| !h.merged.is_empty()))
    }

    /// Folds the active adapter into the base weights (`merge_adapter`); merging twice does
    /// nothing more.
    pub fn merge_adapter(&mut self) {
        let name = self.active.clone();
        for linear in self.base.linears_mut() {
            if let Some(mut hook) = linear.take_hook() {
                if let Some(layer) = hook.as_any_mut().downcast_mut::<LoraLayer>() {
                    layer.merge(linear, &name);
                }
                linear.set_hook(hook);
            }
        }
    }

    /// Merges the active adapter and, on a quantized base, quantizes the merged weights again with
    /// the same settings (peft's merge into a bitsandbytes 4-bit layer): memory stays at 4 bits,
    /// and the outputs move by what 4-bit rounding of the merged weight costs. Unmerging restores
    /// the original quantized weights exactly (peft subtracts and re-quantizes once more).
    pub fn merge_adapter_requantized(&mut self) -> Result<()> {
        self.merge_adapter();
        for linear in self.base.linears_mut() {
            let Some(layer) = linear
                .hook()
                .and_then(|h| h.as_any().downcast_ref::<LoraLayer>())
            else {
                continue;
            };
            let Some(original) = layer
                .stashed
                .as_ref()
                .and_then(|p| p.as_any().downcast_ref::<Packed4bit>())
            else {
                continue;
            };
            let (blocksize, quant_type, nested, compute) = (
                original.weight.blocksize,
                original.weight.quant_type,
                matches!(original.weight.absmax, crate::quant::Absmax::Nested { .. }),
                original.compute_dtype,
            );
            linear.pack(|w| -> Result<Box<dyn peftkit_models::PackedWeight>> {
                Ok(Box::new(Packed4bit {
                    weight: quantize_4bit(w, blocksize, quant_type, nested)?,
                    compute_dtype: compute,
                }))
            })?;
        }
        Ok(())
    }

    /// Takes every merged adapter back out of the base weights.
    pub fn unmerge_adapter(&mut self) {
        for linear in self.base.linears_mut() {
            if let Some(mut hook) = linear.take_hook() {
                if let Some(layer) = hook.as_any_mut().downcast_mut::<LoraLayer>() {
                    layer.unmerge(linear);
                }
                linear.set_hook(hook);
            }
        }
    }

    /// Merges the active adapter and returns the plain classifier with the active head
    /// (`merge_and_unload`).
    ///
    /// On a quantized base the result holds full-precision weights: each quantized weight is
    /// dequantized (plus the adapter's delta where it applies), so it can be saved as an HF
    /// checkpoint.
    ///
    /// A prefix-tuning adapter cannot be merged into weights (as in peft): an error.
    pub fn merge_and_unload(mut self) -> Result<SequenceClassifier> {
        if let AdapterConfig::PrefixTuning(_) = self.config() {
            return Err(AdapterError::Invalid(
                "a prefix-tuning adapter cannot be merged into the model's weights (as in peft): keep the adapter, or use LoRA".into(),
            ));
        }
        self.merge_adapter();
        for linear in self.base.linears_mut() {
            linear.take_hook();
            linear.unpack();
        }
        for (_, t) in self.base.var_store().variables() {
            let _ = t.set_requires_grad(true);
        }
        Ok(self.base)
    }

    /// Runs `f` with every adapter disabled (peft's `disable_adapter()` context): the base
    /// model's own computation, with the original head. A merged adapter is unmerged first.
    pub fn with_adapter_disabled<T>(&mut self, f: impl FnOnce(&Self) -> T) -> T {
        self.unmerge_adapter();
        let set = |model: &mut Self, disabled: bool| {
            for linear in model.base.linears_mut() {
                if let Some(layer) = linear
                    .hook_mut()
                    .and_then(|h| h.as_any_mut().downcast_mut::<LoraLayer>())
                {
                    layer.disabled = disabled;
                }
            }
        };
        // As peft's ModulesToSaveWrapper: with adapters disabled the original head computes.
        let live = self.head_snapshot();
        self.restore_head(&self.original_head);
        set(self, true);
        self.prefix_disabled = true;
        let out = f(self);
        self.prefix_disabled = false;
        set(self, false);
        self.restore_head(&live);
        out
    }

    /// A forward pass of the classifier with the active adapter (a prefix-tuning adapter supplies
    /// its prefix; `opts`' own prefix is then ignored).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        opts: &ForwardOptions,
    ) -> peftkit_models::Result<peftkit_models::ClassifierOutput> {
        let computed = self.active_prefix().map(PrefixEncoder::compute);
        let opts = ForwardOptions {
            train: opts.train,
            prefix: match &computed {
                Some(p) => Some(p as &dyn PrefixProvider),
                None => opts.prefix,
            },
        };
        self.base.forward(input_ids, attention_mask, &opts)
    }

    /// The active adapter's tensors under peft's saved names.
    pub fn adapter_state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        if let Some(p) = self.prefixes.get(&self.active) {
            out.push((
                PROMPT_EMBEDDINGS.to_string(),
                tch::no_grad(|| p.prompt_embeddings()).detach(),
            ));
        }
        for linear in self.base.linears() {
            if let Some(w) = lora_of(linear).and_then(|h| h.adapters.get(&self.active)) {
                out.push((
                    format!("{PEFT_PREFIX}{}.lora_A.weight", linear.path()),
                    w.a.detach(),
                ));
                out.push((
                    format!("{PEFT_PREFIX}{}.lora_B.weight", linear.path()),
                    w.b.detach(),
                ));
            }
        }
        let vars = self.base.var_store().variables();
        let prefix = self.saved_prefix();
        for n in self.head_names.iter().chain(&self.bias_names()) {
            out.push((format!("{prefix}{n}"), vars[n].detach()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Saves the active adapter in peft's format: `adapter_config.json` and
    /// `adapter_model.safetensors`, written atomically.
    pub fn save_pretrained(
        &self,
        dir: &Path,
        base_model_name_or_path: Option<&str>,
        revision: Option<&str>,
    ) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            self.write_adapter_files(tmp, base_model_name_or_path, revision)
        })
    }

    /// Writes the adapter files into an existing directory (use [`write_dir_atomically`] to add
    /// more files to the same atomic save).
    pub fn write_adapter_files(
        &self,
        dir: &Path,
        base_model_name_or_path: Option<&str>,
        revision: Option<&str>,
    ) -> Result<()> {
        let mut cfg = self.configs[&self.active].clone();
        if base_model_name_or_path.is_some() {
            cfg.set_base_model(base_model_name_or_path, revision);
        }
        let json = serde_json::to_string_pretty(&cfg.to_json()).expect("config serialises");
        save_safetensors(
            &dir.join("adapter_model.safetensors"),
            &self.adapter_state_dict(),
        )?;
        if let Some(q) = &self.quantization {
            q.write(dir)?;
        }
        std::fs::write(dir.join("adapter_config.json"), &json).map_err(|e| AdapterError::io(dir, e))
    }

    /// The number of labels of a saved sequence-classification adapter, read from its head.
    pub fn saved_num_labels(dir: &Path) -> Result<Option<usize>> {
        let tensors = read_safetensors(&dir.join("adapter_model.safetensors"))?;
        Ok(tensors
            .iter()
            .find(|(k, _)| {
                [PEFT_PREFIX, PROMPT_LEARNING_PREFIX].iter().any(|p| {
                    k == &format!("{p}score.weight")
                        || k == &format!("{p}classifier.out_proj.weight")
                        || k == &format!("{p}classifier.weight")
                })
            })
            .map(|(_, t)| t.size()[0] as usize))
    }

    /// Loads a peft adapter directory (LoRA or prefix tuning) onto `base` (peft's
    /// `PeftModel.from_pretrained`). When the directory records a quantization
    /// (`quantization_config.json`, written for QLoRA adapters), the base is quantized the same
    /// way first, unless it already is.
    pub fn from_pretrained(mut base: SequenceClassifier, dir: &Path) -> Result<Self> {
        let config = AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
        let quant_file = dir.join(QUANT_CONFIG_FILE);
        let quantization = if quant_file.is_file() {
            let q = BnbConfig::from_file(&quant_file)?;
            if base.linears().iter().all(|l| l.packed().is_none()) {
                quantize_model(&mut base, &q)?;
            }
            Some(Box::new(q))
        } else {
            None
        };
        let mut model = Self::new(base, config)?;
        model.quantization = quantization;
        model.load_weights(dir, DEFAULT_ADAPTER)?;
        Ok(model)
    }

    /// Loads another adapter directory as `name` (peft's `load_adapter`); it does not become
    /// active.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<()> {
        let config = AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
        self.add_adapter(name, config)?;
        let previous = self.active.clone();
        self.set_adapter(name)?;
        let loaded = self.load_weights(dir, name);
        self.set_adapter(&previous)?;
        loaded
    }

    /// Copies `adapter_model.safetensors` into adapter `name` (which must be active): every
    /// LoRA factor and the head must be present with the right shapes, and nothing else.
    fn load_weights(&mut self, dir: &Path, name: &str) -> Result<()> {
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            let msg = if dir.join("adapter_model.bin").is_file() {
                "only adapter_model.bin here: peftkit loads safetensors only"
            } else {
                "no adapter_model.safetensors"
            };
            return Err(AdapterError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, msg),
            ));
        }
        let mut tensors: BTreeMap<String, Tensor> = read_safetensors(&file)?.into_iter().collect();
        let device = self.base.device();
        if let Some(encoder) = self.prefixes.get_mut(name) {
            let t = tensors
                .remove(PROMPT_EMBEDDINGS)
                .ok_or_else(|| AdapterError::Mismatch {
                    path: file.clone(),
                    key: PROMPT_EMBEDDINGS.into(),
                    message: "missing: a prefix-tuning adapter stores its prefix there".into(),
                })?;
            encoder
                .load_prompt_embeddings(&t)
                .map_err(|message| AdapterError::Mismatch {
                    path: file.clone(),
                    key: PROMPT_EMBEDDINGS.into(),
                    message,
                })?;
        }
        let saved_prefix = self.saved_prefix();
        let mismatch = |key: &str, file_shape: Vec<i64>, model: Vec<i64>| {
            AdapterError::Mismatch {
            path: file.clone(),
            key: key.to_string(),
            message: format!("shape {file_shape:?} in the adapter but {model:?} in the model: the adapter was made for another base model"),
        }
        };
        for linear in self.base.linears_mut() {
            let path = linear.path().to_string();
            let Some(layer) = linear
                .hook_mut()
                .and_then(|h| h.as_any_mut().downcast_mut::<LoraLayer>())
            else {
                continue;
            };
            let Some(w) = layer.adapters.get_mut(name) else {
                continue;
            };
            for (which, slot) in [("lora_A", &mut w.a), ("lora_B", &mut w.b)] {
                let key = format!("{PEFT_PREFIX}{path}.{which}.weight");
                let t = tensors.remove(&key).ok_or_else(|| AdapterError::Mismatch {
                    path: file.clone(),
                    key: key.clone(),
                    message:
                        "missing from the adapter (its target_modules do not match its weights)"
                            .into(),
                })?;
                if t.size() != slot.size() {
                    return Err(mismatch(&key, t.size(), slot.size()));
                }
                let requires = slot.requires_grad();
                *slot = t
                    .to_kind(Kind::Float)
                    .to_device(device)
                    .set_requires_grad(requires);
            }
        }
        let vars = self.base.var_store().variables();
        for n in self.head_names.clone().iter().chain(&self.bias_names()) {
            let key = format!("{saved_prefix}{n}");
            let t = tensors.remove(&key).ok_or_else(|| AdapterError::Mismatch {
                path: file.clone(),
                key: key.clone(),
                message: "missing: a sequence-classification adapter must carry its trained head (modules_to_save)".into(),
            })?;
            let mut v = vars[n].shallow_clone();
            if t.size() != v.size() {
                return Err(mismatch(&key, t.size(), v.size()));
            }
            tch::no_grad(|| v.copy_(&t));
        }
        if let Some((key, _)) = tensors.into_iter().next() {
            return Err(AdapterError::Mismatch {
                path: file,
                key,
                message: "unexpected: the base model has no such module, or the adapter's config does not target it".into(),
            });
        }
        Ok(())
    }

    /// Trainable and total parameter counts as peft's `get_nb_trainable_parameters` gives them
    /// (the head counts twice in the total: peft keeps the original beside each adapter's copy).
    pub fn parameter_counts(&self) -> (i64, i64) {
        let (base_trainable, base_all) = self.base.parameter_counts();
        let head: i64 = self
            .head_names
            .iter()
            .map(|n| self.base.var_store().variables()[n].numel() as i64)
            .sum();
        let mut adapter_all = 0;
        let mut adapter_trainable = 0;
        for linear in self.base.linears() {
            if let Some(layer) = lora_of(linear) {
                for (name, w) in &layer.adapters {
                    let n = (w.a.numel() + w.b.numel()) as i64;
                    adapter_all += n;
                    if *name == self.active {
                        adapter_trainable += n;
                    }
                }
            }
        }
        for (name, p) in &self.prefixes {
            adapter_all += p.numel();
            if *name == self.active {
                adapter_trainable += p.numel();
            }
        }
        (
            base_trainable + adapter_trainable,
            base_all + adapter_all + head * self.configs.len() as i64,
        )
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

impl TrainModel for PeftModel {
    fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> std::result::Result<Tensor, ModelError> {
        let opts = ForwardOptions {
            train,
            prefix: None,
        };
        Ok(self.forward(input_ids, attention_mask, &opts)?.logits)
    }

    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        self.base.loss(logits, labels)
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for linear in self.base.linears() {
            if let Some(w) = lora_of(linear).and_then(|h| h.adapters.get(&self.active)) {
                out.push((
                    format!(
                        "{PEFT_PREFIX}{}.lora_A.{}.weight",
                        linear.path(),
                        self.active
                    ),
                    w.a.shallow_clone(),
                ));
                out.push((
                    format!(
                        "{PEFT_PREFIX}{}.lora_B.{}.weight",
                        linear.path(),
                        self.active
                    ),
                    w.b.shallow_clone(),
                ));
            }
        }
        if let Some(p) = self.prefixes.get(&self.active) {
            for (n, t) in p.parameters() {
                out.push((
                    format!("prompt_encoder.{}.{n}", self.active),
                    t.shallow_clone(),
                ));
            }
        }
        out.extend(
            self.base
                .trainable_parameters()
                .into_iter()
                .map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t)),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn parameter_count(&self) -> i64 {
        self.parameter_counts().1
    }

    fn device(&self) -> Device {
        self.base.device()
    }

    fn loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        factor: &Tensor,
    ) -> std::result::Result<Tensor, ModelError> {
        let Some(encoder) = self.active_prefix() else {
            return self
                .base
                .loss_backward(input_ids, attention_mask, labels, factor);
        };
        // Checkpointing backpropagates each recomputed layer on its own, so the encoder recomputes
        // the prefix per layer there; otherwise it is computed once for the pass.
        let computed;
        let prefix: &dyn PrefixProvider = if self.base.gradient_checkpointing() {
            encoder
        } else {
            computed = encoder.compute();
            &computed
        };
        self.base.loss_backward_with(
            input_ids,
            attention_mask,
            labels,
            &ForwardOptions::train().with_prefix(prefix),
            factor,
        )
    }

    fn enable_gradient_checkpointing(&self) -> bool {
        self.base.enable_gradient_checkpointing()
    }
}
