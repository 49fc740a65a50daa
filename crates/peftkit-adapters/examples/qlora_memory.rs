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

use clap::{Parser, ValueEnum};
use peftkit_adapters::quant::{BnbConfig, QuantType};
use peftkit_adapters::{LoraConfig, PeftModel};
use peftkit_models::{
    memory_usage, parse_device, reset_peak_memory, ModelConfig, SequenceClassifier, TrainModel,
};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// Peak memory of one LoRA or QLoRA training step.
#[derive(Parser)]
struct Args {
    /// The model's `config.json` (random-initialised from it).
    config: PathBuf,
    /// The base's storage.
    mode: Mode,
    /// Gradient checkpointing.
    #[arg(long)]
    gc: bool,
    /// Rows per batch.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    seq: i64,
    /// cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// fp32 base + LoRA.
    Lora,
    /// NF4 + double-quantized base + LoRA.
    Qlora,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        config,
        mode,
        gc,
        batch,
        seq,
        device,
    } = Args::parse();
    let device = parse_device(&device)?;

    tch::manual_seed(0);
    let mut cfg = ModelConfig::from_file(&config)?;
    cfg.set_labels(&["neg".to_string(), "pos".to_string()]);
    let vocab = cfg.raw()["vocab_size"].as_i64().unwrap_or(30_000);
    let base = SequenceClassifier::from_config(cfg, device);
    // LoRA r 16 on every linear of the encoder (q, k, v, o and the MLP), as QLoRA's recipe.
    let lora = LoraConfig::new(
        &["query", "key", "value", "dense", "c_attn", "c_proj", "c_fc"],
        16,
        32.0,
    );
    let model = match mode {
        Mode::Lora => PeftModel::new(base, lora)?,
        Mode::Qlora => PeftModel::new_quantized(
            base,
            lora,
            BnbConfig {
                bnb_4bit_quant_type: QuantType::Nf4,
                bnb_4bit_use_double_quant: true,
                ..BnbConfig::default()
            },
        )?,
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
        "{}{} batch {batch}x{seq}: {:?} before the step {:.0} MiB, step peak {:.0} MiB \
         (+{:.0} MiB), step {secs:.2} s; trainable {trainable} of {all}",
        match mode {
            Mode::Lora => "lora",
            Mode::Qlora => "qlora",
        },
        if gc { " + gradient checkpointing" } else { "" },
        after.source,
        mib(before.current_bytes),
        mib(after.peak_bytes),
        mib(after.peak_bytes - before.current_bytes),
    );
    Ok(())
}
