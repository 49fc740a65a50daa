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
    // Kept apart: every loss evaluation below zeroes the parameters' gradients.
    let grads: HashMap<&String, Tensor> = vars.iter().map(|(n, v)| (n, v.grad().copy())).collect();
    // Finite differences along the checkpointed gradient, one parameter group at a time (the
    // embeddings, each encoder layer, the rest): a group's step is its gradient scaled to norm
    // 1e-2, so the loss moves by 1e-2·|g_group|. Were a layer's recomputed dropout masks not the
    // forward pass's, its gradient would not be the loss's and the finite difference along it,
    // 1e-2·<g_true, g>/|g|, would not match.
    let group_of = |name: &str| -> String {
        match name.find(".layer.") {
            Some(i) => {
                let rest = &name[i + 7..];
                format!("layer.{}", &rest[..rest.find('.').unwrap_or(rest.len())])
            }
            None if name.contains("embeddings") => "embeddings".into(),
            None => "head".into(),
        }
    };
    let mut groups: Vec<String> = vars.keys().map(|n| group_of(n)).collect();
    groups.sort();
    groups.dedup();
    assert!(
        groups.len() >= 4,
        "expected embeddings, ≥ 2 layers and a head: {groups:?}"
    );
    let mut failures = Vec::new();
    for group in &groups {
        let members: Vec<(&Tensor, &Tensor)> = vars
            .iter()
            .filter(|(n, _)| &group_of(n) == group)
            .map(|(n, v)| (v, &grads[n]))
            .collect();
        let norm = members
            .iter()
            .map(|(_, g)| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 0.0, "{group}: the checkpointed gradient is zero");
        let dirs: Vec<(&Tensor, Tensor)> = members
            .iter()
            .map(|(v, g)| (*v, *g * (1e-2 / norm)))
            .collect();
        let shift = |sign: f64| {
            tch::no_grad(|| {
                for (v, d) in &dirs {
                    let _ = v.shallow_clone().g_add_(&(d * sign));
                }
            })
        };
        shift(1.0);
        let plus = loss_at(11);
        shift(-2.0);
        let minus = loss_at(11);
        shift(1.0);
        let numeric = (plus - minus) / 2.0;
        let analytic = 1e-2 * norm;
        let rel = (numeric - analytic).abs() / analytic;
        eprintln!("{group}: finite differences {numeric:e}, checkpointed gradient {analytic:e}");
        if rel > 0.02 {
            failures.push(format!(
                "{group}: finite differences {numeric:e}, checkpointed gradient {analytic:e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "directional derivatives differ: {failures:#?}"
    );
}
