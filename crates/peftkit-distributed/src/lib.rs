//! Data-parallel training's plumbing over libtorch's own distributed engine, c10d: a `TCPStore`
//! rendezvous, Gloo (CPU) and NCCL (CUDA) process groups with all-reduce, broadcast, all-gather and barrier (with
//! timeouts), torchrun's environment contract, rank health (the error of a failed collective
//! names the rank that died or hung) and a local launcher.
//!
//! Nothing here knows about models or training: the trainer uses a [`ProcessGroup`] to average
//! its flat gradient buffer, shard batches and gather evaluations.
//!
//! ```no_run
//! use peftkit_distributed::{DistEnv, GroupOptions, ProcessGroup};
//! // Under `torchrun --no-python --nproc-per-node 2 my-program` or `peftkit launch`:
//! if let Some(env) = DistEnv::from_env()? {
//!     let pg = ProcessGroup::init(&env, &GroupOptions::default())?;
//!     let grads = tch::Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu));
//!     pg.all_reduce_sum(&[&grads])?; // every element is now the world size
//!     println!("{env}: {grads}");
//! }
//! # Ok::<(), peftkit_distributed::DistError>(())
//! ```

#![warn(missing_docs)]

mod env;
mod ffi;
mod group;
mod health;
mod launch;
mod store;

pub use env::{DistEnv, StoreHost};
pub use group::{Backend, GroupOptions, ProcessGroup, ReduceOp};
pub use launch::{launch, LaunchOptions, LaunchOutcome};
pub use store::Store;

/// Errors of the distributed layer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's environment variables are incomplete or inconsistent.
    #[error("distributed environment: {0}")]
    Env(String),
    /// The rendezvous port is taken.
    #[error("rendezvous: {addr} is already in use (another process group or program listens there); choose another MASTER_PORT ({message})")]
    PortInUse {
        /// `host:port`.
        addr: String,
        /// c10d's message.
        message: String,
    },
    /// The rendezvous failed (store unreachable, ranks missing).
    #[error("rendezvous at {addr}: {message}")]
    Rendezvous {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// A store operation failed.
    #[error("store at {addr}: {message}")]
    Store {
        /// `host:port`.
        addr: String,
        /// c10d's message.
        message: String,
    },
    /// A collective failed; `cause` names the rank(s) at fault where they could be found.
    #[error("rank {rank}: {op} #{seq} failed: {cause} (c10d: {message})")]
    Collective {
        /// The rank reporting.
        rank: usize,
        /// Which collective.
        op: &'static str,
        /// Its sequence number in the group.
        seq: u64,
        /// What the other ranks were found doing.
        cause: String,
        /// The backend's message.
        message: String,
    },
    /// Ranks disagree on something that must be equal.
    #[error("the ranks disagree on {what}: {detail}")]
    Mismatch {
        /// What was compared.
        what: String,
        /// The first difference.
        detail: String,
    },
    /// A tensor a collective cannot take.
    #[error("{0}")]
    Tensor(String),
    /// The launcher could not start or watch its ranks.
    #[error("launch: {0}")]
    Launch(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DistError>;
