//! The kill harness (issue 14 §3): `peftkit reproduce` over a previous run, `train` /
//! `train --resume` chains and `merge` are killed with SIGKILL at random points (seeded offsets over each command's run time),
//! and after every kill
//! - the output is byte-for-byte the previous complete one, or the new complete one;
//! - the next run to completion leaves no temporary directory (`*.partial`, `.NAME.tmp-PID`,
//!   `.NAME.old-PID`) beside or inside it;
//! - a run resumed (and perhaps killed again, and resumed again) ends with the metrics and loss of
//!   an uninterrupted one.
//!
//! CI runs 6 kills on the tiny fixture; `cargo xtask killtest --kills N` (default 60) runs more
//! (`PEFTKIT_KILLS`, `PEFTKIT_KILL_SEED`) and prints the figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::fixture::{fixture, put};
use common::peftkit;

type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// Every path under `root` with its bytes (`None`: a directory).
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                dirs.push(path);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A small deterministic generator for the kill offsets (xorshift).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Harness {
    root: tempfile::TempDir,
    logs: tempfile::TempDir,
    rng: Rng,
    kills: usize,
    lost: usize,
}

/// What became of one started command.
enum Outcome {
    Killed,
    Finished(bool),
}

impl Harness {
    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn cmd(&self, args: &[String]) -> Command {
        let mut c = peftkit();
        let log = std::fs::File::create(self.logs.path().join("stderr")).unwrap();
        c.args(args).stdout(Stdio::null()).stderr(log);
        c
    }

    fn last_stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    fn train_args(&self, out: &str, resume: bool) -> Vec<String> {
        let mut a: Vec<String> = ["train", "--config"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(self.path("exp.toml").display().to_string());
        a.extend(["--output".into(), self.path(out).display().to_string()]);
        a.extend(["--device".into(), "cpu".into(), "--quiet".into()]);
        if resume {
            a.extend(["--resume".into(), "latest".into()]);
        }
        a
    }

    /// `reproduce` of the fixture's experiment: baseline evaluation, training, save, reload.
    fn reproduce_args(&self, out: &str) -> Vec<String> {
        let mut a = self.train_args(out, false);
        a[0] = "reproduce".into();
        a.remove(1); // `--config`: reproduce takes the file as its name
        a
    }

    fn merge_args(&self) -> Vec<String> {
        [
            "merge",
            "--model",
            "@model",
            "--adapter",
            "@adapter",
            "--output",
            "@merged",
        ]
        .iter()
        .map(|s| match s.strip_prefix('@') {
            Some(p) => self.path(p).display().to_string(),
            None => s.to_string(),
        })
        .collect()
    }

    /// Runs to completion; panics with stderr on failure.
    fn complete(&self, args: &[String]) -> Duration {
        let t0 = Instant::now();
        let status = self.cmd(args).status().unwrap();
        assert!(
            status.success(),
            "peftkit {}: {}",
            args.join(" "),
            self.last_stderr()
        );
        t0.elapsed()
    }

    /// Starts `args` and kills it after a random part of `span` (unless it ended first).
    fn run_and_kill(&mut self, args: &[String], span: Duration) -> Outcome {
        let wait = span.mul_f64(self.rng.unit());
        let mut child = self.cmd(args).spawn().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Outcome::Finished(status.success());
            }
            if t0.elapsed() >= wait {
                child.kill().unwrap();
                let status = child.wait().unwrap();
                if status.code().is_some() {
                    // It ended on its own just before the signal.
                    return Outcome::Finished(status.success());
                }
                self.kills += 1;
                return Outcome::Killed;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What is left beside or inside the output `name` besides the output itself: its
    /// `.partial`, `.NAME.tmp-PID` / `.NAME.old-PID` siblings, temporaries inside it.
    fn strays(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| {
                n != name
                    && (n.starts_with(&format!("{name}.")) || n.starts_with(&format!(".{name}.")))
            })
            .collect();
        for sub in ["", "checkpoints"] {
            for e in std::fs::read_dir(self.path(name).join(sub))
                .into_iter()
                .flatten()
            {
                let n = e.unwrap().file_name().to_string_lossy().to_string();
                if n.contains(".tmp-") || n.contains(".old-") || n.ends_with(".partial") {
                    v.push(format!("{name}/{sub}/{n}"));
                }
            }
        }
        v
    }
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// A complete run directory: marked complete, its report says the reload matched.
fn is_complete_run(dir: &Path) -> bool {
    let marker = std::fs::read_to_string(dir.join(".peftkit")).unwrap_or_default();
    marker.contains("\"complete\":true")
        && dir.join("model/model.safetensors").is_file()
        && report(dir)["reloaded_matches"] == true
}

#[test]
fn killed_runs_never_lose_or_half_write_an_output() {
    let kills: usize = std::env::var("PEFTKIT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("PEFTKIT_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261204);
    let mut h = Harness {
        root: fixture(),
        logs: tempfile::tempdir().unwrap(),
        rng: Rng(seed | 1),
        kills: 0,
        lost: 0,
    };
    // Full fine-tuning of tiny-bert: 32 steps, a checkpoint every 4, evaluation at each.
    let toml = std::fs::read_to_string(h.path("exp.toml"))
        .unwrap()
        .replace("kind = \"head\"", "kind = \"full\"")
        .replace(
            "num_train_epochs = 1",
            "num_train_epochs = 16\nsave_strategy = \"steps\"\nsave_steps = 4\neval_strategy = \"steps\"\neval_steps = 4\nlearning_rate = 1e-3",
        );
    put(h.root.path(), "exp.toml", &toml);

    // References: an uninterrupted run, and a previous complete output of each command.
    let train_time = h.complete(&h.train_args("reference", false));
    let reference = report(&h.path("reference"));
    assert_eq!(reference["train"]["global_step"], 32);
    let reproduce_time = h.complete(&h.reproduce_args("previous"));
    let merge_time = h.complete(&h.merge_args());
    eprintln!(
        "kill harness: seed {seed}, {kills} kills; an uninterrupted train takes {train_time:.1?}, a reproduce {reproduce_time:.1?}, a merge {merge_time:.1?}"
    );
    let span = |t: Duration| t.mul_f64(1.1);
    let mut counts = [0usize; 3];
    let mut resumed_runs = 0;
    while h.kills < kills {
        let scenario = h.kills % 3;
        let before = h.kills;
        match scenario {
            // A reproduce over a previous complete run: killed, the previous one stays whole.
            0 => {
                let prev = snapshot(&h.path("previous"));
                let outcome = h.run_and_kill(&h.reproduce_args("previous"), span(reproduce_time));
                let now = snapshot(&h.path("previous"));
                // Either untouched, or (finished, or killed after putting it in place) new and
                // complete.
                let ok = now == prev || is_complete_run(&h.path("previous"));
                if let Outcome::Finished(false) = outcome {
                    panic!("a run failed: {}", h.last_stderr());
                }
                if !ok {
                    h.lost += 1;
                }
                assert!(ok, "the previous run was damaged by a killed run");
                if h.rng.unit() < 0.3 {
                    h.complete(&h.reproduce_args("previous"));
                    assert!(is_complete_run(&h.path("previous")));
                    assert_eq!(h.strays("previous"), Vec::<String>::new());
                }
            }
            // A run killed, resumed (killed again perhaps), and resumed to the end.
            1 => {
                let _ = std::fs::remove_dir_all(h.path("resumed"));
                let _ = std::fs::remove_dir_all(h.path("resumed.partial"));
                let mut outcome = h.run_and_kill(&h.train_args("resumed", false), span(train_time));
                loop {
                    if let Outcome::Finished(ok) = outcome {
                        assert!(ok, "a run failed: {}", h.last_stderr());
                    }
                    // Killed between putting the output in place and exiting: complete.
                    if h.path("resumed").exists() {
                        assert!(
                            is_complete_run(&h.path("resumed")),
                            "a killed run left a half output"
                        );
                        break;
                    }
                    let has_checkpoint = std::fs::read_dir(h.path("resumed.partial/checkpoints"))
                        .into_iter()
                        .flatten()
                        .any(|e| {
                            e.unwrap()
                                .file_name()
                                .to_string_lossy()
                                .starts_with("checkpoint-")
                        });
                    let args = h.train_args("resumed", has_checkpoint);
                    outcome = if h.rng.unit() < 0.5 && h.kills < kills {
                        h.run_and_kill(&args, span(train_time))
                    } else {
                        h.complete(&args);
                        Outcome::Finished(true)
                    };
                }
                let got = report(&h.path("resumed"));
                let loss = |r: &serde_json::Value| r["train"]["train_loss"].as_f64().unwrap();
                assert!(
                    (loss(&got) - loss(&reference)).abs() < 1e-6,
                    "resumed train_loss {} vs {}",
                    loss(&got),
                    loss(&reference)
                );
                assert_eq!(
                    got["final_results"][0]["metrics"],
                    reference["final_results"][0]["metrics"]
                );
                resumed_runs += 1;
                let _ = std::fs::remove_dir_all(h.path("resumed"));
            }
            // A merge over a previous merge: deterministic, so byte-identical either way.
            _ => {
                let prev = snapshot(&h.path("merged"));
                h.run_and_kill(&h.merge_args(), span(merge_time));
                let now = snapshot(&h.path("merged"));
                if now != prev {
                    h.lost += 1;
                }
                assert!(now == prev, "a killed merge changed its output");
            }
        }
        counts[scenario] += h.kills - before;
    }
    // A last complete run of each: nothing temporary is left anywhere.
    h.complete(&h.reproduce_args("previous"));
    h.complete(&h.merge_args());
    for name in ["previous", "merged", "resumed"] {
        assert_eq!(h.strays(name), Vec::<String>::new(), "{name}");
    }
    eprintln!(
        "kill harness: {} kills (reproduce over a previous run {}, train/resume {}, merge {}), {resumed_runs} resumed runs equal to the uninterrupted one, outputs lost {}",
        h.kills, counts[0], counts[1], counts[2], h.lost
    );
}
