//! Peak memory of one training step (forward + backward) of a random-initialised model of a real
//! shape with LoRA or QLoRA on every linear of the encoder, with or without gradient
//! checkpointing. One configuration per process, so that each peak is its own:
//!
//! ```text
//! cargo run --release -p peftkit-adapters --example qlora_memory -- \
//!     <config.json> <lora|qlora> [--gc] [--batch 8] [--seq 256] [--device cpu] \
//!     [--build bf16] [--steps 1] [--targets q_proj,v_proj]
//! ```
//!
//! `--build bf16` creates the base in bf16 (half of fp32's memory) and quantizes its linears from
//! there before the rest is cast to fp32, as a bf16 checkpoint is loaded: this is how a 7B-shaped
//! QLoRA base is built on a 24 GiB machine (fp32 would take 27 GB).
//!
//! It prints the peak memory of the step ([`peftkit_models::memory_usage`], reset after the model
//! is built and one warm-up step has run): on CUDA the bytes held by tensors, on the CPU the
//! process's resident memory (run with `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors go back to
//! the system at once and the figure is the live peak, not the allocator's retention).

use clap::{Parser, ValueEnum};
use peftkit_adapters::quant::{quantize_model, BnbConfig, QuantType};
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
    /// The kind the base is created in before quantization (fp32 or bf16).
    #[arg(long, default_value = "fp32")]
    build: Build,
    /// Measured steps (after one warm-up step); the time is their mean.
    #[arg(long, default_value_t = 1)]
    steps: u32,
    /// Target module names (LoRA on each); by default every linear of the encoder or decoder
    /// layers, as QLoRA's recipe.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "query", "key", "value", "dense", "c_attn", "c_proj", "c_fc",
        "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2",
        "query_proj", "key_proj", "value_proj", "Wqkv", "Wo", "Wi",
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ].map(String::from))]
    targets: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Build {
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// fp32 base + LoRA.
    Lora,
    /// NF4 + double-quantized base + LoRA.
    Qlora,
}

/// The process's peak resident memory so far (`VmHWM`), in bytes; 0 where unknown.
fn peak_rss() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        config,
        mode,
        gc,
        batch,
        seq,
        device,
        build,
        steps,
        targets,
    } = Args::parse();
    let device = parse_device(&device)?;
    let gib = |b: i64| b as f64 / (1u64 << 30) as f64;

    tch::manual_seed(0);
    let mut cfg = ModelConfig::from_file(&config)?;
    cfg.set_labels(&["neg".to_string(), "pos".to_string()]);
    let vocab = cfg.raw()["vocab_size"].as_i64().unwrap_or(30_000);
    let t = std::time::Instant::now();
    let kind = match build {
        Build::Fp32 => Kind::Float,
        Build::Bf16 => Kind::BFloat16,
    };
    let mut base = SequenceClassifier::from_config_in(cfg, device, kind);
    let (_, all_params) = base.parameter_counts();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let lora = LoraConfig::new(&targets, 16, 32.0);
    let bnb = BnbConfig {
        bnb_4bit_quant_type: QuantType::Nf4,
        bnb_4bit_use_double_quant: true,
        ..BnbConfig::default()
    };
    let quantized = match mode {
        Mode::Lora => None,
        Mode::Qlora => Some(quantize_model(&mut base, &bnb)?),
    };
    // What was not quantized (embeddings, norms, the head) trains around the base in fp32.
    base.var_store_mut().float();
    let model = PeftModel::new(base, lora)?;
    println!(
        "built {all_params} parameters ({:?}, base created in {kind:?}) in {:.1} s, process peak {:.2} GiB",
        device,
        t.elapsed().as_secs_f64(),
        gib(peak_rss())
    );
    if let Some(q) = &quantized {
        let dense_bytes = |bytes_per: i64| q.parameters * bytes_per;
        println!(
            "4-bit base: {} linear weights ({} modules) in {:.2} GiB ({:.3} bits each; fp32 {:.2} GiB, bf16 {:.2} GiB); \
             the other {} parameters fp32 {:.2} GiB",
            q.parameters,
            q.modules.len(),
            gib(q.quantized_bytes),
            q.bits_per_parameter(),
            gib(dense_bytes(4)),
            gib(dense_bytes(2)),
            all_params - q.parameters,
            gib((all_params - q.parameters) * 4),
        );
    }
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
    let t = std::time::Instant::now();
    step()?;
    println!("warm-up step {:.1} s", t.elapsed().as_secs_f64());
    // The peak of the measured steps alone: reset to what is in use now.
    reset_peak_memory(device)?;
    let before = memory_usage(device)?;
    let t = std::time::Instant::now();
    for _ in 0..steps.max(1) {
        step()?;
    }
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = t.elapsed().as_secs_f64() / f64::from(steps.max(1));
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
