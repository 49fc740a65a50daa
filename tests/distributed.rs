//! Data-parallel training end to end: 2 ranks of the `peftkit` binary on 127.0.0.1 (Gloo), started
//! by `peftkit launch`, by torchrun, or by the test itself on a free port, on the real MiniLM
//! checkpoint and small SST-2 subsets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::peftkit;

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `train` arguments of a short run of `config` into `run`.
fn train_args(config: &str, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--config", config, "--output"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(run.to_str().unwrap().to_string());
    for s in extra {
        a.push(s.to_string());
    }
    a.extend(["--device", "cpu", "--quiet"].iter().map(|s| s.to_string()));
    a
}

/// At each config's learning rate, 64 rows in batches of 4 over 2 ranks with accumulation 2: 4
/// optimizer steps of 16 rows;
/// clipping at 0.1 (the gradient norms here are 0.2–0.6, so every step clips); evaluation every
/// 2 steps on 50 rows (7 batches of 8: the ranks get 4 and 3).
const DDP: &[&str] = &[
    "data.train_subset=64",
    "data.eval_subset=50",
    "train.per_device_train_batch_size=4",
    "train.per_device_eval_batch_size=8",
    "train.gradient_accumulation_steps=2",
    "train.max_steps=4",
    "train.max_grad_norm=0.1",
    "train.warmup_ratio=0",
    "train.logging_steps=1",
    "train.eval_strategy=steps",
    "train.save_strategy=steps",
    "train.eval_steps=2",
    "train.save_steps=2",
];

/// The same global batches in one process: accumulation 2 × 2 ranks.
fn single_process_args() -> Vec<&'static str> {
    let mut a = DDP.to_vec();
    let i = a
        .iter()
        .position(|s| *s == "train.gradient_accumulation_steps=2")
        .unwrap();
    a[i] = "train.gradient_accumulation_steps=4";
    a
}

/// `--set KEY=VALUE` for each of `pairs`.
fn sets<'a>(pairs: &[&'a str]) -> Vec<&'a str> {
    pairs.iter().flat_map(|kv| ["--set", *kv]).collect()
}

fn launch(nproc: usize, args: &[String]) -> Output {
    let mut c = peftkit();
    c.env("OMP_NUM_THREADS", "1")
        .args(["launch", "--nproc-per-node", &nproc.to_string(), "--"])
        .args(args);
    c.output().unwrap()
}

/// One process with the thread count of each rank (1): the same kernels, hence the same sums.
fn single(args: &[String]) -> Output {
    peftkit()
        .env("OMP_NUM_THREADS", "1")
        .args(args)
        .output()
        .unwrap()
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = peftkit_models::read_safetensors(path).unwrap_or_else(|e| panic!("{e}"));
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The largest difference between two safetensors files' tensors, and where it is.
fn max_difference(a: &Path, b: &Path) -> (f64, String) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            let d = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            (d, na.clone())
        })
        .fold((0.0, String::new()), |m, x| if x.0 > m.0 { x } else { m })
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The evaluation records (loss, accuracy, F1) and the training losses of a run.
fn evaluations(run: &Path) -> (Vec<[f64; 3]>, Vec<f64>) {
    let r = records(run);
    let evals = r
        .iter()
        .filter(|v| v.get("eval_loss").is_some())
        .map(|v| ["eval_loss", "eval_accuracy", "eval_f1"].map(|k| v[k].as_f64().unwrap()))
        .collect();
    let losses = r.iter().filter_map(|v| v.get("loss")?.as_f64()).collect();
    (evals, losses)
}

/// The final evaluation of the reloaded model: loss and metrics per split (not its speed).
fn final_metrics(run: &Path) -> Vec<(f64, serde_json::Value)> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["final_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["loss"].as_f64().unwrap(), r["metrics"].clone()))
        .collect()
}

#[test]
fn two_ranks_train_as_one_process_on_the_same_global_batches() {
    let tmp = tempfile::tempdir().unwrap();
    for (config, saved) in [
        (
            "configs/minilm-sst2-lora.toml",
            "adapter/adapter_model.safetensors",
        ),
        ("configs/minilm-sst2-full.toml", "model/model.safetensors"),
    ] {
        let name = Path::new(config).file_stem().unwrap().to_str().unwrap();
        let ddp_run = tmp.path().join(format!("{name}-ddp"));
        let one_run = tmp.path().join(format!("{name}-single"));
        check(
            launch(2, &train_args(config, &ddp_run, &sets(DDP))),
            "peftkit launch",
        );
        check(
            single(&train_args(config, &one_run, &sets(&single_process_args()))),
            "peftkit train",
        );
        let (diff, at) = max_difference(&ddp_run.join(saved), &one_run.join(saved));
        eprintln!(
            "{name}: max |Δparameter| between 2 ranks and 1 process after 4 steps: {diff:e} ({at})"
        );
        assert!(diff <= 1e-6, "{name}: parameters differ by {diff}");
        let (ddp_evals, ddp_losses) = evaluations(&ddp_run);
        let (one_evals, one_losses) = evaluations(&one_run);
        assert_eq!(ddp_evals.len(), 2);
        assert_eq!(one_evals.len(), 2);
        // The sharded, gathered evaluation gives the single process's accuracy and F1 exactly;
        // the loss moves only by the parameters' last-bit differences (the sums of the gradient
        // accumulation run in another order).
        for (a, b) in ddp_evals.iter().zip(&one_evals) {
            assert_eq!(
                a[1..],
                b[1..],
                "{name}: evaluation metrics {ddp_evals:?} vs {one_evals:?}"
            );
            assert!(
                (a[0] - b[0]).abs() <= 1e-6,
                "{name}: eval loss {ddp_evals:?} vs {one_evals:?}"
            );
        }
        let (ddp_final, one_final) = (final_metrics(&ddp_run), final_metrics(&one_run));
        assert_eq!(ddp_final.len(), one_final.len());
        for ((la, ma), (lb, mb)) in ddp_final.iter().zip(&one_final) {
            assert_eq!(ma, mb, "{name}: final metrics");
            assert!((la - lb).abs() <= 1e-6, "{name}: final loss {la} vs {lb}");
        }
        assert_eq!(ddp_losses.len(), 4);
        assert_eq!(one_losses.len(), 4);
        for (a, b) in ddp_losses.iter().zip(&one_losses) {
            assert!(
                (a - b).abs() <= 1e-6,
                "{name}: logged losses {ddp_losses:?} vs {one_losses:?}"
            );
        }
        // Rank 0 alone wrote the run directory: one line per record, no duplicates.
        let steps: Vec<u64> = records(&ddp_run)
            .iter()
            .filter_map(|v| v.get("loss").and(v["step"].as_u64()))
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }
}

#[test]
fn torchrun_launches_peftkit_like_peftkit_launch() {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .expect("VIRTUAL_ENV (set by `cargo xtask`): the torch environment with torchrun");
    let torchrun = PathBuf::from(venv).join("bin/torchrun");
    assert!(torchrun.is_file(), "{} is missing", torchrun.display());
    let tmp = tempfile::tempdir().unwrap();
    let config = "configs/minilm-sst2-lora.toml";
    let by_torchrun = tmp.path().join("torchrun");
    let by_launch = tmp.path().join("launch");
    let mut c = Command::new(&torchrun);
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--standalone",
            "--no-python",
            "--nproc-per-node",
            "2",
            env!("CARGO_BIN_EXE_peftkit"),
        ])
        .args(train_args(config, &by_torchrun, &sets(DDP)));
    if std::env::var_os("HF_HOME").is_none() {
        c.env(
            "HF_HOME",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/hf-home"),
        )
        .env("HF_HUB_OFFLINE", "1");
    }
    check(c.output().unwrap(), "torchrun");
    check(
        launch(2, &train_args(config, &by_launch, &sets(DDP))),
        "peftkit launch",
    );
    let saved = "adapter/adapter_model.safetensors";
    assert_eq!(
        max_difference(&by_torchrun.join(saved), &by_launch.join(saved)).0,
        0.0
    );
    assert_eq!(final_metrics(&by_torchrun), final_metrics(&by_launch));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the 2 ranks by hand, as torch's `env://` rendezvous expects (rank 0 serves the store).
fn spawn_ranks(args: &[Vec<String>], port: u16, log_dir: &Path) -> Vec<Child> {
    args.iter()
        .enumerate()
        .map(|(rank, a)| {
            let log = std::fs::File::create(log_dir.join(format!("rank{rank}.log"))).unwrap();
            peftkit()
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", args.len().to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .args(a)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect()
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` at most `limit`; its exit status and how long it took.
fn wait_at_most(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the surviving rank did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// 128 rows in batches of 4 over 2 ranks: 16 steps, a checkpoint every 4.
const LONG: &[&str] = &[
    "data.train_subset=128",
    "data.eval_subset=32",
    "train.per_device_train_batch_size=4",
    "train.num_train_epochs=1",
    "train.warmup_ratio=0",
    "train.logging_steps=2",
    "train.eval_strategy=steps",
    "train.save_strategy=steps",
    "train.eval_steps=4",
    "train.save_steps=4",
    "train.ddp_timeout=20",
];

#[test]
fn a_killed_rank_is_named_and_the_run_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let config = "configs/minilm-sst2-lora.toml";
    let run = tmp.path().join("killed");
    let args = train_args(config, &run, &sets(LONG));
    let mut ranks = spawn_ranks(&[args.clone(), args.clone()], free_port(), tmp.path());
    let partial = tmp.path().join("killed.partial");
    wait_for(
        &partial.join("checkpoints/checkpoint-8"),
        Duration::from_secs(300),
    );
    ranks[1].kill().unwrap();
    let _ = ranks[1].wait();
    let (status, took) = wait_at_most(&mut ranks[0], Duration::from_secs(60));
    assert!(!status.success());
    let err = last_line(&tmp.path().join("rank0.log"));
    assert!(
        err.starts_with("peftkit: error: rank 0:") && err.contains("rank 1 stopped responding"),
        "{err}"
    );
    eprintln!("rank 0 exited {took:.1?} after rank 1 was killed: {err}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}, past the collective timeout"
    );
    // The last checkpoint is complete; nothing half-written is left.
    assert!(!run.exists(), "a killed run must not leave an output");
    let ckpts = partial.join("checkpoints");
    let names: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("checkpoint-")),
        "{names:?}"
    );
    let last = names
        .iter()
        .filter_map(|n| n.strip_prefix("checkpoint-")?.parse::<usize>().ok())
        .max()
        .unwrap();
    assert!(last >= 8);
    for f in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "training_args.json",
    ] {
        assert!(
            ckpts.join(format!("checkpoint-{last}/{f}")).is_file(),
            "{f} missing"
        );
    }
    // A single process may not resume a 2-rank run.
    let mut one = train_args(config, &run, &sets(LONG));
    one.extend(["--resume".to_string(), "latest".to_string()]);
    let out = single(&one);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by a run of 2 rank(s), this one has 1"),
        "{err}"
    );
    // 2 ranks resume it to the uninterrupted run's result.
    check(launch(2, &one), "resuming with 2 ranks");
    let whole = tmp.path().join("whole");
    check(
        launch(2, &train_args(config, &whole, &sets(LONG))),
        "the uninterrupted run",
    );
    let saved = "adapter/adapter_model.safetensors";
    let (diff, _) = max_difference(&run.join(saved), &whole.join(saved));
    eprintln!("resumed vs uninterrupted 2-rank run: max |Δparameter| {diff:e}");
    assert!(diff <= 1e-6);
    assert_eq!(final_metrics(&run), final_metrics(&whole));
    assert_eq!(evaluations(&run).0.last(), evaluations(&whole).0.last());
}

#[test]
fn a_hung_rank_is_named_after_the_collective_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("hung");
    let mut long = LONG.to_vec();
    let i = long
        .iter()
        .position(|s| *s == "train.ddp_timeout=20")
        .unwrap();
    long[i] = "train.ddp_timeout=10";
    let args = train_args("configs/minilm-sst2-lora.toml", &run, &sets(&long));
    let mut ranks = spawn_ranks(&[args.clone(), args], free_port(), tmp.path());
    wait_for(
        &tmp.path().join("hung.partial/checkpoints/checkpoint-4"),
        Duration::from_secs(300),
    );
    let pid = ranks[1].id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let (status, took) = wait_at_most(&mut ranks[0], Duration::from_secs(60));
    let _ = ranks[1].kill();
    let _ = ranks[1].wait();
    assert!(!status.success());
    let err = last_line(&tmp.path().join("rank0.log"));
    assert!(err.contains("rank 1 stopped responding"), "{err}");
    eprintln!("rank 0 exited {took:.1?} after rank 1 hung (timeout 10 s): {err}");
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

#[test]
fn ranks_with_different_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = "configs/minilm-sst2-lora.toml";
    let run = tmp.path().join("run");
    let a = train_args(config, &run, &sets(&["train.learning_rate=1e-4"]));
    let b = train_args(config, &run, &sets(&["train.learning_rate=2e-4"]));
    let mut ranks = spawn_ranks(&[a, b], free_port(), tmp.path());
    for (rank, child) in ranks.iter_mut().enumerate() {
        let (status, _) = wait_at_most(child, Duration::from_secs(60));
        assert!(!status.success());
        let err = last_line(&tmp.path().join(format!("rank{rank}.log")));
        assert!(
            err.contains(
                "the ranks disagree on the experiment configuration (config file, --set, --output, --device, --resume)"
            ) && err.contains(
                "rank 0 has `learning_rate = 0.0001`, rank 1 has `learning_rate = 0.0002`"
            ),
            "{err}"
        );
    }
    assert!(!run.exists() && !tmp.path().join("run.partial/checkpoints").exists());
}

#[test]
fn every_method_and_bf16_train_under_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let short = [
        "data.train_subset=32",
        "data.eval_subset=16",
        "train.per_device_train_batch_size=4",
        "train.gradient_accumulation_steps=2",
        "train.max_steps=2",
        "train.warmup_ratio=0",
        "train.eval_strategy=steps",
        "train.save_strategy=steps",
        "train.eval_steps=2",
        "train.save_steps=2",
    ];
    let mut runs: Vec<(String, Vec<&str>)> = [
        "head", "qlora", "prefix", "ia3", "dora", "adalora", "prompt", "ptuning", "pissa",
    ]
    .iter()
    .map(|m| (format!("configs/minilm-sst2-{m}.toml"), sets(&short)))
    .collect();
    let mut bf16 = short.to_vec();
    bf16.push("train.precision=bf16");
    let bf16 = sets(&bf16);
    runs.push(("configs/minilm-sst2-lora.toml".into(), bf16));
    for (i, (config, extra)) in runs.iter().enumerate() {
        let run = tmp.path().join(format!("run{i}"));
        // The trainer checks at the end that both ranks hold the same parameters.
        check(launch(2, &train_args(config, &run, extra)), config);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["reloaded_matches"], true, "{config}");
        assert_eq!(report["train"]["global_step"], 2, "{config}");
        assert_eq!(report["train"]["distributed"]["world_size"], 2, "{config}");
    }
}
