//! Who may ring us: the admission rules an invite passes before it becomes a call, beyond its
//! addressing (see `docs/security.md`).
//!
//! - Users on our `m.ignored_user_list` never ring and are never called in mesh.
//! - One sender creates at most [`crate::Config::max_new_calls_per_minute`] incoming calls per
//!   [`NEW_CALL_WINDOW_MS`] (each is a peer connection the engine sets up); more are refused and
//!   counted, so 10 000 invites from one stranger do not become 10 000 calls.
//! - A caller we are busy for gets one busy reply (and the app one missed-call event) per
//!   [`BUSY_REPLY_WINDOW_MS`], not one per invite.
//! - A remote invite lifetime is capped by [`crate::Config::max_remote_lifetime_ms`].

use std::collections::BTreeSet;

use crate::config::Config;
use crate::ids::{CallId, Timestamp, UserId};
use crate::quota::{PerSender, Quota};

/// Window of the per-sender new-call budget.
pub(crate) const NEW_CALL_WINDOW_MS: u64 = 60_000;
/// The most the new-call budget tracks per sender, whatever the configuration says.
const MAX_NEW_CALLS: usize = 1024;
/// One busy reply per caller per this many milliseconds.
pub(crate) const BUSY_REPLY_WINDOW_MS: u64 = 30_000;
/// Most senders tracked at once for either budget.
const TRACKED: usize = 4096;

/// The admission state (see the module docs).
#[derive(Debug)]
pub(crate) struct Gate {
    ignored: BTreeSet<UserId>,
    new_calls: PerSender<CallId, ()>,
    busy_replies: PerSender<UserId, ()>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            ignored: BTreeSet::new(),
            new_calls: PerSender::new(Quota { per_sender: MAX_NEW_CALLS, total: TRACKED }),
            busy_replies: PerSender::new(Quota { per_sender: 1, total: TRACKED }),
        }
    }
}

impl Gate {
    /// Replaces the ignored users (`m.ignored_user_list`).
    pub(crate) fn set_ignored(&mut self, users: impl IntoIterator<Item = UserId>) {
        self.ignored = users.into_iter().collect();
    }

    /// Whether `user` is ignored.
    pub(crate) fn is_ignored(&self, user: &UserId) -> bool {
        self.ignored.contains(user)
    }

    /// Whether `sender` may create the incoming call `call_id` now (at most `per_minute` a
    /// minute); if so it is counted.
    pub(crate) fn admit_new_call(
        &mut self,
        now: Timestamp,
        sender: &UserId,
        call_id: &CallId,
        per_minute: usize,
    ) -> bool {
        if self.new_calls.count_of(sender) >= per_minute.min(MAX_NEW_CALLS) {
            return false;
        }
        self.new_calls.insert(call_id.clone(), sender.clone(), now.plus(NEW_CALL_WINDOW_MS), ());
        true
    }

    /// Whether a busy reply to `caller` may go out now; if so it is counted.
    pub(crate) fn busy_reply_allowed(&mut self, now: Timestamp, caller: &UserId) -> bool {
        if self.busy_replies.contains_key(caller) {
            return false;
        }
        self.busy_replies.insert(caller.clone(), caller.clone(), now.plus(BUSY_REPLY_WINDOW_MS), ());
        true
    }

    /// Drop what is due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.new_calls.expire(now);
        self.busy_replies.expire(now);
    }

    /// The next expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        [self.new_calls.next_expiry(), self.busy_replies.next_expiry()].into_iter().flatten().min()
    }
}

/// The invite-specific fields of a received `m.call.invite`, handed from dispatch to admission.
#[derive(Debug)]
pub(crate) struct InviteParts {
    /// The offer.
    pub(crate) offer: crate::media::SessionDescription,
    /// `lifetime` in ms, if given.
    pub(crate) lifetime: Option<u64>,
    /// `invitee` user.
    pub(crate) invitee: Option<String>,
    /// `invitee_device_id`.
    pub(crate) invitee_device_id: Option<String>,
    /// `sdp_stream_metadata`.
    pub(crate) metadata: Option<crate::wire::call::SdpStreamMetadata>,
    /// `capabilities`.
    pub(crate) capabilities: crate::wire::call::Capabilities,
}

/// How long a remote invite may ring: its claimed lifetime (or the default), capped.
pub(crate) fn lifetime(claimed: Option<u64>, config: &Config) -> u64 {
    claimed.unwrap_or(config.default_remote_lifetime_ms).min(config.max_remote_lifetime_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_calls_are_budgeted_per_sender() {
        let mut g = Gate::default();
        let (m, a) = (UserId::from("@m:x"), UserId::from("@a:x"));
        let admitted = (0..10_000)
            .filter(|n| g.admit_new_call(Timestamp(0), &m, &CallId::from(format!("c{n}").as_str()), 30))
            .count();
        assert_eq!(admitted, 30);
        assert!(g.admit_new_call(Timestamp(0), &a, &CallId::from("a1"), 30), "another sender is unaffected");
        g.expire(Timestamp(NEW_CALL_WINDOW_MS));
        assert!(g.admit_new_call(Timestamp(NEW_CALL_WINDOW_MS), &m, &CallId::from("later"), 30));
    }

    #[test]
    fn one_busy_reply_per_window() {
        let mut g = Gate::default();
        let m = UserId::from("@m:x");
        assert!(g.busy_reply_allowed(Timestamp(0), &m));
        assert!(!g.busy_reply_allowed(Timestamp(1), &m));
        g.expire(Timestamp(BUSY_REPLY_WINDOW_MS));
        assert!(g.busy_reply_allowed(Timestamp(BUSY_REPLY_WINDOW_MS), &m));
    }

    #[test]
    fn lifetimes_are_capped() {
        let c = Config::default();
        assert_eq!(lifetime(Some(u64::MAX), &c), 90_000);
        assert_eq!(lifetime(Some(10_000), &c), 10_000);
        assert_eq!(lifetime(None, &c), c.default_remote_lifetime_ms);
    }
}
