//! The C functions of `csrc/` (compiled by this crate's build script).

use std::ffi::{c_char, c_int, c_void, CStr};
use torch_sys::C_tensor;

extern "C" {
    pub(crate) fn pk_recomputed_linear(
        x: *mut C_tensor,
        weight: extern "C" fn(*mut c_void) -> *mut C_tensor,
        drop: extern "C" fn(*mut c_void),
        ctx: *mut c_void,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    pub(crate) fn pk_cuda_memory(device: c_int, out: *mut i64, error: *mut *mut c_char) -> c_int;
    pub(crate) fn pk_cuda_reset_peak(device: c_int, error: *mut *mut c_char) -> c_int;
    pub(crate) fn pk_set_sdp_backend(backend: c_int, enabled: c_int) -> c_int;
    pub(crate) fn pk_set_cudnn_allow_tf32(allowed: c_int);
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pk_fused_adam(
        p: *mut C_tensor,
        g: *mut C_tensor,
        m: *mut C_tensor,
        v: *mut C_tensor,
        step: *mut C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pk_dropout_mask(
        x: *mut C_tensor,
        p: f64,
        seed: u64,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn pk_free_error(error: *mut c_char);
}

/// The message a `pk_` function set (and frees it).
pub(crate) fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: a NUL-terminated string malloc'd by the C++ side, freed right after reading.
    let m = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { pk_free_error(error) };
    m
}
