//! Injecting IA³ into a classifier (peft's `IA3Model`).

use super::config::Ia3Config;
use super::layer::Ia3Layer;
use crate::layer::LayerAdapter;
use crate::lora::config::Bias;
use crate::lora::config::TargetModules;
use crate::targets::matches;
use crate::tuner::{inject_layers, LayerTuner, MethodConfig, Targets, Tuner};
use crate::{AdapterError, Result};
use peftkit_models::SequenceClassifier;

/// peft's `_check_target_module_feedforward`: a regex must match the whole path; a list entry
/// matches a path that ends with it (a plain suffix, without the `.` boundary of target
/// matching: `output.dense` also matches `attention.output.dense`).
fn is_feedforward(ff: &TargetModules, path: &str) -> bool {
    match ff {
        TargetModules::List(names) => names.iter().any(|n| path.ends_with(n.as_str())),
        regex => matches(regex, path),
    }
}

impl MethodConfig for Ia3Config {
    const PEFT_TYPE: &'static str = "IA3";

    fn validate(&self) -> std::result::Result<(), String> {
        Ia3Config::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        let targets = crate::targets::targets_or_default(
            &mut self.target_modules,
            base.config().model_type(),
            "IA3",
        )?;
        let feedforward = crate::targets::feedforward_or_default(
            &mut self.feedforward_modules,
            base.config().model_type(),
        )?;
        let extra = self.modules_to_save.clone().unwrap_or_default();
        let init = self.init_ia3_weights;
        let found = inject_layers(
            base,
            name,
            Targets {
                targets: &targets,
                exclude: self.exclude_modules.as_ref(),
                layers: None,
                layers_pattern: None,
            },
            &extra,
            |linear| {
                let ff = is_feedforward(&feedforward, linear.path());
                Ok(Box::new(Ia3Layer::new(linear, ff, init)) as Box<dyn LayerAdapter>)
            },
        )?;
        found.record(
            &mut self.target_modules,
            &mut self.fan_in_fan_out,
            &mut self.modules_to_save,
            "IA3",
            name,
        );
        Ok(Box::new(LayerTuner::new(name, self.into(), Bias::None)))
    }

    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.base_model_name_or_path, &mut self.revision)
    }

    fn modules_to_save(&self) -> Option<&[String]> {
        self.modules_to_save.as_deref()
    }
}
