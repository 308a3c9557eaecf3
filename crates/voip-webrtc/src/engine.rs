//! The media-engine contract between the core's media vocabulary and an implementation.

use tokio::sync::mpsc;
use voip_core::media::MediaEvent;
use voip_core::CallId;

/// Where an engine reports [`MediaEvent`]s: the runtime forwards each one into the core as
/// `Input::Media { call_id, event }`.
pub type MediaEventSender = mpsc::UnboundedSender<(CallId, MediaEvent)>;

/// The receiving end of [`MediaEventSender`].
pub type MediaEventReceiver = mpsc::UnboundedReceiver<(CallId, MediaEvent)>;

/// A channel pair for media events.
pub fn media_event_channel() -> (MediaEventSender, MediaEventReceiver) {
    mpsc::unbounded_channel()
}

pub use voip_core::media::MediaEngine;
