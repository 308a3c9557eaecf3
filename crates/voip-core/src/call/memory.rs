//! What the machine remembers about calls it does not (or no longer) hold: ended call ids, so
//! that late or replayed events of an ended call never ring again, and candidates that arrived
//! before their invite. Both are keyed by remote input, so both are bounded per sender as well
//! as in total ([`crate::quota`]).

use crate::ids::{CallId, RoomId, Timestamp, UserId};
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

/// Ended call ids, each with the user the call was with (or who ended an unknown call).
#[derive(Debug)]
pub(crate) struct EndedCalls {
    map: PerSender<CallId, ()>,
}

impl Default for EndedCalls {
    fn default() -> Self {
        EndedCalls { map: PerSender::new(ENDED_QUOTA) }
    }
}

impl EndedCalls {
    /// Remember `call_id`, ended with `peer`, until `forget_at`.
    pub(crate) fn remember(&mut self, call_id: CallId, peer: UserId, forget_at: Timestamp) {
        self.map.insert(call_id, peer, forget_at, ());
    }

    /// The peer of a remembered ended call.
    pub(crate) fn peer_of(&self, call_id: &CallId) -> Option<&UserId> {
        self.map.get(call_id).map(|(peer, _)| peer)
    }

    /// Whether `call_id` ended recently.
    pub(crate) fn contains(&self, call_id: &CallId) -> bool {
        self.map.contains_key(call_id)
    }

    /// Forget what is due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.map.expire(now);
    }

    /// The next time something is forgotten.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.map.next_expiry()
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// (total, most of one sender, quota).
    #[cfg(feature = "testing")]
    pub(crate) fn usage(&self) -> (usize, usize, crate::quota::Quota) {
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
pub(crate) struct EarlyCandidates {
    map: PerSender<CallId, Early>,
}

impl Default for EarlyCandidates {
    fn default() -> Self {
        EarlyCandidates { map: PerSender::new(EARLY_QUOTA) }
    }
}

impl EarlyCandidates {
    /// Keep a batch for `call_id` from `sender` in `room` until `expires_at` (set by the first).
    pub(crate) fn stash(
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
    pub(crate) fn take(&mut self, call_id: &CallId, sender: &UserId, room: &RoomId) -> Option<Early> {
        let (owner, early) = self.map.remove(call_id)?;
        (owner == *sender && early.room_id == *room).then_some(early)
    }

    /// (total, most of one sender, quota).
    #[cfg(feature = "testing")]
    pub(crate) fn usage(&self) -> (usize, usize, Quota) {
        (self.map.total(), self.map.max_per_sender(), self.map.quota())
    }

    /// Drop `call_id`'s batches.
    pub(crate) fn forget(&mut self, call_id: &CallId) {
        self.map.remove(call_id);
    }

    /// Drop what expired.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.map.expire(now);
    }

    /// The next expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
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
}
