//! 4-bit quantization of base weights (QLoRA), byte-compatible with bitsandbytes.
//!
//! - [`quantize_4bit`] / [`Quantized4bit::dequantize`]: NF4 or FP4 blockwise absmax quantization
//!   (blocksize 32…4096, two codes per byte, first element in the high nibble), optionally with
//!   double quantization of the absmax ([`Absmax::Nested`]): the same bytes as bitsandbytes'
//!   `quantize_4bit`.
//! - [`BnbConfig`]: transformers' `BitsAndBytesConfig` fields; [`quantize_model`] stores every
//!   linear of a classifier (but the head and `llm_int8_skip_modules`) as [`Packed4bit`], which
//!   the layer dequantizes for each product (no full-precision copy is kept between steps, nor
//!   from a product's forward to its backward: the input gradient dequantizes again, as
//!   bitsandbytes' `MatMul4Bit`, through [`peftkit_models::recomputed_linear`]).

mod blockwise;
mod config;
mod stash;

pub use blockwise::{
    dequantize_blockwise, dynamic_map, quantize_4bit, quantize_blockwise, Absmax, Quantized4bit,
    BLOCK_SIZES, NESTED_BLOCKSIZE,
};
pub use config::{quantize_model, BnbConfig, Packed4bit, QuantSummary, QUANT_CONFIG_FILE};
pub use stash::QuantStash;

/// The 4-bit data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// NormalFloat4: 16 quantiles of N(0, 1) with an exact zero (QLoRA's type; peftkit's default).
    #[default]
    Nf4,
    /// bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit; bitsandbytes' default).
    Fp4,
}

/// bitsandbytes' NF4 table, written with the digits bitsandbytes lists (they round to the same
/// f32 values torch stores).
#[allow(clippy::excessive_precision)]
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bitsandbytes' FP4 values in bit-pattern order, before normalisation by their maximum (12).
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

impl QuantType {
    /// The 16 code values, indexed by the 4-bit code.
    pub fn code(self) -> [f32; 16] {
        match self {
            QuantType::Nf4 => NF4,
            QuantType::Fp4 => FP4_RAW.map(|v| v / 12.0),
        }
    }

    /// bitsandbytes' name (`nf4` / `fp4`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }
}

impl std::str::FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            other => Err(format!(
                "unknown 4-bit type `{other}` (expected nf4 or fp4)"
            )),
        }
    }
}
