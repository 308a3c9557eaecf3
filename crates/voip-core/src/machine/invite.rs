//! 1:1 call events after routing: an invite's admission (room, quotas, glare, busy),
//! ended-call memory and early candidates, dispatch of every other call event.

use super::*;

impl VoipMachine {
    pub(super) fn dispatch(
        &mut self,
        event_type: &str,
        content: &serde_json::Value,
        source: Source<'_>,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        let (common, event) = match wire::parse(event_type, content) {
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
        if let Some(peer) = self.ended.peer_of(&call_id) {
            // Late or replayed events of an ended call; an invite is refused only when it
            // comes from the same peer (a spoofed hangup must not block someone else's call).
            if !matches!(event, CallEvent::Invite { .. })
                || peer == source.sender
                || *source.sender == self.local.user_id
            {
                self.counters.duplicates += 1;
                return Ok(());
            }
        }
        match event {
            CallEvent::Invite { offer, lifetime, invitee, invitee_device_id, metadata, capabilities } => {
                let settled_by = |user: &UserId| settled.contains(&(common.call_id.clone(), user.clone()));
                if settled_by(source.sender) || settled_by(&self.local.user_id) {
                    self.counters.duplicates += 1;
                    self.remember_ended(call_id, source.sender.clone());
                    return Ok(());
                }
                let invite =
                    InviteParts { offer, lifetime, invitee, invitee_device_id, metadata, capabilities };
                self.handle_invite(source, common, invite);
            }
            CallEvent::Candidates { candidates } => {
                self.stash_orphan(&source, call_id, common.party_id, candidates);
            }
            CallEvent::Hangup { .. } | CallEvent::Reject { .. } if *source.sender != self.local.user_id => {
                // A hangup for a call we never saw: remember it, so its invite, if it arrives
                // late, does not ring (js-sdk does the same).
                self.counters.duplicates += 1;
                self.remember_ended(call_id, source.sender.clone());
            }
            _ => self.counters.wrong_state += 1,
        }
        Ok(())
    }

    pub(super) fn remember_ended(&mut self, call_id: CallId, peer: UserId) {
        self.early.forget(&call_id);
        self.ended.remember(call_id, peer, self.now.plus(self.config.ended_call_memory_ms));
    }

    pub(super) fn stash_orphan(
        &mut self,
        source: &Source<'_>,
        call_id: CallId,
        party: Option<String>,
        cands: Vec<Candidate>,
    ) {
        let expires_at = self.now.plus(self.config.orphan_candidates_ms);
        match self.early.stash(call_id, source.sender, &source.room_id, expires_at, party, cands) {
            Ok(()) => self.counters.applied += 1,
            Err(EarlyRefused::NotFromSender) => self.counters.not_from_peer += 1,
            Err(EarlyRefused::Full) => self.counters.duplicates += 1,
        }
    }

    pub(super) fn handle_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        if self.gate.is_ignored(source.sender) {
            self.counters.ignored_users += 1;
            return;
        }
        if !self.invite_room_ok(&source) {
            self.counters.not_for_us += 1;
            return;
        }
        if source.signalling == Signalling::ToDevice && common.to_device.conf_id.is_some() {
            self.handle_mesh_invite(source, common, invite);
            return;
        }
        let me = &self.local;
        let sender = source.sender;
        // Addressing: to our user (or everyone), to our device (or all devices).
        let addressed = invite.invitee.as_deref().is_none_or(|i| i == me.user_id.as_str())
            && invite.invitee_device_id.as_deref().is_none_or(|d| d == me.device_id.as_str());
        // Our own user may call us only device-to-device, explicitly addressed, from another device.
        let own_ok = *sender != me.user_id
            || (invite.invitee.as_deref() == Some(me.user_id.as_str())
                && invite.invitee_device_id.as_deref() == Some(me.device_id.as_str())
                && source.device.is_none_or(|d| *d != me.device_id));
        if !addressed || !own_ok {
            self.counters.not_for_us += 1;
            return;
        }
        if source.signalling == Signalling::ToDevice && source.device.is_none() {
            // We could not answer: nobody to address the reply to.
            self.counters.malformed += 1;
            return;
        }
        let lifetime = incoming::lifetime(invite.lifetime, &self.config);
        let remaining = lifetime.saturating_sub(source.age_ms.unwrap_or(0));
        if remaining <= self.config.ring_grace_ms {
            self.counters.expired += 1;
            return;
        }
        let call_id = CallId(common.call_id.clone());
        if !self.gate.admit_new_call(self.now, sender, &call_id, self.config.max_new_calls_per_minute) {
            self.counters.rate_limited += 1;
            return;
        }
        let glare_with = self
            .calls
            .values()
            .find(|c| {
                c.direction == CallDirection::Outgoing
                    && c.room_id == source.room_id
                    && c.peer_user == *sender
                    && c.signalling == source.signalling
                    && matches!(c.state, CallState::CreateOffer | CallState::InviteSent)
            })
            .map(|c| (c.id.clone(), c.state == CallState::InviteSent, c.offered_type, c.mutes()));
        // One live call per pair: a new invite from the same peer in the same room supersedes an
        // older call that is not in glare (the peer must have dropped it; its hangup was lost).
        let superseded: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| {
                c.room_id == source.room_id
                    && c.peer_user == *sender
                    && !matches!(c.state, CallState::CreateOffer | CallState::InviteSent)
            })
            .map(|c| c.id.clone())
            .collect();
        let mut ctx = ctx!(self);
        for id in superseded {
            if let Some(c) = self.calls.get_mut(&id) {
                let missed = c.state == CallState::Ringing;
                c.end(&mut ctx, EndReason::Replaced, Initiator::Remote, missed);
            }
        }
        let mut replaced: Option<(CallId, CallType, (bool, bool))> = None;
        let awaited = if glare_with.is_none() && source.signalling == Signalling::Room {
            self.awaited.take(&source.room_id, sender, ctx.now)
        } else {
            None
        };
        if let Some(a) = awaited {
            // Glare whose other invite lagged behind its hangup of ours: this is the replacement.
            tracing::debug!(ours = %a.old, incoming = %call_id, "the callee's invite replaces our call");
            replaced = Some((a.old, a.call_type, a.mutes));
        } else if let Some((ours, invite_sent, our_type, mutes)) = glare_with {
            match glare::resolve(ours.as_str(), call_id.as_str(), invite_sent) {
                glare::GlareOutcome::OursWins => {
                    tracing::debug!(%ours, incoming = %call_id, "glare: our call wins");
                    Call::refuse(
                        &mut ctx,
                        &call_id,
                        &source.room_id,
                        (sender, source.device),
                        source.signalling,
                        CallEvent::Hangup { reason: Some(EndReason::Replaced.wire_reason().to_owned()) },
                        None,
                    );
                    self.counters.applied += 1;
                    self.remember_ended(call_id, sender.clone());
                    return;
                }
                glare::GlareOutcome::IncomingWins | glare::GlareOutcome::ReplaceOurs => {
                    tracing::debug!(%ours, incoming = %call_id, "glare: the incoming call replaces ours");
                    if let Some(c) = self.calls.get_mut(&ours) {
                        c.hangup(&mut ctx, EndReason::Replaced, Initiator::Library);
                    }
                    replaced = Some((ours, our_type, mutes));
                }
            }
        } else if !self
            .can_handle_override
            .unwrap_or_else(|| !(self.config.busy_when_in_call && self.calls.values().any(Call::is_engaged)))
        {
            // One busy reply (and one missed-call event) per caller per window.
            if self.gate.busy_reply_allowed(ctx.now, sender) {
                let refusal = match (self.config.busy_signal, common.version) {
                    (BusySignal::Reject, CallVersion::V1) => {
                        CallEvent::Reject { reason: Some(EndReason::UserBusy.wire_reason().to_owned()) }
                    }
                    _ => CallEvent::Hangup { reason: Some(EndReason::UserBusy.wire_reason().to_owned()) },
                };
                Call::refuse(
                    &mut ctx,
                    &call_id,
                    &source.room_id,
                    (sender, source.device),
                    source.signalling,
                    refusal,
                    None,
                );
                ctx.emit(Event::MissedCall {
                    call_id: call_id.clone(),
                    room_id: source.room_id.clone(),
                    caller: sender.clone(),
                    reason: EndReason::UserBusy,
                });
            }
            self.counters.busy += 1;
            self.remember_ended(call_id, sender.clone());
            return;
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
            expires_at: self.now.plus(remaining),
        };
        let mut call = Call::incoming(&mut ctx, incoming);
        if let (Signalling::ToDevice, Some(seq)) = (source.signalling, common.to_device.seq) {
            // The caller's next message is the one after its invite.
            call.reorder.start_after(seq);
        }
        if let Some((old, our_type, mutes)) = replaced {
            // The user's choices move to the surviving call (spec: one seamless call).
            call.inherit_mutes(mutes);
            ctx.emit(Event::CallReplaced { old_call_id: old, new_call_id: call_id.clone() });
            if self.config.glare == GlareBehaviour::AutoAnswer {
                call.auto_answer = Some(our_type);
            }
        }
        // Candidates that arrived before the invite.
        if let Some(early) = self.early.take(&call_id, sender, &source.room_id) {
            for (party, cands) in early.by_party {
                call.candidate_input(&mut ctx, party.as_deref(), cands);
            }
        }
        call.ring_or_auto_answer(&mut ctx);
        self.counters.applied += 1;
        self.calls.insert(call_id, call);
    }

    /// Whether an invite's room allows it to ring: never for a room we have left; for a
    /// to-device invite (which names its room itself) only when we and the sender are both
    /// known to be joined to it. A room invite's sender must not be known to have left.
    pub(super) fn invite_room_ok(&self, source: &Source<'_>) -> bool {
        let me = self.membership_of(&source.room_id, &self.local.user_id);
        let sender = self.membership_of(&source.room_id, source.sender);
        match source.signalling {
            Signalling::ToDevice => me == Some(RoomMembership::Join) && sender == Some(RoomMembership::Join),
            Signalling::Room => {
                me.is_none_or(|m| m == RoomMembership::Join)
                    && sender.is_none_or(|m| m == RoomMembership::Join)
            }
        }
    }
}
