//! The loaders of files a user may download from anywhere — `config.json`, `adapter_config.json`,
//! safetensors, parquet, `tokenizer.json`, `trainer_state.json` and the experiment TOML — as
//! functions of arbitrary bytes, for coverage-guided fuzzing (`cargo xtask fuzz TARGET`, over
//! `fuzz/`) and for the property tests that run in CI (`tests/properties.rs`).
//!
//! Each target writes the bytes where the loader expects its file (a directory of this
//! process under the system's temporary directory) and calls the loader as peftkit does. It
//! panics — which is what the fuzzer reports — when the loader panics, or when it fails with a
//! message that does not name the file it read.
//!
//! ```
//! peftkit_fuzz::run("config_json", br#"{"model_type": "bert", "hidden_size": 0}"#);
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target: its name, the file name its loader reads, and the check.
pub type Target = (&'static str, &'static str, fn(&Path));

/// The targets.
pub const TARGETS: &[Target] = &[
    ("config_json", "config.json", config_json),
    (
        "adapter_config_json",
        "adapter_config.json",
        adapter_config_json,
    ),
    ("safetensors", "model.safetensors", safetensors),
    ("parquet", "train.parquet", parquet),
    ("tokenizer_json", "tokenizer.json", tokenizer_json),
    (
        "trainer_state_json",
        "trainer_state.json",
        trainer_state_json,
    ),
    ("experiment_toml", "experiment.toml", experiment_toml),
];

/// This process's scratch directory (created once; one per target so that files of different
/// targets never meet).
fn scratch(target: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("peftkit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the scratch directory");
        d
    });
    let d = root.join(target);
    std::fs::create_dir_all(&d).expect("create the scratch directory");
    d
}

/// Runs target `name` on `data`.
///
/// # Panics
/// On an unknown target, and where the loader misbehaves (see the crate's documentation).
pub fn run(name: &str, data: &[u8]) {
    let (_, file, check) = TARGETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"));
    let path = scratch(name).join(file);
    std::fs::write(&path, data).expect("write the input");
    check(&path);
}

/// A failure must name the file (its name, at least) in its one-line message.
fn names_file(result: Result<(), String>, path: &Path) {
    if let Err(msg) = result {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            msg.contains(&*name),
            "the error does not name {name}: {msg}"
        );
        assert!(!msg.trim().is_empty());
    }
}

fn config_json(path: &Path) {
    let r = peftkit_models::ModelConfig::from_file(path).map(|_| ());
    names_file(r.map_err(|e| e.to_string()), path);
}

fn adapter_config_json(path: &Path) {
    let r = peftkit_adapters::AdapterConfig::from_file(path).map(|_| ());
    names_file(r.map_err(|e| e.to_string()), path);
}

fn safetensors(path: &Path) {
    let r = peftkit_models::read_safetensors(path).map(|_| ());
    names_file(r.map_err(|e| e.to_string()), path);
}

fn parquet(path: &Path) {
    let r = peftkit_data::read_parquet(path, &Default::default()).map(|split| {
        // What training reads of a split: its rows, labels and statistics.
        let _ = split.label_stats();
    });
    names_file(r.map_err(|e| e.to_string()), path);
}

fn tokenizer_json(path: &Path) {
    let dir = path.parent().unwrap();
    let r = peftkit_tokenize::TextTokenizer::from_dir_with_family(
        dir,
        Some(peftkit_tokenize::Family::Bert),
    )
    .and_then(|t| t.encode("a good film, not a bad one").map(|_| ()));
    names_file(r.map_err(|e| e.to_string()), path);
}

fn trainer_state_json(path: &Path) {
    let r = peftkit_train::TrainerState::from_file(path).map(|_| ());
    names_file(r.map_err(|e| e.to_string()), path);
}

fn experiment_toml(path: &Path) {
    let r = match std::fs::read_to_string(path) {
        // Not UTF-8: peftkit reads the file as text and says so, naming it.
        Err(_) => Ok(()),
        Ok(text) => peftkit::config::ExperimentConfig::parse(&text, path, &[]).map(|_| ()),
    };
    names_file(r.map_err(|e| format!("{e:#}")), path);
}
