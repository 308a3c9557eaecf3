//! `cargo +nightly fuzz run wire_keys`: see `voip_sim::fuzzing::wire_keys` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voip_sim::fuzzing::wire_keys(data));
