//! LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), laid out like
//! peft's `tuners/lora`: the config, the layer, and injection.

pub mod config;
pub mod init;
pub mod layer;
mod model;

pub(crate) use model::seq_cls_modules;
