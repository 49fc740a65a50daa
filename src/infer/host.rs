//! The model host: one base model and its named adapters, changed at run time, with batched
//! forward passes whose rows may each name their adapter.

use super::batch;
use crate::pipeline::{adapter_labels, load_adapters, load_tuned, Tuned};
use anyhow::{bail, Context, Result};
use peftkit_adapters::{PeftModel, BASE_ADAPTER};
use peftkit_models::{ForwardOptions, SequenceClassifier, TrainModel};
use peftkit_tokenize::{Padding, TextTokenizer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What is known of a loaded adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterInfo {
    /// Its name.
    pub name: String,
    /// The directory it came from.
    pub path: PathBuf,
    /// peft's `peft_type` (`LORA`, `PREFIX_TUNING`, …).
    pub peft_type: String,
    /// The rank `r`, for methods that have one.
    pub r: Option<u64>,
    /// The label names in id order (its `id2label`).
    pub labels: Vec<String>,
    /// Prefix or prompt tuning: its rows run in batches of their own.
    pub prompt_learning: bool,
    /// Its `bias` trains the base model's biases, which every adapter shares: it can only be
    /// served alone.
    pub trains_base_biases: bool,
}

/// The keys of `adapter_config.json` the host checks.
fn adapter_config(dir: &Path) -> Result<serde_json::Value> {
    let file = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
}

/// What a host without its model says (see [`Host::is_whole`]).
const NO_MODEL: &str = "the model is not loaded (an adapter change failed half-way)";

/// One base model and its adapters, for inference. Rows of one batch may each name an
/// adapter (or [`BASE_ADAPTER`]).
pub struct Host {
    model: Option<Tuned>,
    model_id: String,
    device: Device,
    tokenizer: TextTokenizer,
    adapters: BTreeMap<String, AdapterInfo>,
    base_labels: Vec<String>,
}

impl Host {
    /// Loads `model_id` with the named adapters (`NAME`, `DIR`) on `device`.
    pub fn load(model_id: &str, adapters: &[(String, PathBuf)], device: Device) -> Result<Self> {
        let (model, tokenizer, labels) = if adapters.is_empty() {
            let (m, tok) = load_tuned(model_id, None, None, device)?;
            (m, tok, BTreeMap::new())
        } else {
            for (name, dir) in adapters {
                check_name(name)?;
                if adapters.len() > 1 {
                    check_shareable(dir, &adapter_config(dir)?)?;
                }
            }
            let (m, tok, labels) = load_adapters(model_id, adapters, device)?;
            (Tuned::Peft(m), tok, labels)
        };
        let base_labels = model.classifier().label_names();
        let mut host = Self {
            model: Some(model),
            model_id: model_id.to_string(),
            device,
            tokenizer,
            adapters: BTreeMap::new(),
            base_labels,
        };
        for (name, dir) in adapters {
            let info = host.describe(name, dir, &adapter_config(dir)?, labels[name].clone())?;
            host.adapters.insert(name.clone(), info);
        }
        Ok(host)
    }

    fn describe(
        &mut self,
        name: &str,
        dir: &Path,
        cfg: &serde_json::Value,
        labels: Vec<String>,
    ) -> Result<AdapterInfo> {
        let Some(Tuned::Peft(m)) = &mut self.model else {
            bail!("no adapters are loaded");
        };
        let previous = m.active_adapter().to_string();
        m.set_adapter(name)?;
        let prompt_learning = m.active_prefix().is_some() || m.active_prompt().is_some();
        m.set_adapter(&previous)?;
        Ok(AdapterInfo {
            name: name.to_string(),
            path: dir.to_path_buf(),
            peft_type: cfg["peft_type"].as_str().unwrap_or("UNKNOWN").to_string(),
            r: cfg["r"].as_u64(),
            labels,
            prompt_learning,
            trains_base_biases: trains_base_biases(cfg).is_some(),
        })
    }

    /// The model: held except after a failed adapter change, which [`Host::restore`] mends
    /// before anything else runs (`serve`'s worker; `predict` changes no adapters).
    fn model(&self) -> &Tuned {
        self.model.as_ref().expect("the host always holds a model")
    }

    /// The tokenizer (untruncated).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The base classifier.
    pub fn classifier(&self) -> &SequenceClassifier {
        self.model().classifier()
    }

    /// The adapters, by name.
    pub fn adapters(&self) -> &BTreeMap<String, AdapterInfo> {
        &self.adapters
    }

    /// The base's own labels (for [`BASE_ADAPTER`] rows).
    pub fn base_labels(&self) -> &[String] {
        &self.base_labels
    }

    /// The labels of `adapter`'s rows.
    pub fn labels(&self, adapter: &str) -> &[String] {
        self.adapters
            .get(adapter)
            .map_or(&self.base_labels, |a| &a.labels)
    }

    /// The most tokens an input may have: the model's positions less any adapter's virtual
    /// tokens.
    pub fn max_input_length(&self) -> usize {
        let virtual_positions = match self.model() {
            Tuned::Peft(p) => p.virtual_positions(),
            Tuned::Plain(_) => 0,
        };
        (self.classifier().max_length() - virtual_positions).max(2) as usize
    }

    /// Loads adapter `dir` as `name`. Refused, with the model unchanged, when the name is taken,
    /// the adapter does not fit the base (another architecture, label count, quantization), or
    /// it trains biases the other adapters share.
    pub fn add_adapter(&mut self, name: &str, dir: &Path) -> Result<AdapterInfo> {
        check_name(name)?;
        if !self.is_whole() {
            bail!("{NO_MODEL}");
        }
        if self.adapters.contains_key(name) {
            bail!("an adapter named `{name}` is loaded already");
        }
        let labels = adapter_labels(dir)?
            .with_context(|| format!("{}: no adapter head to read labels from", dir.display()))?;
        let num_labels = self.classifier().num_labels();
        if labels.len() != num_labels {
            bail!(
                "{}: the adapter has {} labels but the model's head {num_labels}: adapters on one base share the label count",
                dir.display(),
                labels.len()
            );
        }
        let quantized_adapter = dir.join("quantization_config.json").is_file();
        let quantized_base = matches!(self.model(), Tuned::Peft(p) if p.quantization().is_some());
        let cfg = adapter_config(dir)?;
        if !self.adapters.is_empty() {
            check_shareable(dir, &cfg)?;
            if let Some(other) = self.adapters.values().find(|a| a.trains_base_biases) {
                bail!(
                    "adapter `{}` trains the base model's biases, which all adapters share: it is served alone",
                    other.name
                );
            }
            if quantized_adapter != quantized_base {
                bail!(
                    "{}: the adapter was trained on a {} base but this base is {}",
                    dir.display(),
                    if quantized_adapter {
                        "4-bit (QLoRA)"
                    } else {
                        "full-precision"
                    },
                    if quantized_base {
                        "4-bit"
                    } else {
                        "full-precision"
                    }
                );
            }
        }
        if let Some(Tuned::Peft(m)) = self.model.as_mut() {
            // In place: a failure (or a panic) inside leaves the model held.
            m.load_adapter(dir, name)
                .with_context(|| format!("loading the adapter {}", dir.display()))?;
        } else {
            // The plain base becomes the adapter's base: consumed, so reloaded when the load
            // fails here, or by [`Host::restore`] after a panic.
            let base = match self.model.take() {
                Some(Tuned::Plain(base)) => base,
                _ => bail!("{NO_MODEL}"),
            };
            match PeftModel::from_pretrained_as(base, dir, name) {
                Ok(m) => self.model = Some(Tuned::Peft(m)),
                Err(e) => {
                    self.restore()
                        .context("reloading the base after a failed adapter load")?;
                    return Err(anyhow::Error::new(e)
                        .context(format!("loading the adapter {}", dir.display())));
                }
            }
        }
        let info = self.describe(name, dir, &cfg, labels)?;
        self.adapters.insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// Removes adapter `name`; the last one leaves the plain base.
    pub fn remove_adapter(&mut self, name: &str) -> Result<()> {
        if !self.adapters.contains_key(name) {
            bail!("no adapter `{name}`");
        }
        if !self.is_whole() {
            bail!("{NO_MODEL}");
        }
        if self.adapters.len() == 1 {
            // The last one leaves the plain base (the model is consumed: should unloading
            // panic, [`Host::restore`] reloads the base, which is what it would have left).
            match self.model.take() {
                Some(Tuned::Peft(m)) => self.model = Some(Tuned::Plain(m.unload())),
                other => self.model = other,
            }
        } else if let Some(Tuned::Peft(m)) = self.model.as_mut() {
            // In place: a failure (or a panic) inside leaves the model held.
            if m.active_adapter() == name {
                let other = self.adapters.keys().find(|k| *k != name).expect("2+");
                m.set_adapter(other)?;
            }
            m.delete_adapter(name)?;
        }
        self.adapters.remove(name);
        Ok(())
    }

    /// Whether the host holds its model: false only after an adapter change that consumed it
    /// panicked, or failed and could not reload the base ([`Host::restore`] mends it).
    pub fn is_whole(&self) -> bool {
        self.model.is_some()
    }

    /// Reloads the plain base when the host lost its model (see [`Host::is_whole`]); the
    /// adapters went with it. Nothing to do when the model is held.
    pub fn restore(&mut self) -> Result<()> {
        if self.model.is_some() {
            return Ok(());
        }
        let (m, _) = load_tuned(&self.model_id, None, None, self.device)
            .with_context(|| format!("reloading the base model {}", self.model_id))?;
        self.model = Some(m);
        self.adapters.clear();
        Ok(())
    }

    /// Whether `adapter`'s rows run in batches of their own (prompt learning).
    pub fn runs_alone(&self, adapter: &str) -> bool {
        self.adapters
            .get(adapter)
            .is_some_and(|a| a.prompt_learning)
    }

    /// Logits `[rows, labels]` (float32, on the CPU) of encoded rows, row `i` through adapter
    /// `adapters[i]` ([`BASE_ADAPTER`]: none). Rows are padded to the longest. Non-finite
    /// logits are an error, never a label.
    pub fn logits(&mut self, rows: &[&[u32]], adapters: &[&str]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = peftkit_tokenize::collate(
            rows,
            &vec![0; rows.len()],
            Padding::Longest,
            self.tokenizer.pad_id(),
        );
        let b = peftkit_train::DeviceBatch::new(&batch, self.device);
        let Some(model) = self.model.as_mut() else {
            bail!("{NO_MODEL}");
        };
        let logits: Tensor = match model {
            Tuned::Plain(m) => {
                if let Some(a) = adapters.iter().find(|a| **a != BASE_ADAPTER) {
                    bail!("no adapter `{a}`: this model has no adapters");
                }
                tch::no_grad(|| m.logits(&b.input_ids, &b.attention_mask, false))?
            }
            Tuned::Peft(m) => {
                let first = adapters[0];
                if first != BASE_ADAPTER && adapters.iter().all(|a| *a == first) {
                    // One adapter for every row: any method, prompt learning included.
                    m.set_adapter(first)?;
                    tch::no_grad(|| {
                        m.forward(&b.input_ids, &b.attention_mask, &ForwardOptions::eval())
                    })?
                    .logits
                } else {
                    m.forward_mixed(&b.input_ids, &b.attention_mask, adapters)?
                        .logits
                }
            }
        };
        let logits = logits.to_kind(Kind::Float).to_device(Device::Cpu);
        let labels = logits.size().get(1).copied().unwrap_or(1).max(1) as usize;
        let flat: Vec<f32> = Vec::try_from(&logits.view([-1]))?;
        if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
            bail!(
                "the model produced a non-finite logit ({}) for input {} (adapter `{}`): its weights may hold NaN or infinity",
                flat[i],
                i / labels,
                adapters[i / labels]
            );
        }
        Ok(flat.chunks(labels).map(<[f32]>::to_vec).collect())
    }
}

impl Host {
    /// Logits of many rows, in order: length-sorted batches of at most `batch_size` rows
    /// (prompt-learning adapters' rows by themselves), as `predict` and `serve` both run them.
    pub fn classify(
        &mut self,
        rows: &[(Vec<u32>, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let shape: Vec<(usize, batch::Group)> = rows
            .iter()
            .map(|(ids, a)| (ids.len(), self.runs_alone(a).then(|| a.to_string())))
            .collect();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; rows.len()];
        for b in batch::plan(&shape, batch_size, usize::MAX) {
            let ids: Vec<&[u32]> = b.iter().map(|&i| rows[i].0.as_slice()).collect();
            let adapters: Vec<&str> = b.iter().map(|&i| rows[i].1).collect();
            for (&i, l) in b.iter().zip(self.logits(&ids, &adapters)?) {
                out[i] = Some(l);
            }
        }
        Ok(out
            .into_iter()
            .map(|l| l.expect("every row planned"))
            .collect())
    }
}

/// Adapter names are path-free words (they appear in URLs and metrics).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != BASE_ADAPTER
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "adapter name `{name}`: expected 1–64 of A–Z a–z 0–9 - _ . (and not `{BASE_ADAPTER}`)"
        );
    }
    Ok(())
}

/// The `bias` setting of an adapter config when it trains the base's biases (`"all"` /
/// `"lora_only"`).
fn trains_base_biases(cfg: &serde_json::Value) -> Option<&str> {
    cfg["bias"].as_str().filter(|b| *b != "none")
}

/// Adapters that train the base's biases write them into the base every adapter shares: such an
/// adapter can only be served alone.
fn check_shareable(dir: &Path, cfg: &serde_json::Value) -> Result<()> {
    match trains_base_biases(cfg) {
        None => Ok(()),
        Some(b) => bail!(
            "{}: `bias = \"{b}\"` trains the base model's biases, which all adapters share: serve this adapter alone",
            dir.join("adapter_config.json").display()
        ),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("sst2-lora_v1.2").is_ok());
        for bad in ["", "a/b", "__base__", "x y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
