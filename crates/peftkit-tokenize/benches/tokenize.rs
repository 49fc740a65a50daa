//! Tokenization throughput over the full SST-2 train split (67,349 sentences), GPT-2 and BERT
//! (MiniLM) tokenizers, parallel batch encoding with rayon.
//!
//! Needs the real data: `HF_HOME` pointing at a hub cache with `stanfordnlp/sst2` (the xtask
//! sets it to `../shared/hf-home`), and `PEFTKIT_MINILM_DIR` for the BERT tokenizer.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peftkit_data::{load_split, DatasetSpec};
use peftkit_tokenize::{TextTokenizer, Truncation};
use std::path::PathBuf;

fn hub_snapshot(repo: &str) -> PathBuf {
    let home = std::env::var("HF_HOME")
        .expect("HF_HOME must point at a hub cache with the gpt2 tokenizer");
    let base = PathBuf::from(home)
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(base.join("refs/main")).expect("refs/main in the hub cache");
    base.join("snapshots").join(rev.trim())
}

fn bench(c: &mut Criterion) {
    let train =
        load_split(&DatasetSpec::new("stanfordnlp/sst2"), "train").expect("SST-2 train split");
    let mut group = c.benchmark_group("tokenize_sst2_train");
    group.sample_size(10);
    group.throughput(Throughput::Elements(train.len() as u64));
    let mut tokenizers = vec![("gpt2", hub_snapshot("gpt2"))];
    if let Ok(dir) = std::env::var("PEFTKIT_MINILM_DIR") {
        tokenizers.push(("minilm", PathBuf::from(dir)));
    }
    for (name, dir) in tokenizers {
        let tok = TextTokenizer::from_dir(&dir)
            .expect("tokenizer")
            .with_truncation(Truncation::MaxLength(128));
        group.bench_function(format!("{name}/encode_batch"), |b| {
            b.iter(|| tok.encode_batch(&train.texts).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
