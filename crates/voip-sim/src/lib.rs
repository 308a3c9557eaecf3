//! Deterministic simulator for `voip-core`.
//!
//! - [`Sim`]: N devices with one virtual clock, an in-memory homeserver that echoes room events
//!   to every member device and queues to-device messages, seeded faults, and a
//!   [`FakeMedia`] engine that "connects" two peers once both descriptions are set.
//! - [`conformance`]: the runner for the language-neutral fixtures in `fixtures/`.
//! - [`invariants`]: the invariant checker run after every step by the property tests and
//!   `cargo xtask sim`; [`scenario`]: seeded fault scenarios, replayable traces, shrinking.
//! - [`fuzzing`]: the harness functions of the fuzz targets in `fuzz/` (also replayed as tests).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub mod conformance;
#[doc(hidden)]
pub mod fuzzing;
pub mod invariants;
mod media;
pub mod scenario;
mod sim;

pub use media::{sdp_call_type, FakeMedia};
pub use sim::{Device, DeviceIdx, Faults, Injected, Sim, ICE_DISCONNECTED_AFTER_MS, ICE_FAILED_AFTER_MS};
