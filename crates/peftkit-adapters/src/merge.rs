//! Merging adapters into the base weights (peft's `merge_adapter`, `unmerge_adapter`,
//! `merge_and_unload`), for every weight-based method through its [`crate::LayerAdapter`].

use crate::layer::AdapterLayer;
use crate::peft_model::heads::Heads;
use crate::{AdapterError, PeftModel, Result};
use peftkit_models::SequenceClassifier;

impl PeftModel {
    /// Whether any adapter is merged into the base weights.
    pub fn is_merged(&self) -> bool {
        self.base
            .linears()
            .iter()
            .any(|l| l.hook_as::<AdapterLayer>().is_some_and(|h| h.is_merged()))
    }

    /// Folds the active adapter into the base weights (`merge_adapter`); merging twice does
    /// nothing more. Prompt-learning adapters have no weights to merge (nothing happens, as in
    /// peft).
    pub fn merge_adapter(&mut self) {
        let name = self.active.clone();
        for linear in self.base.linears_mut() {
            linear.with_hook(|layer: &mut AdapterLayer, base| layer.merge(base, &name));
        }
    }

    /// Merges the active adapter and, on a quantized base, quantizes the merged weights again with
    /// the same settings (peft's merge into a bitsandbytes 4-bit layer): memory stays at 4 bits,
    /// and the outputs move by what 4-bit rounding of the merged weight costs. Unmerging restores
    /// the original quantized weights exactly (peft subtracts and re-quantizes once more).
    pub fn merge_adapter_requantized(&mut self) -> Result<()> {
        self.merge_adapter();
        for linear in self.base.linears_mut() {
            linear
                .with_hook(|layer: &mut AdapterLayer, base| layer.stash().requantize(base))
                .transpose()?;
        }
        Ok(())
    }

    /// Takes every merged adapter back out of the base weights.
    pub fn unmerge_adapter(&mut self) {
        for linear in self.base.linears_mut() {
            linear.with_hook(|layer: &mut AdapterLayer, base| layer.unmerge(base));
        }
    }

    /// Merges the active adapter and returns the plain classifier with the active adapter's head
    /// (`merge_and_unload`).
    ///
    /// On a quantized base the result holds full-precision weights: each quantized weight is
    /// dequantized (plus the adapter's delta where it applies), so it can be saved as an HF
    /// checkpoint.
    ///
    /// A prompt-learning adapter (prefix tuning) cannot be merged into weights (as in peft): an
    /// error.
    pub fn merge_and_unload(mut self) -> Result<SequenceClassifier> {
        if !self.tuners[&self.active].mergeable() {
            return Err(AdapterError::Invalid(format!(
                "a {} adapter cannot be merged into the model's weights (as in peft): keep the adapter, or use LoRA",
                self.config().peft_type()
            )));
        }
        self.merge_adapter();
        let active = self.active.clone();
        Heads::unload(&mut self.base, &active);
        for linear in self.base.linears_mut() {
            linear.take_hook();
            linear.unpack();
        }
        for (_, t) in self.base.var_store().variables() {
            let _ = t.set_requires_grad(true);
        }
        Ok(self.base)
    }
}
