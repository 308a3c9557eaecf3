//! `cargo +nightly fuzz run handle`: see `voip_sim::fuzzing::handle` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voip_sim::fuzzing::handle(data));
