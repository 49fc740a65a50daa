//! Peak memory of one training step (forward + backward) of a random-initialised model of a real
//! shape with LoRA or QLoRA on every linear of the encoder, with or without gradient
//! checkpointing. One configuration per process, so that each peak is its own:
//!
//! ```text
//! cargo run --release -p peftkit-adapters --example qlora_memory -- \
//!     <config.json> <lora|qlora> [--gc] [--batch 8] [--seq 256] [--device cpu]
//! ```
//!
//! On CPU it prints the peak resident memory of the step (the kernel's high-water mark, reset
//! after the model is built and one warm-up step has run), which is what the step itself needs on
//! top of the model. Run with `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors go back to the
//! system at once and the figure is the live peak, not the allocator's retention.

use peftkit_adapters::quant::{BnbConfig, QuantType};
use peftkit_adapters::{LoraConfig, PeftModel};
use peftkit_models::{parse_device, ModelConfig, SequenceClassifier, TrainModel};
use tch::{Kind, Tensor};

fn rss_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: qlora_memory <config.json> <lora|qlora> [--gc] [--batch N] [--seq N] [--device D]";
    let (config, mode) = match (args.first(), args.get(1)) {
        (Some(c), Some(m)) => (c.clone(), m.clone()),
        _ => return Err(usage.into()),
    };
    let value = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let gc = args.iter().any(|a| a == "--gc");
    let batch: i64 = value("--batch", "8").parse()?;
    let seq: i64 = value("--seq", "256").parse()?;
    let device = parse_device(&value("--device", "cpu"))?;

    tch::manual_seed(0);
    let mut cfg = ModelConfig::from_file(config.as_ref())?;
    cfg.set_labels(&["neg".to_string(), "pos".to_string()]);
    let vocab = cfg.raw()["vocab_size"].as_i64().unwrap_or(30_000);
    let base = SequenceClassifier::from_config(cfg, device);
    // LoRA r 16 on every linear of the encoder (q, k, v, o and the MLP), as QLoRA's recipe.
    let lora = LoraConfig::new(
        &["query", "key", "value", "dense", "c_attn", "c_proj", "c_fc"],
        16,
        32.0,
    );
    let model = match mode.as_str() {
        "lora" => PeftModel::new(base, lora)?,
        "qlora" => PeftModel::new_quantized(
            base,
            lora,
            BnbConfig {
                bnb_4bit_quant_type: QuantType::Nf4,
                bnb_4bit_use_double_quant: true,
                ..BnbConfig::default()
            },
        )?,
        other => return Err(format!("unknown mode `{other}`; {usage}").into()),
    };
    if gc {
        model.enable_gradient_checkpointing();
    }
    let ids = Tensor::randint(vocab.min(30_000), [batch, seq], (Kind::Int64, device));
    let mask = Tensor::ones([batch, seq], (Kind::Int64, device));
    let labels = Tensor::randint(2, [batch], (Kind::Int64, device));
    let one = Tensor::from(1.0f32).to_device(device);
    let step = || -> Result<(), Box<dyn std::error::Error>> {
        let _loss = model.loss_backward(&ids, &mask, &labels, &one)?;
        for (_, mut t) in model.trainable_parameters() {
            t.zero_grad();
        }
        Ok(())
    };
    step()?;
    let model_kib = rss_kib("VmRSS:");
    // Reset the high-water mark to the current RSS (Linux `clear_refs` 5).
    std::fs::write("/proc/self/clear_refs", "5")?;
    let t = std::time::Instant::now();
    step()?;
    let secs = t.elapsed().as_secs_f64();
    let peak_kib = rss_kib("VmHWM:");
    let (trainable, all) = model.parameter_counts();
    println!(
        "{mode}{} batch {batch}x{seq}: resident after build {:.0} MiB, step peak {:.0} MiB \
         (+{:.0} MiB), step {secs:.2} s; trainable {trainable} of {all}",
        if gc { " + gradient checkpointing" } else { "" },
        model_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        (peak_kib - model_kib) as f64 / 1024.0,
    );
    Ok(())
}
