//! What the training batches held: real and padded tokens, and the sum over batches of
//! rows × padded length², which attention's cost grows with. The FLOPs of a run follow from these
//! and the model's shapes (`cargo xtask bench`'s roofline).

use peftkit_tokenize::Batch;
use serde::{Deserialize, Serialize};

/// Token counts over the micro-batches a run trained on (this process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Tokens the attention mask marks real.
    pub real: u64,
    /// Rows × padded length, summed over batches.
    pub padded: u64,
    /// Rows × padded length², summed over batches.
    pub padded_sq: u64,
    /// Each row's real length², summed.
    pub real_sq: u64,
}

impl TokenCounts {
    /// Adds one batch.
    ///
    /// ```
    /// use peftkit_train::TokenCounts;
    /// let b = peftkit_tokenize::Batch {
    ///     input_ids: vec![5, 6, 7, 5, 0, 0],
    ///     attention_mask: vec![1, 1, 1, 1, 0, 0],
    ///     labels: vec![0, 1],
    ///     batch_size: 2,
    ///     seq_len: 3,
    /// };
    /// let mut t = TokenCounts::default();
    /// t.add(&b);
    /// assert_eq!((t.real, t.padded, t.padded_sq, t.real_sq), (4, 6, 18, 10));
    /// ```
    pub fn add(&mut self, batch: &Batch) {
        let (rows, len) = (batch.batch_size as u64, batch.seq_len as u64);
        for row in batch.attention_mask.chunks(batch.seq_len.max(1)) {
            let l = row.iter().filter(|&&m| m != 0).count() as u64;
            self.real += l;
            self.real_sq += l * l;
        }
        self.padded += rows * len;
        self.padded_sq += rows * len * len;
    }
}
