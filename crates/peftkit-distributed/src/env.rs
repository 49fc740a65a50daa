//! torchrun's contract: the environment variables a launcher sets for each rank.

use crate::{DistError, Result};
use std::fmt;

/// Where the rendezvous store's server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHost {
    /// Rank 0 starts it on `MASTER_ADDR:MASTER_PORT` (torch's `env://` rendezvous).
    Rank0,
    /// The launcher already serves it there and every rank is a client (torchrun's agent store,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`); it outlives any rank.
    Launcher,
}

/// One rank's place in the job, as torchrun (or `peftkit launch`) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// `RANK`: this process's rank among all.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of ranks.
    pub world_size: usize,
    /// `LOCAL_RANK`: the rank on this machine (picks `cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE`: the ranks on this machine.
    pub local_world_size: usize,
    /// `MASTER_ADDR`: the host of the rendezvous store.
    pub master_addr: String,
    /// `MASTER_PORT`: its port.
    pub master_port: u16,
    /// Who serves the store.
    pub store_host: StoreHost,
    /// `GLOO_SOCKET_IFNAME`: the network interfaces Gloo uses, if set.
    pub gloo_interfaces: Option<String>,
    /// `TORCHELASTIC_RESTART_COUNT`: which attempt of a restarted torchrun job this is (0).
    pub restart_count: usize,
}

impl fmt::Display for DistEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {} (local rank {} of {}), rendezvous {}:{} ({})",
            self.rank,
            self.world_size,
            self.local_rank,
            self.local_world_size,
            self.master_addr,
            self.master_port,
            match self.store_host {
                StoreHost::Rank0 => "served by rank 0",
                StoreHost::Launcher => "served by the launcher",
            }
        )
    }
}

impl DistEnv {
    /// Reads the process's environment: `None` when neither `RANK` nor `WORLD_SIZE` is set (a
    /// single process); an error naming the variable when one is set but the set is incomplete
    /// or inconsistent, as torch's `env://` rendezvous reports it.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] over any lookup (for tests and launchers).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let need = |k: &str| {
            get(k).ok_or_else(|| {
                DistError::Env(format!("environment variable {k} expected, but not set"))
            })
        };
        let number = |k: &str, v: String| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| DistError::Env(format!("{k}={v}: expected a non-negative integer")))
        };
        let rank = number("RANK", need("RANK")?)?;
        let world_size = number("WORLD_SIZE", need("WORLD_SIZE")?)?;
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env(format!(
                "RANK={rank} WORLD_SIZE={world_size}: the rank must be below the world size"
            )));
        }
        let local_rank = get("LOCAL_RANK")
            .map(|v| number("LOCAL_RANK", v))
            .transpose()?
            .unwrap_or(rank);
        let local_world_size = get("LOCAL_WORLD_SIZE")
            .map(|v| number("LOCAL_WORLD_SIZE", v))
            .transpose()?
            .unwrap_or(world_size);
        if local_rank >= local_world_size {
            return Err(DistError::Env(format!(
                "LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}: the local rank must be below the local world size"
            )));
        }
        let master_addr = need("MASTER_ADDR")?;
        let port = need("MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                DistError::Env(format!("MASTER_PORT={port}: expected a port in 1..=65535"))
            })?;
        let store_host = if get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
            StoreHost::Launcher
        } else {
            StoreHost::Rank0
        };
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            store_host,
            gloo_interfaces: get("GLOO_SOCKET_IFNAME"),
            restart_count: get("TORCHELASTIC_RESTART_COUNT")
                .map(|v| number("TORCHELASTIC_RESTART_COUNT", v))
                .transpose()?
                .unwrap_or(0),
        }))
    }

    /// Whether this is rank 0, the one that writes.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether the rendezvous host is this machine's loopback.
    pub fn is_loopback(&self) -> bool {
        let a = self.master_addr.as_str();
        a == "localhost" || a == "::1" || a.starts_with("127.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn no_variables_is_a_single_process() {
        assert_eq!(env(&[]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_are_read() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 4, 1, 2)
        );
        assert_eq!(e.store_host, StoreHost::Launcher);
        assert!(!e.is_loopback() && !e.is_main());
    }

    #[test]
    fn incomplete_or_inconsistent_variables_name_the_variable() {
        let err = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MASTER_ADDR"), "{err}");
        let err = env(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("below the world size"), "{err}");
        let err = env(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RANK=x"), "{err}");
        let err = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("MASTER_PORT=70000"), "{err}");
    }
}
