//! The tiny offline fixture of the bad-input suite and the kill harness: tiny-bert with a WordPiece
//! vocabulary, its LoRA adapter, a three-label parquet dataset and an experiment TOML, copied into
//! a temporary directory.
#![allow(dead_code)]

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use serde_json::json;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

/// A WordPiece vocabulary for tiny-bert (ids below its 1,000; `[PAD]` is its pad id 0).
const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngood\nbad\nfine\nfilm\n";

/// The unbroken inputs: `model/` (tiny-bert, three labels, with `vocab.txt`), `adapter/` (its
/// LoRA), `data/` (train and validation parquet, labels neg / neu / pos) and `exp.toml`.
pub fn fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fixtures");
    for (from, to, files) in [
        ("tiny-bert", "model", ["config.json", "model.safetensors"]),
        (
            "lora-bert/adapter",
            "adapter",
            ["adapter_config.json", "adapter_model.safetensors"],
        ),
    ] {
        fs::create_dir_all(r.join(to)).unwrap();
        for f in files {
            fs::copy(fx.join(from).join(f), r.join(to).join(f)).unwrap();
        }
    }
    put(r, "model/vocab.txt", VOCAB);
    fs::create_dir(r.join("data")).unwrap();
    let train = texts(&["good film", "bad film", "fine film", "good"]);
    write_parquet(
        &r.join("data/train.parquet"),
        vec![("text", train), ("label", ints(&[2, 0, 1, 2]))],
    );
    let validation = texts(&["good", "bad", "fine"]);
    write_parquet(
        &r.join("data/validation.parquet"),
        vec![("text", validation), ("label", ints(&[2, 0, 1]))],
    );
    // Line 5: max_length; line 9: the first key of [train].
    let toml = format!(
        "[model]\nid = \"{}\"\n[data]\ndataset = \"{}\"\nmax_length = 16\n[adapter]\nkind = \"head\"\n[train]\nnum_train_epochs = 1\nper_device_train_batch_size = 2\n",
        r.join("model").display(),
        r.join("data").display()
    );
    put(r, "exp.toml", &toml);
    tmp
}

/// Writes `text` to `root/file`, creating its directory.
pub fn put(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A string column.
pub fn texts(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// An integer column.
pub fn ints(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// A parquet file of `cols` whose `label` feature is a ClassLabel of neg / neu / pos, as
/// `datasets` writes it.
pub fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let names = json!({"info": {"features": {"label": {"names": ["neg", "neu", "pos"], "_type": "ClassLabel"}}}});
    let meta = HashMap::from([("huggingface".to_string(), names.to_string())]);
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, meta));
    let columns: Vec<ArrayRef> = cols.into_iter().map(|(_, a)| a).collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(fs::File::create(path).unwrap(), schema, None)
        .unwrap();
    if batch.num_rows() > 0 {
        w.write(&batch).unwrap();
    }
    w.close().unwrap();
}
