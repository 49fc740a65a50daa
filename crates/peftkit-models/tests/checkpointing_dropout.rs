//! Gradient checkpointing with dropout on: the recomputation must reuse the forward pass's
//! dropout masks. A test binary of its own, because torch's generator is global and every model
//! load draws from it: another test thread would change the masks between the passes.

use peftkit_models::{read_safetensors, ForwardOptions, LoadOptions, SequenceClassifier};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures")
}

fn golden(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn gradient_checkpointing_reproduces_dropout_masks() {
    let dir = fixtures().join("tiny-bert");
    let g = golden(&dir.join("golden.safetensors"));
    let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let one = Tensor::from(1.0f32);
    // Dropout on: the loss at a fixed seed is a deterministic function of the parameters.
    let loss_at = |seed: i64| {
        tch::manual_seed(seed);
        let l = model
            .checkpointed_loss_backward(
                &g["input_ids"],
                &g["attention_mask"],
                &g["labels"],
                &ForwardOptions::train(),
                &one,
            )
            .unwrap()
            .double_value(&[]);
        for (_, mut v) in model.var_store().variables() {
            v.zero_grad();
        }
        l
    };
    tch::manual_seed(11);
    let _ = model
        .checkpointed_loss_backward(
            &g["input_ids"],
            &g["attention_mask"],
            &g["labels"],
            &ForwardOptions::train(),
            &one,
        )
        .unwrap();
    let vars = model.var_store().variables();
    let dirs: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.randn_like() * 1e-3))
        .collect();
    let analytic: f64 = dirs
        .iter()
        .map(|(n, d)| (vars[n].grad() * d).sum(Kind::Double).double_value(&[]))
        .sum();
    let shift = |sign: f64| {
        tch::no_grad(|| {
            for (n, d) in &dirs {
                let mut v = vars[n].shallow_clone();
                let _ = v.g_add_(&(d * sign));
            }
        })
    };
    shift(1.0);
    let plus = loss_at(11);
    shift(-2.0);
    let minus = loss_at(11);
    shift(1.0);
    let numeric = (plus - minus) / 2.0;
    let rel = (numeric - analytic).abs() / analytic.abs().max(1e-12);
    assert!(rel < 0.05, "directional derivative: finite differences {numeric:e}, checkpointed gradient {analytic:e}");
}
