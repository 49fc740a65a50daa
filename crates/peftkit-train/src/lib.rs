//! A trainer for peftkit models with the features of HF `Trainer` and burn-train: AdamW (HF's
//! weight-decay rules) or SGD over a flat parameter buffer, linear / cosine / constant schedules
//! with warmup, gradient accumulation, clipping, fp16 loss scaling on CUDA, evaluation and save
//! strategies, best-checkpoint selection, early stopping, resume, progress bars and a
//! `metrics.jsonl` log. The loop prepares batches ahead on a background thread and reads values
//! back from the device only at logging steps.
//!
//! ```no_run
//! use peftkit_train::{Dataset, Trainer, TrainingArgs};
//! # fn run(model: &peftkit_models::SequenceClassifier, train: &Dataset, eval: &Dataset) -> peftkit_train::Result<()> {
//! let args = TrainingArgs { learning_rate: 2e-5, num_train_epochs: 2.0, ..TrainingArgs::default() };
//! let out = Trainer::new(model, args, "runs/x/checkpoints".as_ref())?.train(train, Some(eval), None)?;
//! println!("{} steps, train loss {:.4}", out.global_step, out.train_loss);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod args;
mod data;
mod ddp;
mod eval;
mod nonfinite;
mod optim;
mod state;
mod tokens;
mod trainer;

pub use args::{lr_factor, Optim, Precision, Scheduler, Strategy, TrainingArgs};
pub use data::{for_each_batch, Dataset, DeviceBatch};
pub use ddp::DistributedStats;
pub use eval::{evaluate, evaluate_in, evaluate_sharded};
pub use optim::{decays, FlatOptimizer, OptimConfig};
pub use peftkit_distributed as distributed;
pub use state::TrainerState;
pub use tokens::TokenCounts;
pub use trainer::{trainable_summary, EvalOutput, TrainMemory, TrainModel, TrainOutput, Trainer};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid arguments.
    #[error("training arguments: {0}")]
    Config(String),
    /// The training loss stopped being finite (NaN or infinite).
    #[error("training stopped: {0}")]
    NonFinite(String),
    /// Evaluation met logits that are not finite: never turned into predictions.
    #[error("evaluation: the model produced non-finite logits (NaN or infinity) for {rows} of {total} rows: its weights may hold NaN or infinity")]
    NonFiniteLogits {
        /// Rows with a non-finite logit.
        rows: i64,
        /// Rows evaluated.
        total: usize,
    },
    /// A checkpoint that cannot be resumed from or loaded.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// From the model.
    #[error(transparent)]
    Model(#[from] peftkit_models::ModelError),
    /// From the metrics log.
    #[error(transparent)]
    Eval(#[from] peftkit_eval::EvalError),
    /// From the process group of a distributed run.
    #[error(transparent)]
    Distributed(#[from] peftkit_distributed::DistError),
    /// From libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
