//! Deterministic simulator for `voip-core`.
//!
//! - [`Sim`]: N devices with one virtual clock, an in-memory homeserver that echoes room events
//!   to every member device and queues to-device messages, seeded faults, and a
//!   [`FakeMedia`] engine that "connects" two peers once both descriptions are set.
//! - [`conformance`]: the runner for the language-neutral fixtures in `fixtures/`.
#![deny(missing_docs)]

pub mod conformance;
mod media;
mod sim;

pub use media::{sdp_call_type, FakeMedia};
pub use sim::{Device, DeviceIdx, Faults, Sim};
