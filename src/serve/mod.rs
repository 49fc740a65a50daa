//! `peftkit serve`: an HTTP server for one base model and many adapters, compatible with
//! text-embeddings-inference's classification routes (`POST /predict`, `GET /info`,
//! `GET /health`, `GET /metrics`), with adapters chosen per request and added or removed at run
//! time (`GET|POST /adapters`, `DELETE /adapters/NAME`).
//!
//! Requests are parsed, validated and tokenized on the async side (tokio + axum); the model
//! runs on one worker thread that owns libtorch, fed through a bounded queue ([`worker`]), so a
//! forward pass never blocks the async runtime. The worker gathers what arrives within
//! `max_batch_wait` into length-sorted batches across adapters ([`crate::infer::batch`]).

pub mod api;
pub mod metrics;
mod routes;
pub mod worker;

use crate::infer::{AdapterInfo, Encoder, Host};
use anyhow::{Context, Result};
use metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};
use std::time::Duration;
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
    /// Requests that may wait for the model; more are answered 503.
    pub max_concurrent_requests: usize,
    /// Inputs one request may hold; more are answered 413.
    pub max_client_batch_size: usize,
    /// Request body bytes; more are answered 413.
    pub payload_limit: usize,
    /// Truncate over-long inputs when a request does not say.
    pub auto_truncate: bool,
    /// A request not answered in this time is answered 504.
    pub request_timeout: Duration,
}

/// The adapters the routes know, and which is the default.
#[derive(Debug, Default)]
struct Registry {
    adapters: BTreeMap<String, Arc<AdapterInfo>>,
    /// In the order given; the first is the default.
    order: Vec<String>,
    /// Being added.
    pending: BTreeSet<String>,
}

impl Registry {
    fn insert(&mut self, info: AdapterInfo) {
        self.order.push(info.name.clone());
        self.adapters.insert(info.name.clone(), Arc::new(info));
    }

    fn remove(&mut self, name: &str) -> Option<Arc<AdapterInfo>> {
        self.order.retain(|n| n != name);
        self.adapters.remove(name)
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
/// requests in flight are answered and it returns.
pub fn serve(opts: ServeOptions) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (queue, rx) = std::sync::mpsc::sync_channel::<Work>(opts.max_concurrent_requests.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready>>();
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
                let _dead = Dead(alive);
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
                worker::run(host, rx, limits, metrics);
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
        opts: opts.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("peftkit-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .with_context(|| format!("listening on {}", opts.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let app = routes::router(state);
        eprintln!("peftkit serve: listening on http://{addr}");
        tracing::info!(%addr, model = %opts.model, "serving");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")
    })?;
    // The routes (and with them the queue's sender) are gone: the worker finishes and stops.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = worker.join();
    eprintln!("peftkit serve: stopped");
    Ok(())
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
    eprintln!("peftkit serve: signal received, answering the requests in flight, then stopping");
}
