//! GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") as a
//! sequence classifier, matching transformers' `GPT2ForSequenceClassification`: a pre-LayerNorm
//! causal decoder whose `score` projection (no bias) reads the last non-pad token of each row.
//!
//! Parameter paths mirror the checkpoint: `transformer.wte`, `transformer.h.{i}.attn.c_attn`, ...,
//! `transformer.ln_f`, `score`. The projections are GPT-2 `Conv1D`s, stored `[in, out]`.

use crate::attention::{additive_mask, attend, merge_heads, split_heads};
use crate::config::Gpt2Config;
use crate::linear::{Linear, WeightLayout};
use crate::prefix::PrefixProvider;
use crate::Dropout;
use tch::{nn, Kind, Tensor};

fn layer_norm(vs: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        vs,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// `attn`: fused q/k/v projection (`c_attn`), output projection (`c_proj`).
#[derive(Debug)]
pub struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: i64,
    n_embd: i64,
    scale: f64,
    attn_pdrop: f64,
    resid_pdrop: f64,
    layer: usize,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &Gpt2Config, layer: usize) -> Self {
        let std = cfg.initializer_range;
        let head_dim = (cfg.n_embd / cfg.n_head) as f64;
        let mut scale = if cfg.scale_attn_weights {
            1.0 / head_dim.sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Self {
            c_attn: Linear::new(
                &vs / "c_attn",
                cfg.n_embd,
                3 * cfg.n_embd,
                true,
                WeightLayout::InOut,
                std,
            ),
            c_proj: Linear::new(
                &vs / "c_proj",
                cfg.n_embd,
                cfg.n_embd,
                true,
                WeightLayout::InOut,
                std,
            ),
            n_head: cfg.n_head,
            n_embd: cfg.n_embd,
            scale,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
            layer,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let qkv = self.c_attn.forward(x, train);
        let parts = qkv.split(self.n_embd, 2);
        let (q, k, v) = (
            split_heads(&parts[0], self.n_head),
            split_heads(&parts[1], self.n_head),
            split_heads(&parts[2], self.n_head),
        );
        let y = attend(
            &q,
            k,
            v,
            mask,
            prefix.map(|p| (p, self.layer)),
            self.attn_pdrop,
            train,
            self.scale,
        );
        self.c_proj
            .forward(&merge_heads(&y), train)
            .dropped(self.resid_pdrop, train)
    }
}

/// `mlp`: `c_fc` → activation → `c_proj` → dropout.
#[derive(Debug)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: crate::config::Activation,
    dropout: f64,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &Gpt2Config) -> Self {
        let std = cfg.initializer_range;
        let inner = cfg.inner_dim();
        Self {
            c_fc: Linear::new(
                &vs / "c_fc",
                cfg.n_embd,
                inner,
                true,
                WeightLayout::InOut,
                std,
            ),
            c_proj: Linear::new(
                &vs / "c_proj",
                inner,
                cfg.n_embd,
                true,
                WeightLayout::InOut,
                std,
            ),
            act: cfg.activation_function,
            dropout: cfg.resid_pdrop,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.act.forward(&self.c_fc.forward(x, train));
        self.c_proj.forward(&h, train).dropped(self.dropout, train)
    }
}

/// `h.{i}`: `ln_1` → attention → residual, `ln_2` → MLP → residual.
#[derive(Debug)]
pub struct Block {
    ln_1: nn::LayerNorm,
    attn: Attention,
    ln_2: nn::LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &Gpt2Config, layer: usize) -> Self {
        Self {
            ln_1: layer_norm(&vs / "ln_1", cfg.n_embd, cfg.layer_norm_epsilon),
            attn: Attention::new(&vs / "attn", cfg, layer),
            ln_2: layer_norm(&vs / "ln_2", cfg.n_embd, cfg.layer_norm_epsilon),
            mlp: Mlp::new(&vs / "mlp", cfg),
        }
    }

    /// One block.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        let _span = tracing::trace_span!("gpt2.block", layer = self.attn.layer).entered();
        let x = x + self.attn.forward(&x.apply(&self.ln_1), mask, prefix, train);
        let h = self.mlp.forward(&x.apply(&self.ln_2), train);
        x + h
    }
}

/// `transformer`: embeddings, blocks, final LayerNorm (`GPT2Model`).
#[derive(Debug)]
pub struct Gpt2Model {
    wte: nn::Embedding,
    wpe: nn::Embedding,
    h: Vec<Block>,
    ln_f: nn::LayerNorm,
    embd_pdrop: f64,
    n_positions: i64,
}

impl Gpt2Model {
    fn new(vs: nn::Path, cfg: &Gpt2Config) -> Self {
        let emb = |p: nn::Path, n, d| {
            nn::embedding(
                p,
                n,
                d,
                nn::EmbeddingConfig {
                    ws_init: nn::Init::Randn {
                        mean: 0.0,
                        stdev: cfg.initializer_range,
                    },
                    ..Default::default()
                },
            )
        };
        Self {
            wte: emb(&vs / "wte", cfg.vocab_size, cfg.n_embd),
            wpe: emb(&vs / "wpe", cfg.n_positions, cfg.n_embd),
            h: (0..cfg.n_layer as usize)
                .map(|i| Block::new(&vs / "h" / i, cfg, i))
                .collect(),
            ln_f: layer_norm(&vs / "ln_f", cfg.n_embd, cfg.layer_norm_epsilon),
            embd_pdrop: cfg.embd_pdrop,
            n_positions: cfg.n_positions,
        }
    }

    /// Hidden states (`hidden_states` of transformers: the embeddings, the input of every later
    /// block, and the final output after `ln_f`; the last entry is the output). With `prompt`
    /// (`[n, hidden]` virtual tokens before the input), `attention_mask` covers them too
    /// (`[batch, n + seq]`).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Vec<Tensor> {
        let x = self.embed(
            input_ids,
            prefix.map_or(0, |p| p.position_offset()),
            prompt,
            train,
        );
        let prefix_len = prefix.map_or(0, |p| p.num_tokens());
        let mask = additive_mask(attention_mask, prefix_len, true, x.kind());
        let mut states = vec![x];
        for block in &self.h {
            let x = states.last().expect("embeddings pushed");
            let next = block.forward(x, &mask, prefix, train);
            states.push(next);
        }
        let last = states.pop().expect("at least the embeddings");
        states.push(last.apply(&self.ln_f));
        states
    }

    /// Token + position embeddings with dropout; positions start at `offset` (a prefix's
    /// length, as transformers counts a cache). Virtual tokens' embeddings `prompt` (`[n,
    /// hidden]`), when given, come first (transformers' `inputs_embeds`).
    pub fn embed(
        &self,
        input_ids: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let words = crate::prefix::with_prompt(input_ids.apply(&self.wte), prompt);
        let len = words.size()[1];
        let positions =
            Tensor::arange_start(offset, offset + len, (Kind::Int64, input_ids.device()))
                .unsqueeze(0);
        (words + positions.apply(&self.wpe)).dropped(self.embd_pdrop, train)
    }

    /// Maximum sequence length.
    pub fn max_positions(&self) -> i64 {
        self.n_positions
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.h
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.attn.c_attn,
                    &mut b.attn.c_proj,
                    &mut b.mlp.c_fc,
                    &mut b.mlp.c_proj,
                ]
            })
            .collect()
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        self.h
            .iter()
            .flat_map(|b| [&b.attn.c_attn, &b.attn.c_proj, &b.mlp.c_fc, &b.mlp.c_proj])
            .collect()
    }
}

/// `GPT2ForSequenceClassification`: `transformer` + `score` (no bias) on the last non-pad token.
#[derive(Debug)]
pub struct Gpt2ForSequenceClassification {
    transformer: Gpt2Model,
    score: Linear,
    pad_token_id: Option<i64>,
}

impl Gpt2ForSequenceClassification {
    /// Creates the model's parameters under `vs` (randomly initialised).
    pub fn new(vs: &nn::Path, cfg: &Gpt2Config) -> Self {
        let num_labels = cfg.classifier.num_labels() as i64;
        Self {
            transformer: Gpt2Model::new(vs / "transformer", cfg),
            score: Linear::new(
                vs / "score",
                cfg.n_embd,
                num_labels,
                false,
                WeightLayout::OutIn,
                cfg.initializer_range,
            ),
            pad_token_id: cfg.classifier.pad_token_id.or(cfg.eos_token_id),
        }
    }

    /// The decoder.
    pub fn transformer(&self) -> &Gpt2Model {
        &self.transformer
    }

    /// Index of the last non-pad token of each row (transformers' rule: the rightmost token that
    /// is not the pad token; with no pad token, the last position).
    pub fn last_token_index(&self, input_ids: &Tensor) -> Tensor {
        let (batch, len) = input_ids.size2().expect("input ids are [batch, seq]");
        match self.pad_token_id {
            Some(pad) => {
                let non_pad = input_ids.ne(pad).to_kind(Kind::Int64);
                let idx = Tensor::arange(len, (Kind::Int64, input_ids.device()));
                (idx * non_pad).argmax(-1, false)
            }
            None => Tensor::full([batch], len - 1, (Kind::Int64, input_ids.device())),
        }
    }

    /// The pooled position of each row: the last non-pad token, or with virtual tokens before
    /// the input the last position (transformers given `inputs_embeds` cannot see padding).
    fn pooled_index(&self, input_ids: &Tensor, prompted: bool, len: i64) -> Tensor {
        if prompted {
            let batch = input_ids.size()[0];
            Tensor::full([batch], len - 1, (Kind::Int64, input_ids.device()))
        } else {
            self.last_token_index(input_ids)
        }
    }

    /// Hidden states and logits; `pooled` is the hidden state at the last real token.
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> (Vec<Tensor>, Tensor, Tensor) {
        let states = self
            .transformer
            .forward(input_ids, attention_mask, prefix, prompt, train);
        let last = states.last().expect("final hidden state");
        let batch = last.size()[0];
        let rows = Tensor::arange(batch, (Kind::Int64, last.device()));
        let idx = self.pooled_index(input_ids, prompt.is_some(), last.size()[1]);
        let pooled = last.index(&[Some(rows), Some(idx)]);
        let logits = self.score.forward(&pooled, train);
        (states, pooled, logits)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.transformer.linears_mut();
        v.push(&mut self.score);
        v
    }

    /// Gradient checkpointing's pieces: the embeddings, the additive mask, one block, the head.
    pub(crate) fn embed(
        &self,
        input_ids: &Tensor,
        offset: i64,
        prompt: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.transformer.embed(input_ids, offset, prompt, train)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.transformer.h.len()
    }

    pub(crate) fn layer(
        &self,
        i: usize,
        x: &Tensor,
        mask: &Tensor,
        prefix: Option<&dyn PrefixProvider>,
        train: bool,
    ) -> Tensor {
        self.transformer.h[i].forward(x, mask, prefix, train)
    }

    pub(crate) fn head(
        &self,
        last: &Tensor,
        input_ids: &Tensor,
        prompted: bool,
        train: bool,
    ) -> Tensor {
        let last = last.apply(&self.transformer.ln_f);
        let rows = Tensor::arange(last.size()[0], (Kind::Int64, last.device()));
        let idx = self.pooled_index(input_ids, prompted, last.size()[1]);
        let pooled = last.index(&[Some(rows), Some(idx)]);
        self.score.forward(&pooled, train)
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = self.transformer.linears();
        v.push(&self.score);
        v
    }
}
