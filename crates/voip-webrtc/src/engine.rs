//! The media-engine contract between the core's media vocabulary and an implementation.

use tokio::sync::mpsc;
use voip_core::media::{MediaCommand, MediaEvent};
use voip_core::{CallId, Event};

/// Where an engine reports [`MediaEvent`]s: the runtime forwards each one into the core as
/// `Input::Media { call_id, event }`.
pub type MediaEventSender = mpsc::UnboundedSender<(CallId, MediaEvent)>;

/// The receiving end of [`MediaEventSender`].
pub type MediaEventReceiver = mpsc::UnboundedReceiver<(CallId, MediaEvent)>;

/// A channel pair for media events.
pub fn media_event_channel() -> (MediaEventSender, MediaEventReceiver) {
    mpsc::unbounded_channel()
}

/// Executes the core's media commands. Implemented by [`crate::WebrtcEngine`]; an app that
/// brings its own WebRTC stack (a native libwebrtc binding, a browser bridge, a fake) implements
/// it too and hands it to the runtime instead.
///
/// # Contract
///
/// * [`MediaEngine::execute`] never blocks and never fails: it queues the command. Commands of
///   one call are executed in the order they were queued; calls are independent.
/// * Results come back as `(CallId, MediaEvent)` on the [`MediaEventSender`] the engine was
///   built with: `CreateOffer` / `CreateAnswer` answer with [`MediaEvent::LocalDescription`]
///   (after applying it locally), and a failing operation with [`MediaEvent::Failed`].
/// * [`MediaEvent::LocalCandidate`]s of a call are reported only after the
///   [`MediaEvent::LocalDescription`] they belong to, with the real `sdpMid`, followed by
///   [`MediaEvent::GatheringComplete`].
/// * Remote candidates received before the remote description are buffered, not rejected; the
///   end-of-candidates marker (empty `candidate`) is accepted.
/// * The stream id of `AddLocalStream` is the msid stream id in the local SDP.
/// * After `Close`, the call's peer connection, tasks and sockets are released, no further
///   event is reported for it, and later commands for the same call id are dropped.
///
/// # Bringing your own engine
///
/// ```
/// use std::sync::Mutex;
/// use voip_core::media::{MediaCommand, MediaEvent, SessionDescription};
/// use voip_core::CallId;
/// use voip_webrtc::{MediaEngine, MediaEventSender};
///
/// /// An engine that answers every offer request with a canned description (a real one
/// /// would drive a native WebRTC stack here).
/// struct CannedEngine {
///     events: MediaEventSender,
///     log: Mutex<Vec<(CallId, MediaCommand)>>,
/// }
///
/// impl MediaEngine for CannedEngine {
///     fn execute(&self, call_id: CallId, command: MediaCommand) {
///         if matches!(command, MediaCommand::CreateOffer { .. }) {
///             let description = SessionDescription::offer("v=0\r\n");
///             let _ = self.events.send((call_id.clone(), MediaEvent::LocalDescription { description }));
///         }
///         self.log.lock().unwrap().push((call_id, command));
///     }
/// }
///
/// let (events, mut rx) = voip_webrtc::media_event_channel();
/// let engine: Box<dyn MediaEngine> = Box::new(CannedEngine { events, log: Mutex::new(Vec::new()) });
/// engine.execute("c1".into(), MediaCommand::CreateOffer { ice_restart: false });
/// assert!(matches!(rx.try_recv(), Ok((_, MediaEvent::LocalDescription { .. }))));
/// ```
pub trait MediaEngine: Send + Sync + 'static {
    /// Queue `command` for `call_id`.
    fn execute(&self, call_id: CallId, command: MediaCommand);

    /// Lets the engine see the core's app events (e.g. `StreamsChanged`, whose stream
    /// purposes come from `sdp_stream_metadata` and are not in the SDP). Default: ignored.
    fn observe(&self, event: &Event) {
        let _ = event;
    }
}
