//! Talking to the hub: the repository info call and file downloads that survive a flaky network —
//! retries with backoff, resumption from the `.incomplete` file, verification of the size and of
//! the sha256 the hub gives as the ETag of LFS files — as `huggingface_hub` does, and errors that
//! say which of not found / private or gated / no such file / unreachable happened.

use super::cache::RepoCache;
use super::settings::HubSettings;
use super::RepoKind;
use crate::DataError;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Downloads over this size get a progress bar (on a terminal, unless turned off).
const PROGRESS_MIN_BYTES: u64 = 4 << 20;

/// A repository's commit and file names at one revision.
#[derive(Debug, Clone)]
pub(crate) struct RepoInfo {
    pub sha: String,
    pub files: Vec<String>,
}

/// Why one attempt failed.
enum Failure {
    /// Retrying will not help.
    Fatal(DataError),
    /// A 5xx / 429, a reset or cut connection, a timeout, a bad checksum: retry.
    Transient(String),
    /// Nothing answers (connection refused, unknown host): not worth retrying.
    Unreachable(String),
}

/// What a `HEAD` of a file's `resolve` URL tells.
struct Metadata {
    etag: String,
    size: u64,
    url: String,
}

/// A hub client for one repository.
pub(crate) struct HubClient<'a> {
    settings: &'a HubSettings,
    kind: RepoKind,
    repo: &'a str,
    /// Follows no redirects: the metadata is on the hub's own answer, not the CDN's.
    head_agent: ureq::Agent,
    agent: ureq::Agent,
}

impl<'a> HubClient<'a> {
    pub(crate) fn new(settings: &'a HubSettings, kind: RepoKind, repo: &'a str) -> Self {
        let build = |redirects| {
            ureq::AgentBuilder::new()
                .timeout_connect(settings.timeout)
                .timeout_read(settings.timeout)
                .redirects(redirects)
                .user_agent(concat!("peftkit/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Self {
            settings,
            kind,
            repo,
            head_agent: build(0),
            agent: build(5),
        }
    }

    fn what(&self) -> String {
        format!("{} `{}`", self.kind, self.repo)
    }

    /// The `resolve` URL of a file at a revision.
    pub(crate) fn file_url(&self, revision: &str, file: &str) -> String {
        let prefix = match self.kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        };
        format!(
            "{}/{prefix}{}/resolve/{revision}/{file}",
            self.settings.endpoint, self.repo
        )
    }

    fn authorize(&self, req: ureq::Request, url: &str) -> ureq::Request {
        // The token goes to the hub only, never to a CDN it redirects to.
        match &self.settings.token {
            Some(t)
                if url
                    .strip_prefix(&self.settings.endpoint)
                    .is_some_and(|rest| rest.starts_with('/')) =>
            {
                req.set("Authorization", &format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
    fn retrying<T>(
        &self,
        file: Option<&str>,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> crate::Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            let message = match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Unreachable(m)) => return Err(self.unreachable(m)),
                Err(Failure::Transient(m)) => m,
            };
            if tries > self.settings.max_retries {
                return Err(match file {
                    Some(f) => DataError::HubDownload {
                        what: self.what(),
                        file: f.into(),
                        attempts: tries,
                        message,
                    },
                    None => self.unreachable(format!("{message}, after {tries} attempt(s)")),
                });
            }
            let wait = self.settings.backoff(tries);
            tracing::warn!(
                what = %self.what(), file = file.unwrap_or("(repository info)"), error = %message,
                "hub request failed; retrying in {:.1} s ({tries}/{})", wait.as_secs_f64(), self.settings.max_retries
            );
            std::thread::sleep(wait);
        }
    }

    pub(crate) fn unreachable(&self, message: String) -> DataError {
        DataError::HubUnreachable {
            what: self.what(),
            endpoint: self.settings.endpoint.clone(),
            message,
            hint: format!(
                " and it is not in the cache {}: check the network or HF_ENDPOINT, or set HF_HOME to a cache that has it",
                self.settings.cache_dir.display()
            ),
        }
    }

    /// Maps an HTTP error status to a failure, with the hub's `X-Error-Code`.
    fn status_failure(
        &self,
        status: u16,
        code: Option<&str>,
        revision: &str,
        file: Option<&str>,
    ) -> Failure {
        let what = self.what();
        let token_hint = match &self.settings.token {
            None => format!(
                "set HF_TOKEN or put a token in {} (`hf auth login`)",
                self.settings.token_path.display()
            ),
            Some(_) => "the token in use (HF_TOKEN or the token file) has no access to it".into(),
        };
        match (status, code) {
            (429, _) | (500..=599, _) => Failure::Transient(format!("HTTP {status}")),
            (403, Some("GatedRepo")) | (401, Some("GatedRepo")) => {
                Failure::Fatal(DataError::HubAccessDenied {
                    what,
                    status,
                    hint: format!(
                        "accept its conditions on {}/{} with the account of your token; {token_hint}",
                        self.settings.endpoint, self.repo
                    ),
                })
            }
            (401, _) | (403, _) => Failure::Fatal(DataError::HubAccessDenied {
                what,
                status,
                hint: format!("{token_hint} (a repository that does not exist answers 401 too)"),
            }),
            (404, Some("RevisionNotFound")) => Failure::Fatal(DataError::HubRevisionNotFound {
                what,
                revision: revision.into(),
            }),
            (404, Some("EntryNotFound")) | (404, None) if file.is_some() => {
                Failure::Fatal(DataError::HubFileNotFound {
                    what,
                    file: file.unwrap_or_default().into(),
                    revision: revision.into(),
                })
            }
            (404, _) => Failure::Fatal(DataError::HubRepoNotFound {
                what,
                endpoint: self.settings.endpoint.clone(),
                hint: match self.settings.token {
                    None => " (a private repository needs HF_TOKEN)".into(),
                    Some(_) => String::new(),
                },
            }),
            _ => Failure::Fatal(DataError::Hub {
                what,
                message: format!(
                    "the hub answered HTTP {status}{}",
                    code.map(|c| format!(" ({c})")).unwrap_or_default()
                ),
            }),
        }
    }

    fn failure(&self, err: ureq::Error, revision: &str, file: Option<&str>) -> Failure {
        match err {
            ureq::Error::Status(status, resp) => {
                let code = resp.header("X-Error-Code").map(str::to_string);
                self.status_failure(status, code.as_deref(), revision, file)
            }
            ureq::Error::Transport(t) => match t.kind() {
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                    Failure::Unreachable(t.to_string())
                }
                _ => Failure::Transient(t.to_string()),
            },
        }
    }

    /// The repository's commit and files at `revision` (`GET /api/{kind}s/{id}/revision/{rev}`).
    pub(crate) fn info(&self, revision: &str) -> crate::Result<RepoInfo> {
        let url = format!(
            "{}/api/{}s/{}/revision/{revision}",
            self.settings.endpoint, self.kind, self.repo
        );
        self.retrying(None, || {
            let resp = self
                .authorize(self.agent.get(&url), &url)
                .call()
                .map_err(|e| self.failure(e, revision, None))?;
            let body: serde_json::Value = resp
                .into_json()
                .map_err(|e| Failure::Transient(format!("reading the repository info: {e}")))?;
            let sha = body["sha"].as_str().map(str::to_string).ok_or_else(|| {
                Failure::Fatal(DataError::Hub {
                    what: self.what(),
                    message: "the hub's repository info has no `sha`".into(),
                })
            })?;
            let files = body["siblings"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|f| f["rfilename"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Ok(RepoInfo { sha, files })
        })
    }

    /// Downloads `file` of `commit` into the cache (unless there already) and returns its path in
    /// the snapshot; `revision` (a branch name) is recorded as pointing at `commit`.
    pub(crate) fn fetch(
        &self,
        cache: &RepoCache,
        revision: &str,
        commit: &str,
        file: &str,
    ) -> crate::Result<PathBuf> {
        let io_err = |path: &Path, e: std::io::Error| DataError::Hub {
            what: self.what(),
            message: format!("writing {}: {e}", path.display()),
        };
        let snapshot = cache.snapshot_file(commit, file);
        if !snapshot.is_file() {
            let meta = self.retrying(Some(file), || self.metadata(commit, file))?;
            let blob = cache.blob(&meta.etag);
            let complete = std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size);
            if !complete {
                tracing::info!(what = %self.what(), file, bytes = meta.size, "downloading from the hub");
                self.retrying(Some(file), || self.transfer(cache, &meta, file))?;
            }
            cache
                .link(commit, file, &meta.etag)
                .map_err(|e| io_err(&snapshot, e))?;
        }
        cache
            .write_ref(revision, commit)
            .map_err(|e| io_err(Path::new(revision), e))?;
        Ok(snapshot)
    }

    /// `HEAD` of the `resolve` URL, following the hub's own (relative) redirects of renamed
    /// repositories but not the one to the CDN, whose target is the download URL.
    fn metadata(&self, revision: &str, file: &str) -> Result<Metadata, Failure> {
        let mut url = self.file_url(revision, file);
        for _ in 0..5 {
            let resp = self
                .authorize(self.head_agent.head(&url), &url)
                .set("Accept-Encoding", "identity")
                .call()
                .map_err(|e| self.failure(e, revision, Some(file)))?;
            let location = resp.header("Location").map(str::to_string);
            if (300..400).contains(&resp.status()) {
                let location = location.ok_or_else(|| {
                    Failure::Transient(format!("HTTP {} without a Location", resp.status()))
                })?;
                if location.starts_with('/') {
                    url = format!("{}{location}", self.settings.endpoint);
                    continue;
                }
                return self.metadata_of(&resp, location, file);
            }
            return self.metadata_of(&resp, url, file);
        }
        Err(Failure::Transient("too many redirects".into()))
    }

    fn metadata_of(
        &self,
        resp: &ureq::Response,
        url: String,
        file: &str,
    ) -> Result<Metadata, Failure> {
        let header = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| resp.header(n).map(str::to_string))
        };
        let bad = |message: String| {
            Failure::Fatal(DataError::HubDownload {
                what: self.what(),
                file: file.into(),
                attempts: 1,
                message,
            })
        };
        let etag = header(&["X-Linked-Etag", "ETag"])
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\', '.']))
            .ok_or_else(|| bad("the hub gave no usable ETag for it".into()))?;
        let size = header(&["X-Linked-Size", "Content-Length"])
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("the hub gave no size for it".into()))?;
        Ok(Metadata { etag, size, url })
    }

    /// One attempt at the bytes: resumes from the `.incomplete` file, checks size and sha256,
    /// then renames it to the blob.
    fn transfer(&self, cache: &RepoCache, meta: &Metadata, file: &str) -> Result<(), Failure> {
        let part = cache.incomplete(&meta.etag);
        let fatal_io = |e: std::io::Error| {
            Failure::Fatal(DataError::Hub {
                what: self.what(),
                message: format!("writing {}: {e}", part.display()),
            })
        };
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir).map_err(fatal_io)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(fatal_io)?;
        let mut have = out.metadata().map_err(fatal_io)?.len();
        if have > meta.size {
            out.set_len(0).map_err(fatal_io)?;
            have = 0;
        }
        if have < meta.size {
            let mut req = self
                .authorize(self.agent.get(&meta.url), &meta.url)
                .set("Accept-Encoding", "identity");
            if have > 0 {
                req = req.set("Range", &format!("bytes={have}-"));
                tracing::info!(file, from = have, "resuming the download");
            }
            let resp = match req.call() {
                Err(ureq::Error::Status(416, _)) => {
                    out.set_len(0).map_err(fatal_io)?;
                    return Err(Failure::Transient(
                        "the partial file did not fit (416)".into(),
                    ));
                }
                r => r.map_err(|e| self.failure(e, "", Some(file)))?,
            };
            if resp.status() != 206 && have > 0 {
                // The server ignored the range: start over.
                out.set_len(0).map_err(fatal_io)?;
                out.seek(std::io::SeekFrom::Start(0)).map_err(fatal_io)?;
                have = 0;
            }
            let bar = self.progress_bar(file, meta.size, have);
            let mut reader = resp.into_reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        out.flush().map_err(fatal_io)?;
                        return Err(Failure::Transient(format!(
                            "the connection broke after {} of {} bytes ({e})",
                            have, meta.size
                        )));
                    }
                };
                out.write_all(&buf[..n]).map_err(fatal_io)?;
                have += n as u64;
                if let Some(b) = &bar {
                    b.set_position(have);
                }
            }
            out.flush().map_err(fatal_io)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        }
        drop(out);
        if have != meta.size {
            if have > meta.size {
                let _ = std::fs::remove_file(&part);
            }
            return Err(Failure::Transient(format!(
                "received {have} bytes where the hub announced {}",
                meta.size
            )));
        }
        if is_sha256(&meta.etag) {
            let got = sha256_file(&part).map_err(fatal_io)?;
            if got != meta.etag {
                let _ = std::fs::remove_file(&part);
                return Err(Failure::Transient(format!(
                    "sha256 {got} differs from the hub's {}",
                    meta.etag
                )));
            }
        }
        std::fs::rename(&part, cache.blob(&meta.etag)).map_err(fatal_io)
    }

    fn progress_bar(&self, file: &str, size: u64, at: u64) -> Option<indicatif::ProgressBar> {
        if !self.settings.progress || size < PROGRESS_MIN_BYTES {
            return None;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(size),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if bar.is_hidden() {
            return None;
        }
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.to_string());
        bar.set_position(at);
        bar.enable_steady_tick(Duration::from_millis(250));
        Some(bar)
    }
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
