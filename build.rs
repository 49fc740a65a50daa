//! Makes the `peftkit` binaries link `libtorch_cuda.so` whenever the libtorch they are built
//! against has it (see `build-support/link_torch_cuda.rs`).

include!("build-support/link_torch_cuda.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build-support/link_torch_cuda.rs");
    link_torch_cuda(&[""]);
}
