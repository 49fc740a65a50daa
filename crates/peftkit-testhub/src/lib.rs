//! A small Hugging Face hub on a free loopback port, for tests of peftkit's download path.
//!
//! It speaks the part of the hub protocol that `huggingface_hub` (and peftkit) use:
//!
//! - `GET /api/{models,datasets}/{id}/revision/{rev}`: the repository's commit (`sha`) and files
//!   (`siblings[].rfilename`);
//! - `HEAD` / `GET /{id}/resolve/{rev}/{file}` (datasets under `/datasets/`): small files are
//!   answered directly with `ETag` and `X-Repo-Commit`; large ("LFS") files — safetensors, parquet
//!   or over 10 kB — with a `302` to `/cdn/{sha256}` on a second port (another origin, as the CDN is) carrying `X-Linked-Etag` (the sha256, as the
//!   hub does) and `X-Linked-Size`;
//! - `Range: bytes=N-` on file bodies (`206`, `Content-Range`; `416` past the end);
//! - the hub's error codes: `404` with `X-Error-Code: RepositoryNotFound`, `RevisionNotFound` or
//!   `EntryNotFound`; `401` for a private repository without its token; `403` `GatedRepo`;
//! - a renamed repository answers `307` with a relative `Location` to the new name.
//!
//! Faults are queued per file (or repository, for the info call) and consumed in order: a status
//! code, a connection cut after N body bytes, a corrupted body, a body of the wrong length, a
//! reset without an answer. Every request is logged with its `Range` and `Authorization`.
//!
//! ```
//! use peftkit_testhub::{FakeHub, Fault, Kind, Route};
//!
//! let hub = FakeHub::start();
//! hub.add_repo(Kind::Model, "org/tiny", vec![("config.json".into(), b"{}".to_vec())]);
//! hub.fault(Route::Get, "config.json", Fault::Status(503));
//! assert!(hub.endpoint().starts_with("http://127.0.0.1:"));
//! ```

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A repository type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A model repository (`/{id}/resolve/...`).
    Model,
    /// A dataset repository (`/datasets/{id}/resolve/...`).
    Dataset,
}

/// Which request a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The repository info call (`/api/.../revision/...`); faults are keyed by repository id.
    Info,
    /// The metadata `HEAD` of a file; keyed by file name.
    Head,
    /// The request that carries a file's bytes (the CDN `GET` for LFS files); keyed by file name.
    Get,
}

/// Something to go wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an empty body.
    Status(u16),
    /// Send the headers of the full answer, then this many body bytes, then close.
    CutAfter(usize),
    /// Send the right number of bytes with one of them changed.
    Corrupt,
    /// Send this many extra bytes (the `Content-Length` says so; the metadata does not).
    Longer(usize),
    /// Close the connection without answering.
    Reset,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path, query included.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Debug)]
struct File {
    bytes: Vec<u8>,
    sha256: String,
}

#[derive(Debug, Clone)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Arc<File>>,
    token: Option<String>,
    gated: bool,
}

#[derive(Default)]
struct State {
    repos: HashMap<(Kind, String), Repo>,
    renamed: HashMap<(Kind, String), String>,
    faults: Vec<(Route, String, Fault)>,
    log: Vec<Request>,
}

/// The server; it stops when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    cdn: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_lfs(name: &str, len: usize) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".parquet") || len > 10_000
}

impl FakeHub {
    /// Starts a hub on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        // LFS files are served from a second origin, as the hub's CDN is another host.
        let cdn_listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let cdn = cdn_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        for l in [listener, cdn_listener] {
            let (s, st) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &s, cdn);
                    });
                }
            });
        }
        Self {
            addr,
            cdn,
            state,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces) a repository with these files; its commit is derived from the contents.
    pub fn add_repo(&self, kind: Kind, id: &str, files: Vec<(String, Vec<u8>)>) {
        let mut h = Sha256::new();
        for (name, bytes) in &files {
            h.update(name.as_bytes());
            h.update(bytes);
        }
        let commit: String = h.finalize()[..20]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let repo = Repo {
            commit,
            files: files
                .into_iter()
                .map(|(name, bytes)| {
                    let sha256 = sha256_hex(&bytes);
                    (name, Arc::new(File { bytes, sha256 }))
                })
                .collect(),
            token: None,
            gated: false,
        };
        self.state
            .lock()
            .unwrap()
            .repos
            .insert((kind, id.to_string()), repo);
    }

    /// Adds a repository with every file under `dir` (recursively, `/`-separated names), following
    /// symbolic links as the hub cache's snapshots use them.
    pub fn add_repo_dir(&self, kind: Kind, id: &str, dir: &Path) {
        let mut files = Vec::new();
        collect(dir, dir, &mut files);
        self.add_repo(kind, id, files);
    }

    /// The commit of a repository.
    pub fn commit(&self, kind: Kind, id: &str) -> String {
        self.state.lock().unwrap().repos[&(kind, id.to_string())]
            .commit
            .clone()
    }

    /// Makes a repository private: it answers `401` without `Authorization: Bearer {token}`.
    pub fn require_token(&self, kind: Kind, id: &str, token: &str) {
        if let Some(r) = self
            .state
            .lock()
            .unwrap()
            .repos
            .get_mut(&(kind, id.to_string()))
        {
            r.token = Some(token.into());
        }
    }

    /// Makes a repository gated: it answers `403` with `X-Error-Code: GatedRepo`.
    pub fn gate(&self, kind: Kind, id: &str) {
        if let Some(r) = self
            .state
            .lock()
            .unwrap()
            .repos
            .get_mut(&(kind, id.to_string()))
        {
            r.gated = true;
        }
    }

    /// Makes `old` a former name of `new`: requests for it are redirected (`307`, relative).
    pub fn rename(&self, kind: Kind, old: &str, new: &str) {
        self.state
            .lock()
            .unwrap()
            .renamed
            .insert((kind, old.to_string()), new.to_string());
    }

    /// Queues a fault for the next request of `route` whose file (or repository, for
    /// [`Route::Info`]) is `key`.
    pub fn fault(&self, route: Route, key: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((route, key.to_string(), fault));
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forgets the logged requests.
    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so that they see the flag.
        let _ = TcpStream::connect(self.addr);
        let _ = TcpStream::connect(self.cdn);
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap();
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    fault: Option<Fault>,
}

impl Answer {
    fn status(status: u16, code: Option<&str>) -> Self {
        let mut headers = Vec::new();
        if let Some(c) = code {
            headers.push(("X-Error-Code".into(), c.into()));
        }
        Self {
            status,
            headers,
            body: format!("{{\"error\":\"{}\"}}", code.unwrap_or("error")).into_bytes(),
            fault: None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, cdn: SocketAddr) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let request = Request {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        authorization: authorization.clone(),
    };
    let answer = {
        let mut st = state.lock().unwrap();
        st.log.push(request.clone());
        route(&mut st, &request, cdn)
    };
    write_answer(conn, &method, answer)
}

fn write_answer(mut conn: TcpStream, method: &str, a: Answer) -> std::io::Result<()> {
    if a.fault == Some(Fault::Reset) {
        return conn.shutdown(Shutdown::Both);
    }
    let mut body = a.body;
    let mut send_len = body.len();
    match a.fault {
        Some(Fault::Corrupt) if !body.is_empty() => {
            let mid = body.len() / 2;
            body[mid] ^= 0x5a;
        }
        Some(Fault::Longer(n)) => {
            body.extend(std::iter::repeat_n(b'x', n));
            send_len = body.len();
        }
        Some(Fault::CutAfter(n)) => send_len = n.min(body.len()),
        _ => {}
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(&body[..send_len])?;
    }
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

fn take_fault(st: &mut State, route: Route, key: &str) -> Option<Fault> {
    let i = st
        .faults
        .iter()
        .position(|(r, k, _)| *r == route && k == key)?;
    Some(st.faults.remove(i).2)
}

/// Applies a fault that replaces the answer (a status or a reset); others ride along.
fn with_fault(answer: Answer, fault: Option<Fault>) -> Answer {
    match fault {
        Some(Fault::Status(s)) => Answer::status(s, None),
        Some(Fault::Reset) => Answer {
            fault: Some(Fault::Reset),
            ..Answer::status(500, None)
        },
        f => Answer { fault: f, ..answer },
    }
}

fn route(st: &mut State, req: &Request, cdn: SocketAddr) -> Answer {
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let found = st.repos.values().find_map(|r| {
            r.files
                .iter()
                .find(|(_, f)| f.sha256 == sha)
                .map(|(n, f)| (n.clone(), f.clone()))
        });
        let Some((name, file)) = found else {
            return Answer::status(404, None);
        };
        let fault = take_fault(st, Route::Get, &name);
        return with_fault(body_answer(&file.bytes, req.range.as_deref()), fault);
    }
    for (prefix, kind) in [
        ("/api/models/", Kind::Model),
        ("/api/datasets/", Kind::Dataset),
    ] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let Some((id, rev)) = rest.split_once("/revision/") else {
                return Answer::status(404, None);
            };
            let fault = take_fault(st, Route::Info, id);
            if let Some(new) = st.renamed.get(&(kind, id.to_string())) {
                let location = format!("{prefix}{new}/revision/{rev}");
                return redirect(location);
            }
            let repo = match access(st, kind, id, req) {
                Ok(r) => r,
                Err(a) => return with_fault(a, fault),
            };
            if rev != "main" && rev != repo.commit {
                return with_fault(Answer::status(404, Some("RevisionNotFound")), fault);
            }
            let info = serde_json::json!({
                "id": id,
                "sha": repo.commit,
                "siblings": repo.files.keys().map(|f| serde_json::json!({"rfilename": f})).collect::<Vec<_>>(),
            });
            let answer = Answer {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: info.to_string().into_bytes(),
                fault: None,
            };
            return with_fault(answer, fault);
        }
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (Kind::Dataset, r),
        None => (Kind::Model, path.trim_start_matches('/')),
    };
    let Some((id, tail)) = rest.split_once("/resolve/") else {
        return Answer::status(404, None);
    };
    let Some((rev, file)) = tail.split_once('/') else {
        return Answer::status(404, None);
    };
    let route_kind = if req.method == "HEAD" {
        Route::Head
    } else {
        Route::Get
    };
    if let Some(new) = st.renamed.get(&(kind, id.to_string())) {
        let pre = if kind == Kind::Dataset {
            "/datasets"
        } else {
            ""
        };
        return redirect(format!("{pre}/{new}/resolve/{rev}/{file}"));
    }
    let repo = match access(st, kind, id, req) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if rev != "main" && rev != repo.commit {
        return Answer::status(404, Some("RevisionNotFound"));
    }
    let Some(content) = repo.files.get(file).cloned() else {
        return Answer::status(404, Some("EntryNotFound"));
    };
    let (bytes, sha) = (&content.bytes, content.sha256.clone());
    let commit = ("X-Repo-Commit".to_string(), repo.commit.clone());
    if is_lfs(file, bytes.len()) {
        let fault = if route_kind == Route::Head {
            take_fault(st, Route::Head, file)
        } else {
            None
        };
        let answer = Answer {
            status: 302,
            headers: vec![
                commit,
                ("Location".into(), format!("http://{cdn}/cdn/{sha}")),
                ("X-Linked-Etag".into(), format!("\"{sha}\"")),
                ("X-Linked-Size".into(), bytes.len().to_string()),
                ("ETag".into(), format!("\"{}\"", &sha[..40])),
            ],
            body: Vec::new(),
            fault: None,
        };
        return with_fault(answer, fault);
    }
    let fault = take_fault(st, route_kind, file);
    let mut answer = body_answer(bytes, req.range.as_deref());
    answer.headers.push(commit);
    answer
        .headers
        .push(("ETag".into(), format!("\"{}\"", &sha[..40])));
    with_fault(answer, fault)
}

fn redirect(location: String) -> Answer {
    Answer {
        status: 307,
        headers: vec![("Location".into(), location)],
        body: Vec::new(),
        fault: None,
    }
}

fn access(st: &State, kind: Kind, id: &str, req: &Request) -> Result<Repo, Answer> {
    let Some(repo) = st.repos.get(&(kind, id.to_string())) else {
        return Err(Answer::status(404, Some("RepositoryNotFound")));
    };
    if let Some(token) = &repo.token {
        if req.authorization.as_deref() != Some(&format!("Bearer {token}")) {
            return Err(Answer::status(401, Some("RepositoryNotFound")));
        }
    }
    if repo.gated {
        return Err(Answer::status(403, Some("GatedRepo")));
    }
    Ok(repo.clone())
}

fn body_answer(bytes: &[u8], range: Option<&str>) -> Answer {
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match start {
        Some(s) if s >= bytes.len() => Answer {
            headers: vec![("Content-Range".into(), format!("bytes */{}", bytes.len()))],
            ..Answer::status(416, None)
        },
        Some(s) => Answer {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {s}-{}/{}", bytes.len() - 1, bytes.len()),
            )],
            body: bytes[s..].to_vec(),
            fault: None,
        },
        None => Answer {
            status: 200,
            headers: Vec::new(),
            body: bytes.to_vec(),
            fault: None,
        },
    }
}
