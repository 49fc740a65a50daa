//! Evaluation: one pass without gradients, sharded over the ranks of a distributed run with the
//! predictions gathered, so that every rank sees the metrics of the whole set.

use crate::data::{for_each_batch, Dataset, DeviceBatch};
use crate::trainer::EvalOutput;
use crate::{Result, TrainError};
use peftkit_distributed::ProcessGroup;
use peftkit_eval::Metrics;
use peftkit_models::{ModelError, TrainModel};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Evaluates `model` on `data` in eval mode without gradients, in fp32. Logits stay on the
/// device until the end: one transfer per evaluation.
pub fn evaluate<M: TrainModel + ?Sized>(
    model: &M,
    data: &Dataset,
    batch_size: usize,
    prefetch: usize,
) -> Result<EvalOutput> {
    evaluate_sharded(model, data, batch_size, prefetch, None, None)
}

/// [`evaluate`] with linear layers computing in `compute` (fp16 / bf16; `None`: fp32).
pub fn evaluate_in<M: TrainModel + ?Sized>(
    model: &M,
    data: &Dataset,
    batch_size: usize,
    prefetch: usize,
    compute: Option<Kind>,
) -> Result<EvalOutput> {
    evaluate_sharded(model, data, batch_size, prefetch, compute, None)
}

/// [`evaluate_in`] over the ranks of `group`: each rank runs every `world`-th of the
/// length-sorted batches, and the predictions and per-batch losses are gathered (an all-reduce
/// of zero-filled buffers, exact), so every rank returns what a single process would: the same
/// batches, the same losses summed in the same order, the same metrics. Without a group it is
/// [`evaluate_in`].
pub fn evaluate_sharded<M: TrainModel + ?Sized>(
    model: &M,
    data: &Dataset,
    batch_size: usize,
    prefetch: usize,
    compute: Option<Kind>,
    group: Option<&ProcessGroup>,
) -> Result<EvalOutput> {
    let start = Instant::now();
    let device = model.device();
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
    let batches = data.eval_batches(batch_size);
    let mine: Vec<usize> = (rank..batches.len()).step_by(world).collect();
    let order: Vec<Vec<usize>> = mine.iter().map(|&b| batches[b].clone()).collect();
    let mut logits = Vec::new();
    let mut losses = Vec::new();
    for_each_batch(data, &order, prefetch, |_, batch| -> Result<bool> {
        let b = DeviceBatch::new(&batch, device);
        let l = tch::no_grad(|| {
            peftkit_models::with_compute_dtype(compute, || {
                model.logits(&b.input_ids, &b.attention_mask, false)
            })
        })?;
        losses.push(tch::no_grad(|| {
            model.loss(&l, &b.labels).to_kind(Kind::Double) * b.size as f64
        }));
        logits.push(l.to_kind(Kind::Float));
        Ok(true)
    })?;
    // Per-batch loss sums and per-row predictions in whole-set buffers, zero where another rank
    // has them.
    let mut batch_loss = vec![0f64; batches.len()];
    let mut predictions = vec![0i64; data.len()];
    // Rows with a non-finite logit: counted everywhere, so every rank stops together.
    let mut nonfinite = [0i64];
    if !logits.is_empty() {
        let all = Tensor::cat(&logits, 0);
        nonfinite[0] = all
            .isfinite()
            .logical_not()
            .any_dim(-1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
        let in_batch_order: Vec<i64> = Vec::try_from(&all.argmax(-1, false).to_device(Device::Cpu))
            .map_err(ModelError::from)?;
        let loss_values: Vec<f64> =
            Vec::try_from(&Tensor::stack(&losses, 0).to_device(Device::Cpu))
                .map_err(ModelError::from)?;
        for (row, p) in order.iter().flatten().zip(in_batch_order) {
            predictions[*row] = p;
        }
        for (&b, l) in mine.iter().zip(loss_values) {
            batch_loss[b] = l;
        }
    }
    if let Some(g) = group {
        let at = g.collective_device();
        let p = Tensor::from_slice(&predictions).to_device(at);
        let l = Tensor::from_slice(&batch_loss).to_device(at);
        let n = Tensor::from_slice(&nonfinite).to_device(at);
        g.all_reduce_sum(&[&p, &l, &n])?;
        predictions = Vec::try_from(&p.to_device(Device::Cpu)).map_err(ModelError::from)?;
        batch_loss = Vec::try_from(&l.to_device(Device::Cpu)).map_err(ModelError::from)?;
        nonfinite[0] = n.int64_value(&[0]);
    }
    if nonfinite[0] > 0 {
        return Err(TrainError::NonFiniteLogits {
            rows: nonfinite[0],
            total: data.len(),
        });
    }
    // Summed in batch order, as a single process does.
    let loss = batch_loss.iter().fold(0f64, |acc, l| acc + l) / data.len().max(1) as f64;
    let runtime = start.elapsed().as_secs_f64();
    Ok(EvalOutput {
        loss,
        metrics: Metrics::compute(&data.labels, &predictions, &data.label_names),
        runtime,
        samples_per_second: data.len() as f64 / runtime.max(1e-9),
        predictions,
    })
}
