//! Matrix calls for Rust: 1:1 calls (`m.call.*`), group calls in famedly's and Element Call's
//! (MatrixRTC) membership formats, mesh and LiveKit SFU backends, media keys — on matrix-sdk and
//! webrtc-rs, driven by the sans-IO state machine of [`voip_core`].
//!
//! A [`Voip`] runs one tokio task that owns the core: it feeds the core what the homeserver
//! sends (through a [`Transport`]: matrix-sdk with feature `matrix`, or the in-process
//! [`local::LocalHomeserver`]), what the media engine reports (webrtc-rs with feature `webrtc`,
//! or any [`MediaEngine`]) and timer ticks, and executes what the core asks for.
//! Apps hold cheap handles: [`Call`] and [`GroupCall`]; the task stops when the last handle is
//! dropped or on [`Voip::shutdown`]. Event feeds are [`futures_core::Stream`]s ([`StreamExt`]
//! is re-exported for `next().await`); time comes from a [`Clock`] ([`ManualClock`] in tests).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), voip::VoipError> {
//! use voip::core::media::MediaCommand;
//! use voip::MediaEngine;
//! use voip::{local::LocalHomeserver, CallType, StreamExt, VoipBuilder};
//!
//! # struct NoMedia;
//! # impl MediaEngine for NoMedia { fn execute(&self, _: voip::core::CallId, _: MediaCommand) {} }
//! let hs = LocalHomeserver::new();
//! let room = hs.create_room(&["@alice:local", "@bob:local"]);
//! let start = |user: &str, device: &str| {
//!     let c = hs.connect(user, device);
//!     let (_tx, media_events) = tokio::sync::mpsc::unbounded_channel();
//!     // A real app: `.webrtc(WebrtcConfig::default())` or `Voip::from_client(&client)?`.
//!     VoipBuilder::new(c.device, c.transport, c.inputs)
//!         .media_engine(std::sync::Arc::new(NoMedia), media_events)
//!         .build()
//! };
//! let alice = start("@alice:local", "ALICE")?;
//! let bob = start("@bob:local", "BOB")?;
//! let mut incoming = bob.incoming_calls();
//!
//! let call = alice.invite_to_call(&room, CallType::Voice, "@bob:local").await?;
//! # // Without a media engine the invite is never sent; stop here in this example.
//! # if false {
//! let ringing = incoming.next().await.expect("bob's phone rings");
//! ringing.answer().await?;
//! # }
//! call.hangup().await?;
//! # alice.shutdown().await; bob.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Feature flags: `matrix` (default; `Voip::from_client`), `webrtc` (default;
//! `VoipBuilder::webrtc`), `livekit` (`GroupCall::livekit_credentials`,
//! `VoipBuilder::livekit_key_provider`), `sync-service` (`sync::sync_service`: matrix-sdk-ui's
//! `SyncService` set up for calls). Apps that run their own sync loop should use [`sync::sync`]
//! or [`sync::SyncLoop`] rather than `Client::sync` (which pauses 1 s between quick responses).
//!
//! Examples, in `examples/` (`cargo run -p voip --example NAME`; on the in-process homeserver,
//! with real webrtc-rs media on loopback):
//!
//! * `one_to_one`: a 1:1 voice call start to finish: place, ring, answer, connect, hang up.
//! * `echo_bot`: a bot that answers every call and sends the caller's own audio back.
//! * `mesh_group_call`: a mesh group call of three: everyone enters, every pair gets a peer
//!   call, audio flows, one leaves, the others see it.
//! * `livekit_keys`: LiveKit SFU mode: membership and media keys handled, keys delivered to each
//!   app's key provider and rotated when a member leaves.
//! * `answering_machine` (feature `codecs`): answers, plays a WAV greeting, records the caller to
//!   a WAV file; decoded audio through libopus.
//!
//! In the repository only (they use its Synapse test rig, `voip-testkit`): `demo` (the readable
//! timeline of real calls that `cargo xtask test` runs, in-process or against a homeserver) and
//! `setup_bench` (call set-up times for `cargo xtask bench`).
//!
//! ---
//!
//! The rest of this page is the repository's README (the crate's page on crates.io too): its
//! Rust snippets, the quickstart among them, are compiled as doc tests of this crate.
#![cfg_attr(all(feature = "matrix", feature = "webrtc", feature = "livekit"), doc = include_str!("../README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod call;
pub mod clock;
mod driver;
mod engine;
mod error;
mod feed;
mod group;
#[cfg(feature = "livekit")]
mod livekit;
pub mod local;
#[cfg(feature = "matrix")]
mod matrix;
mod no_media;
mod runtime;
#[cfg(feature = "matrix")]
pub mod sync;
mod transport;
#[cfg(feature = "webrtc")]
mod with_webrtc;

pub use call::{Call, CallUpdate, CallUpdates};
pub use clock::{Clock, ManualClock, SystemClock};
pub use driver::InputErrors;
pub use engine::MediaEngine;
pub use error::VoipError;
pub use feed::Subscription;
/// `next().await` (and the other combinators) on the event streams.
pub use futures_util::StreamExt;
pub use group::{GroupCall, GroupCallBackend, GroupCallOptions, GroupCallUpdate, GroupCallUpdates};
pub use runtime::{Events, IncomingCalls, MediaEvents, MissedCall, MissedCalls, Voip, VoipBuilder, VoipTask};
pub use transport::{Inputs, Transport};

pub use voip_core::{
    CallDirection, CallState, CallType, Config, EndReason, GroupCallState, Initiator, MembershipDialect,
    NotificationType, Participant,
};

#[cfg(feature = "livekit")]
pub use livekit::{LivekitSession, LivekitUpdate};
/// The sans-IO core (all its types).
pub use voip_core as core;
/// LiveKit SFU mode: JWT service client, key providers, transport discovery.
#[cfg(feature = "livekit")]
pub use voip_livekit as livekit_sfu;
/// The matrix-sdk adapter.
#[cfg(feature = "matrix")]
pub use voip_matrix as matrix_adapter;
/// The webrtc-rs media engine.
#[cfg(feature = "webrtc")]
pub use voip_webrtc as webrtc;

/// Wall-clock time as the core counts it (ms since the Unix epoch), for the in-process
/// homeserver's timestamps; the driver asks its [`Clock`].
pub(crate) fn now() -> voip_core::Timestamp {
    clock::system_now()
}
