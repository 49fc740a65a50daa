//! 4-bit quantization against bitsandbytes 0.50.2 itself (fixtures from
//! `data/fixtures/make_fixtures.py --only quant`, its CPU backend): the same packed bytes, absmax
//! and nested state, and the same dequantized values; QLoRA logits equal to peft + bitsandbytes.

mod common;
use common::*;

use peftkit_adapters::quant::{
    dynamic_map, quantize_4bit, quantize_model, Absmax, BnbConfig, QuantType,
};
use peftkit_adapters::PeftModel;
use tch::{Device, Kind, Tensor};

const CASES: [(&str, i64); 6] = [
    ("square", 64),
    ("odd", 64),
    ("vector", 64),
    ("block128", 128),
    ("block4096", 4096),
    ("nested", 64),
];

#[test]
fn quantization_matches_bitsandbytes_bytes() {
    let f = read(&fixtures().join("quant/blockwise.safetensors"));
    let mut checked = 0;
    for (name, blocksize) in CASES {
        let x = &f[&format!("{name}.input")];
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            for dq in [false, true] {
                let key = format!("{name}.{}{}", qt.name(), if dq { ".dq" } else { "" });
                let q = quantize_4bit(x, blocksize, qt, dq).unwrap();
                let packed = &f[&format!("{key}.packed")];
                assert_eq!(q.packed.size(), packed.size(), "{key}: packed length");
                let wrong = q
                    .packed
                    .to_kind(Kind::Int64)
                    .ne_tensor(&packed.to_kind(Kind::Int64))
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                assert_eq!(
                    wrong, 0,
                    "{key}: {wrong} packed bytes differ from bitsandbytes'"
                );
                match &q.absmax {
                    Absmax::Plain(a) => {
                        assert!(!dq);
                        assert_eq!(diff(a, &f[&format!("{key}.absmax")]), 0.0, "{key}: absmax");
                    }
                    Absmax::Nested {
                        codes,
                        absmax,
                        offset,
                        code,
                    } => {
                        assert!(dq);
                        let expected = &f[&format!("{key}.absmax")];
                        assert_eq!(
                            codes
                                .to_kind(Kind::Int64)
                                .ne_tensor(&expected.to_kind(Kind::Int64))
                                .sum(Kind::Int64)
                                .int64_value(&[]),
                            0,
                            "{key}: nested 8-bit codes"
                        );
                        assert_eq!(
                            diff(absmax, &f[&format!("{key}.absmax2")]),
                            0.0,
                            "{key}: nested absmax"
                        );
                        assert_eq!(
                            *offset as f64,
                            f[&format!("{key}.offset")].double_value(&[0]),
                            "{key}: offset"
                        );
                        assert_eq!(
                            diff(code, &f[&format!("{key}.code2")]),
                            0.0,
                            "{key}: dynamic map"
                        );
                    }
                }
                let d = diff(
                    &q.dequantize(Kind::Float),
                    &f[&format!("{key}.dequantized")],
                );
                assert!(d <= 1e-6, "{key}: dequantized values differ by {d}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn dynamic_map_is_bitsandbytes() {
    let f = read(&fixtures().join("quant/blockwise.safetensors"));
    assert_eq!(diff(&dynamic_map(), &f["nested.nf4.dq.code2"]), 0.0);
}

#[test]
fn storage_bits_per_parameter() {
    let w = Tensor::randn([768, 3072], (Kind::Float, Device::Cpu));
    let plain = quantize_4bit(&w, 64, QuantType::Nf4, false).unwrap();
    assert!((plain.bits_per_parameter() - 4.5).abs() < 1e-9);
    let nested = quantize_4bit(&w, 64, QuantType::Nf4, true).unwrap();
    let bits = nested.bits_per_parameter();
    assert!((bits - 4.127).abs() < 0.001, "{bits}");
}

#[test]
fn bad_blocksize_and_empty_are_errors() {
    let w = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
    let e = quantize_4bit(&w, 100, QuantType::Nf4, false).unwrap_err();
    assert!(e.to_string().contains("blocksize 100"), "{e}");
    let empty = Tensor::zeros([0], (Kind::Float, Device::Cpu));
    assert!(quantize_4bit(&empty, 64, QuantType::Nf4, false).is_err());
}

#[test]
fn qlora_reproduces_peft_on_bitsandbytes() {
    let golden = read(&fixtures().join("quant/qlora.safetensors"));
    // NF4 + double quantization, and FP4 without it (emotion-qlora as published).
    for (kind, quant_type, double_quant) in [
        ("nf4_dq", QuantType::Nf4, true),
        ("fp4", QuantType::Fp4, false),
    ] {
        let config = BnbConfig {
            bnb_4bit_quant_type: quant_type,
            bnb_4bit_use_double_quant: double_quant,
            bnb_4bit_compute_dtype: Some("float32".into()),
            ..BnbConfig::default()
        };
        for arch in [
            "gpt2",
            "roberta",
            "bert",
            "distilbert",
            "modernbert",
            "deberta-v3",
            "llama",
            "qwen2",
            "mistral",
        ] {
            let mut model = base(arch);
            let summary = quantize_model(&mut model, &config).unwrap();
            assert_eq!(
                summary.modules.len() as i64,
                golden[&format!("{arch}.quantized_modules")].int64_value(&[0]),
                "{arch}: {:?}",
                summary.modules
            );
            let peft =
                PeftModel::from_pretrained(model, &fixtures().join(format!("lora-{arch}/adapter")))
                    .unwrap();
            let d = diff(
                &logits(&peft, &inputs(arch)),
                &golden[&format!("{arch}.{kind}.logits")],
            );
            assert!(
                d <= 1e-5,
                "{arch} {kind}: QLoRA logits differ from peft + bitsandbytes by {d}"
            );
        }
    }
}
