//! `peftkit serve` end to end on MiniLM: a server on a free loopback port (port 0, the bound
//! address read from its first line), TEI-style requests from concurrent clients on several
//! adapters answered exactly as `peftkit predict` answers, every error status, adapters added
//! and removed at run time, draining on SIGTERM, and memory flat over thousands of requests.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{nan_weights, peftkit, random_minilm_adapter};

fn minilm() -> String {
    std::env::var("PEFTKIT_MINILM_DIR").expect("PEFTKIT_MINILM_DIR (cargo xtask sets it)")
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let minilm = minilm();
        let mut all = vec![
            "serve", "--model", &minilm, "--device", "cpu", "--port", "0",
        ];
        all.extend(args);
        let mut child = peftkit()
            .args(&all)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut base = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(addr) = line.strip_prefix("peftkit serve: listening on ") {
                base = Some(addr.to_string());
                break;
            }
        }
        let Some(base) = base else {
            panic!("the server did not start:\n{}", log.lock().unwrap());
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, base, log }
    }

    fn url(&self, route: &str) -> String {
        format!("{}{route}", self.base)
    }

    fn get(&self, route: &str) -> (u16, String) {
        answer(ureq::get(&self.url(route)).call())
    }

    fn post(&self, route: &str, body: &str) -> (u16, String) {
        answer(
            ureq::post(&self.url(route))
                .set("content-type", "application/json")
                .send_string(body),
        )
    }

    fn predict(&self, body: &Value) -> (u16, Value) {
        let (status, text) = self.post("/predict", &body.to_string());
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn delete(&self, route: &str) -> (u16, String) {
        answer(ureq::delete(&self.url(route)).call())
    }

    /// The value of an unlabelled measure of `GET /metrics`.
    fn measure(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
    }

    /// Polls `GET /metrics` until measure `name` exceeds `floor`: requests have got that far.
    fn wait_above(&self, name: &str, floor: u64) {
        let start = Instant::now();
        while self.measure(name) <= floor {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} stayed at {floor} or less"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests tokenized so far: a request counted here holds its adapter and its permit until it
/// is answered.
const TOKENIZED: &str = "peftkit_tokenization_duration_seconds_count";

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("no answer: {e}"),
    }
}

/// Three adapters of different methods on MiniLM: LoRA (`s`), IA³ (`e`), prefix tuning (`p`).
fn adapters(dir: &Path) -> Vec<(String, PathBuf)> {
    let made = [
        (
            "s",
            peftkit_adapters::LoraConfig {
                init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
                ..peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 8.0)
            }
            .into(),
        ),
        (
            "e",
            peftkit_adapters::Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"])
                .into(),
        ),
        ("p", peftkit_adapters::PrefixTuningConfig::new(6).into()),
    ];
    made.into_iter()
        .map(|(name, cfg): (&str, peftkit_adapters::AdapterConfig)| {
            let d = dir.join(name);
            random_minilm_adapter(&d, cfg);
            (name.to_string(), d)
        })
        .collect()
}

fn adapter_args(list: &[(String, PathBuf)]) -> Vec<String> {
    list.iter()
        .flat_map(|(n, d)| ["--adapter".to_string(), format!("{n}={}", d.display())])
        .collect()
}

const TEXTS: [&str; 6] = [
    "a gorgeous, witty, seductive movie.",
    "dull",
    "the plot is thin and the acting wooden, yet somehow it works",
    "",
    "not bad at all, really",
    "an utterly forgettable sequel",
];

/// `peftkit predict --json` logits of every text through `adapter`.
fn predict_logits(list: &[(String, PathBuf)], adapter: &str) -> Vec<Vec<f64>> {
    let minilm = minilm();
    let mut args: Vec<String> = ["predict", "--model", &minilm, "--json", "--device", "cpu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(adapter_args(list));
    for t in TEXTS {
        args.extend([
            "--text".into(),
            t.into(),
            "--text-adapter".into(),
            adapter.into(),
        ]);
    }
    let out = peftkit().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(v["logits"].clone()).unwrap()
        })
        .collect()
}

fn scores_by_label(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn concurrent_clients_on_different_adapters_get_predicts_results() {
    let tmp = tempfile::tempdir().unwrap();
    let list = adapters(tmp.path());
    let want: Vec<(String, Vec<Vec<f64>>)> = ["s", "e", "p"]
        .iter()
        .map(|a| (a.to_string(), predict_logits(&list, a)))
        .collect();
    let args = adapter_args(&list);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let (status, info) = server.get("/info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["default_adapter"], "s");
    let types: Vec<&str> = info["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["peft_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["LORA", "IA3", "PREFIX_TUNING"]);
    assert_eq!(info["adapters"][0]["r"], 4);
    assert_eq!(info["adapters"][0]["id2label"]["1"], "positive");
    // Real tokens take positions after the 6 virtual ones (as in peft): 512 - 6 remain.
    assert_eq!(info["max_input_length"], 506);
    assert_eq!(server.get("/health").0, 200);

    // 8 clients, each sending every text to every adapter, singly and in batches, raw and
    // as probabilities: batches form across clients and adapters.
    let server = Arc::new(server);
    let want = Arc::new(want);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (server, want) = (server.clone(), want.clone());
            std::thread::spawn(move || {
                for round in 0..3 {
                    for (k, (adapter, logits)) in want.iter().enumerate() {
                        let raw = (c + round + k) % 2 == 0;
                        if (c + round) % 2 == 0 {
                            let (status, got) = server.predict(&json!({"inputs": TEXTS.iter().map(|t| vec![*t]).collect::<Vec<_>>(), "adapter": adapter, "raw_scores": raw}));
                            assert_eq!(status, 200, "{got}");
                            for (i, row) in got.as_array().unwrap().iter().enumerate() {
                                check(row, &logits[i], raw, adapter, i);
                            }
                        } else {
                            for (i, t) in TEXTS.iter().enumerate() {
                                let body = if k == 0 && c % 4 == 1 {
                                    // The default adapter, named by no field.
                                    json!({"inputs": t, "raw_scores": raw})
                                } else {
                                    json!({"inputs": t, "adapter": adapter, "raw_scores": raw})
                                };
                                let (status, got) = server.predict(&body);
                                assert_eq!(status, 200, "{got}");
                                check(&got, &logits[i], raw, adapter, i);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains(r#"peftkit_requests_total{route="/predict",adapter="p",status="200"}"#),
        "{metrics}"
    );
    // Requests are batched together: 8 clients sending one text per request to LoRA and IA³
    // rows (mixable) take fewer forward passes than requests.
    let forwards = || -> u64 {
        let (_, metrics) = server.get("/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("peftkit_batch_size_count"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap()
    };
    let before = forwards();
    let singles: Vec<_> = (0..8)
        .map(|c| {
            let server = server.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let adapter = ["s", "e"][(c + i) % 2];
                    let (status, got) =
                        server.predict(&json!({"inputs": TEXTS[i % 6], "adapter": adapter}));
                    assert_eq!(status, 200, "{got}");
                }
            })
        })
        .collect();
    for c in singles {
        c.join().unwrap();
    }
    let passes = forwards() - before;
    assert!(
        passes < 80,
        "80 single-text requests took {passes} forward passes: none was batched"
    );
    assert!(server.log.lock().unwrap().contains("latency_ms"));
}

fn check(got: &Value, logits: &[f64], raw: bool, adapter: &str, i: usize) {
    let scores = scores_by_label(got);
    let labels = ["negative", "positive"];
    let want: Vec<f64> = if raw {
        logits.to_vec()
    } else {
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        e.iter().map(|x| x / e.iter().sum::<f64>()).collect()
    };
    assert!(scores[0].1 >= scores[1].1, "best first: {got}");
    for (label, score) in scores {
        let id = labels.iter().position(|l| *l == label).unwrap();
        assert!(
            (score - want[id]).abs() < 1e-4,
            "adapter {adapter} text {i} ({label}): served {score}, predict {}",
            want[id]
        );
    }
}

#[test]
fn every_bad_request_gets_its_status_and_the_server_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let list = adapters(tmp.path());
    let args = adapter_args(&list[..1]);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--payload-limit", "20000", "--max-client-batch-size", "4"]);
    let server = Server::start(&all);
    let error = |status: u16, body: &str, want_status: u16, want: &str| {
        assert_eq!(status, want_status, "{body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert!(v["error"].as_str().unwrap().contains(want), "{body}");
        assert!(v["error_type"].is_string(), "{body}");
    };
    let (s, b) = server.post("/predict", "{\"inputs\": ");
    error(s, &b, 400, "not valid JSON");
    let (s, b) = server.post("/predict", r#"{"inputs": "x", "adapterz": "s"}"#);
    error(s, &b, 422, "unknown field `adapterz`");
    let (s, b) = server.post("/predict", r#"{"inputs": [1, 2]}"#);
    error(s, &b, 422, "`inputs` must be");
    let (s, b) = server.post("/predict", r#"{"inputs": "x", "adapter": "nope"}"#);
    error(
        s,
        &b,
        404,
        "no adapter `nope` (loaded: s; or `__base__` for none)",
    );
    let (_, metrics) = server.get("/metrics");
    assert!(
        !metrics.contains("nope"),
        "a made-up name became a metrics label:\n{metrics}"
    );
    let (s, b) = server.post(
        "/predict",
        &json!({"inputs": ["a", "b", "c", "d", "e"]}).to_string(),
    );
    error(s, &b, 413, "batch size 5 > maximum allowed batch size 4");
    let (s, b) = server.post(
        "/predict",
        &json!({"inputs": "x".repeat(30000)}).to_string(),
    );
    assert_eq!(s, 413, "{b}");
    let long = "word ".repeat(600);
    let (s, b) = server.post(
        "/predict",
        &json!({"inputs": long, "truncate": false}).to_string(),
    );
    error(s, &b, 413, "must have less than 512 tokens. Given: 602");
    let (s, b) = server.predict(&json!({"inputs": long}));
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.predict(&json!({"inputs": ""}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.as_array().unwrap().len(), 2);
    let (s, b) = server.predict(&json!({"inputs": ["a", "b"], "adapter": "__base__"}));
    assert_eq!(s, 200, "a pair, answered as one input: {b}");
    assert!(b[0]["label"].is_string());
    let (s, b) = server.post("/nope", "{}");
    error(s, &b, 404, "no such route");
    let (s, b) = server.post(
        "/adapters",
        &json!({"name": "x", "path": tmp.path()}).to_string(),
    );
    error(s, &b, 422, "not an adapter directory");
    assert_eq!(server.get("/health").0, 200);
    drop(server);

    // A full queue answers 503 with Retry-After; a request not answered in time, 504.
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend([
        "--max-concurrent-requests",
        "1",
        "--max-batch-requests",
        "1",
    ]);
    let server = Arc::new(Server::start(&all));
    let long = "word ".repeat(400);
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let (server, long) = (server.clone(), long.clone());
            std::thread::spawn(move || {
                let r = ureq::post(&server.url("/predict"))
                    .send_json(json!({"inputs": [[long], [long]]}));
                match r {
                    Ok(r) => (r.status(), None),
                    Err(ureq::Error::Status(code, r)) => {
                        (code, r.header("retry-after").map(str::to_string))
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let answers: Vec<(u16, Option<String>)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(answers.iter().any(|a| a.0 == 200), "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| a.0 == 503 && a.1.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|a| a.0 == 200 || a.0 == 503),
        "{answers:?}"
    );
    // A request counts from its arrival to its answer, not only while queued: with one in
    // flight (being computed, the queue empty) the next is refused.
    let tokenized = server.measure(TOKENIZED);
    let first = {
        let server = server.clone();
        let inputs = vec![vec!["word ".repeat(500)]; 8];
        std::thread::spawn(move || server.predict(&json!({ "inputs": inputs })))
    };
    server.wait_above(TOKENIZED, tokenized);
    let r = ureq::post(&server.url("/predict")).send_json(json!({"inputs": "x"}));
    match r {
        Err(ureq::Error::Status(503, r)) => {
            assert_eq!(r.header("retry-after"), Some("1"));
            let b: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            assert_eq!(b["error_type"], "Overloaded", "{b}");
        }
        other => panic!("a second request in flight was not refused: {other:?}"),
    }
    let (s, b) = first.join().unwrap();
    assert_eq!(s, 200, "{b}");
    assert_eq!(server.predict(&json!({"inputs": "x"})).0, 200);
    drop(server);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--request-timeout-ms", "1"]);
    let server = Server::start(&all);
    let (s, b) = server.post(
        "/predict",
        &json!({"inputs": [[long], [long], [long]]}).to_string(),
    );
    error(s, &b, 504, "no answer within 1 ms");
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn adapters_are_added_and_removed_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let list = adapters(tmp.path());
    let want = predict_logits(&list, "e");
    let args = adapter_args(&list[..1]);
    let server = Arc::new(Server::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let add = |name: &str, dir: &Path| {
        server.post("/adapters", &json!({"name": name, "path": dir}).to_string())
    };
    let (s, b) = add("e", &list[1].1);
    assert_eq!(s, 201, "{b}");
    let (s, b) = add("e", &list[1].1);
    assert_eq!(s, 409, "{b}");
    for (i, t) in TEXTS.iter().enumerate() {
        let (s, got) = server.predict(&json!({"inputs": t, "adapter": "e", "raw_scores": true}));
        assert_eq!(s, 200);
        check(&got, &want[i], true, "e", i);
    }
    // An adapter of another label count does not fit the head shared by the others.
    let three = tmp.path().join("three");
    random_minilm_adapter(
        &three,
        peftkit_adapters::LoraConfig::new(&["query"], 2, 4.0).into(),
    );
    std::fs::write(
        three.join("id2label.json"),
        r#"{"0": "a", "1": "b", "2": "c"}"#,
    )
    .unwrap();
    let (s, b) = add("three", &three);
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("3 labels but the model's head 2"), "{b}");
    // An adapter whose weights hold NaN loads, but its answers are errors, never labels.
    let nan = tmp.path().join("nan");
    random_minilm_adapter(
        &nan,
        peftkit_adapters::LoraConfig::new(&["query"], 2, 4.0).into(),
    );
    nan_weights(&nan);
    assert_eq!(add("nan", &nan).0, 201);
    let (s, b) = server.predict(&json!({"inputs": "x", "adapter": "nan"}));
    assert_eq!(s, 500, "{b}");
    assert_eq!(b["error_type"], "Backend", "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("non-finite logit"),
        "{b}"
    );
    assert_eq!(server.delete("/adapters/nan").0, 200);
    // A request in flight on an adapter being removed is answered first.
    let long = "word ".repeat(500);
    let tokenized = server.measure(TOKENIZED);
    let inflight = {
        let (server, long) = (server.clone(), long.clone());
        std::thread::spawn(move || {
            let inputs = vec![vec![long]; 8];
            server.predict(&json!({"inputs": inputs, "adapter": "e"}))
        })
    };
    // Tokenized: it holds the adapter until its ~1 s forward pass is answered.
    server.wait_above(TOKENIZED, tokenized);
    let (s, b) = server.delete("/adapters/e");
    assert_eq!(s, 200, "{b}");
    let (s, got) = inflight.join().unwrap();
    assert_eq!(s, 200, "{got}");
    let (s, b) = server.predict(&json!({"inputs": "x", "adapter": "e"}));
    assert_eq!(s, 404, "{b}");
    assert_eq!(server.delete("/adapters/e").0, 404);
    // The last adapter removed: the plain base serves; one added again becomes the default.
    assert_eq!(server.delete("/adapters/s").0, 200);
    let (s, info) = server.get("/info");
    assert_eq!(s, 200);
    assert!(info.contains("\"default_adapter\":\"__base__\""), "{info}");
    assert_eq!(server.predict(&json!({"inputs": "x"})).0, 200);
    assert_eq!(add("e2", &list[1].1).0, 201);
    let (s, got) = server.predict(&json!({"inputs": TEXTS[0], "raw_scores": true}));
    assert_eq!(s, 200);
    check(&got, &want[0], true, "e2", 0);
}

/// Sends a request and hangs up without reading the answer (a client that gives up).
fn send_and_hang_up(server: &Server, method: &str, route: &str, body: &str) {
    use std::io::Write;
    let host = server.base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "{method} {route} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    // Long enough for the server to read it and start, short of the worker's step.
    std::thread::sleep(Duration::from_millis(5));
}

/// Posts `body` (an adapter named `h`) until it is added (201) or `h` is listed, accepting 409
/// only meanwhile: a change cut off by a client's hang-up must not leave the name half-`what`.
fn settles(server: &Server, body: &str, what: &str) {
    let start = Instant::now();
    loop {
        let (s, b) = server.post("/adapters", body);
        if s == 201 {
            return;
        }
        assert_eq!(s, 409, "{b}");
        let (_, listed) = server.get("/adapters");
        if listed.contains("\"name\":\"h\"") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "`h` stayed half-{what}: {b}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_hanging_up_mid_change_leaves_the_adapters_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("h");
    random_minilm_adapter(
        &dir,
        peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 8.0).into(),
    );
    let server = Server::start(&[]);
    let body = json!({"name": "h", "path": dir}).to_string();
    send_and_hang_up(&server, "POST", "/adapters", &body);
    // The add either never began (then a new one is 201) or runs to its end: 409 while it
    // loads, then the adapter is listed. Never 409 for ever with nothing listed.
    settles(&server, &body, "added");
    let (s, b) = server.predict(&json!({"inputs": "x", "adapter": "h"}));
    assert_eq!(s, 200, "{b}");
    // The same for a removal: it never began (`h` still listed) or runs to its end (409 while
    // it runs, then the name is free). Never unlisted yet loaded (the worker refuses: 422).
    send_and_hang_up(&server, "DELETE", "/adapters/h", "");
    settles(&server, &body, "removed");
    let (s, b) = server.predict(&json!({"inputs": "x", "adapter": "h"}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn sigterm_answers_the_requests_in_flight_then_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let list = adapters(tmp.path());
    let args = adapter_args(&list[..1]);
    let server = Arc::new(Mutex::new(Server::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )));
    let url = server.lock().unwrap().url("/predict");
    let long = "word ".repeat(500);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, long) = (url.clone(), long.clone());
            std::thread::spawn(move || {
                answer(ureq::post(&url).send_json(json!({"inputs": [[long], [long], [long]]}))).0
            })
        })
        .collect();
    // All four have arrived (and been tokenized): SIGTERM finds them in flight.
    server.lock().unwrap().wait_above(TOKENIZED, 3);
    let status = server.lock().unwrap().terminate();
    let answers: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(answers, [200; 4]);
    assert!(status.success(), "{status:?}");
    let log = server.lock().unwrap().log.lock().unwrap().clone();
    assert!(log.contains("peftkit serve: stopped"), "{log}");
}

#[test]
fn memory_stays_flat_over_thousands_of_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let list = adapters(tmp.path());
    let args = adapter_args(&list);
    let server = Arc::new(Server::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let burst = |n: usize| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let server = server.clone();
                std::thread::spawn(move || {
                    for i in 0..n / 8 {
                        let adapter = ["s", "e", "p"][(c + i) % 3];
                        let text = format!("{} {i}", TEXTS[(c * 7 + i) % TEXTS.len()]);
                        let (s, b) = server.predict(&json!({"inputs": text, "adapter": adapter}));
                        assert_eq!(s, 200, "{b}");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    };
    burst(800);
    let before = server.rss_kb();
    burst(2400);
    let after = server.rss_kb();
    eprintln!("server RSS after 800 requests {before} kB, after 2400 more {after} kB");
    assert!(
        after < before + 40 * 1024,
        "RSS grew from {before} kB to {after} kB over 2400 requests"
    );
}
