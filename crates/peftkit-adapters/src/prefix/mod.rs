//! Prefix tuning (Li & Liang 2021; peft's `PrefixTuningConfig` / `PrefixEncoder`): trainable
//! keys and values that every attention layer prepends to its own, supplied through the models'
//! attention seam ([`peftkit_models::PrefixProvider`]).

pub mod config;
pub mod encoder;
mod model;

pub use config::PrefixTuningConfig;
pub use encoder::{ComputedPrefix, PrefixEncoder, Projection};
