//! AdaLoRA at parity with peft 0.21.2: a peft-trained adapter (cut to its kept ranks) gives
//! peft's logits; and training from peft's initial tensors for peft's 4 steps (AdamW, the
//! orthogonality regulariser in the loss, the allocation after each step through the trainer's
//! hook) gives peft's losses, tensors, budgets and rank patterns, and saves peft's file.

mod common;
use common::*;

use peftkit_adapters::{AdapterConfig, PeftModel};
use peftkit_models::TrainModel;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// torch.optim.AdamW (lr 1e-2, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every tensor).
struct AdamW {
    m: HashMap<String, (Tensor, Tensor)>,
    t: i32,
}

impl AdamW {
    fn step(&mut self, params: &[(String, Tensor)]) {
        let (lr, b1, b2, eps, wd): (f64, f64, f64, f64, f64) = (1e-2, 0.9, 0.999, 1e-8, 0.01);
        self.t += 1;
        let (bc1, bc2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        tch::no_grad(|| {
            for (name, p) in params {
                let g = p.grad();
                let (m, v) = self
                    .m
                    .entry(name.clone())
                    .or_insert_with(|| (p.zeros_like(), p.zeros_like()));
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - lr * wd);
                let _ = m.lerp_(&g, 1.0 - b1);
                let _ = v.g_mul_scalar_(b2);
                *v += &g * &g * (1.0 - b2);
                let denom = v.sqrt() / bc2.sqrt() + eps;
                p -= &*m / denom * (lr / bc1);
            }
        });
    }
}

#[test]
fn a_peft_trained_adaptive_adapter_gives_peft_logits() {
    for arch in ["bert", "gpt2"] {
        let dir = fixtures().join(format!("adalora-{arch}"));
        let golden = read(&dir.join("golden.safetensors"));
        let (_keep, base) = without_dropout(arch);
        let model = PeftModel::from_pretrained(base, &dir.join("adapter")).unwrap();
        let d = diff(&logits(&model, &inputs(arch)), &golden["logits"]);
        assert!(d <= 1e-5, "{arch}: logits differ from peft's by {d}");
        let counts: Vec<i64> = Vec::try_from(&golden["reloaded_counts"]).unwrap();
        assert_eq!(
            model.parameter_counts().1,
            counts[1],
            "{arch}: total as peft counts it"
        );
    }
}

#[test]
fn training_allocates_ranks_as_peft_does() {
    for arch in ["bert", "gpt2"] {
        let dir = fixtures().join(format!("adalora-{arch}"));
        let golden = read(&dir.join("golden.safetensors"));
        let g = inputs(arch);
        let mut cfg =
            match AdapterConfig::from_file(&dir.join("adapter/adapter_config.json")).unwrap() {
                AdapterConfig::AdaLora(c) => c,
                other => panic!("{other:?}"),
            };
        cfg.rank_pattern = None;
        cfg.inference_mode = false;
        let (_keep, base) = without_dropout(arch);
        let model = PeftModel::new(base, cfg).unwrap();
        let params = model.trainable_parameters();
        let counts: Vec<i64> = Vec::try_from(&golden["counts"]).unwrap();
        assert_eq!(
            model.parameter_counts(),
            (counts[0], counts[1]),
            "{arch}: counts"
        );
        for (name, t) in &params {
            let want = &golden[&format!("init.{name}")];
            tch::no_grad(|| t.shallow_clone().copy_(want));
        }
        let losses: Vec<f64> = Vec::try_from(&golden["losses"].to_kind(Kind::Double)).unwrap();
        let factor = Tensor::from(1.0f32);
        let mut opt = AdamW {
            m: HashMap::new(),
            t: 0,
        };
        for (step, want) in losses.iter().enumerate() {
            for (_, t) in &params {
                let mut gr = t.grad();
                if gr.defined() {
                    let _ = gr.zero_();
                }
            }
            let loss = model
                .loss_backward(&g["input_ids"], &g["attention_mask"], &g["labels"], &factor)
                .unwrap()
                .double_value(&[]);
            assert!(
                (loss - want).abs() <= 1e-5,
                "{arch} step {step}: loss {loss} vs peft's {want}"
            );
            opt.step(&params);
            model.after_optimizer_step(step, None);
            for (name, t) in &params {
                let d = diff(t, &golden[&format!("step{step}.{name}")]);
                assert!(d <= 1e-5, "{arch} step {step}: {name} differs by {d}");
            }
        }
        let d = diff(&logits(&model, &g), &golden["logits"]);
        assert!(d <= 1e-5, "{arch}: trained logits differ by {d}");
        // Saved as peft saves it: each module cut to its kept triplets, the rank pattern in the
        // config.
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path(), None, None).unwrap();
        let ours = read(&tmp.path().join("adapter_model.safetensors"));
        let theirs = read(&dir.join("adapter/adapter_model.safetensors"));
        assert_eq!(ours.len(), theirs.len(), "{arch}: saved tensors");
        for (k, t) in &theirs {
            assert_eq!(ours[k].size(), t.size(), "{arch}: {k}");
            assert!(t.numel() == 0 || diff(&ours[k], t) <= 1e-5, "{arch}: {k}");
        }
        let saved: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let peft: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            saved["rank_pattern"], peft["rank_pattern"],
            "{arch}: rank_pattern"
        );
        let again = PeftModel::from_pretrained(without_dropout(arch).1, tmp.path()).unwrap();
        assert!(diff(&logits(&again, &g), &golden["logits"]) <= 1e-5);
    }
}

#[test]
fn the_schedule_is_peft_budget_schedule() {
    use peftkit_adapters::adalora::allocator::RankAllocator;
    let cfg = peftkit_adapters::AdaLoraConfig {
        tinit: 1,
        tfinal: 1,
        ..peftkit_adapters::AdaLoraConfig::new(&["query"], 6, 2, 4)
    };
    let budgets: Vec<i64> = (0..4)
        .map(|s| RankAllocator::budget(&cfg, 13, s).0)
        .collect();
    assert_eq!(budgets, [78, 78, 32, 26]);
    let bad = peftkit_adapters::AdaLoraConfig {
        tinit: 3,
        tfinal: 1,
        ..peftkit_adapters::AdaLoraConfig::new(&["query"], 6, 2, 4)
    };
    assert!(bad.validate().unwrap_err().contains("no budgeting phase"));
    let none = peftkit_adapters::AdaLoraConfig {
        total_step: None,
        ..Default::default()
    };
    assert!(none.validate().unwrap_err().contains("total_step"));
}
