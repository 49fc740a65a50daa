//! Mixed precision at the linear seam: inside [`with_compute_dtype`], every [`crate::Linear`]
//! (and the adapters on it) computes in fp16 or bf16 from its fp32 parameters, as torch's
//! autocast does for `linear`/`addmm`, while embeddings, LayerNorm, softmax and residual sums
//! stay fp32 and the loss is computed in fp32. Gradients flow back to the fp32 parameters.

use std::cell::Cell;
use tch::Kind;

thread_local! {
    static COMPUTE: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Runs `f` with linear layers computing in `kind` (`None`: fp32), restoring the previous
/// setting afterwards.
///
/// ```
/// use peftkit_models::{compute_dtype, with_compute_dtype};
/// assert_eq!(compute_dtype(), None);
/// with_compute_dtype(Some(tch::Kind::BFloat16), || assert_eq!(compute_dtype(), Some(tch::Kind::BFloat16)));
/// assert_eq!(compute_dtype(), None);
/// ```
pub fn with_compute_dtype<T>(kind: Option<Kind>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Kind>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPUTE.with(|c| c.replace(kind)));
    f()
}

/// The dtype linear layers compute in on this thread (`None`: the parameters' own, fp32).
pub fn compute_dtype() -> Option<Kind> {
    COMPUTE.with(Cell::get)
}
