//! QLoRA beyond the generic suite: the memory the 4-bit base saves, merging with and without
//! re-quantization (merged vs unmerged measured against what 4-bit rounding allows), gradient
//! checkpointing (same gradients as without), skip modules, and bad configs.

mod common;
use common::*;

use peftkit_adapters::quant::{
    quantize_model, BnbConfig, Packed4bit, QuantType, QUANT_CONFIG_FILE,
};
use peftkit_adapters::{LoraConfig, PeftModel};
use peftkit_models::{LoadOptions, PackedWeight, SequenceClassifier, TrainModel};
use tch::{Device, Kind, Tensor};

fn nf4_dq() -> BnbConfig {
    BnbConfig {
        bnb_4bit_quant_type: QuantType::Nf4,
        bnb_4bit_use_double_quant: true,
        ..BnbConfig::default()
    }
}

/// A QLoRA model whose LoRA factors are non-zero (as after training) and the same on every run:
/// set from a fixed pattern, since tests share torch's generator across threads.
fn trained_qlora(arch: &str) -> PeftModel {
    let cfg = LoraConfig::new(&["query", "value", "c_attn"], 4, 8.0);
    let model = PeftModel::new_quantized(load(&format!("tiny-{arch}")), cfg, nf4_dq()).unwrap();
    tch::no_grad(|| {
        for (i, (name, mut t)) in model.trainable_parameters().into_iter().enumerate() {
            if name.contains("lora_") {
                let n = t.numel() as i64;
                let pattern =
                    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + i as f64).sin() * 0.05;
                t.copy_(&pattern.view(t.size().as_slice()));
            }
        }
    });
    model
}

fn is_head(path: &str) -> bool {
    path.starts_with("classifier") || path.starts_with("score")
}

#[test]
fn quantized_weights_release_their_full_precision_storage() {
    let mut model = load("tiny-bert");
    let summary = quantize_model(&mut model, &nf4_dq()).unwrap();
    assert_eq!(summary.modules.len(), 13, "{:?}", summary.modules);
    assert!(summary.modules.iter().all(|m| !m.starts_with("classifier")));
    for l in model.linears() {
        match l.packed() {
            Some(_) => assert_eq!(l.weight().numel(), 0, "{}: fp32 copy kept", l.path()),
            None => assert!(l.path().starts_with("classifier")),
        }
    }
    // Counts are unchanged: a packed weight counts its elements, as peft counts Params4bit.
    assert_eq!(
        model.parameter_counts().1,
        load("tiny-bert").parameter_counts().1
    );
    let bits = summary.bits_per_parameter();
    assert!(bits > 4.0 && bits < 4.6, "{bits}");
    let err = model
        .save_pretrained(&std::env::temp_dir().join("never"))
        .unwrap_err();
    assert!(
        err.to_string().contains("packed (quantized) weight"),
        "{err}"
    );
}

#[test]
fn skip_modules_stay_full_precision() {
    let mut model = load("tiny-roberta");
    let cfg = BnbConfig {
        llm_int8_skip_modules: Some(vec!["intermediate".into(), "attention.output".into()]),
        ..BnbConfig::default()
    };
    let summary = quantize_model(&mut model, &cfg).unwrap();
    assert_eq!(summary.modules.len(), 8, "{:?}", summary.modules);
    assert!(summary
        .modules
        .iter()
        .all(|m| !m.contains("intermediate") && !m.contains("attention.output")));
    let nothing = BnbConfig {
        llm_int8_skip_modules: Some(vec!["roberta".into()]),
        ..BnbConfig::default()
    };
    assert!(quantize_model(&mut load("tiny-roberta"), &nothing).is_err());
}

#[test]
fn merge_dense_is_exact_and_requantized_merge_costs_only_rounding() {
    for arch in ["gpt2", "roberta", "bert"] {
        let g = inputs(arch);
        let mut model = trained_qlora(arch);
        let unmerged = logits(&model, &g);
        // Onto the dequantized weight, kept dense: only fp32 rounding.
        model.merge_adapter();
        let d_dense = diff(&logits(&model, &g), &unmerged);
        // The merged weights, dense (the adapted linears).
        let merged: Vec<(String, Tensor)> = model
            .base()
            .linears()
            .iter()
            .filter(|l| l.packed().is_none() && !is_head(l.path()))
            .map(|l| (l.path().to_string(), l.weight_out_in(Kind::Float).copy()))
            .collect();
        assert!(!merged.is_empty());
        assert!(
            d_dense <= 1e-5,
            "{arch}: dense merge moved logits by {d_dense}"
        );
        model.unmerge_adapter();
        assert_eq!(
            diff(&logits(&model, &g), &unmerged),
            0.0,
            "{arch}: unmerge is exact"
        );
        // Re-quantized (peft's 4-bit merge): the merged weight rounds to 4 bits again. The bound
        // is what rounding the base to 4 bits costs in the first place.
        let fp32 = {
            let m = PeftModel::new(load(&format!("tiny-{arch}")), model.config().clone()).unwrap();
            // Same factors and head as the QLoRA model.
            let tmp = tempfile::tempdir().unwrap();
            model.save_pretrained(tmp.path(), None, None).unwrap();
            std::fs::remove_file(tmp.path().join(QUANT_CONFIG_FILE)).unwrap();
            drop(m);
            let m = PeftModel::from_pretrained(load(&format!("tiny-{arch}")), tmp.path()).unwrap();
            logits(&m, &g)
        };
        let quantization_cost = diff(&unmerged, &fp32);
        model.merge_adapter_requantized().unwrap();
        assert!(model
            .base()
            .linears()
            .iter()
            .filter(|l| !is_head(l.path()))
            .all(|l| l.packed().is_some()));
        // Each re-quantized merged weight is its dense merge rounded to 4 bits: per element
        // within half the widest gap of the NF4 table (0.1519: between -1 and -0.6962) times its
        // block's absmax `a`, plus the error of the stored (double-quantized, 8-bit) absmax `a'`
        // that dequantization uses: |q − m| ≤ 0.1519·a + |a' − a|.
        for (path, dense) in &merged {
            let l = model
                .base()
                .linears()
                .into_iter()
                .find(|l| l.path() == path)
                .unwrap();
            let packed = l
                .packed()
                .expect("re-quantized")
                .as_any()
                .downcast_ref::<Packed4bit>()
                .unwrap();
            let q = packed.unpack(Kind::Float);
            let blocks = |t: &Tensor| t.reshape([-1, 64]);
            let absmax = blocks(dense).abs().amax([1].as_slice(), true);
            let stored = packed.weight.absmax.values().reshape([-1, 1]);
            let bound = &absmax * 0.1519 + (&stored - &absmax).abs() + 1e-7;
            let err = (blocks(&q) - blocks(dense)).abs();
            let excess = (&err - &bound).max().double_value(&[]);
            assert!(
                excess <= 0.0,
                "{arch} {path}: re-quantized merge exceeds 4-bit rounding by {excess}"
            );
            assert!(
                err.max().double_value(&[]) > 0.0,
                "{arch} {path}: nothing was rounded"
            );
        }
        let d_requant = diff(&logits(&model, &g), &unmerged);
        eprintln!(
            "{arch}: merged vs unmerged: dense {d_dense:.2e}, re-quantized {d_requant:.2e}; 4-bit base vs fp32 base {quantization_cost:.2e}"
        );
        // On the logits: the same order as rounding the base to 4 bits costs in the first place.
        assert!(
            d_requant > 0.0 && d_requant <= 5.0 * quantization_cost,
            "{arch}: re-quantized merge moved logits by {d_requant} (4-bit rounding of the base costs {quantization_cost})"
        );
        model.unmerge_adapter();
        assert_eq!(
            diff(&logits(&model, &g), &unmerged),
            0.0,
            "{arch}: unmerge restores the 4-bit base"
        );
    }
}

#[test]
fn merge_and_unload_dequantizes_into_a_saveable_checkpoint() {
    let g = inputs("roberta");
    let model = trained_qlora("roberta");
    let expected = logits(&model, &g);
    let plain = model.merge_and_unload().unwrap();
    assert!(plain.linears().iter().all(|l| l.packed().is_none()));
    let tmp = tempfile::tempdir().unwrap();
    plain.save_pretrained(&tmp.path().join("m")).unwrap();
    let reloaded = SequenceClassifier::load(&tmp.path().join("m"), &LoadOptions::new(Device::Cpu))
        .unwrap()
        .0;
    let out = logits(&reloaded, &g);
    let d = diff(&out, &expected);
    assert!(d <= 1e-5, "{d}");
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_with_lora_and_qlora() {
    // Dropout-free tiny models (trainer fixtures) and LoRA dropout 0: both passes are exact.
    for (dir, arch, targets) in [
        ("trainer-bert", "bert", vec!["query", "value", "dense"]),
        ("trainer-gpt2", "gpt2", vec!["c_attn", "c_fc"]),
    ] {
        let g = inputs(arch);
        for quantized in [false, true] {
            let make = || {
                let cfg = LoraConfig {
                    init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
                    lora_dropout: 0.0,
                    ..LoraConfig::new(&targets, 4, 8.0)
                };
                if quantized {
                    PeftModel::new_quantized(load(dir), cfg, nf4_dq()).unwrap()
                } else {
                    PeftModel::new(load(dir), cfg).unwrap()
                }
            };
            let plain = make();
            // The same adapter through its files (tests share torch's generator across threads,
            // so a second random init would not be the same).
            let tmp = tempfile::tempdir().unwrap();
            plain.save_pretrained(tmp.path(), None, None).unwrap();
            let checkpointed = PeftModel::from_pretrained(load(dir), tmp.path()).unwrap();
            assert_eq!(checkpointed.quantization().is_some(), quantized);
            let expected = grads(&plain, &g);
            assert!(checkpointed.enable_gradient_checkpointing());
            let got = grads(&checkpointed, &g);
            assert_grads_close(
                &expected,
                &got,
                |_| 1e-5,
                &format!("{dir} quantized={quantized}"),
            );
        }
    }
}

#[test]
fn gradients_through_the_4bit_base_equal_those_through_its_dequantized_weights() {
    // The 4-bit product does not keep its dequantized weight for backward (it dequantizes again,
    // as bitsandbytes' MatMul4Bit): the gradients must still be those of a dense model holding
    // the dequantized weights, with LoRA on every linear so that gradients cross every base
    // product. Compute dtypes fp32 and bf16 (bitsandbytes' recommended one).
    for (dir, arch, targets) in [
        (
            "trainer-bert",
            "bert",
            vec!["query", "key", "value", "dense"],
        ),
        ("trainer-gpt2", "gpt2", vec!["c_attn", "c_proj", "c_fc"]),
    ] {
        let g = inputs(arch);
        for compute in [None, Some(Kind::BFloat16)] {
            let bnb = BnbConfig {
                bnb_4bit_compute_dtype: compute.map(|_| "bfloat16".to_string()),
                ..nf4_dq()
            };
            let cfg = LoraConfig {
                init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
                lora_dropout: 0.0,
                ..LoraConfig::new(&targets, 4, 8.0)
            };
            let quantized = PeftModel::new_quantized(load(dir), cfg, bnb.clone()).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            quantized.save_pretrained(tmp.path(), None, None).unwrap();
            // The same adapter over a dense base holding the dequantized weights.
            std::fs::remove_file(tmp.path().join(QUANT_CONFIG_FILE)).unwrap();
            let mut base = load(dir);
            quantize_model(&mut base, &bnb).unwrap();
            for l in base.linears_mut() {
                l.unpack();
            }
            let dense = PeftModel::from_pretrained(base, tmp.path()).unwrap();
            assert!(dense.quantization().is_none());
            // bf16: products in bf16 on both sides (the dense model through the global compute
            // dtype), so only the storage differs.
            let (expected, got) = peftkit_models::with_compute_dtype(compute, || {
                (grads(&dense, &g), grads(&quantized, &g))
            });
            // Relative to each tensor's largest gradient.
            let rel = if compute.is_some() { 1e-3 } else { 1e-5 };
            assert_grads_close(
                &expected,
                &got,
                |a| rel * a.abs().max().double_value(&[]).max(1e-6),
                &format!("{dir} {compute:?}"),
            );
        }
    }
}

#[test]
fn bad_quantization_configs_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(QUANT_CONFIG_FILE);
    for (text, needle) in [
        (
            r#"{"load_in_4bit": true, "bnb_4bit_compute_dtype": "float8"}"#,
            "float8",
        ),
        (
            r#"{"load_in_4bit": true, "bnb_4bit_quant_type": "int3"}"#,
            "int3",
        ),
        (
            r#"{"load_in_8bit": true, "load_in_4bit": false}"#,
            "only 4-bit",
        ),
        (r#"{"load_in_4bit": true, "bnb_4bit_blocksize": 48}"#, "48"),
        (
            r#"{"load_in_4bit": true, "bnb_4bit_typo": 1}"#,
            "bnb_4bit_typo",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = BnbConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains(QUANT_CONFIG_FILE) && e.contains(needle), "{e}");
    }
    // transformers' own serialisation of a BitsAndBytesConfig reads.
    std::fs::write(
        &path,
        r#"{"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4",
            "bnb_4bit_use_double_quant": false, "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null,
            "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
            "quant_method": "bitsandbytes"}"#,
    )
    .unwrap();
    let cfg = BnbConfig::from_file(&path).unwrap();
    assert_eq!(cfg.bnb_4bit_quant_type, QuantType::Fp4);
}

#[test]
fn compute_dtype_sets_the_product_precision_and_keeps_the_input_dtype() {
    let g = inputs("bert");
    let x = Tensor::randn([3, 32], (Kind::Float, Device::Cpu));
    let run = |compute: Option<&str>| {
        let mut model = load("tiny-bert");
        let cfg = BnbConfig {
            bnb_4bit_compute_dtype: compute.map(str::to_string),
            ..nf4_dq()
        };
        quantize_model(&mut model, &cfg).unwrap();
        let l = model
            .linears()
            .into_iter()
            .find(|l| l.packed().is_some())
            .unwrap();
        assert_eq!(l.in_features(), 32);
        let y = l.forward(&x, false);
        let logits = logits(&model, &g);
        (y, logits)
    };
    let (y32, l32) = run(Some("float32"));
    let (y_default, l_default) = run(None);
    assert_eq!(
        diff(&y32, &y_default),
        0.0,
        "unset = the input's dtype (fp32)"
    );
    assert_eq!(diff(&l32, &l_default), 0.0);
    for dtype in ["bfloat16", "float16"] {
        let (y, logits) = run(Some(dtype));
        assert_eq!(
            y.kind(),
            Kind::Float,
            "{dtype}: output in the input's dtype, as bitsandbytes"
        );
        let d = diff(&y, &y32);
        assert!(
            d > 0.0 && d < 0.05,
            "{dtype}: product differs from fp32 compute by {d}"
        );
        let d = diff(&logits, &l32);
        assert!(d < 0.05, "{dtype}: logits differ from fp32 compute by {d}");
    }
}
