//! 1:1 call events after routing: dispatch to the call, or for a call the machine does not
//! hold to the verdict of its memory ([`crate::call::memory`]: ended calls, early
//! candidates), and applying an invite's admission (decided in [`crate::call::incoming`]:
//! room, addressing, quotas, glare, busy).

use super::*;
use crate::call::incoming::{Admission, Decision, Invite, LiveCall, Outcome, Refused};
use crate::call::memory::{Unheld, UnheldEvent, Verdict};

impl VoipMachine {
    pub(super) fn dispatch(
        &mut self,
        event_type: &str,
        content: &serde_json::Value,
        source: Source<'_>,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        let (mut common, event) = match wire::parse(event_type, content) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.counters.malformed += 1;
                tracing::warn!(%e, sender = %source.sender, "malformed call event");
                return Err(e.into());
            }
        };
        let call_id = CallId(common.call_id.clone());
        if let Some(call) = self.calls.get_mut(&call_id) {
            if call.room_id != source.room_id || call.signalling != source.signalling {
                self.counters.not_from_peer += 1;
                return Ok(());
            }
            // Mesh: messages for another session of ours are not for this call.
            if let (Some(link), Some(dest)) = (&call.group, &common.to_device.dest_session_id) {
                if *dest != link.local_session {
                    self.counters.not_for_us += 1;
                    return Ok(());
                }
            }
            let sender = Sender { user: source.sender, device: source.device };
            let ready = if source.signalling == Signalling::ToDevice {
                // Only the peer's own messages enter its reordering queue: another sender's
                // `seq` must not move it.
                if !call.is_peer_device(sender) {
                    self.counters.not_from_peer += 1;
                    return Ok(());
                }
                call.reorder.push(common, event)
            } else {
                vec![(common, event)]
            };
            let mut ctx = ctx!(self);
            for (common, event) in ready {
                let d = call.handle_remote(&mut ctx, sender, &common, event, source.age_ms);
                if let Disposition::Ignored(why) = d {
                    tracing::debug!(%call_id, ?why, event_type, "call event ignored");
                }
                self.counters.count(d);
            }
            return Ok(());
        }
        // A call we do not hold: the memory of ended calls and early candidates decides.
        let (kind, invite) = match event {
            CallEvent::Invite { offer, lifetime, invitee, invitee_device_id, metadata, capabilities } => {
                let settled_by = |user: &UserId| settled.contains(&(common.call_id.clone(), user.clone()));
                let settled = settled_by(source.sender) || settled_by(&self.local.user_id);
                let parts =
                    InviteParts { offer, lifetime, invitee, invitee_device_id, metadata, capabilities };
                (Unheld::Invite { settled }, Some(parts))
            }
            CallEvent::Candidates { candidates } => {
                (Unheld::Candidates { party: common.party_id.take(), candidates }, None)
            }
            CallEvent::Hangup { .. } | CallEvent::Reject { .. } => (Unheld::Ending, None),
            _ => (Unheld::Other, None),
        };
        let unheld = UnheldEvent { call_id, sender: source.sender, room: &source.room_id, kind };
        let verdict = self.memory.judge(unheld, &self.local.user_id, self.now, &self.config);
        if let Some(counter) = verdict.counter(&mut self.counters) {
            *counter += 1;
        }
        if let (Verdict::AdmitInvite, Some(invite)) = (verdict, invite) {
            self.handle_invite(source, common, invite);
        }
        Ok(())
    }

    pub(super) fn handle_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        let call_id = CallId(common.call_id.clone());
        let room_ok = self.invite_room_ok(&source);
        let view = Invite {
            call_id: &call_id,
            room_id: &source.room_id,
            sender: source.sender,
            device: source.device,
            signalling: source.signalling,
            age_ms: source.age_ms,
            version: common.version,
            mesh: common.to_device.conf_id.is_some(),
            parts: &invite,
        };
        let calls: Vec<LiveCall<'_>> = self.calls.values().map(LiveCall::of).collect();
        let decision = Admission {
            config: &self.config,
            local: &self.local,
            now: self.now,
            can_handle_override: self.can_handle_override,
            gate: &mut self.gate,
            awaited: &mut self.awaited,
        }
        .admit(&view, room_ok, &calls);
        drop(calls);
        let (supersede, outcome) = match decision {
            Decision::Refused(why) => {
                let counter = match why {
                    Refused::Ignored => &mut self.counters.ignored_users,
                    Refused::NotForUs => &mut self.counters.not_for_us,
                    Refused::Malformed => &mut self.counters.malformed,
                    Refused::Expired => &mut self.counters.expired,
                    Refused::RateLimited => &mut self.counters.rate_limited,
                };
                *counter += 1;
                return;
            }
            Decision::Mesh => return self.handle_mesh_invite(source, common, invite),
            Decision::Admitted { supersede, outcome } => (supersede, outcome),
        };
        let sender = source.sender;
        let mut ctx = ctx!(self);
        for id in supersede {
            if let Some(c) = self.calls.get_mut(&id) {
                let missed = c.state == CallState::Ringing;
                c.end(&mut ctx, EndReason::Replaced, Initiator::Remote, missed);
            }
        }
        // Our answer to an invite we do not take: a hangup (glare, ours wins) or a busy reply.
        let refuse = |ctx: &mut Ctx<'_>, event: CallEvent| {
            Call::refuse(
                ctx,
                &call_id,
                &source.room_id,
                (sender, source.device),
                source.signalling,
                event,
                None,
            )
        };
        let (remaining_ms, replaces) = match outcome {
            Outcome::Ring { remaining_ms, replaces } => (remaining_ms, replaces),
            Outcome::OursWins { .. } => {
                let reason = Some(EndReason::Replaced.wire_reason().to_owned());
                refuse(&mut ctx, CallEvent::Hangup { reason });
                self.counters.applied += 1;
                self.memory.remember_ended(call_id, sender.clone(), self.now, &self.config);
                return;
            }
            Outcome::Busy { reply } => {
                if let Some(refusal) = reply {
                    refuse(&mut ctx, refusal);
                    ctx.emit(Event::MissedCall {
                        call_id: call_id.clone(),
                        room_id: source.room_id.clone(),
                        caller: sender.clone(),
                        reason: EndReason::UserBusy,
                    });
                }
                self.counters.busy += 1;
                self.memory.remember_ended(call_id, sender.clone(), self.now, &self.config);
                return;
            }
        };
        if let Some(r) = replaces.as_ref().filter(|r| r.hang_up_old) {
            if let Some(c) = self.calls.get_mut(&r.old) {
                c.hangup(&mut ctx, EndReason::Replaced, Initiator::Library);
            }
        }
        let incoming = Incoming {
            id: call_id.clone(),
            room_id: source.room_id.clone(),
            caller: sender.clone(),
            caller_device: source.device.cloned(),
            caller_party: common.party_id.map(PartyId),
            version: common.version,
            capabilities: invite.capabilities,
            offer: invite.offer,
            metadata: invite.metadata,
            signalling: source.signalling,
            expires_at: self.now.plus(remaining_ms),
        };
        let mut call = Call::incoming(&mut ctx, incoming);
        if let (Signalling::ToDevice, Some(seq)) = (source.signalling, common.to_device.seq) {
            // The caller's next message is the one after its invite.
            call.reorder.start_after(seq);
        }
        if let Some(r) = replaces {
            // The user's choices move to the surviving call (spec: one seamless call).
            call.inherit_mutes(r.mutes);
            ctx.emit(Event::CallReplaced { old_call_id: r.old, new_call_id: call_id.clone() });
            if self.config.glare == GlareBehaviour::AutoAnswer {
                call.auto_answer = Some(r.call_type);
            }
        }
        // Candidates that arrived before the invite.
        if let Some(early) = self.memory.take_early(&call_id, sender, &source.room_id) {
            for (party, cands) in early.by_party {
                call.candidate_input(&mut ctx, party.as_deref(), cands);
            }
        }
        call.ring_or_auto_answer(&mut ctx);
        self.counters.applied += 1;
        self.calls.insert(call_id, call);
    }

    /// Whether an invite's room allows it to ring (see [`incoming::room_allows`]).
    pub(super) fn invite_room_ok(&self, source: &Source<'_>) -> bool {
        let me = self.membership_of(&source.room_id, &self.local.user_id);
        let sender = self.membership_of(&source.room_id, source.sender);
        incoming::room_allows(source.signalling, me, sender)
    }
}
