//! matrix-sdk adapter for [`voip_core`].
//!
//! [`MatrixAdapter`] takes an app's logged-in [`matrix_sdk::Client`] (the app keeps running its
//! own sync loop) and
//!
//! * **feeds the core**: its receiver yields [`voip_core::Input`]s for `m.call.*` room events
//!   (Megolm-decrypted in encrypted rooms), call and media-key to-device events (with
//!   `sender_device` from Olm and `encrypted: true` when they were encrypted), `m.room.member`
//!   state (initial and changes) and the results of [`MatrixAdapter::submit`];
//! * **executes the core's sends** ([`MatrixAdapter::execute`] / [`MatrixAdapter::submit`]): room
//!   events with the core's `txn_id` as transaction id, to-device batches Olm-encrypted where
//!   asked (a `Required` message to a device without known keys, or any media-key message that
//!   cannot be encrypted, is refused rather than sent in clear), one attempt each: the core
//!   owns the retries of its sends (back-off, `Retry-After`), so they live in one layer;
//! * offers what group calls need before the core models it: state events with explicit keys
//!   ([`MatrixAdapter::send_state`]), MSC4140 delayed events ([`MatrixAdapter::schedule_delayed`],
//!   [`MatrixAdapter::update_delayed`]), OpenID tokens, TURN servers with TTL refresh,
//!   `/versions` capabilities, and group-call membership state
//!   ([`MatrixAdapter::call_member_events`]).
//!
//! ```no_run
//! # async fn run(client: matrix_sdk::Client, mut voip: VoipStub) {
//! use voip_matrix::MatrixAdapter;
//! let (adapter, mut inputs) = MatrixAdapter::new(client);
//! while let Some(input) = inputs.recv().await {
//!     // voip.handle(now, input); then for every Output::Send(req): adapter.submit(req);
//! #   let _ = (&adapter, input, &mut voip);
//! }
//! # }
//! # struct VoipStub;
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![recursion_limit = "256"]

mod adapter;
mod answer_watch;
mod extras;
pub mod inbound;
pub mod retry;
mod turn;

pub use adapter::{AdapterOptions, Delivery, MatrixAdapter};
pub use extras::{
    DelayedAction, DelayedEvent, DelayedEventRequest, OpenIdToken, StateEventRequest, MSC4140_FEATURE,
};
pub use inbound::CallMemberState;
pub use retry::{Failure, RetryPolicy, SendStats};
pub use turn::TurnServers;

/// Errors of the adapter's direct (non-core) operations.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The client has no session.
    #[error("the client is not logged in")]
    NotLoggedIn,
    /// A homeserver request failed.
    #[error(transparent)]
    Http(#[from] matrix_sdk::HttpError),
    /// Another matrix-sdk error.
    #[error(transparent)]
    Sdk(#[from] matrix_sdk::Error),
    /// A store error.
    #[error(transparent)]
    Store(#[from] matrix_sdk::StoreError),
}
