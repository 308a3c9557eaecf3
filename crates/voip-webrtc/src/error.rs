//! Errors of the adapter.

use voip_core::CallId;

/// What went wrong inside the webrtc-rs adapter.
///
/// Engine operations triggered by [`voip_core::MediaCommand`]s never return these to the caller:
/// they are reported to the core as [`voip_core::MediaEvent::Failed`]. These errors are returned
/// by the app-facing API ([`crate::WebrtcEngine`]) and by the bundled media readers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// webrtc-rs reported an error.
    #[error("webrtc: {0}")]
    Webrtc(#[from] webrtc::error::Error),
    /// No call with this id is running in the engine.
    #[error("no such call: {0}")]
    NoSuchCall(CallId),
    /// The call exists but has no peer connection yet (`CreatePeer` not executed).
    #[error("call {0} has no peer connection")]
    NoPeerConnection(CallId),
    /// A bundled or app-provided media file could not be parsed.
    #[error("malformed {container} data: {detail}")]
    MalformedMedia {
        /// `ogg` or `ivf`.
        container: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Local media could not be captured (returned by an app's
    /// [`crate::SourceFactory`]).
    #[error("local media: {0}")]
    LocalMedia(String),
    /// The call's task has ended (the call was closed).
    #[error("call {0} is closed")]
    CallClosed(CallId),
    /// The codec library (libopus) refused an operation (feature `codecs`).
    #[error("codec: {0}")]
    Codec(String),
    /// Reading or writing a media file failed (WAV: feature `codecs`).
    #[error("media file: {0}")]
    MediaFile(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
