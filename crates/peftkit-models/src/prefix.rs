//! The two seams of the input: per-layer prefix keys and values at attention (prefix tuning),
//! and virtual-token embeddings before the real tokens (prompt tuning, P-tuning), both
//! supplied from outside.

use tch::Tensor;

/// Supplies trainable keys and values that every attention layer prepends to its own, as
/// `past_key_values` do in transformers. Real tokens' position ids move by [`PrefixProvider::position_offset`]; the
/// attention mask is extended with ones for the prefix; a causal model lets every token see the whole prefix.
pub trait PrefixProvider {
    /// Number of virtual tokens.
    fn num_tokens(&self) -> i64;
    /// How far real tokens' position ids move: transformers computes positions after a cache
    /// (`past_key_values_length`), so with peft's prefix tuning the real tokens sit at
    /// `num_tokens()…`; 0 keeps them where they are without a prefix.
    fn position_offset(&self) -> i64 {
        self.num_tokens()
    }
    /// `(key, value)` for `layer`, each `[batch, heads, num_tokens, head_dim]`.
    fn key_value(&self, layer: usize, batch_size: i64) -> (Tensor, Tensor);
}

/// Supplies virtual-token embeddings placed before the real tokens' word embeddings, as when
/// transformers is called with `inputs_embeds = cat(prompt, word_embeddings(input_ids))` and an
/// attention mask extended with ones (peft's prompt tuning and P-tuning). The model then does
/// what transformers does for `inputs_embeds`: position ids run over the whole sequence
/// (RoBERTa's sequentially from `padding_idx + 1`, as it cannot see padding in embeddings),
/// token types of the virtual tokens are 0, and GPT-2 pools the last position (it cannot find
/// the last non-pad token without `input_ids`).
pub trait PromptProvider {
    /// Number of virtual tokens.
    fn num_tokens(&self) -> i64;
    /// The virtual tokens' embeddings, `[num_tokens, hidden]`, the same for every row (`train`:
    /// dropout inside an encoder is on).
    fn embeddings(&self, train: bool) -> Tensor;
}

/// `cat(prompt, words)` along the sequence, the prompt (`[n, hidden]`) repeated for every row of
/// `words` (`[batch, seq, hidden]`) and cast to its dtype.
pub(crate) fn with_prompt(words: Tensor, prompt: Option<&Tensor>) -> Tensor {
    match prompt {
        None => words,
        Some(p) => {
            let (batch, _, hidden) = words.size3().expect("embeddings are [batch, seq, hidden]");
            let n = p.size()[0];
            let p = p
                .to_kind(words.kind())
                .unsqueeze(0)
                .expand([batch, n, hidden], false);
            Tensor::cat(&[p, words], 1)
        }
    }
}
