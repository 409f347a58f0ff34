#![no_main]
//! Fuzzes `relay_chaos::fuzz::edge_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::edge_config(data));
