//! Reading a text column and a label column out of a parquet file.

use crate::{DataError, Result, Split};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Int16Type, Int32Type, Int64Type, Int8Type, Schema, UInt16Type, UInt32Type, UInt8Type,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::path::Path;

/// Which columns hold the text and the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames {
    /// The text column; `None` picks the first of `text`, `sentence` that exists.
    pub text: Option<String>,
    /// The label column.
    pub label: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        Self {
            text: None,
            label: "label".into(),
        }
    }
}

const TEXT_CANDIDATES: &[&str] = &["text", "sentence", "review", "content"];

/// The most classes inferred from label values when the file names none.
const MAX_INFERRED_LABELS: i64 = 100_000;

/// Reads one parquet file into a [`Split`]. Label names come from the `ClassLabel` feature in the
/// schema's `huggingface` metadata (as written by `datasets`); without it they are `LABEL_0`,
/// `LABEL_1`, ... as in transformers. Every label must lie in `0..num_labels`.
pub fn read_parquet(path: &Path, columns: &ColumnNames) -> Result<Split> {
    // The parquet reader asserts on some malformed metadata (negative offsets): an error too.
    peftkit_guard::contain(|| read_unguarded(path, columns)).unwrap_or_else(|message| {
        Err(DataError::Parquet {
            path: path.into(),
            source: parquet::errors::ParquetError::General(format!("malformed file ({message})")),
        })
    })
}

fn read_unguarded(path: &Path, columns: &ColumnNames) -> Result<Split> {
    // The whole file in memory: the reader's page headers are then parsed from memory, not by a
    // read call per field (see `page_check`).
    let data = bytes::Bytes::from(std::fs::read(path).map_err(|e| DataError::io(path, e))?);
    let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone()).map_err(|source| {
        DataError::Parquet {
            path: path.into(),
            source,
        }
    })?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let text_col = match &columns.text {
        Some(c) => c.clone(),
        None => TEXT_CANDIDATES
            .iter()
            .find(|c| names.iter().any(|n| n == *c))
            .map(|c| c.to_string())
            .ok_or_else(|| DataError::MissingColumn {
                path: path.into(),
                column: TEXT_CANDIDATES.join("` or `"),
                available: names.clone(),
            })?,
    };
    let index_of = |col: &str| {
        names
            .iter()
            .position(|n| n == col)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.into(),
                column: col.into(),
                available: names.clone(),
            })
    };
    let text_idx = index_of(&text_col)?;
    let label_idx = index_of(&columns.label)?;
    let text_type = schema.field(text_idx).data_type().clone();
    if !matches!(
        text_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(DataError::ColumnType {
            path: path.into(),
            column: text_col,
            expected: "string",
            found: text_type.to_string(),
        });
    }
    let label_type = schema.field(label_idx).data_type().clone();
    if !label_type.is_integer() {
        return Err(DataError::ColumnType {
            path: path.into(),
            column: columns.label.clone(),
            expected: "integer",
            found: label_type.to_string(),
        });
    }
    let label_names = class_label_names(path, &schema, &columns.label)?;

    let leaves: Vec<usize> = (0..builder.parquet_schema().num_columns())
        .filter(|&leaf| {
            let root = builder.parquet_schema().get_column_root_idx(leaf);
            root == text_idx || root == label_idx
        })
        .collect();
    crate::page_check::check_page_headers(&data, builder.metadata(), &leaves).map_err(
        |message| DataError::Parquet {
            path: path.into(),
            source: parquet::errors::ParquetError::General(message),
        },
    )?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [text_idx, label_idx]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|source| DataError::Parquet {
            path: path.into(),
            source,
        })?;
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| DataError::Arrow {
            path: path.into(),
            source,
        })?;
        let offset = texts.len();
        append_texts(path, &batch, &text_col, offset, &mut texts)?;
        append_labels(path, &batch, &columns.label, offset, &mut labels)?;
    }
    if texts.is_empty() {
        return Err(DataError::EmptySplit {
            what: path.display().to_string(),
        });
    }
    let num_labels = match &label_names {
        Some(names) => names.len(),
        // Without class names: 0..=max, as transformers infers num_labels (bounded: a stray
        // huge label must not size a head of billions of classes).
        None => labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| (m.clamp(0, MAX_INFERRED_LABELS) + 1) as usize),
    };
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l as usize >= num_labels)
    {
        return Err(DataError::LabelOutOfRange {
            path: path.into(),
            row,
            label,
            num_labels,
        });
    }
    let label_names =
        label_names.unwrap_or_else(|| (0..num_labels).map(|i| format!("LABEL_{i}")).collect());
    Ok(Split {
        texts,
        labels,
        label_names,
    })
}

fn append_texts(
    path: &Path,
    batch: &RecordBatch,
    column: &str,
    offset: usize,
    out: &mut Vec<String>,
) -> Result<()> {
    let array = batch
        .column_by_name(column)
        .expect("projected column present");
    let null = |row: usize| DataError::NullValue {
        path: path.into(),
        column: column.into(),
        row: offset + row,
    };
    macro_rules! push_all {
        ($arr:expr) => {{
            let arr = $arr;
            for i in 0..arr.len() {
                if arr.is_null(i) {
                    return Err(null(i));
                }
                out.push(arr.value(i).to_string());
            }
        }};
    }
    match array.data_type() {
        DataType::Utf8 => push_all!(array.as_string::<i32>()),
        DataType::LargeUtf8 => push_all!(array.as_string::<i64>()),
        DataType::Utf8View => push_all!(array.as_string_view()),
        other => unreachable!("type checked against the schema: {other}"),
    }
    Ok(())
}

fn append_labels(
    path: &Path,
    batch: &RecordBatch,
    column: &str,
    offset: usize,
    out: &mut Vec<i64>,
) -> Result<()> {
    let array = batch
        .column_by_name(column)
        .expect("projected column present");
    if let Some(i) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(DataError::NullValue {
            path: path.into(),
            column: column.into(),
            row: offset + i,
        });
    }
    macro_rules! push_prim {
        ($t:ty) => {
            out.extend(
                array
                    .as_primitive::<$t>()
                    .values()
                    .iter()
                    .map(|&v| v as i64),
            )
        };
    }
    match array.data_type() {
        DataType::Int64 => push_prim!(Int64Type),
        DataType::Int32 => push_prim!(Int32Type),
        DataType::Int16 => push_prim!(Int16Type),
        DataType::Int8 => push_prim!(Int8Type),
        DataType::UInt32 => push_prim!(UInt32Type),
        DataType::UInt16 => push_prim!(UInt16Type),
        DataType::UInt8 => push_prim!(UInt8Type),
        other => {
            return Err(DataError::ColumnType {
                path: path.into(),
                column: column.into(),
                expected: "integer (at most 32-bit unsigned)",
                found: other.to_string(),
            })
        }
    }
    Ok(())
}

/// The `ClassLabel` names of `column` from the schema's `huggingface` metadata, if present.
fn class_label_names(path: &Path, schema: &Schema, column: &str) -> Result<Option<Vec<String>>> {
    let Some(meta) = schema.metadata().get("huggingface") else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(meta).map_err(|e| DataError::Metadata {
        path: path.into(),
        message: e.to_string(),
    })?;
    let feature = value
        .pointer("/info/features")
        .or_else(|| value.get("features"))
        .and_then(|f| f.get(column));
    let Some(feature) = feature else {
        return Ok(None);
    };
    if feature.get("_type").and_then(|t| t.as_str()) != Some("ClassLabel") {
        return Ok(None);
    }
    let names = feature
        .get("names")
        .and_then(|n| n.as_array())
        .ok_or_else(|| DataError::Metadata {
            path: path.into(),
            message: format!("ClassLabel `{column}` has no `names` list"),
        })?;
    names
        .iter()
        .map(|n| {
            n.as_str()
                .map(str::to_string)
                .ok_or_else(|| DataError::Metadata {
                    path: path.into(),
                    message: format!("ClassLabel `{column}` has a non-string name {n}"),
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
