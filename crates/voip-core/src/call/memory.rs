//! What the machine remembers about calls it does not (or no longer) hold, and what it does with
//! their events: ended call ids, so that late or replayed events of an ended call never ring
//! again, and candidates that arrived before their invite. Both are keyed by remote input, so
//! both are bounded per sender as well as in total ([`crate::quota`]).
//!
//! [`CallMemory::judge`] decides an event for a call the machine does not hold; the machine
//! only routes its [`Verdict`] (bumps the counter it names, screens an admitted invite).

use crate::config::Config;
use crate::ids::{CallId, RoomId, Timestamp, UserId};
use crate::machine::Counters;
use crate::media::Candidate;
use crate::quota::{PerSender, Quota};

/// Ended call ids one peer may leave in memory, and all peers together. A peer flooding
/// hangups for unknown call ids only ever pushes out its own entries.
const ENDED_QUOTA: Quota = Quota { per_sender: 256, total: 8192 };
/// Unknown calls with early candidates, per sender and in all.
const EARLY_QUOTA: Quota = Quota { per_sender: 8, total: 256 };
/// Candidate batches kept for one unknown call (one per `party_id` and batch).
const MAX_BATCHES: usize = 16;
/// Candidates kept per batch.
const MAX_CANDIDATES: usize = 64;

/// Ended call ids and early candidates: everything kept about calls the machine does not hold.
#[derive(Debug, Default)]
pub(crate) struct CallMemory {
    ended: EndedCalls,
    early: EarlyCandidates,
}

/// What an event for a call the machine does not hold is, as far as the memory is concerned.
#[derive(Debug)]
pub(crate) enum Unheld {
    /// An invite. `settled`: its call was already answered, rejected or hung up in the same
    /// sync batch, by its sender or by our own user.
    Invite {
        /// Settled in the same batch.
        settled: bool,
    },
    /// Candidates, perhaps ahead of their invite.
    Candidates {
        /// Their `party_id`.
        party: Option<String>,
        /// The batch.
        candidates: Vec<Candidate>,
    },
    /// A hangup or a reject.
    Ending,
    /// Any other call event.
    Other,
}

/// An event for a call the machine does not hold: which call, from whom, where, and what.
#[derive(Debug)]
pub(crate) struct UnheldEvent<'a> {
    /// Its call id.
    pub(crate) call_id: CallId,
    /// Its sender.
    pub(crate) sender: &'a UserId,
    /// The room it came in (or is about, for to-device events).
    pub(crate) room: &'a RoomId,
    /// What it is.
    pub(crate) kind: Unheld,
}

/// What to do with an event for a call the machine does not hold, and the counter it bumps
/// ([`Verdict::counter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A late or replayed event of an ended call (`duplicates`).
    Duplicate,
    /// An invite whose call was settled in its own sync batch: remembered as ended, it never
    /// rings (`duplicates`).
    SettledInvite,
    /// An invite to screen and perhaps ring (counted by the invite's admission).
    AdmitInvite,
    /// Candidates kept until their invite (`applied`).
    Stashed,
    /// Candidates not kept ([`EarlyRefused::NotFromSender`]: `not_from_peer`;
    /// [`EarlyRefused::Full`]: `duplicates`).
    NotStashed(EarlyRefused),
    /// A hangup or reject for a call never seen, from another user: remembered, so that its
    /// invite, if it arrives late, does not ring (js-sdk does the same) (`duplicates`).
    RememberedHangup,
    /// Anything else, our own user's hangup of an unknown call included (`wrong_state`).
    WrongState,
}

impl Verdict {
    /// The counter this verdict bumps; `None` for an invite to admit, which its admission
    /// counts.
    pub(crate) fn counter(self, counters: &mut Counters) -> Option<&mut u64> {
        Some(match self {
            Verdict::Duplicate
            | Verdict::SettledInvite
            | Verdict::NotStashed(EarlyRefused::Full)
            | Verdict::RememberedHangup => &mut counters.duplicates,
            Verdict::Stashed => &mut counters.applied,
            Verdict::NotStashed(EarlyRefused::NotFromSender) => &mut counters.not_from_peer,
            Verdict::WrongState => &mut counters.wrong_state,
            Verdict::AdmitInvite => return None,
        })
    }
}

/// Whether an event for a call we remember as ended with `peer` is a late or replayed one of it
/// (a duplicate). Everything is, except an invite from another user than `peer` (a spoofed
/// hangup must not block someone else's call) and not from our own user.
fn is_late_for_ended(peer: &UserId, is_invite: bool, sender: &UserId, local_user: &UserId) -> bool {
    !is_invite || peer == sender || sender == local_user
}

impl CallMemory {
    /// Decide an event for a call the machine does not hold (`local_user`: our own user), and
    /// remember what it leaves behind (an ended id, early candidates).
    pub(crate) fn judge(
        &mut self,
        event: UnheldEvent<'_>,
        local_user: &UserId,
        now: Timestamp,
        config: &Config,
    ) -> Verdict {
        let UnheldEvent { call_id, sender, room, kind } = event;
        if let Some(peer) = self.ended.peer_of(&call_id) {
            // Late or replayed events of an ended call; an invite is refused only when it
            // comes from the same peer (a spoofed hangup must not block someone else's call).
            let is_invite = matches!(kind, Unheld::Invite { .. });
            if is_late_for_ended(peer, is_invite, sender, local_user) {
                return Verdict::Duplicate;
            }
        }
        match kind {
            Unheld::Invite { settled: true } => {
                self.remember_ended(call_id, sender.clone(), now, config);
                Verdict::SettledInvite
            }
            Unheld::Invite { settled: false } => Verdict::AdmitInvite,
            Unheld::Candidates { party, candidates } => {
                let expires_at = now.plus(config.orphan_candidates_ms);
                match self.early.stash(call_id, sender, room, expires_at, party, candidates) {
                    Ok(()) => Verdict::Stashed,
                    Err(why) => Verdict::NotStashed(why),
                }
            }
            Unheld::Ending if sender != local_user => {
                self.remember_ended(call_id, sender.clone(), now, config);
                Verdict::RememberedHangup
            }
            Unheld::Ending | Unheld::Other => Verdict::WrongState,
        }
    }

    /// Remember `call_id`, ended with `peer`, for `config.ended_call_memory_ms` from `now`; its
    /// early candidates are dropped.
    pub(crate) fn remember_ended(&mut self, call_id: CallId, peer: UserId, now: Timestamp, config: &Config) {
        self.early.forget(&call_id);
        self.ended.remember(call_id, peer, now.plus(config.ended_call_memory_ms));
    }

    /// Whether `call_id` ended recently.
    pub(crate) fn is_ended(&self, call_id: &CallId) -> bool {
        self.ended.contains(call_id)
    }

    /// The candidates kept for `call_id`, if they came from `sender` in `room` (dropped either
    /// way).
    pub(crate) fn take_early(&mut self, call_id: &CallId, sender: &UserId, room: &RoomId) -> Option<Early> {
        self.early.take(call_id, sender, room)
    }

    /// Forget what is due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.ended.expire(now);
        self.early.expire(now);
    }

    /// The next time something is forgotten.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        [self.ended.next_expiry(), self.early.next_expiry()].into_iter().flatten().min()
    }

    /// (total, most of one sender, quota) of the ended ids.
    #[cfg(feature = "testing")]
    pub(crate) fn ended_usage(&self) -> (usize, usize, Quota) {
        self.ended.usage()
    }

    /// (total, most of one sender, quota) of the calls with early candidates.
    #[cfg(feature = "testing")]
    pub(crate) fn early_usage(&self) -> (usize, usize, Quota) {
        self.early.usage()
    }
}

/// Ended call ids, each with the user the call was with (or who ended an unknown call).
#[derive(Debug)]
struct EndedCalls {
    map: PerSender<CallId, ()>,
}

impl Default for EndedCalls {
    fn default() -> Self {
        EndedCalls { map: PerSender::new(ENDED_QUOTA) }
    }
}

impl EndedCalls {
    /// Remember `call_id`, ended with `peer`, until `forget_at`.
    fn remember(&mut self, call_id: CallId, peer: UserId, forget_at: Timestamp) {
        self.map.insert(call_id, peer, forget_at, ());
    }

    /// The peer of a remembered ended call.
    fn peer_of(&self, call_id: &CallId) -> Option<&UserId> {
        self.map.get(call_id).map(|(peer, _)| peer)
    }

    /// Whether `call_id` ended recently.
    fn contains(&self, call_id: &CallId) -> bool {
        self.map.contains_key(call_id)
    }

    /// Forget what is due.
    fn expire(&mut self, now: Timestamp) {
        self.map.expire(now);
    }

    /// The next time something is forgotten.
    fn next_expiry(&self) -> Option<Timestamp> {
        self.map.next_expiry()
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// (total, most of one sender, quota).
    #[cfg(feature = "testing")]
    fn usage(&self) -> (usize, usize, Quota) {
        (self.map.total(), self.map.max_per_sender(), self.map.quota())
    }
}

/// Candidates of one call we have not seen the invite of yet.
#[derive(Debug)]
pub(crate) struct Early {
    room_id: RoomId,
    /// Batches by `party_id`.
    pub(crate) by_party: Vec<(Option<String>, Vec<Candidate>)>,
}

/// Why early candidates were not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EarlyRefused {
    /// The call id is already held for another sender or room.
    NotFromSender,
    /// The call has as many batches as we keep.
    Full,
}

/// Candidates that overtook their invite, per unknown call.
#[derive(Debug)]
struct EarlyCandidates {
    map: PerSender<CallId, Early>,
}

impl Default for EarlyCandidates {
    fn default() -> Self {
        EarlyCandidates { map: PerSender::new(EARLY_QUOTA) }
    }
}

impl EarlyCandidates {
    /// Keep a batch for `call_id` from `sender` in `room` until `expires_at` (set by the first).
    fn stash(
        &mut self,
        call_id: CallId,
        sender: &UserId,
        room: &RoomId,
        expires_at: Timestamp,
        party: Option<String>,
        mut cands: Vec<Candidate>,
    ) -> Result<(), EarlyRefused> {
        cands.truncate(MAX_CANDIDATES);
        match self.map.get_mut(&call_id) {
            Some((owner, early)) => {
                if owner != sender || early.room_id != *room {
                    return Err(EarlyRefused::NotFromSender);
                }
                if early.by_party.len() >= MAX_BATCHES {
                    return Err(EarlyRefused::Full);
                }
                early.by_party.push((party, cands));
            }
            None => {
                let early = Early { room_id: room.clone(), by_party: vec![(party, cands)] };
                self.map.insert(call_id, sender.clone(), expires_at, early);
            }
        }
        Ok(())
    }

    /// The batches kept for `call_id`, if they came from `sender` in `room` (removed either way).
    fn take(&mut self, call_id: &CallId, sender: &UserId, room: &RoomId) -> Option<Early> {
        let (owner, early) = self.map.remove(call_id)?;
        (owner == *sender && early.room_id == *room).then_some(early)
    }

    /// (total, most of one sender, quota).
    #[cfg(feature = "testing")]
    fn usage(&self) -> (usize, usize, Quota) {
        (self.map.total(), self.map.max_per_sender(), self.map.quota())
    }

    /// How many unknown calls have candidates kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Drop `call_id`'s batches.
    fn forget(&mut self, call_id: &CallId) {
        self.map.remove(call_id);
    }

    /// Drop what expired.
    fn expire(&mut self, now: Timestamp) {
        self.map.expire(now);
    }

    /// The next expiry.
    fn next_expiry(&self) -> Option<Timestamp> {
        self.map.next_expiry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangup_floods_do_not_push_out_another_peers_ended_call() {
        let mut ended = EndedCalls::default();
        let bob = UserId::from("@bob:x");
        let mallory = UserId::from("@mallory:x");
        ended.remember(CallId::from("real"), bob, Timestamp(1_000));
        for n in 0..20_000 {
            ended.remember(CallId::from(format!("junk{n}").as_str()), mallory.clone(), Timestamp(1_000));
        }
        assert!(ended.contains(&CallId::from("real")));
        assert_eq!(ended.len(), 1 + ENDED_QUOTA.per_sender);
    }

    #[test]
    fn early_candidates_are_bounded_per_sender_and_per_call() {
        let mut early = EarlyCandidates::default();
        let room = RoomId::from("!r:x");
        let (alice, mallory) = (UserId::from("@alice:x"), UserId::from("@mallory:x"));
        early.stash(CallId::from("a"), &alice, &room, Timestamp(10), None, vec![]).unwrap();
        for n in 0..1000 {
            let _ = early.stash(
                CallId::from(format!("m{n}").as_str()),
                &mallory,
                &room,
                Timestamp(10),
                None,
                vec![],
            );
        }
        for _ in 0..100 {
            let _ = early.stash(CallId::from("m999"), &mallory, &room, Timestamp(10), None, vec![]);
        }
        assert_eq!(
            early.stash(CallId::from("a"), &mallory, &room, Timestamp(10), None, vec![]),
            Err(EarlyRefused::NotFromSender)
        );
        assert!(early.take(&CallId::from("a"), &alice, &room).is_some());
        let m = early.take(&CallId::from("m999"), &mallory, &room).unwrap();
        assert_eq!(m.by_party.len(), MAX_BATCHES);
    }

    // ===== the rules for events of calls the machine does not hold =====

    fn me() -> UserId {
        UserId::from("@me:x")
    }

    fn event(call: &str, sender: &UserId, kind: Unheld) -> Verdict {
        event_at(&mut CallMemory::default(), call, sender, kind)
    }

    fn event_at(memory: &mut CallMemory, call: &str, sender: &UserId, kind: Unheld) -> Verdict {
        let room = RoomId::from("!r:x");
        let e = UnheldEvent { call_id: CallId::from(call), sender, room: &room, kind };
        memory.judge(e, &me(), Timestamp(0), &Config::default())
    }

    fn invite() -> Unheld {
        Unheld::Invite { settled: false }
    }

    fn candidates(n: usize) -> Unheld {
        let c = Candidate {
            candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".to_owned(),
            sdp_mid: Some("0".to_owned()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        Unheld::Candidates { party: None, candidates: vec![c; n] }
    }

    #[test]
    fn a_spoofed_hangup_does_not_block_the_real_peers_invite() {
        let mut memory = CallMemory::default();
        let (bob, mallory) = (UserId::from("@bob:x"), UserId::from("@mallory:x"));
        assert_eq!(event_at(&mut memory, "c", &mallory, Unheld::Ending), Verdict::RememberedHangup);
        assert!(memory.is_ended(&CallId::from("c")));
        assert_eq!(event_at(&mut memory, "c", &bob, invite()), Verdict::AdmitInvite);
        // The hangup's own sender, and our own user, cannot ring with that call id any more.
        assert_eq!(event_at(&mut memory, "c", &mallory, invite()), Verdict::Duplicate);
        assert_eq!(event_at(&mut memory, "c", &me(), invite()), Verdict::Duplicate);
    }

    #[test]
    fn a_late_invite_from_the_peer_of_an_ended_call_is_a_duplicate() {
        let mut memory = CallMemory::default();
        let (bob, carol) = (UserId::from("@bob:x"), UserId::from("@carol:x"));
        memory.remember_ended(CallId::from("c"), bob.clone(), Timestamp(0), &Config::default());
        assert_eq!(event_at(&mut memory, "c", &bob, invite()), Verdict::Duplicate);
        // Every other event of an ended call is a late one, whoever sends it.
        for kind in [candidates(1), Unheld::Ending, Unheld::Other] {
            assert_eq!(event_at(&mut memory, "c", &carol, kind), Verdict::Duplicate);
        }
        assert_eq!(event_at(&mut memory, "c", &bob, Unheld::Invite { settled: true }), Verdict::Duplicate);
        assert!(memory.take_early(&CallId::from("c"), &carol, &RoomId::from("!r:x")).is_none());
    }

    #[test]
    fn an_unknown_calls_hangup_from_ourselves_is_not_remembered() {
        let mut memory = CallMemory::default();
        assert_eq!(event_at(&mut memory, "c", &me(), Unheld::Ending), Verdict::WrongState);
        assert_eq!(event_at(&mut memory, "c", &UserId::from("@bob:x"), Unheld::Other), Verdict::WrongState);
        assert!(!memory.is_ended(&CallId::from("c")));
        assert_eq!(memory.next_expiry(), None);
        assert_eq!(event_at(&mut memory, "c", &UserId::from("@bob:x"), invite()), Verdict::AdmitInvite);
    }

    #[test]
    fn an_invite_settled_in_its_batch_is_remembered_and_never_admitted_again() {
        let mut memory = CallMemory::default();
        let bob = UserId::from("@bob:x");
        assert_eq!(
            event_at(&mut memory, "c", &bob, Unheld::Invite { settled: true }),
            Verdict::SettledInvite
        );
        assert_eq!(event_at(&mut memory, "c", &bob, invite()), Verdict::Duplicate);
        assert_eq!(event("c", &bob, invite()), Verdict::AdmitInvite, "a fresh memory admits it");
    }

    #[test]
    fn candidates_from_a_flood_stay_bounded() {
        let mut memory = CallMemory::default();
        let room = RoomId::from("!r:x");
        let (alice, mallory) = (UserId::from("@alice:x"), UserId::from("@mallory:x"));
        assert_eq!(event_at(&mut memory, "a", &alice, candidates(1_000)), Verdict::Stashed);
        for n in 0..10_000 {
            let call = format!("m{n}");
            assert_eq!(event_at(&mut memory, &call, &mallory, candidates(1)), Verdict::Stashed);
        }
        assert_eq!(memory.early.len(), 1 + EARLY_QUOTA.per_sender, "mallory only pushes out its own");
        let mut last = Verdict::Stashed;
        for _ in 0..100 {
            last = event_at(&mut memory, "m9999", &mallory, candidates(1));
        }
        assert_eq!(last, Verdict::NotStashed(EarlyRefused::Full));
        assert_eq!(
            event_at(&mut memory, "a", &mallory, candidates(1)),
            Verdict::NotStashed(EarlyRefused::NotFromSender)
        );
        assert!(memory.take_early(&CallId::from("a"), &mallory, &room).is_none(), "not mallory's");
        assert!(memory.take_early(&CallId::from("m9999"), &mallory, &room).is_some());
        let early = memory.take_early(&CallId::from("m9998"), &mallory, &room).unwrap();
        assert_eq!(early.by_party.len(), 1);
        assert!(memory.take_early(&CallId::from("m0"), &mallory, &room).is_none(), "pushed out");
        // A batch keeps at most MAX_CANDIDATES.
        let mut memory = CallMemory::default();
        assert_eq!(event_at(&mut memory, "a", &alice, candidates(1_000)), Verdict::Stashed);
        let early = memory.take_early(&CallId::from("a"), &alice, &room).unwrap();
        assert_eq!(early.by_party[0].1.len(), MAX_CANDIDATES);
    }

    #[test]
    fn an_ended_call_drops_its_early_candidates_and_everything_expires() {
        let mut memory = CallMemory::default();
        let config = Config::default();
        let (bob, room) = (UserId::from("@bob:x"), RoomId::from("!r:x"));
        assert_eq!(event_at(&mut memory, "c", &bob, candidates(1)), Verdict::Stashed);
        assert_eq!(event_at(&mut memory, "d", &bob, candidates(1)), Verdict::Stashed);
        assert_eq!(memory.next_expiry(), Some(Timestamp(config.orphan_candidates_ms)));
        memory.remember_ended(CallId::from("c"), bob.clone(), Timestamp(0), &config);
        assert!(memory.take_early(&CallId::from("c"), &bob, &room).is_none());
        memory.expire(Timestamp(config.orphan_candidates_ms));
        assert!(memory.take_early(&CallId::from("d"), &bob, &room).is_none(), "expired");
        assert_eq!(memory.next_expiry(), Some(Timestamp(config.ended_call_memory_ms)));
        memory.expire(Timestamp(config.ended_call_memory_ms));
        assert!(!memory.is_ended(&CallId::from("c")));
        assert_eq!(memory.next_expiry(), None);
    }

    #[test]
    fn each_verdict_bumps_its_counter() {
        let cases = [
            (Verdict::Duplicate, Counters { duplicates: 1, ..Counters::default() }),
            (Verdict::SettledInvite, Counters { duplicates: 1, ..Counters::default() }),
            (Verdict::AdmitInvite, Counters::default()),
            (Verdict::Stashed, Counters { applied: 1, ..Counters::default() }),
            (Verdict::NotStashed(EarlyRefused::Full), Counters { duplicates: 1, ..Counters::default() }),
            (
                Verdict::NotStashed(EarlyRefused::NotFromSender),
                Counters { not_from_peer: 1, ..Counters::default() },
            ),
            (Verdict::RememberedHangup, Counters { duplicates: 1, ..Counters::default() }),
            (Verdict::WrongState, Counters { wrong_state: 1, ..Counters::default() }),
        ];
        for (verdict, want) in cases {
            let mut counters = Counters::default();
            if let Some(c) = verdict.counter(&mut counters) {
                *c += 1;
            }
            assert_eq!(counters, want, "{verdict:?}");
        }
    }
}
