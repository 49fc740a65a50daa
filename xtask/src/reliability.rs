//! `cargo xtask killtest` and `cargo xtask fuzz`: the long runs of issue 14's reliability checks,
//! whose short forms run in CI.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// The value of `--name V` in `args`, parsed.
fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name} {v}: not a valid value"))
        }
    }
}

/// `cargo xtask killtest [--kills N] [--seed S]`: the kill harness of `tests/kill.rs` with N
/// SIGKILLs (default 60) instead of CI's 6; it prints the kills per command, the resumed runs that
/// matched an uninterrupted one, and the outputs lost (the test fails on any).
pub fn killtest(mut cargo_test: Command, args: &[String]) -> Result<()> {
    let kills: usize = flag(args, "--kills")?.unwrap_or(60);
    let seed: Option<u64> = flag(args, "--seed")?;
    if kills == 0 {
        bail!("--kills 0: nothing to do");
    }
    cargo_test
        .args(["--test", "kill", "--", "--nocapture"])
        .env("PEFTKIT_KILLS", kills.to_string());
    if let Some(s) = seed {
        cargo_test.env("PEFTKIT_KILL_SEED", s.to_string());
    }
    crate::exec(cargo_test)
}

/// How many of libFuzzer's own finds stay in a committed corpus (the smallest; named seeds always
/// stay): enough to start from, small enough for git and for the property tests that replay every
/// corpus file in CI.
const KEEP_IN_CORPUS: usize = 150;

/// Keeps the named files of a corpus directory and the `keep` smallest of libFuzzer's
/// (hash-named) ones.
fn prune_corpus(dir: &std::path::Path, keep: usize) {
    let is_hash = |n: &str| n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_hash(&e.file_name().to_string_lossy()))
        .map(|e| (e.metadata().map_or(0, |m| m.len()), e.path()))
        .collect();
    found.sort();
    for (_, p) in found.into_iter().skip(keep) {
        let _ = std::fs::remove_file(p);
    }
}

/// The fuzz targets (crates/peftkit-fuzz's `TARGETS`, one binary each under `fuzz/`).
pub const FUZZ_TARGETS: &[&str] = &[
    "config_json",
    "adapter_config_json",
    "safetensors",
    "parquet",
    "tokenizer_json",
    "trainer_state_json",
    "experiment_toml",
];

/// `cargo xtask fuzz TARGET|all [--time S] [--runs N]`: coverage-guided fuzzing with cargo-fuzz
/// (libFuzzer, nightly; installed on first use) of one loader, or of each in turn, for S seconds
/// (default 600) or N executions, growing `fuzz/corpus/TARGET` (minimised with `cargo fuzz cmin`,
/// then cut to the 150 smallest finds; inputs that once crashed a target live in
/// `fuzz/regressions/TARGET`, which the property tests replay). No sanitizer: the loaders are
/// safe Rust over libtorch, whose C++ is not instrumented; what is sought is a panic, an abort or
/// an error that does not name its file. It ends with the executions and the corpus size of each
/// target; a crash leaves its input in `fuzz/artifacts/TARGET/` and fails the task.
pub fn fuzz(
    root: &std::path::Path,
    vars: &[(String, std::ffi::OsString)],
    args: &[String],
) -> Result<()> {
    let target = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .context("usage: cargo xtask fuzz TARGET|all [--time S] [--runs N]")?;
    let time: u64 = flag(args, "--time")?.unwrap_or(600);
    let runs: Option<u64> = flag(args, "--runs")?;
    let targets: Vec<&str> = if target == "all" {
        FUZZ_TARGETS.to_vec()
    } else if FUZZ_TARGETS.contains(&target.as_str()) {
        vec![target.as_str()]
    } else {
        bail!(
            "no fuzz target `{target}` (expected all or one of {})",
            FUZZ_TARGETS.join(", ")
        );
    };
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz (nightly) once");
        crate::exec({
            let mut c = Command::new("cargo");
            c.args(["+nightly", "install", "cargo-fuzz", "--locked"]);
            c
        })?;
    }
    let mut summary = Vec::new();
    for t in targets {
        let mut c = Command::new("cargo");
        c.current_dir(root)
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                "-s",
                "none",
                t,
                "--",
            ])
            .arg(format!("-max_total_time={time}"))
            .args([
                "-print_final_stats=1",
                "-rss_limit_mb=4096",
                "-max_len=8192",
                // An input that takes a minute is a finding (resource exhaustion), saved as a
                // `timeout-*` artifact like a crash.
                "-timeout=60",
            ]);
        if let Some(n) = runs {
            c.arg(format!("-runs={n}"));
        }
        for (k, v) in vars {
            c.env(k, v);
        }
        // The targets write each input to a file: on tmpfs that is ~6× faster than on disk.
        if std::path::Path::new("/dev/shm").is_dir() {
            c.env("TMPDIR", "/dev/shm");
        }
        let started = std::time::Instant::now();
        let out = c
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running cargo fuzz")?
            .wait_with_output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        // Echo libFuzzer's final lines; keep its statistics.
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let corpus = std::fs::read_dir(root.join("fuzz/corpus").join(t))
            .map(|d| d.count())
            .unwrap_or(0);
        let seconds = started.elapsed().as_secs();
        if out.status.success() {
            // Keep the committed corpus small: the fewest inputs with the same coverage.
            let mut cmin = Command::new("cargo");
            cmin.current_dir(root).args([
                "+nightly",
                "fuzz",
                "cmin",
                "--fuzz-dir",
                "fuzz",
                "-s",
                "none",
                t,
            ]);
            for (k, v) in vars {
                cmin.env(k, v);
            }
            let _ = cmin
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        prune_corpus(&root.join("fuzz/corpus").join(t), KEEP_IN_CORPUS);
        let corpus = std::fs::read_dir(root.join("fuzz/corpus").join(t))
            .map(|d| d.count())
            .unwrap_or(corpus);
        let line = format!(
            "{t}: {} executions in {seconds} s ({} exec/s), corpus {corpus} inputs kept, {}",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            if out.status.success() {
                "no crash"
            } else {
                "CRASH"
            }
        );
        eprintln!(
            "{}",
            log.lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!("xtask: {line}");
        summary.push((line, out.status.success()));
    }
    eprintln!("\nfuzzing summary:");
    for (l, _) in &summary {
        eprintln!("  {l}");
    }
    if summary.iter().any(|(_, ok)| !ok) {
        bail!("a fuzz target crashed: its input is in fuzz/artifacts/");
    }
    Ok(())
}
