//! Tokenized datasets and the batches fed to the model, prepared ahead on a background thread.

use peftkit_tokenize::{collate, Batch, BatchSampler, BucketSampler, Padding, SequentialSampler};
use std::sync::mpsc;
use tch::{Device, Kind, Tensor};

/// A tokenized, labelled split: what the trainer iterates over. Tokenize once, reuse every epoch.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Token ids per row (special tokens added, truncated, not padded).
    pub ids: Vec<Vec<u32>>,
    /// Class id per row.
    pub labels: Vec<i64>,
    /// Class names.
    pub label_names: Vec<String>,
    /// How batches are padded.
    pub padding: Padding,
    /// The pad id.
    pub pad_id: u32,
}

impl Dataset {
    /// A dataset from an already padded batch (`[rows, seq]` int64 ids and 0/1 mask, `[rows]`
    /// labels, as an HF tokenizer returns them): each row keeps the tokens its mask marks.
    /// `padding` and `pad_id` say how this dataset's own batches are padded.
    pub fn from_padded(
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        label_names: Vec<String>,
        padding: Padding,
        pad_id: u32,
    ) -> crate::Result<Self> {
        let ids: Vec<Vec<i64>> =
            Vec::try_from(input_ids).map_err(peftkit_models::ModelError::from)?;
        let mask: Vec<Vec<i64>> =
            Vec::try_from(attention_mask).map_err(peftkit_models::ModelError::from)?;
        let labels: Vec<i64> = Vec::try_from(labels).map_err(peftkit_models::ModelError::from)?;
        let ids = ids
            .iter()
            .zip(&mask)
            .map(|(row, m)| {
                row.iter()
                    .zip(m)
                    .filter(|(_, &keep)| keep == 1)
                    .map(|(&t, _)| t as u32)
                    .collect()
            })
            .collect();
        Ok(Self {
            ids,
            labels,
            label_names,
            padding,
            pad_id,
        })
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The padded batch of these rows.
    pub fn batch(&self, rows: &[usize]) -> Batch {
        let ids: Vec<&[u32]> = rows.iter().map(|&r| self.ids[r].as_slice()).collect();
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r]).collect();
        collate(&ids, &labels, self.padding, self.pad_id)
    }

    /// The training batches of an epoch: shuffled with `seed + epoch`, length-grouped if asked.
    pub fn train_batches(
        &self,
        batch_size: usize,
        seed: u64,
        group_by_length: bool,
        epoch: usize,
    ) -> Vec<Vec<usize>> {
        if group_by_length {
            BucketSampler::new(self.ids.iter().map(Vec::len).collect(), batch_size, seed)
                .batches(epoch)
        } else {
            SequentialSampler::new(self.len(), batch_size)
                .shuffled(seed)
                .batches(epoch)
        }
    }

    /// Rank `rank`'s share of an epoch's `batches` in a group of `world` ranks, as accelerate
    /// shards HF Trainer's dataloader (`BatchSamplerShard` with `even_batches`): rank r takes
    /// batches r, r + world, …; a short last batch is completed with the rows of the epoch's
    /// first `world` batches, and more batches of those rows are added until every rank has the
    /// same number. With one rank the batches are returned unchanged.
    ///
    /// ```
    /// use peftkit_train::Dataset;
    /// let order = vec![vec![0, 1], vec![2, 3], vec![4]];
    /// assert_eq!(Dataset::shard_batches(&order, 2, 0, 2), vec![vec![0, 1], vec![4, 0]]);
    /// assert_eq!(Dataset::shard_batches(&order, 2, 1, 2), vec![vec![2, 3], vec![1, 2]]);
    /// ```
    pub fn shard_batches(
        batches: &[Vec<usize>],
        batch_size: usize,
        rank: usize,
        world: usize,
    ) -> Vec<Vec<usize>> {
        if world <= 1 {
            return batches.to_vec();
        }
        let mut all = batches.to_vec();
        let initial: Vec<usize> = batches.iter().take(world).flatten().copied().collect();
        if !initial.is_empty() {
            // The rows that complete batches, taken in turn from the first batches' rows
            // (repeated for tiny datasets).
            let mut fill = initial.iter().copied().cycle();
            // The short batch is the last one, except after length grouping, which moves the
            // longest batch first.
            for short in all.iter_mut().filter(|b| b.len() < batch_size) {
                let need = batch_size - short.len();
                short.extend(fill.by_ref().take(need));
            }
            while !all.len().is_multiple_of(world) {
                all.push(fill.by_ref().take(batch_size).collect());
            }
        }
        all.into_iter().skip(rank).step_by(world).collect()
    }

    /// Evaluation batches: the rows sorted by length, longest first (stable), so that each batch
    /// pads little — HF's Trainer groups evaluation batches by length too (with
    /// `group_by_length`). [`crate::evaluate`] puts the predictions back in row order.
    pub fn eval_batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        let mut rows: Vec<usize> = (0..self.len()).collect();
        rows.sort_by_key(|&i| std::cmp::Reverse(self.ids[i].len()));
        rows.chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// A batch as tensors on the device.
#[derive(Debug)]
pub struct DeviceBatch {
    /// `[batch, seq]` int64.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64.
    pub attention_mask: Tensor,
    /// `[batch]` int64.
    pub labels: Tensor,
    /// Rows.
    pub size: usize,
}

impl DeviceBatch {
    /// Moves a host batch to `device`.
    pub fn new(b: &Batch, device: Device) -> Self {
        let shape = [b.batch_size as i64, b.seq_len as i64];
        let to = |v: &[i64], s: &[i64]| Tensor::from_slice(v).view(s).to_device(device);
        Self {
            input_ids: to(&b.input_ids, &shape),
            attention_mask: to(&b.attention_mask, &shape),
            labels: to(&b.labels, &[b.batch_size as i64]).to_kind(Kind::Int64),
            size: b.batch_size,
        }
    }
}

/// Runs `consume` over the batches of `order`, with the padding done `prefetch` batches ahead on
/// a background thread so the device never waits on the host.
pub fn for_each_batch<E>(
    data: &Dataset,
    order: &[Vec<usize>],
    prefetch: usize,
    mut consume: impl FnMut(usize, Batch) -> Result<bool, E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<(usize, Batch)>(prefetch.max(1));
        scope.spawn(move || {
            for (i, rows) in order.iter().enumerate() {
                if tx.send((i, data.batch(rows))).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        for (i, batch) in rx {
            if !consume(i, batch)? {
                break;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::Dataset;

    fn batches(rows: usize, bs: usize) -> Vec<Vec<usize>> {
        (0..rows)
            .collect::<Vec<_>>()
            .chunks(bs)
            .map(<[usize]>::to_vec)
            .collect()
    }

    #[test]
    fn an_even_epoch_is_split_round_robin() {
        let order = batches(12, 3);
        assert_eq!(
            Dataset::shard_batches(&order, 3, 0, 2),
            vec![vec![0, 1, 2], vec![6, 7, 8]]
        );
        assert_eq!(
            Dataset::shard_batches(&order, 3, 1, 2),
            vec![vec![3, 4, 5], vec![9, 10, 11]]
        );
        assert_eq!(Dataset::shard_batches(&order, 3, 0, 1), order);
    }

    #[test]
    fn uneven_epochs_are_completed_from_the_first_rows_as_accelerate_does() {
        // 10 rows, batches of 3, 3 ranks: [0 1 2] [3 4 5] [6 7 8] [9] → the last is completed
        // with rows 0 1 and two more batches come from the first rows: [2 3 4] [5 6 7].
        let order = batches(10, 3);
        let shards: Vec<_> = (0..3)
            .map(|r| Dataset::shard_batches(&order, 3, r, 3))
            .collect();
        assert_eq!(shards[0], vec![vec![0, 1, 2], vec![9, 0, 1]]);
        assert_eq!(shards[1], vec![vec![3, 4, 5], vec![2, 3, 4]]);
        assert_eq!(shards[2], vec![vec![6, 7, 8], vec![5, 6, 7]]);
    }

    #[test]
    fn fewer_rows_than_one_round_are_repeated() {
        // 3 rows, batch 2, 2 ranks: [0 1] [2] → [2 0] and every rank has one full batch.
        let order = batches(3, 2);
        assert_eq!(Dataset::shard_batches(&order, 2, 0, 2), vec![vec![0, 1]]);
        assert_eq!(Dataset::shard_batches(&order, 2, 1, 2), vec![vec![2, 0]]);
        // 1 row, batch 2, 2 ranks.
        let order = batches(1, 2);
        assert_eq!(Dataset::shard_batches(&order, 2, 0, 2), vec![vec![0, 0]]);
        assert_eq!(Dataset::shard_batches(&order, 2, 1, 2), vec![vec![0, 0]]);
    }

    #[test]
    fn a_short_batch_moved_first_by_length_grouping_is_completed_too() {
        let order = vec![vec![9], vec![0, 1], vec![2, 3], vec![4, 5]];
        assert_eq!(
            Dataset::shard_batches(&order, 2, 0, 2),
            vec![vec![9, 9], vec![2, 3]]
        );
        assert_eq!(
            Dataset::shard_batches(&order, 2, 1, 2),
            vec![vec![0, 1], vec![4, 5]]
        );
    }
}
