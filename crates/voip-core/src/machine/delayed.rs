//! MSC4140 delayed leaves left by an earlier process: listed at start-up, cancelled when
//! a current join owns their state key.

use super::*;

impl VoipMachine {
    /// The start-up listing of our delayed events arrived: keep the membership leaves at our
    /// own state keys that no join of this process scheduled, until they have fired for sure,
    /// and cancel those that would remove a current join.
    pub(super) fn delayed_listed(&mut self, listed: Vec<crate::input::ScheduledDelayedEvent>) {
        self.delayed_listing = DelayedListing::Done;
        let user = self.local.user_id.as_str();
        let ours: BTreeSet<&str> = self.groups.values().filter_map(GroupCall::delay_id).collect();
        let mut stale: Vec<StaleDelayed> = listed
            .into_iter()
            .filter(|e| matches!(e.event_type.as_str(), member::FAMEDLY_MEMBER | member::RTC_MEMBER))
            .filter(|e| {
                e.state_key.as_deref().is_some_and(|k| member::state_key_owned_by(&e.event_type, k, user))
            })
            .filter(|e| !ours.contains(e.delay_id.as_str()))
            .map(|e| {
                // It fires at the latest a whole delay after now (it was running already); without
                // a delay, after the longest delay we would use ourselves.
                let delay = e
                    .delay_ms
                    .unwrap_or(self.config.rtc_delayed_leave_ms.max(self.config.famedly_delayed_leave_ms));
                StaleDelayed { until: self.now.plus(delay), event: e }
            })
            .collect();
        stale.truncate(MAX_STALE_DELAYED);
        tracing::info!(count = stale.len(), "delayed leaves left behind by an earlier process");
        self.stale_delayed = stale;
        self.cancel_stale_delayed();
    }

    /// Cancels the remembered stale delayed leaves that would remove a current join: those at
    /// the state key a joining or joined group writes, once that group's own delayed leave is
    /// scheduled (or failed), so that the listing is never mistaken for ours. Never one a current
    /// join scheduled. famedly writes one list per user (its state key is the user id): a delayed
    /// famedly leave is cancelled only if it removes this device (its list has no entry of ours)
    /// and is no other device's (it keeps every other device of ours still in the call; a
    /// device's own leave drops that device's entry).
    pub(super) fn cancel_stale_delayed(&mut self) {
        if self.stale_delayed.is_empty() {
            return;
        }
        let now = self.now;
        self.stale_delayed.retain(|s| s.until > now);
        let owned: BTreeSet<String> =
            self.groups.values().filter_map(GroupCall::delay_id).map(str::to_owned).collect();
        let mut cancel: Vec<String> = Vec::new();
        for g in self.groups.values() {
            if !matches!(g.state, GroupCallState::Joining | GroupCallState::Joined) {
                continue;
            }
            let key = g.membership_key(&self.local);
            // A delayed leave of ours for this key on its way: the listing may already hold it.
            let in_flight =
                self.groups.values().any(|h| h.scheduling() && h.membership_key(&self.local) == key);
            if in_flight {
                continue;
            }
            for s in &self.stale_delayed {
                let e = &s.event;
                if (&e.room_id, e.event_type.as_str(), e.state_key.as_deref())
                    != (&key.0, key.1, Some(key.2.as_str()))
                    || owned.contains(&e.delay_id)
                    || cancel.contains(&e.delay_id)
                {
                    continue;
                }
                if e.event_type == member::FAMEDLY_MEMBER
                    && !self.famedly_leave_is_ours(&e.room_id, &key.2, &e.content)
                {
                    continue;
                }
                cancel.push(e.delay_id.clone());
            }
        }
        if cancel.is_empty() {
            return;
        }
        self.stale_delayed.retain(|s| !cancel.contains(&s.event.delay_id));
        for delay_id in cancel {
            tracing::info!(%delay_id, "cancelling a delayed leave left behind by an earlier process");
            self.counters.stale_delayed_leaves_cancelled += 1;
            self.sends.send(
                &mut self.out,
                None,
                crate::sends::SendPurpose::Other,
                "voip.group",
                crate::output::SendKind::UpdateDelayedEvent {
                    delay_id,
                    action: crate::output::DelayedAction::Cancel,
                },
            );
        }
    }

    /// Whether a delayed famedly list (at our user's key) is a leave of this device: it has no
    /// entry of ours, and has an entry for every other device of ours that is in a call in the
    /// room now (a leave of one of those would lack that device's entry).
    pub(super) fn famedly_leave_is_ours(
        &self,
        room: &RoomId,
        key: &str,
        content: &serde_json::Value,
    ) -> bool {
        let devices = |v: &serde_json::Value, live_only: bool| -> BTreeSet<String> {
            v.get("memberships")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter(|e| {
                    !live_only || e.get("expires_ts").and_then(|t| t.as_u64()).is_some_and(|t| t > self.now.0)
                })
                .filter_map(|e| e.get("device_id").and_then(|d| d.as_str()).map(str::to_owned))
                .collect()
        };
        let in_leave = devices(content, false);
        let mut others = devices(&self.store.raw_famedly(room, key), true);
        others.remove(self.local.device_id.as_str());
        !in_leave.contains(self.local.device_id.as_str()) && others.is_subset(&in_leave)
    }
}
