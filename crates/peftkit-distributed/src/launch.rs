//! A local launcher for people without Python: what `torchrun --nproc-per-node N` does on one
//! machine. It serves the rendezvous store itself (so the store outlives any rank, as torchrun's
//! agent store does), starts N copies of a program with torchrun's environment, and when one rank
//! fails gives the others a grace period to report it before stopping them.

use crate::store::Store;
use crate::{DistError, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Ranks to start on this machine.
    pub nproc_per_node: usize,
    /// The rendezvous address given to the ranks.
    pub master_addr: String,
    /// The rendezvous port (`None`: a free one, chosen by the store's server itself).
    pub master_port: Option<u16>,
    /// `OMP_NUM_THREADS` for each rank when the environment does not set it (torchrun sets 1
    /// with more than one rank).
    pub threads_per_rank: usize,
    /// How long the other ranks may run on after one failed, to report it themselves.
    pub grace: Duration,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            nproc_per_node: 1,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            threads_per_rank: 1,
            grace: Duration::from_secs(60),
        }
    }
}

/// How the launched ranks ended.
#[derive(Debug, Clone)]
pub struct LaunchOutcome {
    /// Each rank's exit status, by rank.
    pub statuses: Vec<ExitStatus>,
    /// The first rank that failed, if any.
    pub first_failure: Option<usize>,
}

impl LaunchOutcome {
    /// The exit code for the launcher: 0 when all succeeded, else the first failure's code (1
    /// when it was killed by a signal).
    pub fn exit_code(&self) -> i32 {
        match self.first_failure {
            None => 0,
            Some(r) => self.statuses[r].code().unwrap_or(1).max(1),
        }
    }
}

fn describe(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with code {c}"),
        None => "ended".into(),
    }
}

/// Starts `program args…` as `opts.nproc_per_node` ranks and waits for them all.
pub fn launch(program: &PathBuf, args: &[OsString], opts: &LaunchOptions) -> Result<LaunchOutcome> {
    let n = opts.nproc_per_node;
    if n == 0 {
        return Err(DistError::Launch(
            "--nproc-per-node must be at least 1".into(),
        ));
    }
    // The store is served here for the whole job (an agent store, as torchrun's).
    let store = Store::serve(
        &opts.master_addr,
        opts.master_port.unwrap_or(0),
        Some(n),
        Duration::from_secs(3600),
    )?;
    let port = store.port()?;
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("GROUP_RANK", "0")
            .env("ROLE_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("ROLE_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", &opts.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("TORCHELASTIC_USE_AGENT_STORE", "True")
            .env("TORCHELASTIC_RESTART_COUNT", "0");
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", opts.threads_per_rank.max(1).to_string());
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(DistError::Launch(format!(
                    "starting {}: {e}",
                    program.display()
                )));
            }
        }
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; n];
    let mut first_failure: Option<(usize, Instant)> = None;
    loop {
        for (rank, child) in children.iter_mut().enumerate() {
            if statuses[rank].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() && first_failure.is_none() {
                    eprintln!("launch: rank {rank} {}", describe(&status));
                    first_failure = Some((rank, Instant::now()));
                }
                statuses[rank] = Some(status);
            }
        }
        if statuses.iter().all(Option::is_some) {
            break;
        }
        if let Some((failed, at)) = first_failure {
            if at.elapsed() >= opts.grace {
                for (rank, child) in children.iter_mut().enumerate() {
                    if statuses[rank].is_none() {
                        eprintln!(
                            "launch: stopping rank {rank} ({:.0} s after rank {failed} failed)",
                            opts.grace.as_secs_f64()
                        );
                        let _ = child.kill();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(store);
    Ok(LaunchOutcome {
        statuses: statuses
            .into_iter()
            .map(|s| s.expect("all ended"))
            .collect(),
        first_failure: first_failure.map(|(r, _)| r),
    })
}
