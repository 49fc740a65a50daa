//! Peak memory of one training step (forward + backward) of a random-initialised model of a real
//! shape with LoRA or QLoRA on every linear of the encoder, with or without gradient
//! checkpointing. One configuration per process, so that each peak is its own:
//!
//! ```text
//! cargo run --release -p peftkit-adapters --example qlora_memory -- \
//!     <config.json> <lora|qlora> [--gc] [--batch 8] [--seq 256] [--device cpu]
//! ```
//!
//! It prints the peak memory of the step ([`peftkit_models::memory_usage`], reset after the model
//! is built and one warm-up step has run): on CUDA the bytes held by tensors, on the CPU the
//! process's resident memory (run with `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors go back to
//! the system at once and the figure is the live peak, not the allocator's retention).

use peftkit_adapters::quant::{BnbConfig, QuantType};
use peftkit_adapters::{LoraConfig, PeftModel};
use peftkit_models::{
    memory_usage, parse_device, reset_peak_memory, ModelConfig, SequenceClassifier, TrainModel,
};
use tch::{Kind, Tensor};

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
    // The peak of the measured step alone: reset to what is in use now.
    reset_peak_memory(device)?;
    let before = memory_usage(device)?;
    let t = std::time::Instant::now();
    step()?;
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = t.elapsed().as_secs_f64();
    let after = memory_usage(device)?;
    let (trainable, all) = model.parameter_counts();
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{mode}{} batch {batch}x{seq}: {:?} before the step {:.0} MiB, step peak {:.0} MiB \
         (+{:.0} MiB), step {secs:.2} s; trainable {trainable} of {all}",
        if gc { " + gradient checkpointing" } else { "" },
        after.source,
        mib(before.current_bytes),
        mib(after.peak_bytes),
        mib(after.peak_bytes - before.current_bytes),
    );
    Ok(())
}
