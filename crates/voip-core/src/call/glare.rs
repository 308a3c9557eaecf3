//! Glare: both sides invited each other in the same room. One pure rule, decided identically on
//! both sides: the lexicographically lower `call_id` survives (spec, MSC2746).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::ids::{CallId, RoomId, Timestamp, UserId};
use crate::media::CallType;

/// What to do with our outgoing call and the peer's incoming one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GlareOutcome {
    /// Our invite is not out yet: drop our call and take the incoming one.
    ReplaceOurs,
    /// The incoming call has the lower id: it wins, ours is hung up with `replaced`.
    IncomingWins,
    /// Our call has the lower id: the incoming call is hung up with `replaced`.
    OursWins,
}

/// Decides glare. `our_invite_sent` is whether our invite has gone out.
pub(crate) fn resolve(ours: &str, incoming: &str, our_invite_sent: bool) -> GlareOutcome {
    if !our_invite_sent {
        return GlareOutcome::ReplaceOurs;
    }
    // Byte order equals JS and Dart string order for the ASCII ids real clients generate.
    match incoming.as_bytes().cmp(ours.as_bytes()) {
        Ordering::Less => GlareOutcome::IncomingWins,
        // Equal ids cannot both be live; keep ours and drop the duplicate.
        Ordering::Equal | Ordering::Greater => GlareOutcome::OursWins,
    }
}

/// Our outgoing call that its callee ended with reason `replaced` before answering: the callee
/// (js-sdk does this when our invite reaches it while it is still creating its own offer) is
/// replacing it with its own invite, which may reach us later than the hangup (sync pause). The
/// callee's next invite in the same room within our invite lifetime is that replacement and is
/// taken as glare would have taken it (`CallReplaced`, auto-answered with our media).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Awaited {
    /// Our ended call.
    pub(crate) old: CallId,
    /// The media we called with.
    pub(crate) call_type: CallType,
    /// Our mute state, for the replacement.
    pub(crate) mutes: (bool, bool),
    until: Timestamp,
}

/// Replacements we wait for, one per (room, callee); entries come only from our own calls.
#[derive(Debug, Default)]
pub(crate) struct AwaitedReplacements {
    map: BTreeMap<(RoomId, UserId), Awaited>,
}

impl AwaitedReplacements {
    /// Wait until `until` for `peer`'s replacement of `old` in `room`.
    pub(crate) fn expect(
        &mut self,
        room: RoomId,
        peer: UserId,
        old: CallId,
        call_type: CallType,
        mutes: (bool, bool),
        until: Timestamp,
    ) {
        self.map.insert((room, peer), Awaited { old, call_type, mutes, until });
    }

    /// The replacement awaited from `peer` in `room`, if any (taken).
    pub(crate) fn take(&mut self, room: &RoomId, peer: &UserId, now: Timestamp) -> Option<Awaited> {
        self.map.remove(&(room.clone(), peer.clone())).filter(|a| a.until > now)
    }

    /// Forget what is due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.map.retain(|_, a| a.until > now);
    }

    /// The next expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.map.values().map(|a| a.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Both sides, each seeing its own call as "ours", keep the same call.
        #[test]
        fn symmetric(a in "[0-9A-Za-z._~-]{1,40}", b in "[0-9A-Za-z._~-]{1,40}") {
            prop_assume!(a != b);
            let side_a = resolve(&a, &b, true);
            let side_b = resolve(&b, &a, true);
            let survivor_a = if side_a == GlareOutcome::OursWins { &a } else { &b };
            let survivor_b = if side_b == GlareOutcome::OursWins { &b } else { &a };
            prop_assert_eq!(survivor_a, survivor_b);
            prop_assert_eq!(survivor_a, std::cmp::min(&a, &b));
        }
    }

    #[test]
    fn preparing_side_yields() {
        assert_eq!(resolve("a", "z", false), GlareOutcome::ReplaceOurs);
    }
}
