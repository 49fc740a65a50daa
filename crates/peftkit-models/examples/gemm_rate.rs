//! This machine's fp32 matrix-product rate at given shapes, the ceiling of `cargo xtask bench`'s
//! roofline: `cargo run --release -p peftkit-models --example gemm_rate -- 1216x384x384 1216x384x1536`
//! prints one JSON object, `{"threads": T, "gflops": {"MxKxN": rate, …}}`, each rate the median of
//! timed `[M×K]·[K×N]` products (libtorch's own threads, as a training step uses them).

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn rate(m: i64, k: i64, n: i64) -> f64 {
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    let flops = 2.0 * (m * k * n) as f64;
    // Enough repetitions for ~50 ms a sample, 9 samples.
    let t = Instant::now();
    let _ = a.matmul(&b);
    let once = t.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.05 / once) as usize).clamp(1, 10_000);
    let mut samples: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                let _ = a.matmul(&b);
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = serde_json::Map::new();
    for shape in std::env::args().skip(1) {
        let dims: Vec<i64> = shape
            .split('x')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{shape}`: expected MxKxN (three positive integers)"))?;
        let [m, k, n] = dims[..] else {
            return Err(format!("`{shape}`: expected MxKxN").into());
        };
        if m < 1 || k < 1 || n < 1 {
            return Err(format!("`{shape}`: sizes must be positive").into());
        }
        out.insert(shape.clone(), rate(m, k, n).into());
    }
    let doc = serde_json::json!({"threads": tch::get_num_threads(), "gflops": out});
    println!("{doc}");
    Ok(())
}
