//! The adapter routes: `GET /adapters`, `POST /adapters`, `DELETE /adapters/NAME`. Each change
//! (the registry and the worker's step) runs as a task of its own, so a client that goes away
//! cannot stop it half-way; the client waits for it a bounded time (then 504: the change goes
//! on in the background and `GET /adapters` shows its outcome).

use super::api::{ApiError, ErrorKind};
use super::routes::{adapter_json, adapters_json, read_json, unhealthy, Shared};
use super::worker::{Changed, Work};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use peftkit_adapters::BASE_ADAPTER;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How much longer than the request timeout a removal waits for the requests in flight.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

/// `GET /adapters`.
pub(super) async fn list_adapters(State(s): State<Shared>) -> Json<Vec<serde_json::Value>> {
    Json(adapters_json(&s))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAdapter {
    name: String,
    path: std::path::PathBuf,
}

/// Sends admin work to the worker (waiting for room in the queue) and awaits its answer.
async fn admin(
    s: &Shared,
    work: Work,
    answer: oneshot::Receiver<Changed>,
) -> Result<Changed, ApiError> {
    let queue = s.queue.clone();
    tokio::task::spawn_blocking(move || queue.send(work))
        .await
        .map_err(|_| unhealthy())?
        .map_err(|_| unhealthy())?;
    answer.await.map_err(|_| unhealthy())
}

/// Waits at most `limit` for a change running as its own task. Past it the client is answered
/// 504 while the change completes (it is never cut short half-way).
async fn settle(
    change: JoinHandle<Result<Response, ApiError>>,
    limit: Duration,
    what: String,
) -> Result<Response, ApiError> {
    match tokio::time::timeout(limit, change).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Backend,
            format!("{what}: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Timeout,
            format!(
                "{what}: not done within {} ms; it goes on in the background (GET /adapters shows the outcome)",
                limit.as_millis()
            ),
        )),
    }
}

/// `POST /adapters` `{"name": ..., "path": ...}`: loads an adapter directory (on the server's
/// file system) as `name`.
pub(super) async fn add_adapter(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let out = add_inner(&s, body).await;
    let response = out.unwrap_or_else(IntoResponse::into_response);
    let status = response.status().as_u16();
    s.metrics
        .answered("/adapters", "", status, start.elapsed().as_secs_f64());
    tracing::info!(target: "peftkit::serve", route = "POST /adapters", status, latency_ms = start.elapsed().as_secs_f64() * 1e3, "request");
    response
}

async fn add_inner(s: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: AddAdapter = read_json(body)?;
    if !req.path.join("adapter_config.json").is_file() {
        return Err(ApiError::validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{}: not an adapter directory (no adapter_config.json)",
                req.path.display()
            ),
        ));
    }
    let what = format!("adding the adapter `{}`", req.name);
    let change = tokio::spawn(add_change(s.clone(), req));
    settle(change, s.opts.request_timeout, what).await
}

/// Reserves the name, has the worker load the adapter, then records it (or frees the name).
async fn add_change(s: Shared, req: AddAdapter) -> Result<Response, ApiError> {
    {
        let mut reg = s.registry.write().expect("not poisoned");
        let taken = if reg.adapters.contains_key(&req.name) || req.name == BASE_ADAPTER {
            Some("exists already (remove it first)")
        } else if reg.pending.contains(&req.name) {
            Some("is being added")
        } else if reg.removing.contains(&req.name) {
            Some("is being removed (add it again once it is gone)")
        } else {
            None
        };
        if let Some(why) = taken {
            return Err(ApiError::validation(
                StatusCode::CONFLICT,
                format!("an adapter named `{}` {why}", req.name),
            ));
        }
        reg.pending.insert(req.name.clone());
    }
    let (reply, answer) = oneshot::channel();
    let work = Work::Add {
        name: req.name.clone(),
        path: req.path.clone(),
        reply,
    };
    let out = admin(&s, work, answer).await;
    let mut reg = s.registry.write().expect("not poisoned");
    reg.pending.remove(&req.name);
    match out? {
        Ok((Some(info), limit)) => {
            s.set_limit(limit);
            let json = adapter_json(&info, reg.order.is_empty());
            reg.insert(info);
            tracing::info!(target: "peftkit::serve", adapter = %req.name, path = %req.path.display(), "adapter added");
            Ok((StatusCode::CREATED, Json(json)).into_response())
        }
        Ok((None, _)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Backend,
            format!(
                "adding the adapter `{}`: the worker did not describe it",
                req.name
            ),
        )),
        Err(e) => Err(ApiError::validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the adapter {} was refused: {e}", req.path.display()),
        )),
    }
}

/// `DELETE /adapters/NAME`: new requests for it are refused at once; those in flight are
/// answered first, then it is unloaded.
pub(super) async fn remove_adapter(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let start = Instant::now();
    let out = remove_inner(&s, &name).await;
    let response = out.unwrap_or_else(IntoResponse::into_response);
    let status = response.status().as_u16();
    let label = if status == 404 {
        "(unknown)"
    } else {
        name.as_str()
    };
    s.metrics
        .answered("/adapters", label, status, start.elapsed().as_secs_f64());
    tracing::info!(target: "peftkit::serve", route = "DELETE /adapters", adapter = %name, status, latency_ms = start.elapsed().as_secs_f64() * 1e3, "request");
    response
}

async fn remove_inner(s: &Shared, name: &str) -> Result<Response, ApiError> {
    let what = format!("removing the adapter `{name}`");
    // The requests in flight may take a request timeout (and the slack), the worker another.
    let limit = s
        .opts
        .request_timeout
        .saturating_mul(2)
        .saturating_add(DRAIN_SLACK);
    let change = tokio::spawn(remove_change(s.clone(), name.to_string()));
    settle(change, limit, what).await
}

/// Takes the adapter out of the registry (new requests for it get 404, a new one of its name
/// 409), waits for the requests in flight on it, has the worker unload it, and puts it back
/// where it was should that fail.
async fn remove_change(s: Shared, name: String) -> Result<Response, ApiError> {
    let taken = {
        let mut reg = s.registry.write().expect("not poisoned");
        if reg.removing.contains(&name) {
            return Err(ApiError::validation(
                StatusCode::CONFLICT,
                format!("the adapter `{name}` is being removed already"),
            ));
        }
        reg.start_removal(&name)
    };
    let Some((at, info)) = taken else {
        return Err(ApiError::validation(
            StatusCode::NOT_FOUND,
            format!("no adapter `{name}`"),
        ));
    };
    // Every request that resolved the adapter holds a clone until it is answered.
    let drain = s.opts.request_timeout.saturating_add(DRAIN_SLACK);
    let start = Instant::now();
    while Arc::strong_count(&info) > 1 && start.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (reply, answer) = oneshot::channel();
    let work = Work::Remove {
        name: name.clone(),
        reply,
    };
    let out = admin(&s, work, answer).await;
    let mut reg = s.registry.write().expect("not poisoned");
    match out {
        Ok(Ok((_, limit))) => {
            reg.end_removal(&name, None);
            drop(reg);
            s.set_limit(limit);
            tracing::info!(target: "peftkit::serve", adapter = %name, "adapter removed");
            Ok(Json(serde_json::json!({ "removed": name })).into_response())
        }
        Ok(Err(e)) => {
            // Still loaded: known again, where it was.
            reg.end_removal(&name, Some((at, info)));
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Backend,
                format!("removing `{name}`: {e}"),
            ))
        }
        Err(e) => {
            reg.end_removal(&name, Some((at, info)));
            Err(e)
        }
    }
}
