//! Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
//! Tuning"; peft's `PromptTuningConfig`) and P-tuning (Liu et al. 2021, "GPT Understands, Too";
//! peft's `PromptEncoderConfig`): trainable virtual tokens before the input's word embeddings,
//! supplied through the models' input seam ([`peftkit_models::PromptProvider`]). P-tuning
//! computes them with an MLP or a bidirectional LSTM.

pub mod config;
pub mod encoder;
mod model;

pub use config::{PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, Reparameterization};
pub use encoder::PromptEncoder;
