#![no_main]
//! Fuzzes `relay_chaos::fuzz::dns_answer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay_chaos::fuzz::dns_answer(data));
