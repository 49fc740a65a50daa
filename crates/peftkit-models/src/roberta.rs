//! RoBERTa (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach") as a
//! sequence classifier, matching transformers' `RobertaForSequenceClassification`: BERT's encoder
//! with position ids that start at `padding_idx + 1` and skip padding, no pooler, and a head
//! `classifier.dense` → tanh → `classifier.out_proj` on the `<s>` token.

use crate::bert::{Embeddings, Encoder};
use crate::config::BertConfig;
use crate::linear::{Linear, WeightLayout};
use crate::prefix::PrefixProvider;
use crate::Dropout;
use tch::{nn, Kind, Tensor};

/// `classifier`: dropout → `dense` → tanh → dropout → `out_proj` on the first token.
#[derive(Debug)]
pub struct ClassificationHead {
    dense: Linear,
    out_proj: Linear,
    dropout: f64,
}

/// `RobertaForSequenceClassification`: `roberta` (embeddings, encoder) + `classifier`.
#[derive(Debug)]
pub struct RobertaForSequenceClassification {
    embeddings: Embeddings,
    encoder: Encoder,
    classifier: ClassificationHead,
    padding_idx: i64,
}

/// RoBERTa's position ids: `padding_idx + 1 + offset, padding_idx + 2 + offset, ...` over real
/// tokens and `padding_idx` on padding (transformers' `create_position_ids_from_input_ids`, with
/// `past_key_values_length = offset`).
pub fn position_ids(input_ids: &Tensor, padding_idx: i64, offset: i64) -> Tensor {
    let mask = input_ids.ne(padding_idx).to_kind(Kind::Int64);
    (mask.cumsum(1, Kind::Int64) + offset) * &mask + padding_idx
}

impl RobertaForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &BertConfig) -> Self {
        let roberta = vs / "roberta";
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let head = vs / "classifier";
        Self {
            embeddings: Embeddings::new(&roberta / "embeddings", cfg),
            encoder: Encoder::new(&roberta / "encoder", cfg),
            classifier: ClassificationHead {
                dense: Linear::new(&head / "dense", h, h, true, WeightLayout::OutIn, std),
                out_proj: Linear::new(
                    &head / "out_proj",
                    h,
                    cfg.classifier.num_labels() as i64,
                    true,
                    WeightLayout::OutIn,
                    std,
                ),
                dropout: cfg.classifier_dropout(),
            },
            padding_idx: cfg.classifier.pad_token_id.unwrap_or(1),
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
        let states = self.encoder.forward(emb, attention_mask, prefix, train);
        let first = states.last().expect("final hidden state").select(1, 0);
        let c = &self.classifier;
        let pooled = c
            .dense
            .forward(&first.dropped(c.dropout, train), train)
            .tanh();
        let logits = c.out_proj.forward(&pooled.dropped(c.dropout, train), train);
        (states, pooled, logits)
    }

    /// Gradient checkpointing's pieces.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let positions = match prompt {
            // transformers' create_position_ids_from_inputs_embeds: it cannot see padding.
            Some(p) => {
                let len = input_ids.size()[1] + p.size()[0];
                let start = self.padding_idx + 1 + offset;
                Tensor::arange_start(start, start + len, (Kind::Int64, input_ids.device()))
                    .unsqueeze(0)
            }
            None => position_ids(input_ids, self.padding_idx, offset),
        };
        self.embeddings
            .forward(input_ids, prompt, &positions, train)
    }

    pub(crate) fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub(crate) fn head(&self, last: &Tensor, train: bool) -> Tensor {
        let c = &self.classifier;
        let pooled = c
            .dense
            .forward(&last.select(1, 0).dropped(c.dropout, train), train)
            .tanh();
        c.out_proj.forward(&pooled.dropped(c.dropout, train), train)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.encoder.linears_mut();
        v.push(&mut self.classifier.dense);
        v.push(&mut self.classifier.out_proj);
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = self.encoder.linears();
        v.push(&self.classifier.dense);
        v.push(&self.classifier.out_proj);
        v
    }
}
