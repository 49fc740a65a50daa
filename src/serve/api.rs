//! The wire format: TEI's `/predict` request and response, and its error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub use crate::infer::Text;

/// `inputs` as TEI reads it: `"a"` and `["a"]` are one text, `["a", "b"]` is one text pair
/// (as in TEI), and a list whose items are lists (`[["a"], ["b", "c"]]`) is a batch of texts
/// and pairs. A list of three or more strings, an error in TEI, is read as a batch of texts.
/// Whether the answer is one list of scores or a list of them follows from the shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The texts in order.
    pub texts: Vec<Text>,
    /// A batch: answered with one list of scores per input.
    pub batch: bool,
}

const SHAPE: &str = "`inputs` must be a string, a [text, text] pair, a list of strings, or a list of [text] / [text, text] lists";

/// Reads `inputs`, or says why it cannot.
pub fn parse_inputs(v: &serde_json::Value) -> Result<Inputs, String> {
    use serde_json::Value;
    let strings = |items: &[Value]| -> Option<Vec<String>> {
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let sequence = |items: Vec<String>| -> Result<Text, String> {
        let mut items = items.into_iter();
        match (items.next(), items.next(), items.next()) {
            (Some(a), None, None) => Ok(Text::Single(a)),
            (Some(a), Some(b), None) => Ok(Text::Pair(a, b)),
            _ => Err(format!("{SHAPE}: an inner list holds one text or a pair")),
        }
    };
    match v {
        Value::String(s) => Ok(Inputs {
            texts: vec![Text::Single(s.clone())],
            batch: false,
        }),
        Value::Array(items) if items.is_empty() => Err("`inputs` cannot be an empty list".into()),
        Value::Array(items) if items[0].is_array() => {
            let texts = items
                .iter()
                .map(|item| {
                    let inner = item.as_array().and_then(|a| strings(a)).ok_or_else(|| {
                        format!("{SHAPE}: every item of a batch must be a list of strings")
                    })?;
                    sequence(inner)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Inputs { texts, batch: true })
        }
        Value::Array(items) => {
            let texts = strings(items).ok_or_else(|| SHAPE.to_string())?;
            if texts.len() <= 2 {
                Ok(Inputs {
                    texts: vec![sequence(texts)?],
                    batch: false,
                })
            } else {
                Ok(Inputs {
                    texts: texts.into_iter().map(Text::Single).collect(),
                    batch: true,
                })
            }
        }
        _ => Err(SHAPE.into()),
    }
}

/// The body of `POST /predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// A text, a pair, or a batch of either.
    pub inputs: serde_json::Value,
    /// Logits instead of probabilities.
    #[serde(default)]
    pub raw_scores: bool,
    /// Truncate inputs longer than the model's positions (default: the server's
    /// `--auto-truncate`); when false such an input is refused with 413.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Accepted for TEI compatibility; only `Right` is supported.
    #[serde(default)]
    pub truncation_direction: Option<String>,
    /// The adapter: a name from `GET /info`, `__base__` for none; absent: the default.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// One score of the answer (TEI's `Prediction`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    /// The label (the adapter's `id2label`).
    pub label: String,
    /// Probability, or the logit with `raw_scores`.
    pub score: f32,
}

/// Scores of one input, best first, as TEI gives them: softmax over the labels (sigmoid for a
/// single-label head), or the raw logits.
pub fn predictions(logits: &[f32], labels: &[String], raw: bool) -> Vec<Prediction> {
    let scores: Vec<f32> = if raw {
        logits.to_vec()
    } else if logits.len() == 1 {
        vec![1.0 / (1.0 + (-logits[0]).exp())]
    } else {
        crate::infer::probabilities(logits)
            .into_iter()
            .map(|p| p as f32)
            .collect()
    };
    let mut out: Vec<Prediction> = scores
        .into_iter()
        .enumerate()
        .map(|(i, score)| Prediction {
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The kinds of failure, as TEI names them in `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (400, 404, 413, 422).
    Validation,
    /// The queue is full (503).
    Overloaded,
    /// The tokenizer failed.
    Tokenizer,
    /// The model failed (500).
    Backend,
    /// No answer in time (504).
    Timeout,
    /// The server is stopping or its worker stopped (503).
    Unhealthy,
}

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            ErrorKind::Validation => "Validation",
            ErrorKind::Overloaded => "Overloaded",
            ErrorKind::Tokenizer => "Tokenizer",
            ErrorKind::Backend => "Backend",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Unhealthy => "Unhealthy",
        }
    }
}

/// An error answer: `{"error": "...", "error_type": "..."}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error_type`.
    pub kind: ErrorKind,
    /// `error`: one line naming what was wrong.
    pub message: String,
}

impl ApiError {
    /// A validation error with `status`.
    pub fn validation(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: ErrorKind::Validation,
            message: message.into(),
        }
    }

    /// Another kind of error.
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "error_type": self.kind.name()});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(s: &str) -> Text {
        Text::Single(s.into())
    }

    #[test]
    fn inputs_are_read_as_tei_reads_them() {
        let p = |v| parse_inputs(&v).unwrap();
        let one = |t| Inputs {
            texts: vec![t],
            batch: false,
        };
        let pair = |a: &str, b: &str| Text::Pair(a.into(), b.into());
        assert_eq!(p(json!("a")), one(single("a")));
        assert_eq!(p(json!(["a"])), one(single("a")));
        assert_eq!(p(json!(["a", "b"])), one(pair("a", "b")));
        assert_eq!(
            p(json!(["a", "b", "c"])),
            Inputs {
                texts: vec![single("a"), single("b"), single("c")],
                batch: true
            }
        );
        assert_eq!(
            p(json!([["a", "b"]])),
            Inputs {
                texts: vec![pair("a", "b")],
                batch: true
            }
        );
        assert_eq!(
            p(json!([["a"], ["b", "c"]])),
            Inputs {
                texts: vec![single("a"), pair("b", "c")],
                batch: true
            }
        );
        assert_eq!(p(json!("")).texts, vec![single("")]);
        for bad in [
            json!([]),
            json!(3),
            json!([[]]),
            json!([["a", "b", "c"]]),
            json!([1, 2]),
            json!([["a"], "b"]),
            json!(null),
        ] {
            assert!(parse_inputs(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scores_are_probabilities_best_first_or_raw_logits() {
        let labels = vec!["negative".to_string(), "positive".to_string()];
        let p = predictions(&[0.0, 2.0], &labels, false);
        assert_eq!(p[0].label, "positive");
        assert!((p[0].score + p[1].score - 1.0).abs() < 1e-6);
        assert!((p[0].score - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let raw = predictions(&[0.5, -1.0], &labels, true);
        assert_eq!(
            raw[0],
            Prediction {
                label: "negative".into(),
                score: 0.5
            }
        );
        let one = predictions(&[0.0], &["score".to_string()], false);
        assert_eq!(one[0].score, 0.5);
        assert_eq!(
            predictions(&[1.0, 0.0, 3.0], &labels, true)[0].label,
            "LABEL_2"
        );
    }
}
