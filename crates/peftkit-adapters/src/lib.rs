//! Adapters for peftkit's classifiers, laid out like peft's tuners: each method a folder with its
//! config (peft's field names and defaults), its layer, and its injection into a
//! [`peftkit_models::SequenceClassifier`] through the models' two seams (every linear; every
//! attention layer's prefix); peft's file format both ways.
//!
//! - Methods: LoRA ([`LoraConfig`]; DoRA with `use_dora`; PiSSA / OLoRA initialisations; QLoRA
//!   on a 4-bit base, [`quant`]), AdaLoRA ([`AdaLoraConfig`]), IA³ ([`Ia3Config`]),
//!   prefix tuning ([`PrefixTuningConfig`]), prompt tuning ([`PromptTuningConfig`]) and
//!   P-tuning ([`PromptEncoderConfig`]). [`AdapterConfig`] lists them; each implements
//!   [`tuner::MethodConfig`], and its adapters are [`tuner::Tuner`]s.
//! - [`PeftModel`] hosts named adapters on one base: the active one trains (with its own copy of
//!   the classification head, peft's `modules_to_save`), others wait; a batch may also mix them
//!   row by row ([`PeftModel::forward_mixed`], peft's `adapter_names`).
//! - [`PeftModel::save_pretrained`] writes `adapter_config.json` + `adapter_model.safetensors`
//!   with peft's keys; [`PeftModel::from_pretrained`] reads adapters saved by Python peft.
//! - Merge, unmerge, `merge_and_unload`, a disabled-adapter context.
//!
//! ```no_run
//! use peftkit_adapters::{LoraConfig, PeftModel};
//! use peftkit_models::{LoadOptions, SequenceClassifier};
//!
//! let (base, _) = SequenceClassifier::load("gpt2-checkpoint".as_ref(), &LoadOptions::new(tch::Device::Cpu))?;
//! let model = PeftModel::new(base, LoraConfig::new(&["c_attn", "c_proj"], 8, 32.0))?;
//! println!("{}", model.trainable_summary());
//! model.save_pretrained("adapter".as_ref(), Some("gpt2"), None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod adalora;
mod config;
pub mod format;
pub mod ia3;
pub mod layer;
mod layer_tuner;
pub mod lora;
mod merge;
mod peft_model;
pub mod prefix;
pub mod prompt;
pub mod prompt_learning;
pub mod quant;
pub mod routing;
pub mod targets;
pub mod tuner;

pub use adalora::AdaLoraConfig;
pub use config::{AdapterConfig, METHODS};
pub use ia3::{Ia3Config, Ia3Layer};
pub use layer::{AdapterLayer, LayerAdapter, TensorKey};
pub use lora::config::{Bias, InitLoraWeights, LayerIndexes, LoraConfig, TargetModules};
pub use lora::layer::LoraLayer;
pub use peft_model::{PeftModel, DEFAULT_ADAPTER};
pub use prefix::{PrefixEncoder, PrefixTuningConfig};
pub use prompt::{PromptEncoderConfig, PromptTuningConfig};
pub use routing::BASE_ADAPTER;
pub use tuner::{PEFT_PREFIX, PROMPT_LEARNING_PREFIX};

/// Errors of this crate; each names the file or key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// An invalid or unsupported adapter configuration.
    #[error("adapter config: {0}")]
    Invalid(String),
    /// `adapter_config.json` is malformed or unsupported.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `target_modules` matched no module.
    #[error("target_modules {targets} matched no module of the model; its linear modules are: {} (e.g. `{example}`)", available.join(", "))]
    NoTargets {
        /// The targets.
        targets: String,
        /// The last components of the model's linear module paths.
        available: Vec<String>,
        /// A full path.
        example: String,
    },
    /// The adapter's weights do not fit the model.
    #[error("{}: `{key}` {message}", path.display())]
    Mismatch {
        /// The adapter file.
        path: std::path::PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
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
}

impl AdapterError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a JSON file; errors name the file.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| AdapterError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AdapterError::Config {
        path: path.into(),
        message: format!("invalid JSON: {e}"),
    })
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AdapterError>;
