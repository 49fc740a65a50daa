//! Autograd operations tch cannot express in Rust, implemented as small C++ nodes
//! (`csrc/`, compiled by this crate's build script against the same libtorch).

use crate::ffi::{pk_recomputed_linear, take_error};
use crate::{ModelError, Result};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use tch::Tensor;
use torch_sys::C_tensor;

type WeightFn = Mutex<Box<dyn FnMut() -> Tensor + Send>>;

extern "C" fn call_weight(ctx: *mut c_void) -> *mut C_tensor {
    // SAFETY: `ctx` is the `Box<WeightFn>` leaked by `recomputed_linear`, alive until `drop_weight`.
    let f = unsafe { &*(ctx as *const WeightFn) };
    // A panic must not unwind into C++: it becomes a null result, which the node reports.
    catch_unwind(AssertUnwindSafe(|| {
        let mut guard = f.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = (*guard)();
        let p = w.as_mut_ptr();
        // Ownership of the C++ tensor passes to the caller, which deletes it.
        std::mem::forget(w);
        p
    }))
    .unwrap_or(std::ptr::null_mut())
}

extern "C" fn drop_weight(ctx: *mut c_void) {
    // SAFETY: called exactly once by the C++ side, with the pointer leaked below.
    drop(unsafe { Box::from_raw(ctx as *mut WeightFn) });
}

/// `x W^T` where `W = weight()` (`[out, in]`) is produced on demand and **not kept for the
/// backward pass**: when `x` requires a gradient, the backward node calls `weight` again to
/// compute `grad · W`. This is how bitsandbytes' `MatMul4Bit` re-dequantizes a 4-bit weight in
/// backward, so a quantized layer holds its full-precision weight only while it is used.
///
/// `W` is a constant to autograd (no gradient flows to it); it is cast to `x`'s dtype. The
/// callback may be called on autograd's worker threads, hence `Send`; it is dropped when the graph
/// no longer needs it. Double backward is not supported.
///
/// ```
/// use tch::{Kind, Tensor};
/// let w = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
/// let x = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let w2 = w.shallow_clone();
/// let y = peftkit_models::recomputed_linear(&x, move || w2.shallow_clone())?;
/// y.sum(Kind::Float).backward();
/// assert!(x.grad().allclose(&w.sum_dim_intlist(0, true, Kind::Float).expand([2, 4], false), 1e-6, 1e-6, false));
/// # Ok::<(), peftkit_models::ModelError>(())
/// ```
pub fn recomputed_linear(
    x: &Tensor,
    weight: impl FnMut() -> Tensor + Send + 'static,
) -> Result<Tensor> {
    let ctx: Box<WeightFn> = Box::new(Mutex::new(Box::new(weight)));
    let ctx = Box::into_raw(ctx) as *mut c_void;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` outlives the call (the C++ side copies the tensor handle it keeps); `ctx` is
    // handed over: the C++ side calls `drop_weight` exactly once, on success or failure.
    let y = unsafe {
        pk_recomputed_linear(
            x.as_ptr() as *mut C_tensor,
            call_weight,
            drop_weight,
            ctx,
            &mut error,
        )
    };
    if y.is_null() {
        return Err(ModelError::Torch(tch::TchError::Torch(take_error(error))));
    }
    // SAFETY: a heap-allocated `at::Tensor` whose ownership the C++ side passes to us.
    Ok(unsafe { Tensor::from_ptr(y) })
}

/// One Adam update (no weight decay: apply decoupled decay before it) of `param` in place, with
/// its gradient and moments, in a single pass over memory — libtorch's `_fused_adam_`
/// (`torch.optim.Adam(fused=True)`). `step` is a float tensor on `param`'s device holding this
/// update's number (1 for the first), for the bias corrections.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let p = Tensor::from_slice(&[1.0f32, -2.0]);
/// let g = Tensor::from_slice(&[0.5f32, -0.5]);
/// let (m, v) = (p.zeros_like(), p.zeros_like());
/// let step = Tensor::from_slice(&[1.0f32]).squeeze();
/// peftkit_models::fused_adam_(&p, &g, &m, &v, &step, 0.1, 0.9, 0.999, 1e-8).unwrap();
/// // The first step moves each element by lr in the gradient's opposite direction.
/// assert!((p.double_value(&[0]) - 0.9).abs() < 1e-6 && (p.double_value(&[1]) + 1.9).abs() < 1e-6);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn fused_adam_(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) -> Result<()> {
    let mut error: *mut c_char = std::ptr::null_mut();
    let ptr = |t: &Tensor| t.as_ptr() as *mut C_tensor;
    // SAFETY: the tensors outlive the call, which updates them in place.
    let rc = unsafe {
        crate::ffi::pk_fused_adam(
            ptr(param),
            ptr(grad),
            ptr(exp_avg),
            ptr(exp_avg_sq),
            ptr(step),
            lr,
            beta1,
            beta2,
            eps,
            &mut error,
        )
    };
    if rc != 0 {
        return Err(ModelError::Torch(tch::TchError::Torch(take_error(error))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tch::{Device, Kind};

    #[test]
    fn same_values_and_input_gradient_as_a_plain_linear() {
        let w = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let g = Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu));
        let calls = Arc::new(AtomicUsize::new(0));
        let (w2, c2) = (w.shallow_clone(), calls.clone());
        let y = recomputed_linear(&x, move || {
            c2.fetch_add(1, Ordering::SeqCst);
            w2.shallow_clone()
        })
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let reference = x.linear::<&Tensor>(&w, None);
        assert!(y.allclose(&reference, 1e-6, 1e-6, false));
        (&y * &g).sum(Kind::Float).backward();
        // The backward pass asked for the weight again instead of keeping it.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let expected = g.matmul(&w);
        assert!(x.grad().allclose(&expected, 1e-5, 1e-6, false));
    }

    #[test]
    fn no_graph_without_grad_and_the_callback_is_dropped() {
        let w = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let token = Arc::new(());
        let (w2, t2) = (w.shallow_clone(), token.clone());
        let y = recomputed_linear(&x, move || {
            let _keep = &t2;
            w2.shallow_clone()
        })
        .unwrap();
        assert!(!y.requires_grad());
        // Nothing holds the callback once the forward is done.
        assert_eq!(Arc::strong_count(&token), 1);
        // With a graph: held until backward, released after it.
        let x = x.set_requires_grad(true);
        let t3 = token.clone();
        let y = recomputed_linear(&x, move || {
            let _keep = &t3;
            w.shallow_clone()
        })
        .unwrap();
        assert_eq!(Arc::strong_count(&token), 2);
        y.sum(Kind::Float).backward();
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn a_mismatched_weight_or_a_panicking_callback_is_an_error() {
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let err = recomputed_linear(&x, || Tensor::zeros([5, 6], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
        let err = recomputed_linear(&x, || panic!("no weight"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("callback"), "{err}");
    }
}
