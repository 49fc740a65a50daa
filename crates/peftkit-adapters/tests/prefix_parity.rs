//! Prefix tuning against Python peft 0.21.2 (fixtures from `data/fixtures/make_fixtures.py --only
//! prefix`): peft-made adapters give peft's logits, counts equal peft's, and what peftkit saves
//! has peft's keys, shapes and config fields (the fixture script's `check_saved` step loads it in
//! peft).

mod common;
use common::*;

use peftkit_adapters::{AdapterConfig, PeftModel, PrefixTuningConfig};
use peftkit_models::ForwardOptions;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// DistilBERT has no past key values in transformers, so peft cannot prefix-tune it: no fixture.
const ARCHS: [&str; 6] = ["gpt2", "roberta", "bert", "llama", "qwen2", "mistral"];

#[test]
fn peft_prefix_adapters_reproduce_peft_logits() {
    for arch in ARCHS {
        let dir = fixtures().join(format!("prefix-{arch}"));
        let g = read(&fixtures().join(format!("tiny-{arch}/golden.safetensors")));
        let expected = read(&dir.join("golden.safetensors"));
        let model = PeftModel::from_pretrained(base(arch), &dir.join("adapter")).unwrap();
        assert!(model.active_prefix().is_some());
        let d = diff(&logits(&model, &g), &expected["logits"]);
        assert!(d <= 1e-5, "{arch}: logits differ from peft's by {d}");
    }
}

#[test]
fn trainable_counts_equal_peft() {
    for arch in ARCHS {
        let dir = fixtures().join(format!("prefix-{arch}"));
        let AdapterConfig::PrefixTuning(mut cfg) =
            AdapterConfig::from_file(&dir.join("adapter/adapter_config.json")).unwrap()
        else {
            panic!("{arch}: not a prefix-tuning config")
        };
        // As created for training (peft's counts were taken before saving).
        cfg.inference_mode = false;
        let model = PeftModel::new(base(arch), cfg).unwrap();
        let counts = read(&dir.join("golden.safetensors"))["counts"].shallow_clone();
        let want = (counts.int64_value(&[0]), counts.int64_value(&[1]));
        assert_eq!(model.parameter_counts(), want, "{arch}");
    }
}

#[test]
fn saved_adapters_have_pefts_keys_shapes_and_fields() {
    for arch in ARCHS {
        let dir = fixtures().join(format!("prefix-{arch}/adapter"));
        let model = PeftModel::from_pretrained(base(arch), &dir).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        model
            .save_pretrained(tmp.path(), Some("tiny"), None)
            .unwrap();
        let theirs = read(&dir.join("adapter_model.safetensors"));
        let ours = read(&tmp.path().join("adapter_model.safetensors"));
        let mut tk: Vec<_> = theirs.keys().collect();
        let mut ok: Vec<_> = ours.keys().collect();
        tk.sort();
        ok.sort();
        assert_eq!(tk, ok, "{arch}: keys");
        for (k, t) in &theirs {
            assert_eq!(t.size(), ours[k].size(), "{arch}: {k}");
            assert_eq!(t.kind(), ours[k].kind(), "{arch}: {k}");
            assert_eq!(diff(t, &ours[k]), 0.0, "{arch}: {k} values");
        }
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let (t, o) = (
            read(&dir.join("adapter_config.json")),
            read(&tmp.path().join("adapter_config.json")),
        );
        for key in [
            "peft_type",
            "task_type",
            "num_virtual_tokens",
            "token_dim",
            "num_layers",
            "num_attention_heads",
            "num_transformer_submodules",
            "prefix_projection",
            "encoder_hidden_size",
            "inference_mode",
        ] {
            assert_eq!(t[key], o[key], "{arch}: {key}");
        }
    }
}

#[test]
fn position_shift_is_pefts_and_can_be_turned_off() {
    let g = read(&fixtures().join("tiny-roberta/golden.safetensors"));
    let dir = fixtures().join("prefix-roberta/adapter");
    let shifted = PeftModel::from_pretrained(base("roberta"), &dir).unwrap();
    let tmp = edited_adapter(&dir, |cfg| {
        cfg["shift_position_ids"] = serde_json::json!(false)
    });
    let unshifted = PeftModel::from_pretrained(base("roberta"), tmp.path()).unwrap();
    assert!(diff(&logits(&shifted, &g), &logits(&unshifted, &g)) > 1e-4);
    // Written back only when it differs from peft's behaviour.
    unshifted
        .save_pretrained(&tmp.path().join("again"), None, None)
        .unwrap();
    let text = std::fs::read_to_string(tmp.path().join("again/adapter_config.json")).unwrap();
    assert!(text.contains("shift_position_ids"));
    shifted
        .save_pretrained(&tmp.path().join("peft"), None, None)
        .unwrap();
    let text = std::fs::read_to_string(tmp.path().join("peft/adapter_config.json")).unwrap();
    assert!(!text.contains("shift_position_ids"));
}

#[test]
fn too_long_inputs_after_the_prefix_are_an_error() {
    let model = PeftModel::new(base("bert"), PrefixTuningConfig::new(10)).unwrap();
    let positions = model.base().max_length();
    let ids = Tensor::ones([1, positions - 5], (Kind::Int64, Device::Cpu));
    let e = model
        .forward(&ids, &ids.ones_like(), &ForwardOptions::eval())
        .unwrap_err()
        .to_string();
    assert!(e.contains("after a prefix of 10 positions"), "{e}");
}

#[test]
fn prefix_configs_from_other_models_are_errors() {
    let dir = fixtures().join("prefix-bert/adapter");
    let tmp = edited_adapter(&dir, |cfg| cfg["num_layers"] = serde_json::json!(12));
    let e = PeftModel::from_pretrained(base("bert"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_layers is 12 in the adapter but 2 in the model"),
        "{e}"
    );
    // A prefix of the wrong size names the key.
    let tmp = edited_adapter(&dir, |cfg| cfg["num_virtual_tokens"] = serde_json::json!(4));
    let e = PeftModel::from_pretrained(base("bert"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prompt_embeddings") && e.contains("[3, 128]"),
        "{e}"
    );
}
