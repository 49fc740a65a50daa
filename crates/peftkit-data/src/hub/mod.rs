//! Finding a split's parquet files and a model's files: in a local directory, in the hub cache,
//! or on the hub (downloaded into the cache that Python's `huggingface_hub` uses too).

mod cache;
mod client;
mod select;
mod settings;

use crate::{DataError, DatasetSpec, Result};
use cache::RepoCache;
use client::HubClient;
pub use select::select_split_files;
pub use settings::{hub_offline, set_download_progress, HubSettings};
use std::path::{Path, PathBuf};

/// The two kinds of hub repository peftkit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoKind {
    /// A model repository.
    Model,
    /// A dataset repository.
    Dataset,
}

impl std::fmt::Display for RepoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        })
    }
}

/// One hub repository at one revision, with the settings to reach it.
#[derive(Debug, Clone)]
struct HubRepo {
    kind: RepoKind,
    id: String,
    revision: String,
    settings: HubSettings,
}

impl HubRepo {
    fn cache(&self) -> RepoCache {
        RepoCache::new(&self.settings.cache_dir, self.kind, &self.id)
    }

    fn what(&self) -> String {
        format!("{} `{}`", self.kind, self.id)
    }

    fn cached_files(&self) -> Option<(PathBuf, Vec<String>)> {
        let dir = self.cache().snapshot(&self.revision)?;
        let mut files = Vec::new();
        list_files(&dir, &dir, &mut files);
        Some((dir, files))
    }

    /// Chooses files from the repository's listing and returns their local paths: from the cache
    /// when offline, or when the hub is unreachable and the cache has the revision; otherwise
    /// from the hub, downloading what the cache lacks. `from_cache` turns a cached snapshot and
    /// its files into the answer (and says what is missing from it).
    fn resolve(
        &self,
        choose: impl Fn(&[String]) -> Result<Vec<String>>,
        from_cache: impl Fn(&Path, &[String]) -> Result<Vec<PathBuf>>,
    ) -> Result<Vec<PathBuf>> {
        if self.settings.offline {
            return match self.cached_files() {
                Some((dir, files)) => from_cache(&dir, &files),
                None => Err(DataError::Hub {
                    what: self.what(),
                    message: format!(
                        "not in the hub cache {} and HF_HUB_OFFLINE is set (download it once with the hub reachable, or set HF_HOME to a cache that has it)",
                        self.settings.cache_dir.display()
                    ),
                }),
            };
        }
        let client = HubClient::new(&self.settings, self.kind, &self.id);
        let info = match client.info(&self.revision) {
            Ok(info) => info,
            Err(err @ DataError::HubUnreachable { .. }) => {
                // Like huggingface_hub: an unreachable hub falls back to the cache.
                let Some((dir, files)) = self.cached_files() else {
                    return Err(err);
                };
                tracing::warn!(what = %self.what(), error = %err, "hub unreachable, using the cached snapshot");
                return from_cache(&dir, &files);
            }
            Err(err) => return Err(err),
        };
        let cache = self.cache();
        choose(&info.files)?
            .iter()
            .map(|f| client.fetch(&cache, &self.revision, &info.sha, f))
            .collect()
    }
}

/// A hub dataset repository, resolved through the standard cache.
#[derive(Debug, Clone)]
pub struct HubSource {
    repo: HubRepo,
}

impl HubSource {
    /// A dataset repository at a revision (`main` when `None`), with the settings of the
    /// environment ([`HubSettings::from_env`]).
    pub fn new(dataset: &str, revision: Option<&str>) -> Self {
        Self {
            repo: HubRepo {
                kind: RepoKind::Dataset,
                id: dataset.to_string(),
                revision: revision.unwrap_or("main").to_string(),
                settings: HubSettings::from_env(),
            },
        }
    }

    /// Uses this cache directory (the `hub/` directory of an `HF_HOME`).
    pub fn with_cache(mut self, cache_dir: PathBuf) -> Self {
        self.repo.settings.cache_dir = cache_dir;
        self
    }

    /// Uses these settings (endpoint, cache, token, retries) instead of the environment's.
    pub fn with_settings(mut self, settings: HubSettings) -> Self {
        self.repo.settings = settings;
        self
    }

    /// The URL a file is downloaded from.
    pub fn url(&self, filename: &str) -> Result<String> {
        let r = &self.repo;
        Ok(HubClient::new(&r.settings, r.kind, &r.id).file_url(&r.revision, filename))
    }

    /// The snapshot directory of the cached revision, if the revision is in the cache.
    pub fn cached_snapshot(&self) -> Option<PathBuf> {
        self.repo.cache().snapshot(&self.repo.revision)
    }

    /// The files of the cached snapshot, relative to it, with `/` separators.
    pub fn cached_files(&self) -> Option<(PathBuf, Vec<String>)> {
        self.repo.cached_files()
    }

    /// Resolves one split: from the cache when offline (or when the hub cannot be reached and the
    /// cache has the revision), otherwise lists the repository on the hub and downloads the
    /// split's files into the cache (retrying, resuming and verifying them).
    pub fn resolve(&self, config: Option<&str>, split: &str) -> Result<Vec<PathBuf>> {
        let id = &self.repo.id;
        self.repo.resolve(
            |files| select_split_files(id, files, config, split),
            |dir, files| {
                let chosen = select_split_files(id, files, config, split)?;
                Ok(chosen.iter().map(|f| dir.join(f)).collect())
            },
        )
    }
}

/// The tokenizer files of a model repository (whichever exist).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
];

fn weight_files(files: &[String]) -> Option<Vec<String>> {
    if files.iter().any(|f| f == "model.safetensors") {
        return Some(vec!["model.safetensors".into()]);
    }
    if files.iter().any(|f| f == "model.safetensors.index.json") {
        let mut v: Vec<String> = files
            .iter()
            .filter(|f| f.starts_with("model-") && f.ends_with(".safetensors"))
            .cloned()
            .collect();
        v.insert(0, "model.safetensors.index.json".into());
        return Some(v);
    }
    None
}

/// A model argument (hub id like `gpt2` / `FacebookAI/roberta-base`, or a local directory) as a
/// local directory holding its config, tokenizer files and, with `weights`, its safetensors
/// weights. Hub ids go through the standard cache (`HF_HOME`, `HF_HUB_OFFLINE`) exactly like
/// datasets; missing files are an error naming them and where they were looked for.
pub fn resolve_model(model: &str, revision: Option<&str>, weights: bool) -> Result<PathBuf> {
    resolve_model_with(&HubSettings::from_env(), model, revision, weights)
}

/// [`resolve_model`] with explicit hub settings.
pub fn resolve_model_with(
    settings: &HubSettings,
    model: &str,
    revision: Option<&str>,
    weights: bool,
) -> Result<PathBuf> {
    let path = Path::new(model);
    let missing_err =
        |missing: Vec<String>, location: String, hint: &str| DataError::ModelFilesMissing {
            model: model.into(),
            missing,
            location,
            hint: hint.into(),
        };
    if path.is_dir() {
        let mut files = Vec::new();
        list_files(path, path, &mut files);
        let mut missing = Vec::new();
        if !files.iter().any(|f| f == "config.json") {
            missing.push("config.json".to_string());
        }
        if weights && weight_files(&files).is_none() {
            missing.push("model.safetensors (or model.safetensors.index.json)".into());
        }
        if !missing.is_empty() {
            return Err(missing_err(missing, path.display().to_string(), ""));
        }
        return Ok(path.to_path_buf());
    }
    let repo = HubRepo {
        kind: RepoKind::Model,
        id: model.to_string(),
        revision: revision.unwrap_or("main").to_string(),
        settings: settings.clone(),
    };
    let offline_hint = " (HF_HUB_OFFLINE is set or the hub is unreachable: download the model once with hub access, or pass a local checkpoint directory; peftkit loads safetensors weights only)";
    if settings.offline && repo.cached_files().is_none() {
        return Err(missing_err(
            vec!["the repository".into()],
            format!("the hub cache {}", settings.cache_dir.display()),
            offline_hint,
        ));
    }
    let paths = repo.resolve(
        |files| {
            let mut wanted: Vec<String> = std::iter::once(&"config.json")
                .chain(TOKENIZER_FILES)
                .filter(|f| files.iter().any(|g| g == *f))
                .map(|f| f.to_string())
                .collect();
            if !wanted.iter().any(|f| f == "config.json") {
                return Err(missing_err(
                    vec!["config.json".into()],
                    format!("the hub repository `{model}`"),
                    "",
                ));
            }
            if weights {
                match weight_files(files) {
                    Some(w) => wanted.extend(w),
                    None => {
                        return Err(missing_err(
                            vec!["model.safetensors".into()],
                            format!("the hub repository `{model}`"),
                            " (peftkit loads safetensors weights only)",
                        ))
                    }
                }
            }
            Ok(wanted)
        },
        |dir, files| {
            let mut missing = Vec::new();
            if !files.iter().any(|f| f == "config.json") {
                missing.push("config.json".to_string());
            }
            if weights && weight_files(files).is_none() {
                missing.push("model.safetensors (the weights)".into());
            }
            if missing.is_empty() {
                Ok(vec![dir.join("config.json")])
            } else {
                Err(missing_err(
                    missing,
                    format!("the hub cache {}", dir.display()),
                    offline_hint,
                ))
            }
        },
    )?;
    // config.json is first in both cases: its directory is the snapshot.
    Ok(paths
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            // Temporary names of an interrupted snapshot link are not files of the repository.
            if !name
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
            {
                out.push(name);
            }
        }
    }
}

/// The parquet files of one split of a dataset spec: a local parquet file, a local directory laid
/// out like a hub repository, or a hub id.
pub fn resolve_files(spec: &DatasetSpec, split: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(&spec.dataset);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        let mut files = Vec::new();
        list_files(path, path, &mut files);
        let chosen = select_split_files(&spec.dataset, &files, spec.config.as_deref(), split)?;
        return Ok(chosen.iter().map(|f| path.join(f)).collect());
    }
    if spec.dataset.starts_with('.')
        || spec.dataset.starts_with('/')
        || spec.dataset.ends_with(".parquet")
    {
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    HubSource::new(&spec.dataset, spec.revision.as_deref()).resolve(spec.config.as_deref(), split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_urls_follow_the_hub_layout() {
        let src = HubSource::new("stanfordnlp/sst2", None).with_cache(std::env::temp_dir());
        let url = src.url("data/train-00000-of-00001.parquet").unwrap();
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        assert_eq!(url, format!("{endpoint}/datasets/stanfordnlp/sst2/resolve/main/data/train-00000-of-00001.parquet"));
        let src = HubSource::new(
            "nyu-mll/glue",
            Some("bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"),
        )
        .with_cache(std::env::temp_dir());
        assert!(src.url("sst2/train-00000-of-00001.parquet").unwrap().ends_with(
            "/datasets/nyu-mll/glue/resolve/bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c/sst2/train-00000-of-00001.parquet"
        ));
    }

    #[test]
    fn cache_snapshot_lookup_reads_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("datasets--org--name");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123/data")).unwrap();
        std::fs::write(
            repo.join("snapshots/abc123/data/train-00000-of-00001.parquet"),
            b"x",
        )
        .unwrap();
        let src = HubSource::new("org/name", None).with_cache(tmp.path().to_path_buf());
        let (dir, files) = src.cached_files().unwrap();
        assert_eq!(dir, repo.join("snapshots/abc123"));
        assert_eq!(files, vec!["data/train-00000-of-00001.parquet"]);
        // A commit hash as revision needs no ref; an unknown revision is not cached.
        assert!(HubSource::new("org/name", Some("abc123"))
            .with_cache(tmp.path().into())
            .cached_snapshot()
            .is_some());
        assert!(HubSource::new("org/name", Some("v2"))
            .with_cache(tmp.path().into())
            .cached_snapshot()
            .is_none());
    }
}
