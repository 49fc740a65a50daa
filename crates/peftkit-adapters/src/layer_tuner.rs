//! The [`Tuner`] of every weight-based method (LoRA, DoRA, AdaLoRA, IA³) and their shared
//! injection at the linear seam: target matching by peft's rules, one [`AdapterLayer`] hook
//! per adapted linear, and what peft records in the config afterwards.

use crate::layer::{AdapterLayer, LayerAdapter};
use crate::lora::config::{Bias, LayerIndexes, TargetModules};
use crate::targets::is_target;
use crate::tuner::{LoadMismatch, Tuner, PEFT_PREFIX};
use crate::{AdapterConfig, AdapterError, Result};
use peftkit_models::{Linear, SequenceClassifier, WeightLayout};
use std::collections::BTreeMap;
use tch::Tensor;

/// Which linears a weight-based method adapts (peft's matching rules).
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    /// `target_modules`.
    pub targets: &'a TargetModules,
    /// `exclude_modules`.
    pub exclude: Option<&'a TargetModules>,
    /// `layers_to_transform`.
    pub layers: Option<&'a LayerIndexes>,
    /// `layers_pattern`.
    pub layers_pattern: Option<&'a TargetModules>,
}

/// What [`inject_layers`] found.
#[derive(Debug, Default)]
pub struct Injected {
    /// The adapted module paths.
    pub modules: Vec<String>,
    /// Whether any is a GPT-2 `Conv1D` (`[in, out]` weight).
    pub conv1d: bool,
}

impl Injected {
    /// Records in a method's config what peft records after injecting: `"all-linear"` becomes
    /// the (sorted) list of matched module paths, `fan_in_fan_out` is set for GPT-2's `Conv1D`
    /// (with peft's warning), `modules_to_save` defaults to the head (`classifier`, `score`).
    pub fn record(
        &self,
        target_modules: &mut Option<TargetModules>,
        fan_in_fan_out: &mut bool,
        modules_to_save: &mut Option<Vec<String>>,
        method: &str,
        adapter: &str,
    ) {
        if matches!(target_modules, Some(TargetModules::Regex(r)) if r == "all-linear") {
            let mut names = self.modules.clone();
            names.sort();
            *target_modules = Some(TargetModules::List(names));
        }
        if self.conv1d && !*fan_in_fan_out {
            tracing::warn!("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            *fan_in_fan_out = true;
        }
        modules_to_save.get_or_insert_with(crate::lora::seq_cls_modules);
        tracing::info!(adapter, modules = self.modules.len(), "{method} injected");
    }
}

/// Adds adapter `name` to every linear that `targets` selects (never the head or other
/// `modules_to_save`), making each layer with `make(linear)` (which may change the base weight,
/// as PiSSA does). No match is an error listing the
/// model's linear modules; a layer that already carries adapter `name` is an error.
pub fn inject_layers(
    base: &mut SequenceClassifier,
    name: &str,
    targets: Targets<'_>,
    modules_to_save: &[String],
    mut make: impl FnMut(&mut Linear) -> Result<Box<dyn LayerAdapter>>,
) -> Result<Injected> {
    let all_paths: Vec<String> = base
        .linears()
        .iter()
        .map(|l| l.path().to_string())
        .collect();
    let mut save: Vec<String> = base
        .architecture()
        .head_modules()
        .iter()
        .map(|s| s.to_string())
        .collect();
    save.extend(modules_to_save.iter().cloned());
    let mut found = Injected::default();
    for linear in base.linears_mut() {
        let path = linear.path().to_string();
        if !is_target(
            &path,
            targets.targets,
            targets.exclude,
            targets.layers,
            targets.layers_pattern,
            &save,
        ) {
            continue;
        }
        found.conv1d |= linear.layout() == WeightLayout::InOut;
        if linear.hook().is_some() && linear.hook_as::<AdapterLayer>().is_none() {
            return Err(AdapterError::Invalid(format!(
                "{path} is another adapter's modules_to_save and cannot be adapted"
            )));
        }
        let layer = make(linear)?;
        if linear.hook().is_none() {
            linear.set_hook(Box::new(AdapterLayer::default()));
        }
        let host = linear.hook_as_mut::<AdapterLayer>().expect("just set");
        host.insert(name, layer)?;
        found.modules.push(path);
    }
    if found.modules.is_empty() {
        let mut names: Vec<String> = all_paths
            .iter()
            .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
            .collect();
        names.sort();
        names.dedup();
        return Err(AdapterError::NoTargets {
            targets: targets.targets.to_string(),
            available: names,
            example: all_paths.first().cloned().unwrap_or_default(),
        });
    }
    Ok(found)
}

/// The [`Tuner`] of every weight-based method (LoRA, DoRA, IA³): its tensors live in the
/// [`AdapterLayer`] hooks of the linears it adapts, so saving, loading, counting and removal
/// are the same for all of them.
#[derive(Debug)]
pub struct LayerTuner {
    name: String,
    config: AdapterConfig,
    bias: Bias,
}

impl LayerTuner {
    /// The tuner of adapter `name`, whose layers are injected already.
    pub fn new(name: &str, config: AdapterConfig, bias: Bias) -> Self {
        Self {
            name: name.to_string(),
            config,
            bias,
        }
    }

    fn layers<'a>(
        &'a self,
        base: &'a SequenceClassifier,
    ) -> impl Iterator<Item = (&'a str, &'a dyn LayerAdapter)> + 'a {
        base.linears().into_iter().filter_map(move |l| {
            let layer = l.hook_as::<AdapterLayer>()?.get(&self.name)?;
            Some((l.path(), layer))
        })
    }
}

impl Tuner for LayerTuner {
    fn config(&self) -> &AdapterConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut AdapterConfig {
        &mut self.config
    }

    fn parameters(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, layer) in self.layers(base) {
            for (key, t) in layer.tensors() {
                out.push((
                    format!("{PEFT_PREFIX}{path}.{}", key.in_model(&self.name)),
                    t.shallow_clone(),
                ));
            }
        }
        out
    }

    fn state_dict(&self, base: &SequenceClassifier) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (path, layer) in self.layers(base) {
            for (key, t) in layer.tensors() {
                out.push((format!("{PEFT_PREFIX}{path}.{}", key.saved()), t.detach()));
            }
        }
        out
    }

    fn load_state_dict(
        &mut self,
        base: &mut SequenceClassifier,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), LoadMismatch> {
        let device = base.device();
        for linear in base.linears_mut() {
            let path = linear.path().to_string();
            let Some(layer) = linear
                .hook_as_mut::<AdapterLayer>()
                .and_then(|h| h.get_mut(&self.name))
            else {
                continue;
            };
            for (key, slot) in layer.tensors_mut() {
                let key = format!("{PEFT_PREFIX}{path}.{}", key.saved());
                let t = tensors.remove(&key).ok_or_else(|| {
                    LoadMismatch::missing(
                        &key,
                        "the adapter's config targets this module but its weights lack it",
                    )
                })?;
                if t.size() != slot.size() {
                    return Err(LoadMismatch::shape(&key, &t.size(), &slot.size()));
                }
                let requires = slot.requires_grad();
                *slot = t
                    .to_kind(slot.kind())
                    .to_device(device)
                    .detach()
                    .set_requires_grad(requires);
            }
            layer.loaded();
        }
        Ok(())
    }

    fn set_trainable(&mut self, base: &mut SequenceClassifier, on: bool) {
        for linear in base.linears_mut() {
            if let Some(layer) = linear
                .hook_as_mut::<AdapterLayer>()
                .and_then(|h| h.get_mut(&self.name))
            {
                for (_, t) in layer.tensors_mut() {
                    *t = t.detach().set_requires_grad(on);
                }
            }
        }
    }

    fn adapted_modules(&self, base: &SequenceClassifier) -> Vec<String> {
        self.layers(base).map(|(p, _)| p.to_string()).collect()
    }

    fn bias(&self) -> Bias {
        self.bias
    }

    fn remove(&mut self, base: &mut SequenceClassifier) {
        for linear in base.linears_mut() {
            let empty = linear.hook_as_mut::<AdapterLayer>().is_some_and(|h| {
                h.remove(&self.name);
                h.is_empty()
            });
            if empty {
                linear.take_hook();
            }
        }
    }
}
