//! Injecting LoRA into a classifier (peft's `LoraModel`): a [`LoraLayer`] in every target
//! linear, initialised as peft's `reset_lora_parameters`.

use super::config::{InitLoraWeights, LoraConfig};
use super::init::WeightInit;
use super::layer::LoraLayer;
use crate::layer::LayerAdapter;
use crate::tuner::{inject_layers, json_number, LayerTuner, MethodConfig, Targets, Tuner};
use crate::{AdapterError, Result};
use peftkit_models::{Linear, SequenceClassifier};
use tch::{Kind, Tensor};

/// What peft records as `modules_to_save` for sequence classification.
pub(crate) fn seq_cls_modules() -> Vec<String> {
    vec!["classifier".into(), "score".into()]
}

impl LoraConfig {
    /// The layer for `linear`, initialised as `init_lora_weights` says (PiSSA and OLoRA also
    /// replace the base weight by its residual).
    fn new_layer(&self, linear: &mut Linear) -> Result<LoraLayer> {
        let (r, scale) = self.rank_and_scale(linear.path());
        let (fan_in, fan_out) = (linear.in_features(), linear.out_features());
        let opts = (Kind::Float, linear.weight().device());
        let (a, b) = match &self.init_lora_weights {
            InitLoraWeights::Bool(true) => {
                // kaiming_uniform_(a=√5) on [r, in]: bound 1/√in; B zero.
                let bound = 1.0 / (fan_in as f64).sqrt();
                (
                    Tensor::empty([r, fan_in], opts).uniform_(-bound, bound),
                    Tensor::zeros([fan_out, r], opts),
                )
            }
            InitLoraWeights::Bool(false) => {
                let (ba, bb) = (1.0 / (fan_in as f64).sqrt(), 1.0 / (r as f64).sqrt());
                (
                    Tensor::empty([r, fan_in], opts).uniform_(-ba, ba),
                    Tensor::empty([fan_out, r], opts).uniform_(-bb, bb),
                )
            }
            InitLoraWeights::Named(_) => match WeightInit::of(self) {
                Some(init) => init.apply(linear, r, scale)?,
                None => (
                    Tensor::randn([r, fan_in], opts) / r as f64,
                    Tensor::zeros([fan_out, r], opts),
                ),
            },
        };
        let layer = LoraLayer::new(a, b, scale, self.lora_dropout);
        Ok(if self.use_dora {
            layer.with_dora(linear)
        } else {
            layer
        })
    }
}

impl MethodConfig for LoraConfig {
    const PEFT_TYPE: &'static str = "LORA";
    const UNSUPPORTED: &'static [&'static str] = &[
        "lora_bias",
        "use_qalora",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
        "megatron_config",
        "alora_invocation_tokens",
    ];

    fn validate(&self) -> std::result::Result<(), String> {
        LoraConfig::validate(self)
    }

    fn inject(mut self, base: &mut SequenceClassifier, name: &str) -> Result<Box<dyn Tuner>> {
        self.validate().map_err(AdapterError::Invalid)?;
        let targets = crate::targets::targets_or_default(
            &mut self.target_modules,
            base.config().model_type(),
            "LORA",
        )?;
        let extra = self.modules_to_save.clone().unwrap_or_default();
        let found = inject_layers(
            base,
            name,
            Targets {
                targets: &targets,
                exclude: self.exclude_modules.as_ref(),
                layers: self.layers_to_transform.as_ref(),
                layers_pattern: self.layers_pattern.as_ref(),
            },
            &extra,
            |linear| Ok(Box::new(self.new_layer(linear)?) as Box<dyn LayerAdapter>),
        )?;
        found.record(
            &mut self.target_modules,
            &mut self.fan_in_fan_out,
            &mut self.modules_to_save,
            "LoRA",
            name,
        );
        let bias = self.bias;
        Ok(Box::new(LayerTuner::new(name, self.into(), bias)))
    }

    fn base_model_mut(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.base_model_name_or_path, &mut self.revision)
    }

    fn modules_to_save(&self) -> Option<&[String]> {
        self.modules_to_save.as_deref()
    }

    fn patch_json(&self, v: &mut serde_json::Value) {
        v["lora_alpha"] = json_number(self.lora_alpha);
        for (k, a) in &self.alpha_pattern {
            v["alpha_pattern"][k] = json_number(*a);
        }
        v["lora_bias"] = serde_json::json!(false);
    }
}
