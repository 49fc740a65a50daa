//! Which CUDA kernels libtorch's scaled-dot-product attention may choose, as
//! `torch.backends.cuda.enable_{flash,mem_efficient,math,cudnn}_sdp` set them in Python.

use std::ffi::c_int;

/// A kernel family of `scaled_dot_product_attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpaBackend {
    /// FlashAttention (fp16/bf16, no arbitrary mask).
    Flash,
    /// The memory-efficient kernel.
    MemEfficient,
    /// The composite (math) implementation.
    Math,
    /// cuDNN's fused attention.
    CuDnn,
}

impl std::str::FromStr for SdpaBackend {
    type Err = String;

    /// `flash`, `mem_efficient`, `math` or `cudnn`.
    ///
    /// ```
    /// use peftkit_models::SdpaBackend;
    /// assert_eq!("cudnn".parse::<SdpaBackend>(), Ok(SdpaBackend::CuDnn));
    /// assert!("fast".parse::<SdpaBackend>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flash" => Ok(Self::Flash),
            "mem_efficient" => Ok(Self::MemEfficient),
            "math" => Ok(Self::Math),
            "cudnn" => Ok(Self::CuDnn),
            other => Err(format!(
                "unknown attention kernel `{other}` (expected flash, mem_efficient, math or cudnn)"
            )),
        }
    }
}

/// Allows or forbids `backend` for the whole process (libtorch's global setting).
pub fn set_sdpa_backend(backend: SdpaBackend, enabled: bool) {
    let code = match backend {
        SdpaBackend::Flash => 0,
        SdpaBackend::MemEfficient => 1,
        SdpaBackend::Math => 2,
        SdpaBackend::CuDnn => 3,
    };
    // SAFETY: sets a flag of libtorch's global context; any code is valid input.
    let rc = unsafe { crate::ffi::pk_set_sdp_backend(code as c_int, c_int::from(enabled)) };
    debug_assert_eq!(rc, 0);
}

/// Allows or forbids TF32 arithmetic in cuDNN's fp32 kernels (convolutions, RNNs such as
/// P-tuning's LSTM prompt encoder) for the whole process, as `torch.backends.cudnn.allow_tf32`
/// does in Python. On by default (PyTorch's default); forbid it where fp32 results must match the
/// CPU's closely. No effect without CUDA.
pub fn set_cudnn_allow_tf32(allowed: bool) {
    // SAFETY: sets a flag of libtorch's global context.
    unsafe { crate::ffi::pk_set_cudnn_allow_tf32(c_int::from(allowed)) }
}
