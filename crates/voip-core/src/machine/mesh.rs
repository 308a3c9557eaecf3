//! Routing for mesh group calls: the rules are in [`crate::group::mesh`]; this applies what they
//! decide to the calls.

use super::*;
use crate::group::mesh::{judge_invite, replaced_by, InviteVerdict, OurSide, PendingInvite};

impl VoipMachine {
    /// Mesh: one call per present member device (see [`Mesh::reconcile`]).
    pub(super) fn reconcile_mesh(&mut self, group: &GroupCallId) {
        let (participants, member_id, is_mesh, mutes) = match self.groups.get(group) {
            Some(g) if g.state == GroupCallState::Joined || g.state == GroupCallState::Joining => (
                g.participants.clone(),
                g.member_id.clone(),
                g.focus == crate::wire::member::Focus::Mesh,
                g.mutes,
            ),
            _ => (BTreeSet::new(), String::new(), true, (false, false)),
        };
        if !is_mesh {
            return;
        }
        let gate = &self.gate;
        let plan = self.mesh.reconcile(
            group,
            &self.local,
            &participants,
            self.calls.values().filter_map(PeerCall::of),
            |user| gate.is_ignored(user),
        );
        let mut ctx = ctx!(self);
        for (id, reason) in plan.end {
            if let Some(call) = self.calls.get_mut(&id) {
                call.hangup(&mut ctx, reason, Initiator::Library);
            }
        }
        for p in plan.call {
            let id = CallId(format!("{}{}", ctx.now.0, ctx.rng.alnum(16)));
            let params = Outgoing {
                id: id.clone(),
                room_id: group.room_id.clone(),
                invitee: p.user_id,
                invitee_device: Some(p.device_id),
                call_type: CallType::Video,
                signalling: Signalling::ToDevice,
                mutes,
                group: Some(GroupLink {
                    group: group.clone(),
                    local_session: member_id.clone(),
                    remote_session: p.member_id,
                }),
            };
            let call = Call::outgoing(&mut ctx, params);
            self.calls.insert(id, call);
        }
        self.collect_ended();
    }

    /// Re-evaluates mesh invites that waited for their sender's membership.
    pub(super) fn retry_pending_mesh(&mut self, group: &GroupCallId) {
        for (sender, p) in self.mesh.take_waiting(&group.room_id, self.now) {
            let source = Source {
                room_id: p.room_id.clone(),
                sender: &sender,
                device: Some(&p.device),
                age_ms: None,
                signalling: Signalling::ToDevice,
            };
            let call_id = CallId(p.common.call_id.clone());
            if !self.calls.contains_key(&call_id) && !self.memory.is_ended(&call_id) {
                self.handle_mesh_invite(source, p.common, p.invite);
            }
        }
    }

    /// A mesh invite (to-device with `conf_id`): answered automatically when
    /// [`judge_invite`] says so.
    pub(super) fn handle_mesh_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        let group = GroupCallId {
            room_id: source.room_id.clone(),
            call_id: common.to_device.conf_id.clone().unwrap_or_default(),
        };
        let Some(device) = source.device else {
            self.counters.malformed += 1;
            return;
        };
        let g = self
            .groups
            .get(&group)
            .filter(|g| matches!(g.state, GroupCallState::Joined | GroupCallState::Joining));
        let ours = g.map(|g| OurSide { session: &g.member_id, participants: &g.participants });
        let verdict = judge_invite(
            ours,
            source.sender,
            device,
            common.to_device.sender_session_id.as_deref(),
            common.to_device.dest_session_id.as_deref(),
        );
        let our_session = g.map(|g| g.member_id.clone()).unwrap_or_default();
        let call_id = CallId(common.call_id.clone());
        let member = match verdict {
            InviteVerdict::Answer(member) => member,
            InviteVerdict::NotInGroup => {
                let mut ctx = ctx!(self);
                Call::refuse(
                    &mut ctx,
                    &call_id,
                    &source.room_id,
                    (source.sender, Some(device)),
                    Signalling::ToDevice,
                    CallEvent::Reject { reason: None },
                    // The group fields let the caller route the refusal (js-sdk and famedly drop
                    // to-device call events without them).
                    Some(GroupLink {
                        group: group.clone(),
                        local_session: String::new(),
                        remote_session: common.to_device.sender_session_id.clone().unwrap_or_default(),
                    }),
                );
                self.counters.not_for_us += 1;
                return;
            }
            InviteVerdict::Wait => {
                // It waits as long as it may ring: the membership can be late (a partition).
                let until = self.now.plus(incoming::lifetime(invite.lifetime, &self.config));
                let pending =
                    PendingInvite { room_id: source.room_id.clone(), device: device.clone(), common, invite };
                self.mesh.wait(call_id, source.sender.clone(), until, pending);
                return;
            }
            InviteVerdict::NotForUs => {
                self.counters.not_for_us += 1;
                return;
            }
        };
        if !self.gate.admit_new_call(self.now, source.sender, &call_id, self.config.max_new_calls_per_minute)
        {
            self.counters.rate_limited += 1;
            return;
        }
        let replaced = replaced_by(self.calls.values().filter_map(PeerCall::of), &group, &member);
        let mut ctx = ctx!(self);
        for id in replaced {
            if let Some(c) = self.calls.get_mut(&id) {
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
        if let Some(early) = self.memory.take_early(&call_id, source.sender, &source.room_id) {
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
