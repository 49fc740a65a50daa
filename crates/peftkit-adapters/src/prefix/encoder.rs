//! peft's `PrefixEncoder`: the virtual tokens' keys and values, optionally through an MLP, and
//! the prefix they give each attention layer ([`peftkit_models::PrefixProvider`]).

use super::config::PrefixTuningConfig;
use crate::prompt_learning::linear_init;
use crate::tuner::PrefixSource;
use peftkit_models::PrefixProvider;
use tch::{Device, Kind, Tensor};

/// The projection MLP of a prefix encoder: Linear → tanh → Linear.
#[derive(Debug)]
pub struct Projection {
    /// `transform.0.weight` `[hidden, token_dim]`.
    pub w1: Tensor,
    /// `transform.0.bias`.
    pub b1: Tensor,
    /// `transform.2.weight` `[layers·2·token_dim, hidden]`.
    pub w2: Tensor,
    /// `transform.2.bias`.
    pub b2: Tensor,
}

/// peft's `PrefixEncoder`: an embedding of the virtual tokens, optionally projected by an MLP,
/// giving `[num_virtual_tokens, num_layers·2·token_dim]`: for every layer a key and a value per
/// virtual token.
#[derive(Debug)]
pub struct PrefixEncoder {
    /// `[num_virtual_tokens, token_dim]` with a projection, else the prefix itself.
    pub embedding: Tensor,
    /// The MLP, when training with `prefix_projection`.
    pub projection: Option<Projection>,
    num_virtual_tokens: i64,
    layers: i64,
    heads: i64,
    head_dim: i64,
    shift_positions: bool,
}

impl PrefixEncoder {
    /// A randomly initialised encoder (peft's: embedding `N(0, 1)`, linears like
    /// `nn.Linear`), on `device`. `config` must be resolved against the model.
    pub fn new(config: &PrefixTuningConfig, device: Device) -> Self {
        let (dim, layers, heads) = config.dims();
        let n = config.num_virtual_tokens;
        let opts = (Kind::Float, device);
        let zero = config.init_weights.as_deref() == Some("zero");
        let out = layers * 2 * dim;
        let (embedding, projection) = if config.prefix_projection && !config.inference_mode {
            let hidden = config.encoder_hidden_size.unwrap_or(dim);
            let (w1, b1) = linear_init(dim, hidden, device);
            let (mut w2, mut b2) = linear_init(hidden, out, device);
            if zero {
                let _ = w2.zero_();
                let _ = b2.zero_();
            }
            (
                Tensor::randn([n, dim], opts),
                Some(Projection { w1, b1, w2, b2 }),
            )
        } else if zero {
            (Tensor::zeros([n, out], opts), None)
        } else {
            (Tensor::randn([n, out], opts), None)
        };
        Self {
            embedding,
            projection,
            num_virtual_tokens: n,
            layers,
            heads,
            head_dim: dim / heads,
            shift_positions: config.shift_position_ids,
        }
    }

    /// The prefix as peft saves it (`prompt_embeddings`): `[num_virtual_tokens,
    /// num_layers·2·token_dim]`, projected when there is a projection.
    pub fn prompt_embeddings(&self) -> Tensor {
        match &self.projection {
            None => self.embedding.shallow_clone(),
            Some(p) => self
                .embedding
                .linear(&p.w1, Some(&p.b1))
                .tanh()
                .linear(&p.w2, Some(&p.b2)),
        }
    }

    /// Replaces the encoder by a stored prefix (`prompt_embeddings`, already projected), as peft
    /// loads a saved adapter: the projection is dropped.
    pub fn load_prompt_embeddings(&mut self, prefix: &Tensor) -> std::result::Result<(), String> {
        let want = [
            self.num_virtual_tokens,
            self.layers * 2 * self.heads * self.head_dim,
        ];
        if prefix.size() != want {
            return Err(format!(
                "shape {:?} but the model needs {want:?} (num_virtual_tokens × num_layers·2·token_dim)",
                prefix.size()
            ));
        }
        let requires = self.parameters().iter().any(|(_, t)| t.requires_grad());
        self.embedding = prefix
            .to_kind(Kind::Float)
            .to_device(self.embedding.device())
            .detach()
            .set_requires_grad(requires);
        self.projection = None;
        Ok(())
    }

    /// The trainable tensors with peft's in-model names (`prompt_encoder.default.…`).
    pub fn parameters(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out = vec![("embedding.weight", &self.embedding)];
        if let Some(p) = &self.projection {
            out.extend([
                ("transform.0.weight", &p.w1),
                ("transform.0.bias", &p.b1),
                ("transform.2.weight", &p.w2),
                ("transform.2.bias", &p.b2),
            ]);
        }
        out
    }

    /// Sets whether the encoder's tensors require gradients.
    pub fn set_trainable(&mut self, on: bool) {
        let f = |t: &mut Tensor| *t = t.detach().set_requires_grad(on);
        f(&mut self.embedding);
        if let Some(p) = &mut self.projection {
            for t in [&mut p.w1, &mut p.b1, &mut p.w2, &mut p.b2] {
                f(t);
            }
        }
    }

    /// Number of elements of the encoder's tensors.
    pub fn numel(&self) -> i64 {
        self.parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

impl PrefixEncoder {
    /// The prefix for one forward pass, computed once (with a projection, the MLP runs once
    /// rather than once per layer).
    pub fn compute(&self) -> ComputedPrefix {
        ComputedPrefix {
            kv: self.prompt_embeddings().view([
                self.num_virtual_tokens,
                self.layers * 2,
                self.heads,
                self.head_dim,
            ]),
            offset: self.position_offset(),
        }
    }
}

/// A prefix computed for one forward pass: `[num_virtual_tokens, num_layers·2, heads,
/// head_dim]`, layer i's key in slot 2i and its value in 2i+1 (peft's view + permute + split).
#[derive(Debug)]
pub struct ComputedPrefix {
    kv: Tensor,
    offset: i64,
}

impl PrefixProvider for ComputedPrefix {
    fn num_tokens(&self) -> i64 {
        self.kv.size()[0]
    }

    fn position_offset(&self) -> i64 {
        self.offset
    }

    fn key_value(&self, layer: usize, batch_size: i64) -> (Tensor, Tensor) {
        let (n, _, heads, head_dim) = self.kv.size4().expect("[n, layers·2, heads, head_dim]");
        let pick = |slot: i64| {
            self.kv
                .select(1, slot)
                .transpose(0, 1)
                .unsqueeze(0)
                .expand([batch_size, heads, n, head_dim], false)
        };
        (pick(2 * layer as i64), pick(2 * layer as i64 + 1))
    }
}

/// The encoder itself recomputes the prefix for every layer it is asked for: what gradient
/// checkpointing needs, since each recomputed layer is backpropagated on its own.
impl PrefixProvider for PrefixEncoder {
    fn num_tokens(&self) -> i64 {
        self.num_virtual_tokens
    }

    fn position_offset(&self) -> i64 {
        if self.shift_positions {
            self.num_virtual_tokens
        } else {
            0
        }
    }

    fn key_value(&self, layer: usize, batch_size: i64) -> (Tensor, Tensor) {
        self.compute().key_value(layer, batch_size)
    }
}

impl PrefixSource for PrefixEncoder {
    fn compute(&self) -> Box<dyn PrefixProvider + '_> {
        Box::new(PrefixEncoder::compute(self))
    }
}
