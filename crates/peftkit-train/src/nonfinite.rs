//! The policy for a loss that stops being a number: training ends at the first logging step (or
//! checkpoint) that sees it, with an error naming the step, the learning rate, the last finite
//! loss and the last checkpoint saved before it — never a run that finishes with a NaN loss and a
//! "best" checkpoint chosen by a NaN metric. The per-step check stays on the device (no
//! synchronisation); the host reads it only where the loop already does.

use crate::{Result, TrainError};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

pub(crate) struct NonFiniteGuard {
    /// The optimizer step (1-based) of the first non-finite micro-batch loss on this rank; -1
    /// while there is none.
    first_bad: Tensor,
    last_finite: Option<(usize, f64)>,
    pub(crate) last_checkpoint: Option<PathBuf>,
}

impl NonFiniteGuard {
    pub(crate) fn new(device: Device) -> Self {
        Self {
            first_bad: Tensor::full([], -1.0, (Kind::Float, device)),
            last_finite: None,
            last_checkpoint: None,
        }
    }

    /// Records whether a micro-batch `loss` of optimizer step `step` (1-based) is finite, on the
    /// device.
    pub(crate) fn observe(&mut self, loss: &Tensor, step: usize) {
        tch::no_grad(|| {
            let keep = self.first_bad.ge(0.0).logical_or(&loss.isfinite());
            self.first_bad = self
                .first_bad
                .where_self(&keep, &self.first_bad.full_like(step as f64));
        });
    }

    /// Checks a loss read on the host at `step` (in a distributed run, the mean over the ranks:
    /// every rank decides alike).
    pub(crate) fn check(&mut self, what: &str, value: f64, step: usize, lr: f64) -> Result<()> {
        if value.is_finite() {
            self.last_finite = Some((step, value));
            return Ok(());
        }
        Err(self.stop(&format!("the {what} is {value}"), step, lr))
    }

    /// An evaluation that met non-finite logits during training stops the run like a
    /// non-finite loss (the weights went bad at this step); other errors pass through.
    pub(crate) fn on_eval_error(&self, e: TrainError, step: usize, lr: f64) -> TrainError {
        match e {
            TrainError::NonFiniteLogits { rows, total } => self.stop(
                &format!("the evaluation's logits are non-finite for {rows} of {total} rows"),
                step,
                lr,
            ),
            other => other,
        }
    }

    fn stop(&self, what: &str, step: usize, lr: f64) -> TrainError {
        let first = self.first_bad.double_value(&[]);
        let first = if first >= 0.0 {
            format!(" (first at step {first:.0} on this rank)")
        } else {
            String::new()
        };
        let last = match self.last_finite {
            Some((s, v)) => format!("the last finite logged loss was {v:.4} at step {s}"),
            None => "no finite loss was logged before".into(),
        };
        let checkpoint = match &self.last_checkpoint {
            Some(c) => format!("the last good checkpoint is {}", c.display()),
            None => "no checkpoint was saved before it".into(),
        };
        TrainError::NonFinite(format!(
            "{what} at step {step}{first}, learning rate {lr:.3e}; {last}; {checkpoint} (lower the learning rate or check the data, then resume or restart)"
        ))
    }
}
