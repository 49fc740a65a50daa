//! Adapters for peftkit's classifiers (LoRA, QLoRA, prefix tuning), layered like peft's tuners
//! (config / layer / injection), with peft's file format both ways.
//!
//! - [`LoraConfig`] has peft's field names and defaults; [`PeftModel::new`] injects LoRA at the
//!   models' linear seam by module path (peft's matching rules: name suffixes, a full-match
//!   regex, `layers_to_transform`), freezes the base and trains the LoRA factors and the
//!   classification head (`modules_to_save`).
//! - [`PeftModel::save_pretrained`] writes `adapter_config.json` + `adapter_model.safetensors`
//!   with peft's keys; [`PeftModel::from_pretrained`] reads adapters saved by Python peft.
//! - Merge, unmerge, `merge_and_unload`, a disabled-adapter context, several named adapters.
//! - QLoRA ([`quant`], [`PeftModel::new_quantized`]): LoRA on a base quantized to 4 bits with
//!   bitsandbytes' bytes.
//! - Prefix tuning ([`PrefixTuningConfig`], [`PrefixEncoder`]): per-layer key/value prefixes at
//!   the models' attention seam, in peft's file format.
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

mod adapter_config;
pub mod lora;
mod peft_model;
pub mod prefix;
pub mod quant;
pub mod targets;

pub use adapter_config::AdapterConfig;
pub use lora::config::{Bias, InitLoraWeights, LayerIndexes, LoraConfig, TargetModules};
pub use lora::layer::{LoraLayer, LoraWeights};
pub use peft_model::{PeftModel, DEFAULT_ADAPTER, PEFT_PREFIX};
pub use prefix::{PrefixEncoder, PrefixTuningConfig};

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

/// Reads an `adapter_config.json` that must be of `peft_type`.
pub(crate) fn read_adapter_json(
    path: &std::path::Path,
    peft_type: &str,
) -> Result<serde_json::Value> {
    let raw = read_json(path)?;
    let found = raw.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
    if found != peft_type {
        return Err(AdapterError::Config {
            path: path.into(),
            message: format!("peft_type is `{found}`, expected {peft_type}"),
        });
    }
    Ok(raw)
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AdapterError>;
