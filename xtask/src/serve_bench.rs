//! `cargo xtask bench serve`: a bounded loopback load test of `peftkit serve` on MiniLM with 1
//! and with 8 LoRA adapters, beside the Python server a transformers + peft user would write
//! (`bench/serve_baseline.py`), on the same adapter files and SST-2 sentences, in one command.

use crate::load::{self, LoadStats};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONCURRENCY: [usize; 3] = [1, 8, 32];

/// A server process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for the `listening on http://ADDR` line on stdout or stderr.
fn start(mut cmd: Command, what: &str) -> Result<(Running, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
            }
        });
    }
    let running = Running(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .with_context(|| format!("{what} did not start listening"))?;
    Ok((running, addr))
}

/// One body per text, cycling through `adapters`.
fn bodies(texts: &[String], adapters: &[String]) -> Vec<String> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"inputs": t, "adapter": adapters[i % adapters.len()]}).to_string()
        })
        .collect()
}

/// Runs the load test and prints (and writes) the table.
pub fn run(
    root: &Path,
    cargo_release_build: Command,
    python: &Path,
    minilm: &Path,
    vars: &[(String, std::ffi::OsString)],
    args: &[String],
) -> Result<()> {
    let mut requests = 600usize;
    let mut seconds = 60u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--requests" => requests = it.next().context("--requests N")?.parse()?,
            "--seconds" => seconds = it.next().context("--seconds S")?.parse()?,
            other => bail!("bench serve: unknown argument `{other}` (--requests N, --seconds S)"),
        }
    }
    crate::exec(cargo_release_build)?;
    let out = root.join("target/bench/serve");
    std::fs::create_dir_all(&out)?;
    let adapters_dir = out.join("adapters");
    let texts_file = root.join("../shared/hf-home/hub/datasets--stanfordnlp--sst2/snapshots/8d51e7e4887a4caaa95b3fbebbf53c0490b58bbb/data/validation-00000-of-00001.parquet");
    if !adapters_dir.join("texts.json").is_file() {
        eprintln!("xtask: bench serve: making 8 LoRA adapters with peft");
        let mut py = Command::new(python);
        py.arg(root.join("bench/serve_baseline.py"))
            .args(["prepare", "--adapters", "8", "--minilm"])
            .arg(minilm)
            .arg("--out")
            .arg(&adapters_dir)
            .arg("--texts")
            .arg(&texts_file)
            .envs(vars.iter().cloned());
        crate::exec(py)?;
    }
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(adapters_dir.join("texts.json")).context("reading texts.json")?,
    )?;
    let names: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
    let adapter_args = |n: usize| -> Vec<String> {
        names[..n]
            .iter()
            .flat_map(|a| {
                [
                    "--adapter".to_string(),
                    format!("{a}={}", adapters_dir.join(a).display()),
                ]
            })
            .collect()
    };
    let mut results: Vec<(String, usize, LoadStats)> = Vec::new();
    for (server, n) in [("peftkit", 1), ("peftkit", 8), ("python", 1), ("python", 8)] {
        let mut cmd = if server == "peftkit" {
            let mut c = Command::new(root.join("target/release/peftkit"));
            c.arg("serve")
                .arg("--model")
                .arg(minilm)
                .args(["--device", "cpu", "--port", "0"]);
            c
        } else {
            let mut c = Command::new(python);
            c.arg(root.join("bench/serve_baseline.py"))
                .arg("serve")
                .arg("--minilm")
                .arg(minilm);
            c
        };
        cmd.args(adapter_args(n)).envs(vars.iter().cloned());
        let what = format!("{server} with {n} adapter(s)");
        eprintln!("xtask: bench serve: {what}");
        let (running, addr) = start(cmd, &what)?;
        let url = format!("{addr}/predict");
        let b = bodies(&texts, &names[..n]);
        load::run(&url, &b[..32], 1, 4, 32, Duration::from_secs(60))?; // warm-up
        for c in CONCURRENCY {
            let stats = load::run(&url, &b, 1, c, requests, Duration::from_secs(seconds))?;
            eprintln!(
                "  concurrency {c:>2}: {:.1} req/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
                stats.requests_per_second, stats.p50_ms, stats.p99_ms, stats.errors
            );
            results.push((server.to_string(), n, stats));
        }
        drop(running);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut table = format!(
        "MiniLM (all-MiniLM-L6-v2) on CPU ({cores} cores), one SST-2 validation sentence per request, each request naming an adapter in turn; {requests} requests (at most {seconds} s) per row after 32 warm-up requests. peftkit: `peftkit serve` (release), batching across requests and adapters; python: `bench/serve_baseline.py` (transformers + peft `PeftModel`, threading HTTP server, one forward per request under a lock).\n\n| server | adapters | concurrency | requests/s | texts/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (server, n, s) in &results {
        table += &format!(
            "| {server} | {n} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            s.concurrency,
            s.requests_per_second,
            s.texts_per_second,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.errors
        );
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|(server, n, s)| serde_json::json!({"server": server, "adapters": n, "stats": s}))
        .collect();
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(out.join("results.md"), &table)?;
    println!("{table}");
    Ok(())
}
