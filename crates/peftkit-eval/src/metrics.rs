//! Metrics of a classifier's predictions.

use crate::EvalError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub label: String,
    /// TP / (TP + FP), 0 when nothing was predicted as this class.
    pub precision: f64,
    /// TP / (TP + FN), 0 when the class has no rows.
    pub recall: f64,
    /// Harmonic mean of precision and recall, 0 when both are 0.
    pub f1: f64,
    /// Rows of this class.
    pub support: usize,
}

/// Metrics of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub count: usize,
    /// Fraction predicted correctly.
    pub accuracy: f64,
    /// Per-class metrics, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted mean over classes.
    pub macro_precision: f64,
    /// Unweighted mean over classes.
    pub macro_recall: f64,
    /// Unweighted mean over classes.
    pub macro_f1: f64,
    /// Micro average (= accuracy for single-label classification).
    pub micro_f1: f64,
    /// Support-weighted mean over classes.
    pub weighted_precision: f64,
    /// Support-weighted mean over classes.
    pub weighted_recall: f64,
    /// Support-weighted mean over classes.
    pub weighted_f1: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Metrics {
    /// Computes the metrics of `predictions` against `labels` over `label_names.len()` classes.
    /// Ids outside the classes are counted as wrong and left out of the confusion matrix.
    pub fn compute(labels: &[i64], predictions: &[i64], label_names: &[String]) -> Self {
        let n = label_names.len();
        let mut confusion = vec![vec![0usize; n]; n];
        let mut correct = 0;
        for (&y, &p) in labels.iter().zip(predictions) {
            if y == p {
                correct += 1;
            }
            if (0..n as i64).contains(&y) && (0..n as i64).contains(&p) {
                confusion[y as usize][p as usize] += 1;
            }
        }
        let count = labels.len().min(predictions.len());
        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|c| {
                let tp = confusion[c][c];
                let predicted: usize = (0..n).map(|r| confusion[r][c]).sum();
                let support: usize = labels.iter().filter(|&&y| y == c as i64).count();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: label_names[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let mean = |f: fn(&ClassMetrics) -> f64| {
            if n == 0 {
                0.0
            } else {
                per_class.iter().map(f).sum::<f64>() / n as f64
            }
        };
        let total: usize = per_class.iter().map(|c| c.support).sum();
        let weighted = |f: fn(&ClassMetrics) -> f64| {
            if total == 0 {
                0.0
            } else {
                per_class
                    .iter()
                    .map(|c| f(c) * c.support as f64)
                    .sum::<f64>()
                    / total as f64
            }
        };
        Metrics {
            count,
            accuracy: ratio(correct, count),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            micro_f1: ratio(correct, count),
            weighted_precision: weighted(|c| c.precision),
            weighted_recall: weighted(|c| c.recall),
            weighted_f1: weighted(|c| c.f1),
            per_class,
            confusion,
        }
    }

    /// The value of a metric by name (`accuracy`, `f1` = macro F1, `macro_f1`, `micro_f1`,
    /// `weighted_f1`, `precision`, `recall`), for best-checkpoint selection.
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name.trim_start_matches("eval_") {
            "accuracy" => self.accuracy,
            "f1" | "macro_f1" => self.macro_f1,
            "micro_f1" => self.micro_f1,
            "weighted_f1" => self.weighted_f1,
            "precision" | "macro_precision" => self.macro_precision,
            "recall" | "macro_recall" => self.macro_recall,
            _ => return None,
        })
    }

    /// A Markdown table of the per-class metrics and the confusion matrix.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|\n",
        );
        for c in &self.per_class {
            s += &format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} |\n",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        s += &format!(
            "| macro avg | {:.4} | {:.4} | {:.4} | {} |\n| weighted avg | {:.4} | {:.4} | {:.4} | {} |\n",
            self.macro_precision, self.macro_recall, self.macro_f1, self.count, self.weighted_precision, self.weighted_recall, self.weighted_f1, self.count
        );
        s += "\nConfusion matrix (rows: true class, columns: predicted):\n\n| |";
        for c in &self.per_class {
            s += &format!(" {} |", c.label);
        }
        s += "\n|---|";
        s += &"---:|".repeat(self.per_class.len());
        s += "\n";
        for (row, c) in self.confusion.iter().zip(&self.per_class) {
            s += &format!("| {} |", c.label);
            for v in row {
                s += &format!(" {v} |");
            }
            s += "\n";
        }
        s
    }
}

/// Appends one JSON object per line to `metrics.jsonl`, flushing each line so that an interrupted
/// run keeps everything logged so far.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens (appending to) a log file.
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| EvalError::Io {
                path: path.into(),
                source,
            })?;
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    /// Appends a record.
    pub fn append(&mut self, record: &serde_json::Value) -> Result<(), EvalError> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|source| EvalError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads every record of a log file.
    pub fn read(path: &Path) -> Result<Vec<serde_json::Value>, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.into(),
            source,
        })?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn matches_sklearn_on_a_three_class_example() {
        // sklearn.metrics.classification_report(y, p) for these gives the figures below.
        let y = [0, 0, 1, 1, 2, 2, 2, 0];
        let p = [0, 1, 1, 1, 2, 0, 2, 0];
        let m = Metrics::compute(&y, &p, &names(3));
        assert_eq!(m.accuracy, 0.75);
        let pc: Vec<(f64, f64)> = m
            .per_class
            .iter()
            .map(|c| (c.precision, c.recall))
            .collect();
        assert_eq!(
            pc,
            vec![(2.0 / 3.0, 2.0 / 3.0), (2.0 / 3.0, 1.0), (1.0, 2.0 / 3.0)]
        );
        assert!(
            (m.macro_f1 - 0.7555555555555555).abs() < 1e-12,
            "{}",
            m.macro_f1
        );
        assert!((m.weighted_f1 - 0.75).abs() < 1e-12, "{}", m.weighted_f1);
        assert_eq!(m.micro_f1, m.accuracy);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 2]]
        );
        assert_eq!(m.get("eval_accuracy"), Some(0.75));
        assert!(m
            .to_markdown()
            .contains("| c2 | 1.0000 | 0.6667 | 0.8000 | 3 |"));
    }

    #[test]
    fn undefined_precision_is_zero() {
        let m = Metrics::compute(&[0, 1], &[0, 0], &names(2));
        assert_eq!(m.per_class[1].precision, 0.0);
        assert_eq!(m.per_class[1].f1, 0.0);
        assert_eq!(m.accuracy, 0.5);
    }

    #[test]
    fn log_appends_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&p).unwrap();
        log.append(&serde_json::json!({"step": 1, "loss": 0.5}))
            .unwrap();
        log.append(&serde_json::json!({"step": 2, "loss": 0.4}))
            .unwrap();
        let recs = MetricsLog::read(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1]["loss"], 0.4);
    }
}
