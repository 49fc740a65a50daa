//! Every method at parity with peft 0.21.2, both ways, on peft-made fixtures
//! (`data/fixtures/make_fixtures.py`: `ia3`, `dora`, `lora_bias`, `lora`): peft's logits (adapter
//! on, disabled, merged) and `get_nb_trainable_parameters` from the file peft saved, and a
//! re-save by peftkit with exactly peft's keys, shapes, dtypes and values and peft's config
//! fields.

mod common;
use common::*;

use peftkit_adapters::PeftModel;
use peftkit_models::{read_safetensors, TrainModel};
use std::collections::BTreeMap;
use std::path::Path;

/// The fixtures: directory under `data/fixtures/` and the tiny model it was made on.
const CASES: &[(&str, &str)] = &[
    ("lora-gpt2", "gpt2"),
    ("lora-roberta", "roberta"),
    ("lora-bert", "bert"),
    ("ia3-gpt2", "gpt2"),
    ("ia3-roberta", "roberta"),
    ("ia3-bert", "bert"),
    ("dora-gpt2", "gpt2"),
    ("dora-roberta", "roberta"),
    ("dora-bert", "bert"),
    ("lora-variants/bias-all", "bert"),
    ("lora-variants/bias-lora-only", "bert"),
    ("lora-variants/layers-patterns", "bert"),
    ("lora-variants/all-linear", "bert"),
    ("prompt-gpt2", "gpt2"),
    ("prompt-roberta", "roberta"),
    ("prompt-bert", "bert"),
    ("ptuning-gpt2", "gpt2"),
    ("ptuning-roberta", "roberta"),
    ("ptuning-bert", "bert"),
    // The new families (make_fixtures.py `families`).
    ("lora-distilbert", "distilbert"),
    ("dora-distilbert", "distilbert"),
    ("ia3-distilbert", "distilbert"),
    ("prompt-distilbert", "distilbert"),
    ("lora-llama", "llama"),
    ("dora-llama", "llama"),
    ("ia3-llama", "llama"),
    ("prompt-llama", "llama"),
    ("lora-qwen2", "qwen2"),
    ("dora-qwen2", "qwen2"),
    ("ia3-qwen2", "qwen2"),
    ("prompt-qwen2", "qwen2"),
    ("lora-mistral", "mistral"),
    ("dora-mistral", "mistral"),
    ("ia3-mistral", "mistral"),
    ("prompt-mistral", "mistral"),
    ("lora-modernbert", "modernbert"),
    ("dora-modernbert", "modernbert"),
    ("ia3-modernbert", "modernbert"),
    ("prompt-modernbert", "modernbert"),
    ("lora-deberta-v3", "deberta-v3"),
    ("dora-deberta-v3", "deberta-v3"),
    ("ia3-deberta-v3", "deberta-v3"),
    ("prompt-deberta-v3", "deberta-v3"),
];

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .unwrap()
}

/// `target_modules` (and IA³'s `feedforward_modules`) as peft writes them come from a Python
/// set, in no particular order: compared as sorted lists.
fn normalised(mut v: serde_json::Value) -> serde_json::Value {
    for key in ["target_modules", "feedforward_modules"] {
        if let Some(serde_json::Value::Array(a)) = v.get_mut(key) {
            a.sort_by_key(|x| x.to_string());
        }
    }
    v
}

#[test]
fn peft_made_adapters_give_peft_logits_and_counts() {
    for (case, arch) in CASES {
        let dir = fixtures().join(case);
        let g = inputs(arch);
        let expected = read(&dir.join("golden.safetensors"));
        let mut model = PeftModel::from_pretrained(base(arch), &dir.join("adapter")).unwrap();
        let d = diff(&logits(&model, &g), &expected["logits"]);
        assert!(d <= 1e-5, "{case}: logits differ from peft's by {d}");
        // peft counted the model it trained: the same config made afresh (a reloaded P-tuning
        // adapter keeps only its encoded prompt, as in peft).
        let counts: Vec<i64> = Vec::try_from(&expected["counts"]).unwrap();
        let config =
            peftkit_adapters::AdapterConfig::from_file(&dir.join("adapter/adapter_config.json"))
                .unwrap();
        let fresh = PeftModel::new(base(arch), config).unwrap();
        assert_eq!(
            fresh.parameter_counts(),
            (counts[0], counts[1]),
            "{case}: get_nb_trainable_parameters"
        );
        if let Some(want) = expected.get("disabled_logits") {
            let disabled = model.with_adapter_disabled(|m| logits(m, &g));
            let d = diff(&disabled, want);
            assert!(
                d <= 1e-5,
                "{case}: disabled logits differ from peft's by {d}"
            );
        }
        if let Some(merged) = expected.get("merged_logits") {
            model.merge_adapter();
            let d = diff(&logits(&model, &g), merged);
            assert!(d <= 1e-5, "{case}: merged logits differ from peft's by {d}");
        }
    }
}

#[test]
fn peftkit_saves_what_peft_saves() {
    for (case, arch) in CASES {
        let dir = fixtures().join(case).join("adapter");
        let model = PeftModel::from_pretrained(base(arch), &dir).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("adapter");
        model.save_pretrained(&out, Some("tiny"), None).unwrap();
        let tensors = |p: &Path| -> BTreeMap<String, tch::Tensor> {
            read_safetensors(&p.join("adapter_model.safetensors"))
                .unwrap()
                .into_iter()
                .collect()
        };
        let (ours, theirs) = (tensors(&out), tensors(&dir));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}: saved keys"
        );
        for (k, t) in &theirs {
            let o = &ours[k];
            assert_eq!((o.size(), o.kind()), (t.size(), t.kind()), "{case}: {k}");
            assert_eq!(diff(o, t), 0.0, "{case}: {k} values");
        }
        let (ours, theirs) = (normalised(config(&out)), normalised(config(&dir)));
        // Every field peftkit writes is peft's, with peft's value; peft's fields of features
        // peftkit does not have (EVA, LoftQ, …) are left out (peft fills in their defaults).
        for (field, value) in ours.as_object().unwrap() {
            if field == "base_model_name_or_path" {
                continue;
            }
            assert_eq!(
                theirs.get(field),
                Some(value),
                "{case}: adapter_config.json field `{field}`"
            );
        }
        assert_eq!(ours["base_model_name_or_path"], "tiny");
    }
}

#[test]
fn all_linear_is_saved_as_the_matched_modules_like_peft() {
    let cfg = peftkit_adapters::LoraConfig {
        target_modules: Some(peftkit_adapters::TargetModules::Regex("all-linear".into())),
        ..Default::default()
    };
    let model = PeftModel::new(base("bert"), cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), None, None).unwrap();
    let theirs = config(&fixtures().join("lora-variants/all-linear/adapter"));
    assert_eq!(
        normalised(config(tmp.path()))["target_modules"],
        normalised(theirs)["target_modules"]
    );
}

#[test]
fn p_tuning_encoders_compute_peft_prompts() {
    use peftkit_adapters::prompt::PromptEncoder;
    for (arch, lstm) in [("gpt2", false), ("roberta", true), ("bert", false)] {
        let g = read(&fixtures().join(format!("ptuning-{arch}/golden.safetensors")));
        let params: std::collections::HashMap<String, tch::Tensor> = g
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("encoder.")?.to_string(), v.shallow_clone())))
            .collect();
        let mut enc = if lstm {
            PromptEncoder::lstm(3, 32, 16, 2, 0.0, tch::Device::Cpu)
        } else {
            PromptEncoder::mlp(3, 32, 16, tch::Device::Cpu)
        };
        enc.load_parameters(&params).unwrap();
        assert_eq!(
            enc.parameters().len(),
            params.len(),
            "{arch}: every peft tensor is used"
        );
        let d = diff(&enc.compute(false), &g["prompt"]);
        assert!(
            d <= 1e-6,
            "{arch}: prompt differs from peft's encoder output by {d}"
        );
    }
}

#[test]
fn text_initialised_prompts_start_from_the_text_and_reload_without_it() {
    let (words, ids) = {
        let b = base("bert");
        let w = b.var_store().variables()["bert.embeddings.word_embeddings.weight"].detach();
        (w, vec![101i64, 7, 9, 102])
    };
    let cfg = peftkit_adapters::PromptTuningConfig {
        prompt_tuning_init: peftkit_adapters::prompt::PromptTuningInit::Text,
        prompt_tuning_init_text: Some("great movie".into()),
        init_token_ids: Some(ids.clone()),
        ..peftkit_adapters::PromptTuningConfig::new(6)
    };
    let model = PeftModel::new(base("bert"), cfg.clone()).unwrap();
    // peft's rule: the text's ids repeated to the prompt's length, then cut.
    let want = words.index_select(0, &tch::Tensor::from_slice(&[101i64, 7, 9, 102, 101, 7]));
    let prompt = model
        .trainable_parameters()
        .into_iter()
        .find(|(n, _)| n.contains("embedding"))
        .unwrap()
        .1;
    assert_eq!(diff(&prompt, &want), 0.0);
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), None, None).unwrap();
    let again = PeftModel::from_pretrained(base("bert"), tmp.path()).unwrap();
    let g = inputs("bert");
    assert_eq!(diff(&logits(&again, &g), &logits(&model, &g)), 0.0);
    let no_ids = peftkit_adapters::PromptTuningConfig {
        init_token_ids: None,
        ..cfg
    };
    let err = PeftModel::new(base("bert"), no_ids)
        .unwrap_err()
        .to_string();
    assert!(err.contains("init text's token ids"), "{err}");
}

#[test]
fn unset_targets_take_peft_defaults_per_model() {
    // peft's IA³ defaults for RoBERTa made the ia3-roberta fixture: the same lists are recorded.
    let cfg = peftkit_adapters::Ia3Config::default();
    let model = PeftModel::new(base("roberta"), cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), None, None).unwrap();
    let (ours, theirs) = (
        normalised(config(tmp.path())),
        normalised(config(&fixtures().join("ia3-roberta/adapter"))),
    );
    for field in ["target_modules", "feedforward_modules"] {
        assert_eq!(ours[field], theirs[field], "{field}");
    }
    let lora = PeftModel::new(base("gpt2"), peftkit_adapters::LoraConfig::default()).unwrap();
    assert_eq!(
        lora.adapted_modules(),
        ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    );
}
