//! The internal membership model: every dialect's memberships of every room, keyed by where
//! they came from (room, event type, state or sticky key), with expiry computed from the `now`
//! the core is given (never from a hidden clock).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DeviceId, GroupCallId, Participant, RoomId, Timestamp, UserId};
use crate::rng::{HashKeys, Lookup};
use crate::wire::member::{self, Focus, FocusSelection, MemberEntry, MembershipDialect};
use crate::wire::WireError;

/// One member device of a group call, as the core understands it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// One member device: user and device.
pub(crate) type Device = (UserId, DeviceId);

/// Groups whose memberships may have changed, each with the devices whose membership of it may
/// have changed: what a consumer needs to look at again, and nothing more.
pub(crate) type Changes = BTreeMap<GroupCallId, BTreeSet<Device>>;

/// Membership keys (state keys of either dialect, sticky keys) one sender may hold in one room.
/// A sender past it can update or remove its keys, but not add more: it cannot grow the store,
/// and it cannot evict anyone else's.
pub(crate) const MAX_KEYS_PER_SENDER: usize = 64;

/// Sticky (MSC4143) membership keys held in total: past it new sticky keys are refused (existing
/// ones are never evicted for them). Sticky keys also expire (and are purged) with their record.
pub(crate) const MAX_STICKY_TOTAL: usize = 100_000;

/// The membership event types, as the index of a key's kind.
const KINDS: [&str; 3] = [member::FAMEDLY_MEMBER, member::RTC_MEMBER, member::RTC_MEMBER_STICKY];
const STICKY: usize = 2;

/// Where one slot is held: a number, so that the indexes hold four bytes per record instead of
/// a copy of the room, event type and state key.
type SlotId = u32;

/// What one membership key (room, event type, state or sticky key) holds.
#[derive(Debug)]
struct Slot {
    room: RoomId,
    /// Index into [`KINDS`].
    kind: usize,
    key: String,
    /// Who sent it (every record's user).
    sender: UserId,
    /// Its non-expired records.
    records: Vec<(GroupCallId, MemberInfo)>,
    /// famedly: the raw content, for read-modify-write of our own list (only kept while its
    /// list is not empty).
    raw: Option<Value>,
}

/// Every membership record, indexed so that the work per change is proportional to the change:
/// per key (where it came from), per group and device (who is in a call), per room and sender
/// (what a `m.room.member` change touches) and by expiry (purged when its timer fires). Keys are
/// held once, in their slot; the indexes name slots by number.
#[derive(Debug, Default)]
pub(crate) struct MembershipStore {
    /// Slots by number (`None`: free, its number in `free`).
    slots: Vec<Option<Slot>>,
    free: Vec<SlotId>,
    /// Per room, per kind, per state key: its slot.
    by_key: BTreeMap<RoomId, [Lookup<String, SlotId>; 3]>,
    /// Per group, per device: the slots holding a record of that device in that group. Hashed:
    /// a device is looked up per record taken in and per device recomputed; where all devices
    /// are listed ([`MembershipStore::devices`]) every caller orders them itself.
    by_group: BTreeMap<GroupCallId, Lookup<Device, Vec<SlotId>>>,
    /// Per room and sender: the slots it holds (at most [`MAX_KEYS_PER_SENDER`]).
    by_sender: BTreeMap<RoomId, Lookup<UserId, Vec<SlotId>>>,
    /// Every record's expiry, with its slot.
    expiry: BTreeSet<(Timestamp, SlotId)>,
    /// Sticky keys held.
    sticky: usize,
    /// How many keys the [`crate::Input::RoomState`] being taken in adds: the device index the
    /// next record goes into is sized for them in one go (no rehash of 10 000 devices step by
    /// step).
    group_hint: usize,
    /// The keys of the [`Lookup`] indexes' hashes.
    hash_keys: HashKeys,
}

fn device_of(m: &MemberInfo) -> Device {
    (m.participant.user_id.clone(), m.participant.device_id.clone())
}

fn family(x: MembershipDialect) -> MembershipDialect {
    match x {
        MembershipDialect::Sticky => MembershipDialect::MatrixRtc,
        other => other,
    }
}

impl MembershipStore {
    /// An empty store whose indexes hash with `hash_keys`.
    pub(crate) fn new(hash_keys: HashKeys) -> Self {
        MembershipStore { hash_keys, ..Default::default() }
    }

    fn kinds(&self) -> [Lookup<String, SlotId>; 3] {
        std::array::from_fn(|_| self.hash_keys.lookup())
    }

    fn users(&self) -> Lookup<UserId, Vec<SlotId>> {
        self.hash_keys.lookup()
    }

    fn slot(&self, id: SlotId) -> Option<&Slot> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    fn find(&self, room: &RoomId, kind: usize, key: &str) -> Option<SlotId> {
        self.by_key.get(room).and_then(|kinds| kinds[kind].get(key)).copied()
    }

    /// Makes room for `additional` more keys of one event type in one room, from as many senders
    /// (an [`crate::Input::RoomState`] taking in a large room: no index grows step by step).
    pub(crate) fn reserve(&mut self, room: &RoomId, event_type: &str, additional: usize) {
        let Some(kind) = KINDS.iter().position(|k| *k == event_type) else { return };
        self.slots.reserve(additional.saturating_sub(self.free.len()));
        if !self.by_key.contains_key(room) {
            self.by_key.insert(room.clone(), self.kinds());
        }
        if !self.by_sender.contains_key(room) {
            self.by_sender.insert(room.clone(), self.users());
        }
        if let Some(kinds) = self.by_key.get_mut(room) {
            kinds[kind].reserve(additional);
        }
        if let Some(users) = self.by_sender.get_mut(room) {
            users.reserve(additional);
        }
        self.group_hint = self.group_hint.saturating_add(additional);
    }

    /// Applies one membership event at `now`; returns what changed, `None` if it was refused
    /// (a new key past [`MAX_KEYS_PER_SENDER`] or [`MAX_STICKY_TOTAL`]: nothing changes), or an
    /// error for a malformed event (which then changes nothing). Records already expired at
    /// `now` are not kept.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        content: &Value,
        origin_ts: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Changes>, WireError> {
        let mut changes = Changes::new();
        self.apply_into(room, sender, event_type, key, Cow::Borrowed(content), origin_ts, now, &mut changes)
            .map(|applied| applied.then_some(changes))
    }

    /// [`MembershipStore::apply`], adding what changed to `changes` (many events at once: one
    /// set of changes). Returns whether it was applied (`false`: refused, nothing changed). An
    /// owned `content` gives its strings to the records (MatrixRTC) or is kept as the raw famedly
    /// list, instead of being copied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_into(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        mut content: Cow<'_, Value>,
        origin_ts: Timestamp,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<bool, WireError> {
        let parsed = match &mut content {
            Cow::Owned(c) => member::parse_mut(event_type, c)?,
            Cow::Borrowed(c) => member::parse(event_type, c)?,
        };
        let Some(parsed) = parsed else { return Ok(true) };
        let Some(kind) = KINDS.iter().position(|k| *k == event_type) else { return Ok(true) };
        // (`parse_mut` leaves famedly contents as they were.)
        let raw = (kind == 0
            && content.get("memberships").and_then(Value::as_array).is_some_and(|a| !a.is_empty()))
        .then(|| content.into_owned());
        let records: Vec<(GroupCallId, MemberInfo)> = parsed
            .entries
            .into_iter()
            .map(|mut e| {
                // The call id moves into the group (the record keeps no other copy of it).
                let group = GroupCallId { room_id: room.clone(), call_id: std::mem::take(&mut e.call_id) };
                (group, info(sender, parsed.dialect, e, origin_ts))
            })
            .collect();
        let live = records.iter().any(|(_, m)| m.expires_at > now);
        let holds = live || raw.is_some();
        let existing = self.find(room, kind, key);
        let held_by_sender = existing.and_then(|id| self.slot(id)).is_some_and(|s| s.sender == *sender);
        if holds && !held_by_sender {
            let mine = self.by_sender.get(room).and_then(|u| u.get(sender)).map_or(0, Vec::len);
            let sticky = kind == STICKY && existing.is_none();
            if mine >= MAX_KEYS_PER_SENDER || (sticky && self.sticky >= MAX_STICKY_TOTAL) {
                return Ok(false);
            }
        }
        for (g, m) in &records {
            mark(changes, g, device_of(m));
        }
        let old = existing.and_then(|id| self.take(id, changes));
        if holds {
            let mut records = records;
            records.retain(|(_, m)| m.expires_at > now);
            // The old slot's room and key are reused (no copies for an update).
            let slot = match old {
                Some(mut slot) => {
                    slot.sender = sender.clone();
                    slot.records = records;
                    slot.raw = raw;
                    slot
                }
                None => Slot {
                    room: room.clone(),
                    kind,
                    key: key.to_owned(),
                    sender: sender.clone(),
                    records,
                    raw,
                },
            };
            self.put(slot);
        }
        Ok(true)
    }

    /// Takes a slot out of the store and every index; its records' devices go to `changes`.
    fn take(&mut self, id: SlotId, changes: &mut Changes) -> Option<Slot> {
        let slot = self.slots.get_mut(id as usize)?.take()?;
        self.free.push(id);
        if let Some(kinds) = self.by_key.get_mut(&slot.room) {
            kinds[slot.kind].remove(slot.key.as_str());
            if kinds.iter().all(Lookup::is_empty) {
                self.by_key.remove(&slot.room);
            }
        }
        if let Some(users) = self.by_sender.get_mut(&slot.room) {
            if let Some(ids) = users.get_mut(&slot.sender) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    users.remove(&slot.sender);
                }
            }
            if users.is_empty() {
                self.by_sender.remove(&slot.room);
            }
        }
        for (g, m) in &slot.records {
            let d = device_of(m);
            if let Some(devices) = self.by_group.get_mut(g) {
                if let Some(ids) = devices.get_mut(&d) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        devices.remove(&d);
                    }
                }
                if devices.is_empty() {
                    self.by_group.remove(g);
                }
            }
            self.expiry.remove(&(m.expires_at, id));
            mark(changes, g, d);
        }
        if slot.kind == STICKY {
            self.sticky -= 1;
        }
        Some(slot)
    }

    /// Puts a slot into the store and every index.
    fn put(&mut self, slot: Slot) {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                SlotId::try_from(self.slots.len() - 1).expect("fewer than 2^32 membership keys")
            }
        };
        match self.by_key.get_mut(&slot.room) {
            Some(kinds) => {
                kinds[slot.kind].insert(slot.key.clone(), id);
            }
            None => {
                let mut kinds = self.kinds();
                kinds[slot.kind].insert(slot.key.clone(), id);
                self.by_key.insert(slot.room.clone(), kinds);
            }
        }
        if !self.by_sender.contains_key(&slot.room) {
            self.by_sender.insert(slot.room.clone(), self.users());
        }
        let users = self.by_sender.get_mut(&slot.room).expect("just inserted");
        match users.get_mut(&slot.sender) {
            Some(ids) => ids.push(id),
            None => {
                users.insert(slot.sender.clone(), vec![id]);
            }
        }
        for (g, m) in &slot.records {
            let hint = std::mem::take(&mut self.group_hint);
            let devices = match self.by_group.get_mut(g) {
                Some(devices) => {
                    if hint > 0 {
                        devices.reserve(hint);
                    }
                    devices
                }
                None => {
                    let keys = self.hash_keys;
                    self.by_group
                        .entry(g.clone())
                        .or_insert_with(|| Lookup::with_capacity_and_hasher(hint, keys))
                }
            };
            devices.entry(device_of(m)).or_default().push(id);
            self.expiry.insert((m.expires_at, id));
        }
        if slot.kind == STICKY {
            self.sticky += 1;
        }
        self.slots[id as usize] = Some(slot);
    }

    /// Removes every record expired at `now` (their timer fired); returns what changed.
    pub(crate) fn purge_expired(&mut self, now: Timestamp) -> Changes {
        let mut changes = Changes::new();
        while let Some(&(at, id)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.remove(&(at, id));
            let Some(mut slot) = self.take(id, &mut changes) else { continue };
            slot.records.retain(|(_, m)| m.expires_at > now);
            if !slot.records.is_empty() || slot.raw.is_some() {
                self.put(slot);
            }
        }
        changes
    }

    /// The raw famedly content under a state key (empty object if none).
    pub(crate) fn raw_famedly(&self, room: &RoomId, key: &str) -> Value {
        self.find(room, 0, key)
            .and_then(|id| self.slot(id))
            .and_then(|s| s.raw.clone())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// One device's current (non-expired) membership of a group, optionally of one dialect
    /// family, if its user is joined to the room: the newest of its records (sticky over state,
    /// famedly per-device keys over user lists are all just "newest"; on a tie the later key).
    pub(crate) fn device_member(
        &self,
        group: &GroupCallId,
        device: &Device,
        now: Timestamp,
        dialect: Option<MembershipDialect>,
        joined: impl Fn(&UserId) -> bool,
    ) -> Option<&MemberInfo> {
        let ids = self.by_group.get(group)?.get(device)?;
        if !joined(&device.0) {
            return None;
        }
        let mut best: Option<(&MemberInfo, (usize, &str))> = None;
        for slot in ids.iter().filter_map(|id| self.slot(*id)) {
            for (g, m) in &slot.records {
                if g != group
                    || m.participant.user_id != device.0
                    || m.participant.device_id != device.1
                    || m.expires_at <= now
                    || dialect.is_some_and(|d| family(m.dialect) != family(d))
                {
                    continue;
                }
                // Newest wins; on a tie the later key (event type, then state key).
                let at = (slot.kind, slot.key.as_str());
                let kind_order = |k: usize| KINDS[k];
                if best.is_none_or(|(b, bk)| {
                    (b.created, kind_order(bk.0), bk.1) <= (m.created, kind_order(at.0), at.1)
                }) {
                    best = Some((m, at));
                }
            }
        }
        best.map(|(m, _)| m)
    }

    /// Every device with a record in a group (expired or not yet purged), in no particular
    /// order (a hash map's): callers order them themselves.
    pub(crate) fn devices(&self, group: &GroupCallId) -> impl Iterator<Item = &Device> + '_ {
        self.by_group.get(group).into_iter().flat_map(|devices| devices.keys())
    }

    /// The groups and devices a sender's records are in, in one room: what its `m.room.member`
    /// change can change.
    pub(crate) fn of_user(&self, room: &RoomId, user: &UserId) -> Changes {
        let mut changes = Changes::new();
        let ids = self.by_sender.get(room).and_then(|u| u.get(user));
        for slot in ids.into_iter().flatten().filter_map(|id| self.slot(*id)) {
            for (g, m) in &slot.records {
                mark(&mut changes, g, device_of(m));
            }
        }
        changes
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
        let mut v: Vec<MemberInfo> = self
            .devices(group)
            .filter_map(|d| self.device_member(group, d, now, dialect, &joined).cloned())
            .collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.participant.cmp(&b.participant)));
        v
    }

    /// The next expiry after `now`, so that expiries are timers, not noticed late.
    pub(crate) fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.expiry.range((Excluded((now, SlotId::MAX)), Unbounded)).next().map(|(at, _)| *at)
    }

    /// Membership keys held (for tests and bounds).
    #[cfg(test)]
    fn keys_of(&self, room: &RoomId, sender: &UserId) -> usize {
        self.by_sender.get(room).and_then(|u| u.get(sender)).map_or(0, Vec::len)
    }
}

/// Adds one device of one group to `changes` (the group copied only when it is new there).
fn mark(changes: &mut Changes, g: &GroupCallId, d: Device) {
    match changes.get_mut(g) {
        Some(devices) => {
            devices.insert(d);
        }
        None => {
            changes.insert(g.clone(), BTreeSet::from([d]));
        }
    }
}

/// The device of a participant.
pub(crate) fn device(p: &Participant) -> Device {
    (p.user_id.clone(), p.device_id.clone())
}

/// The smallest participant of a device (participants order by user, device, member id).
fn floor(d: &Device) -> Participant {
    Participant { user_id: d.0.clone(), device_id: d.1.clone(), member_id: String::new() }
}

/// The participants of one device in a set ordered by participant.
pub(crate) fn of_device<'a>(
    set: &'a BTreeSet<Participant>,
    d: &'a Device,
) -> impl Iterator<Item = &'a Participant> + 'a {
    // An empty set (a take-in) needs no bound built.
    (!set.is_empty())
        .then(|| set.range(floor(d)..))
        .into_iter()
        .flatten()
        .take_while(move |p| p.user_id == d.0 && p.device_id == d.1)
}

/// The entries of one device in a map keyed by participant.
pub(crate) fn of_device_in<'a, V>(
    map: &'a BTreeMap<Participant, V>,
    d: &'a Device,
) -> impl Iterator<Item = (&'a Participant, &'a V)> + 'a {
    (!map.is_empty())
        .then(|| map.range(floor(d)..))
        .into_iter()
        .flatten()
        .take_while(move |(p, _)| p.user_id == d.0 && p.device_id == d.1)
}

fn info(sender: &UserId, dialect: MembershipDialect, mut e: MemberEntry, origin_ts: Timestamp) -> MemberInfo {
    let created = e.created_ts.map(Timestamp).unwrap_or(origin_ts);
    let expires_at = match (e.expires_ts, e.expires) {
        (Some(abs), _) => Timestamp(abs),
        (None, rel) => created.plus(rel.unwrap_or(member::RTC_DEFAULT_EXPIRES_MS)),
    };
    // Element Call's `@user:server:DEVICE` (concatenated: `format!` costs several times more,
    // once per member of a large room).
    let member_id = e.member_id.take().unwrap_or_else(|| {
        let mut id = String::with_capacity(sender.0.len() + 1 + e.device_id.len());
        id.push_str(&sender.0);
        id.push(':');
        id.push_str(&e.device_id);
        id
    });
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

    fn famedly(devices: &[(&str, u64)]) -> Value {
        let list: Vec<Value> = devices
            .iter()
            .map(|(d, expires_ts)| {
                json!({"call_id": "", "application": "m.call", "scope": "m.room", "device_id": d,
                       "foci_active": [{"type": "mesh"}], "membershipID": format!("S{d}"),
                       "expires_ts": expires_ts})
            })
            .collect();
        json!({ "memberships": list })
    }

    fn sticky(user: &str, device: &str, key: &str) -> Value {
        json!({"slot_id": "m.call#ROOM", "application": {"type": "m.call"}, "sticky_key": key,
               "member": {"user_id": user, "device_id": device, "id": format!("{user}:{device}")},
               "rtc_transports": [{"type": "livekit", "livekit_service_url": "https://sfu"}]})
    }

    fn dev(u: &str, d: &str) -> Device {
        (UserId::from(u), DeviceId(d.into()))
    }

    fn all(s: &MembershipStore, g: &GroupCallId, now: u64) -> Vec<(String, String)> {
        s.members(g, Timestamp(now), None, |_| true)
            .into_iter()
            .map(|m| (m.participant.user_id.0, m.participant.device_id.0))
            .collect()
    }

    #[test]
    fn state_replaces_and_expiry_uses_the_given_now() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let g = GroupCallId::room_call(room.clone());
        let a = UserId::from("@a:x");
        let changed = s
            .apply(
                &room,
                &a,
                member::RTC_MEMBER,
                "_@a:x_D_m.call",
                &rtc("D", 100),
                Timestamp(100),
                Timestamp(100),
            )
            .unwrap()
            .unwrap();
        assert_eq!(changed, Changes::from([(g.clone(), BTreeSet::from([dev("@a:x", "D")]))]));
        assert_eq!(s.members(&g, Timestamp(500), None, |_| true).len(), 1);
        assert_eq!(s.members(&g, Timestamp(1100), None, |_| true).len(), 0, "expired at created + expires");
        assert_eq!(s.next_expiry(Timestamp(500)), Some(Timestamp(1100)));
        assert_eq!(s.members(&g, Timestamp(500), None, |u| u.as_str() != "@a:x").len(), 0, "not joined");
        s.apply(&room, &a, member::RTC_MEMBER, "_@a:x_D_m.call", &json!({}), Timestamp(600), Timestamp(600))
            .unwrap();
        assert!(s.members(&g, Timestamp(600), None, |_| true).is_empty(), "{{}} is a leave");
        assert_eq!(s.devices(&g).count(), 0, "a leave leaves nothing indexed");
        assert_eq!(s.keys_of(&room, &a), 0);
        assert_eq!(s.next_expiry(Timestamp(600)), None);
    }

    #[test]
    fn identity_comes_from_the_sender_not_the_state_key() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let mallory = UserId::from("@mallory:x");
        s.apply(
            &room,
            &mallory,
            member::RTC_MEMBER,
            "_@alice:x_D_m.call",
            &rtc("D", 100),
            Timestamp(100),
            Timestamp(100),
        )
        .unwrap();
        let m = s.members(&GroupCallId::room_call(room), Timestamp(200), None, |_| true);
        assert_eq!(m[0].participant.user_id, mallory);
    }

    #[test]
    fn expired_records_are_purged_when_their_timer_fires() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let g = GroupCallId::room_call(room.clone());
        let (a, b) = (UserId::from("@a:x"), UserId::from("@b:x"));
        s.apply(
            &room,
            &a,
            member::RTC_MEMBER,
            "_@a:x_D_m.call",
            &rtc("D", 100),
            Timestamp(100),
            Timestamp(100),
        )
        .unwrap();
        // famedly: one list, two devices expiring at different times.
        s.apply(
            &room,
            &b,
            member::FAMEDLY_MEMBER,
            "@b:x",
            &famedly(&[("B1", 900), ("B2", 2000)]),
            Timestamp(100),
            Timestamp(100),
        )
        .unwrap();
        assert_eq!(
            all(&s, &g, 200),
            [("@a:x".into(), "D".into()), ("@b:x".into(), "B1".into()), ("@b:x".into(), "B2".into())]
        );
        assert_eq!(s.next_expiry(Timestamp(200)), Some(Timestamp(900)));
        assert!(s.purge_expired(Timestamp(899)).is_empty(), "nothing due yet");
        let changed = s.purge_expired(Timestamp(900));
        assert!(changed[&g].contains(&dev("@b:x", "B1")));
        assert_eq!(s.devices(&g).count(), 2, "B1's record is gone from the index");
        assert_eq!(s.next_expiry(Timestamp(900)), Some(Timestamp(1100)));
        let changed = s.purge_expired(Timestamp(5000));
        assert_eq!(changed[&g], BTreeSet::from([dev("@a:x", "D"), dev("@b:x", "B2")]));
        assert_eq!(s.devices(&g).count(), 0);
        assert_eq!(s.keys_of(&room, &a), 0, "an expired key is forgotten");
        assert_eq!(s.keys_of(&room, &b), 1, "famedly keeps the raw list for read-modify-write");
        assert_eq!(s.raw_famedly(&room, "@b:x")["memberships"].as_array().map(Vec::len), Some(2));
        assert_eq!(s.next_expiry(Timestamp(5000)), None);
        // A record already expired when it arrives is not kept.
        let changed = s
            .apply(
                &room,
                &a,
                member::RTC_MEMBER,
                "_@a:x_D_m.call",
                &rtc("D", 100),
                Timestamp(100),
                Timestamp(5000),
            )
            .unwrap()
            .unwrap();
        assert!(changed.contains_key(&g));
        assert_eq!(s.devices(&g).count(), 0);
        assert_eq!(s.keys_of(&room, &a), 0);
    }

    #[test]
    fn leave_and_rejoin_across_dialects_newest_wins() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let g = GroupCallId::room_call(room.clone());
        let a = UserId::from("@a:x");
        s.apply(
            &room,
            &a,
            member::RTC_MEMBER,
            "_@a:x_D_m.call",
            &rtc("D", 100),
            Timestamp(100),
            Timestamp(100),
        )
        .unwrap();
        let d = dev("@a:x", "D");
        assert_eq!(
            s.device_member(&g, &d, Timestamp(150), None, |_| true).map(|m| m.created),
            Some(Timestamp(100))
        );
        // The same device also announces a sticky membership, later: it wins (newest).
        s.apply(
            &room,
            &a,
            member::RTC_MEMBER_STICKY,
            "@a:x|k",
            &sticky("@a:x", "D", "k"),
            Timestamp(300),
            Timestamp(300),
        )
        .unwrap();
        let m = s.device_member(&g, &d, Timestamp(350), None, |_| true).unwrap();
        assert_eq!((m.dialect, m.created), (MembershipDialect::Sticky, Timestamp(300)));
        assert_eq!(s.members(&g, Timestamp(350), None, |_| true).len(), 1, "one device, one member");
        // famedly family only: none.
        assert!(s
            .device_member(&g, &d, Timestamp(350), Some(MembershipDialect::Famedly), |_| true)
            .is_none());
        assert_eq!(s.of_user(&room, &a), Changes::from([(g.clone(), BTreeSet::from([d.clone()]))]));
        // The sticky one leaves: the state one counts again.
        s.apply(
            &room,
            &a,
            member::RTC_MEMBER_STICKY,
            "@a:x|k",
            &json!({"sticky_key": "k"}),
            Timestamp(400),
            Timestamp(400),
        )
        .unwrap();
        let m = s.device_member(&g, &d, Timestamp(450), None, |_| true).unwrap();
        assert_eq!(m.dialect, MembershipDialect::MatrixRtc);
        // Leave, then rejoin with a new created_ts.
        s.apply(&room, &a, member::RTC_MEMBER, "_@a:x_D_m.call", &json!({}), Timestamp(500), Timestamp(500))
            .unwrap();
        assert!(s.device_member(&g, &d, Timestamp(500), None, |_| true).is_none());
        assert!(s.of_user(&room, &a).is_empty());
        s.apply(
            &room,
            &a,
            member::RTC_MEMBER,
            "_@a:x_D_m.call",
            &rtc("D", 600),
            Timestamp(600),
            Timestamp(600),
        )
        .unwrap();
        assert_eq!(
            s.device_member(&g, &d, Timestamp(650), None, |_| true).map(|m| m.created),
            Some(Timestamp(600))
        );
        assert_eq!(s.next_expiry(Timestamp(650)), Some(Timestamp(1600)), "the old expiries are gone");
    }

    #[test]
    fn a_flooding_sender_cannot_evict_or_block_another_senders_records() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let g = GroupCallId::room_call(room.clone());
        let (alice, mallory) = (UserId::from("@alice:x"), UserId::from("@mallory:x"));
        s.apply(
            &room,
            &alice,
            member::RTC_MEMBER_STICKY,
            "@alice:x|a",
            &sticky("@alice:x", "A", "a"),
            Timestamp(1),
            Timestamp(1),
        )
        .unwrap()
        .unwrap();
        let mut refused = 0;
        for i in 0..10 * MAX_KEYS_PER_SENDER {
            let (key, device) = (format!("k{i}"), format!("M{i}"));
            let content = sticky("@mallory:x", &device, &key);
            let kind = if i % 2 == 0 { member::RTC_MEMBER_STICKY } else { member::RTC_MEMBER };
            let content = if i % 2 == 0 { content } else { rtc(&device, 1) };
            let out = s.apply(
                &room,
                &mallory,
                kind,
                &format!("@mallory:x|{key}"),
                &content,
                Timestamp(1),
                Timestamp(1),
            );
            refused += usize::from(out.unwrap().is_none());
        }
        assert_eq!(s.keys_of(&room, &mallory), MAX_KEYS_PER_SENDER, "bounded per sender");
        assert_eq!(refused, 9 * MAX_KEYS_PER_SENDER);
        assert_eq!(s.devices(&g).count(), MAX_KEYS_PER_SENDER + 1);
        let alice_dev = dev("@alice:x", "A");
        assert!(
            s.device_member(&g, &alice_dev, Timestamp(2), None, |_| true).is_some(),
            "alice's record stays"
        );
        // Alice can still add and change hers.
        let added = s
            .apply(
                &room,
                &alice,
                member::RTC_MEMBER_STICKY,
                "@alice:x|b",
                &sticky("@alice:x", "A2", "b"),
                Timestamp(2),
                Timestamp(2),
            )
            .unwrap();
        assert!(added.is_some());
        // Mallory can update and remove its existing keys, and add one after removing one.
        assert!(s
            .apply(
                &room,
                &mallory,
                member::RTC_MEMBER_STICKY,
                "@mallory:x|k0",
                &sticky("@mallory:x", "M0", "k0"),
                Timestamp(3),
                Timestamp(3)
            )
            .unwrap()
            .is_some());
        assert!(s
            .apply(
                &room,
                &mallory,
                member::RTC_MEMBER_STICKY,
                "@mallory:x|k0",
                &json!({"sticky_key": "k0"}),
                Timestamp(3),
                Timestamp(3)
            )
            .unwrap()
            .is_some());
        assert_eq!(s.keys_of(&room, &mallory), MAX_KEYS_PER_SENDER - 1);
        assert!(s
            .apply(
                &room,
                &mallory,
                member::RTC_MEMBER_STICKY,
                "@mallory:x|new",
                &sticky("@mallory:x", "N", "new"),
                Timestamp(3),
                Timestamp(3)
            )
            .unwrap()
            .is_some());
        assert_eq!(s.keys_of(&room, &mallory), MAX_KEYS_PER_SENDER);
    }

    #[test]
    fn sticky_records_are_bounded_in_total_without_evicting_any() {
        let mut s = MembershipStore::default();
        let room = RoomId::from("!r");
        let senders = MAX_STICKY_TOTAL.div_ceil(MAX_KEYS_PER_SENDER) + 1;
        let mut kept = 0;
        for u in 0..senders {
            let user = format!("@s{u}:x");
            for i in 0..MAX_KEYS_PER_SENDER {
                let key = format!("k{i}");
                let c = json!({"slot_id": "m.call#ROOM", "sticky_key": key, "member": {"device_id": format!("D{i}")}});
                let out = s.apply(
                    &room,
                    &UserId::from(user.as_str()),
                    member::RTC_MEMBER_STICKY,
                    &format!("{user}|{key}"),
                    &c,
                    Timestamp(1),
                    Timestamp(1),
                );
                kept += usize::from(out.unwrap().is_some());
            }
        }
        assert_eq!(s.sticky, MAX_STICKY_TOTAL);
        assert_eq!(kept, MAX_STICKY_TOTAL);
        let first = UserId::from("@s0:x");
        // Holders can still update theirs; nothing was evicted.
        let c = json!({"slot_id": "m.call#ROOM", "sticky_key": "k0", "member": {"device_id": "D0"}});
        assert!(s
            .apply(&room, &first, member::RTC_MEMBER_STICKY, "@s0:x|k0", &c, Timestamp(2), Timestamp(2))
            .unwrap()
            .is_some());
        assert_eq!(s.keys_of(&room, &first), MAX_KEYS_PER_SENDER);
        // Purged on expiry, room for new ones again.
        s.purge_expired(Timestamp(1 + member::STICKY_DURATION_MS));
        assert_eq!(s.sticky, 1, "only the updated one is left");
    }
}
