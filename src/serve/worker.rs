//! The worker thread: it owns the model (libtorch never runs on the async side), takes work
//! from a bounded queue, gathers the requests that arrive within the batching window into
//! length-sorted batches across adapters, and answers each request through its channel.
//! Adapter changes come through the same queue, so they happen between batches.

use super::metrics::Metrics;
use crate::infer::batch::{plan, Group};
use crate::infer::{AdapterInfo, Host};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A request's encoded rows, each with its adapter.
pub struct Job {
    /// `(ids, adapter)` per input.
    pub rows: Vec<(Vec<u32>, String)>,
    /// Where the answer goes (dropped by a client that gave up: the job is skipped).
    pub reply: oneshot::Sender<Result<Answer, String>>,
    /// When it was queued.
    pub enqueued: Instant,
}

/// The logits of a job's rows, in order, and where its time went.
#[derive(Debug)]
pub struct Answer {
    /// `[labels]` per row.
    pub logits: Vec<Vec<f32>>,
    /// Time in the queue.
    pub queue: Duration,
    /// Time of the forward passes its rows were in.
    pub inference: Duration,
}

/// What an adapter change answers: the adapter (added) and the new input limit.
pub type Changed = Result<(Option<AdapterInfo>, usize), String>;

/// Work for the model.
pub enum Work {
    /// Classify.
    Predict(Job),
    /// Load an adapter.
    Add {
        /// Its name.
        name: String,
        /// Its directory.
        path: PathBuf,
        /// The answer.
        reply: oneshot::Sender<Changed>,
    },
    /// Unload an adapter.
    Remove {
        /// Its name.
        name: String,
        /// The answer.
        reply: oneshot::Sender<Changed>,
    },
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Rows per forward pass.
    pub max_rows: usize,
    /// Padded tokens per forward pass.
    pub max_tokens: usize,
    /// How long the first request of a batch waits for others.
    pub wait: Duration,
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Serves `rx` until every sender is gone (`Ok`), or until the model is lost: an adapter change
/// failed half-way and the base could not be loaded again (`Err`, saying why; the change's
/// client is answered first).
pub fn run(
    mut host: Host,
    rx: Receiver<Work>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let mut carried: Option<Work> = None;
    loop {
        let work = match carried.take() {
            Some(w) => w,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => return Ok(()),
            },
        };
        match work {
            Work::Predict(job) => {
                metrics.queue_size.dec();
                let mut rows = job.rows.len();
                let mut tokens: usize = job.rows.iter().map(|r| r.0.len()).sum();
                let mut jobs = vec![job];
                let deadline = Instant::now() + limits.wait;
                while rows < limits.max_rows && tokens < limits.max_tokens {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let next = if left.is_zero() {
                        rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
                    } else {
                        rx.recv_timeout(left)
                    };
                    match next {
                        Ok(Work::Predict(j)) => {
                            metrics.queue_size.dec();
                            rows += j.rows.len();
                            tokens += j.rows.iter().map(|r| r.0.len()).sum::<usize>();
                            jobs.push(j);
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                run_jobs(&mut host, jobs, limits, &metrics);
            }
            Work::Add { name, path, reply } => {
                let added = catch_unwind(AssertUnwindSafe(|| host.add_adapter(&name, &path)))
                    .map_err(|p| format!("the model panicked: {}", panic_message(p)))
                    .and_then(|r| r.map_err(|e| format!("{e:#}")));
                if let Err(e) = mend(&mut host) {
                    let _ = reply.send(Err(e.clone()));
                    return Err(e);
                }
                metrics.adapters.set(host.adapters().len() as i64);
                let limit = host.max_input_length();
                let _ = reply.send(added.map(|info| (Some(info), limit)));
            }
            Work::Remove { name, reply } => {
                let removed = catch_unwind(AssertUnwindSafe(|| host.remove_adapter(&name)))
                    .map_err(|p| format!("the model panicked: {}", panic_message(p)))
                    .and_then(|r| r.map_err(|e| format!("{e:#}")));
                if let Err(e) = mend(&mut host) {
                    let _ = reply.send(Err(e.clone()));
                    return Err(e);
                }
                // Gone is gone: a failed removal that lost the adapter anyway (the base was
                // reloaded) is a removal.
                let removed = match removed {
                    Err(e) if !host.adapters().contains_key(&name) => {
                        tracing::warn!(target: "peftkit::serve", adapter = %name, error = %e, "the adapter is gone although its removal failed");
                        Ok(())
                    }
                    r => r,
                };
                metrics.adapters.set(host.adapters().len() as i64);
                let limit = host.max_input_length();
                let _ = reply.send(removed.map(|()| (None, limit)));
            }
        }
    }
}

/// After an adapter change: a host that lost its model (the change panicked, or failed and
/// could not reload the base) loads the plain base again, or the worker cannot go on.
fn mend(host: &mut Host) -> Result<(), String> {
    if host.is_whole() {
        return Ok(());
    }
    tracing::warn!(target: "peftkit::serve", "an adapter change lost the model: reloading the base");
    catch_unwind(AssertUnwindSafe(|| host.restore()))
        .map_err(panic_message)
        .and_then(|r| r.map_err(|e| format!("{e:#}")))
        .map_err(|e| {
            format!("an adapter change lost the model, and reloading the base failed: {e}")
        })
}

/// Runs the rows of `jobs` in planned batches and answers each job.
fn run_jobs(host: &mut Host, jobs: Vec<Job>, limits: BatchLimits, metrics: &Metrics) {
    let start = Instant::now();
    // A client that gave up (timeout, closed connection) is not computed for.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let mut index = Vec::new();
    let mut shape: Vec<(usize, Group)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (r, (ids, adapter)) in job.rows.iter().enumerate() {
            index.push((j, r));
            let group = host.runs_alone(adapter).then(|| adapter.clone());
            shape.push((ids.len(), group));
        }
    }
    let mut logits: Vec<Vec<Option<Vec<f32>>>> =
        jobs.iter().map(|j| vec![None; j.rows.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    let mut inference = vec![Duration::ZERO; jobs.len()];
    for batch in plan(&shape, limits.max_rows, limits.max_tokens) {
        let rows: Vec<&[u32]> = batch
            .iter()
            .map(|&i| jobs[index[i].0].rows[index[i].1].0.as_slice())
            .collect();
        let adapters: Vec<&str> = batch
            .iter()
            .map(|&i| jobs[index[i].0].rows[index[i].1].1.as_str())
            .collect();
        let t = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(|| host.logits(&rows, &adapters)))
            .map_err(|p| format!("the model panicked: {}", panic_message(p)))
            .and_then(|r| r.map_err(|e| format!("{e:#}")));
        let took = t.elapsed();
        metrics.inference_duration.observe(took.as_secs_f64());
        metrics.batch_size.observe(rows.len() as f64);
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        metrics.batch_tokens.observe((width * rows.len()) as f64);
        let mut seen = Vec::new();
        match out {
            Ok(out) => {
                for (&i, l) in batch.iter().zip(out) {
                    let (j, r) = index[i];
                    logits[j][r] = Some(l);
                    seen.push(j);
                }
            }
            Err(e) => {
                for &i in &batch {
                    let j = index[i].0;
                    failed[j].get_or_insert_with(|| e.clone());
                    seen.push(j);
                }
            }
        }
        seen.sort_unstable();
        seen.dedup();
        for j in seen {
            inference[j] += took;
        }
    }
    for (j, job) in jobs.into_iter().enumerate() {
        let queue = start.saturating_duration_since(job.enqueued);
        metrics.queue_duration.observe(queue.as_secs_f64());
        let answer = match failed[j].take() {
            Some(e) => Err(e),
            None => Ok(Answer {
                logits: std::mem::take(&mut logits[j])
                    .into_iter()
                    .map(|l| l.expect("every row was planned"))
                    .collect(),
                queue,
                inference: inference[j],
            }),
        };
        let _ = job.reply.send(answer);
    }
}
