//! A bounded HTTP load client for `cargo xtask bench serve`: `concurrency` threads send
//! TEI-style `POST /predict` bodies in turn until `requests` are answered or `duration` has
//! passed, and the latencies are summarised.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one load run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadStats {
    /// Client threads.
    pub concurrency: usize,
    /// Requests answered 200.
    pub requests: usize,
    /// Requests answered otherwise (or not at all).
    pub errors: usize,
    /// Texts classified.
    pub texts: usize,
    /// Wall time.
    pub seconds: f64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Texts per second.
    pub texts_per_second: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// The `q` quantile (0..=1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sends `bodies[i % len]` (each holding `texts_per_body` inputs) to `url`.
pub fn run(
    url: &str,
    bodies: &[String],
    texts_per_body: usize,
    concurrency: usize,
    requests: usize,
    duration: Duration,
) -> Result<LoadStats> {
    if bodies.is_empty() || concurrency == 0 {
        bail!("nothing to send");
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .max_idle_connections_per_host(concurrency)
        .build();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(requests)));
    let errors = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(bodies.to_vec());
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (agent, next, latencies, errors, bodies) = (
                agent.clone(),
                next.clone(),
                latencies.clone(),
                errors.clone(),
                bodies.clone(),
            );
            let url = url.to_string();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || start.elapsed() > duration {
                    break;
                }
                let t = Instant::now();
                let ok = agent
                    .post(&url)
                    .set("content-type", "application/json")
                    .send_string(&bodies[i % bodies.len()])
                    .map(|r| r.status() == 200 && r.into_string().is_ok())
                    .unwrap_or(false);
                if ok {
                    latencies
                        .lock()
                        .expect("not poisoned")
                        .push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().expect("not poisoned").clone();
    l.sort_by(f64::total_cmp);
    let done = l.len();
    Ok(LoadStats {
        concurrency,
        requests: done,
        errors: errors.load(Ordering::Relaxed),
        texts: done * texts_per_body,
        seconds,
        requests_per_second: done as f64 / seconds,
        texts_per_second: (done * texts_per_body) as f64 / seconds,
        p50_ms: quantile(&l, 0.50),
        p95_ms: quantile(&l, 0.95),
        p99_ms: quantile(&l, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn a_loopback_server_is_counted() {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/predict", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                std::thread::spawn(move || loop {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let reply = "[]";
                    write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    )
                    .unwrap();
                });
            }
        });
        let stats = run(&url, &["{}".into()], 2, 4, 40, Duration::from_secs(30)).unwrap();
        assert_eq!((stats.requests, stats.errors, stats.texts), (40, 0, 80));
        assert!(stats.p50_ms <= stats.p99_ms);
    }
}
