//! Glare: both sides invited each other in the same room. One pure rule, decided identically on
//! both sides: the lexicographically lower `call_id` survives (spec, MSC2746).

use std::cmp::Ordering;

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
