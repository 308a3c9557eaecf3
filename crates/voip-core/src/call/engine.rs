//! What the media engine reports for a call (descriptions, candidates, connection
//! state, tracks, failures) and the commands the call gives it.

use super::*;

impl Call {
    pub(super) fn media(&self, ctx: &mut Ctx<'_>, command: MediaCommand) {
        ctx.out.push_back(Output::Media { call_id: self.id.clone(), command });
    }

    pub(crate) fn handle_media(&mut self, ctx: &mut Ctx<'_>, event: MediaEvent) {
        if self.is_ended() {
            return;
        }
        let _span = tracing::debug_span!("call", call_id = %self.id, party_id = %self.local_party).entered();
        match event {
            MediaEvent::LocalDescription { description } => self.on_local_description(ctx, description),
            MediaEvent::LocalCandidate { candidate } if candidate.is_end_of_candidates() => {
                if self.cands.gathering_complete() {
                    self.flush_candidates(ctx);
                }
            }
            MediaEvent::LocalCandidate { candidate } => {
                if self.cands.push_local(candidate) {
                    self.arm_candidate_flush(ctx);
                }
            }
            MediaEvent::GatheringComplete => {
                if self.cands.gathering_complete() {
                    self.flush_candidates(ctx);
                }
            }
            MediaEvent::ConnectionState { state } => self.on_connection_state(ctx, state),
            MediaEvent::RemoteTrack { stream_id, kind } => {
                match self.remote_tracks.iter_mut().find(|(id, _, _)| *id == stream_id) {
                    Some(entry) => match kind {
                        MediaKind::Audio => entry.1 = true,
                        MediaKind::Video => entry.2 = true,
                    },
                    None => self.remote_tracks.push((
                        stream_id,
                        kind == MediaKind::Audio,
                        kind == MediaKind::Video,
                    )),
                }
                self.emit_streams(ctx);
            }
            MediaEvent::RemoteTrackEnded { stream_id, kind } => {
                if let Some(pos) = self.remote_tracks.iter().position(|(id, _, _)| *id == stream_id) {
                    let entry = &mut self.remote_tracks[pos];
                    match kind {
                        MediaKind::Audio => entry.1 = false,
                        MediaKind::Video => entry.2 = false,
                    }
                    if !entry.1 && !entry.2 {
                        self.remote_tracks.remove(pos);
                    }
                    self.emit_streams(ctx);
                }
            }
            MediaEvent::NegotiationNeeded => {
                if matches!(self.state, CallState::Connecting | CallState::Connected) && self.peer_is_v1() {
                    self.start_offer(ctx, false);
                }
            }
            MediaEvent::Failed { operation, error } => {
                tracing::warn!(?operation, %error, "media engine failure");
                let reason = match operation {
                    MediaOperation::CreatePeer | MediaOperation::LocalMedia => EndReason::UserMediaFailed,
                    MediaOperation::AddCandidate => return,
                    // A failed renegotiation leaves the established media as it was.
                    MediaOperation::CreateOffer | MediaOperation::SetRemoteDescription
                        if matches!(self.state, CallState::Connected | CallState::Connecting) =>
                    {
                        self.finish_negotiation(ctx);
                        return;
                    }
                    _ => EndReason::UnknownError,
                };
                self.hangup(ctx, reason, Initiator::Library);
            }
        }
    }

    pub(super) fn on_connection_state(&mut self, ctx: &mut Ctx<'_>, state: ConnectionState) {
        match state {
            ConnectionState::Connected => {
                self.timers.clear(CallTimer::IceRestart);
                self.timers.clear(CallTimer::IceFailed);
                self.ice_restarts = 0;
                if matches!(self.state, CallState::Connecting) {
                    self.ever_connected = true;
                    self.set_state(ctx, CallState::Connected);
                }
            }
            ConnectionState::Disconnected => {
                if self.state == CallState::Connected {
                    self.set_state(ctx, CallState::Connecting);
                    self.timers.set(CallTimer::IceRestart, ctx.now.plus(ctx.config.ice_restart_delay_ms));
                    self.timers
                        .set_if_unset(CallTimer::IceFailed, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
                }
            }
            ConnectionState::Failed => {
                if matches!(self.state, CallState::Connected | CallState::Connecting) {
                    if self.state == CallState::Connected {
                        self.set_state(ctx, CallState::Connecting);
                    }
                    if self.peer_is_v1() {
                        self.restart_ice(ctx);
                    } else {
                        self.hangup(ctx, EndReason::IceFailed, Initiator::Library);
                    }
                }
            }
            ConnectionState::New | ConnectionState::Checking | ConnectionState::Closed => {}
        }
    }
}
