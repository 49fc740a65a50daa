//! Compiles `csrc/` against the libtorch that torch-sys links: `recomputed_linear.cpp` (the one
//! autograd node peftkit needs that tch cannot express) and `device_memory.cpp` (the CUDA
//! allocator's statistics, which tch does not expose); and links `libtorch_cuda` into the
//! crate's benches and examples.

include!("../../build-support/link_torch_cuda.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../build-support/link_torch_cuda.rs");
    // Benches and examples may run on a GPU machine: link libtorch_cuda (tch-rs #980).
    let lib_dir = link_torch_cuda(&["-benches", "-examples", "-tests"])
        .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (the libtorch lib directory)");
    println!("cargo:rerun-if-changed=csrc");
    // The headers sit beside the lib directory (a libtorch zip and a PyTorch wheel have the same
    // layout).
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
        .file("csrc/sdpa.cpp")
        .file("csrc/dropout.cpp")
        .file("csrc/fused_adam.cpp")
        .compile("peftkit_ops");
}
