//! The attention seam: per-layer prefix keys and values (prefix tuning) supplied from outside.

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
