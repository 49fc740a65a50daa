//! The studies' flow: evaluate the foundation model with its untrained head, fine-tune, save,
//! reload from disk, evaluate again, and report beside the published figures.

use crate::config::{ExperimentConfig, Method, ModelInit};
use crate::report::{ComparisonRow, Report, SplitResult};
use crate::run_dir::RunDir;
use anyhow::{bail, Context, Result};
use peftkit_adapters::PeftModel;
use peftkit_data::{load_splits, LabelStats, Split};
use peftkit_models::{
    parse_device, write_dir_atomically, LoadOptions, ModelConfig, SequenceClassifier, TrainModel,
};
use peftkit_tokenize::{TextTokenizer, Truncation};
use peftkit_train::distributed::ProcessGroup;
use peftkit_train::{evaluate_sharded, Dataset, EvalOutput, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// How to run an experiment.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run directory (default `runs/<name>`).
    pub output: Option<PathBuf>,
    /// Overrides `[model] device`.
    pub device: Option<String>,
    /// Show progress bars.
    pub progress: bool,
    /// Resume from this checkpoint directory (`latest`: the newest in the run directory).
    pub resume: Option<String>,
    /// Skip the evaluation before training.
    pub skip_baseline: bool,
    /// The process group of a distributed run (torchrun / `peftkit launch`): every rank runs the
    /// experiment on its shard; rank 0 alone writes the run directory.
    pub group: Option<Arc<ProcessGroup>>,
}

/// `eprintln!` on rank 0 only.
macro_rules! say {
    ($main:expr, $($arg:tt)*) => {
        if $main {
            eprintln!($($arg)*);
        }
    };
}

/// Waits for every rank (after rank 0 wrote what the others read next).
fn barrier(group: Option<&ProcessGroup>) -> Result<()> {
    if let Some(g) = group {
        g.barrier()?;
    }
    Ok(())
}

/// Tokenizer files copied next to a saved model so that the directory is self-contained.
pub use peftkit_data::TOKENIZER_FILES;

/// The run directory's subdirectory holding the base model of a `model.init = "random"` run.
pub const RANDOM_INIT_DIR: &str = "random-init";

/// Writes a randomly initialised checkpoint of `model_id`'s architecture to `dir` (atomically):
/// its `config.json` with `labels`, transformers' `_init_weights` drawn from torch's generator
/// (seed it first, as `set_seed` before `from_config`), and its tokenizer files. No weights of
/// `model_id` are needed — only its config and tokenizer.
pub fn write_random_init(
    model_id: &str,
    revision: Option<&str>,
    labels: &[String],
    dir: &Path,
) -> Result<()> {
    let src = peftkit_data::resolve_model(model_id, revision, false)?;
    let mut config = ModelConfig::from_file(&src.join("config.json"))?;
    config.set_labels(labels);
    let model = SequenceClassifier::from_config(config, Device::Cpu);
    write_dir_atomically(dir, |tmp| -> Result<()> {
        model.write_checkpoint_files(tmp)?;
        copy_tokenizer_files(&src, tmp)
    })
    .with_context(|| {
        format!(
            "writing a random initialisation of `{model_id}` to {}",
            dir.display()
        )
    })
}

/// Copies the tokenizer files present in `from` into `to` (a saved model is self-contained).
fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f)).with_context(|| {
                format!("copying {} to {}", from.join(f).display(), to.display())
            })?;
        }
    }
    Ok(())
}

/// Loads a model argument (hub id or directory, with weights) and its tokenizer.
pub fn load_model_and_tokenizer(
    model_id: &str,
    revision: Option<&str>,
    labels: Option<Vec<String>>,
    device: Device,
) -> Result<(SequenceClassifier, TextTokenizer, PathBuf)> {
    let (m, tok, dir) = load_base(model_id, revision, labels, device, true, true)?;
    Ok((m, tok.expect("required"), dir))
}

fn load_base(
    model_id: &str,
    revision: Option<&str>,
    labels: Option<Vec<String>>,
    device: Device,
    warn_new_head: bool,
    need_tokenizer: bool,
) -> Result<(SequenceClassifier, Option<TextTokenizer>, PathBuf)> {
    let dir = peftkit_data::resolve_model(model_id, revision, true)?;
    // The model's config.json first: the tokenizer loader reads it too, and a broken one must be
    // reported as the model's, not the tokenizer's.
    let config = dir.join("config.json");
    if config.is_file() {
        peftkit_models::ModelConfig::from_file(&config)
            .with_context(|| format!("loading `{model_id}`"))?;
    }
    let tokenizer = match TextTokenizer::from_dir(&dir) {
        Ok(t) => Some(t),
        Err(peftkit_tokenize::TokenizeError::NoTokenizer { .. }) if !need_tokenizer => None,
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("loading the tokenizer of `{model_id}`"))
            )
        }
    };
    let mut opts = LoadOptions::new(device);
    if let Some(t) = &tokenizer {
        opts = opts.with_pad_token_id(t.pad_id() as i64);
    }
    opts.labels = labels;
    let (model, report) =
        SequenceClassifier::load(&dir, &opts).with_context(|| format!("loading `{model_id}`"))?;
    if !report.non_finite.is_empty() {
        eprintln!(
            "peftkit: warning: the checkpoint of `{model_id}` holds NaN or infinite values in {}",
            report.non_finite.join(", ")
        );
    }
    if warn_new_head && !report.newly_initialized.is_empty() {
        eprintln!(
            "Some weights of {} were not initialized from the checkpoint and are newly initialized: {}",
            model_id,
            report.newly_initialized.join(", ")
        );
    }
    Ok((model, tokenizer, dir))
}

/// A classifier as trained and evaluated: plain (full or head-only fine-tuning) or with a LoRA
/// adapter.
pub enum Tuned {
    /// A plain classifier.
    Plain(SequenceClassifier),
    /// A classifier with peft adapters.
    Peft(PeftModel),
}

impl Tuned {
    /// The model as the trainer sees it.
    pub fn model(&self) -> &dyn TrainModel {
        match self {
            Tuned::Plain(m) => m,
            Tuned::Peft(m) => m,
        }
    }

    /// `(trainable, all)` parameters (peft's counting for adapters).
    pub fn counts(&self) -> (i64, i64) {
        match self {
            Tuned::Plain(m) => m.parameter_counts(),
            Tuned::Peft(m) => m.parameter_counts(),
        }
    }

    /// Label names in id order.
    pub fn label_names(&self) -> Vec<String> {
        self.classifier().label_names()
    }

    /// The underlying classifier.
    pub fn classifier(&self) -> &SequenceClassifier {
        match self {
            Tuned::Plain(m) => m,
            Tuned::Peft(m) => m.base(),
        }
    }
}

/// The label names saved beside an adapter (peft's files do not record them).
pub const ADAPTER_LABELS_FILE: &str = "id2label.json";

/// Loads a model argument and, when given, a peft adapter directory on top of it (the head's
/// size and the labels come from the adapter).
pub fn load_tuned(
    model_id: &str,
    revision: Option<&str>,
    adapter: Option<&Path>,
    device: Device,
) -> Result<(Tuned, TextTokenizer)> {
    let (m, tok) = load_tuned_model(model_id, revision, adapter, device, true)?;
    Ok((
        m,
        tok.expect("need_tokenizer makes a missing tokenizer an error"),
    ))
}

/// Like [`load_tuned`]; the tokenizer may be absent unless `need_tokenizer` (merging needs none).
pub fn load_tuned_model(
    model_id: &str,
    revision: Option<&str>,
    adapter: Option<&Path>,
    device: Device,
    need_tokenizer: bool,
) -> Result<(Tuned, Option<TextTokenizer>)> {
    let Some(adapter) = adapter else {
        let (m, tok, _) = load_base(model_id, revision, None, device, true, need_tokenizer)?;
        return Ok((Tuned::Plain(m), tok));
    };
    let labels = adapter_labels(adapter)?;
    // The adapter carries the trained head: no "newly initialized" warning for it.
    let (base, tok, _) = load_base(model_id, revision, labels, device, false, need_tokenizer)?;
    let model = PeftModel::from_pretrained(base, adapter)
        .with_context(|| format!("loading the adapter {}", adapter.display()))?;
    Ok((Tuned::Peft(model), tok))
}

/// The label names saved beside an adapter (`id2label.json`), or `LABEL_i` for its head's size.
pub fn adapter_labels(adapter: &Path) -> Result<Option<Vec<String>>> {
    let labels_file = adapter.join(ADAPTER_LABELS_FILE);
    Ok(if labels_file.is_file() {
        let text = std::fs::read_to_string(&labels_file)
            .with_context(|| format!("reading {}", labels_file.display()))?;
        let map: std::collections::BTreeMap<usize, String> = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", labels_file.display()))?;
        Some(map.into_values().collect())
    } else {
        PeftModel::saved_num_labels(adapter)
            .with_context(|| format!("loading the adapter {}", adapter.display()))?
            .map(|n| (0..n).map(|i| format!("LABEL_{i}")).collect())
    })
}

/// Several named adapters on one base (`--adapter NAME=DIR`, repeated), and each adapter's label
/// names. The first is active. They must share the label count (one head shape per base).
pub fn load_adapters(
    model_id: &str,
    adapters: &[(String, PathBuf)],
    device: Device,
) -> Result<(PeftModel, TextTokenizer, BTreeMap<String, Vec<String>>)> {
    let (first, dir) = adapters.first().context("no adapter given")?;
    let labels = adapter_labels(dir)?;
    let (base, tok, _) = load_base(model_id, None, labels, device, false, true)?;
    let mut model = PeftModel::from_pretrained_as(base, dir, first)
        .with_context(|| format!("loading the adapter {}", dir.display()))?;
    let mut names = BTreeMap::new();
    names.insert(first.clone(), model.base().label_names());
    for (name, dir) in &adapters[1..] {
        if names.contains_key(name) {
            bail!("--adapter {name}=…: the name `{name}` is given twice");
        }
        let labels = adapter_labels(dir)?.unwrap_or_default();
        if labels.len() != names[first].len() {
            bail!(
                "adapter {name} ({}) has {} labels but {first} has {}: adapters on one base must share the label count",
                dir.display(),
                labels.len(),
                names[first].len()
            );
        }
        model
            .load_adapter(dir, name)
            .with_context(|| format!("loading the adapter {}", dir.display()))?;
        names.insert(name.clone(), labels);
    }
    let tok = tok.expect("need_tokenizer makes a missing tokenizer an error");
    Ok((model, tok, names))
}

/// A requested `max_length` that fits the model's `positions`: over them it is clamped, with a
/// note saying so (named by `what`); validation of the lower bound (at least 2) happens where
/// the value is read.
pub fn fit_max_length(requested: usize, positions: i64, what: &str) -> (usize, Option<String>) {
    let positions = positions.max(2) as usize;
    if requested > positions {
        (
            positions,
            Some(format!(
                "{what} {requested} is over the model's {positions} positions: truncating to {positions}"
            )),
        )
    } else {
        (requested, None)
    }
}

/// Tokenizes a split once (in parallel) into a trainer dataset.
pub fn encode(
    split: &Split,
    tokenizer: &TextTokenizer,
    cfg: &crate::config::DataSection,
) -> Result<Dataset> {
    let tok = tokenizer
        .clone()
        .with_truncation(Truncation::MaxLength(cfg.max_length));
    Ok(Dataset {
        ids: tok.encode_batch(&split.texts)?,
        labels: split.labels.clone(),
        label_names: split.label_names.clone(),
        padding: cfg.padding(),
        pad_id: tok.pad_id(),
    })
}

/// Sets up the method: which parameters train, and the adapter.
fn prepare(
    model: SequenceClassifier,
    cfg: &ExperimentConfig,
    tokenizer: &TextTokenizer,
) -> Result<Tuned> {
    let heads: Vec<String> = model
        .architecture()
        .head_modules()
        .iter()
        .map(|h| format!("{h}."))
        .collect();
    let method = cfg.adapter.method();
    if let Some(peft) = &cfg.adapter.peft {
        let mut peft = peft.clone();
        if let peftkit_adapters::AdapterConfig::PromptTuning(c) = &mut peft {
            // peft tokenizes the init text with the tokenizer (special tokens included).
            if let Some(text) = &c.prompt_tuning_init_text {
                let ids = tokenizer
                    .encode(text)
                    .context("tokenizing prompt_tuning_init_text")?;
                c.init_token_ids = Some(ids.into_iter().map(i64::from).collect());
            }
        }
        let m = match &cfg.adapter.quantization {
            Some(bnb) => {
                let m = PeftModel::new_quantized(model, peft, bnb.clone())?;
                eprintln!(
                    "QLoRA: base in 4-bit {}{}",
                    bnb.bnb_4bit_quant_type.name(),
                    if bnb.bnb_4bit_use_double_quant {
                        " + double quantization"
                    } else {
                        ""
                    }
                );
                m
            }
            None => PeftModel::new(model, peft)?,
        };
        eprintln!("{}", describe_adapter(&m));
        return Ok(Tuned::Peft(m));
    }
    for (name, t) in model.var_store().variables() {
        let trainable = match method {
            Method::Full => true,
            Method::Head => heads.iter().any(|h| name.starts_with(h.as_str())),
            Method::Baseline | Method::Adapter => false,
        };
        let _ = t.set_requires_grad(trainable);
    }
    Ok(Tuned::Plain(model))
}

/// One line about an adapter: its method and where it applies.
fn describe_adapter(m: &PeftModel) -> String {
    let cfg = m.config();
    match cfg.as_prefix_tuning() {
        Some(c) => format!(
            "prefix tuning: {} virtual tokens × {} layers{}",
            c.num_virtual_tokens,
            c.num_layers.unwrap_or(0),
            if c.prefix_projection {
                format!(
                    ", through an MLP (hidden {})",
                    c.encoder_hidden_size.unwrap_or(0)
                )
            } else {
                String::new()
            }
        ),
        None => format!(
            "{} on {} modules",
            cfg.peft_type(),
            m.adapted_modules().len()
        ),
    }
}

fn split_result(name: &str, rows: usize, out: &EvalOutput) -> SplitResult {
    SplitResult {
        split: name.to_string(),
        rows,
        loss: out.loss,
        metrics: out.metrics.clone(),
        samples_per_second: out.samples_per_second,
    }
}

fn subset(split: Split, n: Option<usize>, cfg: &crate::config::DataSection) -> Split {
    match n {
        Some(n) if n < split.len() => match cfg.subset_mode {
            crate::config::SubsetMode::Random => split.shuffled_subset(n, cfg.subset_seed),
            crate::config::SubsetMode::First => split.take(n),
        },
        _ => split,
    }
}

/// The newest `checkpoint-<step>` directory under `dir`.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let step: usize = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

/// Runs one experiment end to end and writes its run directory.
pub fn run_experiment(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<Report> {
    let started = Instant::now();
    let group = opts.group.as_deref();
    let main = group.is_none_or(ProcessGroup::is_main);
    let eval_on = |model: &dyn TrainModel, data: &Dataset| {
        evaluate_sharded(
            model,
            data,
            cfg.train.per_device_eval_batch_size,
            cfg.train.prefetch_batches,
            None,
            group,
        )
    };
    let output = opts
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    // The run works in `NAME.partial` and replaces `output` only once complete.
    let run = RunDir::new(&output);
    if main {
        run.prepare(opts.resume.is_some())?;
    }
    barrier(group)?;
    let run_dir = run.work().to_path_buf();
    let checkpoints = run_dir.join("checkpoints");
    let resume = match opts.resume.as_deref() {
        None => None,
        Some("latest") => Some(latest_checkpoint(&checkpoints).with_context(|| {
            format!(
                "--resume latest: no checkpoint in {}",
                checkpoints.display()
            )
        })?),
        Some(dir) => Some(PathBuf::from(dir)),
    };
    say!(
        main,
        "writing the run in {}; it becomes {} when complete",
        run_dir.display(),
        output.display()
    );
    if main {
        crate::report::write_atomically(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    }
    let device_spec = opts.device.as_deref().unwrap_or(&cfg.model.device);
    let mut device = parse_device(device_spec)?;
    if let (Some(g), Device::Cuda(i)) = (group, device) {
        // Like torchrun users' `cuda:LOCAL_RANK`: each rank of a machine on its own GPU.
        let local = g.env().local_rank;
        if device_spec.contains(':') && i != local && g.env().local_world_size > 1 {
            bail!("--device {device_spec}: with {} ranks on this machine each rank uses cuda:LOCAL_RANK (this is rank {local}); give `--device cuda`", g.env().local_world_size);
        }
        device = Device::Cuda(local);
    }
    say!(
        main,
        "== {}: {} (device {device:?})",
        cfg.name,
        cfg.description
    );
    if let Some(g) = group {
        say!(
            main,
            "data-parallel over {} ranks ({:?})",
            g.world_size(),
            g.backend()
        );
    }

    // Data first: label statistics need no model.
    let spec = cfg.data.spec();
    let method = cfg.adapter.method();
    let train_split = if method == Method::Baseline {
        None
    } else {
        Some(load_splits(&spec, &[cfg.data.train_split.as_str()])?)
    };
    let eval_split = subset(
        load_splits(&spec, &[cfg.data.eval_split.as_str()])?,
        cfg.data.eval_subset,
        &cfg.data,
    );
    let test_split = cfg
        .data
        .test_split
        .as_deref()
        .map(|s| load_splits(&spec, &[s]))
        .transpose()?;
    let label_names = eval_split.label_names.clone();
    let mut report = Report::new(cfg, &device);
    if let Some(t) = &train_split {
        report.add_label_stats(
            &format!("{} (full split)", cfg.data.train_split),
            &t.label_stats(),
            &label_names,
        );
    } else {
        // The baseline reports the training split's distribution too (the "coin flip" table).
        let t = load_splits(&spec, &[cfg.data.train_split.as_str()])?;
        report.add_label_stats(&cfg.data.train_split, &t.label_stats(), &label_names);
    }
    report.add_label_stats(
        &cfg.data.eval_split,
        &eval_split.label_stats(),
        &label_names,
    );
    let train_split = train_split.map(|t| {
        let full = t.len();
        let t = subset(t, cfg.data.train_subset, &cfg.data);
        if let Some(n) = cfg.data.train_subset.filter(|&n| n > full) {
            let note = format!(
                "data.train_subset = {n} exceeds the {full} rows of the `{}` split: all {full} are used.",
                cfg.data.train_split
            );
            say!(main, "peftkit: note: {note}");
            report.notes.push(note);
        }
        if t.len() < full {
            report.notes.push(format!(
                "Trained on a {} subset of {} of the {full} training rows (so that a CPU run takes minutes).",
                if cfg.data.subset_mode == crate::config::SubsetMode::First { "first-rows" } else { "seeded random" },
                t.len()
            ));
        }
        t
    });
    // Written now so a run without model weights still leaves the label statistics.
    if main {
        report.write(&run_dir)?;
    }

    let configured_id = cfg.model_id()?;
    // Like HF's `set_seed(seed)` before `from_pretrained`: a newly initialised head is the same
    // on every run.
    tch::manual_seed(cfg.train.seed as i64);
    let (model_id, revision) = match cfg.model.init {
        ModelInit::Pretrained => (configured_id, cfg.model.revision.clone()),
        ModelInit::Random => {
            // The random base is a checkpoint of its own in the run directory, so the reload
            // below, a resumed run and the saved adapter's `base_model_name_or_path` all name
            // the very weights that were trained on.
            let dir = run_dir.join(RANDOM_INIT_DIR);
            if main && (resume.is_none() || !dir.join("model.safetensors").is_file()) {
                write_random_init(
                    &configured_id,
                    cfg.model.revision.as_deref(),
                    &label_names,
                    &dir,
                )?;
            }
            // The other ranks load rank 0's weights.
            barrier(group)?;
            report.notes.push(format!(
                "Random-initialised weights (`model.init = \"random\"`, seed {}) of `{configured_id}`'s architecture, saved in `{}`.",
                cfg.train.seed,
                run.public(&dir).display()
            ));
            (dir.to_string_lossy().into_owned(), None)
        }
    };
    let (model, tokenizer, model_dir) = load_model_and_tokenizer(
        &model_id,
        revision.as_deref(),
        Some(label_names.clone()),
        device,
    )
    .map_err(|mut e| {
        // The typed error keeps its kind; its hint gains the way around missing weights.
        if let Some(peftkit_data::DataError::ModelFilesMissing { missing, hint, .. }) =
            e.downcast_mut::<peftkit_data::DataError>()
        {
            if missing.iter().any(|m| m.starts_with("model.safetensors")) {
                hint.push_str("; to measure speed and memory without the weights, add `--set model.init=random`");
            }
        }
        e
    })?;
    report.model_dir = model_dir.display().to_string();
    let mut data_cfg = cfg.data.clone();
    let (fitted, note) = fit_max_length(cfg.data.max_length, model.max_length(), "data.max_length");
    data_cfg.max_length = fitted;
    if let Some(note) = note {
        say!(main, "note: {note}");
        report.notes.push(note);
    }
    let t0 = Instant::now();
    let eval_data = encode(&eval_split, &tokenizer, &data_cfg)?;
    let train_data = train_split
        .as_ref()
        .map(|t| encode(t, &tokenizer, &data_cfg))
        .transpose()?;
    let test_data = test_split
        .as_ref()
        .map(|t| encode(t, &tokenizer, &data_cfg))
        .transpose()?;
    say!(main, "tokenized in {:.1} s", t0.elapsed().as_secs_f64());
    let tuned = prepare(model, cfg, &tokenizer)?;
    // A LoRA initialised from the base weight (PiSSA, OLoRA) changes the base: its start is kept,
    // so the trained adapter can also be saved as a plain LoRA for the original base.
    let initial = match &tuned {
        Tuned::Peft(m) if m.lora_config().is_some_and(|c| c.moves_base_into_adapter()) => {
            let dir = run_dir.join("adapter-initial");
            if main {
                m.save_pretrained(&dir, Some(&model_id), revision.as_deref())?;
            }
            Some(dir)
        }
        _ => None,
    };
    let (trainable, all) = tuned.counts();
    report.trainable_params = trainable;
    report.all_params = all;

    if !opts.skip_baseline || method == Method::Baseline {
        let out = eval_on(tuned.model(), &eval_data)?;
        say!(
            main,
            "before training ({}): loss {:.4}, accuracy {:.4}",
            cfg.data.eval_split,
            out.loss,
            out.metrics.accuracy
        );
        report
            .baseline
            .push(split_result(&cfg.data.eval_split, eval_data.len(), &out));
        if let Some(test) = &test_data {
            let out = eval_on(tuned.model(), test)?;
            report.baseline.push(split_result(
                cfg.data.test_split.as_deref().unwrap_or("test"),
                test.len(),
                &out,
            ));
        }
    }

    if let Some(train_data) = &train_data {
        let mut trainer = Trainer::new(tuned.model(), cfg.train.clone(), &checkpoints)?
            .with_progress(opts.progress);
        if main {
            trainer = trainer.with_metrics_log(&run_dir.join("metrics.jsonl"))?;
        }
        if let Some(g) = group {
            trainer = trainer.with_process_group(g);
        }
        let out = trainer.train(train_data, Some(&eval_data), resume.as_deref())?;
        say!(
            main,
            "TrainOutput(global_step={}, train_loss={:.4}, train_runtime={:.1}s, train_samples_per_second={:.1}, epoch={:.2})",
            out.global_step, out.train_loss, out.train_runtime, out.train_samples_per_second, out.epoch
        );
        if let Some(m) = &out.memory {
            say!(main, "{}", crate::report::memory_line(m));
        }
        if let Some(d) = &out.distributed {
            say!(
                main,
                "{}",
                crate::report::distributed_line(d, out.train_runtime)
            );
        }
        let trained = eval_on(tuned.model(), &eval_data)?;
        report.train = Some(out);

        // Save atomically, reload from disk, evaluate again.
        let saved = match &tuned {
            _ if !main => run_dir.join(match &tuned {
                Tuned::Plain(_) => "model",
                Tuned::Peft(_) => "adapter",
            }),
            Tuned::Plain(model) => {
                let saved = run_dir.join("model");
                write_dir_atomically(&saved, |tmp| -> Result<()> {
                    model.write_checkpoint_files(tmp)?;
                    copy_tokenizer_files(&model_dir, tmp)
                })?;
                saved
            }
            Tuned::Peft(model) => {
                let saved = run_dir.join("adapter");
                let labels: std::collections::BTreeMap<String, String> = label_names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i.to_string(), n.clone()))
                    .collect();
                // A random base in the run directory is named where it will be once complete.
                let base_id = run.public(Path::new(&model_id)).display().to_string();
                write_dir_atomically(&saved, |tmp| -> Result<()> {
                    model.write_adapter_files(tmp, Some(&base_id), revision.as_deref())?;
                    std::fs::write(
                        tmp.join(ADAPTER_LABELS_FILE),
                        serde_json::to_string_pretty(&labels)?,
                    )?;
                    Ok(())
                })?;
                if let Some(initial) = &initial {
                    let converted = run_dir.join("adapter-converted");
                    write_dir_atomically(&converted, |tmp| -> Result<()> {
                        model.write_converted_files(
                            tmp,
                            initial,
                            Some(&base_id),
                            revision.as_deref(),
                        )?;
                        std::fs::write(
                            tmp.join(ADAPTER_LABELS_FILE),
                            serde_json::to_string_pretty(&labels)?,
                        )?;
                        Ok(())
                    })?;
                    say!(
                        main,
                        "saved {} too: a plain LoRA for the original base",
                        converted.display()
                    );
                }
                saved
            }
        };
        // The other ranks reload what rank 0 saved.
        barrier(group)?;
        let was_peft = matches!(tuned, Tuned::Peft(_));
        drop(tuned);
        let (reloaded, reloaded_tok) = if was_peft {
            load_tuned(&model_id, revision.as_deref(), Some(&saved), device)
        } else {
            load_tuned(&saved.to_string_lossy(), None, None, device)
        }
        .context("reloading the saved model")?;
        let reloaded = reloaded.model();
        let eval_again = encode(&eval_split, &reloaded_tok, &data_cfg)?;
        let out = eval_on(reloaded, &eval_again)?;
        if out.predictions != trained.predictions {
            bail!(
                "the model reloaded from {} predicts differently from the one that was saved",
                saved.display()
            );
        }
        report.reloaded_matches = Some(true);
        report.saved = Some(run.public(&saved).display().to_string());
        report
            .final_results
            .push(split_result(&cfg.data.eval_split, eval_again.len(), &out));
        if let Some(test) = &test_split {
            let test_again = encode(test, &reloaded_tok, &data_cfg)?;
            let out = eval_on(reloaded, &test_again)?;
            report.final_results.push(split_result(
                cfg.data.test_split.as_deref().unwrap_or("test"),
                test_again.len(),
                &out,
            ));
        }
        say!(
            main,
            "after training, reloaded from disk ({}): loss {:.4}, accuracy {:.4}",
            cfg.data.eval_split,
            report.final_results[0].loss,
            report.final_results[0].metrics.accuracy
        );
    }
    report.total_runtime = started.elapsed().as_secs_f64();
    report.compare(&cfg.reference);
    if main {
        report.write(&run_dir)?;
    }
    barrier(group)?;
    if main && run.finish()? {
        say!(main, "replaced the previous run in {}", output.display());
    }
    // Printed only when there is something to compare (MiniLM runs have no published figures).
    if !report.comparison.is_empty() {
        say!(main, "{}", ComparisonRow::table(&report.comparison));
    }
    say!(main, "run directory: {}", output.display());
    Ok(report)
}

/// Label statistics of a split in the report's form.
pub fn stats_map(stats: &LabelStats, names: &[String]) -> Vec<(String, usize, f64)> {
    names
        .iter()
        .zip(stats.counts.iter().zip(&stats.fractions))
        .map(|(n, (c, f))| (n.clone(), *c, *f))
        .collect()
}
