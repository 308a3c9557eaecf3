//! Room membership and call-membership state: the store's changes, observed
//! participants, what each change means for the groups we are in.

use std::borrow::Cow;

use super::*;

impl VoipMachine {
    pub(super) fn handle_member(&mut self, m: RoomMember) {
        let left = !matches!(m.membership, RoomMembership::Join | RoomMembership::Invite);
        let was_joined = self.membership_of(&m.room_id, &m.user_id).is_none_or(|x| x == RoomMembership::Join);
        let users = match self.members.get_mut(&m.room_id) {
            Some(users) => users,
            None => {
                let keys = self.hash_keys;
                self.members.entry(m.room_id.clone()).or_insert_with(|| keys.lookup())
            }
        };
        let changed = was_joined != (m.membership == RoomMembership::Join);
        if !left && !changed {
            // Nothing below needs the user id: it moves into the map (a take-in's every join).
            users.insert(m.user_id, m.membership);
            return;
        }
        users.insert(m.user_id.clone(), m.membership);
        if changed {
            // Only the user's own memberships can change (a user without any: nothing to do).
            for (g, devices) in self.store.of_user(&m.room_id, &m.user_id) {
                self.memberships_changed(g, devices);
            }
        }
        if !left {
            return;
        }
        let mut ctx = ctx!(self);
        for call in self.calls.values_mut().filter(|c| c.room_id == m.room_id) {
            if m.user_id == self.local.user_id {
                // We left: nothing can be sent to the room any more.
                call.end(&mut ctx, EndReason::UserHangup, Initiator::LocalUser, false);
            } else if call.peer_user == m.user_id {
                let missed = call.direction == CallDirection::Incoming && call.state == CallState::Ringing;
                let reason = if call.state == CallState::InviteSent {
                    EndReason::Rejected
                } else {
                    EndReason::PeerLeftRoom
                };
                call.end(&mut ctx, reason, Initiator::Remote, missed);
            }
        }
    }

    /// A user's `m.room.member` membership of a room, when we have seen it.
    pub(super) fn membership_of(&self, room: &RoomId, user: &UserId) -> Option<RoomMembership> {
        self.members.get(room).and_then(|m| m.get(user)).copied()
    }

    pub(super) fn joined_fn(&self, room: &RoomId) -> impl Fn(&UserId) -> bool + '_ {
        let members = self.members.get(room);
        move |u: &UserId| members.and_then(|m| m.get(u)).is_none_or(|m| *m == RoomMembership::Join)
    }

    /// A membership state event.
    pub(super) fn handle_state_event(&mut self, e: crate::input::StateEvent) -> Result<(), Error> {
        if e.event_type == "m.room.encryption" && e.state_key.is_empty() {
            // Encryption cannot be turned off again; any content with an algorithm counts.
            if e.content.get("algorithm").and_then(|a| a.as_str()).is_some_and(|a| !a.is_empty())
                && self.encrypted_rooms.insert(e.room_id.clone())
            {
                // Calls here that went without media encryption because the room seemed
                // unencrypted get per-participant keys now.
                let upgraded: Vec<GroupCallId> = self
                    .groups
                    .values_mut()
                    .filter(|g| g.id.room_id == e.room_id)
                    .filter_map(|g| g.room_encrypted(&mut ctx!(self)).then(|| g.id.clone()))
                    .collect();
                for g in upgraded {
                    self.refresh_group(&g);
                }
            }
            return Ok(());
        }
        if !matches!(e.event_type.as_str(), member::FAMEDLY_MEMBER | member::RTC_MEMBER) {
            return Ok(());
        }
        // The event is ours: its content gives its strings to the membership store.
        let crate::input::StateEvent {
            room_id,
            sender,
            event_type,
            state_key,
            content,
            origin_server_ts,
            ..
        } = e;
        self.apply_membership_content(
            &room_id,
            &sender,
            &event_type,
            &state_key,
            Cow::Owned(content),
            origin_server_ts,
        )
    }

    pub(super) fn apply_membership(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        content: &serde_json::Value,
        origin_ts: Timestamp,
    ) -> Result<(), Error> {
        self.apply_membership_content(room, sender, event_type, key, Cow::Borrowed(content), origin_ts)
    }

    fn apply_membership_content(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        content: Cow<'_, serde_json::Value>,
        origin_ts: Timestamp,
    ) -> Result<(), Error> {
        // A membership counts only under a state key its sender owns. A write at another user's
        // key (possible in room versions without owned state keys, for senders with enough
        // power, or from a lying homeserver) is counted and announces nothing; the key's
        // previous membership is gone all the same, as it is from the room state every client
        // reads (js-sdk treats such a `{}` as that member leaving; so do we, see
        // docs/security.md). In particular a famedly list written at our own key by someone
        // else is never read back and republished as ours.
        let content = if member::state_key_owned_by(event_type, key, sender.as_str()) {
            content
        } else {
            self.counters.foreign_state_keys += 1;
            tracing::warn!(%sender, key, event_type, "membership at a state key the sender does not own");
            Cow::Owned(member::empty_content(event_type))
        };
        // In an `Input::RoomState`, the changes go straight into the batch's (looked at once, at
        // the end); otherwise into this event's own.
        let batch = self.deferred.is_some();
        let mut changed = self.deferred.take().unwrap_or_default();
        let applied =
            self.store.apply_into(room, sender, event_type, key, content, origin_ts, self.now, &mut changed);
        if batch {
            self.deferred = Some(changed);
        } else {
            for (g, devices) in changed {
                self.refresh_devices(&g, Some(&devices));
            }
        }
        match applied {
            Ok(true) => {
                self.counters.applied += 1;
                Ok(())
            }
            Ok(false) => {
                self.counters.memberships_over_limit += 1;
                tracing::warn!(%sender, "membership refused: its sender holds too many (or too many sticky ones)");
                Ok(())
            }
            Err(e) => {
                self.counters.malformed += 1;
                tracing::warn!(%e, %sender, "malformed membership event");
                Err(e.into())
            }
        }
    }

    /// Many memberships at once: each group's changes looked at once, at the end.
    pub(super) fn handle_room_state(
        &mut self,
        members: Vec<RoomMember>,
        state: Vec<crate::input::StateEvent>,
    ) {
        self.deferred = Some(membership::Changes::new());
        // Pre-sized from the input (usually one room): no map grows step by step.
        if let Some(room) = members.first().map(|m| m.room_id.clone()) {
            let n = members.iter().filter(|m| m.room_id == room).count();
            let keys = self.hash_keys;
            self.members.entry(room).or_insert_with(|| keys.lookup()).reserve(n);
        }
        if let Some(room) = state.first().map(|e| e.room_id.clone()) {
            for kind in [member::FAMEDLY_MEMBER, member::RTC_MEMBER] {
                let n = state.iter().filter(|e| e.event_type == kind && e.room_id == room).count();
                if n > 0 {
                    self.store.reserve(&room, kind, n);
                }
            }
        }
        for m in members {
            self.handle_member(m);
        }
        for e in state {
            if let Err(err) = self.handle_state_event(e) {
                tracing::warn!(%err, "state event in a room state batch ignored");
            }
        }
        for (g, devices) in self.deferred.take().unwrap_or_default() {
            self.refresh_devices(&g, Some(&devices));
        }
    }

    /// Some devices' memberships of a group may have changed: look at them now, or at the end
    /// of the [`Input::RoomState`] being applied.
    pub(super) fn memberships_changed(&mut self, group: GroupCallId, devices: BTreeSet<Device>) {
        match self.deferred.as_mut() {
            Some(d) => d.entry(group).or_default().extend(devices),
            None => self.refresh_devices(&group, Some(&devices)),
        }
    }

    /// Recomputes a group's members and reports changes.
    pub(super) fn refresh_group(&mut self, group: &GroupCallId) {
        self.refresh_devices(group, None);
    }

    /// Recomputes the memberships of some devices of a group (`None`: all of them) and reports
    /// changes: the work is proportional to the devices, not to the call.
    pub(super) fn refresh_devices(&mut self, group: &GroupCallId, devices: Option<&BTreeSet<Device>>) {
        let room_members = self.members.get(&group.room_id);
        let joined =
            move |u: &UserId| room_members.and_then(|m| m.get(u)).is_none_or(|m| *m == RoomMembership::Join);
        if let Some(g) = self.groups.get_mut(group) {
            let mut ctx = ctx!(self);
            g.on_members(&mut ctx, &self.store, &joined, devices);
            // `reconcile_mesh` does nothing for a joined or joining SFU call.
            let sfu = g.focus != crate::wire::member::Focus::Mesh
                && matches!(g.state, GroupCallState::Joined | GroupCallState::Joining);
            if !sfu {
                self.reconcile_mesh(group);
            }
            self.retry_pending_mesh(group);
            return;
        }
        let me = (&self.local.user_id, &self.local.device_id);
        let before = self.observed.get(group);
        let all: BTreeSet<Device>;
        let devices = match devices {
            Some(d) => d,
            None => {
                all = self
                    .store
                    .devices(group)
                    .cloned()
                    .chain(before.into_iter().flatten().map(membership::device))
                    .collect();
                &all
            }
        };
        let mut joined_now = BTreeSet::new();
        let mut left_now = BTreeSet::new();
        for d in devices {
            // Observed calls: memberships of call applications only (`m.call`, and famedly's
            // `m.call.audio` / `m.call.video`), not other MatrixRTC applications sharing the slot.
            let new = Some(d)
                .filter(|d| (&d.0, &d.1) != me)
                .and_then(|d| self.store.device_member(group, d, self.now, None, joined))
                .filter(|m| m.application == "m.call" || m.application.starts_with("m.call."))
                .map(|m| m.participant.clone());
            for p in before.into_iter().flat_map(|b| membership::of_device(b, d)) {
                if Some(p) != new.as_ref() {
                    left_now.insert(p.clone());
                }
            }
            if let Some(p) = new.filter(|p| !before.is_some_and(|b| b.contains(p))) {
                joined_now.insert(p);
            }
        }
        if joined_now.is_empty() && left_now.is_empty() {
            return;
        }
        let set = self.observed.entry(group.clone()).or_default();
        for p in &left_now {
            set.remove(p);
        }
        set.extend(joined_now.iter().cloned());
        let count = set.len();
        if set.is_empty() {
            self.observed.remove(group);
        }
        self.out.push_back(Output::Event(Event::ParticipantsChanged {
            group: group.clone(),
            joined: joined_now.into_iter().collect(),
            left: left_now.into_iter().collect(),
            count,
        }));
    }
}
