//! Gradient checkpointing with every method: the gradients of one training step equal those
//! without checkpointing (dropout off: checkpointing reseeds each layer's dropout, so masks differ
//! from an uncheckpointed pass by design; `peftkit-models`' checkpointing test covers dropout).

mod common;
use common::*;

use peftkit_adapters::prompt::Reparameterization;
use peftkit_adapters::{
    AdaLoraConfig, AdapterConfig, Ia3Config, InitLoraWeights, LoraConfig, PeftModel,
    PromptEncoderConfig, PromptTuningConfig,
};
use peftkit_models::TrainModel;

fn configs() -> Vec<(&'static str, AdapterConfig)> {
    let targets = ["query", "key", "value", "dense"];
    vec![
        (
            "dora",
            LoraConfig {
                use_dora: true,
                init_lora_weights: InitLoraWeights::Bool(false),
                ..LoraConfig::new(&targets, 4, 8.0)
            }
            .into(),
        ),
        (
            "ia3",
            Ia3Config {
                init_ia3_weights: false,
                ..Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"])
            }
            .into(),
        ),
        (
            "adalora",
            AdaLoraConfig {
                init_lora_weights: false,
                ..AdaLoraConfig::new(&targets, 4, 2, 10)
            }
            .into(),
        ),
        ("prompt", PromptTuningConfig::new(3).into()),
        (
            "ptuning",
            PromptEncoderConfig::new(3, Reparameterization::Lstm, 16).into(),
        ),
    ]
}

#[test]
fn checkpointed_gradients_equal_plain_ones_for_every_method() {
    let g = inputs("bert");
    for (name, cfg) in configs() {
        let model = |checkpointing: bool| {
            tch::manual_seed(11);
            let (dir, base) = without_dropout("bert");
            let m = PeftModel::new(base, cfg.clone()).unwrap();
            drop(dir);
            if checkpointing {
                assert!(m.enable_gradient_checkpointing());
            }
            m
        };
        let (plain, ckpt) = (model(false), model(true));
        tch::manual_seed(5);
        let want = grads(&plain, &g);
        tch::manual_seed(5);
        let got = grads(&ckpt, &g);
        assert_grads_close(
            &want,
            &got,
            |a| 1e-6 + 1e-5 * a.abs().max().double_value(&[]),
            name,
        );
    }
}
