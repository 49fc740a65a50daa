//! `cargo xtask gpu-pack`: everything one run on a lent GPU machine needs, in one folder the
//! device tool can carry (≤ 64 MiB with the working tree).
//!
//! The folder (`target/gpu-pack` by default) holds
//! - `bins.tar.xz`: the release `peftkit` binary, the `qlora_memory` example (model shapes) and
//!   the release test binaries with CUDA paths (the generic adapter suite, the c10d collectives), stripped of debug information. They link
//!   libtorch by name; the machine's own torch 2.11.0+cu130 libraries serve them there
//!   (`LD_LIBRARY_PATH`), `libtorch_cuda.so` included (see `build-support/link_torch_cuda.rs`);
//! - `hf-home/`: the part of the offline hub cache the benchmark rows read (the gpt2 and
//!   roberta-base configs and tokenizers; SST-2, emotion; IMDB cut to 4,000 training and 2,000 test
//!   rows spread over each file — both sides read the same cut files);
//! - `run.sh`, `summary.py` (from `bench/gpu/`) and `hf_peft_throughput.py` (from
//!   `../shared/bench/`, the HF side).
//!
//! `bash target/gpu-pack/run.sh` on the GPU machine writes `$OUT/results.md` and the raw files;
//! `bash target/gpu-pack/run.sh --dry-run` checks the whole script here on the CPU in minutes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model's files the rows read (its config and tokenizer; no weights are needed).
const MODEL_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
];

/// The hub repositories the rows read, and for each the files kept (`None`: all of them).
const HUB_REPOS: &[(&str, Option<&[&str]>)] = &[
    ("models--gpt2", Some(MODEL_FILES)),
    ("models--roberta-base", Some(MODEL_FILES)),
    ("datasets--nyu-mll--glue", None),
    // Not trained on here, but the HF script resolves its snapshot when it starts.
    ("datasets--cornell-movie-review-data--rotten_tomatoes", None),
    ("datasets--dair-ai--emotion", None),
    ("datasets--stanfordnlp--imdb", None),
];

/// IMDB rows kept (train, test): enough for the rows' steps and the HF script's 2,000-row eval.
const IMDB_ROWS: (usize, usize) = (4000, 2000);

/// What the device tool carries at most.
const CARRY_LIMIT: u64 = 64 << 20;

/// Builds the pack. `cargo` builds with the libtorch environment set; `python` has pyarrow (or
/// can install it) for cutting IMDB.
pub fn run(
    root: &Path,
    cargo: &dyn Fn(&[&str]) -> Command,
    python: &Path,
    args: &[String],
) -> Result<()> {
    let out = match args {
        [] => root.join("target/gpu-pack"),
        [flag, dir] if flag == "--out" => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask gpu-pack [--out DIR]"),
    };
    let shared = root.join("../shared");
    let hub = shared.join("hf-home/hub");
    if !hub.is_dir() {
        bail!(
            "{}: the offline hub cache is needed (../shared beside the checkout)",
            hub.display()
        );
    }
    if out.exists() {
        // Only a folder this task made is replaced.
        if !out.join("run.sh").is_file() || !out.join("bins.tar.xz").is_file() {
            bail!(
                "{} exists and is not a gpu-pack folder: refusing to replace it",
                out.display()
            );
        }
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;

    eprintln!("xtask: gpu-pack: building the release binary and test binaries");
    crate::exec(cargo(&["build", "--release", "-p", "peftkit"]))?;
    // The model-shape rows' memory and step figures (issue 16).
    crate::exec(cargo(&[
        "build",
        "--release",
        "-p",
        "peftkit-adapters",
        "--example",
        "qlora_memory",
    ]))?;
    let mut bins = vec![
        root.join("target/release/peftkit"),
        root.join("target/release/examples/qlora_memory"),
    ];
    for (package, test) in [
        ("peftkit-adapters", "adapter_suite"),
        ("peftkit-distributed", "collectives"),
    ] {
        bins.push(test_binary(cargo, package, test)?);
    }
    let staging = out.join("bin");
    std::fs::create_dir_all(&staging)?;
    for bin in &bins {
        let name = bin.file_name().context("binary without a name")?;
        // Test binaries are named `NAME-HASH`: keep `NAME`.
        let name = name.to_string_lossy();
        let short = name.split('-').next().unwrap_or(&name).to_string();
        let dest = staging.join(&short);
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg(bin)
            .arg("-o")
            .arg(&dest)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("xtask: gpu-pack: strip failed or missing; copying {short} unstripped");
            std::fs::copy(bin, &dest)?;
        }
    }
    let mut tar = Command::new("tar");
    // `-f` is resolved against the working directory, not `-C`'s.
    tar.arg("-cJf")
        .arg(out.join("bins.tar.xz"))
        .arg("-C")
        .arg(&out)
        .arg("bin")
        .env("XZ_OPT", "-6 -T0");
    crate::exec(tar).context("tar -cJf (xz) the binaries")?;
    std::fs::remove_dir_all(&staging)?;

    eprintln!("xtask: gpu-pack: the hub cache's part the rows read");
    for (repo, keep) in HUB_REPOS {
        copy_repo(&hub.join(repo), &out.join("hf-home/hub").join(repo), *keep)?;
    }
    cut_imdb(python, &out.join("hf-home/hub/datasets--stanfordnlp--imdb"))?;

    for (from, to) in [
        (root.join("bench/gpu/run.sh"), "run.sh"),
        (root.join("bench/gpu/summary.py"), "summary.py"),
        (
            shared.join("bench/hf_peft_throughput.py"),
            "hf_peft_throughput.py",
        ),
    ] {
        std::fs::copy(&from, out.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let size = dir_size(&out)?;
    eprintln!(
        "xtask: gpu-pack: {} ({:.1} MiB; the device tool carries ≤ 64 MiB with the working tree)\n\
         run there:  bash target/gpu-pack/run.sh      (carry: [\"target/gpu-pack\"])\n\
         dry run:    bash target/gpu-pack/run.sh --dry-run",
        out.display(),
        size as f64 / (1 << 20) as f64
    );
    if size > CARRY_LIMIT / 2 {
        bail!(
            "{} is {} bytes: too large to travel with the working tree",
            out.display(),
            size
        );
    }
    Ok(())
}

/// Builds `package`'s integration test `test` in release mode and returns its executable.
fn test_binary(cargo: &dyn Fn(&[&str]) -> Command, package: &str, test: &str) -> Result<PathBuf> {
    let mut cmd = cargo(&[
        "test",
        "--release",
        "-p",
        package,
        "--test",
        test,
        "--no-run",
        "--message-format=json",
    ]);
    cmd.stderr(std::process::Stdio::inherit());
    let o = cmd
        .output()
        .with_context(|| format!("building {package}'s {test}"))?;
    if !o.status.success() {
        bail!("building {package}'s test {test} failed");
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == test)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no executable for {package}'s test {test}"))
}

/// Copies one hub repository as plain files (snapshots hold links into `blobs/`): `refs/` and
/// every snapshot's files named in `keep` (all where `None`).
fn copy_repo(from: &Path, to: &Path, keep: Option<&[&str]>) -> Result<()> {
    let refs = from.join("refs");
    std::fs::create_dir_all(to.join("refs"))?;
    for e in std::fs::read_dir(&refs).with_context(|| format!("reading {}", refs.display()))? {
        let e = e?;
        std::fs::copy(e.path(), to.join("refs").join(e.file_name()))?;
    }
    let snaps = from.join("snapshots");
    for e in std::fs::read_dir(&snaps).with_context(|| format!("reading {}", snaps.display()))? {
        let e = e?;
        copy_tree(&e.path(), &to.join("snapshots").join(e.file_name()), keep)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, keep: Option<&[&str]>) -> Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let path = e.path();
        let name = e.file_name();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name), keep)?;
        } else if keep.is_none_or(|k| k.contains(&name.to_string_lossy().as_ref())) {
            std::fs::create_dir_all(to)?;
            // `fs::copy` follows the snapshot's link to its blob.
            std::fs::copy(&path, to.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// Replaces the copied IMDB parquet files by rows spread evenly over them (the files are sorted by
/// label: the first rows alone would all be negative).
fn cut_imdb(python: &Path, repo: &Path) -> Result<()> {
    let has_pyarrow = |p: &Path| {
        Command::new(p)
            .args(["-c", "import pyarrow"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_pyarrow(python) {
        eprintln!(
            "xtask: gpu-pack: installing pyarrow into {}'s environment",
            python.display()
        );
        let mut pip = crate::pip_install(python);
        pip.arg("pyarrow");
        crate::exec(pip).context("pip install pyarrow (needed to cut IMDB)")?;
    }
    let script = format!(
        "import glob, pyarrow.parquet as pq\n\
         for split, n in (('train', {}), ('test', {})):\n\
         \x20   for p in glob.glob('{}/snapshots/*/plain_text/' + split + '-*.parquet'):\n\
         \x20       t = pq.read_table(p)\n\
         \x20       step = max(1, t.num_rows // n)\n\
         \x20       pq.write_table(t.take(list(range(0, t.num_rows, step))[:n]), p)\n",
        IMDB_ROWS.0,
        IMDB_ROWS.1,
        repo.display()
    );
    let mut py = Command::new(python);
    py.args(["-c", &script]);
    crate::exec(py).context("cutting IMDB")
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
