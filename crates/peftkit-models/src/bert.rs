//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers") as a
//! sequence classifier, matching transformers' `BertForSequenceClassification`: a post-LayerNorm
//! bidirectional encoder, a pooler (dense + tanh on the first token), dropout and `classifier`.
//!
//! The encoder modules here ([`Encoder`], [`Layer`], ...) are shared with RoBERTa, whose layers are
//! the same as BERT's in transformers too. Paths mirror the checkpoint:
//! `bert.embeddings.word_embeddings`, `bert.encoder.layer.{i}.attention.self.query`, ...,
//! `bert.pooler.dense`, `classifier`.

use crate::attention::{additive_mask, attend, merge_heads, split_heads};
use crate::config::{Activation, BertConfig};
use crate::linear::{Linear, WeightLayout};
use crate::prefix::PrefixProvider;
use crate::Dropout;
use tch::{nn, Kind, Tensor};

pub(crate) fn layer_norm(vs: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        vs,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

pub(crate) fn embedding(vs: nn::Path, n: i64, dim: i64, std: f64) -> nn::Embedding {
    nn::embedding(
        vs,
        n,
        dim,
        nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            ..Default::default()
        },
    )
}

fn linear(vs: nn::Path, i: i64, o: i64, cfg: &BertConfig) -> Linear {
    Linear::new(vs, i, o, true, WeightLayout::OutIn, cfg.initializer_range)
}

/// `attention.self`: `query`, `key`, `value`.
#[derive(Debug)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: i64,
    dropout: f64,
}

/// `attention.output`: `dense`, `LayerNorm` over the residual.
#[derive(Debug)]
pub struct SelfOutput {
    dense: Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

/// `intermediate.dense` + activation.
#[derive(Debug)]
pub struct Intermediate {
    dense: Linear,
    act: Activation,
}

/// `output`: `dense`, `LayerNorm` over the residual.
#[derive(Debug)]
pub struct Output {
    dense: Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

/// `encoder.layer.{i}`.
#[derive(Debug)]
pub struct Layer {
    attention: SelfAttention,
    attention_output: SelfOutput,
    intermediate: Intermediate,
    output: Output,
    index: usize,
}

impl Layer {
    fn new(vs: nn::Path, cfg: &BertConfig, index: usize) -> Self {
        let h = cfg.hidden_size;
        let att = &vs / "attention";
        let sa = &att / "self";
        let so = &att / "output";
        Self {
            attention: SelfAttention {
                query: linear(&sa / "query", h, h, cfg),
                key: linear(&sa / "key", h, h, cfg),
                value: linear(&sa / "value", h, h, cfg),
                heads: cfg.num_attention_heads,
                dropout: cfg.attention_probs_dropout_prob,
            },
            attention_output: SelfOutput {
                dense: linear(&so / "dense", h, h, cfg),
                layer_norm: layer_norm(&so / "LayerNorm", h, cfg.layer_norm_eps),
                dropout: cfg.hidden_dropout_prob,
            },
            intermediate: Intermediate {
                dense: linear(
                    &vs / "intermediate" / "dense",
                    h,
                    cfg.intermediate_size,
                    cfg,
                ),
                act: cfg.hidden_act,
            },
            output: Output {
                dense: linear(&vs / "output" / "dense", cfg.intermediate_size, h, cfg),
                layer_norm: layer_norm(&vs / "output" / "LayerNorm", h, cfg.layer_norm_eps),
                dropout: cfg.hidden_dropout_prob,
            },
            index,
        }
    }

    /// One encoder layer.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("bert.layer", layer = self.index).entered();
        let a = &self.attention;
        let q = split_heads(&a.query.forward(x, train), a.heads);
        let k = split_heads(&a.key.forward(x, train), a.heads);
        let v = split_heads(&a.value.forward(x, train), a.heads);
        let head_dim = q.size()[3] as f64;
        let ctx = merge_heads(&attend(
            &q,
            k,
            v,
            mask,
            prefix.map(|p| (p, self.index)),
            a.dropout,
            train,
            1.0 / head_dim.sqrt(),
        ));
        let o = &self.attention_output;
        let x = (o.dense.forward(&ctx, train).dropped(o.dropout, train) + x).apply(&o.layer_norm);
        let h = self
            .intermediate
            .act
            .forward(&self.intermediate.dense.forward(&x, train));
        let out = &self.output;
        (out.dense.forward(&h, train).dropped(out.dropout, train) + x).apply(&out.layer_norm)
    }

    fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.attention.query,
            &mut self.attention.key,
            &mut self.attention.value,
            &mut self.attention_output.dense,
            &mut self.intermediate.dense,
            &mut self.output.dense,
        ]
    }

    fn linears(&self) -> [&Linear; 6] {
        [
            &self.attention.query,
            &self.attention.key,
            &self.attention.value,
            &self.attention_output.dense,
            &self.intermediate.dense,
            &self.output.dense,
        ]
    }
}

/// `encoder`: the stack of layers.
#[derive(Debug)]
pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn layer(
        &self,
        i: usize,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        self.layers[i].forward(x, mask, prefix, train)
    }

    pub(crate) fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers as usize)
                .map(|i| Layer::new(&vs / "layer" / i, cfg, i))
                .collect(),
        }
    }

    /// Hidden states: the embeddings followed by every layer's output.
    pub(crate) fn forward(
        &self,
        embeddings: Tensor,
        attention_mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Vec<Tensor> {
        let prefix_len = prefix.map_or(0, |p| p.num_tokens());
        let mask = additive_mask(attention_mask, prefix_len, false, embeddings.kind());
        let mut states = vec![embeddings];
        for layer in &self.layers {
            let next = layer.forward(
                states.last().expect("embeddings pushed"),
                &mask,
                prefix,
                train,
            );
            states.push(next);
        }
        states
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| l.linears()).collect()
    }
}

/// `embeddings`: word + absolute position + token type, LayerNorm, dropout.
#[derive(Debug)]
pub struct Embeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl Embeddings {
    pub(crate) fn new(vs: nn::Path, cfg: &BertConfig) -> Self {
        let std = cfg.initializer_range;
        Self {
            word_embeddings: embedding(
                &vs / "word_embeddings",
                cfg.vocab_size,
                cfg.hidden_size,
                std,
            ),
            position_embeddings: embedding(
                &vs / "position_embeddings",
                cfg.max_position_embeddings,
                cfg.hidden_size,
                std,
            ),
            token_type_embeddings: embedding(
                &vs / "token_type_embeddings",
                cfg.type_vocab_size,
                cfg.hidden_size,
                std,
            ),
            layer_norm: layer_norm(&vs / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// Embeds `input_ids` at `position_ids` (token type 0 everywhere), after the virtual tokens'
    /// embeddings `prompt` (`[n, hidden]`) when given (transformers' `inputs_embeds`).
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        prompt: Option<&Tensor>,
        position_ids: &Tensor,
        train: bool,
    ) -> Tensor {
        let words = crate::prefix::with_prompt(input_ids.apply(&self.word_embeddings), prompt);
        let (batch, len, _) = words.size3().expect("embeddings are [batch, seq, hidden]");
        let token_types = Tensor::zeros([batch, len], (Kind::Int64, input_ids.device()));
        (words
            + position_ids.apply(&self.position_embeddings)
            + token_types.apply(&self.token_type_embeddings))
        .apply(&self.layer_norm)
        .dropped(self.dropout, train)
    }
}

/// `pooler`: dense + tanh on the first token.
#[derive(Debug)]
pub struct Pooler {
    dense: Linear,
}

/// `BertForSequenceClassification`: `bert` (embeddings, encoder, pooler) + dropout + `classifier`.
#[derive(Debug)]
pub struct BertForSequenceClassification {
    embeddings: Embeddings,
    encoder: Encoder,
    pooler: Pooler,
    classifier: Linear,
    dropout: f64,
}

impl BertForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &BertConfig) -> Self {
        let bert = vs / "bert";
        let h = cfg.hidden_size;
        Self {
            embeddings: Embeddings::new(&bert / "embeddings", cfg),
            encoder: Encoder::new(&bert / "encoder", cfg),
            pooler: Pooler {
                dense: linear(&bert / "pooler" / "dense", h, h, cfg),
            },
            classifier: linear(
                vs / "classifier",
                h,
                cfg.classifier.num_labels() as i64,
                cfg,
            ),
            dropout: cfg.classifier_dropout(),
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
        let emb = self.embed(
            input_ids,
            prefix.map_or(0, |p| p.position_offset()),
            prompt,
            train,
        );
        let states = self.encoder.forward(emb, attention_mask, prefix, train);
        let first = states.last().expect("final hidden state").select(1, 0);
        let pooled = self.pooler.dense.forward(&first, train).tanh();
        let logits = self
            .classifier
            .forward(&pooled.dropped(self.dropout, train), train);
        (states, pooled, logits)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.encoder.linears_mut();
        v.push(&mut self.pooler.dense);
        v.push(&mut self.classifier);
        v
    }

    /// Gradient checkpointing's pieces.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (_, len) = input_ids.size2().expect("input ids are [batch, seq]");
        let len = len + prompt.map_or(0, |p| p.size()[0]);
        let positions =
            Tensor::arange_start(offset, offset + len, (Kind::Int64, input_ids.device()))
                .unsqueeze(0);
        self.embeddings
            .forward(input_ids, prompt, &positions, train)
    }

    pub(crate) fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub(crate) fn head(&self, last: &Tensor, train: bool) -> Tensor {
        let pooled = self.pooler.dense.forward(&last.select(1, 0), train).tanh();
        self.classifier
            .forward(&pooled.dropped(self.dropout, train), train)
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = self.encoder.linears();
        v.push(&self.pooler.dense);
        v.push(&self.classifier);
        v
    }
}
