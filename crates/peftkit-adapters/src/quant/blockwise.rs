//! Blockwise 4-bit (NF4 / FP4) and 8-bit (dynamic map) quantization with bitsandbytes' bytes.
//!
//! Everything runs as tensor operations on the tensor's own device (CPU or CUDA).

use super::QuantType;
use crate::{AdapterError, Result};
use tch::{Device, Kind, Tensor};

/// The block sizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCK_SIZES: [i64; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/// The block size of the nested (double-quantized) absmax state, as bitsandbytes'
/// `compress_statistics`.
pub const NESTED_BLOCKSIZE: i64 = 256;

/// The per-block scales of a 4-bit tensor: plain fp32, or themselves quantized to 8 bits
/// (double quantization).
#[derive(Debug)]
pub enum Absmax {
    /// One fp32 absmax per block.
    Plain(Tensor),
    /// `absmax − offset` quantized blockwise (blocksize 256) with the signed dynamic map.
    Nested {
        /// The 8-bit codes, one per 4-bit block.
        codes: Tensor,
        /// One fp32 absmax per block of 256 codes.
        absmax: Tensor,
        /// The mean of the original absmax values, added back when dequantizing.
        offset: f32,
        /// The 256-entry dynamic map.
        code: Tensor,
    },
}

impl Absmax {
    /// The fp32 absmax per block (dequantizing the nested state when there is one).
    pub fn values(&self) -> Tensor {
        match self {
            Absmax::Plain(a) => a.shallow_clone(),
            Absmax::Nested {
                codes,
                absmax,
                offset,
                code,
            } => dequantize_blockwise(codes, absmax, code, NESTED_BLOCKSIZE) + *offset as f64,
        }
    }

    /// Bytes of storage.
    pub fn storage_bytes(&self) -> i64 {
        match self {
            Absmax::Plain(a) => 4 * a.numel() as i64,
            // codes + fp32 absmax + the fp32 offset (the shared map is not per tensor).
            Absmax::Nested { codes, absmax, .. } => {
                codes.numel() as i64 + 4 * absmax.numel() as i64 + 4
            }
        }
    }
}

/// A tensor quantized blockwise to 4 bits, as bitsandbytes' `quantize_4bit` returns it: two codes
/// per byte, the first element in the high nibble.
#[derive(Debug)]
pub struct Quantized4bit {
    /// Packed codes, `ceil(n / 2)` bytes (`uint8`).
    pub packed: Tensor,
    /// The per-block scales.
    pub absmax: Absmax,
    /// The original shape.
    pub shape: Vec<i64>,
    /// Elements per block.
    pub blocksize: i64,
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// The values of every packed byte, `[256, 2]` (high nibble's code, low nibble's code), kept
    /// on the packed codes' device: dequantizing is one gather per byte.
    pub pairs: Tensor,
}

fn check_blocksize(blocksize: i64) -> Result<()> {
    if BLOCK_SIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(AdapterError::Invalid(format!(
            "blocksize {blocksize} is not one of bitsandbytes' {BLOCK_SIZES:?}"
        )))
    }
}

/// Scales `x` (flat fp32) to [-1, 1] per block exactly as bitsandbytes' reference kernel does:
/// full blocks are multiplied by the reciprocal of their absmax, the partial last block divided.
/// Returns `(scaled, absmax)`.
fn scale_blocks(x: &Tensor, blocksize: i64) -> (Tensor, Tensor) {
    let n = x.numel() as i64;
    let rem = n % blocksize;
    let full = n - rem;
    let mut absmax = Vec::new();
    let mut scaled = Vec::new();
    if full > 0 {
        let blocks = x.narrow(0, 0, full).view([full / blocksize, blocksize]);
        let am = blocks.abs().amax([-1].as_slice(), false);
        let inv = am.clamp_min(1e-38).reciprocal();
        scaled.push((blocks * inv.view([-1, 1])).clamp(-1.0, 1.0).view([-1]));
        absmax.push(am);
    }
    if rem > 0 {
        let tail = x.narrow(0, full, rem);
        let am = tail.abs().max().clamp_min(1e-38);
        scaled.push((tail / &am).clamp(-1.0, 1.0));
        absmax.push(am.view([1]));
    }
    (Tensor::cat(&scaled, 0), Tensor::cat(&absmax, 0))
}

/// The 4-bit code table of `quant_type` on `device`.
fn code_tensor(quant_type: QuantType, device: Device) -> Tensor {
    Tensor::from_slice(&quant_type.code()).to_device(device)
}

/// `[256, 2]`: for each byte, the code values of its high and low nibble.
fn pair_table(quant_type: QuantType, device: Device) -> Tensor {
    let code = quant_type.code();
    let pairs: Vec<f32> = (0..256usize)
        .flat_map(|b| [code[b >> 4], code[b & 15]])
        .collect();
    Tensor::from_slice(&pairs).view([256, 2]).to_device(device)
}

/// Quantizes `x` (any shape, any float kind) blockwise to 4 bits, as bitsandbytes'
/// `quantize_4bit(x, blocksize, compress_statistics=double_quant, quant_type)` does on its CPU
/// backend: the same packed bytes and absmax (and nested state).
///
/// ```no_run
/// use peftkit_adapters::quant::{quantize_4bit, QuantType};
/// let w = tch::Tensor::randn([768, 768], (tch::Kind::Float, tch::Device::Cpu));
/// let q = quantize_4bit(&w, 64, QuantType::Nf4, true)?;
/// let back = q.dequantize(tch::Kind::Float);
/// assert_eq!(back.size(), w.size());
/// # Ok::<(), peftkit_adapters::AdapterError>(())
/// ```
pub fn quantize_4bit(
    x: &Tensor,
    blocksize: i64,
    quant_type: QuantType,
    double_quant: bool,
) -> Result<Quantized4bit> {
    check_blocksize(blocksize)?;
    let n = x.numel() as i64;
    if n == 0 {
        return Err(AdapterError::Invalid(
            "cannot quantize an empty tensor".into(),
        ));
    }
    let code = code_tensor(quant_type, x.device());
    let (packed, absmax) = tch::no_grad(|| {
        let flat = x.detach().to_kind(Kind::Float).reshape([-1]);
        let (mut scaled, absmax) = scale_blocks(&flat, blocksize);
        if n % 2 == 1 {
            scaled = scaled.constant_pad_nd([0, 1]);
        }
        // Nearest code by its sorted midpoints (a value on a midpoint takes the lower code).
        let (sorted, order) = code.sort(0, false);
        let mid = (sorted.narrow(0, 0, 15) + sorted.narrow(0, 1, 15)) / 2.0;
        let idx = order.index_select(0, &scaled.bucketize(&mid, false, false));
        let q = idx.to_kind(Kind::Uint8).view([-1, 2]);
        let high = q.select(1, 0).bitwise_left_shift_tensor_scalar(4);
        let packed = high.bitwise_or_tensor(&q.select(1, 1));
        (packed, absmax)
    });
    let absmax = if double_quant {
        let offset = absmax.mean(Kind::Float);
        let centred = &absmax - &offset;
        let code = dynamic_map().to_device(absmax.device());
        let (codes, absmax2) = quantize_blockwise(&centred, &code, NESTED_BLOCKSIZE);
        Absmax::Nested {
            codes,
            absmax: absmax2,
            offset: offset.double_value(&[]) as f32,
            code,
        }
    } else {
        Absmax::Plain(absmax)
    };
    Ok(Quantized4bit {
        packed,
        absmax,
        shape: x.size(),
        blocksize,
        quant_type,
        pairs: pair_table(quant_type, x.device()),
    })
}

impl Quantized4bit {
    /// Number of quantized elements.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// The values back in `kind` and the original shape (`dequantize_4bit`): the code of every
    /// element times its block's absmax, computed in fp32.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let n = self.numel();
        let values = self
            .pairs
            .index_select(0, &self.packed.to_kind(Kind::Int))
            .view([-1])
            .narrow(0, 0, n);
        let absmax = self.absmax.values();
        let rem = n % self.blocksize;
        let full = n - rem;
        let mut parts = Vec::new();
        if full > 0 {
            let blocks = values.narrow(0, 0, full).view([-1, self.blocksize]);
            parts.push(
                (blocks * absmax.narrow(0, 0, full / self.blocksize).view([-1, 1])).view([-1]),
            );
        }
        if rem > 0 {
            parts.push(values.narrow(0, full, rem) * absmax.narrow(0, full / self.blocksize, 1));
        }
        let out = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(&parts, 0)
        };
        out.view(self.shape.as_slice()).to_kind(kind)
    }

    /// Bytes of storage: packed codes plus the absmax state.
    pub fn storage_bytes(&self) -> i64 {
        self.packed.numel() as i64 + self.absmax.storage_bytes()
    }

    /// Bits of storage per quantized element (≈ 4.5 for blocksize 64, ≈ 4.127 with double
    /// quantization).
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.numel() as f64
    }

    /// Moves the state to `device`.
    pub fn to_device(&self, device: Device) -> Self {
        self.map(|t| t.to_device(device))
    }

    /// Another handle on the same tensors (nothing copied).
    pub fn shallow_clone(&self) -> Self {
        self.map(Tensor::shallow_clone)
    }

    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        let absmax = match &self.absmax {
            Absmax::Plain(a) => Absmax::Plain(f(a)),
            Absmax::Nested {
                codes,
                absmax,
                offset,
                code,
            } => Absmax::Nested {
                codes: f(codes),
                absmax: f(absmax),
                offset: *offset,
                code: f(code),
            },
        };
        Self {
            packed: f(&self.packed),
            absmax,
            shape: self.shape.clone(),
            blocksize: self.blocksize,
            quant_type: self.quant_type,
            pairs: f(&self.pairs),
        }
    }
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`), 256 sorted values,
pub fn dynamic_map() -> Tensor {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    let max_exponent_bits = 7;
    let non_sign_bits = 7;
    for i in 0..max_exponent_bits {
        let items = 2i64.pow((i + non_sign_bits - max_exponent_bits) as u32) + 1;
        // torch.linspace in fp32, midpoints and scaling in fp32 as torch computes them.
        let bounds = Tensor::linspace(0.1, 1.0, items, (Kind::Float, Device::Cpu));
        let means = (bounds.narrow(0, 0, items - 1) + bounds.narrow(0, 1, items - 1)) / 2.0;
        let means = Vec::<f32>::try_from(&means).expect("fp32 midpoints");
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        data.extend(means.iter().map(|m| scale * m));
        data.extend(means.iter().map(|m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Tensor::from_slice(&data)
}

/// Entries of bitsandbytes' quantization lookup table over [-1, 1].
const LUT_SIZE: usize = 65536;

/// bitsandbytes' lookup table for a sorted 256-entry code: for each of 65,536 evenly spaced
/// values in [-1, 1], the first code whose upper midpoint is not below it.
fn lookup_table(code: &[f32]) -> Vec<u8> {
    let mid: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0;
    for i in 0..LUT_SIZE {
        let v = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
        while idx < mid.len() && mid[idx] < v {
            idx += 1;
        }
        lut.push(idx as u8);
    }
    lut
}

/// 8-bit blockwise quantization with a sorted 256-entry `code`, as bitsandbytes' CPU kernel
/// (`quantize_blockwise` on CPU, which double quantization uses): each value times the reciprocal
/// of its block's absmax, rounded onto a 65,536-step grid over [-1, 1], and mapped to a code
/// through a precomputed table. Near zero that grid is coarser than the code's spacing, so this is
/// not an exact nearest-value search; it is reproduced as is so the codes are bitsandbytes'
/// bytes. An all-zero block gets absmax 0 and code 0, as there. Runs on the CPU (the state is
/// small: one value per 4-bit block) and returns `(codes uint8, absmax fp32)` on `x`'s device.
pub fn quantize_blockwise(x: &Tensor, code: &Tensor, blocksize: i64) -> (Tensor, Tensor) {
    let device = x.device();
    let values = Vec::<f32>::try_from(
        &x.detach()
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .reshape([-1]),
    )
    .expect("fp32 values");
    let table =
        Vec::<f32>::try_from(&code.to_kind(Kind::Float).to_device(Device::Cpu)).expect("fp32 code");
    let lut = lookup_table(&table);
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::new();
    for block in values.chunks(blocksize as usize) {
        let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        for v in block {
            let normed = (v * inv).clamp(-1.0, 1.0);
            // (x + 1) · 0.5 · 65535 + 0.5 with the last multiply-add fused (bitsandbytes is built
            // with -mfma and GCC contracts it).
            let pos = ((normed + 1.0) * 0.5).mul_add((LUT_SIZE - 1) as f32, 0.5);
            codes.push(lut[pos as u16 as usize]);
        }
    }
    (
        Tensor::from_slice(&codes)
            .view(x.size().as_slice())
            .to_device(device),
        Tensor::from_slice(&absmax).to_device(device),
    )
}

/// Inverse of [`quantize_blockwise`]: `code[q] · absmax[block]` in fp32, flat.
pub fn dequantize_blockwise(
    codes: &Tensor,
    absmax: &Tensor,
    code: &Tensor,
    blocksize: i64,
) -> Tensor {
    let n = codes.numel() as i64;
    let values = code.index_select(0, &codes.reshape([-1]).to_kind(Kind::Int64));
    let scale = absmax
        .repeat_interleave_self_int(blocksize, Some(0), None)
        .narrow(0, 0, n);
    values * scale
}
