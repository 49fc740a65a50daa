//! The hub download path against a hub-protocol server on a free loopback port
//! (`peftkit-testhub`) with injected faults: the cache layout `huggingface_hub` uses, retries,
//! resumption with `Range`, size and sha256 verification, no half file left anywhere, and errors
//! that tell not found / private / gated / no such file / unreachable apart.

use peftkit_data::{resolve_model_with, DataError, HubSettings, HubSource};
use peftkit_testhub::{sha256_hex, FakeHub, Fault, Kind, Route};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MODEL: &str = "org/tiny-model";

/// A 3 MB "weights" file (LFS: served through the CDN redirect) and two small files.
fn model_files() -> Vec<(String, Vec<u8>)> {
    let weights: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vec![
        ("config.json".into(), br#"{"model_type": "bert"}"#.to_vec()),
        ("tokenizer.json".into(), br#"{"version": "1.0"}"#.to_vec()),
        ("model.safetensors".into(), weights),
        ("README.md".into(), b"# tiny".to_vec()),
    ]
}

fn hub() -> FakeHub {
    let hub = FakeHub::start();
    hub.add_repo(Kind::Model, MODEL, model_files());
    hub
}

fn settings(hub_endpoint: &str, cache: &Path) -> HubSettings {
    HubSettings {
        endpoint: hub_endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        token_path: cache.join("token"),
        offline: false,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        retry_wait: Duration::from_millis(5),
        progress: false,
    }
}

fn weights_sha() -> String {
    sha256_hex(&model_files()[2].1)
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn gets_of(hub: &FakeHub, what: &str) -> Vec<Option<String>> {
    hub.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(what))
        .map(|r| r.range)
        .collect()
}

#[test]
fn a_model_lands_in_the_cache_layout_and_resolves_offline_after() {
    let hub = hub();
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub.endpoint(), tmp.path());
    let dir = resolve_model_with(&s, MODEL, None, true).unwrap();
    let commit = hub.commit(Kind::Model, MODEL);
    let repo = tmp.path().join("models--org--tiny-model");
    assert_eq!(dir, repo.join("snapshots").join(&commit));
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    // The weights' blob is named by its sha256 (the LFS ETag); snapshot entries are relative links.
    let sha = weights_sha();
    assert_eq!(
        std::fs::read_link(dir.join("model.safetensors")).unwrap(),
        Path::new("../../blobs").join(&sha)
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        model_files()[2].1
    );
    // README.md is not a file peftkit needs.
    assert!(!dir.join("README.md").exists());
    assert!(tree(&repo)
        .iter()
        .all(|f| !f.contains("incomplete") && !f.contains(".tmp-")));
    // The token is never sent when there is none; the CDN got one plain GET.
    assert!(hub.requests().iter().all(|r| r.authorization.is_none()));
    assert_eq!(gets_of(&hub, &sha), vec![None]);

    // Again, online: only the info call, nothing downloaded twice.
    hub.clear_log();
    assert_eq!(resolve_model_with(&s, MODEL, None, true).unwrap(), dir);
    let paths: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec![format!("/api/models/{MODEL}/revision/main")]);

    // Offline: no request at all.
    hub.clear_log();
    let offline = HubSettings {
        offline: true,
        ..s.clone()
    };
    assert_eq!(
        resolve_model_with(&offline, MODEL, None, true).unwrap(),
        dir
    );
    assert!(hub.requests().is_empty());
}

#[test]
fn transient_failures_are_retried_with_backoff() {
    let hub = hub();
    let tmp = tempfile::tempdir().unwrap();
    hub.fault(Route::Info, MODEL, Fault::Status(503));
    hub.fault(Route::Info, MODEL, Fault::Status(429));
    hub.fault(Route::Head, "model.safetensors", Fault::Status(500));
    hub.fault(Route::Get, "config.json", Fault::Status(502));
    hub.fault(Route::Get, "tokenizer.json", Fault::Reset);
    hub.fault(Route::Get, "model.safetensors", Fault::Reset);
    let mut s = settings(&hub.endpoint(), tmp.path());
    s.retry_wait = Duration::from_millis(40);
    let t0 = Instant::now();
    let dir = resolve_model_with(&s, MODEL, None, true).unwrap();
    // Two info retries waited 40 + 80 ms; each file's one retry waited 40 ms.
    assert!(t0.elapsed() >= Duration::from_millis(40 + 80 + 4 * 40));
    for (name, bytes) in model_files().into_iter().take(3) {
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), bytes, "{name}");
    }
    let infos = hub
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/"))
        .count();
    assert_eq!(infos, 3);
}

#[test]
fn a_cut_download_resumes_from_the_incomplete_file() {
    let hub = hub();
    let tmp = tempfile::tempdir().unwrap();
    let sha = weights_sha();
    // Within one run: the second request asks for the rest.
    hub.fault(Route::Get, "model.safetensors", Fault::CutAfter(1_000_000));
    let s = settings(&hub.endpoint(), tmp.path());
    let dir = resolve_model_with(&s, MODEL, None, true).unwrap();
    assert_eq!(
        gets_of(&hub, &sha),
        vec![None, Some("bytes=1000000-".to_string())]
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        model_files()[2].1
    );

    // Across runs: a run that gives up leaves only the `.incomplete` file, which the next resumes.
    let tmp = tempfile::tempdir().unwrap();
    hub.clear_log();
    hub.fault(Route::Get, "model.safetensors", Fault::CutAfter(700_000));
    let no_retry = HubSettings {
        max_retries: 0,
        ..settings(&hub.endpoint(), tmp.path())
    };
    let err = resolve_model_with(&no_retry, MODEL, None, true).unwrap_err();
    assert!(matches!(err, DataError::HubDownload { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("model `org/tiny-model`: downloading `model.safetensors` failed after 1 attempt(s): the connection broke after 700000 of 3000000 bytes"),
        "{msg}"
    );
    let repo = tmp.path().join("models--org--tiny-model");
    let commit = hub.commit(Kind::Model, MODEL);
    let left = tree(&repo);
    assert!(
        left.contains(&format!("blobs/{sha}.incomplete")),
        "{left:?}"
    );
    assert!(!left.contains(&format!("blobs/{sha}")), "{left:?}");
    assert!(
        !left.iter().any(|f| f.ends_with("model.safetensors")),
        "{left:?}"
    );
    assert!(!repo
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors")
        .exists());
    let dir =
        resolve_model_with(&settings(&hub.endpoint(), tmp.path()), MODEL, None, true).unwrap();
    assert_eq!(
        gets_of(&hub, &sha),
        vec![None, Some("bytes=700000-".to_string())]
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        model_files()[2].1
    );
    assert!(!tree(&repo).iter().any(|f| f.contains("incomplete")));
}

#[test]
fn corrupt_or_wrong_size_downloads_are_never_kept() {
    let hub = hub();
    let sha = weights_sha();
    // Once corrupt, once too long: both retried from scratch, then right.
    let tmp = tempfile::tempdir().unwrap();
    hub.fault(Route::Get, "model.safetensors", Fault::Corrupt);
    hub.fault(Route::Get, "model.safetensors", Fault::Longer(10));
    let dir =
        resolve_model_with(&settings(&hub.endpoint(), tmp.path()), MODEL, None, true).unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        model_files()[2].1
    );
    assert_eq!(gets_of(&hub, &sha), vec![None, None, None]);

    // Always corrupt: an error naming the checksums, and nothing of it in the cache.
    let tmp = tempfile::tempdir().unwrap();
    for _ in 0..4 {
        hub.fault(Route::Get, "model.safetensors", Fault::Corrupt);
    }
    let err = resolve_model_with(&settings(&hub.endpoint(), tmp.path()), MODEL, None, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("downloading `model.safetensors` failed after 4 attempt(s): sha256 ")
            && err.contains(&format!("differs from the hub's {sha}")),
        "{err}"
    );
    let left = tree(&tmp.path().join("models--org--tiny-model"));
    assert!(
        !left
            .iter()
            .any(|f| f.contains(&sha) || f.ends_with("model.safetensors")),
        "{left:?}"
    );
}

#[test]
fn errors_tell_apart_what_went_wrong() {
    let hub = hub();
    hub.add_repo(Kind::Model, "org/private", model_files());
    hub.require_token(Kind::Model, "org/private", "hf_secret");
    hub.add_repo(Kind::Model, "org/gated", model_files());
    hub.gate(Kind::Model, "org/gated");
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub.endpoint(), tmp.path());
    let err = |model: &str, s: &HubSettings| resolve_model_with(s, model, None, true).unwrap_err();

    let e = err("nobody/nothing", &s);
    assert!(matches!(e, DataError::HubRepoNotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("model `nobody/nothing` was not found on the hub http://127.0.0.1:"),
        "{e}"
    );
    let e = err("org/private", &s);
    assert!(
        matches!(e, DataError::HubAccessDenied { status: 401, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("set HF_TOKEN or put a token in"),
        "{e}"
    );
    let e = err("org/gated", &s);
    assert!(
        matches!(e, DataError::HubAccessDenied { status: 403, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("accept its conditions on"), "{e}");
    let e = resolve_model_with(&s, MODEL, Some("v9"), true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "model `org/tiny-model` has no revision `v9` on the hub"
    );
    hub.fault(Route::Head, "config.json", Fault::Status(404));
    let e = err(MODEL, &s);
    assert!(matches!(e, DataError::HubFileNotFound { .. }), "{e}");
    assert!(e.to_string().contains("has no file `config.json`"), "{e}");
    // A dataset is called a dataset.
    let e = HubSource::new("nobody/data", None)
        .with_settings(s.clone())
        .resolve(None, "train")
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("dataset `nobody/data` was not found"),
        "{e}"
    );

    // With the token: the private repository downloads; the token went to the hub, not the CDN.
    hub.clear_log();
    let with_token = HubSettings {
        token: Some("hf_secret".into()),
        ..s.clone()
    };
    resolve_model_with(&with_token, "org/private", None, true).unwrap();
    for r in hub.requests() {
        let expected = (!r.path.starts_with("/cdn/")).then(|| "Bearer hf_secret".to_string());
        assert_eq!(r.authorization, expected, "{}", r.path);
    }
}

#[test]
fn an_unreachable_hub_fails_fast_or_falls_back_to_the_cache() {
    let hub = hub();
    let tmp = tempfile::tempdir().unwrap();
    let online = settings(&hub.endpoint(), tmp.path());
    let dir = resolve_model_with(&online, MODEL, None, true).unwrap();
    drop(hub);
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = HubSettings {
        retry_wait: Duration::from_secs(5),
        ..settings(&dead, tmp.path())
    };
    let t0 = Instant::now();
    assert_eq!(resolve_model_with(&s, MODEL, None, true).unwrap(), dir);
    let empty = tempfile::tempdir().unwrap();
    let e = resolve_model_with(
        &s.clone().with_cache_dir(empty.path().into()),
        MODEL,
        None,
        true,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::HubUnreachable { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "model `org/tiny-model`: cannot reach the hub {dead} ("
        )),
        "{e}"
    );
    assert!(e.to_string().contains("it is not in the cache"), "{e}");
    // Refused connections are not retried (no 5 s backoff was waited).
    assert!(t0.elapsed() < Duration::from_secs(4));
}

#[test]
fn renamed_repositories_and_datasets_resolve_through_redirects() {
    let hub = hub();
    hub.rename(Kind::Model, "old-org/tiny", MODEL);
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&hub.endpoint(), tmp.path());
    let dir = resolve_model_with(&s, "old-org/tiny", None, false).unwrap();
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
    assert!(!dir.join("model.safetensors").exists());

    // A real dataset (rotten_tomatoes from the offline cache) served and read back.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/hf-home/hub");
    let Some(snapshot) = HubSource::new("cornell-movie-review-data/rotten_tomatoes", None)
        .with_cache(shared)
        .cached_snapshot()
    else {
        return; // no offline cache beside the checkout
    };
    hub.add_repo_dir(
        Kind::Dataset,
        "cornell-movie-review-data/rotten_tomatoes",
        &snapshot,
    );
    hub.fault(Route::Get, "validation.parquet", Fault::CutAfter(5_000));
    let files: Vec<PathBuf> = HubSource::new("cornell-movie-review-data/rotten_tomatoes", None)
        .with_settings(s)
        .resolve(None, "validation")
        .unwrap();
    let split = peftkit_data::read_parquet(&files[0], &Default::default()).unwrap();
    assert_eq!(split.len(), 1066);
    assert!(files[0].starts_with(
        tmp.path()
            .join("datasets--cornell-movie-review-data--rotten_tomatoes")
    ));
}
