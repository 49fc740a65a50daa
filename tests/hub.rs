//! The whole `reproduce` flow against a hub-protocol server on a free loopback port, from an empty
//! `HF_HOME`, with the network failing on the way (5xx, cut and reset connections, a corrupt
//! body): the run completes, the cache it fills has `huggingface_hub`'s layout, and the same run
//! offline from that cache ends with the same metrics.

use peftkit_testhub::{FakeHub, Fault, Kind, Route};
use std::path::Path;
use std::process::Command;

mod common;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `peftkit reproduce minilm-sst2-head` for a few steps with the model and data from the hub.
fn reproduce(hf_home: &Path, run: &Path, endpoint: Option<&str>) -> std::process::Output {
    let mut c = common::peftkit();
    c.env("HF_HOME", hf_home)
        .env("PEFTKIT_MINILM_DIR", MINILM)
        .env("PEFTKIT_HUB_RETRY_WAIT_MS", "10")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE");
    match endpoint {
        Some(e) => c.env("HF_ENDPOINT", e).env_remove("HF_HUB_OFFLINE"),
        None => c.env("HF_HUB_OFFLINE", "1").env_remove("HF_ENDPOINT"),
    };
    run_cmd(c.args([
        "reproduce",
        "minilm-sst2-head",
        "--output",
        run.to_str().unwrap(),
        "--set",
        "data.train_subset=64",
        "--set",
        "data.eval_subset=64",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.per_device_train_batch_size=16",
        "--device",
        "cpu",
        "--quiet",
    ]))
}

fn run_cmd(c: &mut Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn reproduce_downloads_through_faults_then_runs_offline_from_the_cache() {
    let Ok(minilm) = std::env::var("PEFTKIT_MINILM_DIR") else {
        return; // `cargo xtask test` sets it
    };
    let glue = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/hf-home/hub/datasets--nyu-mll--glue/snapshots");
    let Some(glue) = std::fs::read_dir(&glue)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
    else {
        return; // no offline cache beside the checkout
    };
    let hub = FakeHub::start();
    hub.add_repo_dir(Kind::Model, MINILM, Path::new(&minilm));
    hub.add_repo_dir(Kind::Dataset, "nyu-mll/glue", &glue);
    hub.fault(Route::Info, MINILM, Fault::Status(503));
    hub.fault(Route::Get, "model.safetensors", Fault::CutAfter(30_000_000));
    hub.fault(Route::Get, "model.safetensors", Fault::Reset);
    hub.fault(Route::Head, "tokenizer.json", Fault::Status(500));
    hub.fault(Route::Info, "nyu-mll/glue", Fault::Reset);
    hub.fault(
        Route::Get,
        "sst2/train-00000-of-00001.parquet",
        Fault::Corrupt,
    );
    hub.fault(
        Route::Get,
        "sst2/validation-00000-of-00001.parquet",
        Fault::CutAfter(1000),
    );

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf-home");
    let online = tmp.path().join("online");
    reproduce(&home, &online, Some(&hub.endpoint()));
    let weights: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/") && r.method == "GET")
        .filter_map(|r| r.range)
        .collect();
    assert!(
        weights.contains(&"bytes=30000000-".to_string()),
        "the cut download was not resumed: {weights:?}"
    );
    // The cache is huggingface_hub's: refs, blobs, snapshot links, nothing left over.
    let model_repo = home.join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    let commit = std::fs::read_to_string(model_repo.join("refs/main")).unwrap();
    assert_eq!(commit, hub.commit(Kind::Model, MINILM));
    let snapshot = model_repo.join("snapshots").join(&commit);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(Path::new(&minilm).join("model.safetensors")).unwrap()
    );
    for repo in [model_repo.clone(), home.join("hub/datasets--nyu-mll--glue")] {
        for e in std::fs::read_dir(repo.join("blobs")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.contains('.'), "left in blobs/: {name}");
        }
    }
    drop(hub);

    // Offline from the cache it filled: the same numbers.
    let offline = tmp.path().join("offline");
    reproduce(&home, &offline, None);
    let a = json(&online.join("report.json"));
    let b = json(&offline.join("report.json"));
    assert_eq!(a["train"]["global_step"], 4);
    for k in ["metrics", "loss", "rows"] {
        assert_eq!(a["final_results"][0][k], b["final_results"][0][k], "{k}");
    }
    assert_eq!(a["train"]["train_loss"], b["train"]["train_loss"]);
}
