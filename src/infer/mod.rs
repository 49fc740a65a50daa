//! Inference shared by `peftkit predict` and `peftkit serve`: a model host holding one base
//! and any number of named adapters, the encoding of texts against the model's positions, and
//! batched forward passes whose rows may each name their adapter.

pub mod batch;
mod host;

pub use host::{AdapterInfo, Host};
use peftkit_tokenize::{TextTokenizer, Truncation};

/// One input: a text or a text pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// One text.
    Single(String),
    /// A pair (sentence A, sentence B), encoded as the tokenizer encodes pairs.
    Pair(String, String),
}

impl Text {
    /// Characters in the input.
    pub fn chars(&self) -> usize {
        match self {
            Text::Single(a) => a.chars().count(),
            Text::Pair(a, b) => a.chars().count() + b.chars().count(),
        }
    }
}

/// Encodes inputs for a model with `limit` positions.
#[derive(Debug, Clone)]
pub struct Encoder {
    full: TextTokenizer,
    cut: TextTokenizer,
    limit: usize,
    pad_id: u32,
}

/// An input longer than the model takes, when truncation is off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input {index} has {tokens} tokens but the model takes at most {limit}")]
pub struct TooLong {
    /// Which input (0-based).
    pub index: usize,
    /// Its tokens.
    pub tokens: usize,
    /// The model's limit.
    pub limit: usize,
}

/// Why inputs could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Over the limit with truncation off.
    #[error(transparent)]
    TooLong(#[from] TooLong),
    /// The tokenizer failed.
    #[error("tokenizing input {index}: {message}")]
    Tokenizer {
        /// Which input.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
}

impl Encoder {
    /// An encoder truncating to `limit` tokens (at least 2: room for the special tokens).
    pub fn new(tokenizer: &TextTokenizer, limit: usize) -> Self {
        let limit = limit.max(2);
        Self {
            full: tokenizer.clone().with_truncation(Truncation::None),
            cut: tokenizer
                .clone()
                .with_truncation(Truncation::MaxLength(limit)),
            limit,
            pad_id: tokenizer.pad_id(),
        }
    }

    /// The most tokens an input may have.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn encode_with(tok: &TextTokenizer, text: &Text) -> std::result::Result<Vec<u32>, String> {
        let enc = match text {
            Text::Single(a) => tok.inner().encode_fast(a.as_str(), true),
            Text::Pair(a, b) => tok.inner().encode_fast((a.as_str(), b.as_str()), true),
        };
        enc.map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Encodes `texts` (special tokens added, unpadded). Longer than [`Encoder::limit`]: cut to
    /// it when `truncate`, else [`TooLong`]. A text with no tokens at all (an empty text for
    /// GPT-2, whose tokenizer adds none) becomes the one pad token (GPT-2's `<|endoftext|>`), so
    /// that every input has a position to classify from.
    pub fn encode(
        &self,
        texts: &[Text],
        truncate: bool,
    ) -> std::result::Result<Vec<Vec<u32>>, EncodeError> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                let err = |message| EncodeError::Tokenizer { index, message };
                let mut ids = Self::encode_with(&self.full, text).map_err(err)?;
                if ids.len() > self.limit {
                    if !truncate {
                        return Err(TooLong {
                            index,
                            tokens: ids.len(),
                            limit: self.limit,
                        }
                        .into());
                    }
                    ids = Self::encode_with(&self.cut, text).map_err(err)?;
                    ids.truncate(self.limit);
                }
                if ids.is_empty() {
                    ids.push(self.pad_id);
                }
                Ok(ids)
            })
            .collect()
    }
}

/// Softmax probabilities of one row's logits (float64, as `predict --json` prints them).
pub fn probabilities(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&l| l as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one() {
        let p = probabilities(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[2] > p[1] && p[1] > p[0]);
    }
}
