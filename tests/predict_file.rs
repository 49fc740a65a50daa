//! `peftkit predict --input` on MiniLM: the four input formats give the answers `--text`
//! gives, in input order across chunks, with the adapter column choosing per row; JSONL and
//! parquet outputs (the input's other fields passed through); an existing output is never
//! replaced, a `.json` one refused; bad rows are named.

use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{peftkit, random_minilm_adapter};

const TEXTS: [&str; 7] = [
    "a gorgeous, witty, seductive movie.",
    "dull",
    "",
    "the plot is thin and the acting wooden, yet somehow it works, more or less",
    "not bad at all, really",
    "an utterly forgettable sequel",
    "\"quoted\", with commas",
];
const ROUTE: [&str; 7] = ["s", "e", "s", "", "e", "__base__", "s"];
/// Rows of the input files: with `--batch-size 3` a chunk is 256 rows, so three chunks.
const ROWS: usize = 600;

fn run(args: &[&str]) -> std::process::Output {
    peftkit().args(args).output().unwrap()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_parquet(path: &Path) {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..ROWS as i64)) as ArrayRef,
        ),
        (
            "sentence",
            Arc::new(StringArray::from_iter_values(
                (0..ROWS).map(|i| TEXTS[i % 7]),
            )) as ArrayRef,
        ),
        (
            "adapter",
            Arc::new(StringArray::from_iter_values(
                (0..ROWS).map(|i| ROUTE[i % 7]),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn every_input_format_answers_like_text_in_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, e) = (tmp.path().join("s"), tmp.path().join("e"));
    random_minilm_adapter(
        &s,
        peftkit_adapters::LoraConfig {
            init_lora_weights: peftkit_adapters::InitLoraWeights::Bool(false),
            ..peftkit_adapters::LoraConfig::new(&["query", "value"], 4, 8.0)
        }
        .into(),
    );
    random_minilm_adapter(
        &e,
        peftkit_adapters::Ia3Config::new(&["key", "value", "output.dense"], &["output.dense"])
            .into(),
    );
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let (a, b) = (format!("s={}", s.display()), format!("e={}", e.display()));
    let base = [
        "predict",
        "--model",
        &minilm,
        "--device",
        "cpu",
        "--adapter",
        &a,
        "--adapter",
        &b,
    ];

    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        run(&args)
    };
    // The reference: --text, each text with its adapter (empty: the first, `s`).
    let mut args: Vec<&str> = base.to_vec();
    args.push("--json");
    for (t, r) in TEXTS.iter().zip(ROUTE) {
        args.extend([
            "--text",
            t,
            "--text-adapter",
            if r.is_empty() { "s" } else { r },
        ]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = json_lines(&out.stdout);
    assert_eq!(want.len(), 7);

    let d = tmp.path();
    let jsonl = d.join("in.jsonl");
    let lines: Vec<String> = (0..ROWS)
        .map(|i| {
            serde_json::json!({"text": TEXTS[i % 7], "adapter": ROUTE[i % 7], "id": i}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let csv = d.join("in.csv");
    let mut w = csv::Writer::from_path(&csv).unwrap();
    w.write_record(["id", "text", "adapter"]).unwrap();
    for i in 0..ROWS {
        w.write_record([i.to_string().as_str(), TEXTS[i % 7], ROUTE[i % 7]])
            .unwrap();
    }
    w.flush().unwrap();
    let parquet = d.join("in.parquet");
    write_parquet(&parquet);

    let check = |got: &[Value], what: &str| {
        assert_eq!(got.len(), ROWS, "{what}");
        for (i, g) in got.iter().enumerate() {
            let w = &want[i % 7];
            assert_eq!(g["text"], TEXTS[i % 7], "{what} row {i}");
            assert_eq!(g["adapter"], w["adapter"], "{what} row {i}");
            if ROUTE[i % 7] == "__base__" {
                // MiniLM has no head: each process initialises one afresh (as transformers).
                continue;
            }
            assert_eq!(g["label"], w["label"], "{what} row {i}");
            let (gl, wl): (Vec<f64>, Vec<f64>) = (
                serde_json::from_value(g["logits"].clone()).unwrap(),
                serde_json::from_value(w["logits"].clone()).unwrap(),
            );
            for (x, y) in gl.iter().zip(&wl) {
                assert!((x - y).abs() < 1e-4, "{what} row {i}: {gl:?} vs {wl:?}");
            }
        }
    };
    for input in [&jsonl, &csv, &parquet] {
        let inp = input.display().to_string();
        let out = with(&["--input", &inp, "--batch-size", "3"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = json_lines(&out.stdout);
        check(&got, &inp);
        // Other fields pass through (JSONL as given, CSV as strings, parquet as numbers).
        assert!(!got[3]["id"].is_null(), "{inp}: {}", got[3]);
        assert_eq!(
            got[ROWS - 1]["id"].to_string().trim_matches('"'),
            (ROWS - 1).to_string()
        );
    }
    // txt: one text a line, all through the default adapter.
    let txt = d.join("in.txt");
    std::fs::write(&txt, "good\nbad\n").unwrap();
    let t = txt.display().to_string();
    let out = run(&[
        "predict",
        "--model",
        &minilm,
        "--device",
        "cpu",
        "--adapter",
        &s.display().to_string(),
        "--input",
        &t,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = json_lines(&out.stdout);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1]["text"], "bad");
    assert!(got[0].get("adapter").is_none());

    // Files: JSONL and parquet, written whole; an existing file is never replaced.
    let inp = jsonl.display().to_string();
    let out_jsonl = d.join("out.jsonl").display().to_string();
    let out_parquet = d.join("out.parquet").display().to_string();
    for o in [&out_jsonl, &out_parquet] {
        let out = with(&[
            "--input",
            &inp,
            "--output",
            o,
            "--quiet",
            "--batch-size",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check(
        &json_lines(&std::fs::read(&out_jsonl).unwrap()),
        "out.jsonl",
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out_parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, ROWS);
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let mut first = 0;
    for batch in &batches {
        let labels = batch.column_by_name("label").unwrap().as_string::<i32>();
        let adapters = batch.column_by_name("adapter").unwrap().as_string::<i32>();
        // The input's `id` passes through, as a number.
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        for r in 0..batch.num_rows() {
            let i = first + r;
            let w = &want[i % 7];
            if ROUTE[i % 7] != "__base__" {
                assert_eq!(labels.value(r), w["label"].as_str().unwrap(), "row {i}");
            }
            assert_eq!(adapters.value(r), w["adapter"].as_str().unwrap(), "row {i}");
            assert_eq!(ids.value(r), i as i64, "row {i}");
        }
        first += batch.num_rows();
    }
    // A `.json` path is refused (the answers are JSON lines), naming it; nothing is written.
    let out_json = d.join("out.json").display().to_string();
    let out = with(&["--input", &inp, "--output", &out_json]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--output {out_json}: expected a .jsonl or .parquet file"
        )),
        "{err}"
    );
    assert!(!Path::new(&out_json).exists());
    let before = std::fs::read(&out_jsonl).unwrap();
    let out = with(&["--input", &inp, "--output", &out_jsonl]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists: peftkit does not replace files"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out_jsonl).unwrap(), before);

    // Bad rows are named, and nothing is left behind.
    std::fs::write(
        &jsonl,
        "{\"text\": \"a\"}\n{\"text\": \"b\", \"adapter\": \"nope\"}\n",
    )
    .unwrap();
    let bad_out = d.join("bad.jsonl").display().to_string();
    let out = with(&["--input", &inp, "--output", &bad_out]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in.jsonl row 2: adapter `nope` is not loaded (loaded: e, s; or __base__)"),
        "{err}"
    );
    assert!(!Path::new(&bad_out).exists());
    let stray: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".peftkit-predict-")
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn a_closed_stdout_ends_predict_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let txt = tmp.path().join("many.txt");
    std::fs::write(&txt, "a fine film\n".repeat(3000)).unwrap();
    let minilm = std::env::var("PEFTKIT_MINILM_DIR").unwrap();
    let mut child = peftkit()
        .args([
            "predict", "--model", &minilm, "--device", "cpu", "--quiet", "--input",
        ])
        .arg(&txt)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: read one line, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"label\""), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
