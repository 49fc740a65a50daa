//! `peftkit`: parameter-efficient fine-tuning of GPT-2, RoBERTa and BERT sequence classifiers.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Parameter-efficient fine-tuning (LoRA, QLoRA, prefix tuning, full, head-only) of GPT-2,
/// RoBERTa and BERT sequence classifiers over libtorch.
#[derive(Parser, Debug)]
#[command(name = "peftkit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the libtorch build, the devices it sees, and whether CUDA is usable.
    Info {
        /// Device to check (`cpu`, `cuda`, `cuda:N`, `auto`).
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = run(Cli::parse()) {
        eprintln!("peftkit: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { device } => {
            let device = peftkit_models::parse_device(&device)?;
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
            println!("device: {device:?}");
            let x = tch::Tensor::ones([2, 2], (tch::Kind::Float, device));
            println!(
                "tensor check: sum = {}",
                x.sum(tch::Kind::Float).double_value(&[])
            );
            Ok(())
        }
    }
}
