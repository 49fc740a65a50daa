//! A labelled text split and the operations `datasets` users expect on it.

use crate::{DataError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Texts with integer class labels and the class names, like one split of a `datasets`
/// `DatasetDict` reduced to the two columns a sequence classifier needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// The texts.
    pub texts: Vec<String>,
    /// The class id of each text, in `0..label_names.len()`.
    pub labels: Vec<i64>,
    /// The class names (`ClassLabel.names`).
    pub label_names: Vec<String>,
}

/// Counts and fractions of each class.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStats {
    /// Rows per class.
    pub counts: Vec<usize>,
    /// Fraction of rows per class.
    pub fractions: Vec<f64>,
}

impl std::fmt::Display for LabelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .counts
            .iter()
            .zip(&self.fractions)
            .enumerate()
            .map(|(i, (c, p))| format!("{i}: {c} ({:.2} %)", 100.0 * p))
            .collect();
        write!(f, "{}", parts.join(" / "))
    }
}

impl Split {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }

    /// This split followed by `other` (`concatenate_datasets`). Both must have the same classes.
    pub fn concat(&self, other: &Split) -> Result<Split> {
        if self.label_names != other.label_names {
            return Err(DataError::LabelMismatch {
                left: self.label_names.clone(),
                right: other.label_names.clone(),
            });
        }
        let mut out = self.clone();
        out.texts.extend_from_slice(&other.texts);
        out.labels.extend_from_slice(&other.labels);
        Ok(out)
    }

    /// The first `n` rows (all rows when `n >= len`), like `dataset.select(range(n))`.
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            texts: self.texts[..n].to_vec(),
            labels: self.labels[..n].to_vec(),
            label_names: self.label_names.clone(),
        }
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        Split {
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
        }
    }

    /// All rows in a seeded random order (`dataset.shuffle(seed)`); the same seed gives the same
    /// order on every machine (ChaCha8).
    pub fn shuffled(&self, seed: u64) -> Split {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        self.select(&idx)
    }

    /// `n` rows drawn at random with a seed (`dataset.shuffle(seed).select(range(n))`).
    pub fn shuffled_subset(&self, n: usize, seed: u64) -> Split {
        self.shuffled(seed).take(n)
    }

    /// Counts and fractions per class.
    pub fn label_stats(&self) -> LabelStats {
        let mut counts = vec![0usize; self.num_labels()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        let total = self.len().max(1) as f64;
        let fractions = counts.iter().map(|&c| c as f64 / total).collect();
        LabelStats { counts, fractions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Split {
        Split {
            texts: (0..n).map(|i| format!("t{i}")).collect(),
            labels: (0..n).map(|i| (i % 2) as i64).collect(),
            label_names: vec!["neg".into(), "pos".into()],
        }
    }

    #[test]
    fn subsets_are_seeded_and_stable() {
        let s = split(100);
        let a = s.shuffled_subset(10, 42);
        assert_eq!(a, s.shuffled_subset(10, 42));
        assert_ne!(a, s.shuffled_subset(10, 43));
        assert_eq!(a.len(), 10);
        assert_eq!(s.take(3).texts, vec!["t0", "t1", "t2"]);
        assert_eq!(s.take(1000).len(), 100);
        // a shuffle is a permutation
        let mut t = s.shuffled(1).texts;
        t.sort();
        let mut u = s.texts.clone();
        u.sort();
        assert_eq!(t, u);
    }

    #[test]
    fn concat_checks_labels_and_stats_count() {
        let s = split(3);
        let c = s.concat(&split(2)).unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c.label_stats().counts, vec![3, 2]);
        let mut other = split(2);
        other.label_names = vec!["a".into(), "b".into()];
        assert!(matches!(
            s.concat(&other),
            Err(DataError::LabelMismatch { .. })
        ));
    }
}
