//! The project's own bad-input suite (issue 14 §6): one table, one row per broken input, run
//! through the `peftkit` binary. Each row copies the fixtures (`data/fixtures/tiny-bert` with a
//! small WordPiece `vocab.txt`, `data/fixtures/lora-bert/adapter`, a three-label parquet dataset
//! and an experiment TOML) into a temporary directory, breaks one thing, runs one command, and
//! checks that peftkit
//! - exits 1 (or clap's 2): no panic (101), no signal;
//! - ends stderr with one `peftkit: error: ...` line that names the file or key and what was
//!   expected (each substring is taken from the format string of the code path that reports it);
//! - wrote nothing: the temporary directory is byte-identical afterwards, except, where a row
//!   says so, the run directory's head that `pipeline::run_experiment` writes before it loads
//!   the data (`config.toml`) and the model (the label-statistics report); an `--output` that
//!   already exists is left as it was.
//!
//! Every class of issue 14 has rows: the experiment TOML and `--set`, the model's `config.json`,
//! safetensors weights (model and adapter), `adapter_config.json`, parquet data, the tokenizer,
//! outputs, and `--device`. `the_unbroken_fixture_runs_every_command` shows that each command
//! succeeds on the fixture as copied, so every row fails for its own reason.

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

mod common;
use common::fixture::{fixture, ints, put, texts, write_parquet};
use common::peftkit;

/// One bad input: a name, the command, its extra arguments, what the error line must say, the
/// run-directory files a failure may leave in `out/`, and how the fixture is broken.
struct Row {
    name: &'static str,
    cmd: &'static str,
    extra: &'static [&'static str],
    want: &'static [&'static str],
    leaves: &'static [&'static str],
    build: fn(&Path),
}

/// The commands, split at spaces; `@x` is the temporary directory's `x`.
const TRAIN: &str = "train --config @exp.toml --output @out --quiet";
const EVAL: &str = "eval --model @model --dataset @data/validation.parquet";
const EVAL_ADAPTER: &str =
    "eval --model @model --adapter @adapter --dataset @data/validation.parquet";
const PREDICT: &str = "predict --model @model --adapter @adapter --text good";
const PREDICT_FILE: &str =
    "predict --model @model --adapter @adapter --input @in.txt --output @out.jsonl";
const MERGE: &str = "merge --model @model --adapter @adapter --output @out";

/// What a failed run may leave in `out/`: nothing; the config written before the data is read;
/// also the label statistics written before the model is loaded (pipeline.rs).
const NOTHING: &[&str] = &[];
const CFG: &[&str] = &["config.toml"];
const REPORT: &[&str] = &["config.toml", "report.json", "report.md", "curves.svg"];

/// `"name": CMD [extra] [want] LEAVES |r| build;` (a macro so that each row stays two lines).
macro_rules! table {
    ($($name:literal: $cmd:ident $extra:tt $want:tt $leaves:ident |$r:ident| $build:expr;)*) => {
        vec![$(Row { name: $name, cmd: $cmd, extra: &$extra, want: &$want, leaves: $leaves, build: |$r: &Path| { $build; } },)*]
    };
}

fn rows() -> Vec<Row> {
    table! {
        // Experiment TOML (src/config.rs, src/config/adapter.rs, peftkit-train args.rs).
        "toml: malformed": TRAIN [] ["exp.toml: TOML parse error at line"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("[data]", "[data"));
        "toml: unknown key": TRAIN [] ["exp.toml: TOML parse error at line 9", "unknown field `learning_rat`"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("[train]\n", "[train]\nlearning_rat = 1\n"));
        "toml: wrong type": TRAIN [] ["exp.toml: TOML parse error at line 5", "invalid type: string \"long\", expected usize"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("max_length = 16", "max_length = \"long\""));
        "toml: unknown adapter kind": TRAIN [] ["exp.toml", "[adapter]: unknown kind `loha` (expected one of baseline, full, head, lora"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("kind = \"head\"", "kind = \"loha\""));
        "toml: missing required field": TRAIN [] ["exp.toml", "missing field `dataset`"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("dataset = ", "# dataset = "));
        "toml: adapter r = 0": TRAIN [] ["exp.toml", "[adapter]: r must be positive, got 0"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("kind = \"head\"", "kind = \"lora\"\nr = 0\ntarget_modules = [\"query\"]"));
        "toml: unsupported dtype": TRAIN [] ["exp.toml: model.dtype `float16` is not supported"] NOTHING
            |r| edit(r, "exp.toml", |s| s.replace("[data]", "dtype = \"float16\"\n[data]"));
        "--set: not KEY=VALUE": TRAIN ["--set", "train.max_steps"] ["--set `train.max_steps`: expected KEY=VALUE"] NOTHING
            |r| unbroken(r);
        "--set: empty key segment": TRAIN ["--set", "train..max_steps=1"] ["--set `train..max_steps=1`: empty key segment"] NOTHING
            |r| unbroken(r);
        "--set: unknown key": TRAIN ["--set", "train.max_stepz=1"] ["exp.toml: after --set train.max_stepz=1", "unknown field `max_stepz`"] NOTHING
            |r| unbroken(r);
        "--set: into a value": TRAIN ["--set", "model.id.x=1"] ["--set model.id.x: `id` is not a section"] NOTHING
            |r| unbroken(r);
        "--set: batch size 0": TRAIN ["--set", "train.per_device_train_batch_size=0"] ["exp.toml: [train]: batch sizes must be at least 1"] NOTHING
            |r| unbroken(r);
        // The model's config.json (peftkit-data hub.rs, peftkit-tokenize, peftkit-models config.rs).
        "config.json: missing": MERGE [] ["model `", "config.json not found in"] NOTHING
            |r| rm(r, "model/config.json");
        "config.json: malformed JSON": MERGE [] ["model/config.json: invalid JSON"] NOTHING
            |r| put(r, "model/config.json", "{\"model_type\": \"bert\",");
        "config.json: malformed, not blamed on the tokenizer": PREDICT [] ["loading `", "model/config.json: invalid JSON"] NOTHING
            |r| put(r, "model/config.json", "{\"model_type\": \"bert\",");
        "config.json: missing field": MERGE [] ["model/config.json: missing field `hidden_act`"] NOTHING
            |r| patch(r, "model/config.json", |v| { v.as_object_mut().unwrap().remove("hidden_act"); });
        "config.json: vocab_size -1": MERGE [] ["model/config.json: `vocab_size` is -1: it must be a positive number"] NOTHING
            |r| patch(r, "model/config.json", |v| v["vocab_size"] = json!(-1));
        "config.json: num_hidden_layers -3": MERGE [] ["model/config.json: `num_hidden_layers` is -3"] NOTHING
            |r| patch(r, "model/config.json", |v| v["num_hidden_layers"] = json!(-3));
        "output: merge --output is a file": MERGE [] ["exists and is not a directory: refusing to replace it"] NOTHING
            |r| put(r, "out", "precious\n");
        "config.json: hidden_size 0": MERGE [] ["model/config.json: `hidden_size` is 0: it must be a positive number"] NOTHING
            |r| patch(r, "model/config.json", |v| v["hidden_size"] = json!(0));
        "config.json: heads do not divide": MERGE [] ["model/config.json: hidden size 32 is not a positive multiple of the 5 attention heads"] NOTHING
            |r| patch(r, "model/config.json", |v| v["num_attention_heads"] = json!(5));
        "config.json: unknown model_type": MERGE [] ["model/config.json: model_type `t5` is not supported"] NOTHING
            |r| patch(r, "model/config.json", |v| v["model_type"] = json!("t5"));
        // safetensors weights (peftkit-models checkpoint.rs, peftkit-adapters format.rs).
        "weights: truncated": MERGE [] ["model/model.safetensors: not a valid safetensors file"] NOTHING
            |r| corrupt(r, "model/model.safetensors", |b| b[..b.len() / 2].to_vec());
        "weights: garbage header": MERGE [] ["model/model.safetensors: not a valid safetensors file"] NOTHING
            |r| corrupt(r, "model/model.safetensors", |mut b| { let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize; b[8..8 + n].fill(b'#'); b });
        "weights: wrong shape": MERGE [] ["model/model.safetensors: `bert.embeddings.word_embeddings.weight` has shape [10, 32] in the checkpoint but [1000, 32] in the model"] NOTHING
            |r| tensor(r, "model/model.safetensors", "bert.embeddings.word_embeddings.weight", &[10, 32]);
        "weights: unexpected key": MERGE [] ["model/model.safetensors: unexpected key `bert.bogus.weight`: the BertForSequenceClassification model has no such parameter"] NOTHING
            |r| tensor(r, "model/model.safetensors", "bert.bogus.weight", &[2]);
        "weights: truncated, in training": TRAIN [] ["loading `", "model/model.safetensors: not a valid safetensors file"] REPORT
            |r| corrupt(r, "model/model.safetensors", |b| b[..b.len() / 2].to_vec());
        "adapter weights: wrong shape": PREDICT [] ["adapter/adapter_model.safetensors: `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight` shape [4, 16] in the adapter but [4, 32] in the model"] NOTHING
            |r| tensor(r, "adapter/adapter_model.safetensors", "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight", &[4, 16]);
        "adapter weights: unexpected key": PREDICT [] ["adapter/adapter_model.safetensors: `base_model.model.bert.bogus.lora_A.weight` unexpected"] NOTHING
            |r| tensor(r, "adapter/adapter_model.safetensors", "base_model.model.bert.bogus.lora_A.weight", &[4, 32]);
        "adapter weights: missing": EVAL_ADAPTER [] ["loading the adapter", "adapter/adapter_model.safetensors: No such file or directory"] NOTHING
            |r| rm(r, "adapter/adapter_model.safetensors");
        // adapter_config.json (peftkit-adapters config.rs, tuner.rs, layer_tuner.rs).
        "adapter_config.json: malformed": PREDICT [] ["adapter/adapter_config.json: invalid JSON"] NOTHING
            |r| put(r, "adapter/adapter_config.json", "{\"peft_type\": \"LORA\",");
        "adapter_config.json: unknown peft_type": EVAL_ADAPTER [] ["adapter/adapter_config.json: peft_type `LOHA` is not supported"] NOTHING
            |r| patch(r, "adapter/adapter_config.json", |v| v["peft_type"] = json!("LOHA"));
        "adapter_config.json: r = 0": PREDICT [] ["adapter/adapter_config.json: r must be positive, got 0"] NOTHING
            |r| patch(r, "adapter/adapter_config.json", |v| v["r"] = json!(0));
        "adapter_config.json: no target matches": EVAL_ADAPTER [] ["loading the adapter", "target_modules [\"nope\"] matched no module of the model"] NOTHING
            |r| patch(r, "adapter/adapter_config.json", |v| v["target_modules"] = json!(["nope"]));
        // Data (peftkit-data read.rs): the training split is read first.
        "data: no text column": TRAIN [] ["data/train.parquet: no column `text` or `sentence`", "(the file has: body, label)"] CFG
            |r| write_parquet(&r.join("data/train.parquet"), vec![("body", texts(&["good"])), ("label", ints(&[2]))]);
        "data: no label column": TRAIN [] ["data/train.parquet: no column `label` (the file has: text, stars)"] CFG
            |r| write_parquet(&r.join("data/train.parquet"), vec![("text", texts(&["good"])), ("stars", ints(&[2]))]);
        "data: text column of numbers": TRAIN [] ["data/train.parquet: column `text` is ", "expected string"] CFG
            |r| write_parquet(&r.join("data/train.parquet"), vec![("text", ints(&[1, 2])), ("label", ints(&[0, 1]))]);
        "data: corrupt parquet": TRAIN [] ["data/train.parquet: not a readable parquet file"] CFG
            |r| put(r, "data/train.parquet", "PAR1 garbage");
        "data: label out of range": TRAIN [] ["data/train.parquet: row 1: label 7 is out of range 0..3"] CFG
            |r| write_parquet(&r.join("data/train.parquet"), vec![("text", texts(&["good", "bad"])), ("label", ints(&[2, 7]))]);
        // A 1 kB file whose page headers claim more than their column chunk holds (a fuzz find that kept
        // the parquet reader busy for minutes): refused at once, naming the page.
        "data: page header claiming more than its chunk": TRAIN [] ["data/train.parquet: not a readable parquet file", "row group 0 column `sentence`: malformed page header at byte 51: 17 bytes claimed where 14 are left"] CFG
            |r| { fs::create_dir_all(r.join("data")).unwrap(); fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parquet/regression-slow-f5694880859dd85912c55c3e2eb0129399b27a10"), r.join("data/train.parquet")).unwrap(); };
        "data: empty file": TRAIN [] ["data/train.parquet: not a readable parquet file"] CFG
            |r| put(r, "data/train.parquet", "");
        "data: no rows": TRAIN [] ["data/train.parquet has no rows"] CFG
            |r| write_parquet(&r.join("data/train.parquet"), vec![("text", texts(&[])), ("label", ints(&[]))]);
        // The tokenizer (peftkit-tokenize tokenizer.rs).
        "tokenizer: missing": EVAL [] ["loading the tokenizer of", "no tokenizer.json, vocab.json + merges.txt, or vocab.txt"] NOTHING
            |r| rm(r, "model/vocab.txt");
        "tokenizer: malformed tokenizer.json": EVAL [] ["loading the tokenizer of", "model/tokenizer.json: "] NOTHING
            |r| put(r, "model/tokenizer.json", "{\"version\": \"1.0\",");
        "tokenizer: vocab.txt without [CLS]": EVAL [] ["model/vocab.txt: the bert tokenizer needs the special token `[CLS]`"] NOTHING
            |r| put(r, "model/vocab.txt", "[PAD]\n[UNK]\n[SEP]\ngood\n");
        // Outputs: an existing file is refused and left as it was.
        "output: train --output is a file": TRAIN [] ["--output ", "out: exists and is not a directory: refusing to replace it"] NOTHING
            |r| put(r, "out", "precious\n");
        "output: train --output is a user's directory": TRAIN [] ["out: a non-empty directory that peftkit did not write (no .peftkit file)"] NOTHING
            |r| put(r, "out/thesis.tex", "precious\n");
        "output: merge --output is a user's directory": MERGE [] ["merge --output ", "out: a non-empty directory that peftkit did not write"] NOTHING
            |r| put(r, "out/thesis.tex", "precious\n");
        "output: train's working directory is a user's": TRAIN [] ["out.partial: exists and peftkit did not write it"] NOTHING
            |r| put(r, "out.partial/notes.txt", "precious\n");
        "output: predict --output exists": PREDICT_FILE [] ["out.jsonl exists: peftkit does not replace files"] NOTHING
            |r| { put(r, "in.txt", "good film\n"); put(r, "out.jsonl", "precious\n") };
        // Arguments that size or index (src/main.rs, src/predict.rs).
        "args: eval --max-length 1": EVAL ["--max-length", "1"] ["--max-length 1: expected at least 2"] NOTHING
            |r| unbroken(r);
        "args: predict --max-length 0": PREDICT ["--max-length", "0"] ["--max-length 0: expected at least 2"] NOTHING
            |r| unbroken(r);
        // --device (peftkit-models device.rs).
        "device: cudaX": PREDICT ["--device", "cudaX"] ["unknown device `cudax` (expected cpu, cuda, cuda:N or auto)"] NOTHING
            |r| unbroken(r);
        "device: cuda:abc": EVAL ["--device", "cuda:abc"] ["unknown device `cuda:abc`"] NOTHING
            |r| unbroken(r);
        "device: cuda:99": TRAIN ["--device", "cuda:99"] ["device `cuda:99` requested but"] CFG
            |r| unbroken(r);
    }
}

#[test]
fn bad_inputs_fail_with_one_clear_line_and_write_nothing() {
    assert_rows(rows());
}

#[test]
fn the_unbroken_fixture_runs_every_command() {
    for cmd in [TRAIN, EVAL, EVAL_ADAPTER, PREDICT, MERGE] {
        let tmp = fixture();
        let args = argv(tmp.path(), cmd, &[]);
        let out = peftkit().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "peftkit {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs the rows on a few threads and reports every failure, each with its command and stderr.
fn assert_rows(rows: Vec<Row>) {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(row) = rows.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = check(row) {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}

fn check(row: &Row) -> Result<(), String> {
    let tmp = fixture();
    let r = tmp.path();
    (row.build)(r);
    let before = snapshot(r);
    let args = argv(r, row.cmd, row.extra);
    let out = peftkit()
        .args(&args)
        .output()
        .map_err(|e| format!("[{}] cannot run peftkit: {e}", row.name))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let fail = |why: String| -> Result<(), String> {
        Err(format!(
            "[{}] {why}\n  peftkit {}\n  stderr: {}",
            row.name,
            args.join(" "),
            err.trim_end()
        ))
    };
    if !matches!(out.status.code(), Some(1 | 2)) {
        return fail(format!(
            "exit status {:?}: expected 1 or 2 (101 is a panic; none, a signal)",
            out.status
        ));
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        return fail("a panic".into());
    }
    let line = err.lines().last().unwrap_or_default();
    if !line.starts_with("peftkit: error: ") && !line.starts_with("error: ") {
        return fail("stderr does not end with the one-line error".into());
    }
    if let Some(w) = row.want.iter().find(|w| !line.contains(**w)) {
        return fail(format!("the error does not say `{w}`"));
    }
    let mut after = snapshot(r);
    if !row.leaves.is_empty() {
        // The run's working directory (`out.partial`, with its marker): `out` is not touched.
        let work = Path::new("out.partial");
        after.remove(work);
        after.remove(&work.join(".peftkit"));
        for f in row.leaves {
            after.remove(&work.join(f));
        }
    }
    let changed: BTreeSet<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    if !changed.is_empty() {
        return fail(format!("written, changed or removed: {changed:?}"));
    }
    Ok(())
}

/// The command line: `@x` is `root/x`; `--device cpu` unless the row gives a device (merge has
/// no `--device`).
fn argv(root: &Path, cmd: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = cmd
        .split(' ')
        .chain(extra.iter().copied())
        .map(|a| match a.strip_prefix('@') {
            Some(rel) => root.join(rel).display().to_string(),
            None => a.to_string(),
        })
        .collect();
    if !cmd.starts_with("merge") && !extra.contains(&"--device") {
        args.extend(["--device".to_string(), "cpu".to_string()]);
    }
    args
}

/// Every path under `root` with its bytes (`None`: a directory).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                dirs.push(path);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Rewrites `root/file` through `f`.
fn corrupt(root: &Path, file: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let path = root.join(file);
    let bytes = f(fs::read(&path).unwrap());
    fs::write(&path, bytes).unwrap();
}

fn edit(root: &Path, file: &str, f: impl FnOnce(String) -> String) {
    corrupt(root, file, |b| {
        f(String::from_utf8(b).unwrap()).into_bytes()
    });
}

/// Rewrites the JSON file `root/file` through `f`.
fn patch(root: &Path, file: &str, f: impl FnOnce(&mut serde_json::Value)) {
    edit(root, file, |s| {
        let mut v: serde_json::Value = serde_json::from_str(&s).unwrap();
        f(&mut v);
        v.to_string()
    });
}

/// A row that breaks nothing in the fixture (its arguments are the bad input).
fn unbroken(_: &Path) {}

fn rm(root: &Path, file: &str) {
    fs::remove_file(root.join(file)).unwrap();
}

/// Sets tensor `key` of a safetensors file to zeros of `shape` (adding it if absent).
fn tensor(root: &Path, file: &str, key: &str, shape: &[i64]) {
    let path = root.join(file);
    let mut tensors = peftkit_models::read_safetensors(&path).unwrap();
    tensors.retain(|(k, _)| k != key);
    let zeros = tch::Tensor::zeros(shape, (tch::Kind::Float, tch::Device::Cpu));
    tensors.push((key.to_string(), zeros));
    peftkit_models::save_safetensors(&path, &tensors).unwrap();
}
