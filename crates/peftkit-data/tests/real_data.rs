//! The real datasets through the hub-cache code path (`HF_HOME` + `HF_HUB_OFFLINE=1`, as after a
//! download), and clear errors on bad input.

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use peftkit_data::{
    load_split, load_splits, read_parquet, ColumnNames, DataError, DatasetSpec, HubSource,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

fn shared_hf_home() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/hf-home")
}

/// Uses the offline hub cache beside the checkout unless the caller chose one (the xtask sets the
/// same two variables).
fn offline_cache() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("HF_HOME").is_none() {
            std::env::set_var("HF_HOME", shared_hf_home());
        }
        std::env::set_var("HF_HUB_OFFLINE", "1");
    });
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

#[test]
fn sst2_label_statistics_are_the_published_baseline() {
    offline_cache();
    for spec in [
        DatasetSpec::new("nyu-mll/glue").with_config("sst2"),
        DatasetSpec::new("stanfordnlp/sst2"),
    ] {
        let train = load_split(&spec, "train").unwrap();
        let val = load_split(&spec, "validation").unwrap();
        assert_eq!(train.len(), 67_349);
        assert_eq!(val.len(), 872);
        assert_eq!(train.label_names, vec!["negative", "positive"]);
        let (t, v) = (train.label_stats(), val.label_stats());
        assert_eq!(t.counts, vec![29_780, 37_569]);
        assert_eq!(v.counts, vec![428, 444]);
        assert_eq!(
            (pct(t.fractions[0]), pct(t.fractions[1])),
            ("44.22".into(), "55.78".into())
        );
        assert_eq!(
            (pct(v.fractions[0]), pct(v.fractions[1])),
            ("49.08".into(), "50.92".into())
        );
    }
}

#[test]
fn rotten_tomatoes_evaluation_is_validation_plus_test() {
    offline_cache();
    let spec = DatasetSpec::new("cornell-movie-review-data/rotten_tomatoes");
    let eval = load_splits(&spec, &["validation", "test"]).unwrap();
    assert_eq!(eval.len(), 2_132);
    assert_eq!(load_splits(&spec, &["validation+test"]).unwrap(), eval);
    assert_eq!(eval.label_stats().counts, vec![1_066, 1_066]);
    assert_eq!(load_split(&spec, "train").unwrap().len(), 8_530);
    assert_eq!(eval.label_names, vec!["neg", "pos"]);
}

#[test]
fn emotion_and_imdb_configs() {
    offline_cache();
    let emotion = DatasetSpec::new("dair-ai/emotion").with_config("split");
    let train = load_split(&emotion, "train").unwrap();
    assert_eq!(train.len(), 16_000);
    assert_eq!(
        train.label_names,
        vec!["sadness", "joy", "love", "anger", "fear", "surprise"]
    );
    assert_eq!(
        train.label_stats().counts,
        vec![4_666, 5_362, 1_304, 2_159, 1_937, 572]
    );
    let err = load_split(&DatasetSpec::new("dair-ai/emotion"), "train").unwrap_err();
    assert_eq!(
        err.to_string(),
        "dataset `dair-ai/emotion`: a config is required (it has: split)"
    );
    let err = load_split(
        &DatasetSpec::new("dair-ai/emotion").with_config("unsplit"),
        "train",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no config `unsplit` (it has: split)"),
        "{err}"
    );

    let imdb = DatasetSpec::new("stanfordnlp/imdb").with_config("plain_text");
    let test = load_split(&imdb, "test").unwrap();
    assert_eq!(test.len(), 25_000);
    assert_eq!(test.label_stats().counts, vec![12_500, 12_500]);
    let err = load_split(&imdb, "unsupervised").unwrap_err();
    assert!(
        err.to_string()
            .contains("no split `unsupervised` (it has: test, train)"),
        "{err}"
    );
}

#[test]
fn subsets_of_real_data_are_seeded() {
    offline_cache();
    let train = load_split(&DatasetSpec::new("stanfordnlp/sst2"), "train").unwrap();
    let a = train.shuffled_subset(2_000, 42);
    assert_eq!(a, train.shuffled_subset(2_000, 42));
    assert_eq!(a.len(), 2_000);
    let first = train.take(3);
    assert_eq!(
        first.texts[0],
        "hide new secretions from the parental units "
    );
}

#[test]
fn glue_test_split_has_no_labels() {
    offline_cache();
    let err = load_split(&DatasetSpec::new("stanfordnlp/sst2"), "test").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("test-00000-of-00001.parquet: row 0: label -1 is out of range 0..2"),
        "{msg}"
    );
    assert!(msg.contains("unlabelled"), "{msg}");
}

#[test]
fn a_local_directory_resolves_like_the_hub() {
    offline_cache();
    let snapshot = HubSource::new("nyu-mll/glue", None)
        .cached_snapshot()
        .unwrap();
    let local = DatasetSpec::new(snapshot.to_string_lossy()).with_config("sst2");
    assert_eq!(load_split(&local, "validation").unwrap().len(), 872);
    let file = snapshot.join("sst2/validation-00000-of-00001.parquet");
    assert_eq!(
        load_split(&DatasetSpec::new(file.to_string_lossy()), "ignored")
            .unwrap()
            .len(),
        872
    );
}

#[test]
fn a_dataset_missing_from_the_cache_is_a_clear_error() {
    offline_cache();
    let tmp = tempfile::tempdir().unwrap();
    let err = HubSource::new("someone/unknown", None)
        .with_cache(tmp.path().to_path_buf())
        .resolve(None, "train")
        .unwrap_err();
    assert!(matches!(err, DataError::Hub { .. }), "{err}");
    assert!(err.to_string().contains("someone/unknown"), "{err}");
}

fn write_parquet(
    path: &Path,
    text: Option<Vec<Option<&str>>>,
    labels: Vec<i64>,
    names: Option<&[&str]>,
) {
    let mut fields = Vec::new();
    let mut cols: Vec<Arc<dyn arrow::array::Array>> = Vec::new();
    if let Some(text) = text {
        fields.push(Field::new("text", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from(text)));
    }
    fields.push(Field::new("label", DataType::Int64, false));
    cols.push(Arc::new(Int64Array::from(labels)));
    let mut meta = HashMap::new();
    if let Some(names) = names {
        meta.insert(
            "huggingface".to_string(),
            serde_json::json!({"info": {"features": {"text": {"dtype": "string", "_type": "Value"},
                "label": {"names": names, "_type": "ClassLabel"}}}})
            .to_string(),
        );
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, meta));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn bad_files_give_errors_naming_file_and_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cols = ColumnNames::default();

    let p = tmp.path().join("range.parquet");
    write_parquet(
        &p,
        Some(vec![Some("a"), Some("b")]),
        vec![0, 5],
        Some(&["neg", "pos"]),
    );
    let err = read_parquet(&p, &cols).unwrap_err().to_string();
    assert!(
        err.contains("range.parquet: row 1: label 5 is out of range 0..2"),
        "{err}"
    );

    let p = tmp.path().join("ok.parquet");
    write_parquet(&p, Some(vec![Some("a"), Some("b")]), vec![0, 2], None);
    let s = read_parquet(&p, &cols).unwrap();
    assert_eq!(s.label_names, vec!["LABEL_0", "LABEL_1", "LABEL_2"]);

    let err = read_parquet(
        &p,
        &ColumnNames {
            text: Some("sentence".into()),
            label: "label".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ok.parquet: no column `sentence` (the file has: text, label)"),
        "{err}"
    );
    let err = read_parquet(
        &p,
        &ColumnNames {
            text: Some("label".into()),
            label: "label".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("column `label` is Int64, expected string"),
        "{err}"
    );
    let err = read_parquet(
        &p,
        &ColumnNames {
            text: None,
            label: "text".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("column `text` is Utf8, expected integer"),
        "{err}"
    );

    let p = tmp.path().join("notext.parquet");
    write_parquet(&p, None, vec![0], None);
    let err = read_parquet(&p, &cols).unwrap_err().to_string();
    assert!(
        err.contains("notext.parquet: no column `text` or `sentence`"),
        "{err}"
    );

    let p = tmp.path().join("null.parquet");
    write_parquet(&p, Some(vec![Some("a"), None]), vec![0, 1], None);
    let err = read_parquet(&p, &cols).unwrap_err().to_string();
    assert!(
        err.contains("null.parquet: row 1: column `text` is null"),
        "{err}"
    );

    let p = tmp.path().join("empty.parquet");
    write_parquet(&p, Some(vec![]), vec![], Some(&["neg", "pos"]));
    let err = read_parquet(&p, &cols).unwrap_err().to_string();
    assert!(err.contains("empty.parquet has no rows"), "{err}");

    // A truncated copy of a real file.
    let real = std::fs::read(tmp.path().join("ok.parquet")).unwrap();
    let p = tmp.path().join("truncated.parquet");
    std::fs::write(&p, &real[..real.len() / 2]).unwrap();
    let err = read_parquet(&p, &cols).unwrap_err().to_string();
    assert!(
        err.contains("truncated.parquet: not a readable parquet file"),
        "{err}"
    );
    let p = tmp.path().join("text.parquet");
    std::fs::write(&p, "not parquet at all").unwrap();
    assert!(read_parquet(&p, &cols)
        .unwrap_err()
        .to_string()
        .contains("not a readable parquet file"));

    let err = load_split(&DatasetSpec::new("./does/not/exist.parquet"), "train")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does/not/exist.parquet: no such file or directory"),
        "{err}"
    );
}

#[test]
fn models_resolve_through_the_hub_cache() {
    offline_cache();
    for id in [
        "gpt2",
        "openai-community/gpt2",
        "roberta-base",
        "FacebookAI/roberta-base",
    ] {
        let dir = peftkit_data::resolve_model(id, None, false).unwrap();
        assert!(
            dir.join("tokenizer.json").is_file() && dir.join("config.json").is_file(),
            "{id}"
        );
    }
    // The cache has no gpt2 weights: the error names the missing file and what to do.
    let err = peftkit_data::resolve_model("gpt2", None, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model `gpt2`: model.safetensors (the weights) not found in the hub cache"),
        "{err}"
    );
    assert!(err.contains("pass a local checkpoint directory"), "{err}");
    let err = peftkit_data::resolve_model("nobody/nothing", None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model `nobody/nothing`: the repository not found"),
        "{err}"
    );
    // A local checkpoint directory.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/tiny-gpt2");
    assert_eq!(
        peftkit_data::resolve_model(tiny.to_str().unwrap(), None, true).unwrap(),
        tiny
    );
    let tmp = tempfile::tempdir().unwrap();
    let err = peftkit_data::resolve_model(tmp.path().to_str().unwrap(), None, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json, model.safetensors (or model.safetensors.index.json) not found"),
        "{err}"
    );
}
