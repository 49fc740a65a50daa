//! Compiles `csrc/` against the libtorch that torch-sys links: `recomputed_linear.cpp` (the one
//! autograd node peftkit needs that tch cannot express) and `device_memory.cpp` (the CUDA
//! allocator's statistics, which tch does not expose).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // torch-sys (links = "tch") exports its library directory to direct dependents; the headers
    // sit beside it (a libtorch zip and a PyTorch wheel have the same layout).
    let lib_dir = PathBuf::from(
        std::env::var_os("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (the libtorch lib directory)"),
    );
    let root = lib_dir
        .parent()
        .expect("libtorch lib directory has a parent");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        // PyTorch ≥ 2.7 (tch 0.24 needs 2.11) is built with the C++11 ABI only.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/recomputed_linear.cpp")
        .file("csrc/device_memory.cpp")
        .file("csrc/error.cpp")
        .compile("peftkit_ops");
}
