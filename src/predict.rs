//! `peftkit predict`: classify the texts of the command line, or a whole file
//! (`--input`: `.txt`, `.jsonl`, `.csv`, `.parquet`) streamed in chunks, each chunk's rows run
//! in length-sorted batches, the answers written in input order (JSONL, or parquet).

mod columns;
mod parquet_sink;
mod sink;
mod source;

use crate::infer::{probabilities, Encoder, Host, Text};
use anyhow::{bail, Context, Result};
use peftkit_adapters::BASE_ADAPTER;
use std::path::{Path, PathBuf};

pub use source::{Format, Record};

/// The answer for one input, as `predict --json` prints it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The label with the highest probability.
    pub label: String,
    /// Its id.
    pub label_id: usize,
    /// Softmax over the logits.
    pub probabilities: Vec<f64>,
    /// The logits.
    pub logits: Vec<f32>,
}

impl Answer {
    /// The answer for `logits` under `labels`.
    pub fn new(logits: Vec<f32>, labels: &[String]) -> Self {
        let probabilities = probabilities(&logits);
        let label_id = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        Self {
            label: labels
                .get(label_id)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{label_id}")),
            label_id,
            probabilities,
            logits,
        }
    }

    /// The JSON line: `text`, `label`, `label_id`, `probabilities`, `logits` (and `adapter`).
    pub fn to_json(
        &self,
        text: &str,
        adapter: Option<&str>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut v = serde_json::Map::new();
        v.insert("text".into(), text.into());
        v.insert("label".into(), self.label.clone().into());
        v.insert("label_id".into(), self.label_id.into());
        v.insert("probabilities".into(), self.probabilities.clone().into());
        v.insert(
            "logits".into(),
            self.logits
                .iter()
                .map(|&l| l as f64)
                .collect::<Vec<_>>()
                .into(),
        );
        if let Some(a) = adapter {
            v.insert("adapter".into(), a.into());
        }
        v
    }
}

/// What `predict` runs on.
pub struct Predictor {
    host: Host,
    encoder: Encoder,
    /// The adapters were named (`NAME=DIR`): each answer says which it used.
    named: bool,
    default_adapter: String,
    batch_size: usize,
}

impl Predictor {
    /// Loads `model` with `adapters` (`NAME=DIR`, or one bare `DIR`), truncating to
    /// `max_length` (at most the model's positions; `None`: them).
    pub fn load(
        model: &str,
        adapters: &[String],
        device: tch::Device,
        max_length: Option<usize>,
        batch_size: usize,
    ) -> Result<Self> {
        if let Some(max_length) = max_length.filter(|m| *m < 2) {
            bail!("--max-length {max_length}: expected at least 2 (room for the special tokens)");
        }
        if batch_size == 0 {
            bail!("--batch-size 0: expected at least 1");
        }
        let list = named_adapters(adapters)?;
        let named = !list.is_empty();
        let list = if named {
            list
        } else {
            adapters
                .first()
                .map(|d| vec![("default".to_string(), PathBuf::from(d))])
                .unwrap_or_default()
        };
        let host = Host::load(model, &list, device)?;
        let requested = max_length;
        let (max_length, note) = crate::pipeline::fit_max_length(
            requested.unwrap_or(usize::MAX),
            host.max_input_length() as i64,
            "--max-length",
        );
        if let Some(note) = note.filter(|_| requested.is_some()) {
            eprintln!("peftkit: note: {note}");
        }
        let encoder = Encoder::new(host.tokenizer(), max_length);
        let default_adapter = list
            .first()
            .map_or(BASE_ADAPTER.to_string(), |(n, _)| n.clone());
        Ok(Self {
            host,
            encoder,
            named,
            default_adapter,
            batch_size,
        })
    }

    /// The adapter a row asks for (`None`: the default), checked.
    fn adapter<'a>(&'a self, asked: Option<&'a str>) -> std::result::Result<&'a str, String> {
        let name = asked
            .filter(|a| !a.is_empty())
            .unwrap_or(&self.default_adapter);
        if name == BASE_ADAPTER || self.host.adapters().contains_key(name) {
            Ok(name)
        } else {
            Err(format!(
                "adapter `{name}` is not loaded (loaded: {}; or {BASE_ADAPTER})",
                self.host
                    .adapters()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// Answers for `texts` with `adapters[i]` per text (empty: the default for all).
    pub fn predict(
        &mut self,
        texts: &[String],
        adapters: &[Option<String>],
    ) -> Result<Vec<(String, Answer)>> {
        let chosen: Vec<String> = (0..texts.len())
            .map(|i| {
                self.adapter(adapters.get(i).and_then(|a| a.as_deref()))
                    .map(str::to_string)
                    .map_err(anyhow::Error::msg)
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<Text> = texts.iter().cloned().map(Text::Single).collect();
        let ids = self.encoder.encode(&inputs, true).context("tokenizing")?;
        let rows: Vec<(Vec<u32>, &str)> = ids
            .into_iter()
            .zip(chosen.iter().map(String::as_str))
            .collect();
        let logits = self.host.classify(&rows, self.batch_size)?;
        Ok(logits
            .into_iter()
            .zip(chosen)
            .map(|(l, a)| {
                let answer = Answer::new(l, self.host.labels(&a));
                (a, answer)
            })
            .collect())
    }

    /// Whether `name` is a loaded adapter (or `__base__`); else which are.
    pub fn check_adapter(&self, name: &str) -> std::result::Result<(), String> {
        self.adapter(Some(name)).map(|_| ())
    }

    /// Whether answers name their adapter.
    pub fn named(&self) -> bool {
        self.named
    }
}

/// `predict --input`: how to read and write.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// The input file.
    pub input: PathBuf,
    /// The output (`.jsonl` or `.parquet`); standard output (JSONL) when absent.
    pub output: Option<PathBuf>,
    /// The text column (default `text`; `sentence` also for csv / parquet).
    pub text_column: Option<String>,
    /// The column choosing each row's adapter.
    pub adapter_column: String,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// Classifies every row of `opts.input`; returns the rows written.
pub fn predict_file(p: &mut Predictor, opts: &FileOptions) -> Result<u64> {
    let format = Format::of(&opts.input)?;
    let (records, total) = source::open(
        &opts.input,
        format,
        opts.text_column.as_deref(),
        &opts.adapter_column,
    )?;
    let mut sink = sink::Sink::create(opts.output.as_deref(), p.named)?;
    let bar = progress(
        total,
        opts.quiet || opts.output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()),
    );
    let chunk = (p.batch_size * 32).max(256);
    let mut records = records.peekable();
    let mut written = 0u64;
    while records.peek().is_some() {
        let mut part: Vec<Record> = Vec::with_capacity(chunk);
        for r in records.by_ref().take(chunk) {
            part.push(r?);
        }
        let texts: Vec<String> = part.iter().map(|r| r.text.clone()).collect();
        let adapters: Vec<Option<String>> = part.iter().map(|r| r.adapter.clone()).collect();
        for (i, r) in part.iter().enumerate() {
            if let Err(e) = p.adapter(adapters[i].as_deref()) {
                bail!("{} row {}: {e}", opts.input.display(), r.row + 1);
            }
        }
        let answers = p.predict(&texts, &adapters)?;
        for (record, (adapter, answer)) in part.into_iter().zip(answers) {
            sink.write(&record, p.named.then_some(adapter.as_str()), &answer)?;
            written += 1;
        }
        bar.set_position(written);
    }
    bar.finish_and_clear();
    sink.finish()?;
    if !opts.quiet {
        eprintln!(
            "predict: {written} rows of {} classified{}",
            opts.input.display(),
            opts.output
                .as_deref()
                .map(|o| format!(" into {}", o.display()))
                .unwrap_or_default()
        );
    }
    Ok(written)
}

fn progress(total: Option<u64>, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .expect("template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} rows  {per_sec}  {elapsed}")
                .expect("template"),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// `--adapter` values: all `NAME=DIR` (several adapters on one base), or none named (at most
/// one bare directory: the empty list). A directory whose path holds `=` is a path.
pub fn named_adapters(values: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let named: Vec<(String, PathBuf)> = values
        .iter()
        .filter_map(|v| {
            let (n, d) = v.split_once('=')?;
            if n.contains('/') || Path::new(v).is_dir() {
                return None;
            }
            Some((n.to_string(), PathBuf::from(d)))
        })
        .collect();
    if !named.is_empty() && named.len() != values.len() {
        bail!("--adapter: give every adapter as NAME=DIR when several are loaded");
    }
    if named.is_empty() && values.len() > 1 {
        bail!(
            "--adapter given {} times: name them, --adapter NAME=DIR",
            values.len()
        );
    }
    if let Some((n, _)) = named.iter().find(|(n, _)| n.is_empty()) {
        bail!("--adapter {n}=…: empty adapter name");
    }
    Ok(named)
}
