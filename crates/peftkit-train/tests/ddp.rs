//! The trainer's distributed pieces with 2 ranks in one process (a thread each, Gloo on
//! 127.0.0.1, the store on a free port): the sharded evaluation is the single process's, bit for
//! bit. (Training across processes is tested end to end by the workspace's `tests/distributed.rs`.)

use peftkit_models::{read_safetensors, LoadOptions, SequenceClassifier};
use peftkit_tokenize::Padding;
use peftkit_train::distributed::{DistEnv, GroupOptions, ProcessGroup, Store, StoreHost};
use peftkit_train::{evaluate, evaluate_sharded, Dataset};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tch::{Device, Tensor};

fn dataset(arch: &str, times: usize) -> Dataset {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../data/fixtures/tiny-{arch}"));
    let g: HashMap<String, Tensor> = read_safetensors(&dir.join("golden.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let mut d = Dataset::from_padded(
        &g["input_ids"],
        &g["attention_mask"],
        &g["labels"],
        vec!["neg".into(), "neu".into(), "pos".into()],
        Padding::Longest,
        0,
    )
    .unwrap();
    let (ids, labels) = (d.ids.clone(), d.labels.clone());
    for i in 1..times {
        // Rows of different lengths, so that the length-sorted batches differ.
        d.ids.extend(
            ids.iter()
                .map(|r| r[..r.len().saturating_sub(i % 3).max(2)].to_vec()),
        );
        d.labels.extend(labels.iter().copied());
    }
    d
}

#[test]
fn sharded_evaluation_equals_a_single_process_bit_for_bit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/tiny-bert");
    let data = dataset("bert", 6); // 24 rows: 9 batches of 3, split 5 / 4
    let (model, _) = SequenceClassifier::load(&dir, &LoadOptions::new(Device::Cpu)).unwrap();
    let single = evaluate(&model, &data, 3, 2).unwrap();
    let agent = Store::serve("127.0.0.1", 0, Some(2), Duration::from_secs(30)).unwrap();
    let port = agent.port().unwrap();
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (dir, data) = (&dir, &data);
                s.spawn(move || {
                    let env = DistEnv {
                        rank,
                        world_size: 2,
                        local_rank: rank,
                        local_world_size: 2,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        store_host: StoreHost::Launcher,
                        gloo_interfaces: None,
                        restart_count: 0,
                    };
                    // A short timeout: a failing thread must not leave the other waiting.
                    let opts = GroupOptions {
                        timeout: Duration::from_secs(60),
                        ..GroupOptions::default()
                    };
                    let pg = ProcessGroup::init(&env, &opts).unwrap();
                    let (model, _) =
                        SequenceClassifier::load(dir, &LoadOptions::new(Device::Cpu)).unwrap();
                    evaluate_sharded(&model, data, 3, 2, None, Some(&pg)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in outs {
        assert_eq!(
            out.loss.to_bits(),
            single.loss.to_bits(),
            "{} vs {}",
            out.loss,
            single.loss
        );
        assert_eq!(out.predictions, single.predictions);
        assert_eq!(out.metrics, single.metrics);
    }
}
