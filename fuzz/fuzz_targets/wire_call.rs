//! `cargo +nightly fuzz run wire_call`: see `voip_sim::fuzzing::wire_call` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voip_sim::fuzzing::wire_call(data));
