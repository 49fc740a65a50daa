//! Helpers shared by this crate's integration tests: the golden fixtures (made by
//! `data/fixtures/make_fixtures.py`) and the comparisons.

#![allow(dead_code)]

use peftkit_models::{read_safetensors, LoadOptions, SequenceClassifier, TrainModel};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `data/fixtures/` (`PEFTKIT_FIXTURES` where the test binary runs away from its checkout, as on
/// a GPU machine through `cargo xtask gpu-pack`).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("PEFTKIT_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures"),
    }
}

/// A safetensors file's tensors by name.
pub fn read(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

/// A fixture checkpoint directory (`tiny-bert`, `trainer-gpt2`, …) on the CPU.
pub fn load(dir: &str) -> SequenceClassifier {
    SequenceClassifier::load(&fixtures().join(dir), &LoadOptions::new(Device::Cpu))
        .unwrap()
        .0
}

/// The tiny random checkpoint of `arch`.
pub fn base(arch: &str) -> SequenceClassifier {
    load(&format!("tiny-{arch}"))
}

/// The tiny random checkpoint of `arch` on `device`.
pub fn base_on(arch: &str, device: Device) -> SequenceClassifier {
    let dir = fixtures().join(format!("tiny-{arch}"));
    SequenceClassifier::load(&dir, &LoadOptions::new(device))
        .unwrap()
        .0
}

/// The tiny checkpoint of `arch` with every dropout off (a copy in a temporary directory, kept
/// alive by the returned guard).
pub fn without_dropout(arch: &str) -> (tempfile::TempDir, SequenceClassifier) {
    without_dropout_on(arch, Device::Cpu)
}

/// [`without_dropout`] on `device`.
pub fn without_dropout_on(arch: &str, device: Device) -> (tempfile::TempDir, SequenceClassifier) {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join(format!("tiny-{arch}"));
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    // Every family's dropout probabilities (`hidden_dropout_prob`, `resid_pdrop`, DistilBERT's
    // `seq_classif_dropout`, ModernBERT's `mlp_dropout`, …): each numeric key naming one.
    for (k, v) in cfg.as_object_mut().unwrap() {
        if (k.contains("dropout") || k.contains("pdrop")) && v.is_number() {
            *v = serde_json::json!(0.0);
        }
    }
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let m = SequenceClassifier::load(tmp.path(), &LoadOptions::new(device))
        .unwrap()
        .0;
    (tmp, m)
}

/// The golden batch of `arch`'s tiny checkpoint (`input_ids`, `attention_mask`, `labels`, …).
pub fn inputs(arch: &str) -> HashMap<String, Tensor> {
    read(&fixtures().join(format!("tiny-{arch}/golden.safetensors")))
}

/// The largest absolute difference.
pub fn diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Eval-mode logits of the golden batch (a `PeftModel` or a plain classifier).
pub fn logits(m: &impl TrainModel, g: &HashMap<String, Tensor>) -> Tensor {
    m.logits(&g["input_ids"], &g["attention_mask"], false)
        .unwrap()
}

/// A copy of a fixture adapter directory with its `adapter_config.json` edited.
pub fn edited_adapter(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut cfg);
    std::fs::write(tmp.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    tmp
}

/// The gradients of every trainable tensor after one `loss_backward` of the golden batch.
pub fn grads(model: &impl TrainModel, g: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let factor = Tensor::from(1.0f32);
    let _loss = model
        .loss_backward(&g["input_ids"], &g["attention_mask"], &g["labels"], &factor)
        .unwrap();
    model
        .trainable_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.grad().copy()))
        .collect()
}

/// Asserts that two gradient lists (as [`grads`] returns them) name the same tensors and that each
/// pair differs by at most `tol(expected)`.
pub fn assert_grads_close(
    expected: &[(String, Tensor)],
    got: &[(String, Tensor)],
    tol: impl Fn(&Tensor) -> f64,
    what: &str,
) {
    assert_eq!(expected.len(), got.len(), "{what}: gradient count");
    for ((n, a), (m, b)) in expected.iter().zip(got) {
        assert_eq!(n, m, "{what}");
        assert!(a.defined() && b.defined(), "{what}: {n} got no gradient");
        let d = diff(a, b);
        let t = tol(a);
        assert!(
            d <= t,
            "{what}: {n} gradient differs by {d} (tolerance {t})"
        );
    }
}
