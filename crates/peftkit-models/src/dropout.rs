//! Dropout as `torch.nn.functional.dropout`, with the CPU mask drawn in parallel (`csrc/dropout.cpp`):
//! libtorch's CPU `bernoulli_` runs on one thread outside Intel's MKL path, and was the largest
//! cost of a LoRA training step after the matrix products on the development machine. On CUDA
//! libtorch's fused dropout is used as it is.

use crate::ffi::{pk_dropout_mask, take_error};
use std::ffi::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// `x` with each element zeroed with probability `p` and the rest scaled by `1 / (1 - p)` when
/// `train`; `x` itself otherwise. The CPU mask depends only on a seed drawn from torch's CPU
/// generator, so `tch::manual_seed` reproduces it (gradient checkpointing relies on that).
///
/// ```
/// let x = tch::Tensor::ones([1000], (tch::Kind::Float, tch::Device::Cpu));
/// tch::manual_seed(1);
/// let a = peftkit_models::dropout(&x, 0.25, true);
/// tch::manual_seed(1);
/// let b = peftkit_models::dropout(&x, 0.25, true);
/// assert!(a.equal(&b));
/// let kept = a.ne(0.0).sum(tch::Kind::Float).double_value(&[]);
/// assert!((kept - 750.0).abs() < 60.0);
/// assert!(peftkit_models::dropout(&x, 0.25, false).equal(&x));
/// ```
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || p >= 1.0 || x.numel() == 0 {
        return x.dropout(p, train);
    }
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` outlives the call, which only reads its sizes and options.
    let mask = unsafe { pk_dropout_mask(x.as_ptr() as *mut C_tensor, p, seed, &mut error) };
    if mask.is_null() {
        // Out of memory, say: libtorch's own dropout reports the same condition its way.
        let _ = take_error(error);
        return x.dropout(p, train);
    }
    // SAFETY: a heap-allocated `at::Tensor` whose ownership the C++ side passes to us.
    let mask = unsafe { Tensor::from_ptr(mask) };
    x * mask
}

/// [`dropout`] as a method, for chained expressions: `(a + b).dropped(p, train)`.
pub trait Dropout {
    /// [`dropout`] of `self`.
    fn dropped(&self, p: f64, train: bool) -> Tensor;
}

impl Dropout for Tensor {
    fn dropped(&self, p: f64, train: bool) -> Tensor {
        dropout(self, p, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_expected_share_scaled_and_passes_gradients_through_the_mask() {
        let x = Tensor::ones([64, 1000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        tch::manual_seed(3);
        let y = dropout(&x, 0.1, true);
        let kept = y.ne(0.0).sum(Kind::Float).double_value(&[]) / 64_000.0;
        assert!((kept - 0.9).abs() < 0.01, "{kept}");
        let nonzero = y.masked_select(&y.ne(0.0));
        assert!((nonzero - 1.0 / 0.9).abs().max().double_value(&[]) < 1e-6);
        y.sum(Kind::Float).backward();
        assert!(x.grad().equal(&y.detach()));
        // Another seed, another mask; bf16 keeps its dtype.
        let z = dropout(&x.detach(), 0.1, true);
        assert!(!z.equal(&y.detach()));
        let h = dropout(&x.detach().to_kind(Kind::BFloat16), 0.5, true);
        assert_eq!(h.kind(), Kind::BFloat16);
    }
}
