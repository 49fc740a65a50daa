//! DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT") as a sequence
//! classifier, matching transformers' `DistilBertForSequenceClassification`: BERT's post-LayerNorm
//! encoder without token types or pooler, and a head of `pre_classifier` + ReLU + dropout +
//! `classifier` on the first token.
//!
//! Paths mirror the checkpoint: `distilbert.embeddings.{word_embeddings,position_embeddings,
//! LayerNorm}`, `distilbert.transformer.layer.{i}.attention.{q_lin,k_lin,v_lin,out_lin}`,
//! `….sa_layer_norm`, `….ffn.{lin1,lin2}`, `….output_layer_norm`, `pre_classifier`, `classifier`.

use crate::attention::{additive_mask, attend, merge_heads, split_heads};
use crate::bert::{embedding, layer_norm};
use crate::config::{Activation, ClassifierConfig};
use crate::linear::{Linear, WeightLayout};
use crate::prefix::PrefixProvider;
use crate::Dropout;
use serde::Deserialize;
use tch::{nn, Kind, Tensor};

fn default_dim() -> i64 {
    768
}
fn default_dropout() -> f64 {
    0.1
}
fn default_seq_dropout() -> f64 {
    0.2
}
fn default_init() -> f64 {
    0.02
}
fn default_gelu() -> Activation {
    Activation::Gelu
}

/// DistilBERT's `config.json` (`DistilBertConfig`; its own field names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DistilBertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    #[serde(default = "default_dim")]
    pub dim: i64,
    /// Layers.
    pub n_layers: i64,
    /// Attention heads.
    pub n_heads: i64,
    /// Feed-forward size.
    pub hidden_dim: i64,
    /// Position embeddings.
    pub max_position_embeddings: i64,
    /// Dropout after embeddings and the feed-forward block.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Attention probability dropout.
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    /// Feed-forward activation (`gelu` or `relu`).
    #[serde(default = "default_gelu")]
    pub activation: Activation,
    /// Std of the normal initialisation.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Dropout of the classification head.
    #[serde(default = "default_seq_dropout")]
    pub seq_classif_dropout: f64,
    /// Fixed sinusoidal position embeddings (initialisation only: checkpoints carry them).
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// Classification fields.
    #[serde(flatten)]
    pub classifier: ClassifierConfig,
}

impl DistilBertConfig {
    /// The sizes that allocate, by their `config.json` keys (all must be positive).
    pub(crate) fn sizes(&self) -> Vec<(&'static str, i64)> {
        vec![
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("hidden_dim", self.hidden_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ]
    }
}

/// transformers' `create_sinusoidal_embeddings`: sin on even, cos on odd dimensions of
/// `pos / 10000^(2⌊j/2⌋/dim)`.
fn sinusoidal(positions: i64, dim: i64) -> Tensor {
    let pos = Tensor::arange(positions, (Kind::Double, tch::Device::Cpu)).unsqueeze(1);
    let j = Tensor::arange(dim, (Kind::Double, tch::Device::Cpu));
    let rate = (j.divide_scalar_mode(2, "floor") * (2.0 / dim as f64) * -(10000f64.ln())).exp();
    let angles = pos * rate.unsqueeze(0);
    let even = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, tch::Device::Cpu));
    let odd = Tensor::arange_start_step(1, dim, 2, (Kind::Int64, tch::Device::Cpu));
    let out = angles.zeros_like();
    let out = out.index_copy(1, &even, &angles.index_select(1, &even).sin());
    out.index_copy(1, &odd, &angles.index_select(1, &odd).cos())
        .to_kind(Kind::Float)
}

fn linear(vs: nn::Path, i: i64, o: i64, cfg: &DistilBertConfig) -> Linear {
    Linear::new(vs, i, o, true, WeightLayout::OutIn, cfg.initializer_range)
}

/// `transformer.layer.{i}`: attention (`q_lin`, `k_lin`, `v_lin`, `out_lin`), `sa_layer_norm`,
/// `ffn` (`lin1`, `lin2`), `output_layer_norm`.
#[derive(Debug)]
pub struct TransformerBlock {
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: nn::LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: nn::LayerNorm,
    heads: i64,
    activation: Activation,
    attention_dropout: f64,
    dropout: f64,
    index: usize,
}

impl TransformerBlock {
    fn new(vs: nn::Path, cfg: &DistilBertConfig, index: usize) -> Self {
        let (d, h) = (cfg.dim, cfg.hidden_dim);
        let att = &vs / "attention";
        Self {
            q_lin: linear(&att / "q_lin", d, d, cfg),
            k_lin: linear(&att / "k_lin", d, d, cfg),
            v_lin: linear(&att / "v_lin", d, d, cfg),
            out_lin: linear(&att / "out_lin", d, d, cfg),
            sa_layer_norm: layer_norm(&vs / "sa_layer_norm", d, 1e-12),
            lin1: linear(&vs / "ffn" / "lin1", d, h, cfg),
            lin2: linear(&vs / "ffn" / "lin2", h, d, cfg),
            output_layer_norm: layer_norm(&vs / "output_layer_norm", d, 1e-12),
            heads: cfg.n_heads,
            activation: cfg.activation,
            attention_dropout: cfg.attention_dropout,
            dropout: cfg.dropout,
            index,
        }
    }

    /// One block: attention, add & norm, feed-forward (dropout after `lin2`), add & norm.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("distilbert.layer", layer = self.index).entered();
        let q = split_heads(&self.q_lin.forward(x, train), self.heads);
        let k = split_heads(&self.k_lin.forward(x, train), self.heads);
        let v = split_heads(&self.v_lin.forward(x, train), self.heads);
        let head_dim = q.size()[3] as f64;
        let ctx = merge_heads(&attend(
            &q,
            k,
            v,
            mask,
            prefix.map(|p| (p, self.index)),
            self.attention_dropout,
            train,
            1.0 / head_dim.sqrt(),
        ));
        let sa = (self.out_lin.forward(&ctx, train) + x).apply(&self.sa_layer_norm);
        let ffn = self.lin2.forward(
            &self.activation.forward(&self.lin1.forward(&sa, train)),
            train,
        );
        (ffn.dropped(self.dropout, train) + sa).apply(&self.output_layer_norm)
    }

    fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.q_lin,
            &mut self.k_lin,
            &mut self.v_lin,
            &mut self.out_lin,
            &mut self.lin1,
            &mut self.lin2,
        ]
    }

    fn linears(&self) -> [&Linear; 6] {
        [
            &self.q_lin,
            &self.k_lin,
            &self.v_lin,
            &self.out_lin,
            &self.lin1,
            &self.lin2,
        ]
    }
}

/// `embeddings`: word + absolute position, LayerNorm, dropout (no token types).
#[derive(Debug)]
pub struct Embeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

/// `DistilBertForSequenceClassification`: `distilbert` (embeddings, transformer) +
/// `pre_classifier` + ReLU + dropout + `classifier`.
#[derive(Debug)]
pub struct DistilBertForSequenceClassification {
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
    pre_classifier: Linear,
    classifier: Linear,
    dropout: f64,
}

impl DistilBertForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &DistilBertConfig) -> Self {
        let base = vs / "distilbert";
        let emb = &base / "embeddings";
        let std = cfg.initializer_range;
        let d = cfg.dim;
        let position_embeddings = embedding(
            &emb / "position_embeddings",
            cfg.max_position_embeddings,
            d,
            std,
        );
        if cfg.sinusoidal_pos_embds {
            tch::no_grad(|| {
                let mut w = position_embeddings.ws.shallow_clone();
                w.copy_(&sinusoidal(cfg.max_position_embeddings, d));
            });
        }
        Self {
            embeddings: Embeddings {
                word_embeddings: embedding(&emb / "word_embeddings", cfg.vocab_size, d, std),
                position_embeddings,
                layer_norm: layer_norm(&emb / "LayerNorm", d, 1e-12),
                dropout: cfg.dropout,
            },
            layers: (0..cfg.n_layers as usize)
                .map(|i| TransformerBlock::new(&base / "transformer" / "layer" / i, cfg, i))
                .collect(),
            pre_classifier: linear(vs / "pre_classifier", d, d, cfg),
            classifier: linear(
                vs / "classifier",
                d,
                cfg.classifier.num_labels() as i64,
                cfg,
            ),
            dropout: cfg.seq_classif_dropout,
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
        let prefix_len = prefix.map_or(0, |p| p.num_tokens());
        let mask = additive_mask(attention_mask, prefix_len, false, emb.kind());
        let mut states = vec![emb];
        for layer in &self.layers {
            let next = layer.forward(states.last().expect("embeddings"), &mask, prefix, train);
            states.push(next);
        }
        let (pooled, logits) = self.pool_and_classify(states.last().expect("last state"), train);
        (states, pooled, logits)
    }

    fn pool_and_classify(&self, last: &Tensor, train: bool) -> (Tensor, Tensor) {
        let pooled = self
            .pre_classifier
            .forward(&last.select(1, 0), train)
            .relu();
        let logits = self
            .classifier
            .forward(&pooled.dropped(self.dropout, train), train);
        (pooled, logits)
    }

    /// The embeddings of `input_ids` (after the virtual tokens' `prompt`), at positions from
    /// `offset`.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let e = &self.embeddings;
        let words = crate::prefix::with_prompt(input_ids.apply(&e.word_embeddings), prompt);
        let len = words.size()[1];
        let positions =
            Tensor::arange_start(offset, offset + len, (Kind::Int64, input_ids.device()))
                .unsqueeze(0);
        (words + positions.apply(&e.position_embeddings))
            .apply(&e.layer_norm)
            .dropped(e.dropout, train)
    }

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

    pub(crate) fn head(&self, last: &Tensor, train: bool) -> Tensor {
        self.pool_and_classify(last, train).1
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = self
            .layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect();
        v.push(&mut self.pre_classifier);
        v.push(&mut self.classifier);
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.layers.iter().flat_map(|l| l.linears()).collect();
        v.push(&self.pre_classifier);
        v.push(&self.classifier);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_positions_are_transformers() {
        let t = sinusoidal(3, 4);
        let at = |p: i64, j: i64| t.double_value(&[p, j]);
        assert!((at(0, 0) - 0.0).abs() < 1e-7 && (at(0, 1) - 1.0).abs() < 1e-7);
        assert!((at(1, 0) - 1f64.sin()).abs() < 1e-6 && (at(1, 1) - 1f64.cos()).abs() < 1e-6);
        // j = 2, 3: pos / 10000^(2/4) = pos / 100.
        assert!((at(2, 2) - 0.02f64.sin()).abs() < 1e-6 && (at(2, 3) - 0.02f64.cos()).abs() < 1e-6);
    }
}
