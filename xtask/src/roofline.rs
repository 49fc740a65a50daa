//! The roofline of a benchmark run (issue 15 §1): the FLOPs of its training steps computed from the
//! model's shapes and the tokens the run's batches held (`train.tokens` in `report.json`: padded
//! and real counted apart), the FLOP/s achieved, and that as a share of this machine's fp32 GEMM
//! rate at the step's own shapes, measured in the same command (`peftkit-models`' `gemm_rate`
//! example). HF's figure is the same work done at its samples/s.
//!
//! The count (a BERT encoder: `h` hidden, `f` intermediate, `n` layers; `T` tokens, `S` the sum of
//! rows × length²): forward linear layers `2·n·(4h² + 2hf)·T`, attention `4·n·h·S` (QKᵀ and AV),
//! the pooler and head `2·rows·(h² + h·labels)`. Backward: the input gradients cost the forward
//! again, attention's twice its forward; weight gradients the forward of the trained layers again
//! (full fine-tuning: all; LoRA: its `P` adapter weights, `6·P·T` with their forward). Embedding
//! gradients, LayerNorm, softmax and the optimizer are not counted: they are the overhead the
//! share measures.

use anyhow::{Context, Result};
use serde_json::Value;

/// A BERT encoder's sizes, from its `config.json`.
pub struct Shapes {
    hidden: f64,
    intermediate: f64,
    layers: f64,
    labels: f64,
}

impl Shapes {
    pub fn from_config(config: &Value, labels: usize) -> Result<Self> {
        let get = |k: &str| {
            config[k]
                .as_f64()
                .with_context(|| format!("config.json: no number `{k}`"))
        };
        Ok(Self {
            hidden: get("hidden_size")?,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            labels: labels as f64,
        })
    }

    /// Weights of the encoder's linear layers, per layer.
    fn layer_weights(&self) -> f64 {
        4.0 * self.hidden * self.hidden + 2.0 * self.hidden * self.intermediate
    }

    /// `[M×K]·[K×N]` products of one layer's forward at `m` tokens, with how often each occurs.
    pub fn gemms(&self, m: i64) -> Vec<(i64, i64, i64, f64)> {
        let (h, f) = (self.hidden as i64, self.intermediate as i64);
        vec![(m, h, h, 4.0), (m, h, f, 1.0), (m, f, h, 1.0)]
    }
}

/// The training FLOPs of a run: on the padded tokens (the work done) and on the real ones.
pub struct Work {
    pub padded: f64,
    pub real: f64,
    /// Mean padded tokens per micro-batch (the `M` of the step's products).
    pub batch_tokens: i64,
}

/// `report`: peftkit's `report.json`; `lora`: whether only adapter weights (and the head) train.
pub fn work(shapes: &Shapes, report: &Value, lora: bool) -> Result<Work> {
    let train = &report["train"];
    let tok = &train["tokens"];
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .with_context(|| format!("report.json: no number `{what}`"))
    };
    let (padded, padded_sq) = (
        num(&tok["padded"], "train.tokens.padded")?,
        num(&tok["padded_sq"], "train.tokens.padded_sq")?,
    );
    let (real, real_sq) = (
        num(&tok["real"], "train.tokens.real")?,
        num(&tok["real_sq"], "train.tokens.real_sq")?,
    );
    let steps = num(&train["global_step"], "train.global_step")?.max(1.0);
    let rate = num(
        &train["train_samples_per_second"],
        "train.train_samples_per_second",
    )?;
    let runtime = num(&train["train_runtime"], "train.train_runtime")?;
    let rows = rate * runtime;
    let s = shapes;
    let head_fwd = 2.0 * rows * (s.hidden * s.hidden + s.hidden * s.labels);
    let flops = |t: f64, sq: f64| {
        let lin = 2.0 * s.layers * s.layer_weights() * t;
        let attn = 4.0 * s.layers * s.hidden * sq;
        if lora {
            let trainable = num(&report["trainable_params"], "trainable_params")?;
            let adapter = (trainable - (s.hidden * s.labels + s.labels)).max(0.0);
            Ok::<f64, anyhow::Error>(2.0 * lin + 3.0 * attn + 2.0 * head_fwd + 6.0 * adapter * t)
        } else {
            Ok(3.0 * lin + 3.0 * attn + 3.0 * head_fwd)
        }
    };
    Ok(Work {
        padded: flops(padded, padded_sq)?,
        real: flops(real, real_sq)?,
        batch_tokens: (padded / steps).round() as i64,
    })
}

/// The GEMM ceiling (GFLOP/s) of a layer's products at `m` tokens from `gemm_rate`'s output: the
/// rate at which their FLOPs would run one after another.
pub fn ceiling(shapes: &Shapes, m: i64, rates: &Value) -> Result<f64> {
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (a, b, c, count) in shapes.gemms(m) {
        let key = format!("{a}x{b}x{c}");
        let r = rates["gflops"][&key]
            .as_f64()
            .with_context(|| format!("gemm_rate printed no rate for {key}"))?;
        let f = 2.0 * (a * b * c) as f64 * count;
        flops += f;
        seconds += f / r;
    }
    Ok(flops / seconds)
}

/// One markdown row: the workload, its FLOPs, peftkit's and HF's achieved rates and shares.
pub fn row(
    name: &str,
    work: &Work,
    runtime: f64,
    ours_rate: f64,
    hf_rate: Option<f64>,
    ceiling: f64,
) -> String {
    let ours = work.real / runtime / 1e9;
    let done = work.padded / runtime / 1e9;
    let hf = hf_rate.map(|r| ours * r / ours_rate);
    let pct = |g: f64| 100.0 * g / ceiling;
    format!(
        "| {name} | {:.1} | {:.0} % | {done:.1} ({:.0} %) | {ours:.1} ({:.0} %) | {} | {ceiling:.1} ({} tokens a batch) |\n",
        work.padded / 1e12,
        100.0 * work.real / work.padded,
        pct(done),
        pct(ours),
        hf.map_or("–".into(), |g| format!("{g:.1} ({:.0} %)", pct(g))),
        work.batch_tokens,
    )
}

/// The table's header.
pub const HEADER: &str = "| workload | training TFLOP (padded) | real-token share | peftkit GFLOP/s done (of GEMM) | peftkit useful GFLOP/s (of GEMM) | HF useful GFLOP/s (of GEMM) | fp32 GEMM ceiling GFLOP/s |\n|---|---:|---:|---:|---:|---:|---:|\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_full_fine_tuning_counts_three_forwards() {
        let cfg = serde_json::json!({"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6});
        let s = Shapes::from_config(&cfg, 2).unwrap();
        let report = serde_json::json!({
            "trainable_params": 22_713_602,
            "train": {"tokens": {"padded": 1000, "padded_sq": 0, "real": 500, "real_sq": 0},
                      "global_step": 1, "train_samples_per_second": 0.0, "train_runtime": 1.0}
        });
        let w = work(&s, &report, false).unwrap();
        // 3 × 2 × 6 layers × 1,769,472 weights × 1,000 tokens.
        assert_eq!(w.padded, 3.0 * 2.0 * 6.0 * 1_769_472.0 * 1000.0);
        assert_eq!(w.real, w.padded / 2.0);
        assert_eq!(w.batch_tokens, 1000);
    }

    #[test]
    fn the_ceiling_weights_each_product_by_its_flops() {
        let cfg =
            serde_json::json!({"hidden_size": 2, "intermediate_size": 4, "num_hidden_layers": 1});
        let s = Shapes::from_config(&cfg, 2).unwrap();
        let rates = serde_json::json!({"gflops": {"8x2x2": 10.0, "8x2x4": 10.0, "8x4x2": 10.0}});
        assert!((ceiling(&s, 8, &rates).unwrap() - 10.0).abs() < 1e-9);
    }
}
