//! Labelled text splits for fine-tuning sequence classifiers, read from Hugging Face hub
//! parquet (through the standard hub cache) or from local parquet files.
//!
//! A dataset argument is a hub id (`nyu-mll/glue` with config `sst2`, `stanfordnlp/sst2`,
//! `cornell-movie-review-data/rotten_tomatoes`, `dair-ai/emotion` with config `split`,
//! `stanfordnlp/imdb` with config `plain_text`) or a local directory / parquet file. Hub ids
//! resolve with the cache that Python's `huggingface_hub` uses (`HF_HOME`, `HF_HUB_OFFLINE`,
//! `HF_ENDPOINT`, `HF_TOKEN`), so files downloaded by either are found by both; downloads are
//! retried with backoff, resumed from their `.incomplete` file and verified against the hub's
//! size and sha256 ([`HubSettings`]).
//!
//! ```no_run
//! use peftkit_data::{DatasetSpec, load_split};
//!
//! let spec = DatasetSpec::new("nyu-mll/glue").with_config("sst2");
//! let train = load_split(&spec, "train")?;
//! let stats = train.label_stats();
//! println!("{} rows, {:.2} % positive", train.len(), 100.0 * stats.fractions[1]);
//! # Ok::<(), peftkit_data::DataError>(())
//! ```

#![warn(missing_docs)]

mod error;
mod hub;
mod page_check;
mod read;
mod split;

pub use error::DataError;
pub use hub::{
    hub_offline, resolve_files, resolve_model, resolve_model_with, select_split_files,
    set_download_progress, HubSettings, HubSource, RepoKind, TOKENIZER_FILES,
};
pub use read::{read_parquet, ColumnNames};
pub use split::{LabelStats, Split};

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Where a dataset comes from and how to read it, like the arguments of
/// `datasets.load_dataset(path, name, revision=...)` plus the column names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    /// A hub dataset id (`org/name`) or a local directory or parquet file.
    pub dataset: String,
    /// The dataset config (`sst2` of `nyu-mll/glue`, `split` of `dair-ai/emotion`).
    pub config: Option<String>,
    /// A hub revision (branch, tag or commit); `main` when absent.
    pub revision: Option<String>,
    /// The text column; when absent the first of `text`, `sentence` present is used.
    pub text_column: Option<String>,
    /// The label column (`label` by default).
    pub label_column: Option<String>,
}

impl DatasetSpec {
    /// A spec for a hub id or local path with default columns.
    pub fn new(dataset: impl Into<String>) -> Self {
        Self {
            dataset: dataset.into(),
            config: None,
            revision: None,
            text_column: None,
            label_column: None,
        }
    }

    /// Sets the dataset config.
    pub fn with_config(mut self, config: impl Into<String>) -> Self {
        self.config = Some(config.into());
        self
    }

    /// Sets the text column.
    pub fn with_text_column(mut self, column: impl Into<String>) -> Self {
        self.text_column = Some(column.into());
        self
    }

    /// Sets the label column.
    pub fn with_label_column(mut self, column: impl Into<String>) -> Self {
        self.label_column = Some(column.into());
        self
    }

    /// Sets the hub revision.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    fn columns(&self) -> ColumnNames {
        ColumnNames {
            text: self.text_column.clone(),
            label: self.label_column.clone().unwrap_or_else(|| "label".into()),
        }
    }
}

/// Loads one split (`train`, `validation`, `test`, ...) of a dataset: every parquet file of the
/// split, in file order, as one [`Split`].
pub fn load_split(spec: &DatasetSpec, split: &str) -> Result<Split> {
    let files = resolve_files(spec, split)?;
    let columns = spec.columns();
    let mut parts = files
        .iter()
        .map(|f| read_parquet(f, &columns))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let mut out = parts.next().ok_or_else(|| DataError::SplitNotFound {
        dataset: spec.dataset.clone(),
        split: split.into(),
        available: vec![],
    })?;
    for part in parts {
        out = out.concat(&part)?;
    }
    if out.is_empty() {
        return Err(DataError::EmptySplit {
            what: format!("{} split `{split}`", spec.dataset),
        });
    }
    Ok(out)
}

/// Loads several splits and concatenates them in order (rotten_tomatoes' evaluation set is
/// `validation` + `test`). A spec like `"validation+test"` is accepted too.
pub fn load_splits(spec: &DatasetSpec, splits: &[&str]) -> Result<Split> {
    let names: Vec<&str> = splits
        .iter()
        .flat_map(|s| s.split('+'))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut iter = names.iter();
    let first = iter.next().ok_or_else(|| DataError::EmptySplit {
        what: format!("{}: no split named", spec.dataset),
    })?;
    let mut out = load_split(spec, first)?;
    for name in iter {
        out = out.concat(&load_split(spec, name)?)?;
    }
    Ok(out)
}
