//! Where the hub is and how to talk to it, read from the environment as `huggingface_hub` does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static PROGRESS: AtomicBool = AtomicBool::new(true);

/// Turns download progress bars on or off for this process (the CLI's `--quiet` turns them off).
/// They are drawn only on a terminal in any case.
pub fn set_download_progress(on: bool) {
    PROGRESS.store(on, Ordering::Relaxed);
}

/// True when `HF_HUB_OFFLINE` asks for cache-only operation (`1`, `true`, `yes`, `on`), as in
/// Python's `huggingface_hub`.
pub fn hub_offline() -> bool {
    flag(std::env::var("HF_HUB_OFFLINE").ok())
}

fn flag(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// How peftkit reaches the hub and where it caches what it downloads.
///
/// [`HubSettings::from_env`] reads the variables `huggingface_hub` reads, so the two share one
/// cache and one login:
///
/// | setting | variable | default |
/// |---|---|---|
/// | `endpoint` | `HF_ENDPOINT` | `https://huggingface.co` |
/// | `cache_dir` | `HF_HUB_CACHE`, else `$HF_HOME/hub` | `~/.cache/huggingface/hub` |
/// | `token` | `HF_TOKEN`, else the file `HF_TOKEN_PATH` / `$HF_HOME/token` | none |
/// | `offline` | `HF_HUB_OFFLINE` | off |
/// | `timeout` | `HF_HUB_DOWNLOAD_TIMEOUT` (seconds) | 10 s |
/// | `max_retries` | `PEFTKIT_HUB_MAX_RETRIES` | 5 |
/// | `retry_wait` | `PEFTKIT_HUB_RETRY_WAIT_MS` (first wait; doubles, at most 8×) | 1 s |
///
/// ```
/// let s = peftkit_data::HubSettings::from_env();
/// assert!(s.endpoint.starts_with("http"));
/// ```
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The cache directory (`.../hub`), laid out as `huggingface_hub` lays it out.
    pub cache_dir: PathBuf,
    /// The access token sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Where a token file is looked for (named in errors about access).
    pub token_path: PathBuf,
    /// Cache only, no network.
    pub offline: bool,
    /// Connect and read timeout of each request.
    pub timeout: Duration,
    /// Retries of a failed transfer (5xx, 429, a reset or cut connection, a bad checksum).
    pub max_retries: u32,
    /// The first wait between retries; it doubles each time, up to 8×.
    pub retry_wait: Duration,
    /// Progress bars for large downloads (on a terminal).
    pub progress: bool,
}

impl HubSettings {
    /// The settings from the environment (see the table above).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings from variables looked up by `var` (the environment in
    /// [`HubSettings::from_env`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let env_nonempty = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let home = env_nonempty("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let base = env_nonempty("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| env_nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from(".cache"));
                base.join("huggingface")
            });
        let cache_dir = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token_path = env_nonempty("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = env_nonempty("HF_TOKEN")
            .or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                std::fs::read_to_string(&token_path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let secs = |name: &str, default: f64| {
            env_nonempty(name)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default)
        };
        Self {
            endpoint: env_nonempty("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            token,
            token_path,
            offline: flag(var("HF_HUB_OFFLINE")),
            timeout: Duration::from_secs_f64(secs("HF_HUB_DOWNLOAD_TIMEOUT", 10.0)),
            max_retries: env_nonempty("PEFTKIT_HUB_MAX_RETRIES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5),
            retry_wait: Duration::from_secs_f64(secs("PEFTKIT_HUB_RETRY_WAIT_MS", 1000.0) / 1e3),
            progress: PROGRESS.load(Ordering::Relaxed),
        }
    }

    /// These settings with another cache directory.
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache_dir = dir;
        self
    }

    /// The wait before retry number `attempt` (1-based): `retry_wait × 2^(attempt-1)`, at most
    /// 8 × `retry_wait`, as `huggingface_hub`'s `http_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry_wait * 2u32.pow(attempt.saturating_sub(1).min(3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_eight_times() {
        let s = HubSettings {
            retry_wait: Duration::from_millis(100),
            ..HubSettings::from_env()
        };
        let waits: Vec<u128> = (1..=6).map(|a| s.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 800, 800]);
    }

    #[test]
    fn variables_are_read_as_huggingface_hub_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_string_lossy().to_string();
        std::fs::write(tmp.path().join("token"), "hf_file_token\n").unwrap();
        let vars = |pairs: &'static [(&'static str, &'static str)], home: String| {
            move |name: &str| {
                if name == "HF_HOME" {
                    return Some(home.clone());
                }
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = HubSettings::from_vars(vars(&[], home.clone()));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.cache_dir, tmp.path().join("hub"));
        assert_eq!(s.token.as_deref(), Some("hf_file_token"));
        assert!(!s.offline);
        assert_eq!((s.max_retries, s.retry_wait.as_millis()), (5, 1000));
        let s = HubSettings::from_vars(vars(
            &[
                ("HF_TOKEN", "hf_env"),
                ("HF_ENDPOINT", "http://127.0.0.1:9/"),
                ("HF_HUB_OFFLINE", "yes"),
                ("HF_HUB_CACHE", "/elsewhere"),
                ("PEFTKIT_HUB_RETRY_WAIT_MS", "20"),
                ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
            ],
            home,
        ));
        assert_eq!(s.token.as_deref(), Some("hf_env"));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert!(s.offline);
        assert_eq!(s.cache_dir, PathBuf::from("/elsewhere"));
        assert_eq!(s.retry_wait.as_millis(), 20);
        assert_eq!(s.timeout.as_millis(), 2500);
    }
}
