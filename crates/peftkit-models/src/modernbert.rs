//! ModernBERT (Warner et al. 2024) as a sequence classifier, matching transformers'
//! `ModernBertForSequenceClassification`: pre-LayerNorm encoder layers without biases, rotary
//! embeddings with a global and a local theta, global attention every
//! `global_attn_every_n_layers` layers and a bidirectional sliding window of
//! `local_attention / 2` on each side elsewhere, a GeGLU MLP, a final norm, and the head
//! (`dense` + activation + norm, dropout, `classifier`) on the `[CLS]` token or the mean of the
//! real tokens (`classifier_pooling`).
//!
//! Paths mirror the checkpoint: `model.embeddings.{tok_embeddings,norm}`,
//! `model.layers.{i}.{attn_norm,attn.Wqkv,attn.Wo,mlp_norm,mlp.Wi,mlp.Wo}` (no `attn_norm` in
//! layer 0), `model.final_norm`, `head.{dense,norm}`, `classifier`.

use crate::attention::min_value;
use crate::config::{Activation, ClassifierConfig};
use crate::linear::{Linear, WeightLayout};
use crate::llama::{apply_rotary, inverse_frequencies, rotary, RopeScaling};
use crate::prefix::PrefixProvider;
use crate::Dropout;
use serde::Deserialize;
use tch::{nn, Kind, Tensor};

fn d_gelu() -> Activation {
    Activation::Gelu
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_local() -> i64 {
    128
}
fn d_every() -> i64 {
    3
}
fn d_cls() -> String {
    "cls".into()
}

/// The global and local rotary tables `(cos, sin)`.
pub(crate) type Ropes = ((Tensor, Tensor), (Tensor, Tensor));
/// ModernBERT's `config.json` (`ModernBertConfig`, transformers 4 or 5 form).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModernBertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP inner size (`Wi` is twice this: GeGLU's input and gate).
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// MLP activation.
    #[serde(default = "d_gelu")]
    pub hidden_activation: Activation,
    /// Positions.
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Biases in the LayerNorms.
    #[serde(default)]
    pub norm_bias: bool,
    /// Biases in `Wqkv` / `Wo` of attention.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases in the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
    /// A global layer every this many (transformers 4 form; 5 writes `layer_types`).
    #[serde(default = "d_every")]
    pub global_attn_every_n_layers: i64,
    /// `full_attention` / `sliding_attention` per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// The local window (total; half on each side).
    #[serde(default = "d_local")]
    pub local_attention: i64,
    /// RoPE base of global layers (transformers 4 form).
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    /// RoPE base of local layers (transformers 4 form).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// RoPE parameters per layer type (transformers 5 form).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Dropouts (0 in the published checkpoints).
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Attention probability and output dropout.
    #[serde(default)]
    pub attention_dropout: f64,
    /// MLP dropout.
    #[serde(default)]
    pub mlp_dropout: f64,
    /// `cls` or `mean`.
    #[serde(default = "d_cls")]
    pub classifier_pooling: String,
    /// Bias of the head's `dense`.
    #[serde(default)]
    pub classifier_bias: bool,
    /// The head's activation.
    #[serde(default = "d_gelu")]
    pub classifier_activation: Activation,
    /// Std of the initialisation.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Classification fields (`classifier_dropout` is the head's dropout, default 0).
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

impl ModernBertConfig {
    /// Whether layer `i` attends globally.
    pub fn is_global(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(i).is_none_or(|s| s == "full_attention"),
            None => (i as i64) % self.global_attn_every_n_layers.max(1) == 0,
        }
    }

    fn theta(&self, global: bool) -> f64 {
        let key = if global {
            "full_attention"
        } else {
            "sliding_attention"
        };
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(if global {
                self.global_rope_theta
            } else {
                self.local_rope_theta
            })
            .unwrap_or(if global { 160_000.0 } else { 10_000.0 })
    }

    /// Sizes that allocate (all must be positive), and the other checks.
    pub(crate) fn check(&self) -> Result<Vec<(&'static str, i64)>, String> {
        if !matches!(self.classifier_pooling.as_str(), "cls" | "mean") {
            return Err(format!(
                "classifier_pooling `{}` is not supported (cls or mean)",
                self.classifier_pooling
            ));
        }
        for g in [true, false] {
            let t = self.theta(g);
            if !(t.is_finite() && t > 1.0) {
                return Err(format!("rope theta {t} must be a number above 1"));
            }
        }
        if let Some(t) = &self.layer_types {
            if t.len() as i64 != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    t.len(),
                    self.num_hidden_layers
                ));
            }
        }
        Ok(vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("local_attention", self.local_attention),
            (
                "global_attn_every_n_layers",
                self.global_attn_every_n_layers,
            ),
        ])
    }
}

/// A LayerNorm whose bias is optional (`norm_bias`).
#[derive(Debug)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn new(vs: nn::Path, dim: i64, cfg: &ModernBertConfig) -> Self {
        Self {
            weight: vs.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: cfg
                .norm_bias
                .then(|| vs.var("bias", &[dim], nn::Init::Const(0.0))),
            eps: cfg.norm_eps,
        }
    }

    /// In the weight's kind: under mixed precision a half-precision input (the head's dense
    /// output) is normalised in fp32, as autocast runs `layer_norm`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = x.size()[x.dim() - 1];
        x.to_kind(self.weight.kind()).layer_norm(
            [dim],
            Some(&self.weight),
            self.bias.as_ref(),
            self.eps,
            false,
        )
    }
}

/// `model.layers.{i}`.
#[derive(Debug)]
pub struct EncoderLayer {
    attn_norm: Option<Norm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: Norm,
    wi: Linear,
    mlp_wo: Linear,
    heads: i64,
    act: Activation,
    global: bool,
    attention_dropout: f64,
    mlp_dropout: f64,
    index: usize,
}

impl EncoderLayer {
    fn new(vs: nn::Path, cfg: &ModernBertConfig, index: usize) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let lin = |p: nn::Path, a: i64, b: i64, bias: bool| {
            Linear::new(p, a, b, bias, WeightLayout::OutIn, cfg.initializer_range)
        };
        Self {
            attn_norm: (index > 0).then(|| Norm::new(&vs / "attn_norm", h, cfg)),
            wqkv: lin(&vs / "attn" / "Wqkv", h, 3 * h, cfg.attention_bias),
            wo: lin(&vs / "attn" / "Wo", h, h, cfg.attention_bias),
            mlp_norm: Norm::new(&vs / "mlp_norm", h, cfg),
            wi: lin(&vs / "mlp" / "Wi", h, 2 * i, cfg.mlp_bias),
            mlp_wo: lin(&vs / "mlp" / "Wo", i, h, cfg.mlp_bias),
            heads: cfg.num_attention_heads,
            act: cfg.hidden_activation,
            global: cfg.is_global(index),
            attention_dropout: cfg.attention_dropout,
            mlp_dropout: cfg.mlp_dropout,
            index,
        }
    }

    /// One layer; `masks` are the (global, local) additive masks, `ropes` the (global, local)
    /// rotary tables.
    fn forward(
        &self,
        x: &Tensor,
        masks: &(Tensor, Tensor),
        ropes: &Ropes,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("modernbert.layer", layer = self.index).entered();
        let (b, l, h) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let hd = h / self.heads;
        let normed = match &self.attn_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        let qkv = self
            .wqkv
            .forward(&normed, train)
            .view([b, l, 3, self.heads, hd]);
        let part = |i: i64| qkv.select(2, i).transpose(1, 2);
        let (q, k, v) = (part(0), part(1), part(2));
        let ((gc, gs), (lc, ls)) = ropes;
        let (cos, sin) = if self.global { (gc, gs) } else { (lc, ls) };
        let q = apply_rotary(&q, cos, sin);
        let k = apply_rotary(&k, cos, sin);
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
        let mask = if self.global { &masks.0 } else { &masks.1 };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask.to_kind(q.kind())),
            if train { self.attention_dropout } else { 0.0 },
            false,
            Some(1.0 / (hd as f64).sqrt()),
            false,
        )
        .transpose(1, 2)
        .contiguous()
        .view([b, l, h]);
        let x = x + self
            .wo
            .forward(&ctx, train)
            .dropped(self.attention_dropout, train);
        let inner = self.wi.forward(&self.mlp_norm.forward(&x), train);
        let half = inner.size()[2] / 2;
        let glu = self.act.forward(&inner.narrow(2, 0, half)) * inner.narrow(2, half, half);
        &x + self
            .mlp_wo
            .forward(&glu.dropped(self.mlp_dropout, train), train)
    }
}

/// `ModernBertForSequenceClassification`: `model` (embeddings, layers, final norm) + `head`
/// (dense, activation, norm) + dropout + `classifier`.
#[derive(Debug)]
pub struct ModernBertForSequenceClassification {
    tok_embeddings: nn::Embedding,
    emb_norm: Norm,
    layers: Vec<EncoderLayer>,
    final_norm: Norm,
    head_dense: Linear,
    head_norm: Norm,
    classifier: Linear,
    head_act: Activation,
    mean_pooling: bool,
    embedding_dropout: f64,
    classifier_dropout: f64,
    inv_freq: (Tensor, Tensor),
    half_window: i64,
}

impl ModernBertForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &ModernBertConfig) -> Self {
        let m = vs / "model";
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads.max(1);
        let lin = |p: nn::Path, a: i64, b: i64, bias: bool| {
            Linear::new(p, a, b, bias, WeightLayout::OutIn, cfg.initializer_range)
        };
        Self {
            tok_embeddings: crate::bert::embedding(
                &m / "embeddings" / "tok_embeddings",
                cfg.vocab_size,
                h,
                cfg.initializer_range,
            ),
            emb_norm: Norm::new(&m / "embeddings" / "norm", h, cfg),
            layers: (0..cfg.num_hidden_layers as usize)
                .map(|i| EncoderLayer::new(&m / "layers" / i, cfg, i))
                .collect(),
            final_norm: Norm::new(&m / "final_norm", h, cfg),
            head_dense: lin(vs / "head" / "dense", h, h, cfg.classifier_bias),
            head_norm: Norm::new(vs / "head" / "norm", h, cfg),
            classifier: lin(
                vs / "classifier",
                h,
                cfg.classifier.num_labels() as i64,
                true,
            ),
            head_act: cfg.classifier_activation,
            mean_pooling: cfg.classifier_pooling == "mean",
            embedding_dropout: cfg.embedding_dropout,
            classifier_dropout: cfg.classifier.classifier_dropout.unwrap_or(0.0),
            inv_freq: (
                inverse_frequencies(head_dim, cfg.theta(true), RopeScaling::None),
                inverse_frequencies(head_dim, cfg.theta(false), RopeScaling::None),
            ),
            half_window: cfg.local_attention / 2,
        }
    }

    /// The local layers' mask from the global one (`[batch, 1, len, prefix + len]`, padding
    /// hidden, the prefix visible): keys also at most `local_attention / 2` positions away (the
    /// prefix stays visible).
    /// The (global, local) additive masks from the global one.
    pub(crate) fn masks(&self, global: Tensor) -> (Tensor, Tensor) {
        let local = self.local_mask(&global);
        (global, local)
    }

    fn local_mask(&self, global: &Tensor) -> Tensor {
        let size = global.size();
        let (len, keys) = (size[2], size[3]);
        let prefix_len = keys - len;
        let device = global.device();
        let q = Tensor::arange(len, (Kind::Int64, device)).view([len, 1]) + prefix_len;
        let k = Tensor::arange(keys, (Kind::Int64, device)).view([1, keys]);
        let far = (&q - &k)
            .abs()
            .gt(self.half_window)
            .logical_and(&k.ge(prefix_len))
            .view([1, 1, len, keys]);
        global.masked_fill(&far, min_value(global.kind()))
    }

    /// The global and local rotary tables of `x`'s positions after the prefix's offset, the same
    /// for every layer of a forward.
    pub(crate) fn ropes(&self, x: &Tensor, prefix: Option<&dyn PrefixProvider>) -> Ropes {
        let offset = prefix.map_or(0, |p| p.position_offset());
        let len = x.size()[1];
        let positions = Tensor::arange_start(offset, offset + len, (Kind::Int64, x.device()));
        (
            rotary(&self.inv_freq.0, &positions, x.kind()),
            rotary(&self.inv_freq.1, &positions, x.kind()),
        )
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
        let global = crate::attention::additive_mask(attention_mask, prefix_len, false, emb.kind());
        let masks = self.masks(global);
        let ropes = self.ropes(&emb, prefix);
        let mut states = vec![emb];
        for layer in &self.layers {
            let next = layer.forward(
                states.last().expect("embeddings"),
                &masks,
                &ropes,
                prefix,
                train,
            );
            states.push(next);
        }
        let last = self.final_norm.forward(states.last().expect("last"));
        *states.last_mut().expect("last") = last.shallow_clone();
        let (pooled, logits) = self.pool_and_classify(&last, attention_mask, train);
        (states, pooled, logits)
    }

    fn pool_and_classify(&self, last: &Tensor, mask: &Tensor, train: bool) -> (Tensor, Tensor) {
        let pooled = if self.mean_pooling {
            let m = mask.to_kind(last.kind()).unsqueeze(-1);
            (last * &m).sum_dim_intlist(1, false, last.kind())
                / m.sum_dim_intlist(1, false, last.kind())
        } else {
            last.select(1, 0)
        };
        let h = self.head_norm.forward(
            &self
                .head_act
                .forward(&self.head_dense.forward(&pooled, train)),
        );
        let logits = self
            .classifier
            .forward(&h.dropped(self.classifier_dropout, train), train);
        (h, logits)
    }

    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        _offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let words = crate::prefix::with_prompt(input_ids.apply(&self.tok_embeddings), prompt);
        self.emb_norm
            .forward(&words)
            .dropped(self.embedding_dropout, train)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// One layer for gradient checkpointing, with the masks and rotary tables the forward built
    /// once ([`Self::masks`], [`Self::ropes`]).
    pub(crate) fn layer(
        &self,
        i: usize,
        x: &Tensor,
        masks: &(Tensor, Tensor),
        ropes: &Ropes,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        self.layers[i].forward(x, masks, ropes, prefix, train)
    }

    /// The head on the last layer's output (before the final norm), for gradient checkpointing.
    pub(crate) fn head(&self, last: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.pool_and_classify(&self.final_norm.forward(last), mask, train)
            .1
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in &mut self.layers {
            v.extend([&mut l.wqkv, &mut l.wo, &mut l.wi, &mut l.mlp_wo]);
        }
        v.push(&mut self.head_dense);
        v.push(&mut self.classifier);
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = Vec::new();
        for l in &self.layers {
            v.extend([&l.wqkv, &l.wo, &l.wi, &l.mlp_wo]);
        }
        v.push(&self.head_dense);
        v.push(&self.classifier);
        v
    }
}
