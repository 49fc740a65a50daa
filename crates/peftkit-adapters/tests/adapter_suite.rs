//! One test suite for every (model × adapter kind) pair, like peft's `PeftCommonTester`: add a
//! kind by writing its builder and one `adapter_suite!` line per model.

mod common;
use common::*;

#[path = "suite/cuda.rs"]
mod cuda;

use peftkit_adapters::prompt::Reparameterization;
use peftkit_adapters::quant::{quantize_model, BnbConfig, QuantType};
use peftkit_adapters::{
    AdaLoraConfig, Ia3Config, InitLoraWeights, LoraConfig, PeftModel, PrefixTuningConfig,
    PromptEncoderConfig, PromptTuningConfig,
};
use peftkit_models::{SequenceClassifier, TrainModel};
use peftkit_tokenize::Padding;
use peftkit_train::{Dataset, Precision, Scheduler, Strategy, Trainer, TrainingArgs};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// An adapter kind under test: how to build it on a (full-precision) base, the base model it
/// must reduce to when disabled or unmerged, and whether it merges.
pub struct AdapterKind {
    name: &'static str,
    build: fn(&str, SequenceClassifier) -> peftkit_adapters::Result<PeftModel>,
    /// The model the adapter sits on (QLoRA: the quantized base).
    reference_base: fn(&str) -> SequenceClassifier,
    /// `false`: merging does not apply to this kind (prefix tuning), as in peft.
    merges: bool,
    /// Frozen elements per adapted module that peft counts in the total (AdaLoRA's `ranknum`).
    frozen_per_module: i64,
    /// A substring of the names of the adapter's own trainable tensors.
    marker: &'static str,
    /// Builds the kind with an invalid config, and a substring of the error it must give.
    invalid: (
        fn(SequenceClassifier) -> peftkit_adapters::Result<PeftModel>,
        &'static str,
    ),
}

fn no_targets(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, LoraConfig::new(&["no_such_module"], 4, 8.0))
}

/// Every weight of a model by name, packed (quantized) weights dequantized.
fn weights(model: &SequenceClassifier) -> HashMap<String, Tensor> {
    let mut out: HashMap<String, Tensor> = model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, v)| v.numel() > 0)
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    for l in model.linears() {
        if let Some(p) = l.packed() {
            out.insert(format!("{}.weight", l.path()), p.unpack(Kind::Float));
        }
    }
    out
}

fn lora_targets(arch: &str) -> Vec<&'static str> {
    match arch {
        "gpt2" => vec!["c_attn", "c_proj"],
        "roberta" => vec!["query", "value"],
        "distilbert" => vec!["q_lin", "k_lin", "v_lin", "out_lin", "lin1"],
        "llama" | "qwen2" | "mistral" => vec!["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
        "modernbert" => vec!["Wqkv", "attn.Wo", "Wi"],
        "deberta-v3" | "deberta-v2" => vec!["query_proj", "value_proj", "intermediate.dense"],
        _ => vec!["query", "key", "value", "dense"],
    }
}

/// LoRA with random A and B (as after training), so that merging changes the weights.
fn build_lora(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Bool(false),
        lora_dropout: 0.1,
        ..LoraConfig::new(&lora_targets(arch), 4, 8.0)
    };
    PeftModel::new(base, cfg)
}

pub const LORA: AdapterKind = AdapterKind {
    name: "lora",
    build: build_lora,
    reference_base: base,
    merges: true,
    frozen_per_module: 0,
    marker: "lora_",
    invalid: (no_targets, "matched no module"),
};

fn bnb() -> BnbConfig {
    BnbConfig {
        bnb_4bit_quant_type: QuantType::Nf4,
        bnb_4bit_use_double_quant: true,
        ..BnbConfig::default()
    }
}

/// QLoRA: an NF4 + double-quantized base with the same random LoRA.
fn build_qlora(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Bool(false),
        lora_dropout: 0.1,
        ..LoraConfig::new(&lora_targets(arch), 4, 8.0)
    };
    PeftModel::new_quantized(base, cfg, bnb())
}

fn quantized_base(arch: &str) -> SequenceClassifier {
    let mut m = base(arch);
    quantize_model(&mut m, &bnb()).unwrap();
    m
}

pub const QLORA: AdapterKind = AdapterKind {
    name: "qlora",
    build: build_qlora,
    reference_base: quantized_base,
    merges: true,
    frozen_per_module: 0,
    marker: "lora_",
    invalid: (no_targets, "matched no module"),
};

/// DoRA: LoRA with random A and B and the magnitude vector.
fn build_dora(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Bool(false),
        lora_dropout: 0.1,
        use_dora: true,
        ..LoraConfig::new(&lora_targets(arch), 4, 8.0)
    };
    PeftModel::new(base, cfg)
}

pub const DORA: AdapterKind = AdapterKind {
    name: "dora",
    build: build_dora,
    reference_base: base,
    merges: true,
    frozen_per_module: 0,
    marker: "lora_magnitude_vector",
    invalid: (no_targets, "matched no module"),
};

/// QDoRA: DoRA on the NF4 + double-quantized base.
fn build_qdora(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Bool(false),
        lora_dropout: 0.1,
        use_dora: true,
        ..LoraConfig::new(&lora_targets(arch), 4, 8.0)
    };
    PeftModel::new_quantized(base, cfg, bnb())
}

pub const QDORA: AdapterKind = AdapterKind {
    name: "qdora",
    build: build_qdora,
    reference_base: quantized_base,
    merges: true,
    frozen_per_module: 0,
    marker: "lora_magnitude_vector",
    invalid: (no_targets, "matched no module"),
};

fn ia3_targets(arch: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    match arch {
        "gpt2" => (vec!["c_attn", "mlp.c_proj"], vec!["mlp.c_proj"]),
        "distilbert" => (vec!["k_lin", "v_lin", "lin2"], vec!["lin2"]),
        "llama" | "qwen2" | "mistral" => (vec!["k_proj", "v_proj", "down_proj"], vec!["down_proj"]),
        "modernbert" => (vec!["Wqkv", "mlp.Wo"], vec!["mlp.Wo"]),
        "deberta-v3" | "deberta-v2" => (
            vec!["key_proj", "value_proj", "output.dense"],
            vec!["output.dense"],
        ),
        _ => (vec!["key", "value", "output.dense"], vec!["output.dense"]),
    }
}

/// IA³ with random vectors (as after training), attention outputs and feed-forward inputs
/// scaled.
fn build_ia3(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let (t, ff) = ia3_targets(arch);
    let model = PeftModel::new(base, Ia3Config::new(&t, &ff))?;
    // Uniform in [0.5, 4): far from 0, so that unmerging (a division) is exact to fp32
    // rounding whatever values tests sharing torch's generator draw.
    for (name, mut t) in model.trainable_parameters() {
        if name.contains("ia3_l") {
            tch::no_grad(|| t.copy_(&(t.rand_like() * 3.5 + 0.5)));
        }
    }
    Ok(model)
}

fn ia3_not_subset(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, Ia3Config::new(&["key"], &["output.dense"]))
}

pub const IA3: AdapterKind = AdapterKind {
    name: "ia3",
    build: build_ia3,
    reference_base: base,
    merges: true,
    frozen_per_module: 0,
    marker: "ia3_l",
    invalid: (ia3_not_subset, "should be a subset of `target_modules`"),
};

/// AdaLoRA (init_r 4 → target_r 2 over the 5 training steps of the suite), random factors
/// scaled down (as after some training).
fn build_adalora(arch: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = AdaLoraConfig {
        init_lora_weights: false,
        tinit: 1,
        tfinal: 1,
        lora_dropout: 0.1,
        ..AdaLoraConfig::new(&lora_targets(arch), 4, 2, 5)
    };
    let model = PeftModel::new(base, cfg)?;
    for (name, mut t) in model.trainable_parameters() {
        if name.contains(".lora_") {
            tch::no_grad(|| t.copy_(&(&t * 0.3)));
        }
    }
    Ok(model)
}

fn adalora_without_steps(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    let cfg = AdaLoraConfig {
        total_step: None,
        ..AdaLoraConfig::new(&["query"], 4, 2, 5)
    };
    PeftModel::new(base, cfg)
}

pub const ADALORA: AdapterKind = AdapterKind {
    name: "adalora",
    build: build_adalora,
    reference_base: base,
    merges: true,
    frozen_per_module: 1,
    marker: "lora_E",
    invalid: (adalora_without_steps, "total_step"),
};

fn build_prompt(_: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, PromptTuningConfig::new(4))
}

fn no_prompt_tokens(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, PromptTuningConfig::new(0))
}

pub const PROMPT: AdapterKind = AdapterKind {
    name: "prompt",
    build: build_prompt,
    reference_base: base,
    merges: false,
    frozen_per_module: 0,
    marker: "prompt_encoder",
    invalid: (no_prompt_tokens, "num_virtual_tokens must be positive"),
};

fn build_ptuning_mlp(_: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(
        base,
        PromptEncoderConfig::new(4, Reparameterization::Mlp, 16),
    )
}

fn build_ptuning_lstm(_: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(
        base,
        PromptEncoderConfig::new(4, Reparameterization::Lstm, 16),
    )
}

fn bad_encoder(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(
        base,
        PromptEncoderConfig::new(4, Reparameterization::Mlp, 0),
    )
}

pub const PTUNING_MLP: AdapterKind = AdapterKind {
    name: "ptuning_mlp",
    build: build_ptuning_mlp,
    reference_base: base,
    merges: false,
    frozen_per_module: 0,
    marker: "prompt_encoder",
    invalid: (bad_encoder, "encoder_hidden_size must be positive"),
};

pub const PTUNING_LSTM: AdapterKind = AdapterKind {
    name: "ptuning_lstm",
    build: build_ptuning_lstm,
    reference_base: base,
    merges: false,
    frozen_per_module: 0,
    marker: "prompt_encoder",
    invalid: (bad_encoder, "encoder_hidden_size must be positive"),
};

/// Prefix tuning, 4 virtual tokens, the prefix itself trained.
fn build_prefix(_: &str, base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, PrefixTuningConfig::new(4))
}

/// Prefix tuning through the projection MLP (hidden 16).
fn build_prefix_projection(
    _: &str,
    base: SequenceClassifier,
) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(
        base,
        PrefixTuningConfig {
            prefix_projection: true,
            encoder_hidden_size: Some(16),
            ..PrefixTuningConfig::new(4)
        },
    )
}

fn no_virtual_tokens(base: SequenceClassifier) -> peftkit_adapters::Result<PeftModel> {
    PeftModel::new(base, PrefixTuningConfig::new(0))
}

pub const PREFIX: AdapterKind = AdapterKind {
    name: "prefix",
    build: build_prefix,
    reference_base: base,
    merges: false,
    frozen_per_module: 0,
    marker: "prompt_encoder",
    invalid: (no_virtual_tokens, "num_virtual_tokens must be positive"),
};

pub const PREFIX_PROJECTION: AdapterKind = AdapterKind {
    name: "prefix_projection",
    build: build_prefix_projection,
    reference_base: base,
    merges: false,
    frozen_per_module: 0,
    marker: "prompt_encoder",
    invalid: (no_virtual_tokens, "num_virtual_tokens must be positive"),
};

fn wrap(kind: &AdapterKind, arch: &str) -> PeftModel {
    tch::manual_seed(7);
    (kind.build)(arch, base(arch)).unwrap()
}

pub fn save_load_round_trip(kind: &AdapterKind, arch: &str) {
    let g = inputs(arch);
    let model = wrap(kind, arch);
    let tmp = tempfile::tempdir().unwrap();
    model
        .save_pretrained(&tmp.path().join("a"), Some("tiny"), None)
        .unwrap();
    // Onto a full-precision base: a QLoRA adapter records its quantization and re-applies it.
    let again = PeftModel::from_pretrained(base(arch), &tmp.path().join("a")).unwrap();
    // Exact, but for encoders saved encoded (P-tuning's LSTM runs other kernels with autograd
    // on than off: ~1e-8 apart, a few float32 ulps after ModernBERT's head).
    let d = diff(&logits(&model, &g), &logits(&again, &g));
    assert!(d <= 5e-7, "{} {arch}: reloaded differs by {d}", kind.name);
}

pub fn merged_equals_unmerged_and_merge_is_idempotent(kind: &AdapterKind, arch: &str) {
    if !kind.merges {
        // Not applicable, as in peft: merging does nothing and merge_and_unload refuses.
        let mut model = wrap(kind, arch);
        model.merge_adapter();
        assert!(!model.is_merged(), "{} {arch}", kind.name);
        let Err(e) = model.merge_and_unload() else {
            panic!("{} {arch}: merge_and_unload must refuse", kind.name)
        };
        assert!(e.to_string().contains("cannot be merged"), "{e}");
        return;
    }
    let g = inputs(arch);
    let mut model = wrap(kind, arch);
    let unmerged = logits(&model, &g);
    model.merge_adapter();
    assert!(model.is_merged());
    let merged = logits(&model, &g);
    let d = diff(&merged, &unmerged);
    assert!(
        d <= 1e-5,
        "{} {arch}: merged differs from unmerged by {d}",
        kind.name
    );
    model.merge_adapter();
    assert_eq!(
        diff(&logits(&model, &g), &merged),
        0.0,
        "merging twice changed the model"
    );
}

pub fn unmerge_restores_the_base(kind: &AdapterKind, arch: &str) {
    if !kind.merges {
        return;
    }
    let original = weights(&(kind.reference_base)(arch));
    let mut model = wrap(kind, arch);
    model.merge_adapter();
    model.unmerge_adapter();
    assert!(!model.is_merged());
    let after = weights(model.base());
    assert_eq!(after.len(), original.len(), "{} {arch}", kind.name);
    for (name, v) in after {
        let d = diff(&v, &original[&name]);
        assert!(
            d <= 1e-6,
            "{} {arch}: {name} differs by {d} after unmerge",
            kind.name
        );
    }
}

pub fn disable_restores_base_logits(kind: &AdapterKind, arch: &str) {
    let g = inputs(arch);
    let plain = logits(&(kind.reference_base)(arch), &g);
    let mut model = wrap(kind, arch);
    assert!(
        diff(&logits(&model, &g), &plain) > 1e-4,
        "{} {arch}: the adapter changes nothing ({}): the test would prove nothing",
        kind.name,
        diff(&logits(&model, &g), &plain)
    );
    if kind.merges {
        model.merge_adapter(); // disabling must also undo a merge
    }
    let disabled = model.with_adapter_disabled(|m| logits(m, &g));
    let d = diff(&disabled, &plain);
    assert!(
        d <= 1e-6,
        "{} {arch}: disabled differs from the base model by {d}",
        kind.name
    );
}

pub fn unload_returns_the_base(kind: &AdapterKind, arch: &str) {
    let g = inputs(arch);
    let plain = logits(&(kind.reference_base)(arch), &g);
    let mut model = wrap(kind, arch);
    if kind.merges {
        model.merge_adapter(); // unloading must also undo a merge
    }
    let base = model.unload();
    let d = diff(&logits(&base, &g), &plain);
    assert!(
        d <= 1e-6,
        "{} {arch}: the unloaded base differs from the base model by {d}",
        kind.name
    );
    assert!(
        base.linears().iter().all(|l| l.hook().is_none()),
        "{} {arch}: a hook stayed behind",
        kind.name
    );
}

pub fn only_adapter_and_head_receive_gradients(kind: &AdapterKind, arch: &str) {
    let g = inputs(arch);
    let model = wrap(kind, arch);
    let loss = model.loss(
        &model
            .logits(&g["input_ids"], &g["attention_mask"], true)
            .unwrap(),
        &g["labels"],
    );
    loss.backward();
    let trainable: Vec<String> = model
        .trainable_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        trainable.iter().any(|n| n.contains(kind.marker)),
        "{} {arch}: no adapter tensor among {trainable:?}",
        kind.name
    );
    assert!(
        trainable
            .iter()
            .any(|n| n.contains(".modules_to_save.default.")),
        "{} {arch}: the adapter's copy of the head is not trained: {trainable:?}",
        kind.name
    );
    // The base, its original head included (peft's `original_module`), stays frozen.
    for (name, v) in model.base().var_store().variables() {
        assert!(
            !v.grad().defined(),
            "{} {arch}: base variable {name} got a gradient",
            kind.name
        );
    }
    for (name, t) in model.trainable_parameters() {
        assert!(t.grad().defined(), "{name} got no gradient");
    }
}

pub fn trainable_count_is_adapter_plus_head(kind: &AdapterKind, arch: &str) {
    let model = wrap(kind, arch);
    let expected: i64 = model
        .trainable_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let (trainable, all) = model.parameter_counts();
    assert_eq!(trainable, expected);
    let head: i64 = model
        .trainable_parameters()
        .iter()
        .filter(|(n, _)| !n.contains(kind.marker))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let (_, base_all) = (kind.reference_base)(arch).parameter_counts();
    let frozen = kind.frozen_per_module * model.adapted_modules().len() as i64;
    assert_eq!(
        all,
        base_all + (trainable - head) + head + frozen,
        "{} {arch}: total as peft counts it",
        kind.name
    );
}

pub fn an_invalid_config_is_an_error(kind: &AdapterKind, arch: &str) {
    let (build, needle) = kind.invalid;
    let err = build(base(arch)).unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "{} {arch}: {err}",
        kind.name
    );
}

pub fn a_few_training_steps_lower_the_loss(kind: &AdapterKind, arch: &str) {
    let (before, after, _) = train_a_few_steps(wrap(kind, arch), arch, Precision::Fp32);
    assert!(
        after < before,
        "{} {arch}: loss {before} -> {after}",
        kind.name
    );
}

/// The golden batch's eval loss before and after 5 Trainer steps of `model` (on its device), and
/// the steps fp16's loss scaler skipped.
fn train_a_few_steps(model: PeftModel, arch: &str, precision: Precision) -> (f64, f64, u64) {
    train_steps(model, arch, precision, 5, Scheduler::Linear)
}

/// [`train_a_few_steps`] with `steps` steps and the learning-rate schedule `schedule`.
fn train_steps(
    model: PeftModel,
    arch: &str,
    precision: Precision,
    steps: usize,
    schedule: Scheduler,
) -> (f64, f64, u64) {
    let device = model.base().device();
    let g: HashMap<String, Tensor> = inputs(arch)
        .into_iter()
        .map(|(k, v)| (k, v.to_device(device)))
        .collect();
    let eval_loss = || {
        tch::no_grad(|| {
            model
                .loss(
                    &model
                        .logits(&g["input_ids"], &g["attention_mask"], false)
                        .unwrap(),
                    &g["labels"],
                )
                .double_value(&[])
        })
    };
    let before = eval_loss();
    let cpu = |k: &str| g[k].to_device(tch::Device::Cpu);
    let data = Dataset::from_padded(
        &cpu("input_ids"),
        &cpu("attention_mask"),
        &cpu("labels"),
        vec!["neg".into(), "neu".into(), "pos".into()],
        Padding::Longest,
        match arch {
            "gpt2" => 999,
            "roberta" => 1,
            _ => 0,
        },
    )
    .unwrap();
    let args = TrainingArgs {
        learning_rate: 1e-3,
        lr_scheduler_type: schedule,
        max_steps: Some(steps),
        per_device_train_batch_size: 4,
        eval_strategy: Strategy::No,
        save_strategy: Strategy::No,
        load_best_model_at_end: false,
        precision,
        ..TrainingArgs::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = Trainer::new(&model, args, tmp.path())
        .unwrap()
        .with_progress(false)
        .train(&data, None, None)
        .unwrap();
    (before, eval_loss(), out.skipped_steps)
}

macro_rules! adapter_suite {
    ($module:ident, $kind:expr, $arch:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn save_load_round_trip() {
                super::save_load_round_trip(&$kind, $arch)
            }
            #[test]
            fn merged_equals_unmerged_and_merge_is_idempotent() {
                super::merged_equals_unmerged_and_merge_is_idempotent(&$kind, $arch)
            }
            #[test]
            fn unmerge_restores_the_base() {
                super::unmerge_restores_the_base(&$kind, $arch)
            }
            #[test]
            fn disable_restores_base_logits() {
                super::disable_restores_base_logits(&$kind, $arch)
            }
            #[test]
            fn unload_returns_the_base() {
                super::unload_returns_the_base(&$kind, $arch)
            }
            #[test]
            fn only_adapter_and_head_receive_gradients() {
                super::only_adapter_and_head_receive_gradients(&$kind, $arch)
            }
            #[test]
            fn trainable_count_is_adapter_plus_head() {
                super::trainable_count_is_adapter_plus_head(&$kind, $arch)
            }
            #[test]
            fn an_invalid_config_is_an_error() {
                super::an_invalid_config_is_an_error(&$kind, $arch)
            }
            #[test]
            fn a_few_training_steps_lower_the_loss() {
                super::a_few_training_steps_lower_the_loss(&$kind, $arch)
            }
            #[test]
            fn cuda_equals_cpu() {
                super::cuda::cuda_equals_cpu(&$kind, $arch)
            }
            #[test]
            fn cuda_trains_in_mixed_precision() {
                super::cuda::cuda_trains_in_mixed_precision(&$kind, $arch)
            }
        }
    };
}

adapter_suite!(lora_gpt2, LORA, "gpt2");
adapter_suite!(lora_roberta, LORA, "roberta");
adapter_suite!(lora_bert, LORA, "bert");
adapter_suite!(qlora_gpt2, QLORA, "gpt2");
adapter_suite!(qlora_roberta, QLORA, "roberta");
adapter_suite!(qlora_bert, QLORA, "bert");
adapter_suite!(prefix_gpt2, PREFIX, "gpt2");
adapter_suite!(prefix_roberta, PREFIX, "roberta");
adapter_suite!(prefix_bert, PREFIX, "bert");
adapter_suite!(prefix_projection_gpt2, PREFIX_PROJECTION, "gpt2");
adapter_suite!(prefix_projection_roberta, PREFIX_PROJECTION, "roberta");
adapter_suite!(prefix_projection_bert, PREFIX_PROJECTION, "bert");
adapter_suite!(dora_gpt2, DORA, "gpt2");
adapter_suite!(dora_roberta, DORA, "roberta");
adapter_suite!(dora_bert, DORA, "bert");
adapter_suite!(qdora_gpt2, QDORA, "gpt2");
adapter_suite!(qdora_roberta, QDORA, "roberta");
adapter_suite!(qdora_bert, QDORA, "bert");
adapter_suite!(ia3_gpt2, IA3, "gpt2");
adapter_suite!(ia3_roberta, IA3, "roberta");
adapter_suite!(ia3_bert, IA3, "bert");
adapter_suite!(prompt_gpt2, PROMPT, "gpt2");
adapter_suite!(prompt_roberta, PROMPT, "roberta");
adapter_suite!(prompt_bert, PROMPT, "bert");
adapter_suite!(ptuning_mlp_gpt2, PTUNING_MLP, "gpt2");
adapter_suite!(ptuning_mlp_roberta, PTUNING_MLP, "roberta");
adapter_suite!(ptuning_mlp_bert, PTUNING_MLP, "bert");
adapter_suite!(ptuning_lstm_gpt2, PTUNING_LSTM, "gpt2");
adapter_suite!(ptuning_lstm_roberta, PTUNING_LSTM, "roberta");
adapter_suite!(ptuning_lstm_bert, PTUNING_LSTM, "bert");
adapter_suite!(adalora_gpt2, ADALORA, "gpt2");
adapter_suite!(adalora_roberta, ADALORA, "roberta");
adapter_suite!(adalora_bert, ADALORA, "bert");
adapter_suite!(lora_distilbert, LORA, "distilbert");
adapter_suite!(qlora_distilbert, QLORA, "distilbert");
adapter_suite!(prefix_distilbert, PREFIX, "distilbert");
adapter_suite!(
    prefix_projection_distilbert,
    PREFIX_PROJECTION,
    "distilbert"
);
adapter_suite!(dora_distilbert, DORA, "distilbert");
adapter_suite!(qdora_distilbert, QDORA, "distilbert");
adapter_suite!(ia3_distilbert, IA3, "distilbert");
adapter_suite!(prompt_distilbert, PROMPT, "distilbert");
adapter_suite!(ptuning_mlp_distilbert, PTUNING_MLP, "distilbert");
adapter_suite!(ptuning_lstm_distilbert, PTUNING_LSTM, "distilbert");
adapter_suite!(adalora_distilbert, ADALORA, "distilbert");
adapter_suite!(lora_llama, LORA, "llama");
adapter_suite!(qlora_llama, QLORA, "llama");
adapter_suite!(prefix_llama, PREFIX, "llama");
adapter_suite!(prefix_projection_llama, PREFIX_PROJECTION, "llama");
adapter_suite!(dora_llama, DORA, "llama");
adapter_suite!(qdora_llama, QDORA, "llama");
adapter_suite!(ia3_llama, IA3, "llama");
adapter_suite!(prompt_llama, PROMPT, "llama");
adapter_suite!(ptuning_mlp_llama, PTUNING_MLP, "llama");
adapter_suite!(ptuning_lstm_llama, PTUNING_LSTM, "llama");
adapter_suite!(adalora_llama, ADALORA, "llama");
adapter_suite!(lora_qwen2, LORA, "qwen2");
adapter_suite!(qlora_qwen2, QLORA, "qwen2");
adapter_suite!(prefix_qwen2, PREFIX, "qwen2");
adapter_suite!(prefix_projection_qwen2, PREFIX_PROJECTION, "qwen2");
adapter_suite!(dora_qwen2, DORA, "qwen2");
adapter_suite!(qdora_qwen2, QDORA, "qwen2");
adapter_suite!(ia3_qwen2, IA3, "qwen2");
adapter_suite!(prompt_qwen2, PROMPT, "qwen2");
adapter_suite!(ptuning_mlp_qwen2, PTUNING_MLP, "qwen2");
adapter_suite!(ptuning_lstm_qwen2, PTUNING_LSTM, "qwen2");
adapter_suite!(adalora_qwen2, ADALORA, "qwen2");
adapter_suite!(lora_mistral, LORA, "mistral");
adapter_suite!(qlora_mistral, QLORA, "mistral");
adapter_suite!(prefix_mistral, PREFIX, "mistral");
adapter_suite!(prefix_projection_mistral, PREFIX_PROJECTION, "mistral");
adapter_suite!(dora_mistral, DORA, "mistral");
adapter_suite!(qdora_mistral, QDORA, "mistral");
adapter_suite!(ia3_mistral, IA3, "mistral");
adapter_suite!(prompt_mistral, PROMPT, "mistral");
adapter_suite!(ptuning_mlp_mistral, PTUNING_MLP, "mistral");
adapter_suite!(ptuning_lstm_mistral, PTUNING_LSTM, "mistral");
adapter_suite!(adalora_mistral, ADALORA, "mistral");
adapter_suite!(lora_modernbert, LORA, "modernbert");
adapter_suite!(qlora_modernbert, QLORA, "modernbert");
adapter_suite!(prefix_modernbert, PREFIX, "modernbert");
adapter_suite!(
    prefix_projection_modernbert,
    PREFIX_PROJECTION,
    "modernbert"
);
adapter_suite!(dora_modernbert, DORA, "modernbert");
adapter_suite!(qdora_modernbert, QDORA, "modernbert");
adapter_suite!(ia3_modernbert, IA3, "modernbert");
adapter_suite!(prompt_modernbert, PROMPT, "modernbert");
adapter_suite!(ptuning_mlp_modernbert, PTUNING_MLP, "modernbert");
adapter_suite!(ptuning_lstm_modernbert, PTUNING_LSTM, "modernbert");
adapter_suite!(adalora_modernbert, ADALORA, "modernbert");
// DeBERTa has no past key values (as in transformers): no prefix tuning.
adapter_suite!(lora_deberta_v3, LORA, "deberta-v3");
adapter_suite!(qlora_deberta_v3, QLORA, "deberta-v3");
adapter_suite!(dora_deberta_v3, DORA, "deberta-v3");
adapter_suite!(qdora_deberta_v3, QDORA, "deberta-v3");
adapter_suite!(ia3_deberta_v3, IA3, "deberta-v3");
adapter_suite!(prompt_deberta_v3, PROMPT, "deberta-v3");
adapter_suite!(ptuning_mlp_deberta_v3, PTUNING_MLP, "deberta-v3");
adapter_suite!(ptuning_lstm_deberta_v3, PTUNING_LSTM, "deberta-v3");
adapter_suite!(adalora_deberta_v3, ADALORA, "deberta-v3");
