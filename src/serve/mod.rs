//! `peftkit serve`: an HTTP server for one base model and many adapters, compatible with
//! text-embeddings-inference's classification routes (`POST /predict`, `GET /info`,
//! `GET /health`, `GET /metrics`), with adapters chosen per request and added or removed at run
//! time (`GET|POST /adapters`, `DELETE /adapters/NAME`).
//!
//! Requests are parsed, validated and tokenized on the async side (tokio + axum); the model
//! runs on one worker thread that owns libtorch, fed through a bounded queue ([`worker`]), so a
//! forward pass never blocks the async runtime. The worker gathers what arrives within
//! `max_batch_wait` into length-sorted batches across adapters ([`crate::infer::batch`]).

mod admin;
pub mod api;
pub mod metrics;
mod routes;
pub mod worker;

use crate::infer::{AdapterInfo, Encoder, Host};
use anyhow::{Context, Result};
use metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use worker::{BatchLimits, Work};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Hub id or checkpoint directory of the base.
    pub model: String,
    /// Adapters to load at start, `(NAME, DIR)`; the first is the default.
    pub adapters: Vec<(String, PathBuf)>,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    pub addr: SocketAddr,
    /// Device of the model.
    pub device: tch::Device,
    /// Rows per forward pass.
    pub max_batch_requests: usize,
    /// Padded tokens per forward pass.
    pub max_batch_tokens: usize,
    /// How long the first request of a batch waits for others.
    pub max_batch_wait: Duration,
    /// Requests that may be in flight (from arrival to answer); more are answered 503.
    pub max_concurrent_requests: usize,
    /// Inputs one request may hold; more are answered 413.
    pub max_client_batch_size: usize,
    /// Request body bytes; more are answered 413.
    pub payload_limit: usize,
    /// Truncate over-long inputs when a request does not say.
    pub auto_truncate: bool,
    /// A request (or an adapter change) not answered in this time is answered 504.
    pub request_timeout: Duration,
    /// After SIGTERM or Ctrl-C, how long the requests in flight may take; past it the process
    /// exits 1 (a stuck request or model cannot hold it up).
    pub shutdown_timeout: Duration,
}

/// The adapters the routes know, and which is the default.
#[derive(Debug, Default)]
struct Registry {
    adapters: BTreeMap<String, Arc<AdapterInfo>>,
    /// In the order given; the first is the default.
    order: Vec<String>,
    /// Being added.
    pending: BTreeSet<String>,
    /// Being removed (no longer in `adapters`: new requests do not find them).
    removing: BTreeSet<String>,
}

impl Registry {
    fn insert(&mut self, info: AdapterInfo) {
        self.order.push(info.name.clone());
        self.adapters.insert(info.name.clone(), Arc::new(info));
    }

    /// Takes `name` out (new requests no longer find it) and marks it as being removed; returns
    /// its position and description, to put back should the removal fail.
    fn start_removal(&mut self, name: &str) -> Option<(usize, Arc<AdapterInfo>)> {
        let at = self.order.iter().position(|n| n == name)?;
        let info = self.adapters.remove(name)?;
        self.order.remove(at);
        self.removing.insert(name.to_string());
        Some((at, info))
    }

    /// Ends a removal; `failed` puts the adapter back where it was (the default again if it
    /// was the default).
    fn end_removal(&mut self, name: &str, failed: Option<(usize, Arc<AdapterInfo>)>) {
        self.removing.remove(name);
        if let Some((at, info)) = failed {
            self.order
                .insert(at.min(self.order.len()), name.to_string());
            self.adapters.insert(name.to_string(), info);
        }
    }

    fn default_adapter(&self) -> Option<&str> {
        self.order.first().map(String::as_str)
    }
}

/// What the routes share.
struct AppState {
    opts: ServeOptions,
    queue: SyncSender<Work>,
    registry: RwLock<Registry>,
    encoder: RwLock<Arc<Encoder>>,
    tokenizer: peftkit_tokenize::TextTokenizer,
    base_labels: Vec<String>,
    model_dtype: String,
    metrics: Arc<Metrics>,
    worker_alive: Arc<AtomicBool>,
    /// One per request in flight, held from its arrival to its answer.
    permits: Semaphore,
}

impl AppState {
    fn encoder(&self) -> Arc<Encoder> {
        self.encoder.read().expect("not poisoned").clone()
    }

    /// A new input limit after an adapter change.
    fn set_limit(&self, limit: usize) {
        let mut e = self.encoder.write().expect("not poisoned");
        if e.limit() != limit {
            *e = Arc::new(Encoder::new(&self.tokenizer, limit));
        }
    }
}

/// What the worker reports once the model is loaded.
struct Ready {
    tokenizer: peftkit_tokenize::TextTokenizer,
    adapters: Vec<AdapterInfo>,
    base_labels: Vec<String>,
    limit: usize,
    model_dtype: String,
}

/// Loads the model on a worker thread, then serves until SIGTERM or Ctrl-C, after which the
/// requests in flight are answered and it returns. Past `shutdown_timeout` after the signal the
/// process exits 1 with a one-line error; a worker that stops on its own (the model lost) ends
/// the server the same way and is an error.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let concurrency = opts
        .max_concurrent_requests
        .clamp(1, Semaphore::MAX_PERMITS);
    let (queue, rx) = std::sync::mpsc::sync_channel::<Work>(concurrency);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready>>();
    // Why the worker stopped; dropped unsent if it never started serving.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<String>();
    let worker_alive = Arc::new(AtomicBool::new(true));
    let limits = BatchLimits {
        max_rows: opts.max_batch_requests.max(1),
        max_tokens: opts.max_batch_tokens.max(1),
        wait: opts.max_batch_wait,
    };
    let worker = {
        let (model, adapters, device) = (opts.model.clone(), opts.adapters.clone(), opts.device);
        let metrics = metrics.clone();
        let alive = worker_alive.clone();
        std::thread::Builder::new()
            .name("peftkit-model".into())
            .spawn(move || {
                struct Dead(Arc<AtomicBool>);
                impl Drop for Dead {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let dead = Dead(alive);
                let host = match Host::load(&model, &adapters, device) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let ready = Ready {
                    tokenizer: host.tokenizer().clone(),
                    adapters: adapters
                        .iter()
                        .map(|(n, _)| host.adapters()[n].clone())
                        .collect(),
                    base_labels: host.base_labels().to_vec(),
                    limit: host.max_input_length(),
                    model_dtype: format!("{:?}", host.classifier().var_store().kind())
                        .to_lowercase(),
                };
                metrics.adapters.set(adapters.len() as i64);
                let _ = ready_tx.send(Ok(ready));
                let ended =
                    catch_unwind(AssertUnwindSafe(|| worker::run(host, rx, limits, metrics)));
                let why = match ended {
                    Ok(Ok(())) => "its queue closed".to_string(),
                    Ok(Err(e)) => e,
                    Err(p) => format!("it panicked: {}", worker::panic_message(p)),
                };
                drop(dead);
                let _ = stopped_tx.send(why);
            })
            .context("starting the model thread")?
    };
    let ready = match ready_rx.recv() {
        Ok(r) => r?,
        Err(_) => {
            let _ = worker.join();
            anyhow::bail!("the model thread stopped while loading the model");
        }
    };
    let mut registry = Registry::default();
    for a in ready.adapters {
        registry.insert(a);
    }
    let state = Arc::new(AppState {
        encoder: RwLock::new(Arc::new(Encoder::new(&ready.tokenizer, ready.limit))),
        tokenizer: ready.tokenizer,
        base_labels: ready.base_labels,
        model_dtype: ready.model_dtype,
        registry: RwLock::new(registry),
        queue,
        metrics,
        worker_alive,
        permits: Semaphore::new(concurrency),
        opts: opts.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("peftkit-http")
        .build()
        .context("starting the async runtime")?;
    // Set when the worker stopped on its own: the server stops, and that is an error.
    let worker_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = {
        let failure = worker_failure.clone();
        let deadline = opts.shutdown_timeout;
        async move {
            tokio::select! {
                _ = shutdown_signal() => eprintln!(
                    "peftkit serve: signal received, answering the requests in flight, then stopping"
                ),
                why = stopped_rx => {
                    let why = why.unwrap_or_else(|_| "it ended".to_string());
                    eprintln!("peftkit serve: the model worker stopped ({why}): answering the requests in flight, then exiting");
                    *failure.lock().expect("not poisoned") = Some(why);
                }
            }
            arm_deadline(deadline);
        }
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .with_context(|| format!("listening on {}", opts.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let app = routes::router(state);
        eprintln!("peftkit serve: listening on http://{addr}");
        tracing::info!(%addr, model = %opts.model, "serving");
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("serving HTTP")
    })?;
    // The routes (and with them the queue's sender) are gone: the worker finishes and stops.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = worker.join();
    if let Some(why) = worker_failure.lock().expect("not poisoned").take() {
        anyhow::bail!("serve: the model worker stopped: {why}");
    }
    eprintln!("peftkit serve: stopped");
    Ok(())
}

/// The hard deadline of a shutdown: `after` it, whatever is still running (a wedged forward
/// pass, a request that does not end), the process exits 1 with a one-line error.
fn arm_deadline(after: Duration) {
    let started = std::thread::Builder::new()
        .name("peftkit-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            eprintln!(
                "peftkit: error: serve: still stopping {} s after the shutdown began (--shutdown-timeout-secs): a request or the model is stuck; exiting",
                after.as_secs_f64()
            );
            // Not `exit`: C++ static destructors must not run under a forward pass still in
            // libtorch.
            #[cfg(unix)]
            // SAFETY: ends the process at once; nothing of it is used afterwards.
            unsafe {
                libc::_exit(1)
            };
            #[cfg(not(unix))]
            std::process::exit(1);
        });
    if let Err(e) = started {
        tracing::warn!(target: "peftkit::serve", error = %e, "no shutdown deadline: its thread did not start");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
