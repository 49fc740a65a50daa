//! Prefix tuning against LoRA on the same model: one training micro-batch (forward + backward,
//! 16 × 128 tokens, train mode) of all-MiniLM-L6-v2 (when `PEFTKIT_MINILM_DIR` is set, as
//! `cargo xtask bench` does), with LoRA r 8 on query/key/value/dense, prefix tuning with 20
//! virtual tokens (the prefix itself trained), and with the projection MLP (hidden 512). Also
//! prints each variant's trainable parameters and the memory they and AdamW's state take.
//! CPU, and CUDA when available.

use criterion::{criterion_group, criterion_main, Criterion};
use peftkit_adapters::{AdapterConfig, LoraConfig, PeftModel, PrefixTuningConfig};
use peftkit_models::{LoadOptions, SequenceClassifier, TrainModel};
use tch::{Device, Kind, Tensor};

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

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
    let Some(dir) = std::env::var_os("PEFTKIT_MINILM_DIR") else {
        eprintln!("PEFTKIT_MINILM_DIR is not set: nothing to measure");
        return;
    };
    let mut devices = vec![(Device::Cpu, "cpu")];
    if tch::Cuda::is_available() {
        devices.push((Device::Cuda(0), "cuda"));
    }
    for (device, dev) in devices {
        let mut g = c.benchmark_group(format!("minilm_prefix_vs_lora_16x128_{dev}"));
        g.sample_size(10);
        let ids = Tensor::randint(29000, [16, 128], (Kind::Int64, device)) + 1000;
        let mask = Tensor::ones([16, 128], (Kind::Int64, device));
        let labels = Tensor::randint(2, [16], (Kind::Int64, device));
        let factor = Tensor::from(1.0f32).to_device(device);
        for (name, cfg) in variants() {
            let opts = LoadOptions::new(device).with_labels(vec!["neg".into(), "pos".into()]);
            let (base, _) = SequenceClassifier::load(std::path::Path::new(&dir), &opts).unwrap();
            let model = PeftModel::new(base, cfg).unwrap();
            let trainable = model.parameter_counts().0;
            // fp32 weights + gradients + AdamW's two moments.
            println!(
                "{name}: {trainable} trainable parameters; weights + gradients + AdamW state {:.1} MiB",
                (16 * trainable) as f64 / (1 << 20) as f64
            );
            g.bench_function(format!("{name}/forward_backward"), |b| {
                b.iter(|| {
                    let loss = model.loss_backward(&ids, &mask, &labels, &factor).unwrap();
                    sync(device);
                    loss
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
