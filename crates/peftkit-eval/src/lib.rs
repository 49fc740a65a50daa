//! Classification metrics and experiment reports.
//!
//! [`Metrics::compute`] gives accuracy, per-class precision / recall / F1, their macro, micro and
//! weighted averages, and the confusion matrix (sklearn's definitions: an undefined precision or
//! recall counts as 0). [`curves_svg`] draws training curves; [`MetricsLog`] appends
//! `metrics.jsonl` lines.
//!
//! ```
//! use peftkit_eval::Metrics;
//! let m = Metrics::compute(&[0, 1, 1, 0], &[0, 1, 0, 0], &["neg".into(), "pos".into()]);
//! assert_eq!(m.accuracy, 0.75);
//! assert_eq!(m.confusion, vec![vec![2, 0], vec![1, 1]]); // rows: true class, columns: predicted
//! ```

#![warn(missing_docs)]

mod curves;
mod metrics;

pub use curves::{curves_svg, CurvePoint};
pub use metrics::{ClassMetrics, Metrics, MetricsLog};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A report file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
