//! Compiles `csrc/c10d.cpp` against the libtorch that torch-sys links. The wheel ships c10d's
//! headers but not gloo's: `csrc/gloo_decls/` declares the few gloo types c10d's header names
//! (see its README).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::path::PathBuf::from(
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
        .include("csrc/gloo_decls")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        // PyTorch ≥ 2.7 (tch 0.24 needs 2.11) is built with the C++11 ABI only.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/c10d.cpp")
        .compile("peftkit_c10d");
    // Test binaries spawn themselves as ranks: they find libtorch without LD_LIBRARY_PATH.
    println!(
        "cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}",
        lib_dir.display()
    );
}
