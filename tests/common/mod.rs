//! What the end-to-end tests share.

pub mod fixture;

use std::path::Path;
use std::process::Command;

/// The `peftkit` binary, run from the workspace root, with the offline hub cache beside the
/// checkout unless `HF_HOME` is set, and never inheriting a distributed environment.
pub fn peftkit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peftkit"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("HF_HOME").is_none() {
        c.env(
            "HF_HOME",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/hf-home"),
        );
        c.env("HF_HUB_OFFLINE", "1");
    }
    for k in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE",
    ] {
        c.env_remove(k);
    }
    c
}

/// Saves an adapter of `config` on MiniLM (two labels, `negative` / `positive`) with its
/// trainable tensors nudged away from their initialisation (seeded), so that it changes the
/// logits; `id2label.json` beside it.
#[allow(dead_code)]
pub fn random_minilm_adapter(dir: &Path, config: peftkit_adapters::AdapterConfig) {
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let (base, _) = peftkit_models::SequenceClassifier::load(
        Path::new(&minilm),
        &peftkit_models::LoadOptions::new(tch::Device::Cpu)
            .with_labels(vec!["negative".into(), "positive".into()]),
    )
    .unwrap();
    tch::manual_seed(5);
    let model = peftkit_adapters::PeftModel::new(base, config).unwrap();
    use peftkit_models::TrainModel;
    for (_, mut t) in model.trainable_parameters() {
        tch::no_grad(|| t.copy_(&(&t + t.randn_like() * 0.05)));
    }
    model.save_pretrained(dir, Some("minilm"), None).unwrap();
    std::fs::write(
        dir.join("id2label.json"),
        r#"{"0": "negative", "1": "positive"}"#,
    )
    .unwrap();
}

/// Replaces every tensor of the adapter in `dir` by NaN.
#[allow(dead_code)]
pub fn nan_weights(dir: &Path) {
    let file = dir.join("adapter_model.safetensors");
    let tensors: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.fill(f64::NAN)))
        .collect();
    tch::Tensor::write_safetensors(&tensors, &file).unwrap();
}
