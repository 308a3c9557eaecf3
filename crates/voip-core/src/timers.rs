//! Timers: an enum of kinds and a small table per owner; `next_deadline` is their minimum.

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, RequestId, Timestamp};

/// Why a timer exists. Every timer of the core is one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Outgoing call: nobody answered within the invite lifetime.
    InviteTimeout,
    /// Incoming call: the invite's lifetime ran out while ringing.
    RingTimeout,
    /// The media engine did not produce a description in time.
    MediaTimeout,
    /// Send the batched local candidates.
    CandidateFlush,
    /// ICE is disconnected: restart it.
    IceRestart,
    /// ICE did not (re)connect in time: give up.
    IceFailed,
    /// Our renegotiation offer was not answered within its lifetime.
    NegotiateTimeout,
    /// Retry a failed or rate-limited send.
    SendRetry,
    /// Forget remembered ended calls and stale orphan candidates.
    Housekeeping,
    /// Refresh our group-call membership or restart its delayed leave.
    GroupMembership,
    /// A member's membership expires.
    MembershipExpiry,
}

/// The timers of one call: a type of their own, so a call's table cannot hold (or silently
/// overwrite a slot with) a timer of another owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallTimer {
    /// [`TimerKind::MediaTimeout`].
    MediaTimeout,
    /// [`TimerKind::InviteTimeout`].
    InviteTimeout,
    /// [`TimerKind::RingTimeout`].
    RingTimeout,
    /// [`TimerKind::IceFailed`].
    IceFailed,
    /// [`TimerKind::IceRestart`].
    IceRestart,
    /// [`TimerKind::NegotiateTimeout`].
    NegotiateTimeout,
    /// [`TimerKind::CandidateFlush`].
    CandidateFlush,
}

impl CallTimer {
    /// Every call timer, in the order they are handled when due at the same time (the order of
    /// the variants: a variant's index is its slot).
    pub(crate) const ALL: [CallTimer; 7] = [
        CallTimer::MediaTimeout,
        CallTimer::InviteTimeout,
        CallTimer::RingTimeout,
        CallTimer::IceFailed,
        CallTimer::IceRestart,
        CallTimer::NegotiateTimeout,
        CallTimer::CandidateFlush,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

impl From<CallTimer> for TimerKind {
    fn from(t: CallTimer) -> TimerKind {
        match t {
            CallTimer::MediaTimeout => TimerKind::MediaTimeout,
            CallTimer::InviteTimeout => TimerKind::InviteTimeout,
            CallTimer::RingTimeout => TimerKind::RingTimeout,
            CallTimer::IceFailed => TimerKind::IceFailed,
            CallTimer::IceRestart => TimerKind::IceRestart,
            CallTimer::NegotiateTimeout => TimerKind::NegotiateTimeout,
            CallTimer::CandidateFlush => TimerKind::CandidateFlush,
        }
    }
}

/// The next time the core needs to be woken, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Deadline {
    /// When: call [`crate::VoipMachine::handle`] with [`crate::Input::Tick`] at or after it.
    pub at: Timestamp,
    /// Which timer.
    pub reason: TimerKind,
    /// The call it belongs to, if any.
    pub call_id: Option<CallId>,
    /// The send it belongs to, if any.
    pub request_id: Option<RequestId>,
}

/// Per-call timer table: at most one pending instance of each kind.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable([Option<Timestamp>; CallTimer::ALL.len()]);

impl TimerTable {
    pub(crate) fn set(&mut self, kind: CallTimer, at: Timestamp) {
        self.0[kind.slot()] = Some(at);
    }

    /// Sets the timer unless it is already pending (batching windows keep their first deadline).
    pub(crate) fn set_if_unset(&mut self, kind: CallTimer, at: Timestamp) {
        let slot = &mut self.0[kind.slot()];
        if slot.is_none() {
            *slot = Some(at);
        }
    }

    pub(crate) fn clear(&mut self, kind: CallTimer) {
        self.0[kind.slot()] = None;
    }

    pub(crate) fn clear_all(&mut self) {
        self.0 = Default::default();
    }

    pub(crate) fn get(&self, kind: CallTimer) -> Option<Timestamp> {
        self.0[kind.slot()]
    }

    /// The earliest pending timer.
    pub(crate) fn next(&self) -> Option<(Timestamp, CallTimer)> {
        CallTimer::ALL.iter().filter_map(|k| self.get(*k).map(|at| (at, *k))).min_by_key(|(at, _)| *at)
    }

    /// Removes and returns the first timer due at `now` (in `CallTimer::ALL` order).
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<CallTimer> {
        let kind = CallTimer::ALL.iter().copied().find(|k| self.get(*k).is_some_and(|at| at <= now))?;
        self.clear(kind);
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_orders_and_pops() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(CallTimer::CandidateFlush, Timestamp(50));
        t.set(CallTimer::InviteTimeout, Timestamp(100));
        t.set_if_unset(CallTimer::CandidateFlush, Timestamp(10));
        assert_eq!(t.next(), Some((Timestamp(50), CallTimer::CandidateFlush)));
        assert_eq!(t.pop_due(Timestamp(49)), None);
        assert_eq!(t.pop_due(Timestamp(100)), Some(CallTimer::InviteTimeout));
        assert_eq!(t.pop_due(Timestamp(100)), Some(CallTimer::CandidateFlush));
        assert_eq!(t.pop_due(Timestamp(100)), None);
    }

    #[test]
    fn every_call_timer_has_its_own_slot() {
        let mut t = TimerTable::default();
        for (i, k) in CallTimer::ALL.iter().enumerate() {
            assert_eq!(k.slot(), i);
            t.set(*k, Timestamp(i as u64));
        }
        for (i, k) in CallTimer::ALL.iter().enumerate() {
            assert_eq!(t.get(*k), Some(Timestamp(i as u64)), "{k:?} was overwritten");
        }
    }
}
