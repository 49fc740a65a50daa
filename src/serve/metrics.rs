//! `GET /metrics`: Prometheus text format (prometheus-client), TEI's measures under `peftkit_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `/predict`, `/adapters`, …
    pub route: String,
    /// The adapter named (`__base__`, or empty for routes without one).
    pub adapter: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of a latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route.
    pub route: String,
}

fn seconds() -> Histogram {
    // 0.5 ms … ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every measure the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, adapter and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Inputs (texts or pairs) classified.
    pub inputs: Counter,
    /// Request latency, arrival to answer.
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Tokenization time of a request.
    pub tokenization_duration: Histogram,
    /// Time a request waited in the queue.
    pub queue_duration: Histogram,
    /// Time of one forward pass.
    pub inference_duration: Histogram,
    /// Rows of one forward pass.
    pub batch_size: Histogram,
    /// Padded tokens of one forward pass.
    pub batch_tokens: Histogram,
    /// Requests waiting for the model.
    pub queue_size: Gauge,
    /// Adapters loaded.
    pub adapters: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("peftkit");
        let requests = Family::<RequestLabels, Counter>::default();
        let inputs = Counter::default();
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        let tokenization_duration = seconds();
        let queue_duration = seconds();
        let inference_duration = seconds();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 16));
        let queue_size = Gauge::default();
        let adapters = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route, adapter and HTTP status",
            requests.clone(),
        );
        registry.register(
            "inputs",
            "Inputs (texts or pairs) classified",
            inputs.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency from arrival to answer",
            request_duration.clone(),
        );
        registry.register(
            "tokenization_duration_seconds",
            "Tokenization time of a request",
            tokenization_duration.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time a request waited for the model",
            queue_duration.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time of one forward pass",
            inference_duration.clone(),
        );
        registry.register("batch_size", "Rows of one forward pass", batch_size.clone());
        registry.register(
            "batch_tokens",
            "Padded tokens of one forward pass",
            batch_tokens.clone(),
        );
        registry.register(
            "queue_size",
            "Requests waiting for the model",
            queue_size.clone(),
        );
        registry.register("adapters", "Adapters loaded", adapters.clone());
        Self {
            registry,
            requests,
            inputs,
            request_duration,
            tokenization_duration,
            queue_duration,
            inference_duration,
            batch_size,
            batch_tokens,
            queue_size,
            adapters,
        }
    }
}

impl Metrics {
    /// Counts an answered request and its latency.
    pub fn answered(&self, route: &str, adapter: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                adapter: adapter.to_string(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_measure() {
        let m = Metrics::default();
        m.answered("/predict", "sst2", 200, 0.01);
        m.batch_size.observe(3.0);
        m.queue_size.set(2);
        let text = m.render();
        for needle in [
            "peftkit_requests_total{route=\"/predict\",adapter=\"sst2\",status=\"200\"} 1",
            "peftkit_request_duration_seconds_count{route=\"/predict\"} 1",
            "peftkit_batch_size_count 1",
            "peftkit_queue_size 2",
            "# TYPE peftkit_inference_duration_seconds histogram",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
