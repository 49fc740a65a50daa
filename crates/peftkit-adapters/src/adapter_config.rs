//! The configuration of one adapter, whichever kind it is (peft's `PeftConfig`).

use crate::lora::config::LoraConfig;
use crate::prefix::PrefixTuningConfig;
use crate::{AdapterError, Result};
use std::path::Path;

/// One adapter's configuration: what `adapter_config.json` holds.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterConfig {
    /// LoRA (and QLoRA: LoRA on a quantized base).
    Lora(LoraConfig),
    /// Prefix tuning.
    PrefixTuning(PrefixTuningConfig),
}

impl From<LoraConfig> for AdapterConfig {
    fn from(c: LoraConfig) -> Self {
        AdapterConfig::Lora(c)
    }
}

impl From<PrefixTuningConfig> for AdapterConfig {
    fn from(c: PrefixTuningConfig) -> Self {
        AdapterConfig::PrefixTuning(c)
    }
}

impl AdapterConfig {
    /// Reads `adapter_config.json`, by its `peft_type`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = crate::read_json(path)?;
        match raw.get("peft_type").and_then(|v| v.as_str()) {
            Some("PREFIX_TUNING") => Ok(PrefixTuningConfig::from_file(path)?.into()),
            Some("LORA") => Ok(LoraConfig::from_file(path)?.into()),
            other => Err(AdapterError::Config {
                path: path.into(),
                message: format!(
                    "peft_type {} is not supported (peftkit reads LORA and PREFIX_TUNING)",
                    other.map_or("missing".to_string(), |t| format!("`{t}`"))
                ),
            }),
        }
    }

    /// The JSON peft writes.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AdapterConfig::Lora(c) => c.to_json(),
            AdapterConfig::PrefixTuning(c) => c.to_json(),
        }
    }

    /// peft's `peft_type`.
    pub fn peft_type(&self) -> &'static str {
        match self {
            AdapterConfig::Lora(_) => "LORA",
            AdapterConfig::PrefixTuning(_) => "PREFIX_TUNING",
        }
    }

    /// The LoRA config, if this is LoRA.
    pub fn as_lora(&self) -> Option<&LoraConfig> {
        match self {
            AdapterConfig::Lora(c) => Some(c),
            AdapterConfig::PrefixTuning(_) => None,
        }
    }

    /// The prefix-tuning config, if this is prefix tuning.
    pub fn as_prefix_tuning(&self) -> Option<&PrefixTuningConfig> {
        match self {
            AdapterConfig::PrefixTuning(c) => Some(c),
            AdapterConfig::Lora(_) => None,
        }
    }

    /// Records the base model's id and revision (as `save_pretrained` does).
    pub fn set_base_model(&mut self, name: Option<&str>, revision: Option<&str>) {
        let (n, r) = match self {
            AdapterConfig::Lora(c) => (&mut c.base_model_name_or_path, &mut c.revision),
            AdapterConfig::PrefixTuning(c) => (&mut c.base_model_name_or_path, &mut c.revision),
        };
        *n = name.map(str::to_string);
        *r = revision.map(str::to_string);
    }
}
