//! The interface a trainer needs from a classifier, implemented by [`SequenceClassifier`] (full
//! and head-only fine-tuning) and by adapter-wrapped models (`peftkit-adapters`).

use crate::{ForwardOptions, Result, SequenceClassifier};
use tch::{Device, Tensor};

/// The trainer's fp16 loss scaling in the step just taken, as device tensors (reading them is a
/// host-device sync: only what needs them should).
#[derive(Debug)]
pub struct LossScaling {
    /// The scale the step's gradients were computed with (the parameters' `grad` still holds
    /// them scaled).
    pub scale: Tensor,
    /// 1.0 where the step was skipped (non-finite gradients: nothing was applied), else 0.0.
    pub skipped: Tensor,
}

/// Logits, the loss, and the parameters to train.
pub trait TrainModel {
    /// Logits `[batch, num_labels]`.
    fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor>;
    /// The training loss for these logits.
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor;
    /// The parameters to train, by name, in a stable order.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)>;
    /// Number of parameters, trainable or not (as peft counts them).
    fn parameter_count(&self) -> i64;
    /// The device of the parameters.
    fn device(&self) -> Device;

    /// One training micro-batch: accumulates the gradients of `loss × factor` into the trainable
    /// parameters and returns the loss, detached. Models with gradient checkpointing recompute
    /// their layers in the backward pass.
    fn loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        factor: &Tensor,
    ) -> Result<Tensor> {
        plain_loss_backward(self, input_ids, attention_mask, labels, factor)
    }

    /// Called by the trainer after each optimizer step (`step` counts from 0), while the step's
    /// gradients are still there (e.g. AdaLoRA's budget allocation). Under fp16, `scaling` says
    /// what the loss scaler did: the parameters' gradients are then still multiplied by its
    /// scale, and a skipped step applied nothing. Nothing by default.
    fn after_optimizer_step(&self, _step: usize, _scaling: Option<&LossScaling>) {}

    /// Turns gradient checkpointing on; false when the model does not support it.
    fn enable_gradient_checkpointing(&self) -> bool {
        false
    }
}

/// Forward, loss, backward of `loss × factor`; the loss detached.
fn plain_loss_backward<M: TrainModel + ?Sized>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    labels: &Tensor,
    factor: &Tensor,
) -> Result<Tensor> {
    let logits = model.logits(input_ids, attention_mask, true)?;
    let loss = model.loss(&logits, labels);
    (&loss * factor).backward();
    Ok(loss.detach())
}

impl TrainModel for SequenceClassifier {
    fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let opts = ForwardOptions {
            train,
            ..ForwardOptions::default()
        };
        Ok(self.forward(input_ids, attention_mask, &opts)?.logits)
    }

    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        SequenceClassifier::loss(self, logits, labels)
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .var_store()
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn parameter_count(&self) -> i64 {
        self.parameter_counts().1
    }

    fn device(&self) -> Device {
        SequenceClassifier::device(self)
    }

    fn loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        factor: &Tensor,
    ) -> Result<Tensor> {
        self.loss_backward_with(
            input_ids,
            attention_mask,
            labels,
            &ForwardOptions::train(),
            factor,
        )
    }

    fn enable_gradient_checkpointing(&self) -> bool {
        self.set_gradient_checkpointing(true);
        true
    }
}
