//! Errors of the public API.

/// Why a call to the API failed. Input from the network never surfaces here: the runtime logs
/// and counts what it ignores ([`crate::Voip::counters`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoipError {
    /// The core refused the command (unknown call, wrong state, calling ourselves, …).
    #[error(transparent)]
    Core(#[from] voip_core::Error),
    /// The runtime has stopped ([`crate::Voip::shutdown`], every handle dropped, or its input
    /// channel closed).
    #[error("the voip runtime has stopped")]
    Stopped,
    /// `build` was called outside a tokio runtime.
    #[error("no tokio runtime: build the Voip inside one")]
    NoRuntime,
    /// The operating system's random number generator failed (no seed for the core).
    #[error("no randomness from the operating system")]
    NoRandomness(#[source] getrandom::Error),
    /// The builder was given no media engine.
    #[error("no media engine: call VoipBuilder::media_engine or VoipBuilder::webrtc")]
    NoMediaEngine,
    /// The matrix-sdk client has no session.
    #[cfg(feature = "matrix")]
    #[error("the matrix-sdk client is not logged in")]
    NotLoggedIn,
    /// A homeserver request made by the API itself failed.
    #[cfg(feature = "matrix")]
    #[error(transparent)]
    Matrix(#[from] voip_matrix::AdapterError),
    /// The group call's backend is mesh, not LiveKit.
    #[error("the group call's backend is mesh, not LiveKit")]
    NotLiveKit,
    /// The group call has not been entered (enter it first).
    #[error("not in the group call: enter it first")]
    NotEntered,
    /// The runtime has no homeserver connection to ask (it was not built with
    /// `Voip::from_client`).
    #[error("no homeserver connection: build the Voip with Voip::from_client")]
    NoHomeserver,
    /// The JWT service refused or failed.
    #[cfg(feature = "livekit")]
    #[error(transparent)]
    LiveKit(#[from] voip_livekit::JwtError),
}
