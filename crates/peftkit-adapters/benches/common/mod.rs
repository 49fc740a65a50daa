//! Pieces shared by this crate's benchmarks.

#![allow(dead_code)]

use peftkit_models::{Linear, LoadOptions, SequenceClassifier, TrainModel, WeightLayout};
use tch::{nn, Device, Kind, Tensor};

/// Waits for the device (CUDA kernels are asynchronous).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A training micro-batch for all-MiniLM-L6-v2: 16 random sequences of 128 tokens, binary labels.
pub struct MinilmBatch {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
    factor: Tensor,
}

impl MinilmBatch {
    /// A batch on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            ids: Tensor::randint(29000, [16, 128], (Kind::Int64, device)) + 1000,
            mask: Tensor::ones([16, 128], (Kind::Int64, device)),
            labels: Tensor::randint(2, [16], (Kind::Int64, device)),
            factor: Tensor::from(1.0f32).to_device(device),
        }
    }

    /// Forward + backward of the batch's loss, waiting for the device.
    pub fn step(&self, model: &impl TrainModel, device: Device) -> Tensor {
        let loss = model
            .loss_backward(&self.ids, &self.mask, &self.labels, &self.factor)
            .unwrap();
        sync(device);
        loss
    }
}

/// all-MiniLM-L6-v2 with a 2-label head on `device`, when `PEFTKIT_MINILM_DIR` is set (as
/// `cargo xtask bench` does).
pub fn minilm(device: Device) -> Option<SequenceClassifier> {
    let Some(dir) = std::env::var_os("PEFTKIT_MINILM_DIR") else {
        eprintln!("PEFTKIT_MINILM_DIR is not set: skipping the MiniLM benchmarks");
        return None;
    };
    let opts = LoadOptions::new(device).with_labels(vec!["neg".into(), "pos".into()]);
    Some(
        SequenceClassifier::load(std::path::Path::new(&dir), &opts)
            .unwrap()
            .0,
    )
}

/// A frozen linear of GPT-2's `c_attn` shape (768 → 2304, Conv1D layout) under `vs`.
pub fn c_attn(vs: &nn::VarStore) -> Linear {
    let l = Linear::new(
        vs.root() / "c_attn",
        768,
        2304,
        true,
        WeightLayout::InOut,
        0.02,
    );
    let _ = l.weight().set_requires_grad(false);
    let _ = l.bias().map(|b| b.set_requires_grad(false));
    l
}
