//! The run report: `report.json`, `report.md` (ours beside the published figures) and
//! `curves.svg`.

use crate::config::{ExperimentConfig, ReferenceSection};
use anyhow::{Context, Result};
use peftkit_data::LabelStats;
use peftkit_eval::{curves_svg, CurvePoint, Metrics};
use peftkit_train::TrainOutput;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Writes a file through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Evaluation of one split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitResult {
    /// Split name.
    pub split: String,
    /// Rows.
    pub rows: usize,
    /// Mean loss.
    pub loss: f64,
    /// Metrics.
    pub metrics: Metrics,
    /// Throughput.
    pub samples_per_second: f64,
}

/// Class distribution of one split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelDistribution {
    /// Split name.
    pub split: String,
    /// `(label, count, fraction)`.
    pub classes: Vec<(String, usize, f64)>,
}

/// One line of the comparison with the published figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// Metric name.
    pub metric: String,
    /// Our value (None: not measured by this run).
    pub ours: Option<f64>,
    /// Published value.
    pub published: f64,
}

impl ComparisonRow {
    /// A Markdown table.
    pub fn table(rows: &[ComparisonRow]) -> String {
        let mut s =
            String::from("| metric | ours | published | difference |\n|---|---:|---:|---:|\n");
        for r in rows {
            let fmt = |v: f64| {
                if v.abs() >= 100.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.4}")
                }
            };
            match r.ours {
                Some(o) => {
                    s += &format!(
                        "| {} | {} | {} | {:+.4} |\n",
                        r.metric,
                        fmt(o),
                        fmt(r.published),
                        o - r.published
                    )
                }
                None => s += &format!("| {} | — | {} | |\n", r.metric, fmt(r.published)),
            }
        }
        s
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Experiment name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Model argument.
    pub model: String,
    /// Where the model was loaded from.
    pub model_dir: String,
    /// The weights were randomly initialised (`model.init = "random"`): accuracies and losses
    /// mean nothing and are not compared with the published ones.
    #[serde(default)]
    pub random_init: bool,
    /// Dataset (and config).
    pub dataset: String,
    /// Method.
    pub method: String,
    /// Device.
    pub device: String,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// All parameters.
    pub all_params: i64,
    /// Label distributions.
    pub label_stats: Vec<LabelDistribution>,
    /// Evaluation before training (foundation model + untrained head).
    pub baseline: Vec<SplitResult>,
    /// The training summary.
    pub train: Option<TrainOutput>,
    /// Evaluation after training, of the model reloaded from disk.
    pub final_results: Vec<SplitResult>,
    /// Whether the reloaded model predicts exactly like the trained one.
    pub reloaded_matches: Option<bool>,
    /// Where the trained model was saved.
    pub saved: Option<String>,
    /// Ours against the published figures.
    pub comparison: Vec<ComparisonRow>,
    /// Where the published figures come from.
    pub reference_source: String,
    /// What differs from the study and why.
    pub notes: Vec<String>,
    /// Seconds for the whole run.
    pub total_runtime: f64,
}

impl Report {
    /// An empty report for a config.
    pub fn new(cfg: &ExperimentConfig, device: &tch::Device) -> Self {
        Self {
            name: cfg.name.clone(),
            description: cfg.description.clone(),
            model: cfg.model.id.clone(),
            model_dir: String::new(),
            random_init: cfg.model.init == crate::config::ModelInit::Random,
            dataset: match &cfg.data.config {
                Some(c) => format!("{} ({c})", cfg.data.dataset),
                None => cfg.data.dataset.clone(),
            },
            method: cfg.adapter.kind.clone(),
            device: format!("{device:?}"),
            trainable_params: 0,
            all_params: 0,
            label_stats: Vec::new(),
            baseline: Vec::new(),
            train: None,
            final_results: Vec::new(),
            reloaded_matches: None,
            saved: None,
            comparison: Vec::new(),
            reference_source: cfg.reference.source.clone(),
            notes: cfg.reference.notes.clone(),
            total_runtime: 0.0,
        }
    }

    /// Adds a split's label distribution.
    pub fn add_label_stats(&mut self, split: &str, stats: &LabelStats, names: &[String]) {
        self.label_stats.push(LabelDistribution {
            split: split.to_string(),
            classes: crate::pipeline::stats_map(stats, names),
        });
    }

    /// The value of a named figure of this run, for the comparison.
    fn ours(&self, metric: &str) -> Option<f64> {
        let last = self.final_results.first().or(self.baseline.first());
        let test = self.final_results.get(1).or(self.baseline.get(1));
        let binary_f1 = |m: &Metrics| {
            if m.per_class.len() == 2 {
                m.per_class[1].f1
            } else {
                m.macro_f1
            }
        };
        let pct = |split: usize, class: usize| {
            self.label_stats
                .get(split)
                .and_then(|s| s.classes.get(class))
                .map(|c| c.2)
        };
        Some(match metric {
            "accuracy" => last?.metrics.accuracy,
            "eval_loss" => last?.loss,
            "f1" => binary_f1(&last?.metrics),
            "macro_f1" => last?.metrics.macro_f1,
            "test_accuracy" => test?.metrics.accuracy,
            "test_loss" => test?.loss,
            "baseline_accuracy" => self.baseline.first()?.metrics.accuracy,
            "baseline_loss" => self.baseline.first()?.loss,
            "baseline_test_accuracy" => self.baseline.get(1)?.metrics.accuracy,
            "eval_samples_per_second" => last?.samples_per_second,
            "train_runtime" => self.train.as_ref()?.train_runtime,
            "global_step" => self.train.as_ref()?.global_step as f64,
            "trainable" => self.trainable_params as f64,
            "train_label_0" => pct(0, 0)?,
            "train_label_1" => pct(0, 1)?,
            "eval_label_0" => pct(1, 0)?,
            "eval_label_1" => pct(1, 1)?,
            _ => return None,
        })
    }

    /// Fills the comparison with the published figures (with random weights only those that do
    /// not depend on the weights: parameter counts, label statistics, steps, run time).
    pub fn compare(&mut self, reference: &ReferenceSection) {
        let depends_on_weights = |metric: &str| {
            ["accuracy", "loss", "f1"]
                .iter()
                .any(|m| metric.contains(m))
        };
        self.comparison = reference
            .metrics
            .iter()
            .filter(|(metric, _)| !(self.random_init && depends_on_weights(metric)))
            .map(|(metric, &published)| ComparisonRow {
                metric: metric.clone(),
                ours: self.ours(metric),
                published,
            })
            .collect();
    }

    fn markdown(&self) -> String {
        let mut s = format!("# {}\n\n{}\n\n", self.name, self.description);
        s += &format!(
            "- model: `{}` ({})\n- dataset: `{}`\n- method: {}\n- device: {}\n- trainable parameters: {} of {}\n- run time: {:.1} s\n",
            self.model, self.model_dir, self.dataset, self.method, self.device, self.trainable_params, self.all_params, self.total_runtime
        );
        if self.random_init {
            s += "- weights: **random initialisation** (`model.init = \"random\"`): accuracies and losses are meaningless and not compared; speed and memory are the real model's\n";
        }
        if !self.comparison.is_empty() {
            s += &format!(
                "\n## Ours beside the published figures\n\nSource: {}\n\n",
                self.reference_source
            );
            s += &ComparisonRow::table(&self.comparison);
        }
        if !self.notes.is_empty() {
            s += "\n## What differs and why\n\n";
            for n in &self.notes {
                s += &format!("- {n}\n");
            }
        }
        s += "\n## Label distribution\n\n| split | classes |\n|---|---|\n";
        for d in &self.label_stats {
            let c: Vec<String> = d
                .classes
                .iter()
                .map(|(n, c, f)| format!("{n}: {c} ({:.2} %)", 100.0 * f))
                .collect();
            s += &format!("| {} | {} |\n", d.split, c.join(" / "));
        }
        let results = |title: &str, rows: &[SplitResult]| {
            let mut s = format!("\n## {title}\n\n| split | rows | loss | accuracy | macro F1 | samples/s |\n|---|---:|---:|---:|---:|---:|\n");
            for r in rows {
                s += &format!(
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.1} |\n",
                    r.split,
                    r.rows,
                    r.loss,
                    r.metrics.accuracy,
                    r.metrics.macro_f1,
                    r.samples_per_second
                );
            }
            s
        };
        if !self.baseline.is_empty() {
            s += &results(
                "Before training (foundation model, untrained head)",
                &self.baseline,
            );
        }
        if let Some(t) = &self.train {
            s += &format!(
                "\n## Training\n\nglobal_step {}, train_loss {:.4}, train_runtime {:.1} s, {:.1} samples/s, epochs {:.2}{}\n",
                t.global_step,
                t.train_loss,
                t.train_runtime,
                t.train_samples_per_second,
                t.epoch,
                match (&t.best_checkpoint, t.best_metric) {
                    (Some(c), Some(m)) => format!("; best checkpoint {} ({m:.4}) loaded at the end", c.display()),
                    _ => String::new(),
                }
            );
            if let Some(m) = &t.memory {
                s += &format!(
                    "
{}
",
                    memory_line(m)
                );
            }
            if let Some(d) = &t.distributed {
                s += &format!(
                    "
{}
",
                    distributed_line(d, t.train_runtime)
                );
            }
        }
        if !self.final_results.is_empty() {
            s += &results(
                "After training (model saved, reloaded from disk, evaluated again)",
                &self.final_results,
            );
            if self.reloaded_matches == Some(true) {
                s += "\nThe reloaded model's predictions are identical to the trained model's.\n";
            }
            s += &format!(
                "\n### {} in detail\n\n{}",
                self.final_results[0].split,
                self.final_results[0].metrics.to_markdown()
            );
        }
        s
    }

    fn curves(&self) -> String {
        let mut train_loss = Vec::new();
        let mut eval_loss = Vec::new();
        let mut eval_acc = Vec::new();
        for r in self.train.iter().flat_map(|t| &t.log_history) {
            let step = r["step"].as_f64().unwrap_or(0.0);
            if let Some(v) = r["loss"].as_f64() {
                train_loss.push(CurvePoint { step, value: v });
            }
            if let Some(v) = r["eval_loss"].as_f64() {
                eval_loss.push(CurvePoint { step, value: v });
            }
            if let Some(v) = r["eval_accuracy"].as_f64() {
                eval_acc.push(CurvePoint { step, value: v });
            }
        }
        if let Some(b) = self.baseline.first() {
            eval_loss.insert(
                0,
                CurvePoint {
                    step: 0.0,
                    value: b.loss,
                },
            );
            eval_acc.insert(
                0,
                CurvePoint {
                    step: 0.0,
                    value: b.metrics.accuracy,
                },
            );
        }
        curves_svg(
            &format!("{} — {}", self.name, self.dataset),
            &train_loss,
            &eval_loss,
            &eval_acc,
        )
    }

    /// Writes `report.json`, `report.md` and `curves.svg` into the run directory, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomically(
            &dir.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        write_atomically(&dir.join("report.md"), self.markdown().as_bytes())?;
        write_atomically(&dir.join("curves.svg"), self.curves().as_bytes())
    }
}

/// One sentence on a distributed run's gradient all-reduce (rank 0's view), e.g. for `report.md`.
pub fn distributed_line(d: &peftkit_train::DistributedStats, train_runtime: f64) -> String {
    format!(
        "Data-parallel over {} ranks: {:.2} MiB of gradients all-reduced per step in {} bucket(s); rank 0 spent {:.2} s of {:.1} s training ({:.1}%) in the all-reduce, waiting for the other ranks included.",
        d.world_size,
        d.allreduce_bytes_per_step as f64 / (1024.0 * 1024.0),
        d.buckets_per_step,
        d.allreduce_seconds,
        train_runtime,
        100.0 * d.allreduce_seconds / train_runtime.max(1e-9)
    )
}

/// One sentence on training memory, e.g. for `report.md`.
pub fn memory_line(m: &peftkit_train::TrainMemory) -> String {
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    let what = match m.source {
        peftkit_models::MemorySource::CudaAllocated => "CUDA memory held by tensors",
        peftkit_models::MemorySource::ProcessResident => "resident memory of the process",
    };
    format!(
        "Peak {what} during training: {:.0} MiB ({:.0} MiB at the start, +{:.0} MiB; {:.0} MiB at the end).",
        mib(m.peak_bytes),
        mib(m.start_bytes),
        mib(m.peaked_delta()),
        mib(m.end_bytes)
    )
}
