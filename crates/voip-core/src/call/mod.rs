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
pub(crate) mod glare;
pub(crate) mod incoming;
pub(crate) mod memory;
pub(crate) mod remote;
pub(crate) mod sdp;

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
        call.media(ctx, MediaCommand::SetRemoteDescription { description: p.offer });
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

    fn media(&self, ctx: &mut Ctx<'_>, command: MediaCommand) {
        ctx.out.push_back(Output::Media { call_id: self.id.clone(), command });
    }

    fn set_state(&mut self, ctx: &mut Ctx<'_>, state: CallState) {
        if self.state != state {
            self.state = state;
            ctx.emit(Event::StateChanged { call_id: self.id.clone(), state });
        }
    }

    /// Sends one call event to the peer, as a room event or a to-device message.
    fn send(&mut self, ctx: &mut Ctx<'_>, event: CallEvent, purpose: SendPurpose) {
        let to_device = match self.signalling {
            Signalling::Room => ToDeviceFields::default(),
            Signalling::ToDevice => {
                let seq = self.seq;
                self.seq += 1;
                ToDeviceFields {
                    room_id: Some(self.room_id.0.clone()),
                    device_id: Some(ctx.local.device_id.0.clone()),
                    seq: Some(seq),
                    conf_id: self.group.as_ref().map(|g| g.group.call_id.clone()),
                    sender_session_id: self
                        .group
                        .as_ref()
                        .map(|g| g.local_session.clone())
                        .filter(|s| !s.is_empty()),
                    dest_session_id: self
                        .group
                        .as_ref()
                        .map(|g| g.remote_session.clone())
                        .filter(|s| !s.is_empty()),
                }
            }
        };
        let common = Common {
            call_id: self.id.0.clone(),
            party_id: Some(self.local_party.0.clone()),
            version: CallVersion::V1,
            to_device,
        };
        let content = wire::to_content(&common, &event);
        let event_type = match &self.group {
            Some(g) if g.famedly() && self.signalling == Signalling::ToDevice => {
                crate::wire::call::famedly_event_type(event.event_type())
            }
            _ => event.event_type().to_owned(),
        };
        let kind = match (self.signalling, &self.peer_device) {
            (Signalling::ToDevice, Some(device)) => SendKind::ToDevice {
                event_type,
                room_id: Some(self.room_id.clone()),
                messages: vec![ToDeviceMessage {
                    user_id: self.peer_user.clone(),
                    device_id: device.clone(),
                    content,
                }],
                // Receivers accept to-device call events only Olm-encrypted (the sending device
                // is proven by Olm alone): never send them in clear.
                encryption: ToDeviceEncryption::Required,
            },
            _ => SendKind::RoomEvent { room_id: self.room_id.clone(), event_type, content },
        };
        self.on_wire = true;
        let prefix = format!("voip.{}", self.local_party);
        ctx.sends.send(ctx.out, Some(self.id.clone()), purpose, &prefix, kind);
    }

    fn metadata(&self) -> SdpStreamMetadata {
        let mut md = BTreeMap::new();
        md.insert(
            self.usermedia.0.clone(),
            StreamMetadata {
                purpose: StreamPurpose::Usermedia,
                audio_muted: self.audio_muted,
                video_muted: self.video_muted || !self.local_has_video,
            },
        );
        if let Some(s) = &self.screenshare {
            md.insert(
                s.0.clone(),
                StreamMetadata {
                    purpose: StreamPurpose::Screenshare,
                    audio_muted: false,
                    video_muted: false,
                },
            );
        }
        md
    }

    fn capabilities(ctx: &Ctx<'_>) -> Capabilities {
        Capabilities { transferee: ctx.config.transferee, dtmf: false }
    }

    fn local_streams(&self) -> Vec<LocalStream> {
        let mut v = Vec::new();
        if self.local_media_attached {
            v.push(LocalStream {
                stream_id: self.usermedia.clone(),
                purpose: StreamPurpose::Usermedia,
                audio_muted: self.audio_muted,
                video_muted: self.video_muted || !self.local_has_video,
            });
        }
        if let Some(s) = &self.screenshare {
            v.push(LocalStream {
                stream_id: s.clone(),
                purpose: StreamPurpose::Screenshare,
                audio_muted: false,
                video_muted: false,
            });
        }
        v
    }

    fn remote_streams(&self) -> Vec<RemoteStream> {
        let mut v: Vec<RemoteStream> = match &self.remote_metadata {
            Some(md) => self
                .remote_tracks
                .iter()
                .filter_map(|(id, a, vid)| {
                    md.get(id.as_str()).map(|m| RemoteStream {
                        stream_id: id.clone(),
                        purpose: m.purpose,
                        audio_muted: m.audio_muted,
                        video_muted: m.video_muted,
                        has_audio: *a,
                        has_video: *vid,
                    })
                })
                .collect(),
            // No metadata: the peer predates MSC3077; only its first stream counts.
            None => self
                .remote_tracks
                .iter()
                .take(1)
                .map(|(id, a, vid)| RemoteStream {
                    stream_id: id.clone(),
                    purpose: StreamPurpose::Usermedia,
                    audio_muted: false,
                    video_muted: false,
                    has_audio: *a,
                    has_video: *vid,
                })
                .collect(),
        };
        v.sort_by_key(|s| s.purpose != StreamPurpose::Screenshare);
        v
    }

    /// Emits `StreamsChanged` when the streams differ from what the app last saw.
    fn emit_streams(&mut self, ctx: &mut Ctx<'_>) {
        let now = (self.local_streams(), self.remote_streams());
        if self.last_streams.as_ref() == Some(&now) {
            return;
        }
        self.last_streams = Some(now.clone());
        ctx.emit(Event::StreamsChanged { call_id: self.id.clone(), local: now.0, remote: now.1 });
    }

    /// Attaches our usermedia stream; mutes chosen before (while ringing, or on the call that
    /// glare replaced) apply from the first packet.
    fn attach_local_media(&mut self, ctx: &mut Ctx<'_>, call_type: CallType) {
        self.local_has_video = call_type == CallType::Video;
        self.local_media_attached = true;
        self.media(
            ctx,
            MediaCommand::AddLocalStream {
                stream_id: self.usermedia.clone(),
                purpose: StreamPurpose::Usermedia,
                audio: true,
                video: self.local_has_video,
            },
        );
        if self.audio_muted {
            self.set_track(ctx, MediaKind::Audio, false);
        }
        if self.video_muted && self.local_has_video {
            self.set_track(ctx, MediaKind::Video, false);
        }
    }

    /// Whether we share our screen in this call.
    pub(crate) fn has_screenshare(&self) -> bool {
        self.screenshare.is_some()
    }

    /// Our mute state, to carry over to the call that replaces this one.
    pub(crate) fn mutes(&self) -> (bool, bool) {
        (self.audio_muted, self.video_muted)
    }

    /// Takes over the mute state of the call this one replaces (before media is attached).
    pub(crate) fn inherit_mutes(&mut self, (audio, video): (bool, bool)) {
        self.audio_muted = audio;
        self.video_muted = video;
    }

    fn peer_is_v1(&self) -> bool {
        self.opponent.as_ref().is_some_and(|o| o.version == CallVersion::V1)
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

    // ===== commands =====

    fn wrong_state(&self, command: &str) -> ApiMisuse {
        ApiMisuse::WrongState {
            call_id: self.id.clone(),
            command: command.to_owned(),
            state: format!("{:?}", self.state),
        }
    }

    /// `Answer`: attach media and ask for an answer.
    pub(crate) fn answer(&mut self, ctx: &mut Ctx<'_>, call_type: Option<CallType>) {
        self.stop_ringtone(ctx);
        self.timers.clear(CallTimer::RingTimeout);
        self.set_state(ctx, CallState::CreateAnswer);
        self.attach_local_media(ctx, call_type.unwrap_or(self.offered_type));
        self.answering_negotiate = false;
        self.media(ctx, MediaCommand::CreateAnswer);
        self.timers.set(CallTimer::MediaTimeout, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
    }

    pub(crate) fn cmd_answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        call_type: Option<CallType>,
    ) -> Result<(), ApiMisuse> {
        if self.state != CallState::Ringing {
            return Err(self.wrong_state("answer"));
        }
        self.answer(ctx, call_type);
        Ok(())
    }

    pub(crate) fn cmd_reject(&mut self, ctx: &mut Ctx<'_>, emit: bool) -> Result<(), ApiMisuse> {
        if self.state != CallState::Ringing {
            return Err(self.wrong_state("reject"));
        }
        if emit {
            self.hangup(ctx, EndReason::Rejected, Initiator::LocalUser);
        } else {
            self.end(ctx, EndReason::Rejected, Initiator::LocalUser, false);
        }
        Ok(())
    }

    fn require_negotiable(&self, command: &str) -> Result<(), ApiMisuse> {
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

    pub(crate) fn cmd_mute(
        &mut self,
        ctx: &mut Ctx<'_>,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<(), ApiMisuse> {
        if self.is_ended() {
            return Err(self.wrong_state("set_muted"));
        }
        // Unmuting the camera of a voice call upgrades it to video (js-sdk `upgradeCall`).
        let upgrade = video == Some(false) && self.local_media_attached && !self.local_has_video;
        if upgrade {
            self.require_negotiable("set_muted(video: false) on a voice call")?;
        }
        let before = self.metadata();
        if let Some(a) = audio.filter(|a| *a != self.audio_muted) {
            self.audio_muted = a;
            if self.local_media_attached {
                self.set_track(ctx, MediaKind::Audio, !a);
            }
        }
        if let Some(v) = video {
            self.video_muted = v;
        }
        if upgrade {
            self.local_has_video = true;
            self.media(
                ctx,
                MediaCommand::AddLocalStream {
                    stream_id: self.usermedia.clone(),
                    purpose: StreamPurpose::Usermedia,
                    audio: false,
                    video: true,
                },
            );
            self.start_offer(ctx, false);
        } else if self.metadata() != before {
            if self.local_has_video && video.is_some() {
                self.set_track(ctx, MediaKind::Video, !self.video_muted);
            }
            if self.peer_is_v1() && matches!(self.state, CallState::Connecting | CallState::Connected) {
                let metadata = self.metadata();
                self.send(ctx, CallEvent::SdpStreamMetadataChanged { metadata }, SendPurpose::Other);
            }
        }
        self.emit_streams(ctx);
        Ok(())
    }

    fn set_track(&self, ctx: &mut Ctx<'_>, kind: MediaKind, enabled: bool) {
        let stream_id = self.usermedia.clone();
        self.media(ctx, MediaCommand::SetTrackEnabled { stream_id, kind, enabled });
    }

    pub(crate) fn cmd_screenshare(&mut self, ctx: &mut Ctx<'_>, enabled: bool) -> Result<(), ApiMisuse> {
        self.require_negotiable("set_screenshare")?;
        match (enabled, self.screenshare.clone()) {
            (true, None) => {
                let id = StreamId(ctx.rng.alnum(16));
                self.screenshare = Some(id.clone());
                self.media(
                    ctx,
                    MediaCommand::AddLocalStream {
                        stream_id: id,
                        purpose: StreamPurpose::Screenshare,
                        audio: false,
                        video: true,
                    },
                );
            }
            (false, Some(id)) => {
                self.screenshare = None;
                self.media(ctx, MediaCommand::RemoveLocalStream { stream_id: id });
            }
            _ => return Ok(()),
        }
        self.start_offer(ctx, false);
        self.emit_streams(ctx);
        Ok(())
    }

    pub(crate) fn cmd_restart_ice(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ApiMisuse> {
        self.require_negotiable("restart_ice")?;
        self.restart_ice(ctx);
        Ok(())
    }

    pub(crate) fn cmd_send(
        &mut self,
        ctx: &mut Ctx<'_>,
        event: CallEvent,
        command: &str,
    ) -> Result<(), ApiMisuse> {
        if self.is_ended() || self.state == CallState::CreateOffer || self.state == CallState::Ringing {
            return Err(self.wrong_state(command));
        }
        self.send(ctx, event, SendPurpose::Other);
        Ok(())
    }

    // ===== negotiation =====

    /// Starts a renegotiation offer, or remembers to once the one in flight is answered.
    fn start_offer(&mut self, ctx: &mut Ctx<'_>, ice_restart: bool) {
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

    fn finish_negotiation(&mut self, ctx: &mut Ctx<'_>) {
        self.making_offer = false;
        self.answering_negotiate = false;
        self.timers.clear(CallTimer::NegotiateTimeout);
        if let Some(ice_restart) = self.offer_again.take() {
            self.start_offer(ctx, ice_restart);
        }
    }

    fn restart_ice(&mut self, ctx: &mut Ctx<'_>) {
        if self.ice_restarts >= ctx.config.max_ice_restarts {
            self.hangup(ctx, EndReason::IceFailed, Initiator::Library);
            return;
        }
        self.ice_restarts += 1;
        self.timers.clear(CallTimer::IceRestart);
        self.timers.set_if_unset(CallTimer::IceFailed, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
        self.start_offer(ctx, true);
    }

    // ===== media engine reports =====

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

    fn on_local_description(&mut self, ctx: &mut Ctx<'_>, description: SessionDescription) {
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
    fn signalled(&mut self, ctx: &mut Ctx<'_>) {
        if self.cands.set_signalled() {
            self.flush_candidates(ctx);
        } else if self.cands.has_local() {
            self.arm_candidate_flush(ctx);
        }
    }

    /// Starts the batch window for queued local candidates unless one is running.
    fn arm_candidate_flush(&mut self, ctx: &mut Ctx<'_>) {
        let window =
            self.cands.batch_window(ctx.config.candidate_first_batch_ms, ctx.config.candidate_batch_ms);
        self.timers.set_if_unset(CallTimer::CandidateFlush, ctx.now.plus(window));
    }

    fn flush_candidates(&mut self, ctx: &mut Ctx<'_>) {
        self.timers.clear(CallTimer::CandidateFlush);
        if let Some(candidates) = self.cands.take_local() {
            self.send(ctx, CallEvent::Candidates { candidates }, SendPurpose::Candidates);
        }
    }

    fn on_connection_state(&mut self, ctx: &mut Ctx<'_>, state: ConnectionState) {
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

    /// A send for this call failed for good.
    pub(crate) fn send_gave_up(&mut self, ctx: &mut Ctx<'_>, purpose: SendPurpose) {
        match purpose {
            SendPurpose::Setup | SendPurpose::Candidates => {
                // The peer cannot be told either; end here.
                self.end(ctx, EndReason::SignallingTimeout, Initiator::Library, false);
            }
            SendPurpose::Ending | SendPurpose::Other => {}
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
