//! Tokenization for GPT-2, RoBERTa and BERT sequence classifiers, with the ids HF `transformers`
//! produces.
//!
//! [`TextTokenizer`] loads `tokenizer.json` (or falls back to `vocab.json` + `merges.txt`, or
//! `vocab.txt`), applies the model family's special tokens (GPT-2: none, pad = eos; RoBERTa:
//! `<s> … </s>`; BERT: `[CLS] … [SEP]`) and truncation, and encodes batches in parallel with rayon.
//! [`collate`] pads a batch (to a fixed length or dynamically to its longest row) and builds the
//! attention mask; [`SequentialSampler`] and [`BucketSampler`] (seeded, length-grouped like HF's
//! `group_by_length`) choose the rows of each batch.
//!
//! ```no_run
//! use peftkit_tokenize::{collate, Padding, TextTokenizer, Truncation};
//!
//! let tok = TextTokenizer::from_dir("path/to/gpt2".as_ref())?.with_truncation(Truncation::MaxLength(128));
//! let ids = tok.encode_batch(&["a fine film".to_string(), "dull".to_string()])?;
//! let batch = collate(&ids, &[1, 0], Padding::Longest, tok.pad_id());
//! assert_eq!(batch.input_ids.len(), batch.batch_size * batch.seq_len);
//! # Ok::<(), peftkit_tokenize::TokenizeError>(())
//! ```

#![warn(missing_docs)]

mod batch;
mod tokenizer;

pub use batch::{collate, Batch, BatchSampler, BucketSampler, Padding, SequentialSampler};
pub use tokenizer::{Family, TextTokenizer, Truncation};

/// Errors of this crate; each names the file or text and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// A tokenizer file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory has none of the files a tokenizer can be built from.
    #[error("{}: no tokenizer.json, vocab.json + merges.txt, or vocab.txt", dir.display())]
    NoTokenizer {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// A special token the model family needs is not in the vocabulary.
    #[error("{}: the {family} tokenizer needs the special token `{token}`, which is not in its vocabulary", path.display())]
    MissingSpecialToken {
        /// The tokenizer file or directory.
        path: std::path::PathBuf,
        /// The model family.
        family: Family,
        /// The token.
        token: String,
    },
    /// Encoding a text failed.
    #[error("encoding text {index}: {message}")]
    Encode {
        /// Index of the text in the batch.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TokenizeError>;
