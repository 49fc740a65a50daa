//! The attention seam: per-layer prefix keys and values (prefix tuning) supplied from outside.

use tch::Tensor;

/// Supplies trainable keys and values that every attention layer prepends to its own, as
/// `past_key_values` do in transformers. Real tokens keep their position ids; the attention mask
/// is extended with ones for the prefix; a causal model lets every token see the whole prefix.
pub trait PrefixProvider {
    /// Number of virtual tokens.
    fn num_tokens(&self) -> i64;
    /// `(key, value)` for `layer`, each `[batch, heads, num_tokens, head_dim]`.
    fn key_value(&self, layer: usize, batch_size: i64) -> (Tensor, Tensor);
}
