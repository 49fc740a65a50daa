//! transformers' `BitsAndBytesConfig` (4-bit part) and quantizing a classifier's linears with it.

use super::{quantize_4bit, QuantType, Quantized4bit};
use crate::{AdapterError, Result};
use peftkit_models::{PackedWeight, SequenceClassifier};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Kind;

/// The file, beside `adapter_config.json`, that records how the base was quantized (the
/// `quantization_config` dict transformers keeps in `config.json`), so a reload re-quantizes the
/// same way.
pub const QUANT_CONFIG_FILE: &str = "quantization_config.json";

fn default_true() -> bool {
    true
}

fn default_blocksize() -> i64 {
    64
}

fn default_method() -> String {
    "bitsandbytes".into()
}

/// 4-bit quantization of the base model, with the names of transformers' `BitsAndBytesConfig`.
///
/// ```
/// use peftkit_adapters::quant::{BnbConfig, QuantType};
/// let cfg = BnbConfig { bnb_4bit_use_double_quant: true, ..BnbConfig::default() };
/// assert_eq!(cfg.bnb_4bit_quant_type, QuantType::Nf4);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BnbConfig {
    /// Always `"bitsandbytes"`.
    #[serde(default = "default_method")]
    pub quant_method: String,
    /// Must be true (8-bit is not supported).
    #[serde(default = "default_true")]
    pub load_in_4bit: bool,
    /// Must be false.
    #[serde(default)]
    pub load_in_8bit: bool,
    /// `nf4` or `fp4`. peftkit's default is NF4 (QLoRA's); bitsandbytes' is FP4.
    #[serde(default)]
    pub bnb_4bit_quant_type: QuantType,
    /// Double quantization of the absmax (`compress_statistics`).
    #[serde(default)]
    pub bnb_4bit_use_double_quant: bool,
    /// `float32`, `float16` or `bfloat16`; unset: the input's dtype.
    #[serde(default)]
    pub bnb_4bit_compute_dtype: Option<String>,
    /// Modules left in full precision (the classification head always is).
    #[serde(default)]
    pub llm_int8_skip_modules: Option<Vec<String>>,
    /// Elements per absmax block (bitsandbytes: 64; peftkit extension).
    #[serde(default = "default_blocksize")]
    pub bnb_4bit_blocksize: i64,
    /// Fields transformers writes that do not affect 4-bit loading.
    #[serde(default, skip_serializing)]
    pub llm_int8_threshold: Option<f64>,
    /// Ignored (8-bit only).
    #[serde(default, skip_serializing)]
    pub llm_int8_enable_fp32_cpu_offload: Option<bool>,
    /// Ignored (8-bit only).
    #[serde(default, skip_serializing)]
    pub llm_int8_has_fp16_weight: Option<bool>,
    /// Storage dtype of the packed codes (peftkit stores uint8).
    #[serde(default, skip_serializing)]
    pub bnb_4bit_quant_storage: Option<String>,
    /// Internal transformers fields.
    #[serde(default, rename = "_load_in_4bit", skip_serializing)]
    pub internal_load_in_4bit: Option<bool>,
    /// Internal transformers fields.
    #[serde(default, rename = "_load_in_8bit", skip_serializing)]
    pub internal_load_in_8bit: Option<bool>,
}

impl Default for BnbConfig {
    fn default() -> Self {
        Self {
            quant_method: default_method(),
            load_in_4bit: true,
            load_in_8bit: false,
            bnb_4bit_quant_type: QuantType::Nf4,
            bnb_4bit_use_double_quant: false,
            bnb_4bit_compute_dtype: None,
            llm_int8_skip_modules: None,
            bnb_4bit_blocksize: 64,
            llm_int8_threshold: None,
            llm_int8_enable_fp32_cpu_offload: None,
            llm_int8_has_fp16_weight: None,
            bnb_4bit_quant_storage: None,
            internal_load_in_4bit: None,
            internal_load_in_8bit: None,
        }
    }
}

impl BnbConfig {
    /// Checks the combination.
    pub fn validate(&self) -> Result<()> {
        if self.load_in_8bit || !self.load_in_4bit {
            return Err(AdapterError::Invalid(
                "only 4-bit quantization (load_in_4bit = true) is supported".into(),
            ));
        }
        if self.quant_method != "bitsandbytes" {
            return Err(AdapterError::Invalid(format!(
                "quant_method `{}` (expected bitsandbytes)",
                self.quant_method
            )));
        }
        if !super::BLOCK_SIZES.contains(&self.bnb_4bit_blocksize) {
            return Err(AdapterError::Invalid(format!(
                "bnb_4bit_blocksize {} is not one of {:?}",
                self.bnb_4bit_blocksize,
                super::BLOCK_SIZES
            )));
        }
        self.compute_kind()?;
        Ok(())
    }

    /// `bnb_4bit_compute_dtype` as a tch kind.
    pub fn compute_kind(&self) -> Result<Option<Kind>> {
        match self.bnb_4bit_compute_dtype.as_deref() {
            None => Ok(None),
            Some("float32" | "fp32" | "torch.float32") => Ok(Some(Kind::Float)),
            Some("float16" | "fp16" | "torch.float16") => Ok(Some(Kind::Half)),
            Some("bfloat16" | "bf16" | "torch.bfloat16") => Ok(Some(Kind::BFloat16)),
            Some(other) => Err(AdapterError::Invalid(format!(
                "bnb_4bit_compute_dtype `{other}` (expected float32, float16 or bfloat16)"
            ))),
        }
    }

    /// Reads `quantization_config.json` (or any JSON with these fields).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AdapterError::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| AdapterError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|e| AdapterError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Writes the config as JSON into `dir/quantization_config.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(QUANT_CONFIG_FILE);
        let json = serde_json::to_string_pretty(self).expect("config serialises");
        std::fs::write(&path, json).map_err(|e| AdapterError::io(&path, e))
    }

    /// Whether module `path` stays in full precision: the head modules of the architecture and
    /// every `llm_int8_skip_modules` entry, matched as whole dotted components.
    pub fn skips(&self, path: &str, head_modules: &[&str]) -> bool {
        let matches = |m: &str| {
            path == m
                || path.starts_with(&format!("{m}."))
                || path.ends_with(&format!(".{m}"))
                || path.contains(&format!(".{m}."))
        };
        head_modules.iter().any(|h| matches(h))
            || self
                .llm_int8_skip_modules
                .iter()
                .flatten()
                .any(|m| matches(m))
    }
}

/// A 4-bit weight at a linear seam: dequantized for every product.
#[derive(Debug)]
pub struct Packed4bit {
    /// The quantized `[out, in]` weight.
    pub weight: Quantized4bit,
    /// `bnb_4bit_compute_dtype`.
    pub compute_dtype: Option<Kind>,
}

impl PackedWeight for Packed4bit {
    fn unpack(&self, kind: Kind) -> tch::Tensor {
        self.weight.dequantize(kind)
    }

    fn compute_dtype(&self) -> Option<Kind> {
        self.compute_dtype
    }

    fn numel(&self) -> i64 {
        self.weight.numel()
    }

    fn storage_bytes(&self) -> i64 {
        self.weight.storage_bytes()
    }

    fn share(&self) -> Box<dyn PackedWeight> {
        Box::new(Packed4bit {
            weight: self.weight.shallow_clone(),
            compute_dtype: self.compute_dtype,
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantSummary {
    /// Paths of the quantized linears.
    pub modules: Vec<String>,
    /// Weight elements quantized.
    pub parameters: i64,
    /// Their bytes quantized (codes + absmax state).
    pub quantized_bytes: i64,
}

impl QuantSummary {
    /// Bytes the quantized weights take in fp32.
    pub fn fp32_bytes(&self) -> i64 {
        4 * self.parameters
    }

    /// Storage bits per quantized weight element.
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.quantized_bytes as f64 / self.parameters.max(1) as f64
    }
}

/// Quantizes every linear weight of `model` (as transformers' `load_in_4bit` replaces
/// `nn.Linear` and GPT-2's `Conv1D` by `Linear4bit`: the weight as `[out, in]`), except the
/// classification head and `llm_int8_skip_modules`. Biases stay in full precision. Linears already
/// packed are left alone.
pub fn quantize_model(model: &mut SequenceClassifier, config: &BnbConfig) -> Result<QuantSummary> {
    config.validate()?;
    let compute = config.compute_kind()?;
    let heads = model.architecture().head_modules();
    let mut summary = QuantSummary::default();
    for linear in model.linears_mut() {
        if linear.packed().is_some() || config.skips(linear.path(), heads) {
            continue;
        }
        let path = linear.path().to_string();
        linear.pack(|w| -> Result<Box<dyn PackedWeight>> {
            let q = quantize_4bit(
                w,
                config.bnb_4bit_blocksize,
                config.bnb_4bit_quant_type,
                config.bnb_4bit_use_double_quant,
            )?;
            Ok(Box::new(Packed4bit {
                weight: q,
                compute_dtype: compute,
            }))
        })?;
        let p = linear.packed().expect("just packed");
        summary.parameters += p.numel();
        summary.quantized_bytes += p.storage_bytes();
        summary.modules.push(path);
    }
    if summary.modules.is_empty() {
        return Err(AdapterError::Invalid(
            "no linear module to quantize (all skipped or already quantized)".into(),
        ));
    }
    tracing::info!(
        modules = summary.modules.len(),
        bits_per_parameter = summary.bits_per_parameter(),
        "base quantized to 4 bits"
    );
    Ok(summary)
}
