//! Received `m.call.*` events for a known call.

use std::collections::BTreeMap;

use super::{sdp, Call, Opponent};
use crate::ctx::Ctx;
use crate::ids::{DeviceId, PartyId, UserId};
use crate::input::Signalling;
use crate::media::{MediaCommand, SdpType, SessionDescription};
use crate::output::{CallDirection, CallState, EndReason, Event, Initiator};
use crate::sends::SendPurpose;
use crate::timers::CallTimer;
use crate::wire::call::{CallEvent, CallVersion, Capabilities, Common, SdpStreamMetadata};

/// Who sent an event, as far as the homeserver and Olm vouch for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sender<'a> {
    pub(crate) user: &'a UserId,
    /// The sending device, for to-device events (Olm-verified when encrypted).
    pub(crate) device: Option<&'a DeviceId>,
}

/// Most to-device messages held back waiting for a `seq` gap to fill.
const MAX_REORDER: usize = 16;

/// Per-call reordering of to-device messages by `seq` (to-device delivery is unordered). Only
/// the call's peer device feeds it (the machine checks the Olm-verified sender first), and the
/// arithmetic cannot overflow: `seq` is a `u64` from the wire, `u64::MAX` included.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// The next `seq` to deliver; `None` before the first, and after `u64::MAX` was delivered
    /// (`exhausted`).
    next: Option<u64>,
    /// `u64::MAX` was delivered: everything else is late.
    exhausted: bool,
    held: BTreeMap<u64, (Common, CallEvent)>,
}

impl Reorder {
    /// The message with this `seq` was handled already (the invite that created the call).
    pub(crate) fn start_after(&mut self, seq: u64) {
        self.next = seq.checked_add(1);
        self.exhausted = self.next.is_none();
    }

    /// Takes one message; returns the messages now deliverable, in `seq` order. Messages without
    /// `seq`, and duplicates of delivered ones, pass straight through (they are idempotent).
    pub(crate) fn push(&mut self, common: Common, event: CallEvent) -> Vec<(Common, CallEvent)> {
        let Some(seq) = common.to_device.seq else { return vec![(common, event)] };
        if self.exhausted {
            return vec![(common, event)];
        }
        let next = *self.next.get_or_insert(seq);
        if seq < next {
            return vec![(common, event)];
        }
        if seq > next && matches!(event, CallEvent::Hangup { .. } | CallEvent::Reject { .. }) {
            // A hangup or reject ends the call whatever came before it, so it does not wait for
            // a gap: the sender drops a call's unsent messages when it ends the call (a
            // candidates send waiting for its retry, sim mesh seed 3064), and the gap would
            // hold the hangup for ever. What is held is dropped with the call.
            self.held.clear();
            self.next = seq.checked_add(1);
            self.exhausted = self.next.is_none();
            return vec![(common, event)];
        }
        self.held.insert(seq, (common, event));
        let mut out = Vec::new();
        let mut expect = next;
        // Deliver the run starting at `next`; if too much is waiting, give up on the gap.
        loop {
            if let Some(m) = self.held.remove(&expect) {
                out.push(m);
                match expect.checked_add(1) {
                    Some(n) => expect = n,
                    None => {
                        self.exhausted = true;
                        out.extend(std::mem::take(&mut self.held).into_values());
                        break;
                    }
                }
            } else if self.held.len() > MAX_REORDER {
                let (&first, _) = self.held.iter().next().expect("non-empty");
                expect = first;
            } else {
                break;
            }
        }
        self.next = Some(expect);
        out
    }
}

/// What became of a received event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// It changed something.
    Applied,
    /// Not acted on; the reason is for logs and counters.
    Ignored(Ignored),
}

/// Why a received event was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// Our own event coming back.
    Echo,
    /// From someone who is not this call's peer (spoofed or misdirected).
    NotFromPeer,
    /// Already applied, or superseded (second answer, duplicate invite).
    Duplicate,
    /// Not valid in the call's current state.
    WrongState,
    /// Its lifetime had passed.
    Expired,
}

impl Call {
    fn device_matches(&self, sender: Sender<'_>) -> bool {
        match (self.signalling, &self.peer_device, sender.device) {
            (Signalling::ToDevice, Some(expected), Some(got)) => expected == got,
            (Signalling::ToDevice, Some(_), None) => false,
            _ => true,
        }
    }

    fn party_matches(&self, party: Option<&str>) -> bool {
        match &self.opponent {
            Some(o) => o.party.as_ref().map(PartyId::as_str) == party,
            None => true,
        }
    }

    /// Whether `sender` is this call's peer user and (for to-device calls) its device.
    pub(crate) fn is_peer_device(&self, sender: Sender<'_>) -> bool {
        sender.user == &self.peer_user && self.device_matches(sender)
    }

    fn is_from_peer(&self, sender: Sender<'_>, party: Option<&str>) -> bool {
        sender.user == &self.peer_user && self.device_matches(sender) && self.party_matches(party)
    }

    /// Handles one received event of this call.
    pub(crate) fn handle_remote(
        &mut self,
        ctx: &mut Ctx<'_>,
        sender: Sender<'_>,
        common: &Common,
        event: CallEvent,
        age_ms: Option<u64>,
    ) -> Disposition {
        use Disposition::{Applied, Ignored as Ign};
        let party = common.party_id.as_deref();
        if sender.user == &ctx.local.user_id && party == Some(self.local_party.as_str()) {
            return Ign(Ignored::Echo);
        }
        if self.is_ended() {
            return Ign(Ignored::WrongState);
        }
        let _span = tracing::debug_span!("call", call_id = %self.id, party_id = %self.local_party).entered();
        let own_user = sender.user == &ctx.local.user_id;
        match event {
            CallEvent::Invite { .. } => Ign(Ignored::Duplicate),
            CallEvent::Answer { answer, metadata, capabilities } => match self.direction {
                CallDirection::Outgoing if self.state == CallState::InviteSent => {
                    if sender.user != &self.peer_user || !self.device_matches(sender) {
                        return Ign(Ignored::NotFromPeer);
                    }
                    self.choose_opponent(ctx, sender, common, capabilities, answer, metadata);
                    Applied
                }
                CallDirection::Outgoing => Ign(Ignored::Duplicate),
                // Another of our devices answered this call.
                CallDirection::Incoming if own_user && self.state == CallState::Ringing => {
                    self.end(ctx, EndReason::AnsweredElsewhere, Initiator::Remote, false);
                    Applied
                }
                CallDirection::Incoming => Ign(Ignored::NotFromPeer),
            },
            CallEvent::SelectAnswer { selected_party_id } => {
                if self.direction != CallDirection::Incoming || !self.is_from_peer(sender, party) {
                    return Ign(Ignored::NotFromPeer);
                }
                if selected_party_id == self.local_party.as_str() {
                    return Applied;
                }
                self.end(ctx, EndReason::AnsweredElsewhere, Initiator::Remote, false);
                Applied
            }
            CallEvent::Reject { reason } => match self.direction {
                CallDirection::Outgoing if self.state == CallState::InviteSent => {
                    if sender.user != &self.peer_user || !self.device_matches(sender) {
                        return Ign(Ignored::NotFromPeer);
                    }
                    // The spec has the caller select the reject, so that a callee device that
                    // answered meanwhile ends its call.
                    if let (Some(p), CallVersion::V1) = (party, common.version) {
                        let event = CallEvent::SelectAnswer { selected_party_id: p.to_owned() };
                        self.send(ctx, event, SendPurpose::Ending);
                    }
                    // A busy refusal says so (js-sdk reads the same field).
                    let why = if reason.as_deref() == Some(EndReason::UserBusy.wire_reason()) {
                        EndReason::UserBusy
                    } else {
                        EndReason::Rejected
                    };
                    self.end(ctx, why, Initiator::Remote, false);
                    Applied
                }
                CallDirection::Outgoing => Ign(Ignored::WrongState),
                // Another of our devices declined: stop ringing here too.
                CallDirection::Incoming if own_user && self.state == CallState::Ringing => {
                    self.end(ctx, EndReason::Rejected, Initiator::Remote, false);
                    Applied
                }
                CallDirection::Incoming => Ign(Ignored::NotFromPeer),
            },
            CallEvent::Hangup { reason } => {
                let ok = match self.direction {
                    // Before an answer is chosen any device of the invitee may refuse (busy).
                    CallDirection::Outgoing => {
                        sender.user == &self.peer_user
                            && self.device_matches(sender)
                            && self.party_matches(party)
                    }
                    CallDirection::Incoming => self.is_from_peer(sender, party),
                };
                if !ok {
                    return Ign(Ignored::NotFromPeer);
                }
                let missed = self.direction == CallDirection::Incoming && self.state == CallState::Ringing;
                self.end(ctx, EndReason::from_wire(reason.as_deref()), Initiator::Remote, missed);
                Applied
            }
            CallEvent::Candidates { candidates } => {
                if sender.user != &self.peer_user || !self.device_matches(sender) {
                    return Ign(Ignored::NotFromPeer);
                }
                if self.direction == CallDirection::Incoming && !self.party_matches(party) {
                    return Ign(Ignored::NotFromPeer);
                }
                self.candidate_input(ctx, party, candidates);
                Applied
            }
            CallEvent::Negotiate { description, lifetime, metadata } => {
                if !self.is_from_peer(sender, party) || self.opponent.is_none() {
                    return Ign(Ignored::NotFromPeer);
                }
                if !matches!(self.state, CallState::Connecting | CallState::Connected) || !self.peer_is_v1() {
                    return Ign(Ignored::WrongState);
                }
                if let (Some(age), Some(lifetime)) = (age_ms, lifetime) {
                    if age > lifetime {
                        return Ign(Ignored::Expired);
                    }
                }
                self.on_negotiate(ctx, description, metadata)
            }
            CallEvent::SdpStreamMetadataChanged { metadata } => {
                if !self.is_from_peer(sender, party) {
                    return Ign(Ignored::NotFromPeer);
                }
                self.remote_metadata = Some(metadata);
                self.update_engine_purposes(ctx);
                self.emit_streams(ctx);
                Applied
            }
            CallEvent::AssertedIdentity { identity } => {
                if !self.is_from_peer(sender, party) {
                    return Ign(Ignored::NotFromPeer);
                }
                ctx.emit(Event::AssertedIdentityChanged { call_id: self.id.clone(), identity });
                Applied
            }
            CallEvent::Replaces { replaces } => {
                if !self.is_from_peer(sender, party) || self.opponent.is_none() {
                    return Ign(Ignored::NotFromPeer);
                }
                ctx.emit(Event::ReplacesReceived { call_id: self.id.clone(), replaces });
                Applied
            }
        }
    }

    /// The first answer wins: it becomes the opponent, everything else from other parties is
    /// ignored from now on.
    fn choose_opponent(
        &mut self,
        ctx: &mut Ctx<'_>,
        sender: Sender<'_>,
        common: &Common,
        capabilities: Capabilities,
        answer: SessionDescription,
        metadata: Option<SdpStreamMetadata>,
    ) {
        let party = common.party_id.clone().map(PartyId);
        self.opponent = Some(Opponent { party: party.clone(), version: common.version, capabilities });
        if self.peer_device.is_none() {
            self.peer_device = sender.device.cloned();
        }
        self.timers.clear(CallTimer::InviteTimeout);
        self.set_state(ctx, CallState::Connecting);
        if metadata.is_some() {
            self.remote_metadata = metadata;
        }
        self.remote_ufrag = sdp::ice_ufrag(&answer.sdp).map(str::to_owned);
        self.set_remote_description(ctx, answer);
        self.cands.remote_description_set = true;
        let buffered = self.cands.take_remote_for(party.as_ref().map(PartyId::as_str));
        if !buffered.is_empty() {
            self.media(ctx, MediaCommand::AddRemoteCandidates { candidates: buffered });
        }
        if let (Some(p), CallVersion::V1) = (&party, common.version) {
            let event = CallEvent::SelectAnswer { selected_party_id: p.0.clone() };
            self.send(ctx, event, SendPurpose::Other);
        }
        self.timers.set(CallTimer::IceFailed, ctx.now.plus(ctx.config.ice_failed_timeout_ms));
        if let Some(p) = party {
            ctx.emit(Event::AnswerSelected {
                call_id: self.id.clone(),
                party_id: p,
                user_id: sender.user.clone(),
            });
        }
        self.emit_streams(ctx);
    }

    /// `m.call.negotiate`, with WebRTC perfect negotiation: the polite side (the callee, or the
    /// side that dropped its call in glare) rolls its own offer back on a collision; the impolite
    /// side ignores the colliding offer.
    fn on_negotiate(
        &mut self,
        ctx: &mut Ctx<'_>,
        description: SessionDescription,
        metadata: Option<SdpStreamMetadata>,
    ) -> Disposition {
        match description.sdp_type {
            SdpType::Offer => {
                if self.making_offer || self.answering_negotiate {
                    if !self.polite {
                        return Disposition::Ignored(Ignored::WrongState);
                    }
                    if self.making_offer {
                        self.media(ctx, MediaCommand::Rollback);
                        self.making_offer = false;
                        self.timers.clear(CallTimer::NegotiateTimeout);
                        self.offer_again = Some(self.offer_again.unwrap_or(false));
                    }
                }
                if metadata.is_some() {
                    self.remote_metadata = metadata;
                }
                let ufrag = sdp::ice_ufrag(&description.sdp).map(str::to_owned);
                if ufrag.is_some() && ufrag != self.remote_ufrag {
                    // The peer restarted ICE: we gather anew too.
                    self.cands.restart_gathering();
                    self.remote_ufrag = ufrag;
                }
                let remote_hold = sdp::is_hold(&description.sdp);
                self.set_remote_description(ctx, description);
                self.answering_negotiate = true;
                self.media(ctx, MediaCommand::CreateAnswer);
                if remote_hold != self.remote_hold {
                    self.remote_hold = remote_hold;
                    ctx.emit(Event::HoldChanged {
                        call_id: self.id.clone(),
                        local_hold: self.local_hold,
                        remote_hold,
                    });
                }
                self.emit_streams(ctx);
                Disposition::Applied
            }
            SdpType::Answer => {
                if !self.making_offer {
                    return Disposition::Ignored(Ignored::WrongState);
                }
                if metadata.is_some() {
                    self.remote_metadata = metadata;
                }
                self.remote_ufrag = sdp::ice_ufrag(&description.sdp).map(str::to_owned);
                self.set_remote_description(ctx, description);
                self.finish_negotiation(ctx);
                self.emit_streams(ctx);
                Disposition::Applied
            }
        }
    }
}
