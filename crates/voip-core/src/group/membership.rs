//! The internal membership model: every dialect's memberships of every room, keyed by where
//! they came from (room, event type, state or sticky key), with expiry computed from the `now`
//! the core is given (never from a hidden clock).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DeviceId, GroupCallId, Participant, RoomId, Timestamp, UserId};
use crate::wire::member::{self, Focus, FocusSelection, MemberEntry, MembershipDialect};
use crate::wire::WireError;

/// One member device of a group call, as the core understands it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Who.
    pub participant: Participant,
    /// Which format announced it.
    pub dialect: MembershipDialect,
    /// `application`.
    pub application: String,
    /// `scope`.
    pub scope: String,
    /// Backends / transports it prefers (first = its own SFU in `multi_sfu`).
    pub foci: Vec<Focus>,
    /// Its focus selection (MatrixRTC).
    pub focus_selection: Option<FocusSelection>,
    /// When it joined (MatrixRTC `created_ts`, else the event's timestamp).
    pub created: Timestamp,
    /// When it stops counting.
    pub expires_at: Timestamp,
    /// famedly mesh feeds.
    pub feeds: Vec<String>,
}

/// Where memberships came from: one state key (or sticky key) of one type in one room.
type Key = (RoomId, String, String);

#[derive(Debug, Default)]
pub(crate) struct MembershipStore {
    by_key: BTreeMap<Key, (GroupsOf, Vec<(GroupCallId, MemberInfo)>)>,
    /// Raw famedly contents, for read-modify-write of our own list.
    raw: BTreeMap<Key, Value>,
}

type GroupsOf = BTreeSet<GroupCallId>;

impl MembershipStore {
    /// Applies one membership event; returns the groups whose memberships changed (before and
    /// after), or an error for a malformed event (which then changes nothing).
    pub(crate) fn apply(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        content: &Value,
        origin_ts: Timestamp,
    ) -> Result<BTreeSet<GroupCallId>, WireError> {
        let Some(parsed) = member::parse(event_type, content)? else { return Ok(BTreeSet::new()) };
        let k: Key = (room.clone(), event_type.to_owned(), key.to_owned());
        let mut changed: BTreeSet<GroupCallId> =
            self.by_key.get(&k).map(|(g, _)| g.clone()).unwrap_or_default();
        let mut records = Vec::new();
        for e in parsed.entries {
            let group = GroupCallId { room_id: room.clone(), call_id: e.call_id.clone() };
            records.push((group.clone(), info(sender, parsed.dialect, e, origin_ts)));
            changed.insert(group);
        }
        if event_type == member::FAMEDLY_MEMBER {
            self.raw.insert(k.clone(), content.clone());
        }
        let groups: GroupsOf = records.iter().map(|(g, _)| g.clone()).collect();
        if records.is_empty() {
            self.by_key.remove(&k);
        } else {
            self.by_key.insert(k, (groups, records));
        }
        Ok(changed)
    }

    /// The raw famedly content under a state key (empty object if none).
    pub(crate) fn raw_famedly(&self, room: &RoomId, key: &str) -> Value {
        self.raw
            .get(&(room.clone(), member::FAMEDLY_MEMBER.to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// Current (non-expired) members of a group, optionally of one dialect family, excluding
    /// senders known not to be joined to the room. Sorted by creation time (oldest first).
    pub(crate) fn members(
        &self,
        group: &GroupCallId,
        now: Timestamp,
        dialect: Option<MembershipDialect>,
        joined: impl Fn(&UserId) -> bool,
    ) -> Vec<MemberInfo> {
        let mut seen: BTreeMap<(UserId, DeviceId), MemberInfo> = BTreeMap::new();
        for (_, records) in self.by_key.values() {
            for (g, m) in records {
                if g != group || m.expires_at <= now || !joined(&m.participant.user_id) {
                    continue;
                }
                if let Some(d) = dialect {
                    let family = |x: MembershipDialect| match x {
                        MembershipDialect::Sticky => MembershipDialect::MatrixRtc,
                        other => other,
                    };
                    if family(m.dialect) != family(d) {
                        continue;
                    }
                }
                // One device, one membership: the newest wins (sticky over state, famedly
                // per-device keys over user lists are all just "newest").
                let k = (m.participant.user_id.clone(), m.participant.device_id.clone());
                if seen.get(&k).is_none_or(|old| old.created <= m.created) {
                    seen.insert(k, m.clone());
                }
            }
        }
        let mut v: Vec<MemberInfo> = seen.into_values().collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.participant.cmp(&b.participant)));
        v
    }

    /// Every group with at least one membership record (expired or not) in a room.
    pub(crate) fn groups(&self) -> BTreeSet<GroupCallId> {
        self.by_key.values().flat_map(|(g, _)| g.iter().cloned()).collect()
    }

    /// The next expiry after `now`, so that expiries are timers, not noticed late.
    pub(crate) fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        self.by_key
            .values()
            .flat_map(|(_, r)| r.iter().map(|(_, m)| m.expires_at))
            .filter(|at| *at > now)
            .min()
    }

    /// Groups with a membership expiring in `(after, upto]`.
    pub(crate) fn expiring(&self, after: Timestamp, upto: Timestamp) -> BTreeSet<GroupCallId> {
        self.by_key
            .values()
            .flat_map(|(_, r)| r.iter())
            .filter(|(_, m)| m.expires_at > after && m.expires_at <= upto)
            .map(|(g, _)| g.clone())
            .collect()
    }
}

fn info(sender: &UserId, dialect: MembershipDialect, e: MemberEntry, origin_ts: Timestamp) -> MemberInfo {
    let created = e.created_ts.map(Timestamp).unwrap_or(origin_ts);
    let expires_at = match (e.expires_ts, e.expires) {
        (Some(abs), _) => Timestamp(abs),
        (None, rel) => created.plus(rel.unwrap_or(member::RTC_DEFAULT_EXPIRES_MS)),
    };
    let member_id = e.member_id.clone().unwrap_or_else(|| format!("{}:{}", sender, e.device_id));
    MemberInfo {
        participant: Participant { user_id: sender.clone(), device_id: DeviceId(e.device_id), member_id },
        dialect,
        application: e.application,
        scope: e.scope,
        foci: e.foci,
        focus_selection: e.focus_selection,
        created,
        expires_at,
        feeds: e.feeds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rtc(device: &str, created: u64) -> Value {
        json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": device,
               "expires": 1000, "created_ts": created, "focus_active": {"type": "livekit"},
               "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu"}]})
    }

    #[test]
    fn state_replaces_and_expiry_uses_the_given_now() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let g = GroupCallId::room_call(room.clone());
        let a = UserId::from("@a:x");
        let changed =
            s.apply(&room, &a, member::RTC_MEMBER, "_@a:x_D_m.call", &rtc("D", 100), Timestamp(100)).unwrap();
        assert_eq!(changed, BTreeSet::from([g.clone()]));
        assert_eq!(s.members(&g, Timestamp(500), None, |_| true).len(), 1);
        assert_eq!(s.members(&g, Timestamp(1100), None, |_| true).len(), 0, "expired at created + expires");
        assert_eq!(s.next_expiry(Timestamp(500)), Some(Timestamp(1100)));
        assert_eq!(s.members(&g, Timestamp(500), None, |u| u.as_str() != "@a:x").len(), 0, "not joined");
        s.apply(&room, &a, member::RTC_MEMBER, "_@a:x_D_m.call", &json!({}), Timestamp(600)).unwrap();
        assert!(s.members(&g, Timestamp(600), None, |_| true).is_empty(), "{{}} is a leave");
    }

    #[test]
    fn identity_comes_from_the_sender_not_the_state_key() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let mallory = UserId::from("@mallory:x");
        s.apply(&room, &mallory, member::RTC_MEMBER, "_@alice:x_D_m.call", &rtc("D", 100), Timestamp(100))
            .unwrap();
        let m = s.members(&GroupCallId::room_call(room), Timestamp(200), None, |_| true);
        assert_eq!(m[0].participant.user_id, mallory);
    }
}
