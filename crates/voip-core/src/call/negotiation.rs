//! Offer/answer after the call is set up: hold, ICE restart, our local descriptions and
//! the candidates that follow them.

use super::*;

impl Call {
    pub(super) fn require_negotiable(&self, command: &str) -> Result<(), ApiMisuse> {
        if !matches!(self.state, CallState::Connecting | CallState::Connected) {
            return Err(self.wrong_state(command));
        }
        if !self.peer_is_v1() {
            return Err(ApiMisuse::Unsupported { call_id: self.id.clone(), feature: "renegotiation".into() });
        }
        Ok(())
    }

    pub(crate) fn cmd_hold(&mut self, ctx: &mut Ctx<'_>, on_hold: bool) -> Result<(), ApiMisuse> {
        self.require_negotiable("set_hold")?;
        if self.local_hold == on_hold {
            return Ok(());
        }
        self.local_hold = on_hold;
        self.media(ctx, MediaCommand::SetHold { on_hold });
        self.start_offer(ctx, false);
        ctx.emit(Event::HoldChanged {
            call_id: self.id.clone(),
            local_hold: self.local_hold,
            remote_hold: self.remote_hold,
        });
        Ok(())
    }

    pub(crate) fn cmd_restart_ice(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ApiMisuse> {
        self.require_negotiable("restart_ice")?;
        self.restart_ice(ctx);
        Ok(())
    }

    /// Starts a renegotiation offer, or remembers to once the one in flight is answered.
    pub(super) fn start_offer(&mut self, ctx: &mut Ctx<'_>, ice_restart: bool) {
        if self.making_offer || self.answering_negotiate {
            self.offer_again = Some(self.offer_again.unwrap_or(false) || ice_restart);
            return;
        }
        self.making_offer = true;
        if ice_restart {
            self.cands.restart_gathering();
        }
        self.media(ctx, MediaCommand::CreateOffer { ice_restart });
        self.timers.set(CallTimer::NegotiateTimeout, ctx.now.plus(ctx.config.negotiate_lifetime_ms));
    }

    pub(super) fn finish_negotiation(&mut self, ctx: &mut Ctx<'_>) {
        self.making_offer = false;
        self.answering_negotiate = false;
        self.timers.clear(CallTimer::NegotiateTimeout);
        if let Some(ice_restart) = self.offer_again.take() {
            self.start_offer(ctx, ice_restart);
        }
    }

    pub(super) fn restart_ice(&mut self, ctx: &mut Ctx<'_>) {
        if self.ice_restarts >= ctx.config.max_ice_restarts {
            self.hangup(ctx, EndReason::IceFailed, Initiator::Library);
            return;
        }
        self.ice_restarts += 1;
        self.timers.clear(CallTimer::IceRestart);
        self.timers.set_if_unset(CallTimer::IceFailed, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
        self.start_offer(ctx, true);
    }

    pub(super) fn on_local_description(&mut self, ctx: &mut Ctx<'_>, description: SessionDescription) {
        self.timers.clear(CallTimer::MediaTimeout);
        match (self.state, description.sdp_type) {
            (CallState::CreateOffer, SdpType::Offer) => {
                self.making_offer = false;
                let invitee_device_id = match self.signalling {
                    Signalling::Room | Signalling::ToDevice => self.peer_device.as_ref().map(|d| d.0.clone()),
                };
                let event = CallEvent::Invite {
                    offer: description,
                    lifetime: Some(ctx.config.invite_lifetime_ms),
                    invitee: Some(self.peer_user.0.clone()),
                    invitee_device_id,
                    metadata: Some(self.metadata()),
                    capabilities: Self::capabilities(ctx),
                };
                self.send(ctx, event, SendPurpose::Setup);
                self.set_state(ctx, CallState::InviteSent);
                self.timers.set(CallTimer::InviteTimeout, ctx.now.plus(ctx.config.invite_lifetime_ms));
                self.signalled(ctx);
                self.emit_streams(ctx);
            }
            (CallState::CreateAnswer, SdpType::Answer) => {
                let event = CallEvent::Answer {
                    answer: description,
                    metadata: Some(self.metadata()),
                    capabilities: Self::capabilities(ctx),
                };
                self.send(ctx, event, SendPurpose::Setup);
                self.set_state(ctx, CallState::Connecting);
                self.timers.set(CallTimer::IceFailed, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
                self.signalled(ctx);
                self.emit_streams(ctx);
            }
            (CallState::Connecting | CallState::Connected, SdpType::Offer) if self.making_offer => {
                let event = CallEvent::Negotiate {
                    description,
                    lifetime: Some(ctx.config.negotiate_lifetime_ms),
                    metadata: Some(self.metadata()),
                };
                self.send(ctx, event, SendPurpose::Other);
            }
            (CallState::Connecting | CallState::Connected, SdpType::Answer) if self.answering_negotiate => {
                let event =
                    CallEvent::Negotiate { description, lifetime: None, metadata: Some(self.metadata()) };
                self.send(ctx, event, SendPurpose::Other);
                self.finish_negotiation(ctx);
            }
            (state, sdp_type) => {
                tracing::debug!(?state, ?sdp_type, "unexpected local description ignored");
            }
        }
    }

    /// The invite or answer went out: local candidates may follow.
    pub(super) fn signalled(&mut self, ctx: &mut Ctx<'_>) {
        if self.cands.set_signalled() {
            self.flush_candidates(ctx);
        } else if self.cands.has_local() {
            self.arm_candidate_flush(ctx);
        }
    }

    /// Starts the batch window for queued local candidates unless one is running.
    pub(super) fn arm_candidate_flush(&mut self, ctx: &mut Ctx<'_>) {
        let window =
            self.cands.batch_window(ctx.config.candidate_first_batch_ms, ctx.config.candidate_batch_ms);
        self.timers.set_if_unset(CallTimer::CandidateFlush, ctx.now.plus(window));
    }

    pub(super) fn flush_candidates(&mut self, ctx: &mut Ctx<'_>) {
        self.timers.clear(CallTimer::CandidateFlush);
        if let Some(candidates) = self.cands.take_local() {
            self.send(ctx, CallEvent::Candidates { candidates }, SendPurpose::Candidates);
        }
    }
}
