//! Padding, attention masks, and the order of rows in batches.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// How a batch is padded (right side, as transformers pads classifiers by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Every batch padded to this length (`padding="max_length"`); longer rows must have been
    /// truncated to it.
    MaxLength(usize),
    /// Each batch padded to its longest row (`DataCollatorWithPadding`).
    Longest,
}

/// A padded batch in row-major `[batch_size, seq_len]` layout, ready to become tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, pad id where masked.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// One label per row.
    pub labels: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
}

/// Pads encoded rows into a [`Batch`].
pub fn collate<T: AsRef<[u32]>>(
    rows: &[T],
    labels: &[i64],
    padding: Padding,
    pad_id: u32,
) -> Batch {
    let longest = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let seq_len = match padding {
        Padding::MaxLength(n) => n.max(longest),
        Padding::Longest => longest.max(1),
    };
    let mut input_ids = vec![pad_id as i64; rows.len() * seq_len];
    let mut attention_mask = vec![0i64; rows.len() * seq_len];
    for (r, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        let base = r * seq_len;
        for (c, &id) in row.iter().enumerate() {
            input_ids[base + c] = id as i64;
            attention_mask[base + c] = 1;
        }
    }
    Batch {
        input_ids,
        attention_mask,
        labels: labels.to_vec(),
        batch_size: rows.len(),
        seq_len,
    }
}

/// Chooses which rows form each batch of an epoch.
pub trait BatchSampler {
    /// The batches (row indices) of `epoch`.
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>>;
}

/// Rows in order, `batch_size` at a time (evaluation), or shuffled per epoch with a seed
/// (training without length grouping, like HF's `RandomSampler` seeded by `seed + epoch`).
#[derive(Debug, Clone)]
pub struct SequentialSampler {
    len: usize,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
}

impl SequentialSampler {
    /// In-order batches over `len` rows.
    pub fn new(len: usize, batch_size: usize) -> Self {
        Self {
            len,
            batch_size: batch_size.max(1),
            shuffle_seed: None,
            drop_last: false,
        }
    }

    /// Shuffles the rows every epoch with `seed + epoch`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Drops a last incomplete batch.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }
}

impl BatchSampler for SequentialSampler {
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..self.len).collect();
        if let Some(seed) = self.shuffle_seed {
            idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                seed.wrapping_add(epoch as u64),
            ));
        }
        idx.chunks(self.batch_size)
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Length-grouped batches like HF's `LengthGroupedSampler` (`group_by_length=True`): rows are
/// shuffled with `seed + epoch`, cut into mega-batches of `mega_factor × batch_size`, each sorted
/// by length (longest first) and cut into batches; the batch with the longest row goes first so
/// that running out of memory happens at once, not hours in. Rows of similar length share a batch,
/// so dynamic padding wastes little.
#[derive(Debug, Clone)]
pub struct BucketSampler {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    mega_factor: usize,
}

impl BucketSampler {
    /// A sampler over rows with these lengths.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        Self {
            lengths,
            batch_size: batch_size.max(1),
            seed,
            mega_factor: 50,
        }
    }

    /// Mega-batch size in batches (HF uses 50).
    pub fn with_mega_factor(mut self, factor: usize) -> Self {
        self.mega_factor = factor.max(1);
        self
    }
}

impl BatchSampler for BucketSampler {
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..self.lengths.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            self.seed.wrapping_add(epoch as u64),
        ));
        let mega = self.batch_size * self.mega_factor;
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for chunk in idx.chunks(mega) {
            let mut chunk = chunk.to_vec();
            // Stable sort keeps the shuffled order among equal lengths.
            chunk.sort_by(|a, b| self.lengths[*b].cmp(&self.lengths[*a]));
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        let longest = batches
            .iter()
            .enumerate()
            .max_by_key(|(i, b)| {
                (
                    b.iter().map(|&r| self.lengths[r]).max().unwrap_or(0),
                    usize::MAX - i,
                )
            })
            .map(|(i, _)| i);
        if let Some(i) = longest {
            batches.swap(0, i);
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_right_with_mask() {
        let rows = vec![vec![5u32, 6, 7], vec![8]];
        let b = collate(&rows, &[1, 0], Padding::Longest, 0);
        assert_eq!((b.batch_size, b.seq_len), (2, 3));
        assert_eq!(b.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 0, 0]);
        let b = collate(&rows, &[1, 0], Padding::MaxLength(5), 9);
        assert_eq!(b.seq_len, 5);
        assert_eq!(&b.input_ids[5..], &[8, 9, 9, 9, 9]);
    }

    #[test]
    fn sequential_covers_every_row_once() {
        let s = SequentialSampler::new(10, 4);
        assert_eq!(
            s.batches(0),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        assert_eq!(s.clone().drop_last(true).batches(0).len(), 2);
        let sh = SequentialSampler::new(10, 4).shuffled(42);
        assert_eq!(sh.batches(1), sh.batches(1));
        assert_ne!(sh.batches(0), sh.batches(1));
        let mut all: Vec<usize> = sh.batches(3).concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn buckets_group_similar_lengths_and_lead_with_the_longest() {
        let lengths: Vec<usize> = (0..200).map(|i| (i * 37) % 101 + 1).collect();
        let s = BucketSampler::new(lengths.clone(), 8, 7).with_mega_factor(5);
        let batches = s.batches(0);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        let max_len = *lengths.iter().max().unwrap();
        assert_eq!(
            batches[0].iter().map(|&r| lengths[r]).max().unwrap(),
            max_len
        );
        // Within-batch spread is far below that of random batches.
        let spread: usize = batches
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&r| lengths[r]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum();
        assert!(
            spread / batches.len() < 30,
            "mean spread {}",
            spread / batches.len()
        );
        assert_eq!(s.batches(0), batches);
        assert_ne!(s.batches(1), batches);
    }
}
