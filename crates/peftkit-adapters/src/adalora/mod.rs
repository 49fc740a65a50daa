//! AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient
//! Fine-Tuning"), laid out like peft's `tuners/adalora`: LoRA in SVD form `B diag(E) A`, an
//! orthogonality regulariser on `A` and `B` added to the loss, and a budget of singular values
//! reallocated after each optimizer step by their importance ([`allocator`]).

pub mod allocator;
pub mod config;
pub mod layer;
mod model;

pub use config::AdaLoraConfig;
pub use layer::AdaLoraLayer;
