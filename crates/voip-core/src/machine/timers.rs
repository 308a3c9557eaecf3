//! Due timers: sends, calls, groups; ended calls collected.

use super::*;

impl VoipMachine {
    pub(super) fn fire_timers(&mut self) {
        self.sends.fire(self.now, &mut self.out);
        let due: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.next_timer().is_some_and(|(at, _)| at <= self.now))
            .map(|c| c.id.clone())
            .collect();
        for id in due {
            let mut ctx = ctx!(self);
            if let Some(call) = self.calls.get_mut(&id) {
                call.handle_timeout(&mut ctx);
            }
        }
        let due_groups: Vec<GroupCallId> = self
            .groups
            .values()
            .filter(|g| g.next_timer().is_some_and(|at| at <= self.now))
            .map(|g| g.id.clone())
            .collect();
        for id in due_groups {
            let mut ctx = ctx!(self);
            if let Some(g) = self.groups.get_mut(&id) {
                g.handle_timeout(&mut ctx, &self.store);
            }
        }
        for g in self.mesh.due_retries(self.now) {
            self.reconcile_mesh(&g);
        }
        if self.now > self.expiry_checked {
            // Expired records are purged now (their timer), and only their devices looked at.
            for (g, devices) in self.store.purge_expired(self.now) {
                self.refresh_devices(&g, Some(&devices));
            }
            self.expiry_checked = self.now;
        }
        let now = self.now;
        self.mesh.expire(now);
        self.memory.expire(now);
        self.gate.expire(now);
        self.awaited.expire(now);
        self.collect_ended();
    }

    pub(super) fn collect_ended(&mut self) {
        let done: Vec<CallId> = self.calls.values().filter(|c| c.is_ended()).map(|c| c.id.clone()).collect();
        for id in done {
            if let Some(call) = self.calls.remove(&id) {
                self.sends.call_ended(&id, &mut self.out);
                if let Some(peer) = PeerCall::of(&call) {
                    // A mesh call ended while the group goes on: set it up again shortly, if
                    // the peer is still there.
                    let in_group = self.groups.contains_key(peer.group);
                    self.mesh.call_ended(peer, call.ever_connected, in_group, self.now);
                }
                if call.direction == CallDirection::Outgoing
                    && call.group.is_none()
                    && !call.ever_connected
                    && call.ended_by == Some((EndReason::Replaced, Initiator::Remote))
                {
                    self.awaited.expect(
                        call.room_id.clone(),
                        call.peer_user.clone(),
                        id.clone(),
                        call.offered_type,
                        call.mutes(),
                        self.now.plus(self.config.invite_lifetime_ms),
                    );
                }
                self.memory.remember_ended(id, call.peer_user, self.now, &self.config);
            }
        }
    }
}
