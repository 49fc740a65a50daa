//! DoRA's and IA³'s cost over the frozen base linear they wrap, beside plain LoRA: GPT-2's
//! `c_attn` shape ([16×128, 768] → 2304), forward and forward+backward, and merge+unmerge. CPU,
//! and CUDA when available.

use criterion::{criterion_group, criterion_main, Criterion};
use peftkit_adapters::{AdapterLayer, Ia3Layer, LayerAdapter, LoraLayer};
use peftkit_models::Linear;
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{c_attn, sync};

/// Builds the layer under test on a base linear.
type MakeLayer = fn(&Linear) -> Box<dyn LayerAdapter>;

fn lora(base: &Linear, dora: bool) -> Box<dyn LayerAdapter> {
    let opts = (Kind::Float, base.weight().device());
    let layer = LoraLayer::new(
        (Tensor::randn([8, 768], opts) * 0.02).set_requires_grad(true),
        (Tensor::randn([2304, 8], opts) * 0.02).set_requires_grad(true),
        2.0,
        0.0,
    );
    if dora {
        let mut l = layer.with_dora(base);
        if let Some(m) = &mut l.magnitude {
            *m = m.detach().set_requires_grad(true);
        }
        Box::new(l)
    } else {
        Box::new(layer)
    }
}

fn ia3(base: &Linear, feedforward: bool) -> Box<dyn LayerAdapter> {
    let mut l = Ia3Layer::new(base, feedforward, true);
    l.l = l.l.set_requires_grad(true);
    Box::new(l)
}

fn bench(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    for device in devices {
        let dev = if device == Device::Cpu { "cpu" } else { "cuda" };
        let mut g = c.benchmark_group(format!("dora_ia3_linear_16x128x768_to_2304_{dev}"));
        g.sample_size(20);
        let vs = nn::VarStore::new(device);
        let mut base = c_attn(&vs);
        let x = Tensor::randn([16, 128, 768], (Kind::Float, device));
        let kinds: [(&str, MakeLayer); 5] = [
            ("base", |_| unreachable!()),
            ("lora_r8", |b| lora(b, false)),
            ("dora_r8", |b| lora(b, true)),
            ("ia3_out", |b| ia3(b, false)),
            ("ia3_ff", |b| ia3(b, true)),
        ];
        for (name, make) in kinds {
            if name != "base" {
                let layer = make(&base);
                base.set_hook(Box::new(AdapterLayer::single("default", layer)));
            }
            g.bench_function(format!("{name}/forward"), |b| {
                b.iter(|| {
                    let y = tch::no_grad(|| base.forward(&x, false));
                    sync(device);
                    y
                })
            });
            g.bench_function(format!("{name}/forward_backward"), |b| {
                b.iter(|| {
                    let xi = x.detach().set_requires_grad(true);
                    base.forward(&xi, true).sum(Kind::Float).backward();
                    sync(device);
                })
            });
            if name != "base" {
                g.bench_function(format!("{name}/merge_unmerge"), |b| {
                    b.iter(|| {
                        base.with_hook(|layer: &mut AdapterLayer, base| {
                            layer.merge(base, "default");
                            layer.unmerge(base);
                        });
                        sync(device);
                    })
                });
                base.take_hook();
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
