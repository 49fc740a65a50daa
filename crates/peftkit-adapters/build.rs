//! Links `libtorch_cuda` into the crate's benches and examples, which may run on a GPU machine
//! (see `build-support/link_torch_cuda.rs`).

include!("../../build-support/link_torch_cuda.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../build-support/link_torch_cuda.rs");
    link_torch_cuda(&["-benches", "-examples", "-tests"]);
}
