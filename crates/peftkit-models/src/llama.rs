//! The Llama family as sequence classifiers — transformers' `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification` and `MistralForSequenceClassification`: pre-RMSNorm decoder
//! layers with rotary position embeddings (RoPE, with linear or llama3 scaling), grouped-query
//! attention, a SwiGLU MLP, Qwen2's q/k/v biases, Mistral's sliding window, and `score` applied at
//! each row's last non-pad token.
//!
//! Paths mirror the checkpoint: `model.embed_tokens`, `model.layers.{i}.input_layernorm`,
//! `….self_attn.{q_proj,k_proj,v_proj,o_proj}`, `….post_attention_layernorm`,
//! `….mlp.{gate_proj,up_proj,down_proj}`, `model.norm`, `score`.

use crate::attention::min_value;
use crate::config::Activation;
use crate::linear::{Linear, WeightLayout};
pub use crate::llama_config::{LlamaConfig, LlamaFamily, RopeScaling};
use crate::prefix::PrefixProvider;
use tch::{nn, Kind, Tensor};

/// `RMSNorm`: `weight · x / √(mean(x²) + eps)`, computed in fp32.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// RoPE's inverse frequencies (`[head_dim / 2]`, fp32), as transformers' `rope_init_fn`s.
pub fn inverse_frequencies(head_dim: i64, theta: f64, scaling: RopeScaling) -> Tensor {
    let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, tch::Device::Cpu))
        .to_kind(Kind::Float)
        / head_dim as f64;
    let inv = Tensor::pow_scalar(theta, &exponent).reciprocal();
    match scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = (&inv / factor).where_self(&wavelen.gt(low_wavelen), &inv);
            let smooth = ((wavelen.reciprocal() * old) - low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen
                .lt(high_wavelen)
                .logical_not()
                .logical_and(&wavelen.gt(low_wavelen).logical_not());
            smoothed.where_self(&medium, &scaled)
        }
    }
}

/// `rotate_half`: `(x1, x2) → (-x2, x1)` over the last dimension's halves.
pub(crate) fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// `t` rotated by the tables `(cos, sin)`, returned in `t`'s kind. Under mixed precision the
/// tables stay fp32 and the product is computed in fp32, then cast back to the compute dtype, as
/// autocast hands the query, key and value to attention in one dtype.
pub(crate) fn apply_rotary(t: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    (t * cos + rotate_half(t) * sin).to_kind(t.kind())
}

/// The rotary tables for `positions` (`[len]`): `(cos, sin)`, each `[1, 1, len, head_dim]` in
/// `kind`.
pub(crate) fn rotary(inv_freq: &Tensor, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let freqs = positions
        .to_kind(Kind::Float)
        .unsqueeze(1)
        .matmul(&inv_freq.to_device(positions.device()).unsqueeze(0));
    let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(0).unsqueeze(0);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// `model.layers.{i}`.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    act: Activation,
    attention_dropout: f64,
    index: usize,
}

fn linear(vs: nn::Path, i: i64, o: i64, bias: bool, cfg: &LlamaConfig) -> Linear {
    Linear::new(vs, i, o, bias, WeightLayout::OutIn, cfg.initializer_range)
}

impl DecoderLayer {
    fn new(vs: nn::Path, cfg: &LlamaConfig, index: usize) -> Self {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
        let att = &vs / "self_attn";
        let mlp = &vs / "mlp";
        let i = cfg.intermediate_size;
        Self {
            input_layernorm: RmsNorm::new(&vs / "input_layernorm", h, cfg.rms_norm_eps),
            q_proj: linear(&att / "q_proj", h, q, cfg.qkv_bias(), cfg),
            k_proj: linear(&att / "k_proj", h, kv, cfg.qkv_bias(), cfg),
            v_proj: linear(&att / "v_proj", h, kv, cfg.qkv_bias(), cfg),
            o_proj: linear(&att / "o_proj", q, h, cfg.o_bias(), cfg),
            post_attention_layernorm: RmsNorm::new(
                &vs / "post_attention_layernorm",
                h,
                cfg.rms_norm_eps,
            ),
            gate_proj: linear(&mlp / "gate_proj", h, i, cfg.mlp_bias, cfg),
            up_proj: linear(&mlp / "up_proj", h, i, cfg.mlp_bias, cfg),
            down_proj: linear(&mlp / "down_proj", i, h, cfg.mlp_bias, cfg),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
            act: cfg.hidden_act,
            attention_dropout: cfg.attention_dropout,
            index,
        }
    }

    /// One layer on `x` with the rotary tables `rope` of its positions.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        rope: &(Tensor, Tensor),
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("llama.layer", layer = self.index).entered();
        let (b, l, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let h = self.input_layernorm.forward(x);
        let heads = |t: Tensor, n: i64| t.view([b, l, n, self.head_dim]).transpose(1, 2);
        let q = heads(self.q_proj.forward(&h, train), self.heads);
        let k = heads(self.k_proj.forward(&h, train), self.kv_heads);
        let v = heads(self.v_proj.forward(&h, train), self.kv_heads);
        let (cos, sin) = rope;
        let q = apply_rotary(&q, cos, sin);
        let k = apply_rotary(&k, cos, sin);
        // A prefix's keys are a cache: already rotated, prepended as they are.
        let (k, v) = match prefix {
            Some(p) => {
                let (pk, pv) = p.key_value(self.index, b);
                (
                    Tensor::cat(&[pk.to_kind(k.kind()), k], 2),
                    Tensor::cat(&[pv.to_kind(v.kind()), v], 2),
                )
            }
            None => (k, v),
        };
        let groups = self.heads / self.kv_heads;
        let (k, v) = if groups > 1 {
            (
                k.repeat_interleave_self_int(groups, 1, None),
                v.repeat_interleave_self_int(groups, 1, None),
            )
        } else {
            (k, v)
        };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask.to_kind(q.kind())),
            if train { self.attention_dropout } else { 0.0 },
            false,
            Some(1.0 / (self.head_dim as f64).sqrt()),
            false,
        );
        let ctx = ctx
            .transpose(1, 2)
            .contiguous()
            .view([b, l, self.heads * self.head_dim]);
        let x = x + self.o_proj.forward(&ctx, train);
        let h = self.post_attention_layernorm.forward(&x);
        let gate = self.act.forward(&self.gate_proj.forward(&h, train));
        &x + self
            .down_proj
            .forward(&(gate * self.up_proj.forward(&h, train)), train)
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }

    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// `…ForSequenceClassification` of the Llama family: `model` (embed_tokens, layers, norm) +
/// `score` (no bias) at each row's last non-pad token.
#[derive(Debug)]
pub struct LlamaForSequenceClassification {
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    score: Linear,
    inv_freq: Tensor,
    window: Option<i64>,
    pad_token_id: Option<i64>,
}

impl LlamaForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &LlamaConfig) -> Self {
        let m = vs / "model";
        let scaling = cfg.rope().unwrap_or(RopeScaling::None);
        Self {
            embed_tokens: crate::bert::embedding(
                &m / "embed_tokens",
                cfg.vocab_size,
                cfg.hidden_size,
                cfg.initializer_range,
            ),
            layers: (0..cfg.num_hidden_layers as usize)
                .map(|i| DecoderLayer::new(&m / "layers" / i, cfg, i))
                .collect(),
            norm: RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            score: linear(
                vs / "score",
                cfg.hidden_size,
                cfg.classifier.num_labels() as i64,
                false,
                cfg,
            ),
            inv_freq: inverse_frequencies(cfg.head_dim(), cfg.theta(), scaling),
            window: cfg.window(),
            pad_token_id: cfg.classifier.pad_token_id,
        }
    }

    /// The additive mask `[batch, 1, len, prefix + len]`: causal, padding hidden, prefix always
    /// visible, and with a sliding window only keys less than `window` positions back.
    pub(crate) fn mask(&self, attention_mask: &Tensor, prefix_len: i64, kind: Kind) -> Tensor {
        let (batch, len) = attention_mask.size2().expect("mask is [batch, seq]");
        let device = attention_mask.device();
        let kind = crate::precision::compute_dtype().unwrap_or(kind);
        let keys = Tensor::cat(
            &[
                Tensor::ones([batch, prefix_len], (Kind::Bool, device)),
                attention_mask.to_kind(Kind::Bool),
            ],
            1,
        )
        .view([batch, 1, 1, prefix_len + len]);
        // Query i sits at position prefix + i; key j at position j.
        let q = Tensor::arange(len, (Kind::Int64, device)).view([len, 1]) + prefix_len;
        let k = Tensor::arange(prefix_len + len, (Kind::Int64, device)).view([1, prefix_len + len]);
        let mut allowed = k.le_tensor(&q);
        if let Some(w) = self.window {
            allowed = allowed.logical_and(&(&q - &k).lt(w));
        }
        let allowed = keys
            .logical_and(&allowed.view([1, 1, len, prefix_len + len]))
            .expand([batch, 1, len, prefix_len + len], false);
        Tensor::zeros([batch, 1, len, prefix_len + len], (kind, device))
            .masked_fill(&allowed.logical_not(), min_value(kind))
    }

    /// The rotary tables of the `x`'s positions (`[batch, len, hidden]`), after the prefix's
    /// offset: the same for every layer of a forward.
    pub(crate) fn rope(&self, x: &Tensor, prefix: Option<&dyn PrefixProvider>) -> (Tensor, Tensor) {
        let offset = prefix.map_or(0, |p| p.position_offset());
        let len = x.size()[1];
        let positions = Tensor::arange_start(offset, offset + len, (Kind::Int64, x.device()));
        rotary(&self.inv_freq, &positions, x.kind())
    }

    /// Each row's pooled position: the last non-pad token (transformers' rule, right or left
    /// padding), the last position with virtual tokens before the input or without a pad id.
    fn pooled_index(&self, input_ids: &Tensor, prompted: bool, len: i64) -> Tensor {
        let batch = input_ids.size()[0];
        match self.pad_token_id {
            Some(pad) if !prompted => {
                let non_pad = input_ids.ne(pad).to_kind(Kind::Int64);
                let idx = Tensor::arange(input_ids.size()[1], (Kind::Int64, input_ids.device()));
                (idx * non_pad).argmax(-1, false)
            }
            _ => Tensor::full([batch], len - 1, (Kind::Int64, input_ids.device())),
        }
    }

    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> (Vec<Tensor>, Tensor, Tensor) {
        let offset = prefix.map_or(0, |p| p.position_offset());
        let emb = self.embed(input_ids, offset, prompt, train);
        let prefix_len = prefix.map_or(0, |p| p.num_tokens());
        let mask = self.mask(attention_mask, prefix_len, emb.kind());
        // One rotary table for every layer (positions are the same in each).
        let rope = self.rope(&emb, prefix);
        let mut states = vec![emb];
        for layer in &self.layers {
            let next = layer.forward(
                states.last().expect("embeddings"),
                &mask,
                &rope,
                prefix,
                train,
            );
            states.push(next);
        }
        let last = self.norm.forward(states.last().expect("last state"));
        let rows = Tensor::arange(last.size()[0], (Kind::Int64, last.device()));
        let idx = self.pooled_index(input_ids, prompt.is_some(), last.size()[1]);
        let pooled = last.index(&[Some(rows), Some(idx)]);
        let logits = self.score.forward(&pooled, train);
        // transformers' last hidden state is after the final norm.
        *states.last_mut().expect("last state") = last;
        (states, pooled, logits)
    }

    /// The token embeddings (after the virtual tokens' `prompt`); positions are applied in the
    /// layers (rotary), so `offset` is not needed here.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        _offset: i64,
        prompt: Option<&Tensor>,
        _train: bool,
    ) -> Tensor {
        crate::prefix::with_prompt(input_ids.apply(&self.embed_tokens), prompt)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// One layer for gradient checkpointing, with the mask and rotary tables the forward built
    /// once ([`Self::mask`], [`Self::rope`]).
    pub(crate) fn layer(
        &self,
        i: usize,
        x: &Tensor,
        mask: &Tensor,
        rope: &(Tensor, Tensor),
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        self.layers[i].forward(x, mask, rope, prefix, train)
    }

    pub(crate) fn head(
        &self,
        last: &Tensor,
        input_ids: &Tensor,
        prompted: bool,
        train: bool,
    ) -> Tensor {
        let last = self.norm.forward(last);
        let rows = Tensor::arange(last.size()[0], (Kind::Int64, last.device()));
        let idx = self.pooled_index(input_ids, prompted, last.size()[1]);
        self.score
            .forward(&last.index(&[Some(rows), Some(idx)]), train)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect();
        v.push(&mut self.score);
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.layers.iter().flat_map(|l| l.linears()).collect();
        v.push(&self.score);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = inverse_frequencies(64, 500000.0, RopeScaling::None);
        let scaled = inverse_frequencies(
            64,
            500000.0,
            RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        );
        let at = |t: &Tensor, i: i64| t.double_value(&[i]);
        // The highest frequency (short wavelength) is kept; the lowest is divided by 32.
        assert!((at(&scaled, 0) - at(&plain, 0)).abs() < 1e-9);
        assert!((at(&scaled, 31) - at(&plain, 31) / 32.0).abs() < 1e-12);
        let linear = inverse_frequencies(64, 10000.0, RopeScaling::Linear { factor: 2.0 });
        let base = inverse_frequencies(64, 10000.0, RopeScaling::None);
        assert!((at(&linear, 5) - at(&base, 5) / 2.0).abs() < 1e-9);
    }
}
