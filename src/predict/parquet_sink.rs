//! `predict --input`'s parquet output: the answer's columns (`row`, `text`, `adapter`, `label`,
//! `label_id`, `score`, `probabilities`, `logits`) and, as the JSONL output passes them, the
//! input's other fields ([`super::columns`]), in row groups of at most [`ROW_GROUP_ROWS`] rows.

use super::columns::Column;
use super::{Answer, Record};
use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, Float32Builder, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::NamedTempFile;

/// Rows buffered before they go to the writer; the first of them type the passed-through
/// columns.
const BATCH_ROWS: usize = 1024;

/// Rows of one row group at most (the writer holds a row group in memory until it is full).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// The answer's own columns: input fields of these names are not passed through (the answer
/// wins, as in the JSONL output). `adapter` only when the answers name their adapter.
const ANSWER_COLUMNS: [&str; 8] = [
    "row",
    "text",
    "adapter",
    "label",
    "label_id",
    "score",
    "probabilities",
    "logits",
];

fn schema(named: bool, extra: &[Column]) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
    ];
    if named {
        fields.push(Field::new("adapter", DataType::Utf8, false));
    }
    fields.extend([
        Field::new("label", DataType::Utf8, false),
        Field::new("label_id", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
        Field::new(
            "probabilities",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            false,
        ),
        Field::new(
            "logits",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            false,
        ),
    ]);
    fields.extend(extra.iter().map(Column::field));
    Arc::new(Schema::new(fields))
}

/// The writer, once the first rows fixed the columns.
struct Open {
    writer: ArrowWriter<NamedTempFile>,
    schema: Arc<Schema>,
    extra: Vec<Column>,
}

impl Open {
    fn batch(&self, rows: &[(Record, Option<String>, Answer)], named: bool) -> Result<RecordBatch> {
        let mut probs = ListBuilder::new(Float64Builder::new());
        let mut logits = ListBuilder::new(Float32Builder::new());
        for (_, _, a) in rows {
            probs.values().append_slice(&a.probabilities);
            probs.append(true);
            logits.values().append_slice(&a.logits);
            logits.append(true);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.0.row as u64),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.text.as_str()),
            )),
        ];
        if named {
            columns.push(Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_deref().unwrap_or("")),
            )));
        }
        columns.extend([
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.label.as_str()),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.2.label_id as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.2.probabilities[r.2.label_id]),
            )),
            Arc::new(probs.finish()),
            Arc::new(logits.finish()),
        ]);
        let fields: Vec<(usize, &Map<String, Value>)> =
            rows.iter().map(|r| (r.0.row, &r.0.extra)).collect();
        for c in &self.extra {
            columns.push(c.array(&fields)?);
        }
        RecordBatch::try_new(self.schema.clone(), columns).context("building a row group")
    }
}

/// A parquet output being written into its temporary file.
pub struct ParquetSink {
    /// The file, until the writer takes it.
    file: Option<NamedTempFile>,
    writer: Option<Open>,
    /// The destination.
    pub(super) path: PathBuf,
    /// Rows not yet handed to the writer.
    rows: Vec<(Record, Option<String>, Answer)>,
    /// Whether there is an adapter column.
    named: bool,
}

impl ParquetSink {
    /// Writes into `file`, bound for `path`; `named`: answers carry their adapter.
    pub fn new(file: NamedTempFile, path: PathBuf, named: bool) -> Self {
        Self {
            file: Some(file),
            writer: None,
            path,
            rows: Vec::new(),
            named,
        }
    }

    /// Adds one answer.
    pub fn write(&mut self, record: &Record, adapter: Option<&str>, answer: &Answer) -> Result<()> {
        self.rows
            .push((record.clone(), adapter.map(str::to_string), answer.clone()));
        if self.rows.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// The writer, its columns typed from the rows buffered now.
    fn start(&mut self) -> Result<Open> {
        let named = self.named;
        let fields: Vec<&Map<String, Value>> = self.rows.iter().map(|r| &r.0.extra).collect();
        let extra = Column::infer(&fields, |name| {
            ANSWER_COLUMNS.contains(&name) && (named || name != "adapter")
        });
        let schema = schema(named, &extra);
        let file = self
            .file
            .take()
            .with_context(|| format!("{}: written already", self.path.display()))?;
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .context("starting the parquet writer")?;
        Ok(Open {
            writer,
            schema,
            extra,
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let open = match self.writer.take() {
            Some(open) => open,
            None => self.start()?,
        };
        let open = self.writer.insert(open);
        let batch = open
            .batch(&self.rows, self.named)
            .with_context(|| format!("writing {}", self.path.display()))?;
        open.writer
            .write(&batch)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.rows.clear();
        Ok(())
    }

    /// Writes what is left and the footer; the complete file, still temporary.
    pub fn finish(mut self) -> Result<NamedTempFile> {
        self.flush()?;
        let open = match self.writer.take() {
            Some(open) => open,
            None => self.start()?,
        };
        open.writer
            .into_inner()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn row_groups_are_bounded_and_input_fields_pass_through() {
        use arrow::array::AsArray;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = tempfile::tempdir().unwrap();
        let tmp = NamedTempFile::new_in(dir.path()).unwrap();
        let mut sink = ParquetSink::new(tmp, dir.path().join("out.parquet"), false);
        let answer = Answer::new(vec![0.0, 1.0], &["a".to_string(), "b".to_string()]);
        let rows = ROW_GROUP_ROWS + 10;
        for row in 0..rows {
            let record = Record {
                row,
                text: "t".into(),
                adapter: None,
                extra: fields(json!({"id": row, "label": "input's"})),
            };
            sink.write(&record, None, &answer).unwrap();
        }
        let file = sink.finish().unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file.reopen().unwrap()).unwrap();
        let groups: Vec<i64> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, [ROW_GROUP_ROWS as i64, 10]);
        let mut seen = 0;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("id").unwrap();
            assert_eq!(ids.data_type(), &DataType::Int64);
            // The answer's `label` wins over the input's.
            let labels = batch.column_by_name("label").unwrap().as_string::<i32>();
            assert!(labels.iter().all(|l| l == Some("b")));
            let schema = batch.schema();
            assert_eq!(
                schema
                    .fields()
                    .iter()
                    .filter(|f| f.name() == "label")
                    .count(),
                1
            );
            seen += batch.num_rows();
        }
        assert_eq!(seen, rows);
    }
}
