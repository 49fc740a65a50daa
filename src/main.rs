//! `peftkit`: parameter-efficient fine-tuning of GPT-2, RoBERTa and BERT sequence classifiers.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use peftkit::config::{configs_dir, find_config, list_configs, ExperimentConfig};
use peftkit::pipeline::{encode, load_tuned, load_tuned_model, run_experiment, RunOptions, Tuned};
use peftkit::predict::{predict_file, FileOptions, Predictor};
use peftkit_train::distributed::{Backend, DistEnv, DistError, GroupOptions, ProcessGroup};
use std::path::PathBuf;
use std::sync::Arc;

/// Parameter-efficient fine-tuning (LoRA, QLoRA, prefix tuning, full, head-only) of GPT-2,
/// RoBERTa and BERT sequence classifiers over libtorch.
#[derive(Parser, Debug)]
#[command(name = "peftkit", version, about)]
struct Cli {
    /// Directory of experiment configs (default: ./configs, or the source tree's).
    #[arg(long, global = true)]
    configs: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Override any config key, e.g. `--set train.max_steps=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<name>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (default: the config's, else auto).
    #[arg(long)]
    device: Option<String>,
    /// Hide the progress bars (training, and downloads from the hub).
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the experiments in the configs directory.
    List,
    /// Run an experiment (or `all`): baseline eval, train, save, reload, eval, report.
    Reproduce {
        /// Experiment name, config file, or `all`.
        name: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Train from a config file (no evaluation before training), with optional resume.
    Train {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// Resume from a checkpoint directory, or `latest` (the newest in the run directory).
        #[arg(long)]
        resume: Option<String>,
    },
    /// Evaluate a model (optionally with a peft adapter) on a dataset split.
    Eval {
        /// Hub id or checkpoint directory.
        #[arg(long)]
        model: String,
        /// A peft adapter directory to load on top of the model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Hub dataset id or local parquet file / directory.
        #[arg(long)]
        dataset: String,
        /// Dataset config (e.g. `sst2`).
        #[arg(long = "dataset-config")]
        dataset_config: Option<String>,
        /// Split (`validation+test` concatenates).
        #[arg(long, default_value = "validation")]
        split: String,
        /// Text column (default: `text` or `sentence`).
        #[arg(long)]
        text_column: Option<String>,
        /// Label column.
        #[arg(long)]
        label_column: Option<String>,
        /// Truncation length.
        #[arg(long, default_value_t = 128)]
        max_length: usize,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// `cpu`, `cuda`, `cuda:N` or `auto`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print the metrics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Classify texts: those given with `--text`, or every row of a file (`--input`).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["texts", "input"])))]
    Predict {
        /// Hub id or checkpoint directory.
        #[arg(long)]
        model: String,
        /// A peft adapter directory to load on top of the model; `NAME=DIR` (repeatable) loads
        /// several adapters on the one base, and `--text-adapter` (or the input's adapter
        /// column) chooses per text.
        #[arg(long = "adapter")]
        adapters: Vec<String>,
        /// A text to classify (repeatable).
        #[arg(long = "text")]
        texts: Vec<String>,
        /// The adapter (a NAME of `--adapter NAME=DIR`, or `__base__` for none) for each `--text`
        /// in order (repeatable; once: for every text). Default: the first adapter.
        #[arg(long = "text-adapter", requires = "texts")]
        text_adapters: Vec<String>,
        /// Classify every row of this file: `.txt` (one text a line), `.jsonl` (a `text` field,
        /// the other fields passed through), `.csv` or `.parquet` (a `text` or `sentence`
        /// column, or `--text-column`). Streamed; answers in input order.
        #[arg(long, conflicts_with = "texts")]
        input: Option<PathBuf>,
        /// Where `--input`'s answers go: a new `.jsonl` or `.parquet` file (default: JSONL on
        /// standard output). An existing file is never replaced.
        #[arg(long, requires = "input")]
        output: Option<PathBuf>,
        /// The text column or field of `--input`.
        #[arg(long, requires = "input")]
        text_column: Option<String>,
        /// The column or field of `--input` naming each row's adapter (empty: the default).
        #[arg(long, default_value = "adapter", requires = "input")]
        adapter_column: String,
        /// Rows per forward pass (length-sorted batches).
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Truncation length (default: the model's positions; a longer one is truncated to
        /// them, with a note).
        #[arg(long)]
        max_length: Option<usize>,
        /// `cpu`, `cuda`, `cuda:N` or `auto`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// One JSON object per line: text, label, label_id, probabilities, logits (always so
        /// with `--input`).
        #[arg(long)]
        json: bool,
        /// Hide the progress bar of `--input`.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve the model and its adapters over HTTP, compatible with text-embeddings-inference's
    /// classification routes: `POST /predict {"inputs": ..., "adapter": NAME}`, `GET /info`,
    /// `GET /health`, `GET /metrics`, and `GET|POST /adapters`, `DELETE /adapters/NAME` to
    /// change the adapters at run time. SIGTERM or Ctrl-C: the requests in flight are answered,
    /// then it exits 0 (1 past `--shutdown-timeout-secs`).
    Serve {
        /// Hub id or checkpoint directory of the base model.
        #[arg(long)]
        model: String,
        /// `NAME=DIR` (repeatable): adapters to load at start; the first is the default of
        /// requests naming none. A bare `DIR` is named `default`.
        #[arg(long = "adapter")]
        adapters: Vec<String>,
        /// Address to listen on (the admin routes load directories of this machine: keep it on
        /// a trusted network).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port (0: any free port; the address is printed as `listening on http://...`).
        #[arg(long, short, default_value_t = 3000)]
        port: u16,
        /// `cpu`, `cuda`, `cuda:N` or `auto`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Padded tokens per forward pass.
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// Inputs per forward pass.
        #[arg(long, default_value_t = 64)]
        max_batch_requests: usize,
        /// How long (ms) the first request of a batch waits for others to join it.
        #[arg(long, default_value_t = 2)]
        max_batch_wait_ms: u64,
        /// Requests that may be in flight at once (arrival to answer); more are answered 503
        /// with Retry-After.
        #[arg(long, default_value_t = 512)]
        max_concurrent_requests: usize,
        /// Inputs one request may hold; more are answered 413.
        #[arg(long, default_value_t = 32)]
        max_client_batch_size: usize,
        /// Request body bytes; more are answered 413.
        #[arg(long, default_value_t = 2_000_000)]
        payload_limit: usize,
        /// Truncate inputs longer than the model takes when a request does not say
        /// (`"truncate"`); else such inputs are answered 413.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        auto_truncate: bool,
        /// A request (or an adapter change) not answered within this many ms is answered 504.
        #[arg(long, default_value_t = 60_000)]
        request_timeout_ms: u64,
        /// Seconds the requests in flight have after SIGTERM or Ctrl-C; past them the process
        /// exits 1 with an error.
        #[arg(long, default_value_t = 30)]
        shutdown_timeout_secs: u64,
    },
    /// Fold a peft adapter into its base model and write a plain HF checkpoint directory.
    Merge {
        /// The base model: hub id or checkpoint directory.
        #[arg(long)]
        model: String,
        /// The peft adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        /// The output checkpoint directory.
        #[arg(long)]
        output: PathBuf,
    },
    /// Start N local ranks of a peftkit command, as `torchrun --nproc-per-node N` does:
    /// `peftkit launch --nproc-per-node 2 -- reproduce minilm-sst2-lora`.
    Launch {
        /// Ranks to start on this machine.
        #[arg(long, default_value_t = 1)]
        nproc_per_node: usize,
        /// Rendezvous port (default: a free one).
        #[arg(long)]
        master_port: Option<u16>,
        /// Rendezvous address given to the ranks.
        #[arg(long, default_value = "127.0.0.1")]
        master_addr: String,
        /// Seconds the other ranks may run on after one failed, to report it themselves.
        #[arg(long, default_value_t = 60)]
        grace: u64,
        /// The peftkit command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the libtorch build, the devices it sees, and whether CUDA is usable.
    Info {
        /// Device to check.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

/// A command printing to standard output ends quietly when the reader goes away
/// (`peftkit info | head`), as Unix tools do, instead of panicking in `println!`. Only for those
/// commands: servers and training keep ignoring SIGPIPE (their sockets report it as an error).
fn stdout_closed_ends_quietly() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // `serve` logs one line per request at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,peftkit::serve=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::List | Command::Info { .. } | Command::Predict { .. } | Command::Eval { .. }
    ) {
        stdout_closed_ends_quietly();
    }
    if let Err(err) = attention_kernels().and_then(|()| run(cli)) {
        let message = one_line(&err);
        eprintln!("peftkit: error: {message}");
        record_for_torchrun(&message);
        std::process::exit(1);
    }
}

/// An error and its causes on one line, as `{:#}` prints them, less any cause whose text an
/// outer message already quotes (library errors that name their source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message.replace('\n', " ")
}

/// The attention kernels the process may not use: `PEFTKIT_SDPA_DISABLE` (a comma list of
/// `flash`, `mem_efficient`, `math`, `cudnn`; empty: none), by default `cudnn`. On an H200 with
/// torch 2.11, cuDNN's fused attention — libtorch's first choice for fp16/bf16 — made training
/// with dynamic padding 2.8× (bf16 LoRA) to 5× (fp16 prefix) slower than the memory-efficient
/// kernel, which is chosen instead (BENCHMARKS.md, "GPU"); fp32 never uses it. Python's
/// `torch.backends.cuda.enable_cudnn_sdp(False)` is the same switch.
fn attention_kernels() -> Result<()> {
    let list = std::env::var("PEFTKIT_SDPA_DISABLE").unwrap_or_else(|_| "cudnn".into());
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let backend: peftkit_models::SdpaBackend = name
            .parse()
            .map_err(|e: String| anyhow::anyhow!("PEFTKIT_SDPA_DISABLE: {e}"))?;
        peftkit_models::set_sdpa_backend(backend, false);
    }
    Ok(())
}

/// Under torchrun, the failure goes to the error file it named, so that its summary shows the
/// cause (torch.distributed.elastic's `{"message": {"message", "extraInfo"}}`).
fn record_for_torchrun(message: &str) {
    let Some(path) = std::env::var_os("TORCHELASTIC_ERROR_FILE") else {
        return;
    };
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let data = serde_json::json!({
        "message": {
            "message": format!("peftkit: {message}"),
            // torchrun prints the callstack as the traceback: the one line is all there is.
            "extraInfo": {"py_callstack": format!("peftkit: error: {message}"), "timestamp": timestamp.to_string()},
        }
    });
    if let Err(e) = std::fs::write(&path, data.to_string()) {
        eprintln!(
            "peftkit: could not write torchrun's error file {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

fn run_options(run: &RunArgs, resume: Option<String>, skip_baseline: bool) -> RunOptions {
    // Download progress bars (models and datasets fetched from the hub) follow `--quiet` too.
    peftkit_data::set_download_progress(!run.quiet);
    RunOptions {
        output: run.output.clone(),
        device: run.device.clone(),
        progress: !run.quiet,
        resume,
        skip_baseline,
        group: None,
    }
}

/// Under torchrun or `peftkit launch` (RANK / WORLD_SIZE set), joins the process group and checks
/// that every rank runs the same experiment the same way; `None` for a single process.
fn join_group(cfg: &ExperimentConfig, opts: &RunOptions) -> Result<Option<Arc<ProcessGroup>>> {
    let Some(env) = DistEnv::from_env()? else {
        return Ok(None);
    };
    let device = peftkit_models::parse_device(opts.device.as_deref().unwrap_or(&cfg.model.device))?;
    let backend = match &cfg.train.ddp_backend {
        Some(name) => Backend::parse(name)?,
        None => Backend::for_device(device),
    };
    // Checked before the backend is built: ranks set up differently (another backend or
    // timeout) get the difference, not a hang.
    let options = GroupOptions {
        backend,
        timeout: std::time::Duration::from_secs(cfg.train.ddp_timeout),
        agreement: Some((SETUP.to_string(), setup(cfg, opts))),
        ..GroupOptions::default()
    };
    let group = ProcessGroup::init(&env, &options)
        .with_context(|| format!("joining the process group ({env})"))?;
    Ok(Some(Arc::new(group)))
}

/// What every rank must agree on before an experiment.
const SETUP: &str =
    "the experiment configuration (config file, --set, --output, --device, --resume)";

fn setup(cfg: &ExperimentConfig, opts: &RunOptions) -> String {
    format!(
        "{}\n--output = {:?}\n--device = {:?}\n--resume = {:?}",
        cfg.to_toml(),
        opts.output,
        opts.device,
        opts.resume
    )
}

/// Runs one experiment, on every rank of a distributed run; a rank's own failure is published
/// for the others' error messages.
fn run_one(cfg: &ExperimentConfig, mut opts: RunOptions) -> Result<()> {
    match &opts.group {
        None => opts.group = join_group(cfg, &opts)?,
        // `reproduce all`: the group is the first experiment's; each later one is checked too.
        Some(g) => g.agree(SETUP, &setup(cfg, &opts))?,
    }
    let group = opts.group.clone();
    let result = run_experiment(cfg, &opts).map(|_| ());
    if let (Err(e), Some(g)) = (&result, &group) {
        if e.downcast_ref::<DistError>().is_none()
            && e.downcast_ref::<peftkit_train::TrainError>()
                .is_none_or(|t| !matches!(t, peftkit_train::TrainError::Distributed(_)))
        {
            g.report_failure(&format!("{e:#}").replace('\n', " "));
        }
    }
    result
}

fn run(cli: Cli) -> Result<()> {
    let dir = cli.configs.clone().unwrap_or_else(configs_dir);
    if matches!(
        cli.command,
        Command::Eval { .. } | Command::Predict { .. } | Command::Merge { .. }
    ) && DistEnv::from_env()?.is_some_and(|e| e.world_size > 1)
    {
        bail!("eval, predict and merge run in one process: start them without torchrun / `peftkit launch` (every rank would write the same output)");
    }
    match cli.command {
        Command::List => {
            for (name, path) in list_configs(&dir)? {
                match ExperimentConfig::load(&path, &[]) {
                    Ok(cfg) => println!("{name:<24} {}", cfg.description),
                    Err(e) => println!("{name:<24} (invalid: {e:#})"),
                }
            }
            Ok(())
        }
        Command::Reproduce { name, run } => {
            let names: Vec<PathBuf> = if name == "all" {
                list_configs(&dir)?.into_iter().map(|(_, p)| p).collect()
            } else {
                vec![find_config(&dir, &name)?]
            };
            let mut failed = Vec::new();
            let mut group = None;
            for path in &names {
                let cfg = ExperimentConfig::load(path, &run.set)?;
                let mut opts = run_options(&run, None, false);
                if names.len() > 1 {
                    opts.output = run.output.as_ref().map(|o| o.join(&cfg.name));
                }
                if group.is_none() {
                    group = join_group(&cfg, &opts)?;
                }
                opts.group = group.clone();
                match run_one(&cfg, opts) {
                    Ok(_) => {}
                    // Distributed, one rank's failure ends the job: its collectives would pair
                    // with the next experiment's on the other ranks.
                    Err(e) if names.len() > 1 && group.is_none() => {
                        eprintln!(
                            "peftkit: {} failed: {}",
                            cfg.name,
                            format!("{e:#}").replace('\n', " ")
                        );
                        failed.push(cfg.name.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
            if !failed.is_empty() {
                bail!(
                    "{} of {} experiments failed: {}",
                    failed.len(),
                    names.len(),
                    failed.join(", ")
                );
            }
            Ok(())
        }
        Command::Train {
            config,
            run,
            resume,
        } => {
            let cfg = ExperimentConfig::load(&config, &run.set)?;
            if run.output.is_none() {
                bail!("--output DIR is required for `peftkit train`");
            }
            run_one(&cfg, run_options(&run, resume, true))
        }
        Command::Eval {
            model,
            adapter,
            dataset,
            dataset_config,
            split,
            text_column,
            label_column,
            max_length,
            batch_size,
            device,
            json,
        } => {
            if max_length < 2 {
                bail!(
                    "--max-length {max_length}: expected at least 2 (room for the special tokens)"
                );
            }
            let device = peftkit_models::parse_device(&device)?;
            let spec = peftkit_data::DatasetSpec {
                dataset,
                config: dataset_config,
                revision: None,
                text_column,
                label_column,
            };
            let data = peftkit_data::load_splits(&spec, &[split.as_str()])?;
            let (m, tok) = load_tuned(&model, None, adapter.as_deref(), device)?;
            if m.classifier().num_labels() != data.num_labels() {
                bail!(
                    "the model has {} labels but the dataset {}",
                    m.classifier().num_labels(),
                    data.num_labels()
                );
            }
            let (max_length, note) = peftkit::pipeline::fit_max_length(
                max_length,
                m.classifier().max_length(),
                "--max-length",
            );
            if let Some(note) = note {
                eprintln!("peftkit: note: {note}");
            }
            let section = peftkit::config::DataSection {
                dataset: spec.dataset.clone(),
                config: None,
                revision: None,
                train_split: String::new(),
                eval_split: split.clone(),
                test_split: None,
                text_column: None,
                label_column: None,
                max_length,
                padding: peftkit::config::PaddingKind::Longest,
                train_subset: None,
                eval_subset: None,
                subset_seed: 0,
                subset_mode: Default::default(),
            };
            let encoded = encode(&data, &tok, &section)?;
            let out = peftkit_train::evaluate(m.model(), &encoded, batch_size, 4)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"split": split, "rows": encoded.len(), "loss": out.loss, "metrics": out.metrics, "samples_per_second": out.samples_per_second})
                );
            } else {
                println!("{split}: {} rows, loss {:.4}, accuracy {:.4}, macro F1 {:.4} ({:.1} samples/s)", encoded.len(), out.loss, out.metrics.accuracy, out.metrics.macro_f1, out.samples_per_second);
                print!("{}", out.metrics.to_markdown());
            }
            Ok(())
        }
        Command::Predict {
            model,
            adapters,
            texts,
            text_adapters,
            input,
            output,
            text_column,
            adapter_column,
            batch_size,
            max_length,
            device,
            json,
            quiet,
        } => {
            peftkit_data::set_download_progress(!quiet);
            let device = peftkit_models::parse_device(&device)?;
            let mut p = Predictor::load(&model, &adapters, device, max_length, batch_size)?;
            if let Some(input) = input {
                predict_file(
                    &mut p,
                    &FileOptions {
                        input,
                        output,
                        text_column,
                        adapter_column,
                        quiet,
                    },
                )?;
                return Ok(());
            }
            if !text_adapters.is_empty() && !p.named() {
                bail!("--text-adapter needs adapters given as --adapter NAME=DIR");
            }
            let choice: Vec<Option<String>> = match text_adapters.len() {
                0 => vec![None; texts.len()],
                1 => vec![Some(text_adapters[0].clone()); texts.len()],
                n if n == texts.len() => text_adapters.into_iter().map(Some).collect(),
                n => bail!(
                    "{n} --text-adapter values for {} texts (give one per text, or one for all)",
                    texts.len()
                ),
            };
            for c in choice.iter().flatten() {
                if let Err(e) = p.check_adapter(c) {
                    bail!("--text-adapter {c}: no such adapter ({e})");
                }
            }
            for (text, (adapter, answer)) in texts.iter().zip(p.predict(&texts, &choice)?) {
                let adapter = p.named().then_some(adapter.as_str());
                if json {
                    println!(
                        "{}",
                        serde_json::Value::Object(answer.to_json(text, adapter))
                    );
                } else {
                    let prob = answer.probabilities[answer.label_id];
                    match adapter {
                        Some(a) => println!("{:<10} {prob:.4}  [{a}] {text}", answer.label),
                        None => println!("{:<10} {prob:.4}  {text}", answer.label),
                    }
                }
            }
            Ok(())
        }
        Command::Serve {
            model,
            adapters,
            host,
            port,
            device,
            max_batch_tokens,
            max_batch_requests,
            max_batch_wait_ms,
            max_concurrent_requests,
            max_client_batch_size,
            payload_limit,
            auto_truncate,
            request_timeout_ms,
            shutdown_timeout_secs,
        } => {
            let named = peftkit::predict::named_adapters(&adapters)?;
            let adapters = if named.is_empty() {
                adapters
                    .first()
                    .map(|d| vec![("default".to_string(), PathBuf::from(d))])
                    .unwrap_or_default()
            } else {
                named
            };
            peftkit::serve::serve(peftkit::serve::ServeOptions {
                model,
                adapters,
                addr: std::net::SocketAddr::new(host, port),
                device: peftkit_models::parse_device(&device)?,
                max_batch_requests,
                max_batch_tokens,
                max_batch_wait: std::time::Duration::from_millis(max_batch_wait_ms),
                max_concurrent_requests,
                max_client_batch_size,
                payload_limit,
                auto_truncate,
                request_timeout: std::time::Duration::from_millis(request_timeout_ms),
                shutdown_timeout: std::time::Duration::from_secs(shutdown_timeout_secs),
            })
        }
        Command::Merge {
            model,
            adapter,
            output,
        } => {
            peftkit::run_dir::check_output(&output, "merge")?;
            let (m, _) = load_tuned_model(&model, None, Some(&adapter), tch::Device::Cpu, false)?;
            let Tuned::Peft(peft) = m else {
                unreachable!("an adapter was given")
            };
            let model_dir = peftkit_data::resolve_model(&model, None, true)?;
            let merged = peft.merge_and_unload()?;
            peftkit_models::write_dir_atomically(&output, |tmp| -> Result<()> {
                merged.write_checkpoint_files(tmp)?;
                for f in peftkit::pipeline::TOKENIZER_FILES {
                    if model_dir.join(f).is_file() {
                        std::fs::copy(model_dir.join(f), tmp.join(f))
                            .with_context(|| format!("copying {f}"))?;
                    }
                }
                peftkit::run_dir::write_marker(tmp, "merge", true)
            })?;
            eprintln!(
                "merged {} into {} and wrote {}",
                adapter.display(),
                model,
                output.display()
            );
            Ok(())
        }
        Command::Launch {
            nproc_per_node,
            master_port,
            master_addr,
            grace,
            command,
        } => {
            let exe = std::env::current_exe().context("locating the peftkit executable")?;
            let outcome = peftkit_train::distributed::launch(
                &exe,
                &command,
                &peftkit_train::distributed::LaunchOptions {
                    nproc_per_node,
                    master_addr,
                    master_port,
                    threads_per_rank: 1,
                    grace: std::time::Duration::from_secs(grace),
                },
            )?;
            if let Some(rank) = outcome.first_failure {
                eprintln!("peftkit: launch: rank {rank} failed first");
                std::process::exit(outcome.exit_code());
            }
            Ok(())
        }
        Command::Info { device } => {
            match DistEnv::from_env()? {
                Some(env) => println!("process group: {env}"),
                None => println!("process group: none (a single process)"),
            }
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
