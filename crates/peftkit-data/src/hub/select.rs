//! Which parquet files of a dataset repository hold one split of one config.

use crate::{DataError, Result};
use std::collections::BTreeSet;

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
}
