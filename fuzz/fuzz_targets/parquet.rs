#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| peftkit_fuzz::run("parquet", data));
