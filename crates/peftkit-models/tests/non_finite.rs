//! A checkpoint holding NaN or ±Inf loads, and the load report names each such tensor (the CLI
//! warns with it; evaluation and prediction then refuse the non-finite logits).

use peftkit_models::{read_safetensors, save_safetensors, LoadOptions, SequenceClassifier};
use std::path::Path;
use tch::Device;

#[test]
fn non_finite_tensors_are_named_in_the_load_report() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/tiny-bert");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = read_safetensors(&src.join("model.safetensors")).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut nan, mut inf) = (None, None);
    for (name, t) in tensors.iter_mut() {
        if !t.is_floating_point() || t.dim() != 2 {
            continue;
        }
        if nan.is_none() {
            *t = t.copy();
            let _ = t.get(0).get(0).fill_(f64::NAN);
            nan = Some(name.clone());
        } else if inf.is_none() {
            *t = t.copy();
            let _ = t.get(0).get(1).fill_(f64::NEG_INFINITY);
            inf = Some(name.clone());
        }
    }
    save_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    let (_, report) = SequenceClassifier::load(tmp.path(), &LoadOptions::new(Device::Cpu)).unwrap();
    let mut want = vec![nan.unwrap(), inf.unwrap()];
    want.sort();
    let mut got = report.non_finite.clone();
    got.sort();
    assert_eq!(got, want);
    assert!(
        report.to_string().contains("NaN or infinite values in"),
        "{report}"
    );

    // The fixture itself is finite.
    let (_, clean) = SequenceClassifier::load(&src, &LoadOptions::new(Device::Cpu)).unwrap();
    assert!(clean.non_finite.is_empty(), "{:?}", clean.non_finite);
}
