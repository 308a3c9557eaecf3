//! Mesh group calls: who calls whom, retries, invites waiting for a membership.

use super::*;

impl VoipMachine {
    /// Mesh: one call per present member device. Calls to devices that left, or whose
    /// `membershipID` changed (a new session: the old call is stale), end at once; the lower
    /// `userId:deviceId` of each pair places any call that is missing.
    pub(super) fn reconcile_mesh(&mut self, group: &GroupCallId) {
        let (participants, member_id, mesh, mutes) = match self.groups.get(group) {
            Some(g) if g.state == GroupCallState::Joined || g.state == GroupCallState::Joining => (
                g.participants.clone(),
                g.member_id.clone(),
                g.focus == crate::wire::member::Focus::Mesh,
                g.mutes,
            ),
            _ => (BTreeSet::new(), String::new(), true, (false, false)),
        };
        if !mesh {
            return;
        }
        let mut ctx = ctx!(self);
        let mut covered = BTreeSet::new();
        for call in self.calls.values_mut() {
            let Some(link) = call.group.as_ref().filter(|l| l.group == *group) else { continue };
            let peer = participants
                .iter()
                .find(|p| p.user_id == call.peer_user && Some(&p.device_id) == call.peer_device.as_ref());
            match peer {
                Some(p) if p.member_id == link.remote_session => {
                    covered.insert((p.user_id.clone(), p.device_id.clone()));
                }
                Some(_) => call.hangup(&mut ctx, EndReason::Replaced, Initiator::Library),
                None => call.hangup(&mut ctx, EndReason::UserHangup, Initiator::Library),
            }
        }
        // Attempt counts only for the group's current member devices.
        self.mesh_attempts.retain(|(g, user, device), _| {
            g != group || participants.iter().any(|p| p.user_id == *user && p.device_id == *device)
        });
        let mut new_calls = Vec::new();
        for p in &participants {
            if covered.contains(&(p.user_id.clone(), p.device_id.clone()))
                || !group::mesh::we_initiate(ctx.local, p)
                || self.gate.is_ignored(&p.user_id)
            {
                continue;
            }
            let (session, attempts) = self
                .mesh_attempts
                .entry((group.clone(), p.user_id.clone(), p.device_id.clone()))
                .or_insert_with(|| (p.member_id.clone(), 0));
            if *session != p.member_id {
                // A new session of that device: a fresh count.
                *session = p.member_id.clone();
                *attempts = 0;
            }
            if *attempts >= MESH_MAX_ATTEMPTS {
                continue;
            }
            *attempts += 1;
            let id = CallId(format!("{}{}", ctx.now.0, ctx.rng.alnum(16)));
            let params = Outgoing {
                id: id.clone(),
                room_id: group.room_id.clone(),
                invitee: p.user_id.clone(),
                invitee_device: Some(p.device_id.clone()),
                call_type: CallType::Video,
                signalling: Signalling::ToDevice,
                mutes,
                group: Some(GroupLink {
                    group: group.clone(),
                    local_session: member_id.clone(),
                    remote_session: p.member_id.clone(),
                }),
            };
            new_calls.push((id, Call::outgoing(&mut ctx, params)));
        }
        self.calls.extend(new_calls);
        self.collect_ended();
    }

    /// Re-evaluates mesh invites that waited for their sender's membership.
    pub(super) fn retry_pending_mesh(&mut self, group: &GroupCallId) {
        self.pending_mesh.expire(self.now);
        let ready = self.pending_mesh.take_where_until(|_, _, p| p.room_id == group.room_id);
        for (_, sender, mut p, until) in ready {
            // What is left of its lifetime (so that waiting again never extends it).
            p.invite.lifetime = Some(until.since(self.now));
            let source = Source {
                room_id: p.room_id.clone(),
                sender: &sender,
                device: Some(&p.device),
                age_ms: None,
                signalling: Signalling::ToDevice,
            };
            let call_id = CallId(p.common.call_id.clone());
            if !self.calls.contains_key(&call_id) && !self.ended.contains(&call_id) {
                self.handle_mesh_invite(source, p.common, p.invite);
            }
        }
    }

    /// A mesh invite (to-device with `conf_id`): answered automatically when it is for a group
    /// call we are in, addressed to our session, and from the sender's current session.
    pub(super) fn handle_mesh_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        let group = GroupCallId {
            room_id: source.room_id.clone(),
            call_id: common.to_device.conf_id.clone().unwrap_or_default(),
        };
        let Some(device) = source.device else {
            self.counters.malformed += 1;
            return;
        };
        let Some(g) = self
            .groups
            .get(&group)
            .filter(|g| matches!(g.state, GroupCallState::Joined | GroupCallState::Joining))
        else {
            // Not in that group call: refuse, so the caller does not wait (MSC3401).
            let mut ctx = ctx!(self);
            let call_id = CallId(common.call_id.clone());
            Call::refuse(
                &mut ctx,
                &call_id,
                &source.room_id,
                (source.sender, Some(device)),
                Signalling::ToDevice,
                CallEvent::Reject { reason: None }, // The group fields let the caller route the refusal (js-sdk and famedly drop
                // to-device call events without them).
                Some(GroupLink {
                    group: group.clone(),
                    local_session: String::new(),
                    remote_session: common.to_device.sender_session_id.clone().unwrap_or_default(),
                }),
            );
            self.counters.not_for_us += 1;
            return;
        };
        let member =
            g.participants.iter().find(|p| p.user_id == *source.sender && p.device_id == *device).cloned();
        let our_session = g.member_id.clone();
        let sessions_ok = common.to_device.dest_session_id.as_deref().is_none_or(|d| d == our_session)
            && member.as_ref().is_some_and(|m| {
                common.to_device.sender_session_id.as_deref().is_none_or(|s| s == m.member_id)
            });
        let for_us = common.to_device.dest_session_id.as_deref().is_none_or(|d| d == our_session);
        let Some(member) = member.filter(|_| sessions_ok) else {
            if for_us {
                // Addressed to us, but we have not seen the sender's (new) membership yet: the
                // invite may simply have overtaken it. Keep it until the membership arrives
                // (bounded per sender).
                let call_id = CallId(common.call_id.clone());
                let pending = PendingMeshInvite {
                    room_id: source.room_id.clone(),
                    device: device.clone(),
                    common,
                    invite,
                };
                // It waits as long as it may ring: the membership can be late (a partition).
                let until = self.now.plus(incoming::lifetime(pending.invite.lifetime, &self.config));
                self.pending_mesh.insert(call_id, source.sender.clone(), until, pending);
            } else {
                self.counters.not_for_us += 1;
            }
            return;
        };
        let call_id = CallId(common.call_id.clone());
        if !self.gate.admit_new_call(self.now, source.sender, &call_id, self.config.max_new_calls_per_minute)
        {
            self.counters.rate_limited += 1;
            return;
        }
        let mut ctx = ctx!(self);
        // A call with this device already exists (it restarted, or both sides called): the
        // new invite replaces it.
        for c in self.calls.values_mut() {
            if c.group.as_ref().is_some_and(|l| l.group == group)
                && c.peer_user == member.user_id
                && c.peer_device.as_ref() == Some(&member.device_id)
            {
                c.hangup(&mut ctx, EndReason::Replaced, Initiator::Library);
            }
        }
        let incoming = Incoming {
            id: call_id.clone(),
            room_id: source.room_id.clone(),
            caller: source.sender.clone(),
            caller_device: Some(device.clone()),
            caller_party: common.party_id.map(PartyId),
            version: common.version,
            capabilities: invite.capabilities,
            offer: invite.offer,
            metadata: invite.metadata,
            signalling: Signalling::ToDevice,
            expires_at: self.now.plus(incoming::lifetime(invite.lifetime, &self.config)),
        };
        let mut call = Call::incoming(&mut ctx, incoming);
        call.group = Some(GroupLink { group, local_session: our_session, remote_session: member.member_id });
        if let Some(seq) = common.to_device.seq {
            call.reorder.start_after(seq);
        }
        if let Some(early) = self.early.take(&call_id, source.sender, &source.room_id) {
            for (party, cands) in early.by_party {
                call.candidate_input(&mut ctx, party.as_deref(), cands);
            }
        }
        call.auto_answer = Some(CallType::Video);
        if let Some(g) = self.groups.get(&call.group.as_ref().expect("set above").group) {
            call.inherit_mutes(g.mutes);
        }
        call.ring_or_auto_answer(&mut ctx);
        self.counters.applied += 1;
        self.calls.insert(call_id, call);
        self.collect_ended();
    }
}
