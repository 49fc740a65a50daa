//! Finding a split's parquet files: in a local directory, in the hub cache, or on the hub.

use crate::{DataError, DatasetSpec, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// True when `HF_HUB_OFFLINE` asks for cache-only operation (`1`, `true`, `yes`, `on`), as in
/// Python's `huggingface_hub`.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Picks the parquet files of one split of one config from a repository's file list, following
/// the layouts the hub uses for parquet datasets:
///
/// - `<config>/<split>-00000-of-00001.parquet` (`nyu-mll/glue`, `dair-ai/emotion`, `stanfordnlp/imdb`)
/// - `<config>/<split>/0000.parquet` (the hub's parquet conversion branch)
/// - `data/<split>-00000-of-00001.parquet` (a default config, `stanfordnlp/sst2`)
/// - `<split>.parquet` or `<split>-*.parquet` at the root (`cornell-movie-review-data/rotten_tomatoes`)
///
/// Returns the matching paths sorted (shards in order). `Err` explains which configs or splits
/// exist when nothing matches.
pub fn select_split_files(
    dataset: &str,
    files: &[String],
    config: Option<&str>,
    split: &str,
) -> Result<Vec<String>> {
    let parquet: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.ends_with(".parquet"))
        .collect();
    // Directories that hold parquet files directly or one level down are configs, except `data`.
    let configs: BTreeSet<&str> = parquet
        .iter()
        .filter_map(|f| f.split_once('/').map(|(dir, _)| dir))
        .filter(|d| *d != "data")
        .collect();
    let config = config.filter(|c| *c != "default");
    let prefix = match config {
        Some(c) if configs.contains(c) => format!("{c}/"),
        Some(c) => {
            return Err(DataError::ConfigNotFound {
                dataset: dataset.into(),
                config: Some(c.into()),
                available: configs.iter().map(|s| s.to_string()).collect(),
            })
        }
        None => {
            let default_files = parquet
                .iter()
                .any(|f| f.starts_with("data/") || !f.contains('/'));
            if !default_files && !configs.is_empty() {
                return Err(DataError::ConfigNotFound {
                    dataset: dataset.into(),
                    config: None,
                    available: configs.iter().map(|s| s.to_string()).collect(),
                });
            }
            String::new()
        }
    };
    let mut found_splits = BTreeSet::new();
    let mut matches: Vec<String> = Vec::new();
    for f in &parquet {
        let rest = if prefix.is_empty() {
            f.strip_prefix("data/").unwrap_or(f)
        } else {
            match f.strip_prefix(prefix.as_str()) {
                Some(r) => r,
                None => continue,
            }
        };
        if let Some(name) = split_of(rest) {
            if name == split {
                matches.push(f.to_string());
            }
            found_splits.insert(name.to_string());
        }
    }
    if matches.is_empty() {
        return Err(DataError::SplitNotFound {
            dataset: dataset.into(),
            split: split.into(),
            available: found_splits.into_iter().collect(),
        });
    }
    matches.sort();
    Ok(matches)
}

/// The split a file (relative to its config directory) belongs to: `train-00000-of-00001.parquet`,
/// `train.parquet` and `train/0000.parquet` all belong to `train`.
fn split_of(rest: &str) -> Option<&str> {
    if let Some((dir, file)) = rest.split_once('/') {
        return (!file.contains('/')).then_some(dir);
    }
    let stem = rest.strip_suffix(".parquet")?;
    // `<split>-00000-of-00001`: strip the shard suffix.
    Some(stem.split_once("-0").map_or(stem, |(name, _)| name))
}

/// A hub dataset repository, resolved through `hf-hub` and the standard cache.
#[derive(Debug, Clone)]
pub struct HubSource {
    id: String,
    repo: Repo,
    cache: Cache,
}

impl HubSource {
    /// A dataset repository at a revision (`main` when `None`), with the cache from `HF_HOME`
    /// (or `~/.cache/huggingface`).
    pub fn new(dataset: &str, revision: Option<&str>) -> Self {
        let repo = Repo::with_revision(
            dataset.to_string(),
            RepoType::Dataset,
            revision.unwrap_or("main").to_string(),
        );
        Self {
            id: dataset.to_string(),
            repo,
            cache: Cache::from_env(),
        }
    }

    /// Uses this cache directory (the `hub/` directory of an `HF_HOME`).
    pub fn with_cache(mut self, cache_dir: PathBuf) -> Self {
        self.cache = Cache::new(cache_dir);
        self
    }

    /// The URL a file is downloaded from.
    pub fn url(&self, filename: &str) -> Result<String> {
        let api = self.api()?;
        Ok(api.repo(self.repo.clone()).url(filename))
    }

    fn api(&self) -> Result<hf_hub::api::sync::Api> {
        let mut builder =
            hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone()).with_progress(false);
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().map_err(|e| DataError::Hub {
            dataset: self.id.clone(),
            message: format!("cannot set up the hub client: {e}"),
        })
    }

    /// The snapshot directory of the cached revision, if the revision is in the cache.
    pub fn cached_snapshot(&self) -> Option<PathBuf> {
        let repo_dir = self.cache.path().join(self.repo.folder_name());
        let revision = self.repo.revision();
        // A ref name (`main`) points to a commit through `refs/`; a commit hash is used directly.
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| revision.to_string());
        let dir = repo_dir.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }

    /// The files of the cached snapshot, relative to it, with `/` separators.
    pub fn cached_files(&self) -> Option<(PathBuf, Vec<String>)> {
        let dir = self.cached_snapshot()?;
        let mut files = Vec::new();
        list_files(&dir, &dir, &mut files);
        Some((dir, files))
    }

    /// Resolves one split: from the cache when offline (or when the hub cannot be reached and the
    /// cache has the revision), otherwise lists the repository on the hub and downloads the
    /// split's files into the cache.
    pub fn resolve(&self, config: Option<&str>, split: &str) -> Result<Vec<PathBuf>> {
        let id = self.id.clone();
        if hub_offline() {
            let (dir, files) = self.cached_files().ok_or_else(|| DataError::Hub {
                dataset: id.clone(),
                message: format!(
                    "not in the hub cache {} and HF_HUB_OFFLINE is set (download it once with the hub reachable, or set HF_HOME to a cache that has it)",
                    self.cache.path().display()
                ),
            })?;
            let chosen = select_split_files(&id, &files, config, split)?;
            return Ok(chosen.iter().map(|f| dir.join(f)).collect());
        }
        let api = self.api()?.repo(self.repo.clone());
        match api.info() {
            Ok(info) => {
                let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
                let chosen = select_split_files(&id, &files, config, split)?;
                chosen
                    .iter()
                    .map(|f| {
                        tracing::info!(dataset = %id, file = %f, "fetching from the hub");
                        api.get(f).map_err(|e| DataError::Hub {
                            dataset: id.clone(),
                            message: format!("downloading {f}: {e}"),
                        })
                    })
                    .collect()
            }
            Err(err) => {
                // Like huggingface_hub: a connection failure falls back to the cache.
                if let Some((dir, files)) = self.cached_files() {
                    tracing::warn!(dataset = %id, error = %err, "hub unreachable, using the cached snapshot");
                    let chosen = select_split_files(&id, &files, config, split)?;
                    return Ok(chosen.iter().map(|f| dir.join(f)).collect());
                }
                Err(DataError::Hub {
                    dataset: id,
                    message: format!(
                        "cannot list the repository on the hub ({err}) and it is not in the cache {}",
                        self.cache.path().display()
                    ),
                })
            }
        }
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
    let repo = Repo::with_revision(
        model.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let source = HubSource {
        id: model.to_string(),
        repo: repo.clone(),
        cache: Cache::from_env(),
    };
    let offline_hint = " (HF_HUB_OFFLINE is set or the hub is unreachable: download the model once with hub access, or pass a local checkpoint directory; peftkit loads safetensors weights only)";
    let check_cached = |dir: &Path, files: &[String]| -> Result<PathBuf> {
        let mut missing = Vec::new();
        if !files.iter().any(|f| f == "config.json") {
            missing.push("config.json".to_string());
        }
        if weights && weight_files(files).is_none() {
            missing.push("model.safetensors (the weights)".into());
        }
        if missing.is_empty() {
            Ok(dir.to_path_buf())
        } else {
            Err(missing_err(
                missing,
                format!("the hub cache {}", dir.display()),
                offline_hint,
            ))
        }
    };
    if hub_offline() {
        let (dir, files) = source.cached_files().ok_or_else(|| {
            missing_err(
                vec!["the repository".into()],
                format!("the hub cache {}", source.cache.path().display()),
                offline_hint,
            )
        })?;
        return check_cached(&dir, &files);
    }
    let api = source.api()?.repo(repo);
    let files: Vec<String> = match api.info() {
        Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
        Err(err) => {
            tracing::warn!(model, error = %err, "hub unreachable, using the cache");
            let (dir, files) = source.cached_files().ok_or_else(|| DataError::Hub {
                dataset: model.into(),
                message: format!(
                    "cannot reach the hub ({err}) and the model is not in the cache {}",
                    source.cache.path().display()
                ),
            })?;
            return check_cached(&dir, &files);
        }
    };
    let mut wanted: Vec<String> = std::iter::once(&"config.json")
        .chain(TOKENIZER_FILES)
        .filter(|f| files.iter().any(|g| g == *f))
        .map(|f| f.to_string())
        .collect();
    if weights {
        match weight_files(&files) {
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
    let mut dir = None;
    for f in &wanted {
        let local = api.get(f).map_err(|e| DataError::Hub {
            dataset: model.into(),
            message: format!("downloading {f}: {e}"),
        })?;
        dir = local
            .parent()
            .map(Path::to_path_buf)
            .filter(|_| !f.contains('/'));
    }
    dir.ok_or_else(|| {
        missing_err(
            vec!["config.json".into()],
            format!("the hub repository `{model}`"),
            "",
        )
    })
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
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
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

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn glue_layout_needs_its_config() {
        let f = files(&[
            "sst2/train-00000-of-00001.parquet",
            "sst2/validation-00000-of-00001.parquet",
            "cola/train-00000-of-00001.parquet",
            "README.md",
        ]);
        let got = select_split_files("nyu-mll/glue", &f, Some("sst2"), "validation").unwrap();
        assert_eq!(got, vec!["sst2/validation-00000-of-00001.parquet"]);
        let err = select_split_files("nyu-mll/glue", &f, None, "train").unwrap_err();
        assert!(
            err.to_string()
                .contains("a config is required (it has: cola, sst2)"),
            "{err}"
        );
        let err = select_split_files("nyu-mll/glue", &f, Some("mnli"), "train").unwrap_err();
        assert!(err.to_string().contains("no config `mnli`"), "{err}");
        let err = select_split_files("nyu-mll/glue", &f, Some("sst2"), "test").unwrap_err();
        assert!(
            err.to_string()
                .contains("no split `test` (it has: train, validation)"),
            "{err}"
        );
    }

    #[test]
    fn default_config_layouts() {
        let sst2 = files(&[
            "data/train-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
        ]);
        assert_eq!(
            select_split_files("stanfordnlp/sst2", &sst2, None, "train").unwrap(),
            vec!["data/train-00000-of-00001.parquet"]
        );
        let rt = files(&[
            "train.parquet",
            "validation.parquet",
            "test.parquet",
            ".gitattributes",
        ]);
        assert_eq!(
            select_split_files("rt", &rt, None, "test").unwrap(),
            vec!["test.parquet"]
        );
        assert_eq!(
            select_split_files("rt", &rt, Some("default"), "train").unwrap(),
            vec!["train.parquet"]
        );
    }

    #[test]
    fn shards_and_conversion_branch() {
        let f = files(&[
            "plain_text/train-00001-of-00002.parquet",
            "plain_text/train-00000-of-00002.parquet",
            "plain_text/test-00000-of-00001.parquet",
            "split/validation/0000.parquet",
            "split/validation/0001.parquet",
        ]);
        assert_eq!(
            select_split_files("imdb", &f, Some("plain_text"), "train").unwrap(),
            vec![
                "plain_text/train-00000-of-00002.parquet",
                "plain_text/train-00001-of-00002.parquet"
            ]
        );
        assert_eq!(
            select_split_files("x", &f, Some("split"), "validation").unwrap(),
            vec![
                "split/validation/0000.parquet",
                "split/validation/0001.parquet"
            ]
        );
    }

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
