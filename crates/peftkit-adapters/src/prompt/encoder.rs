//! The virtual tokens of prompt tuning (peft's `PromptEmbedding`: an embedding alone) and of
//! P-tuning (peft's `PromptEncoder`: the embedding through an MLP or a bidirectional LSTM and an
//! MLP), under peft's parameter names.

use crate::prompt_learning::linear_init;
use tch::{Device, Kind, Tensor};

/// `{prefix}.{0,2,…}.{weight,bias}`: the linears of an `nn.Sequential` with activations between.
fn push_linears<'a>(
    out: &mut Vec<(String, &'a Tensor)>,
    prefix: &str,
    layers: &'a [(Tensor, Tensor)],
) {
    for (i, (w, b)) in layers.iter().enumerate() {
        out.push((format!("{prefix}.{}.weight", 2 * i), w));
        out.push((format!("{prefix}.{}.bias", 2 * i), b));
    }
}

/// A P-tuning encoder's reparameterisation.
#[derive(Debug)]
enum Head {
    /// `mlp_head.{0,2,4}`: Linear → ReLU → Linear → ReLU → Linear.
    Mlp(Vec<(Tensor, Tensor)>),
    /// `lstm_head` (bidirectional, `layers` deep) then `mlp_head.{0,2}`: Linear → ReLU → Linear.
    Lstm {
        /// Per layer and direction: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
        params: Vec<Tensor>,
        layers: i64,
        hidden: i64,
        dropout: f64,
        mlp: Vec<(Tensor, Tensor)>,
    },
}

/// The virtual tokens: `embedding` `[n, token_dim]`, optionally through a P-tuning head.
#[derive(Debug)]
pub struct PromptEncoder {
    /// `embedding.weight`.
    pub embedding: Tensor,
    head: Option<Head>,
}

impl PromptEncoder {
    /// Prompt tuning's virtual tokens: these embeddings, trained directly.
    pub fn embedding(embedding: Tensor) -> Self {
        Self {
            embedding,
            head: None,
        }
    }

    /// P-tuning with an MLP of hidden size `hidden` (peft's `encoder_num_layers` is ignored for
    /// the MLP, as in peft: always two hidden layers).
    pub fn mlp(n: i64, dim: i64, hidden: i64, device: Device) -> Self {
        let layers = vec![
            linear_init(dim, hidden, device),
            linear_init(hidden, hidden, device),
            linear_init(hidden, dim, device),
        ];
        Self {
            embedding: Tensor::randn([n, dim], (Kind::Float, device)),
            head: Some(Head::Mlp(layers)),
        }
    }

    /// P-tuning with a bidirectional LSTM (`layers` deep, hidden size `hidden`, dropout between
    /// layers) and an MLP from `2·hidden` back to `dim`.
    pub fn lstm(n: i64, dim: i64, hidden: i64, layers: i64, dropout: f64, device: Device) -> Self {
        let opts = (Kind::Float, device);
        let bound = 1.0 / (hidden as f64).sqrt();
        let u = |shape: &[i64]| Tensor::empty(shape, opts).uniform_(-bound, bound);
        let mut params = Vec::new();
        for layer in 0..layers {
            let input = if layer == 0 { dim } else { 2 * hidden };
            for _direction in 0..2 {
                params.extend([
                    u(&[4 * hidden, input]),
                    u(&[4 * hidden, hidden]),
                    u(&[4 * hidden]),
                    u(&[4 * hidden]),
                ]);
            }
        }
        let mlp = vec![
            linear_init(2 * hidden, 2 * hidden, device),
            linear_init(2 * hidden, dim, device),
        ];
        Self {
            embedding: Tensor::randn([n, dim], opts),
            head: Some(Head::Lstm {
                params,
                layers,
                hidden,
                dropout,
                mlp,
            }),
        }
    }

    /// Number of virtual tokens.
    pub fn num_tokens(&self) -> i64 {
        self.embedding.size()[0]
    }

    /// The virtual tokens' embeddings `[n, token_dim]` (what peft saves as `prompt_embeddings`).
    pub fn compute(&self, train: bool) -> Tensor {
        let mlp = |x: Tensor, layers: &[(Tensor, Tensor)]| {
            let last = layers.len() - 1;
            layers.iter().enumerate().fold(x, |x, (i, (w, b))| {
                let y = x.linear(w, Some(b));
                if i < last {
                    y.relu()
                } else {
                    y
                }
            })
        };
        match &self.head {
            None => self.embedding.shallow_clone(),
            Some(Head::Mlp(layers)) => mlp(self.embedding.shallow_clone(), layers),
            Some(Head::Lstm {
                params,
                layers,
                hidden,
                dropout,
                mlp: head,
            }) => {
                let zeros = Tensor::zeros(
                    [2 * layers, 1, *hidden],
                    (Kind::Float, self.embedding.device()),
                );
                let (out, _, _) = self.embedding.unsqueeze(0).lstm(
                    &[zeros.shallow_clone(), zeros],
                    params,
                    true,
                    *layers,
                    *dropout,
                    train,
                    true,
                    true,
                );
                mlp(out.squeeze_dim(0), head)
            }
        }
    }

    /// Replaces the encoder by stored, already encoded virtual tokens (peft's
    /// `prompt_embeddings`): the head is dropped, as peft loads a saved adapter.
    pub fn load_prompt_embeddings(&mut self, prompt: &Tensor) -> std::result::Result<(), String> {
        if prompt.size() != self.embedding.size() {
            return Err(format!(
                "shape {:?} but the model needs {:?} (num_virtual_tokens × token_dim)",
                prompt.size(),
                self.embedding.size()
            ));
        }
        let requires = self.embedding.requires_grad();
        self.embedding = prompt
            .to_kind(Kind::Float)
            .to_device(self.embedding.device())
            .detach()
            .set_requires_grad(requires);
        self.head = None;
        Ok(())
    }

    /// The tensors with peft's names under `prompt_encoder.{adapter}.`.
    pub fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("embedding.weight".to_string(), &self.embedding)];
        match &self.head {
            None => {}
            Some(Head::Mlp(layers)) => push_linears(&mut out, "mlp_head", layers),
            Some(Head::Lstm {
                params,
                layers,
                mlp,
                ..
            }) => {
                let mut it = params.iter();
                for layer in 0..*layers {
                    for suffix in ["", "_reverse"] {
                        for name in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                            let t = it.next().expect("4 tensors per layer and direction");
                            out.push((format!("lstm_head.{name}_l{layer}{suffix}"), t));
                        }
                    }
                }
                push_linears(&mut out, "mlp_head", mlp);
            }
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.embedding];
        match &mut self.head {
            None => {}
            Some(Head::Mlp(layers)) => {
                out.extend(layers.iter_mut().flat_map(|(w, b)| [w, b]));
            }
            Some(Head::Lstm { params, mlp, .. }) => {
                out.extend(params.iter_mut());
                out.extend(mlp.iter_mut().flat_map(|(w, b)| [w, b]));
            }
        }
        out
    }

    /// Sets whether its tensors require gradients.
    pub fn set_trainable(&mut self, on: bool) {
        for t in self.tensors_mut() {
            *t = t.detach().set_requires_grad(on);
        }
    }

    /// Copies values into its tensors by peft's names (for tests against peft's encoder).
    pub fn load_parameters(
        &mut self,
        values: &std::collections::HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let names: Vec<String> = self.parameters().into_iter().map(|(n, _)| n).collect();
        for (name, t) in names.iter().zip(self.tensors_mut()) {
            let v = values.get(name).ok_or_else(|| format!("no `{name}`"))?;
            if v.size() != t.size() {
                return Err(format!(
                    "`{name}`: shape {:?}, expected {:?}",
                    v.size(),
                    t.size()
                ));
            }
            tch::no_grad(|| t.copy_(v));
        }
        Ok(())
    }
}
