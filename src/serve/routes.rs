//! The HTTP routes: `/predict` and the read-only ones here, the adapter changes in
//! [`super::admin`]. Nothing a client sends stops the server: every failure is an answer.

use super::admin::{add_adapter, list_adapters, remove_adapter};
use super::api::{parse_inputs, predictions, ApiError, ErrorKind, PredictRequest, Prediction};
use super::worker::{Job, Work};
use super::AppState;
use crate::infer::{AdapterInfo, EncodeError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use peftkit_adapters::BASE_ADAPTER;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The state every route shares.
pub(super) type Shared = Arc<AppState>;

/// Every route, with the body limit.
pub(super) fn router(state: Shared) -> Router {
    let limit = state.opts.payload_limit;
    Router::new()
        .route("/predict", post(predict))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/adapters", get(list_adapters).post(add_adapter))
        .route("/adapters/{name}", delete(remove_adapter))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::validation(
        StatusCode::NOT_FOUND,
        "no such route (there are POST /predict, GET /info, GET /health, GET /metrics, GET|POST /adapters, DELETE /adapters/NAME)",
    )
}

/// A JSON body, or the answer saying what is wrong with it (400 not JSON, 422 off the schema).
pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| ApiError::validation(r.status(), r.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the request body does not fit the schema: {e}"),
            ),
            _ => ApiError::validation(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            ),
        }
    })
}

fn ms(d: Duration) -> HeaderValue {
    HeaderValue::from_str(&d.as_millis().to_string()).expect("digits")
}

/// `POST /predict`.
async fn predict(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let start = Instant::now();
    let mut adapter = String::new();
    let out = predict_inner(&s, body, start, &mut adapter).await;
    let (response, inputs) = match out {
        Ok((r, n)) => (r, n),
        Err(e) => {
            tracing::info!(target: "peftkit::serve", route = "/predict", adapter = %adapter, status = e.status.as_u16(), error = %e.message, "request failed");
            (e.into_response(), 0)
        }
    };
    let status = response.status().as_u16();
    let took = start.elapsed();
    s.metrics
        .answered("/predict", &adapter, status, took.as_secs_f64());
    if status == 200 {
        tracing::info!(target: "peftkit::serve", route = "/predict", adapter = %adapter, status, inputs, latency_ms = took.as_secs_f64() * 1e3, "request");
    }
    response
}

async fn predict_inner(
    s: &Shared,
    body: Result<Bytes, BytesRejection>,
    start: Instant,
    adapter_out: &mut String,
) -> Result<(Response, usize), ApiError> {
    // Held from arrival to answer, as TEI's permits: what is tokenizing or being computed
    // counts, not only what waits in the queue.
    let Ok(_permit) = s.permits.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Overloaded,
            format!(
                "the model is overloaded ({} requests in flight): retry later",
                s.opts.max_concurrent_requests
            ),
        ));
    };
    let req: PredictRequest = read_json(body)?;
    let inputs = parse_inputs(&req.inputs)
        .map_err(|e| ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let n = inputs.texts.len();
    if n > s.opts.max_client_batch_size {
        return Err(ApiError::validation(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "batch size {n} > maximum allowed batch size {}",
                s.opts.max_client_batch_size
            ),
        ));
    }
    if let Some(d) = &req.truncation_direction {
        if !d.eq_ignore_ascii_case("right") {
            return Err(ApiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("truncation_direction `{d}`: only `Right` is supported"),
            ));
        }
    }
    // The adapter, held (an in-flight guard) until the answer: its removal waits for it.
    let (name, guard): (String, Option<Arc<AdapterInfo>>) = {
        let reg = s.registry.read().expect("not poisoned");
        let name = match &req.adapter {
            Some(a) => a.clone(),
            None => reg.default_adapter().unwrap_or(BASE_ADAPTER).to_string(),
        };
        // Metrics label only names that exist (a client's made-up names would grow them).
        *adapter_out = if name == BASE_ADAPTER || reg.adapters.contains_key(&name) {
            name.clone()
        } else {
            "(unknown)".into()
        };
        if name == BASE_ADAPTER {
            (name, None)
        } else {
            let Some(info) = reg.adapters.get(&name) else {
                let known: Vec<&str> = reg.order.iter().map(String::as_str).collect();
                return Err(ApiError::validation(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no adapter `{name}` (loaded: {}; or `{BASE_ADAPTER}` for none)",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            (name, Some(info.clone()))
        }
    };
    let labels: Vec<String> = guard
        .as_ref()
        .map_or_else(|| s.base_labels.clone(), |a| a.labels.clone());
    let truncate = req.truncate.unwrap_or(s.opts.auto_truncate);
    let chars: usize = inputs.texts.iter().map(|t| t.chars()).sum();
    let encoder = s.encoder();
    let texts = inputs.texts;
    let t = Instant::now();
    let ids = tokio::task::spawn_blocking(move || encoder.encode(&texts, truncate))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Tokenizer,
                format!("the tokenizer panicked: {e}"),
            )
        })?
        .map_err(|e| match e {
            EncodeError::TooLong(t) => ApiError::validation(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "`inputs` must have less than {} tokens. Given: {} (input {}; send `\"truncate\": true` to cut it)",
                    t.limit, t.tokens, t.index
                ),
            ),
            e => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::Tokenizer,
                e.to_string(),
            ),
        })?;
    let tokenization = t.elapsed();
    s.metrics
        .tokenization_duration
        .observe(tokenization.as_secs_f64());
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let (reply, answer) = oneshot::channel();
    let job = Job {
        rows: ids.into_iter().map(|i| (i, name.clone())).collect(),
        reply,
        enqueued: Instant::now(),
    };
    s.metrics.queue_size.inc();
    if let Err(e) = s.queue.try_send(Work::Predict(job)) {
        s.metrics.queue_size.dec();
        return Err(match e {
            TrySendError::Full(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Overloaded,
                format!(
                    "the model is overloaded ({} requests waiting): retry later",
                    s.opts.max_concurrent_requests
                ),
            ),
            TrySendError::Disconnected(_) => unhealthy(),
        });
    }
    let answer = match tokio::time::timeout(s.opts.request_timeout, answer).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::Timeout,
                format!(
                    "no answer within {} ms (the request timeout)",
                    s.opts.request_timeout.as_millis()
                ),
            ))
        }
        Ok(Err(_)) => return Err(unhealthy()),
        Ok(Ok(Err(e))) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Backend,
                e,
            ))
        }
        Ok(Ok(Ok(a))) => a,
    };
    drop(guard);
    s.metrics.inputs.inc_by(n as u64);
    let scores: Vec<Vec<Prediction>> = answer
        .logits
        .iter()
        .map(|l| predictions(l, &labels, req.raw_scores))
        .collect();
    let mut response = if inputs.batch {
        Json(scores).into_response()
    } else {
        Json(scores.into_iter().next().unwrap_or_default()).into_response()
    };
    let h: &mut HeaderMap = response.headers_mut();
    let total = start.elapsed();
    h.insert("x-compute-type", HeaderValue::from_static(device_kind(s)));
    h.insert("x-compute-time", ms(total));
    h.insert("x-compute-characters", chars.into());
    h.insert("x-compute-tokens", tokens.into());
    h.insert("x-total-time", ms(total));
    h.insert("x-tokenization-time", ms(tokenization));
    h.insert("x-queue-time", ms(answer.queue));
    h.insert("x-inference-time", ms(answer.inference));
    h.insert(
        "x-adapter",
        HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("?")),
    );
    Ok((response, n))
}

fn device_kind(s: &AppState) -> &'static str {
    if s.opts.device.is_cuda() {
        "gpu"
    } else {
        "cpu"
    }
}

/// 503: the model worker has stopped.
pub(super) fn unhealthy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Unhealthy,
        "the model worker has stopped",
    )
}

fn id2label(labels: &[String]) -> serde_json::Value {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// An adapter as `GET /adapters` lists it.
pub(super) fn adapter_json(a: &AdapterInfo, default: bool) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "path": a.path,
        "peft_type": a.peft_type,
        "r": a.r,
        "id2label": id2label(&a.labels),
        "prompt_learning": a.prompt_learning,
        "default": default,
    })
}

/// Every adapter, in order (the first is the default).
pub(super) fn adapters_json(s: &AppState) -> Vec<serde_json::Value> {
    let reg = s.registry.read().expect("not poisoned");
    let default = reg.default_adapter();
    reg.order
        .iter()
        .map(|n| adapter_json(&reg.adapters[n], default == Some(n.as_str())))
        .collect()
}

/// `GET /info`: TEI's fields, and the adapters.
async fn info(State(s): State<Shared>) -> Json<serde_json::Value> {
    let label2id: serde_json::Map<_, _> = s
        .base_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), serde_json::json!(i)))
        .collect();
    let default = s
        .registry
        .read()
        .expect("not poisoned")
        .default_adapter()
        .unwrap_or(BASE_ADAPTER)
        .to_string();
    Json(serde_json::json!({
        "model_id": s.opts.model,
        "model_sha": null,
        "model_dtype": s.model_dtype,
        "model_type": {"classifier": {"id2label": id2label(&s.base_labels), "label2id": label2id}},
        "adapters": adapters_json(&s),
        "default_adapter": default,
        "max_concurrent_requests": s.opts.max_concurrent_requests,
        "max_input_length": s.encoder().limit(),
        "max_batch_tokens": s.opts.max_batch_tokens,
        "max_batch_requests": s.opts.max_batch_requests,
        "max_batch_wait_ms": s.opts.max_batch_wait.as_millis() as u64,
        "max_client_batch_size": s.opts.max_client_batch_size,
        "auto_truncate": s.opts.auto_truncate,
        "payload_limit": s.opts.payload_limit,
        "request_timeout_ms": s.opts.request_timeout.as_millis() as u64,
        "device": format!("{:?}", s.opts.device).to_lowercase(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `GET /health`: 200 while the model worker runs, 503 once it has stopped.
async fn health(State(s): State<Shared>) -> Response {
    let ok = s.worker_alive.load(std::sync::atomic::Ordering::SeqCst);
    let status = if ok { 200 } else { 503 };
    s.metrics.answered("/health", "", status, 0.0);
    if ok {
        StatusCode::OK.into_response()
    } else {
        unhealthy().into_response()
    }
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(State(s): State<Shared>) -> Response {
    let mut r = s.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
