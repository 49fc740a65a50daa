//! [`PeftModel`] as the trainer sees it ([`TrainModel`]): the active adapter's tensors and head
//! copy train; the method's regulariser joins the loss; the trainer's per-step hook reaches the
//! method (AdaLoRA's allocation).

use super::heads::Heads;
use super::PeftModel;
use crate::tuner::PEFT_PREFIX;
use peftkit_models::{ForwardOptions, LossScaling, ModelError, PrefixProvider, TrainModel};
use tch::{Device, Tensor};

impl TrainModel for PeftModel {
    fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> std::result::Result<Tensor, ModelError> {
        let opts = ForwardOptions {
            train,
            ..ForwardOptions::default()
        };
        Ok(self.forward(input_ids, attention_mask, &opts)?.logits)
    }

    /// The classifier's loss, plus the active method's regularisation (AdaLoRA's, which peft
    /// adds whenever labels are given).
    fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let loss = self.base.loss(logits, labels);
        match self.regularization() {
            Some(r) => loss + r,
            None => loss,
        }
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = self.tuners[&self.active].parameters(&self.base);
        out.extend(
            Heads::parameters(&self.base, &self.active)
                .into_iter()
                .map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t)),
        );
        out.extend(
            self.base
                .trainable_parameters()
                .into_iter()
                .map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t)),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn parameter_count(&self) -> i64 {
        self.parameter_counts().1
    }

    fn device(&self) -> Device {
        self.base.device()
    }

    fn loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        factor: &Tensor,
    ) -> std::result::Result<Tensor, ModelError> {
        if let Some(reg) = self.regularization() {
            (&reg * factor).backward();
            let loss = self.task_loss_backward(input_ids, attention_mask, labels, factor)?;
            return Ok(loss + reg.detach());
        }
        self.task_loss_backward(input_ids, attention_mask, labels, factor)
    }

    fn after_optimizer_step(&self, step: usize, scaling: Option<&LossScaling>) {
        self.tuners[&self.active].after_optimizer_step(&self.base, step, scaling);
    }

    fn enable_gradient_checkpointing(&self) -> bool {
        self.base.enable_gradient_checkpointing()
    }
}

impl PeftModel {
    /// The active method's loss term, unless adapters are disabled.
    fn regularization(&self) -> Option<Tensor> {
        if self.disabled {
            return None;
        }
        self.tuners[&self.active].regularization(&self.base)
    }

    /// Forward and backward of the classifier's loss with the active adapter's prefix or prompt.
    fn task_loss_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        factor: &Tensor,
    ) -> std::result::Result<Tensor, ModelError> {
        let source = self.active_prefix();
        let prompt = self.active_prompt();
        if source.is_none() && prompt.is_none() {
            return self
                .base
                .loss_backward(input_ids, attention_mask, labels, factor);
        }
        // Checkpointing backpropagates each recomputed layer on its own, so a prefix source
        // recomputes the prefix per layer there; otherwise it is computed once for the pass.
        let computed;
        let prefix: Option<&dyn PrefixProvider> = match source {
            Some(s) if self.base.gradient_checkpointing() => Some(s),
            Some(s) => {
                computed = s.compute();
                Some(computed.as_ref())
            }
            None => None,
        };
        let opts = ForwardOptions {
            train: true,
            prefix,
            prompt,
        };
        self.base
            .loss_backward_with(input_ids, attention_mask, labels, &opts, factor)
    }
}
