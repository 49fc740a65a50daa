use std::path::PathBuf;

/// Everything that can go wrong while finding and reading a dataset. Every variant names the
/// file or dataset and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid parquet (truncated, corrupt, not parquet at all).
    #[error("{}: not a readable parquet file: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The parquet reader's error.
        source: parquet::errors::ParquetError,
    },
    /// A parquet file's data could not be decoded.
    #[error("{}: corrupt parquet data: {source}", path.display())]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The arrow error.
        source: arrow::error::ArrowError,
    },
    /// A requested column is not in the file.
    #[error("{}: no column `{column}` (the file has: {})", path.display(), available.join(", "))]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The columns the file has.
        available: Vec<String>,
    },
    /// A column has the wrong type.
    #[error("{}: column `{column}` is {found}, expected {expected}", path.display())]
    ColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What was expected (`string`, `integer`).
        expected: &'static str,
        /// The arrow type found.
        found: String,
    },
    /// A null in the text or label column.
    #[error("{}: row {row}: column `{column}` is null", path.display())]
    NullValue {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The row (0-based, within the file).
        row: usize,
    },
    /// A label is negative or not below the number of classes.
    #[error("{}: row {row}: label {label} is out of range 0..{num_labels}{}", path.display(),
        if *label == -1 { " (-1 marks an unlabelled row: GLUE test splits have no labels)" } else { "" })]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The row (0-based, within the file).
        row: usize,
        /// The label found.
        label: i64,
        /// The number of classes.
        num_labels: usize,
    },
    /// The dataset's `huggingface` schema metadata could not be parsed.
    #[error("{}: malformed `huggingface` schema metadata: {message}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A split has no rows.
    #[error("{what} has no rows")]
    EmptySplit {
        /// The split or file.
        what: String,
    },
    /// Two splits with different label names were concatenated.
    #[error("cannot concatenate splits with different labels: {left:?} vs {right:?}")]
    LabelMismatch {
        /// The first split's label names.
        left: Vec<String>,
        /// The second split's label names.
        right: Vec<String>,
    },
    /// The dataset has no files for the split.
    #[error("dataset `{dataset}` has no split `{split}`{}", if available.is_empty() { String::new() } else { format!(" (it has: {})", available.join(", ")) })]
    SplitNotFound {
        /// The dataset.
        dataset: String,
        /// The split asked for.
        split: String,
        /// The splits found.
        available: Vec<String>,
    },
    /// The dataset has no such config, or needs one.
    #[error("dataset `{dataset}`: {}", match config { Some(c) => format!("no config `{c}` (it has: {})", available.join(", ")), None => format!("a config is required (it has: {})", available.join(", ")) })]
    ConfigNotFound {
        /// The dataset.
        dataset: String,
        /// The config asked for (`None`: none given but one is needed).
        config: Option<String>,
        /// The configs found.
        available: Vec<String>,
    },
    /// A model repository lacks files peftkit needs (offline, or not on the hub at all).
    #[error("model `{model}`: {} not found in {location}{hint}", missing.join(", "))]
    ModelFilesMissing {
        /// The model id or path.
        model: String,
        /// The missing files.
        missing: Vec<String>,
        /// Where it looked.
        location: String,
        /// What to do about it.
        hint: String,
    },
    /// A hub repository could not be used, for a reason other than those below (e.g. not in the
    /// cache while offline).
    #[error("{what}: {message}")]
    Hub {
        /// What was being fetched: ``model `gpt2` `` or ``dataset `nyu-mll/glue` ``.
        what: String,
        /// What went wrong, with a hint.
        message: String,
    },
    /// The hub has no such repository (or hides a private one from a request without a token).
    #[error("{what} was not found on the hub {endpoint}: check the id{hint}")]
    HubRepoNotFound {
        /// What was being fetched.
        what: String,
        /// The hub's URL.
        endpoint: String,
        /// What to do about it.
        hint: String,
    },
    /// The repository is private or gated and the request was refused (HTTP 401 / 403).
    #[error("{what} is private or gated (HTTP {status}): {hint}")]
    HubAccessDenied {
        /// What was being fetched.
        what: String,
        /// 401 or 403.
        status: u16,
        /// What to do about it (the token variable and file, or accepting the conditions).
        hint: String,
    },
    /// The repository has no such branch, tag or commit.
    #[error("{what} has no revision `{revision}` on the hub")]
    HubRevisionNotFound {
        /// What was being fetched.
        what: String,
        /// The revision asked for.
        revision: String,
    },
    /// The repository has no such file at that revision.
    #[error("{what} has no file `{file}` at revision `{revision}`")]
    HubFileNotFound {
        /// What was being fetched.
        what: String,
        /// The file.
        file: String,
        /// The revision.
        revision: String,
    },
    /// The hub could not be reached (connection refused, name not resolved, timeouts, or 5xx
    /// answers after every retry) and the cache could not stand in.
    #[error("{what}: cannot reach the hub {endpoint} ({message}){hint}")]
    HubUnreachable {
        /// What was being fetched.
        what: String,
        /// The hub's URL.
        endpoint: String,
        /// The last failure.
        message: String,
        /// What to do about it.
        hint: String,
    },
    /// A file's transfer failed after every retry, or what arrived is not what the hub announced.
    #[error("{what}: downloading `{file}` failed after {attempts} attempt(s): {message}")]
    HubDownload {
        /// What was being fetched.
        what: String,
        /// The file.
        file: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
