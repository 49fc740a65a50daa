//! Mixed-adapter batches (peft's `adapter_names=`): each row of one batch with its own adapter.

use super::PeftModel;
use crate::routing::{with_routing, Routing, BASE_ADAPTER};
use crate::{AdapterError, Result};
use peftkit_models::{ClassifierOutput, ForwardOptions};
use tch::Tensor;

impl PeftModel {
    /// An evaluation forward pass in which row `i` uses adapter `adapter_names[i]`
    /// ([`BASE_ADAPTER`], `"__base__"`: none), in one batch (peft's `adapter_names=`). Rows
    /// give the same results as a batch of that adapter alone. As in peft, it is for inference
    /// only, needs unmerged adapters, and prompt-learning adapters (prefix tuning) cannot take
    /// part.
    ///
    /// ```no_run
    /// # fn f(model: &peftkit_adapters::PeftModel, ids: &tch::Tensor, mask: &tch::Tensor) -> peftkit_adapters::Result<()> {
    /// let out = model.forward_mixed(ids, mask, &["sst2", "__base__", "emotion"])?;
    /// # Ok(()) }
    /// ```
    pub fn forward_mixed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        adapter_names: &[&str],
    ) -> Result<ClassifierOutput> {
        let rows = input_ids.size().first().copied().unwrap_or(0);
        if adapter_names.len() as i64 != rows {
            return Err(AdapterError::Invalid(format!(
                "adapter_names has {} entries but the batch {rows} rows",
                adapter_names.len()
            )));
        }
        if self.is_merged() {
            return Err(AdapterError::Invalid(
                "cannot pass `adapter_names` while an adapter is merged (unmerge first)".into(),
            ));
        }
        for name in adapter_names {
            if *name == BASE_ADAPTER {
                continue;
            }
            let tuner = self
                .tuners
                .get(*name)
                .ok_or_else(|| self.no_adapter(name))?;
            if tuner.prefix().is_some() || tuner.prompt().is_some() {
                return Err(AdapterError::Invalid(format!(
                    "adapter `{name}` is {}: a prompt-learning adapter cannot be mixed with others in one batch (as in peft); run its rows separately",
                    tuner.config().peft_type()
                )));
            }
        }
        let routing = Routing::new(adapter_names, self.base.device());
        let out = with_routing(routing, || {
            tch::no_grad(|| {
                self.base
                    .forward(input_ids, attention_mask, &ForwardOptions::eval())
            })
        })?;
        Ok(out)
    }
}
