//! The configuration of one adapter, whichever method it is (peft's `PeftConfig`), and the list
//! of methods: adding a method is one line in [`methods!`] (and its folder).

use crate::adalora::AdaLoraConfig;
use crate::ia3::Ia3Config;
use crate::lora::config::LoraConfig;
use crate::prefix::PrefixTuningConfig;
use crate::prompt::{PromptEncoderConfig, PromptTuningConfig};
use crate::tuner::{MethodConfig, Tuner};
use crate::{AdapterError, Result};
use peftkit_models::SequenceClassifier;
use std::path::Path;

macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident($ty:ty) = $kind:literal;)*) => {
        /// One adapter's configuration: what `adapter_config.json` holds.
        #[derive(Debug, Clone, PartialEq)]
        pub enum AdapterConfig {
            $($(#[$doc])* $variant($ty),)*
        }

        $(impl From<$ty> for AdapterConfig {
            fn from(c: $ty) -> Self {
                AdapterConfig::$variant(c)
            }
        })*

        /// The methods: peftkit's `kind` name and peft's `peft_type`.
        pub const METHODS: &[(&str, &str)] = &[$(($kind, <$ty as MethodConfig>::PEFT_TYPE),)*];

        impl AdapterConfig {
            /// peft's `peft_type`.
            pub fn peft_type(&self) -> &'static str {
                match self {
                    $(AdapterConfig::$variant(_) => <$ty as MethodConfig>::PEFT_TYPE,)*
                }
            }

            /// peftkit's name of the method (`kind` in an experiment's `[adapter]`).
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AdapterConfig::$variant(_) => $kind,)*
                }
            }

            /// The JSON peft writes.
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(AdapterConfig::$variant(c) => c.to_json(),)*
                }
            }

            /// Checks values (each method its own).
            pub fn validate(&self) -> std::result::Result<(), String> {
                match self {
                    $(AdapterConfig::$variant(c) => c.validate(),)*
                }
            }

            /// Modules trained in full and saved with the adapter, beyond the head.
            pub fn modules_to_save(&self) -> Option<&[String]> {
                match self {
                    $(AdapterConfig::$variant(c) => c.modules_to_save(),)*
                }
            }

            /// Records the base model's id and revision (as `save_pretrained` does).
            pub fn set_base_model(&mut self, name: Option<&str>, revision: Option<&str>) {
                let (n, r) = match self {
                    $(AdapterConfig::$variant(c) => c.base_model_mut(),)*
                };
                *n = name.map(str::to_string);
                *r = revision.map(str::to_string);
            }

            /// Reads the JSON of `adapter_config.json` by its `peft_type` (`path` for errors).
            pub fn from_json(raw: serde_json::Value, path: &Path) -> Result<Self> {
                let found = raw.get("peft_type").and_then(|v| v.as_str()).map(str::to_string);
                match found.as_deref() {
                    $(Some(<$ty as MethodConfig>::PEFT_TYPE) => Ok(<$ty>::from_json(raw, path)?.into()),)*
                    other => Err(AdapterError::Config {
                        path: path.into(),
                        message: format!(
                            "peft_type {} is not supported (peftkit reads {})",
                            other.map_or("missing".to_string(), |t| format!("`{t}`")),
                            METHODS.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(", ")
                        ),
                    }),
                }
            }

            /// A config from a method's `kind` and its fields (an experiment's `[adapter]`
            /// section, as JSON): peft's field names, every unknown field an error naming it,
            /// values checked by the method.
            pub fn from_kind(kind: &str, fields: serde_json::Value) -> std::result::Result<Self, String> {
                if fields.get("inference_mode").is_some_and(|v| v == &serde_json::json!(true)) {
                    return Err("inference_mode is set by peft when it saves an adapter; a config to train leaves it out".into());
                }
                match kind {
                    $($kind => Ok(strict::<$ty>(fields)?.into()),)*
                    other => Err(format!(
                        "unknown adapter kind `{other}` (adapter methods: {})",
                        METHODS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    )),
                }
            }

            /// Creates the adapter `name` on `base`.
            pub(crate) fn inject(self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
                match self {
                    $(AdapterConfig::$variant(c) => c.inject(base, name),)*
                }
            }

            /// The fields as an experiment's `[adapter]` section writes them (`null`s left out).
            pub fn to_fields(&self) -> serde_json::Value {
                let mut v = match self {
                    $(AdapterConfig::$variant(c) => serde_json::to_value(c).expect("config serialises"),)*
                };
                if let Some(m) = v.as_object_mut() {
                    m.retain(|_, x| !x.is_null());
                }
                v
            }
        }
    };
}

methods! {
    /// LoRA (and QLoRA: LoRA on a quantized base).
    Lora(LoraConfig) = "lora";
    /// Prefix tuning.
    PrefixTuning(PrefixTuningConfig) = "prefix";
    /// IA³.
    Ia3(Ia3Config) = "ia3";
    /// Prompt tuning.
    PromptTuning(PromptTuningConfig) = "prompt";
    /// P-tuning.
    PTuning(PromptEncoderConfig) = "ptuning";
    /// AdaLoRA.
    AdaLora(AdaLoraConfig) = "adalora";
}

/// Deserializes `fields` into `T`, refusing fields `T` does not have, then validates.
fn strict<T: MethodConfig>(fields: serde_json::Value) -> std::result::Result<T, String> {
    let mut unknown = Vec::new();
    let cfg: T = serde_ignored::deserialize(fields, |p| unknown.push(p.to_string()))
        .map_err(|e| e.to_string())?;
    if let Some(k) = unknown.first() {
        return Err(format!(
            "unknown field `{k}` for a {} adapter",
            T::PEFT_TYPE
        ));
    }
    cfg.validate()?;
    Ok(cfg)
}

impl AdapterConfig {
    /// Reads `adapter_config.json`, by its `peft_type`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(crate::read_json(path)?, path)
    }

    /// The LoRA config, if this is LoRA.
    pub fn as_lora(&self) -> Option<&LoraConfig> {
        match self {
            AdapterConfig::Lora(c) => Some(c),
            _ => None,
        }
    }

    /// The prefix-tuning config, if this is prefix tuning.
    pub fn as_prefix_tuning(&self) -> Option<&PrefixTuningConfig> {
        match self {
            AdapterConfig::PrefixTuning(c) => Some(c),
            _ => None,
        }
    }
}
