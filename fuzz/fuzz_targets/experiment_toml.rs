#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| peftkit_fuzz::run("experiment_toml", data));
