//! Prefix tuning beyond the generic suite: gradient checkpointing (which peft cannot combine with
//! prefix tuning) gives the same gradients as without, and mixed precision works.

mod common;
use common::*;

use peftkit_adapters::{PeftModel, PrefixTuningConfig};
use peftkit_models::{with_compute_dtype, TrainModel};
use tch::Kind;

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    // Dropout-free tiny models (the trainer fixtures): both passes are deterministic.
    for (dir, arch) in [("trainer-bert", "bert"), ("trainer-gpt2", "gpt2")] {
        let g = inputs(arch);
        for projection in [false, true] {
            let cfg = PrefixTuningConfig {
                prefix_projection: projection,
                encoder_hidden_size: Some(16),
                ..PrefixTuningConfig::new(5)
            };
            let plain = PeftModel::new(load(dir), cfg).unwrap();
            // The same encoder for the checkpointed model: copy every tensor over.
            let checkpointed = PeftModel::new(load(dir), plain.config().clone()).unwrap();
            tch::no_grad(|| {
                for ((_, a), (_, b)) in plain
                    .trainable_parameters()
                    .iter()
                    .zip(checkpointed.trainable_parameters())
                {
                    let mut b = b;
                    b.copy_(a);
                }
            });
            assert!(checkpointed.enable_gradient_checkpointing());
            let expected = grads(&plain, &g);
            let got = grads(&checkpointed, &g);
            assert_grads_close(
                &expected,
                &got,
                |_| 1e-5,
                &format!("{dir} projection={projection}"),
            );
        }
    }
}

#[test]
fn mixed_precision_forward_and_backward() {
    let g = inputs("roberta");
    let model = PeftModel::new(load("tiny-roberta"), PrefixTuningConfig::new(4)).unwrap();
    let fp32 = model
        .logits(&g["input_ids"], &g["attention_mask"], false)
        .unwrap();
    let bf16 = with_compute_dtype(Some(Kind::BFloat16), || {
        let logits = model
            .logits(&g["input_ids"], &g["attention_mask"], true)
            .unwrap();
        model.loss(&logits, &g["labels"]).backward();
        tch::no_grad(|| {
            model
                .logits(&g["input_ids"], &g["attention_mask"], false)
                .unwrap()
        })
    });
    let d = diff(&fp32, &bf16);
    assert!(d < 0.05, "bf16 logits differ from fp32 by {d}");
    for (n, t) in model.trainable_parameters() {
        let grad = t.grad();
        assert!(grad.defined(), "{n}: no gradient under bf16");
        assert_eq!(grad.kind(), Kind::Float, "{n}: master weights stay fp32");
        assert!(
            bool::try_from(grad.isfinite().all()).unwrap(),
            "{n}: non-finite gradient"
        );
    }
}
