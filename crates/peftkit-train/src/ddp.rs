//! What a distributed run changes in the training loop, behind one small seam over a
//! [`ProcessGroup`]: the flat gradient averaged in buckets, scalars averaged for logging, the
//! trainable parameters made equal from rank 0, and who writes.

use crate::Result;
use peftkit_distributed::ProcessGroup;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What the gradient all-reduce of a distributed run cost (in [`crate::TrainOutput`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistributedStats {
    /// Ranks.
    pub world_size: usize,
    /// Bytes of gradient all-reduced per optimizer step (per rank).
    pub allreduce_bytes_per_step: u64,
    /// Buckets per step.
    pub buckets_per_step: usize,
    /// Wall-clock seconds this rank spent in the gradient all-reduce (waiting for slower ranks
    /// included), over all steps.
    pub allreduce_seconds: f64,
    /// Optimizer steps that all-reduced.
    pub steps: u64,
}

/// The trainer's view of its process group (`None`: a single process).
pub(crate) struct Ddp<'a> {
    group: Option<&'a ProcessGroup>,
    bucket_elems: i64,
    seconds: Cell<f64>,
    steps: Cell<u64>,
    bytes: Cell<u64>,
    buckets: Cell<usize>,
}

impl<'a> Ddp<'a> {
    pub(crate) fn new(group: Option<&'a ProcessGroup>, bucket_cap_mb: f64) -> Self {
        // fp32 gradients: 4 bytes a value.
        let bucket_elems = ((bucket_cap_mb * 1024.0 * 1024.0 / 4.0) as i64).max(1024);
        Self {
            group,
            bucket_elems,
            seconds: Cell::new(0.0),
            steps: Cell::new(0),
            bytes: Cell::new(0),
            buckets: Cell::new(0),
        }
    }

    /// The all-reduce's cost so far (`None`: a single process).
    pub(crate) fn stats(&self) -> Option<DistributedStats> {
        self.group.map(|g| DistributedStats {
            world_size: g.world_size(),
            allreduce_bytes_per_step: self.bytes.get(),
            buckets_per_step: self.buckets.get(),
            allreduce_seconds: self.seconds.get(),
            steps: self.steps.get(),
        })
    }

    pub(crate) fn rank(&self) -> usize {
        self.group.map_or(0, ProcessGroup::rank)
    }

    pub(crate) fn world(&self) -> usize {
        self.group.map_or(1, ProcessGroup::world_size)
    }

    /// Rank 0 (or the only process): the one that logs and writes.
    pub(crate) fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Averages the flat gradient over the ranks: a sum all-reduce of `bucket_cap_mb` buckets
    /// (all in flight at once), then one division. `true` when it did (a distributed run).
    pub(crate) fn average_gradients(&self, grad: &mut Tensor) -> Result<bool> {
        let Some(g) = self.group else {
            return Ok(false);
        };
        let start = Instant::now();
        let buckets = grad.split(self.bucket_elems, 0);
        let refs: Vec<&Tensor> = buckets.iter().collect();
        g.all_reduce_sum(&refs)?;
        let _ = grad.g_div_scalar_(g.world_size() as f64);
        self.seconds
            .set(self.seconds.get() + start.elapsed().as_secs_f64());
        self.steps.set(self.steps.get() + 1);
        self.bytes
            .set(grad.numel() as u64 * grad.kind().elt_size_in_bytes() as u64);
        self.buckets.set(buckets.len());
        Ok(true)
    }

    /// The mean over the ranks of a scalar (a copy; the input is untouched).
    pub(crate) fn mean(&self, t: &Tensor) -> Result<Tensor> {
        let Some(g) = self.group else {
            return Ok(t.shallow_clone());
        };
        let kind = t.kind();
        let v = t
            .to_kind(Kind::Double)
            .reshape([1])
            .to_device(g.collective_device())
            .copy();
        g.all_reduce_sum(&[&v])?;
        Ok((v / g.world_size() as f64)
            .reshape([])
            .to_kind(kind)
            .to_device(t.device()))
    }

    /// Makes every rank's `buffer` rank 0's (DDP's broadcast of the module states at start).
    pub(crate) fn broadcast_from_main(&self, buffer: &Tensor) -> Result<()> {
        match self.group {
            Some(g) => Ok(g.broadcast(buffer, 0)?),
            None => Ok(()),
        }
    }

    /// Checks that every rank ends with rank 0's parameters (a fingerprint of `buffer` gathered):
    /// a method whose state is not kept in step across ranks is an error, not a silent
    /// divergence.
    pub(crate) fn check_in_sync(&self, buffer: &Tensor) -> Result<()> {
        let Some(g) = self.group else {
            return Ok(());
        };
        let b = buffer.to_kind(Kind::Double);
        let positions =
            Tensor::arange(b.numel() as i64, (Kind::Double, b.device())) / b.numel().max(1) as f64;
        let fingerprint = Tensor::stack(
            &[
                b.sum(Kind::Double),
                b.square().sum(Kind::Double),
                (&b * positions).sum(Kind::Double),
            ],
            0,
        )
        .to_device(g.collective_device());
        let all: Vec<f64> = Vec::try_from(&g.all_gather(&fingerprint)?.to_device(tch::Device::Cpu))
            .map_err(peftkit_models::ModelError::from)?;
        // Bitwise: a NaN on every rank is still in step.
        let bits: Vec<u64> = all.iter().map(|v| v.to_bits()).collect();
        if let Some(r) = (1..g.world_size()).find(|&r| bits[3 * r..3 * r + 3] != bits[..3]) {
            return Err(peftkit_distributed::DistError::Mismatch {
                what: "the trained parameters".into(),
                detail: format!(
                    "rank {r}'s differ from rank 0's after training (a method's state was not kept in step across the ranks)"
                ),
            }
            .into());
        }
        Ok(())
    }
}
