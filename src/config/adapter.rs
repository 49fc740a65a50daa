//! `[adapter]`: the method (`kind`) and that method's own peft config.

use super::one_line;
use serde::{Deserialize, Serialize};

/// The fine-tuning method, as `[adapter] kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No training: label statistics and the untrained head's accuracy.
    Baseline,
    /// Every parameter trained.
    Full,
    /// Only the classification head trained (base frozen).
    Head,
    /// A peft adapter on a frozen base (any method of [`peftkit_adapters::METHODS`]; `qlora`:
    /// LoRA on a 4-bit base), with the head trained.
    Adapter,
}

/// The kinds that are not adapters.
const PLAIN_KINDS: &[(&str, Method)] = &[
    ("baseline", Method::Baseline),
    ("full", Method::Full),
    ("head", Method::Head),
];

/// peftkit's short aliases of transformers' `BitsAndBytesConfig` fields in a `qlora` section.
const BNB_ALIASES: &[(&str, &str)] = &[
    ("quant_type", "bnb_4bit_quant_type"),
    ("double_quant", "bnb_4bit_use_double_quant"),
    ("compute_dtype", "bnb_4bit_compute_dtype"),
    ("skip_modules", "llm_int8_skip_modules"),
    ("blocksize", "bnb_4bit_blocksize"),
];

/// `[adapter]`: the method (`kind`) and its options with peft's names, deserialized straight
/// into that method's peft config: `kind = "lora"` takes `LoraConfig`'s fields (`r`,
/// `lora_alpha`, `target_modules`, `use_dora`, …), `"ia3"` `IA3Config`'s, `"prefix"`
/// `PrefixTuningConfig`'s; `"qlora"` LoRA's and `BitsAndBytesConfig`'s; `"full"`, `"head"`
/// and `"baseline"` none. An unknown field is an error naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSection {
    /// The `kind` as written.
    pub kind: String,
    /// The adapter's peft config (adapter kinds).
    pub peft: Option<peftkit_adapters::AdapterConfig>,
    /// The 4-bit quantization of the base (`qlora`).
    pub quantization: Option<peftkit_adapters::quant::BnbConfig>,
}

impl AdapterSection {
    /// The method.
    pub fn method(&self) -> Method {
        PLAIN_KINDS
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map_or(Method::Adapter, |(_, m)| *m)
    }

    fn from_table(kind: String, mut table: toml::Table) -> std::result::Result<Self, String> {
        if let Some((_, _)) = PLAIN_KINDS.iter().find(|(k, _)| *k == kind) {
            if let Some(key) = table.keys().next() {
                return Err(format!(
                    "[adapter]: kind `{kind}` takes no options, but `{key}` is set (adapter options need an adapter kind, e.g. kind = \"lora\")"
                ));
            }
            return Ok(Self {
                kind,
                peft: None,
                quantization: None,
            });
        }
        let mut quantization = None;
        let method = if kind == "qlora" {
            let fields = serde_json::to_value(peftkit_adapters::quant::BnbConfig::default())
                .expect("config serialises");
            let is_bnb = |k: &str| fields.get(k).is_some();
            let mut bnb = toml::Table::new();
            for key in table.keys().cloned().collect::<Vec<_>>() {
                let name = BNB_ALIASES
                    .iter()
                    .find(|(a, _)| *a == key)
                    .map_or(key.as_str(), |(_, n)| n);
                if is_bnb(name) {
                    let v = table.remove(&key).expect("listed");
                    bnb.insert(name.to_string(), v);
                }
            }
            if bnb.get("load_in_4bit") == Some(&toml::Value::Boolean(false)) {
                return Err("[adapter]: kind `qlora` needs load_in_4bit = true (or unset)".into());
            }
            let cfg = peftkit_adapters::quant::BnbConfig::deserialize(toml::Value::Table(bnb))
                .map_err(|e| format!("[adapter]: {}", one_line(&e.to_string())))?;
            cfg.validate().map_err(|e| format!("[adapter]: {e}"))?;
            quantization = Some(cfg);
            "lora"
        } else {
            kind.as_str()
        };
        let fields = serde_json::to_value(&table).map_err(|e| format!("[adapter]: {e}"))?;
        let peft = peftkit_adapters::AdapterConfig::from_kind(method, fields).map_err(|e| {
            if peftkit_adapters::METHODS.iter().any(|(k, _)| *k == method) {
                format!("[adapter]: {e}")
            } else {
                format!(
                    "[adapter]: unknown kind `{kind}` (expected one of {}, {}, qlora)",
                    PLAIN_KINDS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", "),
                    peftkit_adapters::METHODS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        })?;
        Ok(Self {
            kind,
            peft: Some(peft),
            quantization,
        })
    }

    fn to_table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("kind".into(), toml::Value::String(self.kind.clone()));
        let mut add = |v: serde_json::Value| {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    if v.is_null() {
                        continue;
                    }
                    if let Ok(v) = toml::Value::try_from(v) {
                        t.insert(k, v);
                    }
                }
            }
        };
        if let Some(p) = &self.peft {
            add(p.to_fields());
        }
        if let Some(q) = &self.quantization {
            add(serde_json::to_value(q).expect("config serialises"));
        }
        t
    }
}

impl<'de> Deserialize<'de> for AdapterSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "[adapter] kind must be a string, got {other}"
                )))
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        Self::from_table(kind, table).map_err(D::Error::custom)
    }
}

impl Serialize for AdapterSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_table().serialize(s)
    }
}
