//! A c10d process group (Gloo) over a TCPStore rendezvous, with the collectives training needs.

use crate::env::{DistEnv, StoreHost};
use crate::ffi::{self, pkd_group, take_error};
use crate::health::{self, Heartbeat};
use crate::store::{duration_millis, Store};
use crate::{DistError, Result};
use std::ffi::{c_char, c_int, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

/// The c10d backend of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (CUDA tensors are staged through host memory).
    Gloo,
    /// NCCL: CUDA tensors on `cuda:LOCAL_RANK` (a CUDA libtorch and a GPU per rank).
    Nccl,
}

impl Backend {
    /// HF Trainer's choice: NCCL for a CUDA device, Gloo otherwise.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    /// Parses `gloo` / `nccl` (HF's `ddp_backend` values).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(DistError::Env(format!(
                "ddp_backend `{other}`: expected \"gloo\" or \"nccl\""
            ))),
        }
    }

    /// Whether this build can make groups of this backend (NCCL needs a CUDA libtorch and its
    /// headers at build time).
    pub fn is_available(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: no arguments, no state.
            Backend::Nccl => unsafe { ffi::pkd_has_nccl() != 0 },
        }
    }
}

/// How a group is set up.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Gloo or NCCL.
    pub backend: Backend,
    /// How long a collective (and the rendezvous) may wait for the other ranks (HF's
    /// `ddp_timeout`; torch's default is 30 minutes).
    pub timeout: Duration,
    /// How often each rank tells the store it is alive.
    pub heartbeat: Duration,
    /// Checked equal on every rank (`(what, value)`, see [`ProcessGroup::agree`]) after the
    /// rendezvous and before the backend is built, so that ranks set up differently (another
    /// backend or timeout) get the mismatch, not a hang.
    pub agreement: Option<(String, String)>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Gloo,
            timeout: Duration::from_secs(1800),
            heartbeat: Duration::from_millis(500),
            agreement: None,
        }
    }
}

/// The reduction of an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Product.
    Product,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Product => 1,
            ReduceOp::Min => 2,
            ReduceOp::Max => 3,
        }
    }
}

/// A group of ranks running the same program, connected by c10d's Gloo backend (CPU tensors;
/// CUDA tensors are staged through host memory by libtorch).
///
/// Collectives must be called in the same order on every rank. When one fails (a rank died, hung
/// past the timeout, or reported an error) the error names the rank: see [`DistError::Collective`].
///
/// ```no_run
/// use peftkit_distributed::{DistEnv, GroupOptions, ProcessGroup};
/// let env = DistEnv::from_env()?.expect("run under torchrun or `peftkit launch`");
/// let pg = ProcessGroup::init(&env, &GroupOptions::default())?;
/// let t = tch::Tensor::from_slice(&[pg.rank() as f32]);
/// pg.all_reduce_sum(&[&t])?; // 0 + 1 + … + (world - 1) on every rank
/// # Ok::<(), peftkit_distributed::DistError>(())
/// ```
#[derive(Debug)]
pub struct ProcessGroup {
    raw: NonNull<pkd_group>,
    env: DistEnv,
    store: Store,
    health_store: Arc<Store>,
    seq: Arc<AtomicU64>,
    options: GroupOptions,
    agreements: AtomicU64,
    // ProcessGroupGloo::nextTag() bumps an unsynchronised counter: collectives on one group are
    // serialised here so that `Sync` holds (and every rank sees the same tag order).
    ops: std::sync::Mutex<()>,
    _heartbeat: Heartbeat,
}

// SAFETY: c10d backends are thread-safe to enqueue work on; the handle is a reference-counted
// pointer. Ordering of collectives across ranks is the caller's contract.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by pkd_group_gloo, freed once.
        unsafe { ffi::pkd_group_free(self.raw.as_ptr()) }
    }
}

impl ProcessGroup {
    /// Joins the group `env` describes: connects to (or, on rank 0 under `env://`, serves) the
    /// store at `MASTER_ADDR:MASTER_PORT`, waits for all ranks (up to the timeout: the error says
    /// how many came), and builds the Gloo group.
    pub fn init(env: &DistEnv, options: &GroupOptions) -> Result<Self> {
        let root = match env.store_host {
            StoreHost::Rank0 if env.rank == 0 => Store::serve(
                &env.master_addr,
                env.master_port,
                Some(env.world_size),
                options.timeout,
            )?,
            _ => Store::connect(&env.master_addr, env.master_port, options.timeout)?,
        };
        // Keys of one launch attempt: a torchrun restart reuses its agent store.
        let namespace = format!("peftkit/attempt_{}", env.restart_count);
        let store = root.prefixed(&namespace)?;
        // The health beats use a connection of their own: a long `get` on the main one holds
        // the client's lock.
        let health_store = Arc::new(
            Store::connect(&env.master_addr, env.master_port, options.timeout)?
                .prefixed(&format!("{namespace}/health"))?,
        );
        Self::join(&store, env, options.timeout)?;
        if let Some((what, value)) = &options.agreement {
            agree_on(&store, "setup", env, what, value, options.timeout)?;
        }
        let pg_store = store.prefixed("pg")?;
        let host = env
            .is_loopback()
            .then(|| CString::new("127.0.0.1").expect("no NUL"));
        let ifnames = env
            .gloo_interfaces
            .as_deref()
            .map(|s| {
                CString::new(s)
                    .map_err(|_| DistError::Env("GLOO_SOCKET_IFNAME contains a NUL byte".into()))
            })
            .transpose()?;
        if options.backend == Backend::Nccl {
            let gpus = tch::Cuda::device_count();
            if gpus <= env.local_rank as i64 {
                return Err(DistError::Rendezvous {
                    addr: store.addr().to_string(),
                    message: format!(
                        "creating the Nccl group: local rank {} needs cuda:{} but {gpus} CUDA GPU(s) are available",
                        env.local_rank, env.local_rank
                    ),
                });
            }
        }
        let mut error: *mut c_char = std::ptr::null_mut();
        let raw = match options.backend {
            // SAFETY: live store; the strings outlive the call.
            Backend::Gloo => unsafe {
                ffi::pkd_group_gloo(
                    pg_store.raw(),
                    env.rank as c_int,
                    env.world_size as c_int,
                    duration_millis(options.timeout),
                    host.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
                    ifnames.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
                    &mut error,
                )
            },
            // SAFETY: live store.
            Backend::Nccl => unsafe {
                ffi::pkd_group_nccl(
                    pg_store.raw(),
                    env.rank as c_int,
                    env.world_size as c_int,
                    duration_millis(options.timeout),
                    env.local_rank as c_int,
                    &mut error,
                )
            },
        };
        let raw = NonNull::new(raw).ok_or_else(|| DistError::Rendezvous {
            addr: store.addr().to_string(),
            message: format!(
                "creating the {:?} group: {}",
                options.backend,
                take_error(error)
            ),
        })?;
        let seq = Arc::new(AtomicU64::new(0));
        let heartbeat = Heartbeat::start(
            health_store.clone(),
            env.rank,
            options.heartbeat,
            seq.clone(),
        );
        Ok(Self {
            raw,
            env: env.clone(),
            store,
            health_store,
            seq,
            options: options.clone(),
            agreements: AtomicU64::new(0),
            ops: std::sync::Mutex::new(()),
            _heartbeat: heartbeat,
        })
    }

    /// Every rank checks in under its rank; waits until all have, or says who is missing.
    fn join(store: &Store, env: &DistEnv, timeout: Duration) -> Result<()> {
        let key = format!("joined/{}", env.rank);
        if store.add(&key, 1)? > 1 {
            return Err(DistError::Rendezvous {
                addr: store.addr().to_string(),
                message: format!(
                    "rank {} joined twice: two processes were given RANK={}",
                    env.rank, env.rank
                ),
            });
        }
        let joined = store.add("joined", 1)?;
        if joined as usize > env.world_size {
            return Err(DistError::Rendezvous {
                addr: store.addr().to_string(),
                message: format!("more ranks joined than WORLD_SIZE={}", env.world_size),
            });
        }
        let start = Instant::now();
        loop {
            let n = store.add("joined", 0)? as usize;
            if n >= env.world_size {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let missing: Vec<String> = (0..env.world_size)
                    .filter(|r| !store.contains(&format!("joined/{r}")).unwrap_or(false))
                    .map(|r| r.to_string())
                    .collect();
                return Err(DistError::Rendezvous {
                    addr: store.addr().to_string(),
                    message: format!(
                        "{n} of {} ranks joined within {:.0} s; missing rank(s) {}",
                        env.world_size,
                        timeout.as_secs_f64(),
                        missing.join(", ")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// Whether this is rank 0, the one that writes.
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// The environment the group was made from.
    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.options.backend
    }

    /// Where this group's collectives take their tensors: `cuda:LOCAL_RANK` for NCCL, the CPU for
    /// Gloo (which also takes CUDA tensors, through host memory).
    pub fn collective_device(&self) -> Device {
        match self.options.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => Device::Cuda(self.env.local_rank),
        }
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The group's key-value store (keys are private to peftkit's group).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Collectives run so far.
    pub fn collectives(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    fn run(&self, op: &'static str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
        let guard = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut error: *mut c_char = std::ptr::null_mut();
        let rc = f(&mut error);
        drop(guard);
        if rc == 0 {
            return Ok(());
        }
        let message = take_error(error);
        Err(self.diagnose(op, seq, message))
    }

    fn diagnose(&self, op: &'static str, seq: u64, message: String) -> DistError {
        let wait = (self.options.heartbeat * 5).max(Duration::from_millis(1500));
        // A fresh connection: the group's own may be what broke.
        let causes = match Store::connect(
            &self.env.master_addr,
            self.env.master_port,
            Duration::from_secs(3),
        )
        .and_then(|s| {
            s.prefixed(&format!(
                "peftkit/attempt_{}/health",
                self.env.restart_count
            ))
        }) {
            Ok(store) => health::diagnose(&store, self.env.rank, self.env.world_size, seq, wait),
            Err(_) => vec![match self.env.store_host {
                StoreHost::Rank0 => format!(
                    "the rendezvous store at {}:{} is gone: rank 0, which serves it, has stopped",
                    self.env.master_addr, self.env.master_port
                ),
                StoreHost::Launcher => format!(
                    "the launcher's rendezvous store at {}:{} is gone",
                    self.env.master_addr, self.env.master_port
                ),
            }],
        };
        DistError::Collective {
            rank: self.env.rank,
            op,
            seq,
            cause: if causes.is_empty() {
                "no other rank reported a problem".into()
            } else {
                causes.join("; ")
            },
            message,
        }
    }

    /// Tells the other ranks why this one is about to stop (their errors will quote it).
    pub fn report_failure(&self, message: &str) {
        health::publish_failure(&self.health_store, self.env.rank, message);
    }

    fn check_tensor(t: &Tensor, op: &str) -> Result<()> {
        if !t.is_contiguous() {
            return Err(DistError::Tensor(format!(
                "{op}: the tensor must be contiguous"
            )));
        }
        if !matches!(t.device(), Device::Cpu | Device::Cuda(_)) {
            return Err(DistError::Tensor(format!(
                "{op}: tensors on {:?} are not supported",
                t.device()
            )));
        }
        Ok(())
    }

    /// All-reduces each tensor in place with `op`; all are started before the first is awaited
    /// (so buckets overlap on the wire).
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<()> {
        for t in tensors {
            Self::check_tensor(t, "all-reduce")?;
        }
        let ptrs: Vec<*mut C_tensor> = tensors
            .iter()
            .map(|t| t.as_ptr() as *mut C_tensor)
            .collect();
        self.run("all-reduce", |error| {
            // SAFETY: live group; the tensors outlive the call (it waits for completion).
            unsafe {
                ffi::pkd_group_allreduce(
                    self.raw.as_ptr(),
                    ptrs.as_ptr(),
                    ptrs.len(),
                    op.code(),
                    error,
                )
            }
        })
    }

    /// [`ProcessGroup::all_reduce`] with [`ReduceOp::Sum`].
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<()> {
        self.all_reduce(tensors, ReduceOp::Sum)
    }

    /// Overwrites `t` on every rank with rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        Self::check_tensor(t, "broadcast")?;
        if root >= self.world_size() {
            return Err(DistError::Tensor(format!(
                "broadcast: root {root} is not a rank of {}",
                self.world_size()
            )));
        }
        self.run("broadcast", |error| {
            // SAFETY: live group and tensor.
            unsafe {
                ffi::pkd_group_broadcast(
                    self.raw.as_ptr(),
                    t.as_ptr() as *mut C_tensor,
                    root as c_int,
                    error,
                )
            }
        })
    }

    /// Every rank's `t` (same shape on all), concatenated along dim 0 in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.contiguous();
        Self::check_tensor(&t, "all-gather")?;
        let input = if t.dim() == 0 { t.reshape([1]) } else { t };
        let mut shape = input.size();
        shape[0] *= self.world_size() as i64;
        let out = Tensor::empty(shape.as_slice(), (input.kind(), input.device()));
        self.run("all-gather", |error| {
            // SAFETY: live group and tensors.
            unsafe {
                ffi::pkd_group_allgather(
                    self.raw.as_ptr(),
                    out.as_ptr() as *mut C_tensor,
                    input.as_ptr() as *mut C_tensor,
                    error,
                )
            }
        })?;
        Ok(out)
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self) -> Result<()> {
        self.run("barrier", |error| {
            // SAFETY: live group.
            unsafe { ffi::pkd_group_barrier(self.raw.as_ptr(), error) }
        })
    }

    /// Checks that every rank has the same `value` for `what` (a configuration, a world size):
    /// each rank gets the same answer, an error naming the first rank that differs from rank 0
    /// and the first line where it does.
    pub fn agree(&self, what: &str, value: &str) -> Result<()> {
        let n = self.agreements.fetch_add(1, Ordering::Relaxed);
        agree_on(
            &self.store,
            &n.to_string(),
            &self.env,
            what,
            value,
            self.options.timeout,
        )
    }
}

/// [`ProcessGroup::agree`] over a store, under the key `agree/<id>`.
fn agree_on(
    store: &Store,
    id: &str,
    env: &DistEnv,
    what: &str,
    value: &str,
    timeout: Duration,
) -> Result<()> {
    let key = |r: usize| format!("agree/{id}/{r}");
    store.set(&key(env.rank), value.as_bytes())?;
    let values: Vec<String> = (0..env.world_size)
        .map(|r| {
            store
                .get(&key(r))
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
        .collect::<Result<_>>()?;
    // Nobody leaves (rank 0 may take the store with it) before every rank has read every value,
    // so each one reports the difference itself.
    // Once this rank holds every value the wait is only a courtesy to the others: if the store
    // goes away meanwhile (rank 0 saw the count complete first and left with it), the values
    // already read still decide, and a store that is really gone fails the next operation.
    let read = format!("agree/{id}/read");
    let start = Instant::now();
    let mut count = store.add(&read, 1).ok();
    while let Some(c) = count {
        if c as usize >= env.world_size || start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        count = store.add(&read, 0).ok();
    }
    for (r, v) in values.iter().enumerate().skip(1) {
        if *v != values[0] {
            let line = values[0]
                .lines()
                .zip(v.lines())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("rank 0 has `{a}`, rank {r} has `{b}`"))
                .unwrap_or_else(|| format!("rank 0 and rank {r} differ in length"));
            return Err(DistError::Mismatch {
                what: what.to_string(),
                detail: line,
            });
        }
    }
    Ok(())
}
