//! peft's adapter file format (`adapter_config.json` + `adapter_model.safetensors`), both ways:
//! saved keys without the adapter name, the head as `modules_to_save`, the biases that `bias`
//! trains (`….base_layer.bias` on adapted layers, as peft names them), and the 4-bit
//! quantization a QLoRA adapter was trained on (`quantization_config.json`).

use crate::layer::AdapterLayer;
use crate::peft_model::heads::Heads;
use crate::quant::{quantize_model, BnbConfig, QUANT_CONFIG_FILE};
use crate::tuner::{LoadMismatch, PEFT_PREFIX, PROMPT_LEARNING_PREFIX};
use crate::{AdapterConfig, AdapterError, Bias, PeftModel, Result, DEFAULT_ADAPTER};
use peftkit_models::{
    read_safetensors, save_safetensors, write_dir_atomically, SequenceClassifier,
};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// The weights file of an adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The config file of an adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// peft's saved key of base variable `var` (a bias): `….base_layer.bias` when its linear carries
/// an adapter layer (peft wraps the original module as `base_layer`).
fn saved_var_key(base: &SequenceClassifier, var: &str, prefix: &str) -> String {
    if let Some(path) = var.strip_suffix(".bias") {
        if base
            .linears()
            .iter()
            .any(|l| l.path() == path && l.hook_as::<AdapterLayer>().is_some())
        {
            return format!("{prefix}{path}.base_layer.bias");
        }
    }
    format!("{prefix}{var}")
}

impl PeftModel {
    /// The active adapter's tensors under peft's saved names.
    pub fn adapter_state_dict(&self) -> Vec<(String, Tensor)> {
        let tuner = &self.tuners[&self.active];
        let prefix = tuner.saved_prefix();
        let mut out = tuner.state_dict(&self.base);
        out.extend(Heads::state_dict(&self.base, &self.active, prefix));
        let vars = self.base.var_store().variables();
        for n in self.bias_names() {
            out.push((saved_var_key(&self.base, &n, prefix), vars[&n].detach()));
        }
        if tuner.bias() == Bias::All {
            out.extend(Heads::bias_duplicates(&self.base, &self.active, prefix));
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
        let mut cfg = self.tuners[&self.active].saved_config();
        if base_model_name_or_path.is_some() {
            cfg.set_base_model(base_model_name_or_path, revision);
        }
        let json = serde_json::to_string_pretty(&cfg.to_json()).expect("config serialises");
        save_safetensors(&dir.join(ADAPTER_WEIGHTS), &self.adapter_state_dict())?;
        if let Some(q) = &self.quantization {
            q.write(dir)?;
        }
        std::fs::write(dir.join(ADAPTER_CONFIG), &json).map_err(|e| AdapterError::io(dir, e))
    }

    /// Saves the active PiSSA / OLoRA adapter converted to a plain LoRA for the *original* base
    /// (peft's `save_pretrained(path_initial_model_for_weight_conversion=initial)`): `initial`
    /// is the adapter as saved right after initialisation; the factors become `[A; A₀]` and
    /// `[B, −B₀]`, so `r` and `lora_alpha` double and the update is `scale · (B A − B₀ A₀)`, the
    /// whole change from the original weight. Unlike peft 0.21.2 (whose converted
    /// sequence-classification adapter it cannot load itself: it drops the head), the head is
    /// kept.
    pub fn save_pretrained_converted(
        &self,
        dir: &Path,
        initial: &Path,
        base_model_name_or_path: Option<&str>,
        revision: Option<&str>,
    ) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            self.write_converted_files(tmp, initial, base_model_name_or_path, revision)
        })
    }

    /// Writes the files of [`PeftModel::save_pretrained_converted`] into an existing directory.
    pub fn write_converted_files(
        &self,
        dir: &Path,
        initial: &Path,
        base_model_name_or_path: Option<&str>,
        revision: Option<&str>,
    ) -> Result<()> {
        let Some(lora) = self.lora_config() else {
            return Err(AdapterError::Invalid(
                "only a LoRA adapter can be converted to a plain LoRA".into(),
            ));
        };
        if lora.use_dora {
            return Err(AdapterError::Invalid(
                "a DoRA adapter cannot be converted (its magnitude is not a low-rank difference)"
                    .into(),
            ));
        }
        if lora.use_rslora && !(lora.rank_pattern.is_empty() && lora.alpha_pattern.is_empty()) {
            return Err(AdapterError::Invalid(
                "rsLoRA with rank_pattern / alpha_pattern cannot be converted (as in peft)".into(),
            ));
        }
        let file = initial.join(ADAPTER_WEIGHTS);
        let start: BTreeMap<String, Tensor> = read_safetensors(&file)?.into_iter().collect();
        let mut tensors = self.adapter_state_dict();
        for (key, t) in tensors.iter_mut() {
            let (dim, sign) = if key.ends_with(".lora_A.weight") {
                (0, 1.0)
            } else if key.ends_with(".lora_B.weight") {
                (1, -1.0)
            } else {
                continue;
            };
            let t0 = start.get(key).ok_or_else(|| AdapterError::Mismatch {
                path: file.clone(),
                key: key.clone(),
                message: "missing from the initial adapter: it was not saved from this adapter's initialisation".into(),
            })?;
            if t0.size() != t.size() {
                return Err(AdapterError::Mismatch {
                    path: file.clone(),
                    key: key.clone(),
                    message: format!(
                        "shape {:?} in the initial adapter but {:?} now",
                        t0.size(),
                        t.size()
                    ),
                });
            }
            *t = Tensor::cat(
                &[
                    t.shallow_clone(),
                    t0.to_kind(t.kind()).to_device(t.device()) * sign,
                ],
                dim,
            );
        }
        let mut cfg = lora.clone();
        cfg.r *= 2;
        cfg.lora_alpha *= if cfg.use_rslora { 2f64.sqrt() } else { 2.0 };
        cfg.rank_pattern.values_mut().for_each(|r| *r *= 2);
        cfg.alpha_pattern.values_mut().for_each(|a| *a *= 2.0);
        cfg.init_lora_weights = crate::InitLoraWeights::Bool(true);
        let mut cfg = AdapterConfig::from(cfg);
        if base_model_name_or_path.is_some() {
            cfg.set_base_model(base_model_name_or_path, revision);
        }
        let json = serde_json::to_string_pretty(&cfg.to_json()).expect("config serialises");
        save_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
        std::fs::write(dir.join(ADAPTER_CONFIG), &json).map_err(|e| AdapterError::io(dir, e))
    }

    /// The number of labels of a saved sequence-classification adapter, read from its head.
    pub fn saved_num_labels(dir: &Path) -> Result<Option<usize>> {
        let tensors = read_safetensors(&dir.join(ADAPTER_WEIGHTS))?;
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

    /// Loads a peft adapter directory onto `base` (peft's `PeftModel.from_pretrained`). When the
    /// directory records a quantization (`quantization_config.json`, written for QLoRA
    /// adapters), the base is quantized the same way first, unless it already is.
    pub fn from_pretrained(base: SequenceClassifier, dir: &Path) -> Result<Self> {
        Self::from_pretrained_as(base, dir, DEFAULT_ADAPTER)
    }

    /// Like [`PeftModel::from_pretrained`], naming the adapter `name`.
    pub fn from_pretrained_as(
        mut base: SequenceClassifier,
        dir: &Path,
        name: &str,
    ) -> Result<Self> {
        let config = AdapterConfig::from_file(&dir.join(ADAPTER_CONFIG))?;
        let quant_file = dir.join(QUANT_CONFIG_FILE);
        let quantization = if quant_file.is_file() {
            Some(BnbConfig::from_file(&quant_file)?)
        } else {
            None
        };
        let dense = base.linears().iter().all(|l| l.packed().is_none());
        let late = crate::peft_model::initialises_from_full_precision(&config);
        if let (Some(q), true, false) = (&quantization, dense, late) {
            quantize_model(&mut base, q)?;
        }
        let mut model = Self::with_adapter_name(base, config, name)?;
        if let (Some(q), true, true) = (&quantization, dense, late) {
            quantize_model(&mut model.base, q)?;
        }
        model.quantization = quantization.map(Box::new);
        model.load_weights(dir, name)?;
        Ok(model)
    }

    /// Loads another adapter directory as `name` (peft's `load_adapter`); it does not become
    /// active.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<()> {
        if self.is_merged() {
            return Err(AdapterError::Invalid(
                "unmerge before loading another adapter".into(),
            ));
        }
        let config = AdapterConfig::from_file(&dir.join(ADAPTER_CONFIG))?;
        self.add_adapter(name, config)?;
        let previous = self.active.clone();
        self.set_adapter(name)?;
        let loaded = self.load_weights(dir, name);
        self.set_adapter(&previous)?;
        if loaded.is_err() {
            let _ = self.delete_adapter(name);
        }
        loaded
    }

    /// Copies `adapter_model.safetensors` into adapter `name` (which must be active): every
    /// tensor of the adapter and its head must be present with the right shapes, and nothing
    /// else (but the duplicates of head biases peft writes with `bias = "all"`).
    fn load_weights(&mut self, dir: &Path, name: &str) -> Result<()> {
        let file = dir.join(ADAPTER_WEIGHTS);
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
        let at = |m: LoadMismatch| AdapterError::Mismatch {
            path: file.clone(),
            key: m.key,
            message: m.message,
        };
        let tuner = self.tuners.get_mut(name).expect("adapter exists");
        let prefix = tuner.saved_prefix();
        tuner
            .load_state_dict(&mut self.base, &mut tensors)
            .map_err(at)?;
        Heads::load(&mut self.base, name, prefix, &mut tensors).map_err(at)?;
        let vars = self.base.var_store().variables();
        for n in self.bias_names() {
            let key = saved_var_key(&self.base, &n, prefix);
            let t = tensors.remove(&key).ok_or_else(|| {
                at(LoadMismatch::missing(
                    &key,
                    "the adapter's `bias` setting trains this bias, so its file must hold it",
                ))
            })?;
            let mut v = vars[&n].shallow_clone();
            if t.size() != v.size() {
                return Err(at(LoadMismatch::shape(&key, &t.size(), &v.size())));
            }
            tch::no_grad(|| v.copy_(&t));
        }
        if self.tuners[name].bias() == Bias::All {
            for (key, _) in Heads::bias_duplicates(&self.base, name, prefix) {
                tensors.remove(&key);
            }
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
}
