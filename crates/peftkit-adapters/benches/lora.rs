//! LoRA's cost over the frozen base linear it wraps: GPT-2's `c_attn` shape ([16×128, 768] →
//! 2304), ranks 8 and 16, forward and forward+backward (gradients to A, B and the input; the base
//! weight is frozen), and the time to merge. CPU, and CUDA when available.

use criterion::{criterion_group, criterion_main, Criterion};
use peftkit_adapters::{AdapterLayer, LoraLayer};
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{c_attn, sync};

fn lora(r: i64, device: Device) -> AdapterLayer {
    let opts = (Kind::Float, device);
    AdapterLayer::single(
        "default",
        Box::new(LoraLayer::new(
            (Tensor::randn([r, 768], opts) * 0.02).set_requires_grad(true),
            (Tensor::randn([2304, r], opts) * 0.02).set_requires_grad(true),
            2.0,
            0.0,
        )),
    )
}

fn bench(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    for device in devices {
        let dev = if device == Device::Cpu { "cpu" } else { "cuda" };
        let mut g = c.benchmark_group(format!("lora_linear_16x128x768_to_2304_{dev}"));
        g.sample_size(20);
        let vs = nn::VarStore::new(device);
        let mut base = c_attn(&vs);
        let x = Tensor::randn([16, 128, 768], (Kind::Float, device));
        g.bench_function("base/forward", |b| {
            b.iter(|| {
                let y = tch::no_grad(|| base.forward(&x, false));
                sync(device);
                y
            })
        });
        g.bench_function("base/forward_backward", |b| {
            b.iter(|| {
                let xi = x.detach().set_requires_grad(true);
                base.forward(&xi, true).sum(Kind::Float).backward();
                sync(device);
            })
        });
        for r in [8, 16] {
            base.set_hook(Box::new(lora(r, device)));
            g.bench_function(format!("lora_r{r}/forward"), |b| {
                b.iter(|| {
                    let y = tch::no_grad(|| base.forward(&x, false));
                    sync(device);
                    y
                })
            });
            g.bench_function(format!("lora_r{r}/forward_backward"), |b| {
                b.iter(|| {
                    let xi = x.detach().set_requires_grad(true);
                    base.forward(&xi, true).sum(Kind::Float).backward();
                    sync(device);
                })
            });
            g.bench_function(format!("lora_r{r}/merge_unmerge"), |b| {
                b.iter(|| {
                    base.with_hook(|layer: &mut AdapterLayer, base| {
                        layer.merge(base, "default");
                        layer.unmerge(base);
                    });
                    sync(device);
                });
            });
            base.take_hook();
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
