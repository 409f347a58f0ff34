#![no_main]
//! Fuzzes `relay_chaos::fuzz::region_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::region_config(data));
