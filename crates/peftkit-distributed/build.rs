//! Compiles `csrc/` against the libtorch that torch-sys links: `c10d.cpp` (TCPStore, Gloo) always;
//! `nccl.cpp` with NCCL when that libtorch has CUDA and a CUDA toolkit's headers (`CUDA_HOME`,
//! `/usr/local/cuda`) and NCCL's (`NCCL_HOME`, the wheel's `nvidia/nccl/include`) are found, else
//! as a stub that says so.
//! The wheel ships c10d's headers but not gloo's: `csrc/gloo_decls/` declares the few gloo types
//! c10d's header names (see its README).

use std::path::{Path, PathBuf};

/// Include directories holding `header`, from the wheel's nvidia packages and the environment.
fn find_header(lib_dir: &Path, header: &str, env: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os(env) {
        candidates.push(PathBuf::from(home).join("include"));
    }
    // <site-packages>/torch/lib → <site-packages>/nvidia/<pkg>/include
    if let Some(site) = lib_dir.parent().and_then(Path::parent) {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut dirs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("include"))
                .collect();
            dirs.sort();
            candidates.extend(dirs);
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates.push(PathBuf::from("/usr/include"));
    candidates.into_iter().find(|d| d.join(header).is_file())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=NCCL_HOME");
    let lib_dir = PathBuf::from(
        std::env::var_os("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (the libtorch lib directory)"),
    );
    let root = lib_dir
        .parent()
        .expect("libtorch lib directory has a parent")
        .to_path_buf();
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include("csrc/gloo_decls")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            // PyTorch ≥ 2.7 (tch 0.24 needs 2.11) is built with the C++11 ABI only.
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT");
        b
    };
    base().file("csrc/c10d.cpp").compile("peftkit_c10d");
    let mut nccl = base();
    let cuda_torch = lib_dir.join("libtorch_cuda.so").exists();
    // A CUDA toolkit's headers (the wheel's `nvidia/cu13/include` lacks `crt/`, which
    // `cuda_runtime.h` includes, so on a machine with only the wheel NCCL is not built).
    let cuda = find_header(&lib_dir, "crt/host_config.h", "CUDA_HOME")
        .filter(|d| d.join("cuda_runtime_api.h").is_file());
    let nccl_h = find_header(&lib_dir, "nccl.h", "NCCL_HOME");
    if let (true, Some(cuda), Some(nccl_h)) = (cuda_torch, cuda, nccl_h) {
        nccl.define("PEFTKIT_WITH_NCCL", None)
            .include(cuda)
            .include(nccl_h);
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        // `c10::cuda::set_device` and the CUDA stream guards live in libc10_cuda.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    nccl.file("csrc/nccl.cpp").compile("peftkit_nccl");
    // Test binaries spawn themselves as ranks: they find libtorch without LD_LIBRARY_PATH.
    println!(
        "cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}",
        lib_dir.display()
    );
}
