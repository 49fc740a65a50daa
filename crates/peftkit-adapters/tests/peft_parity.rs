//! peft files both ways: adapters made by Python peft (fixtures from
//! `data/fixtures/make_fixtures.py`, peft 0.21.2) load in peftkit with the same logits, and
//! adapters peftkit saves have peft's keys, shapes, dtypes and config fields.

mod common;
use common::*;

use peftkit_adapters::{AdapterError, LoraConfig, PeftModel};
use peftkit_models::{read_safetensors, LoadOptions, SequenceClassifier};
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[test]
fn peft_adapters_reproduce_peft_logits() {
    for arch in ["gpt2", "roberta", "bert"] {
        let dir = fixtures().join(format!("lora-{arch}"));
        let inputs = read(&fixtures().join(format!("tiny-{arch}/golden.safetensors")));
        let expected = read(&dir.join("golden.safetensors"));
        let mut model = PeftModel::from_pretrained(base(arch), &dir.join("adapter")).unwrap();
        let d = diff(&logits(&model, &inputs), &expected["logits"]);
        assert!(d <= 1e-5, "{arch}: logits differ from peft's by {d}");
        let disabled = model.with_adapter_disabled(|m| logits(m, &inputs));
        let d = diff(&disabled, &expected["disabled_logits"]);
        assert!(
            d <= 1e-5,
            "{arch}: disabled-adapter logits differ from peft's by {d}"
        );
        // peft's get_nb_trainable_parameters
        let counts: Vec<i64> = Vec::try_from(&expected["counts"]).unwrap();
        let (t, a) = model.parameter_counts();
        assert_eq!((t, a), (counts[0], counts[1]), "{arch}: parameter counts");
    }
}

#[test]
fn gpt2_conv1d_sets_fan_in_fan_out() {
    let model = PeftModel::new(base("gpt2"), LoraConfig::new(&["c_attn"], 4, 8.0)).unwrap();
    assert!(model.lora_config().unwrap().fan_in_fan_out);
    assert_eq!(
        model.adapted_modules(),
        vec!["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    );
    let model = PeftModel::new(base("bert"), LoraConfig::new(&["query"], 4, 8.0)).unwrap();
    assert!(!model.lora_config().unwrap().fan_in_fan_out);
}

#[test]
fn saved_adapters_have_peft_keys_shapes_dtypes_and_config() {
    for arch in ["gpt2", "roberta", "bert"] {
        let dir = fixtures().join(format!("lora-{arch}/adapter"));
        let model = PeftModel::from_pretrained(base(arch), &dir).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        model.save_pretrained(&out, Some("tiny"), None).unwrap();
        let sig = |p: &Path| -> Vec<(String, Vec<i64>, Kind)> {
            read_safetensors(&p.join("adapter_model.safetensors"))
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.size(), t.kind()))
                .collect()
        };
        assert_eq!(sig(&out), sig(&dir), "{arch}: tensors");
        let ours: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let theirs: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        for field in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "bias",
            "fan_in_fan_out",
            "modules_to_save",
            "init_lora_weights",
            "use_rslora",
            "use_dora",
            "layers_to_transform",
            "layers_pattern",
            "rank_pattern",
            "alpha_pattern",
            "inference_mode",
            "lora_bias",
            "revision",
        ] {
            assert_eq!(
                ours[field], theirs[field],
                "{arch}: adapter_config.json field `{field}`"
            );
        }
        assert_eq!(ours["base_model_name_or_path"], "tiny");
        // Loading our file gives back the same values.
        let again = PeftModel::from_pretrained(base(arch), &out).unwrap();
        let inputs = read(&fixtures().join(format!("tiny-{arch}/golden.safetensors")));
        assert_eq!(
            diff(&logits(&again, &inputs), &logits(&model, &inputs)),
            0.0
        );
    }
}

/// A copy of a peft adapter directory with its tensors changed by `edit`.
fn edited(arch: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let src = fixtures().join(format!("lora-{arch}/adapter"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut t = read_safetensors(&src.join("adapter_model.safetensors")).unwrap();
    edit(&mut t);
    peftkit_models::save_safetensors(&tmp.path().join("adapter_model.safetensors"), &t).unwrap();
    tmp
}

#[test]
fn bad_adapters_are_errors_naming_the_key() {
    let err = PeftModel::from_pretrained(
        base("gpt2"),
        edited("gpt2", |t| {
            t.retain(|(k, _)| !k.contains("h.1.attn.c_attn.lora_B"))
        })
        .path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`base_model.model.transformer.h.1.attn.c_attn.lora_B.weight` missing"),
        "{err}"
    );
    let err = PeftModel::from_pretrained(
        base("gpt2"),
        edited("gpt2", |t| {
            t.push((
                "base_model.model.transformer.h.9.attn.c_attn.lora_A.weight".into(),
                Tensor::zeros([4, 32], (Kind::Float, Device::Cpu)),
            ))
        })
        .path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`base_model.model.transformer.h.9.attn.c_attn.lora_A.weight` unexpected"),
        "{err}"
    );
    let err = PeftModel::from_pretrained(
        base("gpt2"),
        edited("gpt2", |t| t.retain(|(k, _)| !k.contains("score"))).path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`base_model.model.score.weight` missing: a sequence-classification adapter must carry its trained head"), "{err}");
    // An adapter for another base: the RoBERTa adapter's modules do not exist in BERT.
    let err = PeftModel::from_pretrained(base("bert"), &fixtures().join("lora-roberta/adapter"))
        .unwrap_err();
    assert!(matches!(err, AdapterError::Mismatch { .. }), "{err}");
    // Unsupported settings are refused rather than ignored.
    let tmp = edited("bert", |_| {});
    let cfg_path = tmp.path().join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["lora_bias"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = PeftModel::from_pretrained(base("bert"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`lora_bias: true` is not supported"), "{err}");
    // A DoRA config over plain LoRA weights: the magnitude vectors are missing, by name.
    cfg["lora_bias"] = serde_json::json!(false);
    cfg["use_dora"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = PeftModel::from_pretrained(base("bert"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_magnitude_vector` missing"), "{err}");
}

#[test]
fn a_target_list_matching_nothing_lists_the_modules() {
    let err = PeftModel::new(
        base("gpt2"),
        LoraConfig::new(&["q_proj", "v_proj"], 8, 16.0),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "target_modules [\"q_proj\", \"v_proj\"] matched no module of the model; its linear modules are: c_attn, c_fc, c_proj, score (e.g. `transformer.h.0.attn.c_attn`)"
    );
}

#[test]
fn several_named_adapters_switch_factors_and_heads() {
    let inputs = read(&fixtures().join("tiny-roberta/golden.safetensors"));
    let mut model =
        PeftModel::from_pretrained(base("roberta"), &fixtures().join("lora-roberta/adapter"))
            .unwrap();
    let first = logits(&model, &inputs);
    let cfg = LoraConfig {
        init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
        ..LoraConfig::new(&["key"], 2, 4.0)
    };
    model.add_adapter("other", cfg).unwrap();
    assert_eq!(model.active_adapter(), "default");
    assert_eq!(
        diff(&logits(&model, &inputs), &first),
        0.0,
        "adding an adapter changed the active one"
    );
    model.set_adapter("other").unwrap();
    let second = logits(&model, &inputs);
    assert!(diff(&second, &first) > 1e-4);
    assert_eq!(
        model.adapted_modules(),
        vec![
            "roberta.encoder.layer.0.attention.self.key",
            "roberta.encoder.layer.1.attention.self.key"
        ]
    );
    model.set_adapter("default").unwrap();
    assert_eq!(
        diff(&logits(&model, &inputs), &first),
        0.0,
        "switching back did not restore the adapter"
    );
    assert!(model
        .set_adapter("nope")
        .unwrap_err()
        .to_string()
        .contains("no adapter `nope` (there are: default, other)"));
}

#[test]
fn gradient_checkpointing_with_lora_gives_the_same_gradients() {
    use peftkit_models::TrainModel;
    for arch in ["bert", "gpt2"] {
        // The trainer fixtures' configs have dropout off: train-mode passes are deterministic.
        let load = || {
            SequenceClassifier::load(
                &fixtures().join(format!("trainer-{arch}")),
                &LoadOptions::new(Device::Cpu),
            )
            .unwrap()
            .0
        };
        let inputs = read(&fixtures().join(format!("tiny-{arch}/golden.safetensors")));
        // The second model gets the first one's adapter from disk: no dependence on the global
        // generator, which parallel tests share.
        let cfg = LoraConfig {
            init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
            ..LoraConfig::new(&["c_attn", "query", "value"], 4, 8.0)
        };
        let first = PeftModel::new(load(), cfg).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        first.save_pretrained(tmp.path(), None, None).unwrap();
        let grads = |checkpointing: bool| {
            let model = PeftModel::from_pretrained(load(), tmp.path()).unwrap();
            if checkpointing {
                assert!(model.enable_gradient_checkpointing());
            }
            let loss = model
                .loss_backward(
                    &inputs["input_ids"],
                    &inputs["attention_mask"],
                    &inputs["labels"],
                    &Tensor::from(1.0f32),
                )
                .unwrap();
            let g: Vec<(String, Tensor)> = model
                .trainable_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.grad()))
                .collect();
            (loss, g)
        };
        let (l1, g1) = grads(false);
        let (l2, g2) = grads(true);
        assert!(
            diff(&l1, &l2) <= 1e-6,
            "{arch}: loss {} vs {} with checkpointing",
            l1.double_value(&[]),
            l2.double_value(&[])
        );
        assert!(g1.len() > 2);
        assert_grads_close(&g1, &g2, |_| 1e-5, &format!("{arch} with checkpointing"));
    }
}

#[test]
fn invalid_ranks_and_an_ia3_on_a_4bit_base_are_handled() {
    let mut cfg = LoraConfig::new(&["query"], 4, 8.0);
    cfg.rank_pattern.insert("query".into(), 0);
    let err = PeftModel::new(base("bert"), cfg).unwrap_err().to_string();
    assert!(err.contains("rank must be positive"), "{err}");
    let mut cfg = LoraConfig::new(&["query"], 4, 8.0);
    cfg.rank_pattern.insert("(query".into(), 2);
    let err = PeftModel::new(base("bert"), cfg).unwrap_err().to_string();
    assert!(err.contains("not a regular expression"), "{err}");
    let pissa = LoraConfig {
        init_lora_weights: peftkit_adapters::InitLoraWeights::Named("pissa".into()),
        ..LoraConfig::new(&["query"], 64, 8.0)
    };
    let err = PeftModel::new(base("bert"), pissa).unwrap_err().to_string();
    assert!(err.contains("exceeds the weight's rank bound"), "{err}");
    // IA³ on a 4-bit base stays unmerged (its bias scaling could not be undone exactly).
    let bnb = peftkit_adapters::quant::BnbConfig::default();
    let ia3 = peftkit_adapters::Ia3Config::new(&["key", "value"], &[]);
    let mut model = PeftModel::new_quantized(base("bert"), ia3, bnb).unwrap();
    let g = read(&fixtures().join("tiny-bert/golden.safetensors"));
    let before = logits(&model, &g);
    model.merge_adapter();
    assert!(!model.is_merged());
    assert_eq!(diff(&logits(&model, &g), &before), 0.0);
}
