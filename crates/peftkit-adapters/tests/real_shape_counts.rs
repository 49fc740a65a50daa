//! Trainable-parameter counts on random-initialised models of the real gpt2 and roberta-base
//! shapes (configs from the hub cache) equal the studies' peft figures.

use peftkit_adapters::{LoraConfig, PeftModel};
use peftkit_models::{ModelConfig, SequenceClassifier};
use std::path::{Path, PathBuf};
use tch::Device;

fn hub_config(repo: &str) -> PathBuf {
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/hf-home"));
    let base = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(base.join("refs/main")).unwrap();
    base.join("snapshots").join(rev.trim()).join("config.json")
}

fn random(repo: &str, labels: usize) -> SequenceClassifier {
    let mut cfg = ModelConfig::from_file(&hub_config(repo)).unwrap();
    cfg.set_labels(
        &(0..labels)
            .map(|i| format!("LABEL_{i}"))
            .collect::<Vec<_>>(),
    );
    SequenceClassifier::from_config(cfg, Device::Cpu)
}

#[test]
fn gpt2_lora_counts_equal_the_studies() {
    // rotten-tomatoes-lora: r 8, alpha 64, c_attn + c_proj (attn and mlp), head 1,536.
    let m = PeftModel::new(
        random("gpt2", 2),
        LoraConfig {
            lora_dropout: 0.2,
            ..LoraConfig::new(&["c_attn", "c_proj"], 8, 64.0)
        },
    )
    .unwrap();
    assert_eq!(m.parameter_counts(), (812_544, 125_253_888));
    assert_eq!(m.adapted_modules().len(), 36);
    assert_eq!(
        m.trainable_summary(),
        "trainable params: 812544 || all params: 125253888 || trainable%: 0.6487"
    );
    drop(m);
    // sst2-lora-r4: r 4 on c_attn only, with the head.
    let m = PeftModel::new(random("gpt2", 2), LoraConfig::new(&["c_attn"], 4, 16.0)).unwrap();
    assert_eq!(m.parameter_counts().0, 148_992);
    drop(m);
    // imdb-lora: r 16 on c_attn: 589,824 + head 1,536.
    let m = PeftModel::new(random("gpt2", 2), LoraConfig::new(&["c_attn"], 16, 32.0)).unwrap();
    assert_eq!(m.parameter_counts().0, 589_824 + 1_536);
}

#[test]
fn roberta_lora_count_equals_emotion_qlora() {
    // emotion-qlora's adapter: r 32 on query/key/value + classifier (dense + out_proj), 6 labels.
    let m = PeftModel::new(
        random("FacebookAI/roberta-base", 6),
        LoraConfig::new(&["query", "key", "value"], 32, 32.0),
    )
    .unwrap();
    assert_eq!(m.parameter_counts().0, 2_364_678);
}

#[test]
fn roberta_qlora_count_and_bits_per_parameter() {
    use peftkit_adapters::quant::{BnbConfig, QuantType};
    // emotion-qlora as published: FP4, fp32 compute, classifier not quantized.
    let fp4 = BnbConfig {
        bnb_4bit_quant_type: QuantType::Fp4,
        bnb_4bit_compute_dtype: Some("float32".into()),
        ..BnbConfig::default()
    };
    let m = PeftModel::new_quantized(
        random("FacebookAI/roberta-base", 6),
        LoraConfig {
            lora_dropout: 0.1,
            ..LoraConfig::new(&["query", "key", "value"], 32, 32.0)
        },
        fp4,
    )
    .unwrap();
    assert_eq!(m.parameter_counts().0, 2_364_678);
    // The study's line: peft counts a 4-bit weight's elements, and the head twice.
    assert!(
        m.trainable_summary().ends_with("trainable%: 1.8617"),
        "{}",
        m.trainable_summary()
    );
    // Storage of the quantized base weights: 4.5 bits per parameter with fp32 absmax per 64,
    // ≈ 4.127 with the absmax double-quantized.
    for (double_quant, expected) in [(false, 4.5), (true, 4.127)] {
        let mut base = random("FacebookAI/roberta-base", 6);
        let summary = peftkit_adapters::quant::quantize_model(
            &mut base,
            &BnbConfig {
                bnb_4bit_use_double_quant: double_quant,
                ..BnbConfig::default()
            },
        )
        .unwrap();
        let bits = summary.bits_per_parameter();
        eprintln!(
            "roberta-base, {} linears, {} weights: fp32 {} bytes, NF4{} {} bytes = {bits:.4} bits/parameter",
            summary.modules.len(),
            summary.parameters,
            summary.fp32_bytes(),
            if double_quant { " + double quant" } else { "" },
            summary.quantized_bytes
        );
        assert!((bits - expected).abs() < 0.002, "{bits}");
    }
}

#[test]
fn roberta_prefix_count_equals_emotion_prefix() {
    use peftkit_adapters::PrefixTuningConfig;
    // emotion-prefix: 20 virtual tokens, no projection: 20 × 12 layers × 2 × 768 + classifier.
    let m = PeftModel::new(
        random("FacebookAI/roberta-base", 6),
        PrefixTuningConfig::new(20),
    )
    .unwrap();
    assert_eq!(m.parameter_counts().0, 963_846);
    // The study's line (0.7673 %): peft counts the head twice in the total.
    assert!(
        m.trainable_summary().ends_with("trainable%: 0.7673"),
        "{}",
        m.trainable_summary()
    );
}
