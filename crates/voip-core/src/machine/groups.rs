//! Results of a group call's sends, its media encryption, groups that are over.

use super::*;

impl VoipMachine {
    pub(super) fn group_sent(
        &mut self,
        group: &GroupCallId,
        generation: u64,
        op: GroupOp,
        sent: group::Sent,
    ) {
        let mut ctx = ctx!(self);
        if let Some(g) = self.groups.get_mut(group).filter(|g| g.generation == generation) {
            g.on_sent(&mut ctx, &self.store, op, sent);
        }
        self.collect_left_groups();
        if op == GroupOp::ScheduleLeave {
            self.cancel_stale_delayed();
        }
    }

    pub(super) fn group_failed(
        &mut self,
        group: &GroupCallId,
        generation: u64,
        op: GroupOp,
        errcode: Option<&str>,
        max_delay_ms: Option<u64>,
    ) {
        let mut ctx = ctx!(self);
        if let Some(g) = self.groups.get_mut(group).filter(|g| g.generation == generation) {
            g.on_failed(&mut ctx, &self.store, op, errcode, max_delay_ms);
        }
        self.collect_left_groups();
        if op == GroupOp::ScheduleLeave {
            self.cancel_stale_delayed();
        }
    }

    /// The media encryption a join gets when the app does not choose (see
    /// [`crate::MediaEncryption`]): per-participant keys in a room with `m.room.encryption` or
    /// one we know nothing about, none in a room whose members we know and that has no
    /// `m.room.encryption`.
    pub(super) fn room_encryption(&self, room: &RoomId) -> crate::group::MediaEncryption {
        if !self.encrypted_rooms.contains(room) && self.members.contains_key(room) {
            crate::group::MediaEncryption::None
        } else {
            crate::group::MediaEncryption::PerParticipantKeys
        }
    }

    pub(super) fn collect_left_groups(&mut self) {
        let left: Vec<GroupCallId> =
            self.groups.values().filter(|g| g.state == GroupCallState::Left).map(|g| g.id.clone()).collect();
        for id in left {
            self.groups.remove(&id);
            // We only observe it now: report who is still in it.
            self.refresh_group(&id);
        }
    }
}
