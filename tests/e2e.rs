//! End-to-end tests of the `peftkit` binary on the real MiniLM checkpoint and real SST-2 (small
//! subsets so that each run takes seconds): the run directory, loss falling, reload equality,
//! predict/eval, kill -9 and resume, and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{nan_weights, peftkit, random_minilm_adapter};
fn run_ok(args: &[&str]) -> Output {
    let out = peftkit().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "peftkit {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs peftkit expecting failure; returns its stderr, which must be one line.
fn run_err(args: &[&str]) -> String {
    let out = peftkit().args(args).output().unwrap();
    assert!(!out.status.success(), "peftkit {args:?} should have failed");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("peftkit: error: "), "{err}");
    last
}

/// `peftkit train` on a config, on CPU, expected to fail: its one-line error.
fn train_err(cfg: &Path, out: &str) -> String {
    run_err(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        out,
        "--device",
        "cpu",
    ])
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A short MiniLM run: 160 training rows, batch 16, 20 steps.
const SMALL: &[&str] = &[
    "--set",
    "data.train_subset=160",
    "--set",
    "train.per_device_train_batch_size=16",
    "--set",
    "train.num_train_epochs=2",
    "--set",
    "train.learning_rate=1e-4",
    "--set",
    "train.logging_steps=2",
    "--set",
    "train.warmup_ratio=0",
    "--device",
    "cpu",
    "--quiet",
];

#[test]
fn reproduce_writes_a_complete_run_directory_and_reloads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = vec![
        "reproduce",
        "minilm-sst2-full",
        "--output",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(SMALL);
    run_ok(&args);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "report.json",
        "report.md",
        "curves.svg",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing from the run directory");
    }
    assert!(
        run.join("checkpoints/checkpoint-10").is_dir()
            && run.join("checkpoints/checkpoint-20").is_dir()
    );
    let report = json(&run.join("report.json"));
    assert_eq!(report["reloaded_matches"], true);
    assert_eq!(report["train"]["global_step"], 20);
    // The training loss falls.
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 10);
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first, "training loss did not fall: {losses:?}");
    // The fine-tuned model beats the untrained head on the full validation split.
    let before = report["baseline"][0]["metrics"]["accuracy"]
        .as_f64()
        .unwrap();
    let after = report["final_results"][0]["metrics"]["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(report["final_results"][0]["rows"], 872);
    assert!(after > before + 0.05, "accuracy {before} -> {after}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        md.contains("## What differs and why") && md.contains("subset of 160"),
        "{md}"
    );
    // The saved model is a plain checkpoint directory: eval and predict read it.
    let model = run.join("model");
    let out = run_ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "nyu-mll/glue",
        "--dataset-config",
        "sst2",
        "--json",
        "--device",
        "cpu",
    ]);
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((ev["metrics"]["accuracy"].as_f64().unwrap() - after).abs() < 1e-12);
    let out = run_ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "a gorgeous, witty, seductive movie.",
        "--text",
        "dull and lifeless",
        "--json",
        "--device",
        "cpu",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let p: Vec<f64> = serde_json::from_value(l["probabilities"].clone()).unwrap();
        assert_eq!(p.len(), 2);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(l["logits"].as_array().unwrap().len(), 2);
        assert_eq!(
            l["label"],
            ["negative", "positive"][l["label_id"].as_u64().unwrap() as usize]
        );
    }
    assert_eq!(lines[0]["text"], "a gorgeous, witty, seductive movie.");
}

fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    peftkit_models::read_safetensors(&dir.join("model/model.safetensors")).unwrap()
}

#[test]
fn kill_and_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = "configs/minilm-sst2-full.toml";
    let common: Vec<&str> = [
        "--set",
        "train.save_strategy=steps",
        "--set",
        "train.eval_strategy=steps",
        "--set",
        "train.save_steps=4",
        "--set",
        "train.eval_steps=4",
        "--set",
        "train.max_steps=16",
        "--set",
        "data.eval_subset=64",
    ]
    .into_iter()
    .chain(SMALL.iter().copied())
    .collect();
    let a = tmp.path().join("a");
    let mut args = vec!["train", "--config", cfg, "--output", a.to_str().unwrap()];
    args.extend(&common);
    run_ok(&args);

    let b = tmp.path().join("b");
    let mut args = vec!["train", "--config", cfg, "--output", b.to_str().unwrap()];
    args.extend(&common);
    let mut child = peftkit()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // An unfinished run lives in `b.partial`; `b` appears only when it is complete.
    let first = tmp.path().join("b.partial/checkpoints/checkpoint-4");
    let start = Instant::now();
    while !first.is_dir() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the run was not killed: {status:?}"
    );
    assert!(!b.exists(), "a killed run must not leave an output");

    let mut args = vec![
        "train",
        "--config",
        cfg,
        "--output",
        b.to_str().unwrap(),
        "--resume",
        "latest",
    ];
    args.extend(&common);
    run_ok(&args);
    let (ra, rb) = (json(&a.join("report.json")), json(&b.join("report.json")));
    assert_eq!(ra["train"]["global_step"], rb["train"]["global_step"]);
    assert!(
        (ra["train"]["train_loss"].as_f64().unwrap() - rb["train"]["train_loss"].as_f64().unwrap())
            .abs()
            < 1e-6
    );
    assert_eq!(
        ra["final_results"][0]["metrics"],
        rb["final_results"][0]["metrics"]
    );
    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{na} differs by {d} after resume");
    }
}

fn write_parquet(path: &Path, texts: &[&str], labels: &[i64], names: &[&str]) {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let meta = std::collections::HashMap::from([(
        "huggingface".to_string(),
        serde_json::json!({"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}}).to_string(),
    )]);
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("text", DataType::Utf8, false),
            Field::new("label", DataType::Int64, false),
        ],
        meta,
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(texts.to_vec())),
            Arc::new(Int64Array::from(labels.to_vec())),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn local_config(dir: &Path, extra_data: &str) -> PathBuf {
    let cfg = dir.join("local.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nid = \"$PEFTKIT_MINILM_DIR\"\n[data]\ndataset = \"{}\"\neval_split = \"validation\"\n{extra_data}\n[adapter]\nkind = \"head\"\n[train]\nnum_train_epochs = 1\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();

    // Unknown key: file, line and key.
    let cfg = tmp.path().join("typo.toml");
    std::fs::write(&cfg, "[model]\nid = \"gpt2\"\n[data]\ndataset = \"x\"\n[adapter]\nkind = \"full\"\n[train]\nlearning_rat = 1\n").unwrap();
    let err = run_err(&["train", "--config", cfg.to_str().unwrap(), "--output", out]);
    assert!(
        err.contains("typo.toml")
            && err.contains("line 8")
            && err.contains("unknown field `learning_rat`"),
        "{err}"
    );
    let err = run_err(&[
        "reproduce",
        "minilm-sst2-full",
        "--set",
        "train.nope=1",
        "--output",
        out,
    ]);
    assert!(err.contains("unknown field `nope`"), "{err}");
    let err = run_err(&["reproduce", "no-such-experiment"]);
    assert!(
        err.contains("no experiment `no-such-experiment`") && err.contains("minilm-sst2-full"),
        "{err}"
    );

    // Labels out of range.
    write_parquet(
        &tmp.path().join("train.parquet"),
        &["good", "bad"],
        &[1, 7],
        &["neg", "pos"],
    );
    write_parquet(
        &tmp.path().join("validation.parquet"),
        &["fine"],
        &[1],
        &["neg", "pos"],
    );
    let cfg = local_config(tmp.path(), "");
    let err = train_err(&cfg, out);
    assert!(
        err.contains("train.parquet: row 1: label 7 is out of range 0..2"),
        "{err}"
    );

    // A column that is not there.
    write_parquet(
        &tmp.path().join("train.parquet"),
        &["good", "bad"],
        &[1, 0],
        &["neg", "pos"],
    );
    let cfg = local_config(tmp.path(), "text_column = \"sentence\"");
    let err = train_err(&cfg, out);
    assert!(
        err.contains("train.parquet: no column `sentence` (the file has: text, label)"),
        "{err}"
    );

    // A corrupt data file.
    std::fs::write(tmp.path().join("train.parquet"), b"PAR1 garbage").unwrap();
    let cfg = local_config(tmp.path(), "");
    let err = train_err(&cfg, out);
    assert!(
        err.contains("train.parquet: not a readable parquet file"),
        "{err}"
    );

    // A GPU that is not there.
    if !tch::Cuda::is_available() {
        let err = run_err(&[
            "reproduce",
            "minilm-sst2-head",
            "--device",
            "cuda",
            "--output",
            out,
        ]);
        assert!(err.contains("CUDA is not available"), "{err}");
    }
}

#[test]
fn gpt2_experiments_fail_clearly_without_weights_but_keep_the_label_statistics() {
    if std::env::var_os("HF_HUB_OFFLINE").is_none() {
        return; // with hub access the weights would be downloaded: nothing to check here
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("baseline");
    let err = run_err(&[
        "reproduce",
        "sst2-baseline",
        "--output",
        run.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("model `gpt2`: model.safetensors (the weights) not found in the hub cache"),
        "{err}"
    );
    assert!(err.contains("add `--set model.init=random`"), "{err}");
    // The unfinished run (in `baseline.partial`) keeps the label statistics.
    assert!(!run.exists());
    let report = json(&tmp.path().join("baseline.partial/report.json"));
    let pct = |i: usize, c: usize| report["label_stats"][i]["classes"][c][2].as_f64().unwrap();
    assert_eq!(
        format!("{:.2} / {:.2}", 100.0 * pct(0, 0), 100.0 * pct(0, 1)),
        "44.22 / 55.78"
    );
    assert_eq!(
        format!("{:.2} / {:.2}", 100.0 * pct(1, 0), 100.0 * pct(1, 1)),
        "49.08 / 50.92"
    );
    for name in ["rotten-tomatoes-full", "emotion-full", "imdb-head"] {
        let err = run_err(&[
            "reproduce",
            name,
            "--output",
            tmp.path().join(name).to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(err.contains("(the weights) not found"), "{name}: {err}");
    }
}

#[test]
fn random_init_runs_a_gpt2_experiment_of_the_real_shape_without_weights() {
    // Only the hub cache's gpt2 config.json and tokenizer are needed (no weights anywhere here).
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(&[
        "reproduce",
        "sst2-lora",
        "--output",
        run.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "model.init=random",
        "--set",
        "data.train_subset=16",
        "--set",
        "data.eval_subset=16",
        "--set",
        "data.max_length=32",
        "--set",
        "train.per_device_train_batch_size=8",
        "--set",
        "train.max_steps=2",
    ]);
    let base = run.join("random-init");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(base.join(f).is_file(), "random-init/{f} missing");
    }
    // GPT-2's real shape: Study A's published counts for LoRA r 8 on c_attn + both c_proj with
    // the score head ("812,544 of 125,253,888": peft counts the wrapped head twice).
    let report = json(&run.join("report.json"));
    assert_eq!(report["trainable_params"], 812_544);
    assert_eq!(report["all_params"], 125_253_888);
    assert_eq!(report["reloaded_matches"], true);
    assert_eq!(report["train"]["global_step"], 2);
    let notes = report["notes"].to_string();
    assert!(notes.contains("Random-initialised weights"), "{notes}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("weights: **random initialisation**"), "{md}");
    // Only figures that do not depend on the weights are set beside the published ones.
    assert_eq!(report["random_init"], true);
    let compared: Vec<&str> = report["comparison"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"].as_str().unwrap())
        .collect();
    assert_eq!(compared, ["eval_samples_per_second"]);
    // The adapter names the weights it was trained on; the resolved config records the init.
    let adapter = json(&run.join("adapter/adapter_config.json"));
    assert!(
        adapter["base_model_name_or_path"]
            .as_str()
            .unwrap()
            .ends_with("random-init"),
        "{adapter}"
    );
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("init = \"random\""), "{cfg}");
    // The base has transformers' initialisation: N(0, 0.02) weights, unit LayerNorm scales.
    let w: std::collections::HashMap<String, tch::Tensor> =
        peftkit_models::read_safetensors(&base.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let std = w["transformer.h.0.attn.c_attn.weight"]
        .std(true)
        .double_value(&[]);
    assert!((std - 0.02).abs() < 1e-3, "c_attn std {std}");
    let ln = &w["transformer.h.0.ln_1.weight"];
    assert!(ln.eq(1.0).all().int64_value(&[]) == 1, "ln_1 not ones");
    assert_eq!(w["score.weight"].size(), vec![2, 768]);
}

#[test]
fn list_shows_every_experiment() {
    let out = run_ok(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "sst2-distilbert-lora",
        "sst2-deberta-v3-lora",
        "emotion-modernbert-lora",
        "emotion-qwen2-lora",
        "imdb-llama-qlora",
        "minilm-sst2-full",
        "minilm-sst2-head",
        "rotten-tomatoes-full",
        "sst2-baseline",
        "sst2-full",
        "emotion-baseline",
        "emotion-full",
        "imdb-head",
        "minilm-sst2-qlora",
        "emotion-qlora",
        "emotion-qlora-tuned",
        "imdb-qlora",
        "emotion-prefix",
        "emotion-prefix-tuned",
        "minilm-sst2-prefix",
        "minilm-emotion-prefix",
        "minilm-emotion-lora",
        "minilm-sst2-dora",
        "minilm-sst2-ia3",
        "minilm-sst2-prompt",
        "minilm-sst2-ptuning",
        "minilm-sst2-adalora",
        "minilm-sst2-pissa",
        "sst2-dora",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} not listed:\n{text}"
        );
    }
    assert!(!text.contains("invalid"), "{text}");
}

#[test]
fn merge_writes_a_plain_checkpoint_with_the_adapter_logits() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["gpt2", "roberta", "bert"] {
        let out = tmp.path().join(arch);
        let base = fx.join(format!("tiny-{arch}"));
        let adapter = fx.join(format!("lora-{arch}/adapter"));
        run_ok(&[
            "merge",
            "--model",
            base.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        let (merged, report) = peftkit_models::SequenceClassifier::load(
            &out,
            &peftkit_models::LoadOptions::new(tch::Device::Cpu),
        )
        .unwrap();
        assert!(report.newly_initialized.is_empty());
        let g: std::collections::HashMap<String, tch::Tensor> =
            peftkit_models::read_safetensors(&base.join("golden.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let want: std::collections::HashMap<String, tch::Tensor> =
            peftkit_models::read_safetensors(&fx.join(format!("lora-{arch}/golden.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let got = merged
            .forward(
                &g["input_ids"],
                &g["attention_mask"],
                &peftkit_models::ForwardOptions::eval(),
            )
            .unwrap()
            .logits;
        let d = (got - &want["logits"]).abs().max().double_value(&[]);
        assert!(
            d <= 1e-5,
            "{arch}: merged checkpoint logits differ from peft's adapter logits by {d}"
        );
    }
}

/// `peftkit reproduce NAME` as the SMALL run for one epoch, evaluated on 128 validation rows,
/// with further `--set` overrides.
fn short_run(name: &str, run: &Path, overrides: &[&str]) {
    let mut args = vec!["reproduce", name, "--output", run.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&[
        "--set",
        "train.num_train_epochs=1",
        "--set",
        "data.eval_subset=128",
    ]);
    for o in overrides {
        args.extend_from_slice(&["--set", o]);
    }
    run_ok(&args);
}

#[test]
fn qlora_run_records_its_quantization_and_reloads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    short_run(
        "minilm-sst2-qlora",
        &run,
        &["adapter.bnb_4bit_quant_type=\"fp4\""],
    );
    let adapter = run.join("adapter");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "quantization_config.json",
        "id2label.json",
    ] {
        assert!(adapter.join(f).is_file(), "{f} missing from the adapter");
    }
    let q = json(&adapter.join("quantization_config.json"));
    assert_eq!(q["load_in_4bit"], true);
    assert_eq!(q["bnb_4bit_quant_type"], "fp4");
    assert_eq!(q["bnb_4bit_use_double_quant"], true);
    assert_eq!(q["bnb_4bit_compute_dtype"], "float32");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("kind = \"qlora\"") && cfg.contains("bnb_4bit_quant_type = \"fp4\""),
        "{cfg}"
    );
    let report = json(&run.join("report.json"));
    // The reload quantizes the base again from the recorded settings: the same predictions.
    assert_eq!(report["reloaded_matches"], true);
}

#[test]
fn prefix_run_saves_a_peft_prefix_adapter_that_reloads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    short_run(
        "minilm-sst2-prefix",
        &run,
        &[
            "adapter.num_virtual_tokens=5",
            "train.gradient_checkpointing=true",
        ],
    );
    let adapter = run.join("adapter");
    let cfg = json(&adapter.join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 5);
    assert_eq!(cfg["num_layers"], 6);
    assert_eq!(cfg["token_dim"], 384);
    let tensors: Vec<(String, tch::Tensor)> =
        peftkit_models::read_safetensors(&adapter.join("adapter_model.safetensors")).unwrap();
    let prefix = tensors
        .iter()
        .find(|(k, _)| k == "prompt_embeddings")
        .expect("prompt_embeddings saved");
    assert_eq!(prefix.1.size(), vec![5, 6 * 2 * 384]);
    assert!(tensors
        .iter()
        .any(|(k, _)| k == "base_model.classifier.weight"));
    let report = json(&run.join("report.json"));
    assert_eq!(report["reloaded_matches"], true);
    // Merging does not apply to prefix tuning: a clear error, nothing written.
    let out = tmp.path().join("merged");
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let err = run_err(&[
        "merge",
        "--model",
        &minilm,
        "--adapter",
        adapter.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("cannot be merged"), "{err}");
    assert!(!out.exists());
}

/// Saves an adapter made of `config` with random weights on MiniLM (2 labels), with labels.
fn predictions(args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn predict_with_several_adapters_routes_each_text() {
    let tmp = tempfile::tempdir().unwrap();
    let (lora, ia3) = (tmp.path().join("lora"), tmp.path().join("ia3"));
    random_minilm_adapter(
        &lora,
        peftkit_adapters::LoraConfig {
            init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
            use_dora: true,
            ..peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 8.0)
        }
        .into(),
    );
    random_minilm_adapter(
        &ia3,
        peftkit_adapters::Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"])
            .into(),
    );
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let texts = [
        "a gorgeous, witty, seductive movie.",
        "dull",
        "not bad at all, really",
    ];
    let mut args = vec!["predict", "--model", &minilm, "--json", "--device", "cpu"];
    let a = format!("s={}", lora.display());
    let b = format!("e={}", ia3.display());
    args.extend(["--adapter", &a, "--adapter", &b]);
    for (t, which) in texts.iter().zip(["s", "e", "__base__"]) {
        args.extend(["--text", t, "--text-adapter", which]);
    }
    let mixed = predictions(&args);
    assert_eq!(mixed.len(), 3);
    let alone = |adapter: Option<&Path>, text: &str| -> serde_json::Value {
        let mut args = vec![
            "predict", "--model", &minilm, "--json", "--device", "cpu", "--text", text,
        ];
        let dir;
        if let Some(d) = adapter {
            dir = d.display().to_string();
            args.extend(["--adapter", &dir]);
        }
        predictions(&args).remove(0)
    };
    // (The `__base__` row uses MiniLM's own head, initialised afresh by each load: compared in
    // the library's mixed-batch tests instead.)
    for (i, adapter) in [lora.as_path(), ia3.as_path()].iter().enumerate() {
        let want = alone(Some(adapter), texts[i]);
        let (got, want): (Vec<f64>, Vec<f64>) = (
            serde_json::from_value(mixed[i]["logits"].clone()).unwrap(),
            serde_json::from_value(want["logits"].clone()).unwrap(),
        );
        // Padded to the batch's longest text vs alone: equal to fp32 rounding.
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "text {i}: {got:?} vs {want:?}");
        }
        assert_eq!(mixed[i]["text"], texts[i]);
    }
    assert_eq!(mixed[0]["adapter"], "s");
    assert_eq!(mixed[2]["adapter"], "__base__");
    let err = run_err(&[
        "predict",
        "--model",
        &minilm,
        "--adapter",
        &a,
        "--text",
        "x",
        "--text-adapter",
        "nope",
    ]);
    assert!(
        err.contains("--text-adapter nope: no such adapter"),
        "{err}"
    );
}

#[test]
fn new_methods_run_through_the_pipeline_and_reload_identically() {
    let tmp = tempfile::tempdir().unwrap();
    // Prompt tuning with TEXT init (tokenized by the pipeline), P-tuning, AdaLoRA (10 steps:
    // the allocation runs through the trainer's hook), PiSSA (with its converted adapter).
    for (name, extra) in [
        ("minilm-sst2-prompt", vec![]),
        ("minilm-sst2-ptuning", vec![]),
        (
            "minilm-sst2-adalora",
            vec![
                "adapter.total_step=10",
                "adapter.tinit=2",
                "adapter.tfinal=2",
                "adapter.deltaT=2",
            ],
        ),
        ("minilm-sst2-pissa", vec![]),
    ] {
        let run = tmp.path().join(name);
        short_run(name, &run, &extra);
        let report = json(&run.join("report.json"));
        assert_eq!(report["reloaded_matches"], true, "{name}");
        let cfg = json(&run.join("adapter/adapter_config.json"));
        match name {
            "minilm-sst2-prompt" => assert_eq!(cfg["prompt_tuning_init"], "TEXT"),
            "minilm-sst2-ptuning" => assert_eq!(cfg["peft_type"], "P_TUNING"),
            "minilm-sst2-adalora" => {
                let pattern = cfg["rank_pattern"].as_object().expect("a rank pattern");
                let kept: usize = pattern
                    .values()
                    .map(|v| {
                        v.as_array()
                            .unwrap()
                            .iter()
                            .filter(|b| b.as_bool() == Some(true))
                            .count()
                    })
                    .sum();
                assert_eq!(kept, 8 * pattern.len(), "target_r 8 on average");
            }
            _ => {
                let converted = json(&run.join("adapter-converted/adapter_config.json"));
                assert_eq!(converted["r"], 16);
                assert_eq!(converted["init_lora_weights"], true);
            }
        }
    }
}

#[test]
fn non_finite_logits_in_eval_are_an_error_not_a_label() {
    let tmp = tempfile::tempdir().unwrap();
    let nan = tmp.path().join("nan");
    random_minilm_adapter(
        &nan,
        peftkit_adapters::LoraConfig::new(&["query"], 2, 4.0).into(),
    );
    nan_weights(&nan);
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let err = run_err(&[
        "eval",
        "--model",
        &minilm,
        "--adapter",
        nan.to_str().unwrap(),
        "--dataset",
        "nyu-mll/glue",
        "--dataset-config",
        "sst2",
        "--device",
        "cpu",
        "--batch-size",
        "128",
    ]);
    assert!(
        err.contains("non-finite logits (NaN or infinity) for 872 of 872 rows"),
        "{err}"
    );
}
