//! Makes the `peftkit` binaries link `libtorch_cuda.so` whenever the libtorch they are built
//! against has it, even though no symbol of it is referenced directly.
//!
//! Without `--no-as-needed` the linker drops the library (tch-rs issue #980) and a binary built
//! against a CUDA-enabled torch reports `cuda::is_available() == false` on a GPU machine. With it,
//! one release binary serves CPU (here) and CUDA (a GPU machine with the same torch version).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // torch-sys (links = "tch") exports its library directory to direct dependents.
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        return;
    };
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    // A default search path so the binary also runs outside `cargo xtask`; LD_LIBRARY_PATH
    // (RUNPATH semantics) still wins, which is how a GPU machine points it at its own torch.
    println!(
        "cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}",
        lib_dir.display()
    );
}
