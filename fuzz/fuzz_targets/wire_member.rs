//! `cargo +nightly fuzz run wire_member`: see `voip_sim::fuzzing::wire_member` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voip_sim::fuzzing::wire_member(data));
