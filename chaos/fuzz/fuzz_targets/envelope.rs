#![no_main]
//! Fuzzes `relay_chaos::fuzz::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::envelope(data));
