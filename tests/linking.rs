//! The `peftkit` binary links `libtorch_cuda.so` whenever its libtorch has it, so that the same
//! release binary sees the GPU on a CUDA machine (tch-rs issue #980), and runs here on CPU.

use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")?
        .to_string_lossy()
        .split(':')
        .map(PathBuf::from)
        .find(|p| p.join("libtorch_cpu.so").exists())
}

#[test]
fn binary_needs_libtorch_cuda_when_available() {
    let lib = torch_lib_dir()
        .expect("LD_LIBRARY_PATH has no libtorch directory: run the tests with `cargo xtask test`");
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_peftkit")])
        .output()
        .expect("readelf (binutils) runs");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("[libtorch_cpu.so]"), "{dynamic}");
    if lib.join("libtorch_cuda.so").exists() {
        assert!(
            dynamic.contains("[libtorch_cuda.so]"),
            "libtorch_cuda.so was dropped by the linker:\n{dynamic}"
        );
    }
}

#[test]
fn info_runs_on_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_peftkit"))
        .args(["info", "--device", "cpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tensor check: sum = 4"), "{stdout}");
    // Asking for a GPU that is not there is a one-line error, not a crash.
    if !stdout.contains("cuda available: true") {
        let out = Command::new(env!("CARGO_BIN_EXE_peftkit"))
            .args(["info", "--device", "cuda"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("CUDA is not available"), "{err}");
    }
}
