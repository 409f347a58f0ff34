#![no_main]
//! Fuzzes `relay_chaos::fuzz::locator_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::locator_config(data));
