//! Wire shapes of the events the core reads and writes: lenient on input, strict on output.
//!
//! Parsing is hand-written over `serde_json::Value` rather than derived, so that every
//! tolerance real clients need is explicit (version `"1"`, `1` or `0`; numeric strings for
//! `lifetime`; both the stable and the `org.matrix.msc3077.` stream-metadata keys; unknown
//! fields ignored) and every refusal names the event type and the field ([`WireError`]).

pub mod call;
mod fields;
pub mod keys;
pub mod member;

pub use fields::{WireError, WireErrorKind};
