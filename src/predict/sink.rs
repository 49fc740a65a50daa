//! Where `predict --input` writes: JSONL to standard output, or a `.jsonl` / `.parquet` file
//! ([`super::parquet_sink`]) written beside its destination and moved into place only when
//! complete (an existing file is never replaced; a `.json` path is refused).

use super::parquet_sink::ParquetSink;
use super::{Answer, Record};
use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// An output being written.
pub enum Sink {
    /// JSONL on standard output.
    Stdout(BufWriter<std::io::Stdout>),
    /// A JSONL file.
    Jsonl(BufWriter<NamedTempFile>, PathBuf),
    /// A parquet file.
    Parquet(Box<ParquetSink>),
}

impl Sink {
    /// A sink for `output` (standard output when `None`); `named`: answers carry their adapter.
    pub fn create(output: Option<&Path>, named: bool) -> Result<Self> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(BufWriter::new(std::io::stdout())));
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !matches!(ext.as_str(), "jsonl" | "ndjson" | "parquet") {
            bail!(
                "--output {}: expected a .jsonl or .parquet file{}",
                path.display(),
                if ext == "json" {
                    " (answers are JSON lines: name it .jsonl)"
                } else {
                    ""
                }
            );
        }
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
        Ok(if ext == "parquet" {
            Sink::Parquet(Box::new(ParquetSink::new(tmp, path.to_path_buf(), named)))
        } else {
            Sink::Jsonl(BufWriter::new(tmp), path.to_path_buf())
        })
    }

    /// Writes one answer.
    pub fn write(&mut self, record: &Record, adapter: Option<&str>, answer: &Answer) -> Result<()> {
        match self {
            Sink::Stdout(w) => json_line(w, record, adapter, answer),
            Sink::Jsonl(w, path) => json_line(w, record, adapter, answer)
                .with_context(|| format!("writing {}", path.display())),
            Sink::Parquet(p) => p.write(record, adapter, answer),
        }
    }

    /// Completes the output: the file appears at its path only now.
    pub fn finish(self) -> Result<()> {
        let (tmp, path) = match self {
            Sink::Stdout(mut w) => return w.flush().context("writing to standard output"),
            Sink::Jsonl(w, path) => {
                let tmp = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {}", path.display()))?;
                (tmp, path)
            }
            Sink::Parquet(p) => {
                let path = p.path.clone();
                (p.finish()?, path)
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
