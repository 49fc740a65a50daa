//! Parity with HF `Trainer` (fixture from `data/fixtures/make_fixtures.py`): two AdamW steps with
//! weight decay, a linear schedule and gradient clipping give the same parameters to ≤ 1e-6; and
//! the trainer's own behaviours (determinism, resume, accumulation, early stopping).

use peftkit_models::{read_safetensors, LoadOptions, SequenceClassifier};
use peftkit_tokenize::Padding;
use peftkit_train::{Dataset, Strategy, TrainModel, Trainer, TrainingArgs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Dropout and data order come from torch's global generator, which the test harness's parallel
/// threads would share: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures")
}

/// The golden batch of a tiny model as a dataset (rows unpadded again).
fn golden_dataset(arch: &str) -> Dataset {
    let g: HashMap<String, Tensor> =
        read_safetensors(&fixtures().join(format!("tiny-{arch}/golden.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let pad = match arch {
        "gpt2" => 999,
        "roberta" => 1,
        _ => 0,
    };
    Dataset::from_padded(
        &g["input_ids"],
        &g["attention_mask"],
        &g["labels"],
        vec!["neg".into(), "neu".into(), "pos".into()],
        Padding::Longest,
        pad,
    )
    .unwrap()
}

fn hf_args() -> TrainingArgs {
    TrainingArgs {
        learning_rate: 1e-3,
        weight_decay: 0.01,
        max_steps: Some(2),
        per_device_train_batch_size: 4,
        max_grad_norm: 1.0,
        logging_steps: 1,
        eval_strategy: Strategy::No,
        save_strategy: Strategy::No,
        load_best_model_at_end: false,
        ..TrainingArgs::default()
    }
}

#[test]
fn two_adamw_steps_equal_hf_trainer() {
    let _serial = serial();
    for arch in ["bert", "gpt2"] {
        let dir = fixtures().join(format!("trainer-{arch}"));
        let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = Trainer::new(&model, hf_args(), tmp.path())
            .unwrap()
            .with_progress(false)
            .train(&golden_dataset(arch), None, None)
            .unwrap();
        assert_eq!(out.global_step, 2);
        // Memory metrics, as HF Trainer's: on the CPU the process's resident memory.
        let m = out.memory.expect("memory statistics on the CPU");
        assert_eq!(m.source, peftkit_models::MemorySource::ProcessResident);
        assert!(m.start_bytes > 0 && m.end_bytes > 0, "{m:?}");
        assert!(m.peak_bytes >= m.start_bytes.max(m.end_bytes), "{m:?}");
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["memory"]["peak_bytes"].as_i64(), Some(m.peak_bytes));
        let expected: HashMap<String, Tensor> = read_safetensors(&dir.join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        let vars = model.var_store().variables();
        assert_eq!(vars.len(), expected.len());
        for (name, var) in &vars {
            let want = &expected[&format!("param.{name}")];
            let d = (var.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d <= 1e-6, "{arch}: {name} differs from HF Trainer by {d}");
        }
        // HF logged (rounded to 4 digits) losses of 1.1009 / 1.0946 (bert), 1.1273 / 0.9313 (gpt2).
        let losses: Vec<f64> = out
            .log_history
            .iter()
            .filter_map(|r| r["loss"].as_f64())
            .collect();
        let hf = if arch == "bert" {
            [1.1009, 1.0946]
        } else {
            [1.1273, 0.9313]
        };
        for (a, b) in losses.iter().zip(hf) {
            assert!((a - b).abs() < 1e-4, "{arch}: logged loss {a} vs HF {b}");
        }
    }
}

fn params(model: &SequenceClassifier) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn same(a: &SequenceClassifier, b: &SequenceClassifier) -> f64 {
    params(a)
        .iter()
        .zip(params(b))
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// A longer run on the tiny RoBERTa with dropout on, evaluation and checkpoints every 3 steps.
fn long_args() -> TrainingArgs {
    TrainingArgs {
        learning_rate: 5e-3,
        max_steps: Some(12),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        warmup_ratio: 0.2,
        weight_decay: 0.01,
        logging_steps: 2,
        eval_strategy: Strategy::Steps,
        eval_steps: 3,
        save_strategy: Strategy::Steps,
        save_steps: 3,
        ..TrainingArgs::default()
    }
}

fn repeated(arch: &str, times: usize) -> Dataset {
    let mut d = golden_dataset(arch);
    let (ids, labels) = (d.ids.clone(), d.labels.clone());
    for _ in 1..times {
        d.ids.extend(ids.iter().cloned());
        d.labels.extend(labels.iter().copied());
    }
    d
}

#[test]
fn same_seed_same_result_and_resume_equals_uninterrupted() {
    let _serial = serial();
    let dir = fixtures().join("tiny-roberta");
    let data = repeated("roberta", 5); // 20 rows, 10 micro-batches, 5 steps per epoch
    let eval = golden_dataset("roberta");
    let load = || {
        SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu))
            .unwrap()
            .0
    };

    let a = load();
    let tmp_a = tempfile::tempdir().unwrap();
    let out_a = Trainer::new(&a, long_args(), tmp_a.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), None)
        .unwrap();
    let b = load();
    let tmp_b = tempfile::tempdir().unwrap();
    let out_b = Trainer::new(&b, long_args(), tmp_b.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), None)
        .unwrap();
    assert_eq!(same(&a, &b), 0.0, "same seed, different parameters");
    assert_eq!(out_a.train_loss, out_b.train_loss);

    // Killed after step 7 (the last checkpoint is step 6), resumed from checkpoint-6.
    let c = load();
    let tmp_c = tempfile::tempdir().unwrap();
    Trainer::new(&c, long_args(), tmp_c.path())
        .unwrap()
        .with_progress(false)
        .stop_after(7)
        .train(&data, Some(&eval), None)
        .unwrap();
    let d = load();
    let resumed = Trainer::new(&d, long_args(), tmp_c.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), Some(&tmp_c.path().join("checkpoint-6")))
        .unwrap();
    assert_eq!(resumed.global_step, 12);
    assert!(
        same(&a, &d) <= 1e-6,
        "resumed run differs by {}",
        same(&a, &d)
    );
    assert!((resumed.train_loss - out_a.train_loss).abs() < 1e-6);
    assert_eq!(
        resumed
            .best_checkpoint
            .as_ref()
            .map(|p| p.file_name().unwrap().to_owned()),
        out_a
            .best_checkpoint
            .as_ref()
            .map(|p| p.file_name().unwrap().to_owned())
    );
    // Evaluations at steps 3, 6, 9 and 12; the model ends at the best checkpoint's parameters.
    let evals: Vec<u64> = out_a
        .log_history
        .iter()
        .filter(|r| r.get("eval_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![3, 6, 9, 12]);
    let best: HashMap<String, Tensor> = read_safetensors(
        &out_a
            .best_checkpoint
            .clone()
            .unwrap()
            .join("trainable.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    for (name, t) in a.trainable_parameters() {
        assert_eq!(
            (&t - &best[&name]).abs().max().double_value(&[]),
            0.0,
            "{name} is not the best checkpoint's"
        );
    }
}

#[test]
fn a_mismatched_resume_is_an_error() {
    let _serial = serial();
    let dir = fixtures().join("tiny-roberta");
    let (m, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let data = repeated("roberta", 5);
    let eval = golden_dataset("roberta");
    let tmp = tempfile::tempdir().unwrap();
    Trainer::new(&m, long_args(), tmp.path())
        .unwrap()
        .with_progress(false)
        .stop_after(3)
        .train(&data, Some(&eval), None)
        .unwrap();
    let args = TrainingArgs {
        max_steps: Some(20),
        ..long_args()
    };
    let err = Trainer::new(&m, args, tmp.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), Some(&tmp.path().join("checkpoint-3")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the checkpoint is from a run of 12 steps, this one has 20"),
        "{err}"
    );
}

#[test]
fn early_stopping_and_checkpoint_rotation() {
    let _serial = serial();
    let dir = fixtures().join("tiny-bert");
    let (m, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let data = repeated("bert", 5);
    let eval = golden_dataset("bert");
    // A learning rate this large makes the eval loss rise: patience 1 stops at the 2nd bad eval.
    let args = TrainingArgs {
        learning_rate: 0.5,
        max_steps: Some(30),
        early_stopping_patience: Some(2),
        save_total_limit: Some(1),
        ..long_args()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = Trainer::new(&m, args, tmp.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), None)
        .unwrap();
    assert!(out.stopped_early, "{:?}", out.log_history);
    assert!(out.global_step < 30);
    // Only the best checkpoint and at most one other remain.
    let kept = std::fs::read_dir(tmp.path()).unwrap().count();
    assert!(kept <= 2, "{kept} checkpoints kept");
    assert!(out.best_checkpoint.unwrap().exists());
}

#[test]
fn invalid_arguments_are_rejected() {
    let _serial = serial();
    let (m, _) = SequenceClassifier::load(
        &fixtures().join("tiny-bert"),
        &LoadOptions::new(Device::Cpu),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = |args: TrainingArgs| {
        Trainer::new(&m, args, tmp.path())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(TrainingArgs {
        per_device_train_batch_size: 0,
        ..hf_args()
    })
    .contains("batch sizes must be at least 1"));
    assert!(err(TrainingArgs {
        precision: peftkit_train::Precision::Fp16,
        ..hf_args()
    })
    .contains("needs a CUDA device"));
    assert!(err(TrainingArgs {
        metric_for_best_model: "bleu".into(),
        ..hf_args()
    })
    .contains("metric_for_best_model `bleu` is unknown"));
    assert!(err(TrainingArgs {
        load_best_model_at_end: true,
        eval_strategy: Strategy::Epoch,
        save_strategy: Strategy::No,
        ..hf_args()
    })
    .contains("save_strategy equal to eval_strategy"));
}

#[test]
fn bf16_trains_on_cpu_and_fp16_asks_for_cuda() {
    let _serial = serial();
    let (m, _) = SequenceClassifier::load(
        &fixtures().join("trainer-bert"),
        &LoadOptions::new(Device::Cpu),
    )
    .unwrap();
    let data = repeated("bert", 4);
    let fp32 = peftkit_train::evaluate(&m, &data, 16, 1).unwrap();
    let bf16 = peftkit_train::evaluate_in(&m, &data, 16, 1, Some(Kind::BFloat16)).unwrap();
    assert!(
        (fp32.loss - bf16.loss).abs() < 2e-2,
        "bf16 eval loss {} vs fp32 {}",
        bf16.loss,
        fp32.loss
    );
    assert!(
        fp32.loss != bf16.loss,
        "bf16 made no difference: the compute dtype was not applied"
    );
    let args = TrainingArgs {
        precision: peftkit_train::Precision::Bf16,
        max_steps: Some(6),
        learning_rate: 1e-2,
        ..hf_args()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = Trainer::new(&m, args, tmp.path())
        .unwrap()
        .with_progress(false)
        .train(&data, None, None)
        .unwrap();
    let losses: Vec<f64> = out
        .log_history
        .iter()
        .filter_map(|r| r["loss"].as_f64())
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        losses.last().unwrap() < losses.first().unwrap(),
        "{losses:?}"
    );
    // The parameters stay fp32.
    assert!(m
        .var_store()
        .variables()
        .values()
        .all(|v| v.kind() == Kind::Float));
}

#[test]
fn gradient_checkpointing_trains_like_without() {
    let _serial = serial();
    let run = |checkpointing: bool| {
        let (m, _) = SequenceClassifier::load(
            &fixtures().join("trainer-gpt2"),
            &LoadOptions::new(Device::Cpu),
        )
        .unwrap();
        let args = TrainingArgs {
            gradient_checkpointing: checkpointing,
            ..hf_args()
        };
        let tmp = tempfile::tempdir().unwrap();
        Trainer::new(&m, args, tmp.path())
            .unwrap()
            .with_progress(false)
            .train(&golden_dataset("gpt2"), None, None)
            .unwrap();
        params(&m)
    };
    let (a, b) = (run(false), run(true));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let d = (x - y).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{n} differs by {d} with gradient checkpointing");
    }
}

#[test]
fn evaluation_batches_by_length_but_predicts_in_row_order() {
    let (m, _) = SequenceClassifier::load(
        &fixtures().join("tiny-gpt2"),
        &LoadOptions::new(Device::Cpu),
    )
    .unwrap();
    let data = golden_dataset("gpt2");
    let batches = data.eval_batches(2);
    let order: Vec<usize> = batches.iter().flatten().copied().collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..data.len()).collect::<Vec<_>>(),
        "every row once"
    );
    let lens: Vec<usize> = order.iter().map(|&i| data.ids[i].len()).collect();
    assert!(
        lens.windows(2).all(|w| w[0] >= w[1]),
        "longest first: {lens:?}"
    );
    // Each row alone, in row order, gives the same predictions.
    let out = peftkit_train::evaluate(&m, &data, 2, 1).unwrap();
    for (i, &p) in out.predictions.iter().enumerate() {
        let one = Dataset {
            ids: vec![data.ids[i].clone()],
            labels: vec![data.labels[i]],
            ..data.clone()
        };
        let alone = peftkit_train::evaluate(&m, &one, 1, 1).unwrap();
        assert_eq!(alone.predictions, vec![p], "row {i}");
    }
}

#[test]
fn a_non_finite_loss_stops_training_naming_the_step_and_the_last_checkpoint() {
    let _serial = serial();
    let dir = fixtures().join("tiny-bert");
    let (m, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let data = repeated("bert", 5);
    let eval = golden_dataset("bert");
    // SGD at an absurd learning rate: the weights overflow and the loss becomes NaN / inf.
    let args = TrainingArgs {
        learning_rate: 1e30,
        lr_scheduler_type: peftkit_train::Scheduler::Constant,
        warmup_ratio: 0.0,
        warmup_steps: 0,
        optim: peftkit_train::Optim::Sgd,
        max_grad_norm: 0.0,
        max_steps: Some(30),
        save_strategy: Strategy::Steps,
        save_steps: 1,
        eval_strategy: Strategy::Steps,
        eval_steps: 1,
        logging_steps: 1,
        load_best_model_at_end: false,
        ..long_args()
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = Trainer::new(&m, args, tmp.path())
        .unwrap()
        .with_progress(false)
        .train(&data, Some(&eval), None)
        .unwrap_err()
        .to_string();
    assert!(
        // The loss, or the evaluation's logits (the weights went bad at the step before an
        // evaluation), whichever the run reads first.
        (err.starts_with("training stopped: the training loss is")
            || err.starts_with("training stopped: the evaluation's logits are non-finite"))
            && err.contains("learning rate 1.000e30"),
        "{err}"
    );
    // The run stopped at the first bad step: every checkpoint it left is of finite weights, and
    // the message names the newest.
    let step: usize = err
        .split(" at step ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step < 30);
    if step > 1 {
        let last = tmp.path().join(format!("checkpoint-{}", step - 1));
        assert!(err.contains(&last.display().to_string()), "{err}");
        for (name, t) in read_safetensors(&last.join("trainable.safetensors")).unwrap() {
            assert!(
                bool::try_from(t.isfinite().all()).unwrap(),
                "{name} is not finite"
            );
        }
    }
}
