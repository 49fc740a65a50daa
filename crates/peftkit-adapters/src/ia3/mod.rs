//! IA³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
//! In-Context Learning"), laid out like peft's `tuners/ia3`: learned vectors that rescale the
//! outputs of attention projections and the inputs of feed-forward ones.

pub mod config;
pub mod layer;
mod model;

pub use config::Ia3Config;
pub use layer::Ia3Layer;
