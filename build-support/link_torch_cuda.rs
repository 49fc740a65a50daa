// Shared by the build scripts of the packages whose binaries may run on a GPU (`include!`d):
// makes them link `libtorch_cuda.so` whenever the libtorch they are built against has it, even
// though no symbol of it is referenced directly.
//
// Without `--no-as-needed` the linker drops the library (tch-rs issue #980) and a binary built
// against a CUDA-enabled torch reports `cuda::is_available() == false` on a GPU machine. With it,
// one release binary serves CPU (here) and CUDA (a GPU machine with the same torch version). A
// default RUNPATH to the build's torch lets the binary run outside `cargo xtask`; LD_LIBRARY_PATH
// still wins, which is how a GPU machine points it at its own torch.
//
// `kinds`: the cargo target kinds the arguments apply to (`""` for all, or `"-bins"`,
// `"-examples"`, `"-benches"`, …, as in `cargo:rustc-link-arg-benches`).

/// Emits the link arguments; returns the libtorch lib directory (torch-sys's
/// `DEP_TCH_LIBTORCH_LIB`, exported to direct dependents of torch-sys), if known.
#[allow(dead_code)]
fn link_torch_cuda(kinds: &[&str]) -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::path::PathBuf::from(std::env::var_os("DEP_TCH_LIBTORCH_LIB")?);
    let cuda = lib_dir.join("libtorch_cuda.so").exists();
    for kind in kinds {
        if cuda {
            println!("cargo:rustc-link-arg{kind}=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg{kind}=-ltorch_cuda");
            println!("cargo:rustc-link-arg{kind}=-Wl,--as-needed");
        }
        println!(
            "cargo:rustc-link-arg{kind}=-Wl,--enable-new-dtags,-rpath,{}",
            lib_dir.display()
        );
    }
    Some(lib_dir)
}
