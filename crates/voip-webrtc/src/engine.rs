//! The channel on which the engine reports [`MediaEvent`]s back to whoever drives the core.

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
