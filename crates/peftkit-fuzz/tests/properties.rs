//! Property tests over the loaders (issue 14 §5), in CI: every fuzz target on its committed corpus
//! (`fuzz/corpus/TARGET/`: seeds and what the fuzzer found interesting) and the inputs that once
//! crashed it (`fuzz/regressions/TARGET/`) and on random
//! mutations of them — flipped, cut, inserted and overwritten bytes, and numbers replaced by
//! extremes (0, -1, huge, fractional, exponents) — never panics and fails only with a message
//! naming the file.

use proptest::prelude::*;
use std::path::PathBuf;

/// The corpus of `target` and the inputs that once crashed it (`fuzz/regressions/`, which
/// libFuzzer's corpus minimisation never rewrites).
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let dir = root.join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    if let Ok(regressions) = std::fs::read_dir(root.join("regressions").join(target)) {
        files.extend(regressions.map(|e| e.unwrap().path()));
    }
    files.sort();
    let v: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Number(usize, &'static str),
}

const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "4294967296",
    "18446744073709551616",
    "99999999999999",
    "0.5",
    "NaN",
    "1e-400",
];

fn mutate(seed: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for m in ms {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, x) if !d.is_empty() => {
                let n = d.len();
                d[i % n] ^= x | 1;
            }
            Mutation::Flip(..) => {}
            Mutation::Cut(i) => d.truncate(at(*i, d.len())),
            Mutation::Insert(i, bytes) => {
                let p = at(*i, d.len());
                d.splice(p..p, bytes.iter().copied());
            }
            Mutation::Number(i, n) => {
                // Replace the digit run at or after position i (a size, a count, an offset).
                let start = (at(*i, d.len())..d.len()).find(|&j| d[j].is_ascii_digit());
                if let Some(s) = start {
                    let e = (s..d.len())
                        .find(|&j| !d[j].is_ascii_digit())
                        .unwrap_or(d.len());
                    d.splice(s..e, n.bytes());
                }
            }
        }
    }
    d
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), proptest::sample::select(EXTREMES))
            .prop_map(|(i, n)| Mutation::Number(i, n)),
    ]
}

fn check(target: &str, cases: u32) {
    let seeds = seeds(target);
    for s in &seeds {
        peftkit_fuzz::run(target, s);
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..4));
    runner
        .run(&strategy, |(i, ms)| {
            let data = mutate(&seeds[i], &ms);
            peftkit_fuzz::run(target, &data);
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_target_has_a_property_test() {
    let names: Vec<&str> = peftkit_fuzz::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        [
            "config_json",
            "adapter_config_json",
            "safetensors",
            "parquet",
            "tokenizer_json",
            "trainer_state_json",
            "experiment_toml"
        ]
    );
}

#[test]
fn config_json() {
    check("config_json", 400);
}

#[test]
fn adapter_config_json() {
    check("adapter_config_json", 400);
}

#[test]
fn safetensors() {
    check("safetensors", 400);
}

#[test]
fn parquet() {
    check("parquet", 300);
}

#[test]
fn tokenizer_json() {
    check("tokenizer_json", 200);
}

#[test]
fn trainer_state_json() {
    check("trainer_state_json", 400);
}

#[test]
fn experiment_toml() {
    check("experiment_toml", 300);
}
