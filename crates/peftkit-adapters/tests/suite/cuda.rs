//! The suite's CUDA half: every (model × adapter kind) pair on a GPU gives the CPU's logits and
//! gradients, trains under gradient checkpointing (QLoRA: the recomputed 4-bit product's autograd
//! node on the device), and trains in fp16 (dynamic loss scaling) and bf16. Each test returns at
//! once where no CUDA device is present (CI), and runs on a lent GPU machine through
//! `cargo xtask gpu-pack`.

use super::*;
use peftkit_models::{memory_usage, MemorySource};
use tch::Device;

const CUDA: Device = Device::Cuda(0);

/// `true` where a CUDA device is present; says so on stderr where not. Where one is, cuDNN's
/// TF32 arithmetic (PyTorch's default; P-tuning's LSTM runs on cuDNN) is turned off: the
/// comparisons with the CPU are of fp32 results.
fn have_cuda(what: &str) -> bool {
    let ok = tch::Cuda::is_available();
    if ok {
        peftkit_models::set_cudnn_allow_tf32(false);
    } else {
        eprintln!("{what}: skipped (no CUDA device)");
    }
    ok
}

/// `kind` built on `arch`'s tiny checkpoint with every dropout off, on `device`, its trainable
/// tensors copied from `from` (the CPU model) so both sides hold the same values.
fn build_on(
    kind: &AdapterKind,
    arch: &str,
    device: Device,
    from: Option<&PeftModel>,
) -> (tempfile::TempDir, PeftModel) {
    tch::manual_seed(7);
    let (dir, base) = without_dropout_on(arch, device);
    let model = (kind.build)(arch, base).unwrap();
    if let Some(src) = from {
        let values: HashMap<String, Tensor> = src.trainable_parameters().into_iter().collect();
        tch::no_grad(|| {
            for (name, mut t) in model.trainable_parameters() {
                let v = values
                    .get(&name)
                    .unwrap_or_else(|| panic!("{} {arch}: {name} is not on the CPU", kind.name));
                t.copy_(v);
            }
        });
    }
    (dir, model)
}

/// Clears the trainable tensors' gradients.
fn zero_grads(model: &PeftModel) {
    for (_, t) in model.trainable_parameters() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Logits and the gradients of the eval-mode loss (no dropout anywhere, so both devices compute
/// the same function). cuDNN's LSTM refuses a backward pass in eval mode ("cudnn RNN backward
/// can only be called in training mode", seen on the H200): the LSTM prompt encoder, which has no
/// dropout here, runs in train mode instead — the same function.
fn logits_and_grads(
    model: &PeftModel,
    arch: &str,
    kind: &AdapterKind,
) -> (Tensor, Vec<(String, Tensor)>) {
    let train = kind.name.starts_with("ptuning_lstm");
    let device = model.base().device();
    let g = inputs(arch);
    let (ids, mask, labels) = (
        g["input_ids"].to_device(device),
        g["attention_mask"].to_device(device),
        g["labels"].to_device(device),
    );
    zero_grads(model);
    let rows = compared_rows(arch, kind, &mask);
    let logits = model
        .logits(&ids, &mask, train)
        .unwrap()
        .index_select(0, &rows);
    model
        .loss(&logits, &labels.index_select(0, &rows))
        .backward();
    let grads = model
        .trainable_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.grad().to_device(Device::Cpu)))
        .collect();
    (logits.detach().to_device(Device::Cpu), grads)
}

/// The golden rows a device comparison keeps. A decoder under prompt learning pools each row's
/// last position (transformers cannot tell pad tokens among input embeddings); in a right-padded
/// row that is a pad token, whose attention is fully masked under Mistral's 4-token window, and
/// what SDPA returns for a fully masked row is the kernel's choice (the CPU's: uniform weights;
/// CUDA's memory-efficient kernel: zeros — seen on the H200). Those rows are left out; every
/// other row, and every row of every other case, is compared.
fn compared_rows(arch: &str, kind: &AdapterKind, mask: &Tensor) -> Tensor {
    let decoder = matches!(arch, "llama" | "qwen2" | "mistral");
    let prompted = matches!(kind.name, "prompt" | "ptuning_mlp" | "ptuning_lstm");
    let batch = mask.size()[0];
    let keep: Vec<i64> = (0..batch)
        .filter(|&r| !(decoder && prompted) || mask.int64_value(&[r, -1]) == 1)
        .collect();
    assert!(!keep.is_empty(), "{arch}: no row left to compare");
    Tensor::from_slice(&keep).to_device(mask.device())
}

pub fn cuda_equals_cpu(kind: &AdapterKind, arch: &str) {
    if !have_cuda(kind.name) {
        return;
    }
    let (_c, cpu) = build_on(kind, arch, Device::Cpu, None);
    let (_g, gpu) = build_on(kind, arch, CUDA, Some(&cpu));
    assert_eq!(gpu.base().device(), CUDA);
    let (want_logits, want) = logits_and_grads(&cpu, arch, kind);
    let (got_logits, got) = logits_and_grads(&gpu, arch, kind);
    let scale = want_logits.abs().max().double_value(&[]);
    let d = diff(&want_logits, &got_logits);
    assert!(
        d <= 1e-5 + 1e-4 * scale,
        "{} {arch}: CUDA logits differ from the CPU's by {d}",
        kind.name
    );
    assert_grads_close(
        &want,
        &got,
        |a| 1e-6 + 1e-4 * a.abs().max().double_value(&[]),
        &format!("{} {arch} on CUDA", kind.name),
    );
    // Gradient checkpointing on the device: the same gradients as without it.
    if gpu.enable_gradient_checkpointing() {
        let factor = Tensor::from(1.0f32).to_device(CUDA);
        let g = inputs(arch);
        zero_grads(&gpu);
        let loss = gpu
            .loss_backward(
                &g["input_ids"].to_device(CUDA),
                &g["attention_mask"].to_device(CUDA),
                &g["labels"].to_device(CUDA),
                &factor,
            )
            .unwrap();
        assert!(loss.double_value(&[]).is_finite());
        for (name, t) in gpu.trainable_parameters() {
            let grad = t.grad();
            assert!(
                grad.defined(),
                "{} {arch}: {name} got no gradient",
                kind.name
            );
            assert!(
                bool::try_from(grad.isfinite().all()).unwrap(),
                "{} {arch}: {name}'s checkpointed gradient is not finite",
                kind.name
            );
        }
    }
    let mem = memory_usage(CUDA).unwrap();
    assert_eq!(mem.source, MemorySource::CudaAllocated);
    assert!(
        mem.current_bytes > 0 && mem.peak_bytes >= mem.current_bytes,
        "{mem:?}"
    );
}

/// fp16 (with loss scaling) and bf16 training on the device follow fp32 training: from the same
/// start, the same applied updates (constant learning rate; the fp32 run takes as many steps as
/// fp16 applied, its loss scaler having skipped the others) end at a finite loss within a quarter
/// of fp32's progress of fp32's loss. (A decrease alone is no test: AdaLoRA prunes ranks within
/// these steps, and its loss may rise in fp32 too.)
pub fn cuda_trains_in_mixed_precision(kind: &AdapterKind, arch: &str) {
    if !have_cuda(kind.name) {
        return;
    }
    const STEPS: usize = 6;
    let run = |precision, steps| {
        tch::manual_seed(7);
        let model = (kind.build)(arch, base_on(arch, CUDA)).unwrap();
        train_steps(model, arch, precision, steps, Scheduler::Constant)
    };
    for precision in [Precision::Fp16, Precision::Bf16] {
        let (before, after, skipped) = run(precision, STEPS);
        let applied = STEPS - skipped as usize;
        assert!(
            applied > 0 && after.is_finite(),
            "{} {arch} {precision:?} on CUDA: loss {before} -> {after}, {skipped} of {STEPS} steps skipped",
            kind.name
        );
        if kind.name == "adalora" && skipped > 0 {
            // AdaLoRA's rank budget follows the global step, which counts skipped steps too: no
            // fp32 run has the same schedule and updates; the direction is checked.
            assert!(
                after < before,
                "{} {arch} {precision:?} on CUDA: loss {before} -> {after} ({skipped} steps skipped)",
                kind.name
            );
            continue;
        }
        let (start, reference, _) = run(Precision::Fp32, applied);
        assert!((start - before).abs() <= 1e-6 * before.abs().max(1.0));
        assert!(
            (after - reference).abs() <= 0.25 * (before - reference).abs() + 0.01 * reference.abs(),
            "{} {arch} {precision:?} on CUDA: loss {before} -> {after} ({skipped} steps skipped), fp32 in {applied} steps -> {reference}",
            kind.name
        );
    }
}
