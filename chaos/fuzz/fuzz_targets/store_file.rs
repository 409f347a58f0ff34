#![no_main]
//! Fuzzes `relay_chaos::fuzz::store_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::store_file(data));
