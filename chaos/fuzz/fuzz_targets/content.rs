#![no_main]
//! Fuzzes `relay_chaos::fuzz::content`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::content(data));
