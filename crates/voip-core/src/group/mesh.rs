//! Mesh group calls (MSC3401, famedly): one 1:1 call per pair of member devices. The rules:
//!
//! - **Who calls whom** ([`we_initiate`]): the lower `userId:deviceId` of each pair places the
//!   call; the other waits for its invite.
//! - **Which calls a membership change ends or starts** ([`Mesh::reconcile`]): a call to a device
//!   that left ends (`user_hangup`), one to a device whose `membershipID` changed (a new
//!   session: the old call is stale) ends as `replaced`; a missing call we initiate is placed,
//!   at most [`MAX_ATTEMPTS`] times per peer session (a call that connected resets the count).
//! - **Retries** ([`Mesh::call_ended`]): a mesh call that ended while we are still in the group
//!   makes the group be reconciled again [`RETRY_MS`] later.
//! - **Which mesh invites are answered** ([`judge_invite`]): only for a group call we are in,
//!   addressed to our session, from the sender's current session. One addressed to us from a
//!   sender whose (new) membership we have not seen yet waits for it ([`Mesh::wait`]): the
//!   invite may have overtaken the membership. Waiting invites are bounded per sender and in
//!   all ([`PENDING_QUOTA`]).
//!
//! [`Mesh`] holds this state for every group call we are in; the machine routes inputs to it and
//! applies what it decides.

use std::collections::{BTreeMap, BTreeSet};

use crate::call::incoming::InviteParts;
use crate::call::Call;
use crate::ids::{CallId, DeviceId, GroupCallId, LocalDevice, Participant, RoomId, Timestamp, UserId};
use crate::output::EndReason;
use crate::quota::{PerSender, Quota};
use crate::wire::call::Common;

/// Delay before a group whose mesh call ended is reconciled again.
pub(crate) const RETRY_MS: u64 = 2_000;
/// Calls placed to one peer session before we give up on it (until it connects once).
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Mesh invites that overtook their sender's membership: per sender and in all.
pub(crate) const PENDING_QUOTA: Quota = Quota { per_sender: 4, total: 64 };

/// famedly's rule (also MSC3401's, device by device): of two member devices, the one whose
/// `userId:deviceId` sorts lower places the call; the other waits for its invite.
pub(crate) fn we_initiate(local: &LocalDevice, peer: &Participant) -> bool {
    let ours = format!("{}:{}", local.user_id, local.device_id);
    let theirs = format!("{}:{}", peer.user_id, peer.device_id);
    ours < theirs
}

/// One of our calls as the mesh rules see it: a call linked to a group call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerCall<'a> {
    /// The call.
    pub(crate) id: &'a CallId,
    /// Its group call.
    pub(crate) group: &'a GroupCallId,
    /// The peer's user.
    pub(crate) user: &'a UserId,
    /// The peer's device.
    pub(crate) device: Option<&'a DeviceId>,
    /// The peer session the call was set up with.
    pub(crate) remote_session: &'a str,
}

impl<'a> PeerCall<'a> {
    /// The mesh view of `call`, if it belongs to a group call.
    pub(crate) fn of(call: &'a Call) -> Option<PeerCall<'a>> {
        let link = call.group.as_ref()?;
        Some(PeerCall {
            id: &call.id,
            group: &link.group,
            user: &call.peer_user,
            device: call.peer_device.as_ref(),
            remote_session: &link.remote_session,
        })
    }

    /// Whether the call is with `p`'s device (whatever its session).
    fn is_with(&self, p: &Participant) -> bool {
        *self.user == p.user_id && self.device == Some(&p.device_id)
    }
}

/// What [`Mesh::reconcile`] decided, in the order to apply it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Calls to hang up, with why.
    pub(crate) end: Vec<(CallId, EndReason)>,
    /// Member devices to call (each attempt is already counted).
    pub(crate) call: Vec<Participant>,
}

/// A mesh invite waiting for its sender's membership (its sender is the owner of its entry).
#[derive(Debug)]
pub(crate) struct PendingInvite {
    /// The room the invite names.
    pub(crate) room_id: RoomId,
    /// The sending device.
    pub(crate) device: DeviceId,
    /// The fields every call event has.
    pub(crate) common: Common,
    /// The invite itself.
    pub(crate) invite: InviteParts,
}

/// The mesh state of one group call: attempts per peer device and the next look.
#[derive(Debug, Default)]
struct GroupMesh {
    /// When the group needs another look (a peer call ended).
    retry_at: Option<Timestamp>,
    /// Calls placed per peer device to its current session since the last one that connected:
    /// (session, attempts). One entry per member device, so a member changing sessions cannot
    /// grow it.
    attempts: BTreeMap<(UserId, DeviceId), (String, u32)>,
}

impl GroupMesh {
    fn is_empty(&self) -> bool {
        self.retry_at.is_none() && self.attempts.is_empty()
    }
}

/// The mesh state of the group calls we are in (see the module docs): one [`GroupMesh`] per
/// group call, and the mesh invites waiting for a membership (one bound for all groups).
#[derive(Debug)]
pub(crate) struct Mesh {
    /// Mesh invites that overtook their sender's membership.
    pending: PerSender<CallId, PendingInvite>,
    /// Per group call with attempts or a retry due; entries are dropped when empty.
    groups: BTreeMap<GroupCallId, GroupMesh>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh { pending: PerSender::new(PENDING_QUOTA), groups: BTreeMap::new() }
    }
}

impl Mesh {
    /// One call per present member device of `group`: which of `calls` (every call we hold, in
    /// any group) end, and which member devices to call. `participants` is empty when we are not
    /// (or no longer) in the group.
    pub(crate) fn reconcile<'a>(
        &mut self,
        group: &GroupCallId,
        local: &LocalDevice,
        participants: &BTreeSet<Participant>,
        calls: impl IntoIterator<Item = PeerCall<'a>>,
        ignored: impl Fn(&UserId) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut covered = BTreeSet::new();
        for call in calls.into_iter().filter(|c| c.group == group) {
            match participants.iter().find(|p| call.is_with(p)) {
                Some(p) if p.member_id == call.remote_session => {
                    covered.insert((p.user_id.clone(), p.device_id.clone()));
                }
                Some(_) => plan.end.push((call.id.clone(), EndReason::Replaced)),
                None => plan.end.push((call.id.clone(), EndReason::UserHangup)),
            }
        }
        let state = self.groups.entry(group.clone()).or_default();
        // Attempt counts only for the group's current member devices.
        state.attempts.retain(|(user, device), _| {
            participants.iter().any(|p| p.user_id == *user && p.device_id == *device)
        });
        for p in participants {
            if covered.contains(&(p.user_id.clone(), p.device_id.clone()))
                || !we_initiate(local, p)
                || ignored(&p.user_id)
            {
                continue;
            }
            let (session, attempts) = state
                .attempts
                .entry((p.user_id.clone(), p.device_id.clone()))
                .or_insert_with(|| (p.member_id.clone(), 0));
            if *session != p.member_id {
                // A new session of that device: a fresh count.
                *session = p.member_id.clone();
                *attempts = 0;
            }
            if *attempts >= MAX_ATTEMPTS {
                continue;
            }
            *attempts += 1;
            plan.call.push(p.clone());
        }
        if state.is_empty() {
            self.groups.remove(group);
        }
        plan
    }

    /// A mesh call ended: a call that had connected resets its peer session's attempts, and a
    /// group we are still in (`in_group`) is looked at again shortly.
    pub(crate) fn call_ended(
        &mut self,
        call: PeerCall<'_>,
        ever_connected: bool,
        in_group: bool,
        now: Timestamp,
    ) {
        let Some(device) = call.device else { return };
        if let Some(state) = self.groups.get_mut(call.group) {
            let key = (call.user.clone(), device.clone());
            if ever_connected && state.attempts.get(&key).is_some_and(|(s, _)| *s == call.remote_session) {
                state.attempts.remove(&key);
            }
            if state.is_empty() {
                self.groups.remove(call.group);
            }
        }
        if in_group {
            let state = self.groups.entry(call.group.clone()).or_default();
            state.retry_at.get_or_insert(now.plus(RETRY_MS));
        }
    }

    /// The groups due for another look (taken), in order.
    pub(crate) fn due_retries(&mut self, now: Timestamp) -> Vec<GroupCallId> {
        let due: Vec<GroupCallId> = self
            .groups
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
            .map(|(g, _)| g.clone())
            .collect();
        for g in &due {
            if let Some(state) = self.groups.get_mut(g) {
                state.retry_at = None;
                if state.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
        due
    }

    /// When the next group is due for another look.
    pub(crate) fn next_retry(&self) -> Option<Timestamp> {
        self.groups.values().filter_map(|s| s.retry_at).min()
    }

    /// Group calls with mesh state held (attempts or a retry due).
    #[cfg(test)]
    fn groups_held(&self) -> usize {
        self.groups.len()
    }

    /// Keep `invite` (from `sender`) until its membership arrives, at most until `until`.
    pub(crate) fn wait(&mut self, call_id: CallId, sender: UserId, until: Timestamp, invite: PendingInvite) {
        self.pending.insert(call_id, sender, until, invite);
    }

    /// The waiting invites of `room` (taken, oldest first), each with what is left of its
    /// lifetime as its lifetime, so that waiting again never extends it.
    pub(crate) fn take_waiting(&mut self, room: &RoomId, now: Timestamp) -> Vec<(UserId, PendingInvite)> {
        self.pending.expire(now);
        self.pending
            .take_where_until(|_, _, p| p.room_id == *room)
            .into_iter()
            .map(|(_, sender, mut p, until)| {
                p.invite.lifetime = Some(until.since(now));
                (sender, p)
            })
            .collect()
    }

    /// Forget waiting invites that are due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.pending.expire(now);
    }

    /// The next expiry of a waiting invite.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.pending.next_expiry()
    }

    /// Waiting invites: (in all, most of one sender, bounds).
    #[cfg(feature = "testing")]
    pub(crate) fn pending_usage(&self) -> (usize, usize, Quota) {
        (self.pending.total(), self.pending.max_per_sender(), self.pending.quota())
    }
}

/// What to do with a mesh invite (see [`judge_invite`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InviteVerdict {
    /// We are not in that group call: refuse it, so the caller does not wait (MSC3401).
    NotInGroup,
    /// Addressed to us from a session we do not know yet: wait for its membership.
    Wait,
    /// For another session of ours, or from a stale session of the sender: dropped.
    NotForUs,
    /// From this current member: answer it.
    Answer(Participant),
}

/// Our side of a group call, for [`judge_invite`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct OurSide<'a> {
    /// Our `membershipID`.
    pub(crate) session: &'a str,
    /// The group's current participants.
    pub(crate) participants: &'a BTreeSet<Participant>,
}

/// Whether a mesh invite from `sender`'s `device` is answered: `ours` is `None` when we are not
/// joined (or joining) the group call it names; `sender_session` and `dest_session` are the
/// invite's `sender_session_id` and `dest_session_id`.
pub(crate) fn judge_invite(
    ours: Option<OurSide<'_>>,
    sender: &UserId,
    device: &DeviceId,
    sender_session: Option<&str>,
    dest_session: Option<&str>,
) -> InviteVerdict {
    let Some(ours) = ours else { return InviteVerdict::NotInGroup };
    let member = ours.participants.iter().find(|p| p.user_id == *sender && p.device_id == *device);
    let for_us = dest_session.is_none_or(|d| d == ours.session);
    let from_current = member.is_some_and(|m| sender_session.is_none_or(|s| s == m.member_id));
    match member {
        Some(m) if for_us && from_current => InviteVerdict::Answer(m.clone()),
        // Addressed to us, but we have not seen the sender's (new) membership yet: the invite
        // may simply have overtaken it.
        _ if for_us => InviteVerdict::Wait,
        _ => InviteVerdict::NotForUs,
    }
}

/// The calls a mesh invite from `member` replaces: ours with the same device in `group` (it
/// restarted, or both sides called).
pub(crate) fn replaced_by<'a>(
    calls: impl IntoIterator<Item = PeerCall<'a>>,
    group: &GroupCallId,
    member: &Participant,
) -> Vec<CallId> {
    calls.into_iter().filter(|c| c.group == group && c.is_with(member)).map(|c| c.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};

    fn part(user: &str, device: &str, session: &str) -> Participant {
        Participant {
            user_id: UserId::from(user),
            device_id: DeviceId::from(device),
            member_id: session.into(),
        }
    }

    fn group() -> GroupCallId {
        GroupCallId { room_id: RoomId::from("!r:x"), call_id: String::new() }
    }

    #[test]
    fn exactly_one_side_initiates() {
        let a = LocalDevice::new("@alice:x", "A");
        let b = LocalDevice::new("@bob:x", "B");
        let pa = part("@alice:x", "A", "s");
        let pb = part("@bob:x", "B", "s");
        assert!(we_initiate(&a, &pb));
        assert!(!we_initiate(&b, &pa));
        let a2 = LocalDevice::new("@alice:x", "B");
        assert!(we_initiate(&a, &part(a2.user_id.as_str(), a2.device_id.as_str(), "s")));
    }

    #[test]
    fn reconcile_calls_the_devices_we_initiate_and_ends_stale_calls() {
        let g = group();
        let local = LocalDevice::new("@b:x", "B");
        let (left, stale, kept) = (CallId::from("c1"), CallId::from("c2"), CallId::from("c3"));
        let (ua, uc, ud) = (UserId::from("@a:x"), UserId::from("@c:x"), UserId::from("@d:x"));
        let (da, dc, dd) = (DeviceId::from("A"), DeviceId::from("C"), DeviceId::from("D"));
        let participants: BTreeSet<Participant> = [
            part("@a:x", "A", "a2"), // lower: it calls us; our call to its old session is stale
            part("@c:x", "C", "c1"), // ours to call, already covered
            part("@e:x", "E", "e1"), // ours to call
            part("@z:x", "Z", "z1"), // ours to call, but ignored
        ]
        .into();
        let calls = [
            PeerCall { id: &stale, group: &g, user: &ua, device: Some(&da), remote_session: "a1" },
            PeerCall { id: &kept, group: &g, user: &uc, device: Some(&dc), remote_session: "c1" },
            PeerCall { id: &left, group: &g, user: &ud, device: Some(&dd), remote_session: "d1" },
        ];
        let ignored = |u: &UserId| u.as_str() == "@z:x";
        let plan = Mesh::default().reconcile(&g, &local, &participants, calls, ignored);
        assert_eq!(
            plan.end,
            vec![(stale.clone(), EndReason::Replaced), (left.clone(), EndReason::UserHangup)]
        );
        assert_eq!(plan.call, vec![part("@e:x", "E", "e1")]);
        // Not in the group any more: every call of it ends, nobody is called.
        let plan = Mesh::default().reconcile(&g, &local, &BTreeSet::new(), calls, |_| false);
        assert_eq!(plan.end.len(), 3);
        assert!(plan.call.is_empty());
    }

    #[test]
    fn attempts_are_bounded_per_session_and_reset_by_a_connected_call() {
        let g = group();
        let local = LocalDevice::new("@a:x", "A");
        let mut mesh = Mesh::default();
        let mut members: BTreeSet<Participant> = [part("@b:x", "B", "s1")].into();
        let placed = (0..10).filter(|_| !mesh.reconcile(&g, &local, &members, [], |_| false).call.is_empty());
        assert_eq!(placed.count(), MAX_ATTEMPTS as usize);
        // A new session of that device: a fresh count.
        members = [part("@b:x", "B", "s2")].into();
        assert_eq!(mesh.reconcile(&g, &local, &members, [], |_| false).call.len(), 1);
        // A connected call to that session resets it: a failed one does not.
        let (id, ub, db) = (CallId::from("c"), UserId::from("@b:x"), DeviceId::from("B"));
        let ended = PeerCall { id: &id, group: &g, user: &ub, device: Some(&db), remote_session: "s2" };
        mesh.reconcile(&g, &local, &members, [], |_| false);
        mesh.reconcile(&g, &local, &members, [], |_| false);
        assert!(mesh.reconcile(&g, &local, &members, [], |_| false).call.is_empty());
        mesh.call_ended(ended, false, true, Timestamp(0));
        assert!(mesh.reconcile(&g, &local, &members, [], |_| false).call.is_empty());
        mesh.call_ended(ended, true, true, Timestamp(0));
        assert_eq!(mesh.reconcile(&g, &local, &members, [], |_| false).call.len(), 1);
        // Leaving the group (no participants) forgets its attempts; its retry stays due.
        mesh.reconcile(&g, &local, &BTreeSet::new(), [], |_| false);
        assert_eq!(mesh.groups_held(), 1);
        mesh.due_retries(Timestamp(RETRY_MS));
        assert_eq!(mesh.groups_held(), 0);
    }

    #[test]
    fn an_ended_call_schedules_one_retry_while_in_the_group() {
        let g = group();
        let (id, ub, db) = (CallId::from("c"), UserId::from("@b:x"), DeviceId::from("B"));
        let call = PeerCall { id: &id, group: &g, user: &ub, device: Some(&db), remote_session: "s" };
        let mut mesh = Mesh::default();
        mesh.call_ended(call, false, false, Timestamp(0));
        assert_eq!(mesh.next_retry(), None, "not in the group: nothing to retry");
        mesh.call_ended(call, false, true, Timestamp(10));
        mesh.call_ended(call, false, true, Timestamp(500));
        assert_eq!(mesh.next_retry(), Some(Timestamp(10 + RETRY_MS)), "the first schedule stands");
        assert!(mesh.due_retries(Timestamp(10 + RETRY_MS - 1)).is_empty());
        assert_eq!(mesh.due_retries(Timestamp(10 + RETRY_MS)), vec![g.clone()]);
        assert_eq!(mesh.next_retry(), None);
        assert_eq!(mesh.groups_held(), 0, "nothing left for the group");
    }

    #[test]
    fn invites_are_answered_only_from_current_sessions_to_ours() {
        let participants: BTreeSet<Participant> = [part("@b:x", "B", "sb")].into();
        let ours = Some(OurSide { session: "sa", participants: &participants });
        let (b, db, dc) = (UserId::from("@b:x"), DeviceId::from("B"), DeviceId::from("C"));
        let judge = |ours, device, s, d| judge_invite(ours, &b, device, s, d);
        assert_eq!(judge(None, &db, None, None), InviteVerdict::NotInGroup);
        assert_eq!(judge(ours, &db, Some("sb"), Some("sa")), InviteVerdict::Answer(part("@b:x", "B", "sb")));
        assert_eq!(judge(ours, &db, None, None), InviteVerdict::Answer(part("@b:x", "B", "sb")));
        // A session (or device) we have not seen: it may have overtaken its membership.
        assert_eq!(judge(ours, &db, Some("sb2"), Some("sa")), InviteVerdict::Wait);
        assert_eq!(judge(ours, &dc, None, Some("sa")), InviteVerdict::Wait);
        // For another session of ours.
        assert_eq!(judge(ours, &db, Some("sb"), Some("old")), InviteVerdict::NotForUs);
        assert_eq!(judge(ours, &dc, None, Some("old")), InviteVerdict::NotForUs);
    }

    #[test]
    fn waiting_invites_keep_what_is_left_of_their_lifetime() {
        use crate::media::SessionDescription;
        let mut mesh = Mesh::default();
        let invite = |room: &str| PendingInvite {
            room_id: RoomId::from(room),
            device: DeviceId::from("B"),
            common: Common {
                call_id: "c".into(),
                party_id: None,
                version: crate::wire::call::CallVersion::V1,
                to_device: Default::default(),
            },
            invite: InviteParts {
                offer: SessionDescription::offer("v=0"),
                lifetime: Some(60_000),
                invitee: None,
                invitee_device_id: None,
                metadata: None,
                capabilities: Default::default(),
            },
        };
        let b = UserId::from("@b:x");
        mesh.wait(CallId::from("c1"), b.clone(), Timestamp(60_000), invite("!r:x"));
        mesh.wait(CallId::from("c2"), b.clone(), Timestamp(60_000), invite("!other:x"));
        assert_eq!(mesh.next_expiry(), Some(Timestamp(60_000)));
        let ready = mesh.take_waiting(&RoomId::from("!r:x"), Timestamp(45_000));
        assert_eq!(ready.len(), 1);
        assert_eq!((&ready[0].0, ready[0].1.invite.lifetime), (&b, Some(15_000)));
        assert!(mesh.take_waiting(&RoomId::from("!other:x"), Timestamp(60_000)).is_empty(), "expired");
    }
}
