//! [`VoipBuilder::without_media`]: a `Voip` for apps whose media goes elsewhere (their own LiveKit
//! SDK in SFU mode): membership, media keys and credentials work; a 1:1 call or mesh peer call
//! that would need media ends at once as `user_media_failed`, with no media stack built.

use std::sync::Arc;

use tokio::sync::mpsc;
use voip_core::media::{MediaCommand, MediaEvent, MediaOperation};

use crate::MediaEngine;
use voip_core::CallId;

use crate::runtime::VoipBuilder;

/// Refuses every peer connection (there is no media engine).
struct NoMedia {
    events: mpsc::UnboundedSender<(CallId, MediaEvent)>,
}

impl MediaEngine for NoMedia {
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        if let MediaCommand::CreatePeer { .. } = command {
            let error = "this Voip was built without media (VoipBuilder::without_media)".to_owned();
            let _ = self
                .events
                .send((call_id, MediaEvent::Failed { operation: MediaOperation::CreatePeer, error }));
        }
    }
}

impl VoipBuilder {
    /// Builds without a media engine, for apps whose media goes through their own stack (the
    /// LiveKit SDK in SFU mode: [`crate::GroupCall::livekit_session`] and
    /// [`VoipBuilder::livekit_key_provider`](crate::VoipBuilder) give it what it needs). Calls
    /// that need media here — 1:1 calls, mesh peer calls — end at once with
    /// [`voip_core::EndReason::UserMediaFailed`]; incoming 1:1 calls still ring and can be
    /// rejected.
    pub fn without_media(self) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        self.media_engine(Arc::new(NoMedia { events: tx }), rx)
    }
}
