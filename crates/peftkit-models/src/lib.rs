//! GPT-2, RoBERTa and BERT sequence classifiers over libtorch (`tch`), numerically matching
//! HF `transformers`' `GPT2ForSequenceClassification`, `RobertaForSequenceClassification` and
//! `BertForSequenceClassification`.
//!
//! - [`SequenceClassifier::load`] reads an HF checkpoint directory (`config.json` +
//!   `model.safetensors` or a sharded index) by HF parameter names; a missing classification head
//!   is initialised as transformers does and reported in the [`LoadReport`].
//! - [`SequenceClassifier::save_pretrained`] writes a directory transformers loads.
//! - Two seams let adapters plug in without this crate knowing any of them:
//!   every linear projection is a [`Linear`] that knows its HF path and accepts a [`LinearHook`]
//!   (LoRA, QLoRA), and every attention layer accepts per-layer prefix keys/values from a
//!   [`PrefixProvider`] (prefix tuning).
//!
//! ```no_run
//! use peftkit_models::{ForwardOptions, LoadOptions, SequenceClassifier};
//! use tch::{Device, Tensor};
//!
//! let (model, report) = SequenceClassifier::load("path/to/checkpoint".as_ref(), &LoadOptions::new(Device::Cpu))?;
//! println!("newly initialised: {:?}", report.newly_initialized);
//! let ids = Tensor::from_slice(&[101i64, 2023, 102]).view([1, 3]);
//! let mask = Tensor::ones([1, 3], (tch::Kind::Int64, Device::Cpu));
//! let out = model.forward(&ids, &mask, &ForwardOptions::eval())?;
//! out.logits.print();
//! # Ok::<(), peftkit_models::ModelError>(())
//! ```

#![warn(missing_docs)]

mod attention;
pub mod bert;
mod checkpoint;
mod classifier;
mod config;
pub mod deberta_v2;
mod device;
pub mod distilbert;
mod dropout;
mod ffi;
pub mod gpt2;
mod linear;
pub mod llama;
mod llama_config;
mod memory;
pub mod modernbert;
mod ops;
mod precision;
mod prefix;
pub mod roberta;
mod sdpa;
mod train_model;

pub use checkpoint::{
    read_safetensors, replace_dir, save_safetensors, write_dir_atomically, LoadReport,
};
pub use classifier::{
    Architecture, ClassifierOutput, ForwardOptions, LoadOptions, SequenceClassifier,
};
pub use config::{Activation, BertConfig, ClassifierConfig, Gpt2Config, ModelConfig, ProblemType};
pub use deberta_v2::DebertaV2Config;
pub use device::parse_device;
pub use distilbert::DistilBertConfig;
pub use dropout::{dropout, Dropout};
pub use linear::{Linear, LinearHook, PackedWeight, WeightLayout};
pub use llama::{LlamaConfig, LlamaFamily, RopeScaling};
pub use memory::{
    memory_usage, release_free_host_memory, reset_peak_memory, MemorySource, MemoryUsage,
};
pub use modernbert::ModernBertConfig;
pub use ops::{fused_adam_, recomputed_linear};
pub use precision::{compute_dtype, with_compute_dtype};
pub use prefix::{PrefixProvider, PromptProvider};
pub use sdpa::{set_cudnn_allow_tf32, set_sdpa_backend, SdpaBackend};
pub use train_model::{LossScaling, TrainModel};

/// Errors of this crate; each names the file, key or value and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` is malformed or describes something unsupported.
    #[error("{}: {message}", path.display())]
    Config {
        /// The config file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is truncated or corrupt.
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint key the model does not have.
    #[error("{}: unexpected key `{key}`: the {arch} model has no such parameter", path.display())]
    UnexpectedKey {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The key.
        key: String,
        /// The architecture being loaded.
        arch: String,
    },
    /// A parameter the checkpoint lacks (outside the classification head).
    #[error("{}: the checkpoint lacks {} parameter(s) of the model, e.g. `{}`", path.display(), keys.len(), keys.first().map(String::as_str).unwrap_or(""))]
    MissingKeys {
        /// The checkpoint directory or file.
        path: std::path::PathBuf,
        /// The missing parameter names.
        keys: Vec<String>,
    },
    /// A checkpoint tensor whose shape differs from the model's.
    #[error("{}: `{key}` has shape {checkpoint:?} in the checkpoint but {model:?} in the model{hint}", path.display())]
    ShapeMismatch {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The key.
        key: String,
        /// Shape in the file.
        checkpoint: Vec<i64>,
        /// Shape in the model.
        model: Vec<i64>,
        /// A hint (e.g. about num_labels).
        hint: String,
    },
    /// A tensor dtype this crate does not read.
    #[error("{}: `{key}` has unsupported dtype {dtype}", path.display())]
    Dtype {
        /// The file.
        path: std::path::PathBuf,
        /// The key.
        key: String,
        /// The dtype.
        dtype: String,
    },
    /// Bad input to forward (shapes, ids out of range).
    #[error("invalid input: {0}")]
    Input(String),
    /// An unknown device string.
    #[error("unknown device `{0}` (expected cpu, cuda, cuda:N or auto)")]
    Device(String),
    /// CUDA was asked for but is not available.
    #[error("device `{0}` requested but CUDA is not available to this build of libtorch (no GPU, or a CPU-only torch)")]
    NoCuda(String),
    /// A CUDA index beyond the machine's GPUs.
    #[error("device `{name}` requested but this machine has {count} CUDA device(s) (cuda:0 … cuda:{last})", last = count - 1)]
    NoSuchGpu {
        /// The device asked for.
        name: String,
        /// The GPUs present (at least one).
        count: i64,
    },
    /// Memory statistics could not be read.
    #[error("memory statistics: {0}")]
    Memory(String),
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: &std::path::Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}
