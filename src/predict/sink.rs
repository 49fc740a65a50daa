//! Where `predict --input` writes: JSONL to standard output, or a `.jsonl` / `.parquet` file
//! written beside its destination and moved into place only when complete (an existing file is
//! never replaced).

use super::{Answer, Record};
use anyhow::{bail, Context, Result};
use arrow::array::{
    ArrayRef, Float32Builder, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::NamedTempFile;

const PARQUET_ROWS: usize = 1024;

/// An output being written.
pub enum Sink {
    /// JSONL on standard output.
    Stdout(BufWriter<std::io::Stdout>),
    /// A JSONL file.
    Jsonl(BufWriter<NamedTempFile>, PathBuf),
    /// A parquet file, rows buffered per row group.
    Parquet {
        /// The writer.
        writer: Box<ArrowWriter<NamedTempFile>>,
        /// The destination.
        path: PathBuf,
        /// Rows not yet written.
        rows: Vec<(Record, Option<String>, Answer)>,
        /// Whether there is an adapter column.
        named: bool,
    },
}

fn schema(named: bool) -> Arc<Schema> {
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
    Arc::new(Schema::new(fields))
}

impl Sink {
    /// A sink for `output` (standard output when `None`); `named`: answers carry their adapter.
    pub fn create(output: Option<&Path>, named: bool) -> Result<Self> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(BufWriter::new(std::io::stdout())));
        };
        if path.exists() {
            bail!(
                "{} exists: peftkit does not replace files (remove it or choose another --output)",
                path.display()
            );
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".peftkit-predict-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        Ok(match ext {
            "parquet" => Sink::Parquet {
                writer: Box::new(
                    ArrowWriter::try_new(tmp, schema(named), None)
                        .context("starting the parquet writer")?,
                ),
                path: path.to_path_buf(),
                rows: Vec::new(),
                named,
            },
            "jsonl" | "ndjson" | "json" => Sink::Jsonl(BufWriter::new(tmp), path.to_path_buf()),
            _ => bail!(
                "--output {}: expected a .jsonl or .parquet file",
                path.display()
            ),
        })
    }

    /// Writes one answer.
    pub fn write(&mut self, record: &Record, adapter: Option<&str>, answer: &Answer) -> Result<()> {
        let named = match self {
            Sink::Parquet { named, .. } => *named,
            _ => false,
        };
        match self {
            Sink::Stdout(w) => json_line(w, record, adapter, answer),
            Sink::Jsonl(w, path) => json_line(w, record, adapter, answer)
                .with_context(|| format!("writing {}", path.display())),
            Sink::Parquet { rows, .. } => {
                rows.push((record.clone(), adapter.map(str::to_string), answer.clone()));
                if rows.len() >= PARQUET_ROWS {
                    self.flush_parquet(named)?;
                }
                Ok(())
            }
        }
    }

    fn flush_parquet(&mut self, named: bool) -> Result<()> {
        let Sink::Parquet {
            writer, rows, path, ..
        } = self
        else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let taken = std::mem::take(rows);
        let mut probs = ListBuilder::new(Float64Builder::new());
        let mut logits = ListBuilder::new(Float32Builder::new());
        for (_, _, a) in &taken {
            probs.values().append_slice(&a.probabilities);
            probs.append(true);
            logits.values().append_slice(&a.logits);
            logits.append(true);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(
                taken.iter().map(|r| r.0.row as u64),
            )),
            Arc::new(StringArray::from_iter_values(
                taken.iter().map(|r| r.0.text.as_str()),
            )),
        ];
        if named {
            columns.push(Arc::new(StringArray::from_iter_values(
                taken.iter().map(|r| r.1.as_deref().unwrap_or("")),
            )));
        }
        columns.extend([
            Arc::new(StringArray::from_iter_values(
                taken.iter().map(|r| r.2.label.as_str()),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(
                taken.iter().map(|r| r.2.label_id as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                taken.iter().map(|r| r.2.probabilities[r.2.label_id]),
            )),
            Arc::new(probs.finish()),
            Arc::new(logits.finish()),
        ]);
        let batch = RecordBatch::try_new(schema(named), columns).context("building a row group")?;
        writer
            .write(&batch)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Completes the output: the file appears at its path only now.
    pub fn finish(mut self) -> Result<()> {
        let named = matches!(&self, Sink::Parquet { named: true, .. });
        self.flush_parquet(named)?;
        let (tmp, path) = match self {
            Sink::Stdout(mut w) => return w.flush().context("writing to standard output"),
            Sink::Jsonl(w, path) => {
                let tmp = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {}", path.display()))?;
                (tmp, path)
            }
            Sink::Parquet { writer, path, .. } => {
                let tmp = writer
                    .into_inner()
                    .with_context(|| format!("writing {}", path.display()))?;
                (tmp, path)
            }
        };
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
        tmp.persist_noclobber(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("moving the finished output to {}", path.display()))?;
        Ok(())
    }
}

fn json_line(
    w: &mut impl Write,
    record: &Record,
    adapter: Option<&str>,
    answer: &Answer,
) -> Result<()> {
    let mut v = record.extra.clone();
    // The answer's fields win over passed-through ones of the same name.
    v.extend(answer.to_json(&record.text, adapter));
    serde_json::to_writer(&mut *w, &v)?;
    w.write_all(b"\n")?;
    Ok(())
}
