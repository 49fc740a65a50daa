//! peftkit's experiment pipeline: configs, the reproduce flow, reports. The `peftkit` binary is a
//! thin CLI over this library; the crates under `crates/` are usable alone.

#![warn(missing_docs)]

pub mod config;
pub mod infer;
pub mod pipeline;
pub mod predict;
pub mod report;
pub mod run_dir;
pub mod serve;
