//! QLoRA's costs and savings:
//! - storage of the base linear weights of roberta-base and gpt2 (their shapes, 12 layers) in fp32,
//!   NF4 and NF4 + double quantization (printed once: bytes and bits per parameter);
//! - quantize / dequantize throughput of a [3072, 768] weight (NF4, FP4, double quant);
//! - one linear (GPT-2 `c_attn`, [16×128, 768] → 2304) with LoRA r 16 on an fp32 vs an NF4 base,
//!   forward+backward;
//! - a whole training micro-batch (forward + backward, 16 × 128 tokens) of all-MiniLM-L6-v2 with
//!   LoRA vs QLoRA (when `PEFTKIT_MINILM_DIR` is set, as `cargo xtask bench` does).
//!
//! CPU, and CUDA when available.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peftkit_adapters::quant::{quantize_4bit, BnbConfig, Packed4bit, QuantType};
use peftkit_adapters::{AdapterLayer, LoraConfig, LoraLayer, PeftModel};
use peftkit_models::PackedWeight;
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{c_attn, minilm, sync, MinilmBatch};

/// The linear weights of one layer of roberta-base / gpt2 (the same shapes: q, k, v, o or the
/// fused c_attn, and the MLP), as [out, in].
const LAYER_SHAPES: [([i64; 2], i64); 3] = [([768, 768], 4), ([3072, 768], 1), ([768, 3072], 1)];

fn storage_report() {
    let mut rows = Vec::new();
    for (label, double_quant) in [("NF4", false), ("NF4 + double quant", true)] {
        let (mut params, mut bytes) = (0i64, 0i64);
        for (shape, count) in LAYER_SHAPES {
            let w = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.02;
            let q = quantize_4bit(&w, 64, QuantType::Nf4, double_quant).unwrap();
            params += 12 * count * q.numel();
            bytes += 12 * count * q.storage_bytes();
        }
        rows.push((label, params, bytes));
    }
    let params = rows[0].1;
    println!("\nbase linear weights of roberta-base / gpt2 (12 layers, {params} weights; embeddings and head excluded):");
    println!("  fp32: {} bytes (32 bits/parameter)", 4 * params);
    for (label, p, b) in rows {
        println!(
            "  {label}: {b} bytes ({:.4} bits/parameter, {:.2}x smaller)",
            8.0 * b as f64 / p as f64,
            (4 * p) as f64 / b as f64
        );
    }
}

fn quant_bench(c: &mut Criterion, device: Device, dev: &str) {
    let mut g = c.benchmark_group(format!("quantize_3072x768_{dev}"));
    g.sample_size(20);
    g.throughput(Throughput::Elements(3072 * 768));
    let w = Tensor::randn([3072, 768], (Kind::Float, device)) * 0.02;
    for (name, qt, dq) in [
        ("nf4", QuantType::Nf4, false),
        ("fp4", QuantType::Fp4, false),
        ("nf4_double_quant", QuantType::Nf4, true),
    ] {
        g.bench_function(format!("{name}/quantize"), |b| {
            b.iter(|| {
                let q = quantize_4bit(&w, 64, qt, dq).unwrap();
                sync(device);
                q
            })
        });
        let q = quantize_4bit(&w, 64, qt, dq).unwrap();
        for (kname, kind) in [("fp32", Kind::Float), ("bf16", Kind::BFloat16)] {
            g.bench_function(format!("{name}/dequantize_{kname}"), |b| {
                b.iter(|| {
                    let d = q.dequantize(kind);
                    sync(device);
                    d
                })
            });
        }
    }
    g.finish();
}

fn linear_bench(c: &mut Criterion, device: Device, dev: &str) {
    let mut g = c.benchmark_group(format!("qlora_linear_16x128x768_to_2304_{dev}"));
    g.sample_size(20);
    let x = Tensor::randn([16, 128, 768], (Kind::Float, device));
    for quantized in [false, true] {
        let vs = nn::VarStore::new(device);
        let mut base = c_attn(&vs);
        if quantized {
            base.pack(|w| -> peftkit_adapters::Result<Box<dyn PackedWeight>> {
                Ok(Box::new(Packed4bit {
                    weight: quantize_4bit(w, 64, QuantType::Nf4, true)?,
                    compute_dtype: None,
                }))
            })
            .unwrap();
        }
        let opts = (Kind::Float, device);
        base.set_hook(Box::new(AdapterLayer::single(
            "default",
            Box::new(LoraLayer::new(
                (Tensor::randn([16, 768], opts) * 0.02).set_requires_grad(true),
                (Tensor::randn([2304, 16], opts) * 0.02).set_requires_grad(true),
                2.0,
                0.0,
            )),
        )));
        let name = if quantized {
            "qlora_nf4_r16"
        } else {
            "lora_r16"
        };
        g.bench_function(format!("{name}/forward_backward"), |b| {
            b.iter(|| {
                let xi = x.detach().set_requires_grad(true);
                base.forward(&xi, true).sum(Kind::Float).backward();
                sync(device);
            })
        });
    }
    g.finish();
}

fn step_bench(c: &mut Criterion, device: Device, dev: &str) {
    if std::env::var_os("PEFTKIT_MINILM_DIR").is_none() {
        eprintln!("PEFTKIT_MINILM_DIR is not set: skipping the MiniLM training-step comparison");
        return;
    }
    let mut g = c.benchmark_group(format!("minilm_train_microbatch_16x128_{dev}"));
    g.sample_size(10);
    let batch = MinilmBatch::new(device);
    for quantized in [false, true] {
        let base = minilm(device).expect("PEFTKIT_MINILM_DIR is set");
        let lora = LoraConfig::new(&["query", "key", "value", "dense"], 8, 16.0);
        let model = if quantized {
            let bnb = BnbConfig {
                bnb_4bit_use_double_quant: true,
                ..BnbConfig::default()
            };
            PeftModel::new_quantized(base, lora, bnb).unwrap()
        } else {
            PeftModel::new(base, lora).unwrap()
        };
        let name = if quantized { "qlora_nf4_dq" } else { "lora" };
        g.bench_function(format!("{name}/forward_backward"), |b| {
            b.iter(|| batch.step(&model, device))
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    storage_report();
    let mut devices = vec![(Device::Cpu, "cpu")];
    if tch::Cuda::is_available() {
        devices.push((Device::Cuda(0), "cuda"));
    }
    for (device, dev) in devices {
        quant_bench(c, device, dev);
        linear_bench(c, device, dev);
        step_bench(c, device, dev);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
