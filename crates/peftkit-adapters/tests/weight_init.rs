//! PiSSA and OLoRA (peft's `init_lora_weights = "pissa" | "olora"`): the factors and residual
//! base weights peft computes, peft's logits from its saved adapters (which recompute the
//! residual on load, as in peft), and the conversion to a plain LoRA for the original base
//! (peft's `path_initial_model_for_weight_conversion`).

mod common;
use common::*;

use peftkit_adapters::{AdapterConfig, PeftModel};
use peftkit_models::TrainModel;

#[test]
fn pissa_and_olora_match_peft_and_convert_to_plain_lora() {
    for case in ["pissa-bert", "olora-bert"] {
        let dir = fixtures().join(case);
        let golden = read(&dir.join("golden.safetensors"));
        let g = inputs("bert");
        let config = AdapterConfig::from_file(&dir.join("adapter/adapter_config.json")).unwrap();
        // Initialisation: peft's factors and residual weights.
        let fresh = PeftModel::new(base("bert"), config).unwrap();
        let vars = fresh.base().var_store().variables();
        let mut checked = 0;
        for (name, t) in fresh.trainable_parameters() {
            let Some(rest) = name.strip_prefix("base_model.model.") else {
                continue;
            };
            let key = rest.replace(".default.weight", ".weight");
            if let Some(want) = golden.get(&format!("init.{key}")) {
                let d = diff(&t, want);
                assert!(d <= 1e-5, "{case}: initial {key} differs by {d}");
                checked += 1;
            }
        }
        for (key, want) in golden.iter().filter(|(k, _)| k.starts_with("base.")) {
            let d = diff(&vars[key.strip_prefix("base.").unwrap()], want);
            assert!(d <= 1e-5, "{case}: residual {key} differs by {d}");
            checked += 1;
        }
        assert_eq!(
            checked,
            26 + 13,
            "{case}: every module's factors and residual"
        );
        let initial = tempfile::tempdir().unwrap();
        fresh.save_pretrained(initial.path(), None, None).unwrap();
        // peft's trained adapter: loading recomputes the residual, then takes A and B.
        let mut model = PeftModel::from_pretrained(base("bert"), &dir.join("adapter")).unwrap();
        let d = diff(&logits(&model, &g), &golden["logits"]);
        assert!(d <= 1e-5, "{case}: logits differ from peft's by {d}");
        let disabled = model.with_adapter_disabled(|m| logits(m, &g));
        assert!(diff(&disabled, &golden["disabled_logits"]) <= 1e-5);
        // Converted: a plain LoRA (r 8) on the original base computes the same.
        let out = tempfile::tempdir().unwrap();
        let converted = out.path().join("converted");
        model
            .save_pretrained_converted(&converted, initial.path(), None, None)
            .unwrap();
        let cfg = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(converted.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (cfg["r"].clone(), cfg["lora_alpha"].clone()),
            (8.into(), 16.into())
        );
        assert_eq!(cfg["init_lora_weights"], true);
        let plain = PeftModel::from_pretrained(base("bert"), &converted).unwrap();
        let d = diff(&logits(&plain, &g), &golden["converted_logits"]);
        assert!(
            d <= 1e-5,
            "{case}: converted adapter differs from peft's by {d}"
        );
        // The same factors as peft's conversion (peft drops the head, peftkit keeps it).
        let theirs = read(&dir.join("converted/adapter_model.safetensors"));
        let ours = read(&converted.join("adapter_model.safetensors"));
        for (k, t) in &theirs {
            assert!(diff(&ours[k], t) <= 1e-6, "{case}: converted {k}");
        }
        assert_eq!(
            ours.len(),
            theirs.len() + 2,
            "{case}: peft's keys plus the head"
        );
        model.merge_adapter();
        assert!(diff(&logits(&model, &g), &golden["merged_logits"]) <= 1e-5);
    }
}

#[test]
fn data_dependent_inits_start_where_the_base_model_is() {
    let cfg = |init: &str| peftkit_adapters::LoraConfig {
        init_lora_weights: peftkit_adapters::InitLoraWeights::Named(init.into()),
        ..peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 8.0)
    };
    let g = inputs("bert");
    let plain = logits(&base("bert"), &g);
    for init in ["pissa", "pissa_niter_4", "olora"] {
        // The adapter takes the principal part, the base the rest: the model starts unchanged.
        let m = PeftModel::new(base("bert"), cfg(init)).unwrap();
        let d = diff(&logits(&m, &g), &plain);
        assert!(
            d <= 1e-5,
            "{init}: the initialised model differs from the base by {d}"
        );
    }
    let err = PeftModel::new(base("bert"), cfg("pissa_niter_x"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("init_lora_weights `pissa_niter_x` is not supported"),
        "{err}"
    );
    // Conv1D (GPT-2): the residual in the stored [in, out] layout (peft's OLoRA gets this wrong).
    for init in ["pissa", "olora"] {
        let m = PeftModel::new(
            base("gpt2"),
            peftkit_adapters::LoraConfig {
                init_lora_weights: peftkit_adapters::InitLoraWeights::Named(init.into()),
                ..peftkit_adapters::LoraConfig::new(&["c_attn", "c_proj"], 4, 8.0)
            },
        )
        .unwrap();
        let g = inputs("gpt2");
        let d = diff(&logits(&m, &g), &logits(&base("gpt2"), &g));
        assert!(d <= 1e-5, "gpt2 {init}: differs from the base by {d}");
    }
}

#[test]
fn loftq_starts_closer_to_the_full_precision_weight_and_reloads() {
    use peftkit_adapters::quant::{quantize_4bit, BnbConfig, QuantType};
    let cfg = |iters: i64| peftkit_adapters::LoraConfig {
        init_lora_weights: peftkit_adapters::InitLoraWeights::Named("loftq".into()),
        loftq_config: [
            ("loftq_bits".to_string(), 4),
            ("loftq_iter".to_string(), iters),
        ]
        .into(),
        // LoftQ reconstructs W with scale 1 (peft's own condition: lora_alpha = r).
        ..peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 4.0)
    };
    let original = base("bert");
    let path = "bert.encoder.layer.0.attention.self.query.weight";
    let w = original.var_store().variables()[path].detach();
    let err = |t: &tch::Tensor| (t - &w).square().sum(tch::Kind::Double).double_value(&[]);
    let nf4 = quantize_4bit(&w, 64, QuantType::Nf4, false)
        .unwrap()
        .dequantize(tch::Kind::Float);
    for iters in [1, 3] {
        let model = PeftModel::new(base("bert"), cfg(iters)).unwrap();
        let vars = model.base().var_store().variables();
        let deq = vars[path].detach();
        let params: std::collections::HashMap<String, tch::Tensor> =
            model.trainable_parameters().into_iter().collect();
        let key = |m: &str| {
            format!("base_model.model.bert.encoder.layer.0.attention.self.query.{m}.default.weight")
        };
        let ba = params[&key("lora_B")].matmul(&params[&key("lora_A")]);
        assert!(
            err(&(&deq + &ba)) < err(&deq),
            "iters {iters}: the adapter takes up part of the quantization error"
        );
        if iters == 1 {
            assert_eq!(diff(&deq, &nf4), 0.0, "the base is W's NF4 dequantization");
            // B A is the best rank-4 approximation of the error: what remains is the error's
            // energy outside its top 4 singular values.
            let (_, sv, _) = (&w - &deq).svd(true, true);
            let top: f64 = sv
                .narrow(0, 0, 4)
                .square()
                .sum(tch::Kind::Double)
                .double_value(&[]);
            let want = err(&deq) - top;
            let got = err(&(&deq + &ba));
            assert!((got - want).abs() <= 1e-4 * err(&deq), "{got} vs {want}");
        }
    }
    // QLoRA with LoftQ: initialised from the full-precision weight, then quantized; the saved
    // adapter reloads (initialised the same way) with the same logits.
    let bnb = BnbConfig::default();
    let model = PeftModel::new_quantized(base("bert"), cfg(2), bnb).unwrap();
    assert!(model.base().linears().iter().any(|l| l.packed().is_some()));
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), None, None).unwrap();
    let again = PeftModel::from_pretrained(base("bert"), tmp.path()).unwrap();
    let g = inputs("bert");
    assert!(diff(&logits(&again, &g), &logits(&model, &g)) <= 1e-6);
}
