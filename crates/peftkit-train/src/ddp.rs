//! What a distributed run changes in the training loop, behind one small seam over a
//! [`ProcessGroup`]: the flat gradient averaged in buckets, scalars averaged for logging, the
//! trainable parameters made equal from rank 0, and who writes.

use crate::Result;
use peftkit_distributed::ProcessGroup;
use tch::{Kind, Tensor};

/// The trainer's view of its process group (`None`: a single process).
#[derive(Clone, Copy)]
pub(crate) struct Ddp<'a> {
    group: Option<&'a ProcessGroup>,
    bucket_elems: i64,
}

impl<'a> Ddp<'a> {
    pub(crate) fn new(group: Option<&'a ProcessGroup>, bucket_cap_mb: f64) -> Self {
        // fp32 gradients: 4 bytes a value.
        let bucket_elems = ((bucket_cap_mb * 1024.0 * 1024.0 / 4.0) as i64).max(1024);
        Self {
            group,
            bucket_elems,
        }
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
    /// (all in flight at once), then one division.
    pub(crate) fn average_gradients(&self, grad: &mut Tensor) -> Result<()> {
        let Some(g) = self.group else {
            return Ok(());
        };
        let buckets = grad.split(self.bucket_elems, 0);
        let refs: Vec<&Tensor> = buckets.iter().collect();
        g.all_reduce_sum(&refs)?;
        let _ = grad.g_div_scalar_(g.world_size() as f64);
        Ok(())
    }

    /// The mean over the ranks of a scalar (a copy; the input is untouched).
    pub(crate) fn mean(&self, t: &Tensor) -> Result<Tensor> {
        let Some(g) = self.group else {
            return Ok(t.shallow_clone());
        };
        let kind = t.kind();
        let v = t.to_kind(Kind::Double).reshape([1]).copy();
        g.all_reduce_sum(&[&v])?;
        Ok((v / g.world_size() as f64).reshape([]).to_kind(kind))
    }

    /// Makes every rank's `buffer` rank 0's (DDP's broadcast of the module states at start).
    pub(crate) fn broadcast_from_main(&self, buffer: &Tensor) -> Result<()> {
        match self.group {
            Some(g) => Ok(g.broadcast(buffer, 0)?),
            None => Ok(()),
        }
    }

    /// Waits for every rank (after rank 0 has written something the others will read).
    pub(crate) fn barrier(&self) -> Result<()> {
        match self.group {
            Some(g) => Ok(g.barrier()?),
            None => Ok(()),
        }
    }
}
