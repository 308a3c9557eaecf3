//! The media engine seam: the driver hands the core's [`MediaCommand`]s to a [`MediaEngine`].
//!
//! The trait lives here, on the adapter side: the core only speaks the vocabulary
//! ([`MediaCommand`] out, [`MediaEvent`] in) and never calls an engine. Everything an engine
//! needs travels in the commands (e.g. the remote streams' purposes ride on
//! `SetRemoteDescription`); there is no side channel from the core's app events.

use voip_core::media::MediaCommand;
#[cfg(doc)]
use voip_core::media::MediaEvent;
use voip_core::CallId;

/// Executes the core's media commands. Implemented by `voip_webrtc::WebrtcEngine`; an app that brings its own WebRTC stack (a native libwebrtc binding, a browser bridge, a fake) implements
/// it too and hands it to the runtime instead.
///
/// # Contract
///
/// * [`MediaEngine::execute`] never blocks and never fails: it queues the command. Commands of
///   one call are executed in the order they were queued; calls are independent.
/// * Results come back as `(CallId, MediaEvent)` pairs on whatever channel the engine was built
///   with (voip-webrtc: its `MediaEventSender`); the runtime feeds each into the core as
///   [`voip_core::Input::Media`]. `CreateOffer` / `CreateAnswer` answer with [`MediaEvent::LocalDescription`]
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
/// use std::sync::{mpsc, Mutex};
/// use voip::core::media::{MediaCommand, MediaEvent, SessionDescription};
/// use voip::core::CallId;
/// use voip::MediaEngine;
///
/// /// An engine that answers every offer request with a canned description (a real one
/// /// would drive a native WebRTC stack here).
/// struct CannedEngine {
///     events: Mutex<mpsc::Sender<(CallId, MediaEvent)>>,
///     log: Mutex<Vec<(CallId, MediaCommand)>>,
/// }
///
/// impl MediaEngine for CannedEngine {
///     fn execute(&self, call_id: CallId, command: MediaCommand) {
///         if matches!(command, MediaCommand::CreateOffer { .. }) {
///             let description = SessionDescription::offer("v=0\r\n");
///             let _ = self.events.lock().unwrap().send((call_id.clone(), MediaEvent::LocalDescription { description }));
///         }
///         self.log.lock().unwrap().push((call_id, command));
///     }
/// }
///
/// let (events, rx) = mpsc::channel();
/// let engine: Box<dyn MediaEngine> =
///     Box::new(CannedEngine { events: Mutex::new(events), log: Mutex::new(Vec::new()) });
/// engine.execute("c1".into(), MediaCommand::CreateOffer { ice_restart: false });
/// assert!(matches!(rx.try_recv(), Ok((_, MediaEvent::LocalDescription { .. }))));
/// ```
pub trait MediaEngine: Send + Sync + 'static {
    /// Queue `command` for `call_id`.
    fn execute(&self, call_id: CallId, command: MediaCommand);
}

/// A closure is an engine: handy for fakes and test doubles (it must queue, not block).
impl<F> MediaEngine for F
where
    F: Fn(CallId, MediaCommand) + Send + Sync + 'static,
{
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        self(call_id, command);
    }
}

#[cfg(feature = "webrtc")]
impl MediaEngine for voip_webrtc::WebrtcEngine {
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        voip_webrtc::WebrtcEngine::execute(self, call_id, command);
    }
}
