//! The 1:1 call sub-machine (spec VoIP version 1).
//!
//! ```text
//!             outgoing                                   incoming
//!  PlaceCall ─▶ CreateOffer ──offer──▶ InviteSent   invite ─▶ Ringing ──Answer──▶ CreateAnswer
//!                                        │ answer                                   │ answer sent
//!                                        ▼                                          ▼
//!                                    Connecting ◀──────────── ICE disconnected ── Connecting
//!                                        │ ICE connected                            │
//!                                        ▼                                          ▼
//!                                    Connected                                  Connected
//!  every state ──hangup / reject / timeout / answered elsewhere / media failure──▶ Ended
//! ```
//!
//! A `Call` never removes itself: the machine moves ended calls to its memory of ended ids.
//! Every transition is named after the wire event or command that causes it.

mod candidates;
mod commands;
mod engine;
pub(crate) mod glare;
pub(crate) mod incoming;
pub(crate) mod memory;
mod negotiation;
pub(crate) mod remote;
pub(crate) mod sdp;
mod signalling;
mod streams;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::error::ApiMisuse;
use crate::ids::{CallId, DeviceId, GroupCallId, PartyId, RoomId, StreamId, Timestamp, UserId};
use crate::input::Signalling;
use crate::media::{
    CallType, Candidate, ConnectionState, MediaCommand, MediaEvent, MediaKind, MediaOperation, SdpType,
    SessionDescription, StreamPurpose,
};
use crate::output::{
    CallDirection, CallState, EndReason, Event, Initiator, LocalStream, Output, RemoteStream, SendKind,
    ToDeviceEncryption, ToDeviceMessage,
};
use crate::sends::SendPurpose;
use crate::timers::{CallTimer, TimerKind, TimerTable};
use crate::wire::call::{
    self as wire, CallEvent, CallVersion, Capabilities, Common, SdpStreamMetadata, StreamMetadata,
    ToDeviceFields,
};

/// The peer party a call is talking to, once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Opponent {
    pub(crate) party: Option<PartyId>,
    pub(crate) version: CallVersion,
    pub(crate) capabilities: Capabilities,
}

/// A snapshot of one call, for the app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CallInfo {
    /// The call.
    pub call_id: CallId,
    /// The room.
    pub room_id: RoomId,
    /// Outgoing or incoming.
    pub direction: CallDirection,
    /// State.
    pub state: CallState,
    /// The media the call was offered with.
    pub call_type: CallType,
    /// The other user.
    pub peer_user: UserId,
    /// The other device, when known.
    pub peer_device: Option<DeviceId>,
    /// Our party id.
    pub local_party_id: PartyId,
    /// The other party, once chosen.
    pub peer_party_id: Option<PartyId>,
    /// How signalling travels.
    pub signalling: Signalling,
    /// Our streams.
    pub local_streams: Vec<LocalStream>,
    /// The peer's streams, screenshare first.
    pub remote_streams: Vec<RemoteStream>,
    /// We hold the peer.
    pub local_hold: bool,
    /// The peer holds us.
    pub remote_hold: bool,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera muted (or no camera).
    pub video_muted: bool,
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) id: CallId,
    pub(crate) room_id: RoomId,
    pub(crate) direction: CallDirection,
    pub(crate) signalling: Signalling,
    pub(crate) offered_type: CallType,
    pub(crate) local_party: PartyId,
    pub(crate) peer_user: UserId,
    pub(crate) peer_device: Option<DeviceId>,
    pub(crate) opponent: Option<Opponent>,
    pub(crate) state: CallState,
    timers: TimerTable,
    cands: candidates::Candidates,
    usermedia: StreamId,
    screenshare: Option<StreamId>,
    audio_muted: bool,
    video_muted: bool,
    local_has_video: bool,
    local_media_attached: bool,
    remote_metadata: Option<SdpStreamMetadata>,
    /// The remote streams' purposes as the engine last heard them.
    engine_purposes: BTreeMap<StreamId, StreamPurpose>,
    remote_ufrag: Option<String>,
    /// The streams last reported to the app.
    last_streams: Option<(Vec<LocalStream>, Vec<RemoteStream>)>,
    /// Remote streams in arrival order: (stream, has audio, has video).
    remote_tracks: Vec<(StreamId, bool, bool)>,
    making_offer: bool,
    /// A renegotiation asked for while one was in flight; `true` if it must restart ICE.
    offer_again: Option<bool>,
    answering_negotiate: bool,
    polite: bool,
    ice_restarts: u32,
    local_hold: bool,
    remote_hold: bool,
    seq: u64,
    /// Glare: answer with this media as soon as the call rings.
    pub(crate) auto_answer: Option<CallType>,
    /// Media connected at least once.
    pub(crate) ever_connected: bool,
    /// Why and by whom the call ended, once it has.
    pub(crate) ended_by: Option<(EndReason, Initiator)>,
    /// `RingtoneStarted` was emitted and not yet stopped.
    ringtone: bool,
    /// Whether anything of this call went on the wire (invite, answer, reject…).
    on_wire: bool,
    /// Mesh group call this call belongs to, with both sides' session ids.
    pub(crate) group: Option<GroupLink>,
    /// To-device messages that arrived ahead of a `seq` gap, waiting for it (bounded).
    pub(crate) reorder: remote::Reorder,
}

/// Ties a 1:1 call to a mesh group call (MSC3401 to-device signalling).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupLink {
    /// The group call (`conf_id` = its call id).
    pub(crate) group: GroupCallId,
    /// Our `membershipID` (`sender_session_id`): in the famedly dialect a random session id, in
    /// MatrixRTC `@user:server:DEVICE` (see `GroupCall::join`); empty when we are not in the group.
    pub(crate) local_session: String,
    /// The peer's `membershipID` (`dest_session_id`).
    pub(crate) remote_session: String,
}

impl GroupLink {
    /// A peer call of our famedly-dialect mesh call: its events go by famedly's own names
    /// (`com.famedly.call.member.*`), as famedly's sender does. Our famedly session ids are random
    /// alphanumerics, our MatrixRTC ones user ids with a device (`@…`).
    pub(crate) fn famedly(&self) -> bool {
        !self.local_session.is_empty() && !self.local_session.starts_with('@')
    }
}

/// Parameters of a new outgoing call.
pub(crate) struct Outgoing {
    /// Mesh group link, if this is a mesh peer call.
    pub(crate) group: Option<GroupLink>,
    pub(crate) id: CallId,
    pub(crate) room_id: RoomId,
    pub(crate) invitee: UserId,
    pub(crate) invitee_device: Option<DeviceId>,
    pub(crate) call_type: CallType,
    pub(crate) signalling: Signalling,
    /// Microphone and camera mute state to start with (a mesh group's).
    pub(crate) mutes: (bool, bool),
}

/// Parameters of a new incoming call (already validated by the machine).
pub(crate) struct Incoming {
    pub(crate) id: CallId,
    pub(crate) room_id: RoomId,
    pub(crate) caller: UserId,
    pub(crate) caller_device: Option<DeviceId>,
    pub(crate) caller_party: Option<PartyId>,
    pub(crate) version: CallVersion,
    pub(crate) capabilities: Capabilities,
    pub(crate) offer: SessionDescription,
    pub(crate) metadata: Option<SdpStreamMetadata>,
    pub(crate) signalling: Signalling,
    /// When the invite stops being valid.
    pub(crate) expires_at: Timestamp,
}

impl Call {
    fn blank(
        ctx: &mut Ctx<'_>,
        id: CallId,
        room_id: RoomId,
        direction: CallDirection,
        signalling: Signalling,
        offered_type: CallType,
        (peer_user, peer_device): (UserId, Option<DeviceId>),
    ) -> Call {
        Call {
            local_party: PartyId(ctx.rng.alnum(10)),
            usermedia: StreamId(ctx.rng.alnum(16)),
            id,
            room_id,
            direction,
            signalling,
            offered_type,
            peer_user,
            peer_device,
            opponent: None,
            state: CallState::CreateOffer,
            timers: TimerTable::default(),
            cands: candidates::Candidates::default(),
            screenshare: None,
            audio_muted: false,
            video_muted: false,
            local_has_video: false,
            local_media_attached: false,
            remote_metadata: None,
            engine_purposes: BTreeMap::new(),
            remote_ufrag: None,
            last_streams: None,
            remote_tracks: Vec::new(),
            making_offer: false,
            offer_again: None,
            answering_negotiate: false,
            polite: direction == CallDirection::Incoming,
            ice_restarts: 0,
            local_hold: false,
            remote_hold: false,
            seq: 0,
            auto_answer: None,
            ringtone: false,
            ever_connected: false,
            ended_by: None,
            on_wire: false,
            group: None,
            reorder: remote::Reorder::default(),
        }
    }

    /// `PlaceCall`: create the peer, attach media, ask for an offer.
    pub(crate) fn outgoing(ctx: &mut Ctx<'_>, p: Outgoing) -> Call {
        let mut call = Call::blank(
            ctx,
            p.id,
            p.room_id,
            CallDirection::Outgoing,
            p.signalling,
            p.call_type,
            (p.invitee, p.invitee_device),
        );
        call.group = p.group;
        call.inherit_mutes(p.mutes);
        let _span = tracing::debug_span!("call", call_id = %call.id, party_id = %call.local_party).entered();
        tracing::debug!(peer = %call.peer_user, ?p.call_type, "placing call");
        ctx.emit(Event::StateChanged { call_id: call.id.clone(), state: CallState::CreateOffer });
        call.media(ctx, MediaCommand::CreatePeer { call_type: p.call_type });
        call.attach_local_media(ctx, p.call_type);
        call.making_offer = true;
        call.media(ctx, MediaCommand::CreateOffer { ice_restart: false });
        call.timers.set(CallTimer::MediaTimeout, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
        call
    }

    /// A valid invite: create the peer, apply the offer, ring.
    pub(crate) fn incoming(ctx: &mut Ctx<'_>, p: Incoming) -> Call {
        let call_type = sdp::call_type(&p.offer.sdp);
        let mut call = Call::blank(
            ctx,
            p.id,
            p.room_id,
            CallDirection::Incoming,
            p.signalling,
            call_type,
            (p.caller, p.caller_device),
        );
        let _span = tracing::debug_span!("call", call_id = %call.id, party_id = %call.local_party).entered();
        call.opponent =
            Some(Opponent { party: p.caller_party, version: p.version, capabilities: p.capabilities });
        call.remote_metadata = p.metadata;
        call.remote_ufrag = sdp::ice_ufrag(&p.offer.sdp).map(str::to_owned);
        call.state = CallState::Ringing;
        call.media(ctx, MediaCommand::CreatePeer { call_type });
        call.set_remote_description(ctx, p.offer);
        call.cands.remote_description_set = true;
        call.timers.set(CallTimer::RingTimeout, p.expires_at);
        ctx.emit(Event::IncomingCall {
            call_id: call.id.clone(),
            room_id: call.room_id.clone(),
            caller: call.peer_user.clone(),
            caller_device: call.peer_device.clone(),
            call_type,
            signalling: call.signalling,
        });
        ctx.emit(Event::StateChanged { call_id: call.id.clone(), state: CallState::Ringing });
        call
    }

    /// Sends one event about a call we do not keep (busy refusal, glare loser), nothing else.
    pub(crate) fn refuse(
        ctx: &mut Ctx<'_>,
        id: &CallId,
        room_id: &RoomId,
        (peer_user, peer_device): (&UserId, Option<&DeviceId>),
        signalling: Signalling,
        event: CallEvent,
        group: Option<GroupLink>,
    ) {
        let mut call = Call::blank(
            ctx,
            id.clone(),
            room_id.clone(),
            CallDirection::Incoming,
            signalling,
            CallType::Voice,
            (peer_user.clone(), peer_device.cloned()),
        );
        call.group = group;
        call.send(ctx, event, SendPurpose::Ending);
    }

    /// Starts ringing, or answers at once when glare made this the surviving call.
    pub(crate) fn ring_or_auto_answer(&mut self, ctx: &mut Ctx<'_>) {
        match self.auto_answer.take() {
            Some(call_type) => {
                if self.group.is_some() {
                    // A mesh peer call of a group call we are in: part of that call, not a call
                    // that rings. It is not reported as an incoming (ringing) call at all.
                    let id = &self.id;
                    ctx.out.retain(|o| {
                        !matches!(o, Output::Event(Event::IncomingCall { call_id, .. })
                            | Output::Event(Event::StateChanged { call_id, state: CallState::Ringing })
                            if call_id == id)
                    });
                }
                self.answer(ctx, Some(call_type))
            }
            None => {
                self.ringtone = true;
                ctx.emit(Event::RingtoneStarted { call_id: self.id.clone() });
            }
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state == CallState::Ended
    }

    /// Busy-making states: a call the user is in.
    pub(crate) fn is_engaged(&self) -> bool {
        matches!(self.state, CallState::CreateAnswer | CallState::Connecting | CallState::Connected)
    }

    pub(crate) fn next_timer(&self) -> Option<(Timestamp, TimerKind)> {
        self.timers.next().map(|(at, t)| (at, TimerKind::from(t)))
    }

    pub(crate) fn info(&self) -> CallInfo {
        CallInfo {
            call_id: self.id.clone(),
            room_id: self.room_id.clone(),
            direction: self.direction,
            state: self.state,
            call_type: self.offered_type,
            peer_user: self.peer_user.clone(),
            peer_device: self.peer_device.clone(),
            local_party_id: self.local_party.clone(),
            peer_party_id: self.opponent.as_ref().and_then(|o| o.party.clone()),
            signalling: self.signalling,
            local_streams: self.local_streams(),
            remote_streams: self.remote_streams(),
            local_hold: self.local_hold,
            remote_hold: self.remote_hold,
            audio_muted: self.audio_muted,
            video_muted: self.video_muted || !self.local_has_video,
        }
    }

    // ===== outputs =====

    fn stop_ringtone(&mut self, ctx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.ringtone) {
            ctx.emit(Event::RingtoneStopped { call_id: self.id.clone() });
        }
    }

    fn set_state(&mut self, ctx: &mut Ctx<'_>, state: CallState) {
        if self.state != state {
            self.state = state;
            ctx.emit(Event::StateChanged { call_id: self.id.clone(), state });
        }
    }

    // ===== ending =====

    /// Ends the call here. Idempotent: a second call does nothing, so `CallEnded` fires once.
    pub(crate) fn end(&mut self, ctx: &mut Ctx<'_>, reason: EndReason, initiator: Initiator, missed: bool) {
        if self.is_ended() {
            return;
        }
        let _span = tracing::debug_span!("call", call_id = %self.id, party_id = %self.local_party).entered();
        tracing::debug!(?reason, ?initiator, "call ended");
        self.ended_by = Some((reason.clone(), initiator));
        self.timers.clear_all();
        self.cands.clear();
        self.media(ctx, MediaCommand::Close);
        self.stop_ringtone(ctx);
        self.set_state(ctx, CallState::Ended);
        ctx.emit(Event::CallEnded { call_id: self.id.clone(), reason: reason.clone(), initiator });
        if missed {
            ctx.emit(Event::MissedCall {
                call_id: self.id.clone(),
                room_id: self.room_id.clone(),
                caller: self.peer_user.clone(),
                reason,
            });
        }
    }

    /// Tells the peer the call is over (when it knows of it) and ends it here.
    pub(crate) fn hangup(&mut self, ctx: &mut Ctx<'_>, reason: EndReason, initiator: Initiator) {
        if self.is_ended() {
            return;
        }
        match self.state {
            // Nothing went out yet: nobody to tell.
            CallState::CreateOffer if !self.on_wire => {}
            // A ringing callee declines with reject (version 1) or hangup (version 0); the caller
            // will see `rejected`, so that is what we report too.
            CallState::Ringing if self.peer_is_v1() => {
                self.send(ctx, CallEvent::Reject { reason: None }, SendPurpose::Ending);
                let reason = if reason == EndReason::UserHangup { EndReason::Rejected } else { reason };
                self.end(ctx, reason, initiator, false);
                return;
            }
            _ => {
                let wire_reason = reason.wire_reason().to_owned();
                self.send(ctx, CallEvent::Hangup { reason: Some(wire_reason) }, SendPurpose::Ending)
            }
        }
        self.end(ctx, reason, initiator, false);
    }

    // ===== timers =====

    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(kind) = self.timers.pop_due(ctx.now) {
            if self.is_ended() {
                return;
            }
            let _span =
                tracing::debug_span!("call", call_id = %self.id, party_id = %self.local_party).entered();
            tracing::debug!(?kind, "timer fired");
            match kind {
                CallTimer::InviteTimeout => {
                    if self.state == CallState::InviteSent {
                        self.hangup(ctx, EndReason::InviteTimeout, Initiator::Library);
                    }
                }
                CallTimer::RingTimeout => {
                    if self.state == CallState::Ringing {
                        // Ignoring an invite is silent: the caller times out by itself.
                        self.end(ctx, EndReason::InviteTimeout, Initiator::Library, true);
                    }
                }
                CallTimer::MediaTimeout => {
                    self.hangup(ctx, EndReason::UserMediaFailed, Initiator::Library);
                }
                CallTimer::CandidateFlush => self.flush_candidates(ctx),
                CallTimer::IceRestart => self.restart_ice(ctx),
                CallTimer::IceFailed => {
                    if self.state != CallState::Connected {
                        self.hangup(ctx, EndReason::IceFailed, Initiator::Library);
                    }
                }
                CallTimer::NegotiateTimeout => {
                    tracing::warn!("renegotiation not answered within its lifetime; abandoned");
                    self.finish_negotiation(ctx);
                }
            }
        }
    }

    pub(crate) fn candidate_input(
        &mut self,
        ctx: &mut Ctx<'_>,
        party: Option<&str>,
        candidates: Vec<Candidate>,
    ) {
        if let Some(ready) = self.cands.push_remote(
            party,
            candidates,
            self.opponent.as_ref().map(|o| o.party.as_ref().map(PartyId::as_str)),
        ) {
            self.media(ctx, MediaCommand::AddRemoteCandidates { candidates: ready });
        }
    }
}
