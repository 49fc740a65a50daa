//! The new model families through the whole pipeline, offline on their tiny checkpoints:
//! `train` (LoRA; DistilBERT with its BERT vocabulary, Llama with a Llama-style tokenizer that has
//! no pad token, so the eos is used as transformers users set it), the reload check, then `eval`
//! and `predict` on the saved adapter.

use std::path::Path;

mod common;
use common::fixture::{fixture, put};
use common::peftkit;

fn ok(args: &[&str]) -> String {
    let out = peftkit().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "peftkit {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Replaces the fixture's model with `tiny-{arch}` (keeping its `vocab.txt` for DistilBERT) and
/// trains a LoRA adapter on `targets` for a few steps.
fn train_family(root: &Path, arch: &str, targets: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/fixtures/tiny-{arch}"));
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().to_string();
        if !name.starts_with("golden") {
            std::fs::copy(f.path(), root.join("model").join(&name)).unwrap();
        }
    }
    if arch != "distilbert" {
        std::fs::remove_file(root.join("model/vocab.txt")).unwrap();
        // As Llama-3 ships: no pad id in config.json; the tokenizer's eos is used (a batch of
        // two texts below would otherwise be refused).
        let cfg = root.join("model/config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("pad_token_id");
        std::fs::write(&cfg, v.to_string()).unwrap();
    }
    let toml = std::fs::read_to_string(root.join("exp.toml"))
        .unwrap()
        .replace(
            "kind = \"head\"",
            &format!("kind = \"lora\"\nr = 4\ntarget_modules = {targets}"),
        )
        .replace(
            "num_train_epochs = 1",
            "num_train_epochs = 3\nlearning_rate = 1e-2",
        );
    put(root, "exp.toml", &toml);
    let out = root.join("out");
    ok(&[
        "train",
        "--config",
        root.join("exp.toml").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["reloaded_matches"], true, "{arch}");
    assert_eq!(report["train"]["global_step"], 6, "{arch}");
}

fn eval_and_predict(root: &Path) {
    let model = root.join("model");
    let adapter = root.join("out/adapter");
    let ev = ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--dataset",
        root.join("data/validation.parquet").to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(ev["rows"], 3);
    let pred = ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--text",
        "good film",
        "--text",
        "bad",
        "--json",
        "--device",
        "cpu",
    ]);
    assert_eq!(pred.lines().count(), 2, "{pred}");
}

#[test]
fn distilbert_trains_reloads_and_predicts() {
    let tmp = fixture();
    train_family(tmp.path(), "distilbert", "[\"q_lin\", \"v_lin\"]");
    eval_and_predict(tmp.path());
}

#[test]
fn llama_trains_reloads_and_predicts_with_eos_as_pad() {
    let tmp = fixture();
    train_family(tmp.path(), "llama", "[\"q_proj\", \"v_proj\"]");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("out/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    eval_and_predict(tmp.path());
}
