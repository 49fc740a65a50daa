//! Prefix tuning against LoRA on the same model: one training micro-batch (forward + backward,
//! 16 × 128 tokens, train mode) of all-MiniLM-L6-v2 (when `PEFTKIT_MINILM_DIR` is set, as
//! `cargo xtask bench` does), with LoRA r 8 on query/key/value/dense, prefix tuning with 20
//! virtual tokens (the prefix itself trained), and with the projection MLP (hidden 512). Also
//! prints each variant's trainable parameters and the memory they and AdamW's state take.
//! CPU, and CUDA when available.

use criterion::{criterion_group, criterion_main, Criterion};
use peftkit_adapters::{AdapterConfig, LoraConfig, PeftModel, PrefixTuningConfig};
use tch::Device;

mod common;
use common::{minilm, MinilmBatch};

fn variants() -> Vec<(&'static str, AdapterConfig)> {
    vec![
        (
            "lora_r8",
            LoraConfig::new(&["query", "key", "value", "dense"], 8, 16.0).into(),
        ),
        ("prefix_20", PrefixTuningConfig::new(20).into()),
        (
            "prefix_20_projection_512",
            PrefixTuningConfig {
                prefix_projection: true,
                encoder_hidden_size: Some(512),
                ..PrefixTuningConfig::new(20)
            }
            .into(),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut devices = vec![(Device::Cpu, "cpu")];
    if tch::Cuda::is_available() {
        devices.push((Device::Cuda(0), "cuda"));
    }
    for (device, dev) in devices {
        if minilm(device).is_none() {
            return;
        }
        let mut g = c.benchmark_group(format!("minilm_prefix_vs_lora_16x128_{dev}"));
        g.sample_size(10);
        let batch = MinilmBatch::new(device);
        for (name, cfg) in variants() {
            let model = PeftModel::new(minilm(device).expect("checked"), cfg).unwrap();
            let trainable = model.parameter_counts().0;
            // fp32 weights + gradients + AdamW's two moments.
            println!(
                "{name}: {trainable} trainable parameters; weights + gradients + AdamW state {:.1} MiB",
                (16 * trainable) as f64 / (1 << 20) as f64
            );
            g.bench_function(format!("{name}/forward_backward"), |b| {
                b.iter(|| batch.step(&model, device))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
