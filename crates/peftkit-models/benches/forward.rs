//! Forward pass of each classifier at batch 16 × 128 on CPU (no grad, eval mode): GPT-2 small and
//! RoBERTa-base with the real configs (random weights: speed does not depend on their values) and
//! the real all-MiniLM-L6-v2 checkpoint.
//!
//! Needs `HF_HOME` with the gpt2 / roberta-base configs and `PEFTKIT_MINILM_DIR` (the xtask sets
//! both).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peftkit_models::{ForwardOptions, LoadOptions, ModelConfig, SequenceClassifier};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn hub_config(repo: &str) -> PathBuf {
    let home = std::env::var("HF_HOME")
        .expect("HF_HOME must point at a hub cache with the gpt2 and roberta-base configs");
    let base = PathBuf::from(home)
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(base.join("refs/main")).expect("refs/main in the hub cache");
    base.join("snapshots").join(rev.trim()).join("config.json")
}

fn bench(c: &mut Criterion) {
    tch::manual_seed(0);
    let (batch, len) = (16i64, 128i64);
    let mut models = vec![
        (
            "gpt2",
            SequenceClassifier::from_config(
                ModelConfig::from_file(&hub_config("gpt2")).unwrap(),
                Device::Cpu,
            ),
        ),
        (
            "roberta-base",
            SequenceClassifier::from_config(
                ModelConfig::from_file(&hub_config("FacebookAI/roberta-base")).unwrap(),
                Device::Cpu,
            ),
        ),
    ];
    if let Ok(dir) = std::env::var("PEFTKIT_MINILM_DIR") {
        let (m, _) =
            SequenceClassifier::load(dir.as_ref(), &LoadOptions::new(Device::Cpu)).unwrap();
        models.push(("all-MiniLM-L6-v2", m));
    }
    let mut group = c.benchmark_group("forward_16x128_cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch as u64));
    for (name, model) in &models {
        let ids = Tensor::randint_low(5, 1000, [batch, len], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([batch, len], (Kind::Int64, Device::Cpu));
        group.bench_function(*name, |b| {
            b.iter(|| {
                tch::no_grad(|| {
                    model
                        .forward(&ids, &mask, &ForwardOptions::eval())
                        .unwrap()
                        .logits
                })
            })
        });
    }
    group.finish();
    // SST-2 evaluation's shape: batch 64 of short, padded sentences (MiniLM only).
    if let Some((_, minilm)) = models.iter().find(|(n, _)| *n == "all-MiniLM-L6-v2") {
        let mut group = c.benchmark_group("forward_64x32_padded_cpu");
        group.sample_size(20);
        group.throughput(Throughput::Elements(64));
        let ids = Tensor::randint_low(1000, 29000, [64, 32], (Kind::Int64, Device::Cpu));
        let lens = Tensor::randint_low(8, 33, [64, 1], (Kind::Int64, Device::Cpu));
        let mask = Tensor::arange(32, (Kind::Int64, Device::Cpu))
            .unsqueeze(0)
            .lt_tensor(&lens)
            .to_kind(Kind::Int64);
        group.bench_function("all-MiniLM-L6-v2", |b| {
            b.iter(|| {
                tch::no_grad(|| {
                    minilm
                        .forward(&ids, &mask, &ForwardOptions::eval())
                        .unwrap()
                        .logits
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
