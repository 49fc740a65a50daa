//! Mixed-adapter batches (peft's `adapter_names=[…]`): several adapters of different methods
//! on one base, each row of one batch computed with the adapter it names, equal to running that
//! adapter alone.

mod common;
use common::*;

use peftkit_adapters::{
    Ia3Config, InitLoraWeights, LoraConfig, PeftModel, PrefixTuningConfig, BASE_ADAPTER,
};
use peftkit_models::TrainModel;
use tch::Tensor;

fn lora_targets(arch: &str) -> Vec<&'static str> {
    match arch {
        "gpt2" => vec!["c_attn", "c_proj"],
        _ => vec!["query", "value"],
    }
}

fn ia3(arch: &str) -> Ia3Config {
    match arch {
        "gpt2" => Ia3Config::new(&["c_attn", "mlp.c_proj"], &["mlp.c_proj"]),
        _ => Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"]),
    }
}

/// Moves every trainable tensor of the active adapter (its head copy included) away from its
/// initial value, as training would.
fn perturb(model: &PeftModel) {
    for (_, mut t) in model.trainable_parameters() {
        tch::no_grad(|| t.copy_(&(&t * (t.rand_like() + 0.5) + t.randn_like() * 0.1)));
    }
}

/// LoRA `lora`, DoRA `dora`, IA³ `ia3` on one base, each trained a little.
fn three_adapters(arch: &str) -> PeftModel {
    tch::manual_seed(3);
    let lora = |dora: bool| LoraConfig {
        init_lora_weights: InitLoraWeights::Bool(false),
        use_dora: dora,
        ..LoraConfig::new(&lora_targets(arch), 4, 8.0)
    };
    let mut model = PeftModel::with_adapter_name(base(arch), lora(false), "lora").unwrap();
    model.add_adapter("dora", lora(true)).unwrap();
    model.add_adapter("ia3", ia3(arch)).unwrap();
    for name in ["lora", "dora", "ia3"] {
        model.set_adapter(name).unwrap();
        perturb(&model);
    }
    model
}

fn rows(t: &Tensor, idx: &[i64]) -> Tensor {
    t.index_select(0, &Tensor::from_slice(idx))
}

#[test]
fn each_row_equals_its_adapter_alone() {
    for arch in ["gpt2", "roberta", "bert"] {
        let mut model = three_adapters(arch);
        let g = inputs(arch);
        let n = g["input_ids"].size()[0];
        let cycle = ["lora", BASE_ADAPTER, "dora", "ia3"];
        let names: Vec<&str> = (0..n as usize).map(|i| cycle[i % cycle.len()]).collect();
        let mixed = model
            .forward_mixed(&g["input_ids"], &g["attention_mask"], &names)
            .unwrap()
            .logits;
        let mut alone = std::collections::BTreeMap::new();
        for name in ["lora", "dora", "ia3"] {
            model.set_adapter(name).unwrap();
            alone.insert(name, logits(&model, &g));
        }
        alone.insert(BASE_ADAPTER, model.with_adapter_disabled(|m| logits(m, &g)));
        let mut distinct = 0.0f64;
        for (i, name) in names.iter().enumerate() {
            let i = i as i64;
            let d = diff(&rows(&mixed, &[i]), &rows(&alone[name], &[i]));
            assert!(d <= 1e-5, "{arch}: row {i} ({name}) differs by {d}");
            for other in ["lora", "dora", "ia3", BASE_ADAPTER] {
                if other != *name {
                    distinct =
                        distinct.max(diff(&rows(&alone[name], &[i]), &rows(&alone[other], &[i])));
                }
            }
        }
        assert!(
            distinct > 1e-4,
            "{arch}: the adapters agree: the test would prove nothing"
        );
    }
}

#[test]
fn a_batch_of_one_adapter_equals_the_active_adapter() {
    let mut model = three_adapters("bert");
    let g = inputs("bert");
    let n = g["input_ids"].size()[0] as usize;
    model.set_adapter("dora").unwrap();
    let active = logits(&model, &g);
    let mixed = model
        .forward_mixed(&g["input_ids"], &g["attention_mask"], &vec!["dora"; n])
        .unwrap()
        .logits;
    assert!(diff(&mixed, &active) <= 1e-6);
}

#[test]
fn what_cannot_be_mixed_is_a_clear_error() {
    let mut model = three_adapters("bert");
    let g = inputs("bert");
    let (ids, mask) = (&g["input_ids"], &g["attention_mask"]);
    let n = ids.size()[0] as usize;
    let err = model
        .forward_mixed(ids, mask, &["lora"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_names has 1 entries"), "{err}");
    let err = model
        .forward_mixed(ids, mask, &vec!["nope"; n])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no adapter `nope`"), "{err}");
    model
        .add_adapter("prefix", PrefixTuningConfig::new(3))
        .unwrap();
    let mut names = vec!["lora"; n];
    names[0] = "prefix";
    let err = model
        .forward_mixed(ids, mask, &names)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prompt-learning") && err.contains("PREFIX_TUNING"),
        "{err}"
    );
    model.merge_adapter();
    let err = model
        .forward_mixed(ids, mask, &vec!["lora"; n])
        .unwrap_err()
        .to_string();
    assert!(err.contains("merged"), "{err}");
}

#[test]
fn adapters_can_be_deleted() {
    let mut model = three_adapters("gpt2");
    let g = inputs("gpt2");
    model.set_adapter("lora").unwrap();
    let before = logits(&model, &g);
    let (_, all) = model.parameter_counts();
    model.delete_adapter("dora").unwrap();
    assert_eq!(model.adapters(), ["ia3", "lora"]);
    assert!(model.parameter_counts().1 < all);
    assert_eq!(diff(&logits(&model, &g), &before), 0.0);
    let err = model.delete_adapter("lora").unwrap_err().to_string();
    assert!(err.contains("active adapter"), "{err}");
}
