#![no_main]
//! Fuzzes `relay_chaos::fuzz::client_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::client_frames(data));
