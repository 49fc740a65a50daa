//! Rows of a `predict --input` file, streamed: `.txt` (one text a line), `.jsonl` (a text field;
//! the other fields passed through), `.csv` (with a header) and `.parquet`.

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// An input format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One text a line.
    Txt,
    /// One JSON object a line.
    Jsonl,
    /// Comma-separated, with a header.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format of `path` by its extension.
    pub fn of(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match ext.as_deref() {
            Some("txt") => Format::Txt,
            Some("jsonl") | Some("ndjson") => Format::Jsonl,
            Some("csv") => Format::Csv,
            Some("parquet") => Format::Parquet,
            _ => bail!(
                "{}: expected a .txt, .jsonl, .csv or .parquet file",
                path.display()
            ),
        })
    }
}

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its index in the file (0-based; header lines not counted).
    pub row: usize,
    /// The text.
    pub text: String,
    /// The adapter it asks for.
    pub adapter: Option<String>,
    /// The other fields (JSONL: as given; CSV: strings; parquet: numbers, booleans, strings).
    pub extra: Map<String, Value>,
}

type Records = Box<dyn Iterator<Item = Result<Record>>>;

/// The rows of `path` and, when the file says, how many there are.
pub fn open(
    path: &Path,
    format: Format,
    text_column: Option<&str>,
    adapter_column: &str,
) -> Result<(Records, Option<u64>)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let path = path.to_path_buf();
    let adapter_column = adapter_column.to_string();
    Ok(match format {
        Format::Txt => {
            let lines = BufReader::new(file).lines().enumerate();
            let it = lines.map(move |(row, line)| {
                let line = line.with_context(|| format!("{} line {}", path.display(), row + 1))?;
                Ok(Record {
                    row,
                    text: line.strip_suffix('\r').unwrap_or(&line).to_string(),
                    adapter: None,
                    extra: Map::new(),
                })
            });
            (Box::new(it), None)
        }
        Format::Jsonl => {
            let field = text_column.unwrap_or("text").to_string();
            let mut row = 0;
            let it = BufReader::new(file)
                .lines()
                .enumerate()
                .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(move |(line_no, line)| {
                    let at = || format!("{} line {}", path.display(), line_no + 1);
                    let line = line.with_context(at)?;
                    let mut obj: Map<String, Value> = serde_json::from_str(&line)
                        .with_context(|| format!("{}: expected one JSON object", at()))?;
                    let text = match obj.remove(&field) {
                        Some(Value::String(s)) => s,
                        Some(other) => bail!("{}: `{field}` is {other}, expected a string", at()),
                        None => bail!(
                            "{}: no field `{field}` (choose one with --text-column)",
                            at()
                        ),
                    };
                    let adapter = adapter_value(obj.remove(&adapter_column), &adapter_column)
                        .with_context(at)?;
                    row += 1;
                    Ok(Record {
                        row: row - 1,
                        text,
                        adapter,
                        extra: obj,
                    })
                });
            (Box::new(it), None)
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(file);
            let headers = reader
                .headers()
                .with_context(|| format!("{}: reading the header", path.display()))?
                .clone();
            let names: Vec<String> = headers.iter().map(str::to_string).collect();
            let text_at = column(&path, &names, text_column)?;
            let adapter_at = names.iter().position(|n| *n == adapter_column);
            let it = reader.into_records().enumerate().map(move |(row, rec)| {
                let rec = rec.with_context(|| format!("{} row {}", path.display(), row + 1))?;
                let mut extra = Map::new();
                for (i, v) in rec.iter().enumerate() {
                    if i != text_at && Some(i) != adapter_at {
                        extra.insert(
                            names.get(i).cloned().unwrap_or(format!("column_{i}")),
                            v.into(),
                        );
                    }
                }
                Ok(Record {
                    row,
                    text: rec.get(text_at).unwrap_or_default().to_string(),
                    adapter: adapter_at
                        .and_then(|i| rec.get(i))
                        .filter(|a| !a.is_empty())
                        .map(str::to_string),
                    extra,
                })
            });
            (Box::new(it), None)
        }
        Format::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{}: not a parquet file", path.display()))?;
            let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
            let names: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let text_at = column(&path, &names, text_column)?;
            let adapter_at = names.iter().position(|n| *n == adapter_column);
            let reader = builder
                .with_batch_size(1024)
                .build()
                .with_context(|| format!("reading {}", path.display()))?;
            let mut row = 0usize;
            let it = reader.flat_map(move |batch| -> Vec<Result<Record>> {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        return vec![Err(
                            anyhow::Error::new(e).context(format!("reading {}", path.display()))
                        )]
                    }
                };
                let out = parquet_rows(&path, &batch, text_at, adapter_at, row);
                row += batch.num_rows();
                out
            });
            (Box::new(it), Some(total))
        }
    })
}

fn adapter_value(v: Option<Value>, column: &str) -> Result<Option<String>> {
    Ok(match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => bail!("`{column}` is {other}, expected an adapter name"),
    })
}

/// The text column: the one asked for, else `text`, else `sentence`.
fn column(path: &Path, names: &[String], asked: Option<&str>) -> Result<usize> {
    let find = |n: &str| names.iter().position(|c| c == n);
    match asked {
        Some(a) => find(a),
        None => find("text").or_else(|| find("sentence")),
    }
    .with_context(|| {
        format!(
            "{}: no column `{}` (columns: {}; choose one with --text-column)",
            path.display(),
            asked.unwrap_or("text"),
            names.join(", ")
        )
    })
}

fn strings(a: &dyn Array) -> Option<Vec<Option<String>>> {
    let collect =
        |it: &mut dyn Iterator<Item = Option<&str>>| it.map(|s| s.map(str::to_string)).collect();
    Some(match a.data_type() {
        DataType::Utf8 => collect(&mut a.as_string::<i32>().iter()),
        DataType::LargeUtf8 => collect(&mut a.as_string::<i64>().iter()),
        DataType::Utf8View => collect(&mut a.as_string_view().iter()),
        _ => return None,
    })
}

fn json_values(a: &dyn Array) -> Vec<Value> {
    use arrow::datatypes::*;
    if let Some(s) = strings(a) {
        return s
            .into_iter()
            .map(|v| v.map_or(Value::Null, Value::from))
            .collect();
    }
    macro_rules! prim {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .iter()
                .map(|v| v.map_or(Value::Null, |v| serde_json::json!(v)))
                .collect()
        };
    }
    match a.data_type() {
        DataType::Boolean => a
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::from))
            .collect(),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        _ => {
            let fmt = arrow::util::display::ArrayFormatter::try_new(a, &Default::default());
            (0..a.len())
                .map(|i| match (&fmt, a.is_null(i)) {
                    (_, true) => Value::Null,
                    (Ok(f), false) => Value::from(f.value(i).to_string()),
                    (Err(_), false) => Value::Null,
                })
                .collect()
        }
    }
}

fn parquet_rows(
    path: &Path,
    batch: &RecordBatch,
    text_at: usize,
    adapter_at: Option<usize>,
    first_row: usize,
) -> Vec<Result<Record>> {
    let Some(texts) = strings(batch.column(text_at).as_ref()) else {
        return vec![Err(anyhow::anyhow!(
            "{}: column `{}` is {}, expected strings",
            path.display(),
            batch.schema().field(text_at).name(),
            batch.column(text_at).data_type()
        ))];
    };
    let adapters = match adapter_at.map(|i| strings(batch.column(i).as_ref())) {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => {
            return vec![Err(anyhow::anyhow!(
                "{}: the adapter column is {}, expected strings",
                path.display(),
                batch.column(adapter_at.unwrap_or(0)).data_type()
            ))]
        }
    };
    let schema = batch.schema();
    let extra: Vec<(String, Vec<Value>)> = (0..batch.num_columns())
        .filter(|&i| i != text_at && Some(i) != adapter_at)
        .map(|i| {
            (
                schema.field(i).name().clone(),
                json_values(batch.column(i).as_ref()),
            )
        })
        .collect();
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            Ok(Record {
                row: first_row + i,
                text: text.unwrap_or_default(),
                adapter: adapters
                    .as_ref()
                    .and_then(|a| a[i].clone())
                    .filter(|a| !a.is_empty()),
                extra: extra
                    .iter()
                    .map(|(n, v)| (n.clone(), v[i].clone()))
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rows(path: &Path, text_column: Option<&str>) -> Result<Vec<Record>> {
        let (it, _) = open(path, Format::of(path)?, text_column, "adapter")?;
        it.collect()
    }

    #[test]
    fn line_formats_are_read_in_order_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("in.txt");
        std::fs::write(&txt, "good film\r\n\nbad film\n").unwrap();
        let r = rows(&txt, None).unwrap();
        assert_eq!(
            r.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["good film", "", "bad film"]
        );

        let jsonl = dir.path().join("in.jsonl");
        let mut f = File::create(&jsonl).unwrap();
        writeln!(f, r#"{{"text": "a", "id": 7, "adapter": "sst2"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"text": "b", "meta": {{"x": [1]}}}}"#).unwrap();
        drop(f);
        let r = rows(&jsonl, None).unwrap();
        assert_eq!(r[0].adapter.as_deref(), Some("sst2"));
        assert_eq!(r[0].extra["id"], 7);
        assert_eq!((r[1].row, r[1].text.as_str()), (1, "b"));
        assert_eq!(r[1].extra["meta"]["x"][0], 1);

        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,sentence,adapter\n1,\"x, y\",emotion\n2,z,\n").unwrap();
        let r = rows(&csv, None).unwrap();
        assert_eq!(r[0].text, "x, y");
        assert_eq!(r[0].adapter.as_deref(), Some("emotion"));
        assert_eq!(r[1].adapter, None);
        assert_eq!(r[1].extra["id"], "2");
    }

    #[test]
    fn bad_rows_name_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("in.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"a\"}\n{\"body\": \"b\"}\n").unwrap();
        let e = format!("{:#}", rows(&jsonl, None).unwrap_err());
        assert!(e.contains("in.jsonl line 2: no field `text`"), "{e}");
        std::fs::write(&jsonl, "{\"text\": 3}\n").unwrap();
        let e = format!("{:#}", rows(&jsonl, None).unwrap_err());
        assert!(e.contains("line 1: `text` is 3, expected a string"), "{e}");
        std::fs::write(&jsonl, "not json\n").unwrap();
        assert!(format!("{:#}", rows(&jsonl, None).unwrap_err())
            .contains("line 1: expected one JSON object"));
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        let e = format!("{:#}", rows(&csv, Some("review")).unwrap_err());
        assert!(e.contains("no column `review` (columns: a, b"), "{e}");
        assert!(Format::of(Path::new("x.tsv")).is_err());
    }
}
