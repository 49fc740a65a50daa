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
    /// The dataset is neither a local path nor in the hub cache, and the hub cannot be reached.
    #[error("dataset `{dataset}`: {message}")]
    Hub {
        /// The dataset.
        dataset: String,
        /// What went wrong, with a hint.
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
