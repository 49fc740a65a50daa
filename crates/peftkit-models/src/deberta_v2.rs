//! DeBERTa-v2 / v3 (He et al. 2021) as a sequence classifier, matching transformers'
//! `DebertaV2ForSequenceClassification`: BERT's post-LN layers with disentangled attention —
//! content-to-content plus content-to-position (`c2p`) and position-to-content (`p2c`) scores
//! over log-bucketed relative positions (`position_buckets`, `max_relative_positions`), shared or
//! separate position projections (`share_att_key`), the relative embeddings' LayerNorm
//! (`norm_rel_ebd`) — and the `ContextPooler` (dropout, dense, activation on the first token).
//!
//! Paths mirror the checkpoint: `deberta.embeddings.{word_embeddings,position_embeddings,
//! token_type_embeddings,LayerNorm}`, `deberta.encoder.layer.{i}.attention.self.{query_proj,
//! key_proj,value_proj,pos_key_proj,pos_query_proj}`, `….attention.output.{dense,LayerNorm}`,
//! `….intermediate.dense`, `….output.{dense,LayerNorm}`, `deberta.encoder.{rel_embeddings,
//! LayerNorm}`, `pooler.dense`, `classifier`. Prefix tuning is refused (transformers' DeBERTa has
//! no past key values, so peft cannot prefix-tune it either).

use crate::attention::min_value;
use crate::bert::{embedding, layer_norm};
use crate::config::{Activation, ClassifierConfig};
use crate::linear::{Linear, WeightLayout};
use crate::Dropout;
use serde::Deserialize;
use tch::{nn, Kind, Tensor};

fn d_gelu() -> Activation {
    Activation::Gelu
}
fn d_drop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-7
}
fn d_init() -> f64 {
    0.02
}
fn d_true() -> bool {
    true
}
fn d_minus_one() -> i64 {
    -1
}
fn d_none() -> String {
    "none".into()
}

/// `pos_att_type`: a list (`["p2c", "c2p"]`) or transformers 4's string (`"p2c|c2p"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PosAttType {
    /// A list.
    List(Vec<String>),
    /// `|`-separated.
    Joined(String),
}

/// DeBERTa-v2's `config.json` (`DebertaV2Config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DebertaV2Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Feed-forward size.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    #[serde(default = "d_gelu")]
    pub hidden_act: Activation,
    /// Dropout after embeddings and sub-layers (and of the relative embeddings).
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    /// Attention probability dropout.
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    /// Absolute positions (used when `position_biased_input`).
    pub max_position_embeddings: i64,
    /// Token types (0: none, as in v3).
    #[serde(default)]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Std of the initialisation.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Disentangled attention on.
    #[serde(default)]
    pub relative_attention: bool,
    /// Log buckets of relative positions (≤ 0: none).
    #[serde(default = "d_minus_one")]
    pub position_buckets: i64,
    /// The largest relative distance (< 1: `max_position_embeddings`).
    #[serde(default = "d_minus_one")]
    pub max_relative_positions: i64,
    /// Absolute position embeddings added to the input.
    #[serde(default = "d_true")]
    pub position_biased_input: bool,
    /// `c2p`, `p2c`.
    #[serde(default)]
    pub pos_att_type: Option<PosAttType>,
    /// Position projections shared with the content ones.
    #[serde(default)]
    pub share_att_key: bool,
    /// `layer_norm` to normalise the relative embeddings.
    #[serde(default = "d_none")]
    pub norm_rel_ebd: String,
    /// A convolution after the first layer (DeBERTa-v2-xlarge): not supported.
    #[serde(default)]
    pub conv_kernel_size: i64,
    /// Embedding size different from the hidden size: not supported.
    #[serde(default)]
    pub embedding_size: Option<i64>,
    /// The pooler's size (the hidden size).
    #[serde(default)]
    pub pooler_hidden_size: Option<i64>,
    /// The pooler's activation.
    #[serde(default = "d_gelu")]
    pub pooler_hidden_act: Activation,
    /// The pooler's input dropout.
    #[serde(default)]
    pub pooler_dropout: f64,
    /// The classifier's dropout (default: `hidden_dropout_prob`).
    #[serde(default)]
    pub cls_dropout: Option<f64>,
    /// Classification fields.
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

impl DebertaV2Config {
    fn pos_att(&self) -> Vec<String> {
        match &self.pos_att_type {
            None => vec![],
            Some(PosAttType::List(v)) => v.iter().map(|s| s.trim().to_lowercase()).collect(),
            Some(PosAttType::Joined(s)) => s.split('|').map(|x| x.trim().to_lowercase()).collect(),
        }
    }

    fn max_relative(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions
        }
    }

    /// The relative embeddings' half size (`att_span`).
    fn span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative()
        }
    }

    /// Sizes that allocate (all must be positive), and the other checks.
    pub(crate) fn check(&self) -> Result<Vec<(&'static str, i64)>, String> {
        if self.conv_kernel_size > 0 {
            return Err(
                "conv_kernel_size > 0 (DeBERTa-v2-xlarge's convolution) is not supported".into(),
            );
        }
        if self.embedding_size.is_some_and(|e| e != self.hidden_size) {
            return Err("an embedding_size other than hidden_size is not supported".into());
        }
        if self
            .pooler_hidden_size
            .is_some_and(|p| p != self.hidden_size)
        {
            return Err("a pooler_hidden_size other than hidden_size is not supported".into());
        }
        if let Some(bad) = self.pos_att().iter().find(|p| *p != "c2p" && *p != "p2c") {
            return Err(format!("pos_att_type `{bad}` is not supported (c2p, p2c)"));
        }
        let mut sizes = vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if self.relative_attention {
            sizes.push(("max_relative_positions", self.max_relative()));
            if self.position_buckets > 0 && self.position_buckets < 4 {
                return Err("position_buckets must be at least 4".into());
            }
        }
        if self.type_vocab_size < 0 {
            return Err("`type_vocab_size` is negative".into());
        }
        Ok(sizes)
    }
}

/// transformers' `make_log_bucket_position`: distances under `bucket / 2` kept, longer ones
/// log-bucketed up to `max_position`.
fn log_bucket(rel: &Tensor, bucket: i64, max_position: i64) -> Tensor {
    let mid = bucket / 2;
    let sign = rel.sign();
    let near = rel.lt(mid).logical_and(&rel.gt(-mid));
    let abs = rel
        .abs()
        .where_self(&near.logical_not(), &rel.full_like(mid - 1))
        .to_kind(Kind::Float);
    let log_pos = ((&abs / mid as f64).log() / ((max_position - 1) as f64 / mid as f64).ln()
        * (mid - 1) as f64)
        .ceil()
        + mid as f64;
    rel.to_kind(Kind::Float)
        .where_self(&abs.le(mid as f64), &(log_pos * sign.to_kind(Kind::Float)))
        .to_kind(Kind::Int64)
}

/// One layer's projections and norms.
#[derive(Debug)]
pub struct Layer {
    query_proj: Linear,
    key_proj: Linear,
    value_proj: Linear,
    pos_key_proj: Option<Linear>,
    pos_query_proj: Option<Linear>,
    attention_output: Linear,
    attention_norm: nn::LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: nn::LayerNorm,
    index: usize,
}

/// `DebertaV2ForSequenceClassification`.
#[derive(Debug)]
pub struct DebertaV2ForSequenceClassification {
    word_embeddings: nn::Embedding,
    position_embeddings: Option<nn::Embedding>,
    token_type_embeddings: Option<nn::Embedding>,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    rel_embeddings: Option<nn::Embedding>,
    rel_norm: Option<nn::LayerNorm>,
    pooler: Linear,
    classifier: Linear,
    cfg: DebertaV2Config,
    c2p: bool,
    p2c: bool,
}

impl DebertaV2ForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &DebertaV2Config) -> Self {
        let d = vs / "deberta";
        let e = &d / "embeddings";
        let enc = &d / "encoder";
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let lin =
            |p: nn::Path, a: i64, b: i64| Linear::new(p, a, b, true, WeightLayout::OutIn, std);
        let pos = cfg.pos_att();
        let (c2p, p2c) = (
            pos.iter().any(|p| p == "c2p"),
            pos.iter().any(|p| p == "p2c"),
        );
        let rel = cfg.relative_attention;
        let layers = (0..cfg.num_hidden_layers as usize)
            .map(|i| {
                let l = &enc / "layer" / i;
                let sa = &l / "attention" / "self";
                Layer {
                    query_proj: lin(&sa / "query_proj", h, h),
                    key_proj: lin(&sa / "key_proj", h, h),
                    value_proj: lin(&sa / "value_proj", h, h),
                    pos_key_proj: (rel && !cfg.share_att_key && c2p)
                        .then(|| lin(&sa / "pos_key_proj", h, h)),
                    pos_query_proj: (rel && !cfg.share_att_key && p2c)
                        .then(|| lin(&sa / "pos_query_proj", h, h)),
                    attention_output: lin(&l / "attention" / "output" / "dense", h, h),
                    attention_norm: layer_norm(
                        &l / "attention" / "output" / "LayerNorm",
                        h,
                        cfg.layer_norm_eps,
                    ),
                    intermediate: lin(&l / "intermediate" / "dense", h, cfg.intermediate_size),
                    output: lin(&l / "output" / "dense", cfg.intermediate_size, h),
                    output_norm: layer_norm(&l / "output" / "LayerNorm", h, cfg.layer_norm_eps),
                    index: i,
                }
            })
            .collect();
        Self {
            word_embeddings: embedding(&e / "word_embeddings", cfg.vocab_size, h, std),
            position_embeddings: cfg.position_biased_input.then(|| {
                embedding(
                    &e / "position_embeddings",
                    cfg.max_position_embeddings,
                    h,
                    std,
                )
            }),
            token_type_embeddings: (cfg.type_vocab_size > 0)
                .then(|| embedding(&e / "token_type_embeddings", cfg.type_vocab_size, h, std)),
            embeddings_norm: layer_norm(&e / "LayerNorm", h, cfg.layer_norm_eps),
            layers,
            rel_embeddings: rel.then(|| embedding(&enc / "rel_embeddings", cfg.span() * 2, h, std)),
            rel_norm: (rel && cfg.norm_rel_ebd.to_lowercase().contains("layer_norm"))
                .then(|| layer_norm(&enc / "LayerNorm", h, cfg.layer_norm_eps)),
            pooler: lin(vs / "pooler" / "dense", h, h),
            classifier: lin(vs / "classifier", h, cfg.classifier.num_labels() as i64),
            cfg: cfg.clone(),
            c2p,
            p2c,
        }
    }

    /// The embeddings (word, absolute position when biased, token type 0; LayerNorm; padding
    /// zeroed; dropout), after the virtual tokens' `prompt`.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let words = crate::prefix::with_prompt(input_ids.apply(&self.word_embeddings), prompt);
        let (b, len, _) = words.size3().expect("[batch, seq, hidden]");
        let device = input_ids.device();
        let x = match &self.position_embeddings {
            Some(p) => {
                words
                    + Tensor::arange(len, (Kind::Int64, device))
                        .unsqueeze(0)
                        .apply(p)
            }
            None => words,
        };
        let x = match &self.token_type_embeddings {
            Some(t) => x + Tensor::zeros([b, len], (Kind::Int64, device)).apply(t),
            None => x,
        };
        let x = x.apply(&self.embeddings_norm);
        let keep = mask.to_kind(x.kind()).unsqueeze(-1);
        (x * keep).dropped(self.cfg.hidden_dropout_prob, train)
    }

    /// The layers' shared inputs: the boolean `[batch, 1, len, len]` mask (query and key real),
    /// the relative positions `[len, len]` and the (normalised) relative embeddings.
    fn context(&self, mask: &Tensor, train: bool) -> (Tensor, Option<(Tensor, Tensor)>) {
        let (b, len) = mask.size2().expect("mask is [batch, seq]");
        let m = mask.to_kind(Kind::Bool);
        let allowed = m.view([b, 1, 1, len]).logical_and(&m.view([b, 1, len, 1]));
        let rel = self.rel_embeddings.as_ref().map(|e| {
            let ids = Tensor::arange(len, (Kind::Int64, mask.device()));
            let mut pos = ids.unsqueeze(1) - ids.unsqueeze(0);
            if self.cfg.position_buckets > 0 {
                pos = log_bucket(&pos, self.cfg.position_buckets, self.cfg.max_relative());
            }
            let mut w = e.ws.shallow_clone();
            if let Some(n) = &self.rel_norm {
                w = w.apply(n);
            }
            (pos, w.dropped(self.cfg.hidden_dropout_prob, train))
        });
        (allowed, rel)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        allowed: &Tensor,
        rel: Option<&(Tensor, Tensor)>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("deberta.layer", layer = layer.index).entered();
        let heads = self.cfg.num_attention_heads;
        let (b, l, h) = x.size3().expect("[batch, seq, hidden]");
        let hd = h / heads;
        let split = |t: Tensor| t.view([b, -1, heads, hd]).transpose(1, 2);
        let q = split(layer.query_proj.forward(x, train));
        let k = split(layer.key_proj.forward(x, train));
        let v = split(layer.value_proj.forward(x, train));
        let factor = 1 + self.c2p as i64 + self.p2c as i64;
        let scale = ((hd * factor) as f64).sqrt();
        let mut terms = vec![q.matmul(&(k.transpose(-1, -2) / scale))];
        if let Some((pos, rel_emb)) = rel {
            let span = self.cfg.span();
            let rel_emb = rel_emb.narrow(0, 0, span * 2).unsqueeze(0);
            let rel_split = |t: Tensor| t.view([1, span * 2, heads, hd]).transpose(1, 2);
            let project = |own: &Option<Linear>, shared: &Linear| match own {
                Some(p) if !self.cfg.share_att_key => rel_split(p.forward(&rel_emb, train)),
                _ => rel_split(shared.forward(&rel_emb, train)),
            };
            if self.c2p {
                let pos_key = project(&layer.pos_key_proj, &layer.key_proj);
                let c2p = q.matmul(&pos_key.transpose(-1, -2));
                let idx = (pos + span)
                    .clamp(0, span * 2 - 1)
                    .expand([b, heads, l, l], false);
                terms.push(c2p.gather(-1, &idx, false) / scale);
            }
            if self.p2c {
                let pos_query = project(&layer.pos_query_proj, &layer.query_proj);
                let p2c = k.matmul(&pos_query.transpose(-1, -2));
                let idx = (-pos + span)
                    .clamp(0, span * 2 - 1)
                    .expand([b, heads, l, l], false);
                terms.push(p2c.gather(-1, &idx, false).transpose(-1, -2) / scale);
            }
        }
        let scores = terms
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("the content term");
        let scores = scores.masked_fill(&allowed.logical_not(), min_value(scores.kind()));
        let probs = scores
            .softmax(-1, scores.kind())
            .dropped(self.cfg.attention_probs_dropout_prob, train);
        let ctx = probs
            .matmul(&v)
            .transpose(1, 2)
            .contiguous()
            .view([b, l, h]);
        let a = (layer
            .attention_output
            .forward(&ctx, train)
            .dropped(self.cfg.hidden_dropout_prob, train)
            + x)
            .apply(&layer.attention_norm);
        let inter = self
            .cfg
            .hidden_act
            .forward(&layer.intermediate.forward(&a, train));
        (layer
            .output
            .forward(&inter, train)
            .dropped(self.cfg.hidden_dropout_prob, train)
            + a)
            .apply(&layer.output_norm)
    }

    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> (Vec<Tensor>, Tensor, Tensor) {
        let emb = self.embed(input_ids, attention_mask, prompt, train);
        let (allowed, rel) = self.context(attention_mask, train);
        let mut states = vec![emb];
        for layer in &self.layers {
            let next = self.layer_forward(
                layer,
                states.last().expect("embeddings"),
                &allowed,
                rel.as_ref(),
                train,
            );
            states.push(next);
        }
        let (pooled, logits) = self.pool_and_classify(states.last().expect("last"), train);
        (states, pooled, logits)
    }

    fn pool_and_classify(&self, last: &Tensor, train: bool) -> (Tensor, Tensor) {
        let first = last.select(1, 0).dropped(self.cfg.pooler_dropout, train);
        let pooled = self
            .cfg
            .pooler_hidden_act
            .forward(&self.pooler.forward(&first, train));
        let drop = self.cfg.cls_dropout.unwrap_or(self.cfg.hidden_dropout_prob);
        let logits = self.classifier.forward(&pooled.dropped(drop, train), train);
        (pooled, logits)
    }

    /// One layer for gradient checkpointing; `mask` is the 0/1 attention mask `[batch, seq]`.
    pub(crate) fn layer(&self, i: usize, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (allowed, rel) = self.context(mask, train);
        self.layer_forward(&self.layers[i], x, &allowed, rel.as_ref(), train)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn head(&self, last: &Tensor, train: bool) -> Tensor {
        self.pool_and_classify(last, train).1
    }

    fn layer_linears(l: &Layer) -> Vec<&Linear> {
        let mut v = vec![&l.query_proj, &l.key_proj, &l.value_proj];
        v.extend(l.pos_key_proj.iter());
        v.extend(l.pos_query_proj.iter());
        v.extend([&l.attention_output, &l.intermediate, &l.output]);
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.layers.iter().flat_map(Self::layer_linears).collect();
        v.push(&self.pooler);
        v.push(&self.classifier);
        v
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in &mut self.layers {
            v.extend([&mut l.query_proj, &mut l.key_proj, &mut l.value_proj]);
            v.extend(l.pos_key_proj.iter_mut());
            v.extend(l.pos_query_proj.iter_mut());
            v.extend([&mut l.attention_output, &mut l.intermediate, &mut l.output]);
        }
        v.push(&mut self.pooler);
        v.push(&mut self.classifier);
        v
    }
}
