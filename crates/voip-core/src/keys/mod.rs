//! Media keys of SFU (LiveKit) group calls: one [`KeyManager`] per joined group call.
//!
//! Rules (both transports; timings per [`KeyConfig`]):
//! - **Our join** (the first [`KeyManager::update_members`]): a fresh key, used at once, sent to
//!   every member device in one batch.
//! - **A leave** (a device gone, or its membership id changed): the leaver's keys are
//!   forgotten and a fresh key is made `leave_delay_ms` later (further leaves restart the wait),
//!   sent to the remaining members only, and used `use_delay_ms` after it was sent.
//! - **A join**: if our latest key is younger than `join_grace_ms`, it goes to the joiners only;
//!   otherwise a fresh key goes to everyone (joiners included) and is used after the delay. A
//!   joiner never gets an older key than that (it could decrypt media from before it joined).
//! - **Received keys** are accepted only Olm-encrypted, from the device the content claims, for
//!   this room and call, from a current member device. Keys from a device that is not a member
//!   (yet) are kept `pending_key_ttl_ms` (at most `max_pending_keys`) and applied if its
//!   membership arrives in time. A key equal to the one held at its index is a duplicate; a key
//!   whose `sent_ts` is older than the one held at its index is stale; both are ignored. The
//!   current key of a member is the one with the newest `sent_ts`; without timestamps (famedly)
//!   a key less than half a ring behind the current index arrived late: it is held at its index
//!   but does not become the current key.
//! - **Requests** (famedly) are answered, with our latest key, only for current member devices.
//!
//! Security: every key leaves in one [`crate::output::SendKind::ToDevice`] with
//! [`ToDeviceEncryption::Required`], addressed only to current member devices (never our own),
//! so a device that has left never receives a key made after it left.

mod transport;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

pub(crate) use transport::{KeyConfig, KeyTransport};

use crate::ctx::Ctx;
use crate::ids::{DeviceId, GroupCallId, Participant, RoomId, Timestamp, UserId};
use crate::output::{Event, ToDeviceEncryption};
use crate::sends::SendPurpose;
use crate::wire::keys::{self as wire, types, KeyEntry, KeyEvent, KeysContent};
use crate::wire::WireError;

/// Transaction-id prefix of key sends.
const TXN_PREFIX: &str = "voip.keys";

/// The MatrixRTC application of calls (Element Call's `session.application`).
const CALL_APPLICATION: &str = "m.call";

/// A member device.
type DeviceKey = (UserId, DeviceId);

fn device_key(p: &Participant) -> DeviceKey {
    (p.user_id.clone(), p.device_id.clone())
}

/// What became of a received key event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyDisposition {
    /// At least one key was accepted (an [`Event::EncryptionKey`] each), or a request answered.
    Applied,
    /// The sender device is not a member (yet): kept until its membership arrives or the
    /// pending-key lifetime runs out.
    Buffered,
    /// Not acted on.
    Ignored(KeyIgnored),
}

/// Why a received key event was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyIgnored {
    /// It did not arrive Olm-encrypted (or without a verified sender device).
    NotEncrypted,
    /// The content's claimed device is not the Olm-verified sending device.
    DeviceMismatch,
    /// `room_id` is missing or another room's.
    WrongRoom,
    /// The call id (`conf_id`, `session.call_id`) is another call's, or the Element Call
    /// `session.application` is not `m.call`.
    WrongCall,
    /// From our own device.
    OwnDevice,
    /// Every key in it is already held at its index.
    Duplicate,
    /// Every key in it is older (`sent_ts`) than the one held at its index (or a duplicate).
    Older,
    /// A request from a device that is not a current member.
    NotMember,
    /// We are not in the call (never joined, or left).
    NotJoined,
}

/// One of our keys.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LocalKey {
    entry: KeyEntry,
    created: Timestamp,
}

/// Whether `index` is behind `latest` on a ring of `ring_size` indices: less than half a ring
/// before it (a famedly sender counts its index up by one per key, modulo the ring).
fn ring_behind(latest: u32, index: u32, ring_size: u32) -> bool {
    let ring = ring_size.max(1);
    let back = (latest % ring + ring - index % ring) % ring;
    back != 0 && back < ring.div_ceil(2)
}

/// What we hold of one member device's keys.
#[derive(Clone, Debug, Default)]
struct RemoteKeys {
    /// Index → key and its `sent_ts`.
    ring: BTreeMap<u32, (Vec<u8>, Option<Timestamp>)>,
    /// The latest accepted key (not replaced by one with an older `sent_ts`).
    latest: Option<(u32, Vec<u8>, Option<Timestamp>)>,
}

/// A key event from a device that was not a member when it arrived (already checked for
/// encryption, device binding, room and call).
#[derive(Clone, Debug)]
struct Buffered {
    until: Timestamp,
    sender: UserId,
    content: KeysContent,
}

/// The media-key manager of one SFU group call (see the module docs for the rules).
#[derive(Debug)]
pub(crate) struct KeyManager {
    group: GroupCallId,
    transport: KeyTransport,
    config: KeyConfig,
    local: Participant,
    /// Between our join (first `update_members`) and `leave`.
    joined: bool,
    /// After `leave` (until a new join): everything received is ignored.
    left: bool,
    /// Current members other than us.
    members: BTreeMap<DeviceKey, Participant>,
    /// Keys made so far (the ring index is this modulo `ring_size`).
    made: u64,
    /// Our latest key (the one a newcomer gets within the grace period).
    latest: Option<LocalKey>,
    /// The key we encrypt with.
    in_use: Option<LocalKey>,
    /// A key sent but not used yet, and when to use it.
    pending_use: Option<(Timestamp, LocalKey)>,
    /// A leave happened: make and send a fresh key at this time.
    rotate_at: Option<Timestamp>,
    remote: BTreeMap<DeviceKey, RemoteKeys>,
    buffered: VecDeque<Buffered>,
    /// `sent_ts` of our last key send: strictly increasing, so that receivers order two keys
    /// sent within one millisecond and delivered out of order (found by the simulator, sfu
    /// seed 17).
    last_sent_ts: Timestamp,
}

impl KeyManager {
    /// A manager for `group`, speaking `transport`, for our own member device `local`.
    pub(crate) fn new(
        group: GroupCallId,
        transport: KeyTransport,
        config: KeyConfig,
        local: Participant,
    ) -> Self {
        KeyManager {
            group,
            transport,
            config: config.sanitized(),
            local,
            joined: false,
            left: false,
            members: BTreeMap::new(),
            made: 0,
            latest: None,
            in_use: None,
            pending_use: None,
            rotate_at: None,
            remote: BTreeMap::new(),
            buffered: VecDeque::new(),
            last_sent_ts: Timestamp(0),
        }
    }

    /// The current members other than us, as a whole (the first call is our join: make the
    /// first key, use it at once, send it to everyone). Works out the joins and leaves against
    /// the members held and hands them to [`KeyManager::update_members`]; a device whose member
    /// id changed counts as a leave and a join. Our own device is skipped if present. Calling it
    /// after [`KeyManager::leave`] joins again. Proportional to the number of members: for a
    /// change of a few members use [`KeyManager::update_members`].
    #[cfg(test)]
    pub(crate) fn set_members(&mut self, ctx: &mut Ctx<'_>, members: &BTreeSet<Participant>) {
        let left: Vec<Participant> =
            self.members.values().filter(|p| !members.contains(*p)).cloned().collect();
        let joined: Vec<Participant> =
            members.iter().filter(|p| self.members.get(&device_key(p)) != Some(*p)).cloned().collect();
        self.update_members(ctx, &joined, &left);
    }

    /// Members changed: `joined` are new (or a new session of a device: its old participant is
    /// in `left`, or is replaced all the same), `left` are gone. The first call after
    /// [`KeyManager::new`] or [`KeyManager::leave`] is our join (`joined` being everyone then):
    /// a fresh key, used at once, sent to every member. The work is proportional to the change,
    /// except where a key goes to every member (our join, a rotation). Our own device and
    /// leavers that are not (or no longer) members are skipped.
    pub(crate) fn update_members<'p>(
        &mut self,
        ctx: &mut Ctx<'_>,
        joined: impl IntoIterator<Item = &'p Participant>,
        left: impl IntoIterator<Item = &'p Participant>,
    ) {
        let _span = tracing::debug_span!("keys", group = %self.group).entered();
        let ours = |p: &Participant| p.user_id == self.local.user_id && p.device_id == self.local.device_id;
        let mut leavers: Vec<DeviceKey> = Vec::new();
        for p in left.into_iter().filter(|p| !ours(p)) {
            let k = device_key(p);
            if self.members.get(&k) == Some(p) {
                self.members.remove(&k);
                leavers.push(k);
            }
        }
        // The joiners as given (borrowed: a join of 10 000 members copies no more ids here).
        let joined: Vec<&'p Participant> = joined.into_iter().filter(|p| !ours(p)).collect();
        let mut joiners: Vec<&'p Participant> = Vec::new();
        let distinct_devices_in_order = |joined: &[&Participant]| {
            joined.windows(2).all(|w| (&w[0].user_id, &w[0].device_id) < (&w[1].user_id, &w[1].device_id))
        };
        if self.members.is_empty() && distinct_devices_in_order(&joined) {
            // Everyone is new (our join, a take-in): the map is built in one go from the
            // ordered list, not entry by entry.
            self.members = joined.iter().map(|p| (device_key(p), (*p).clone())).collect();
            joiners = joined;
        } else {
            for p in joined {
                match self.members.entry(device_key(p)) {
                    Entry::Vacant(v) => {
                        v.insert(p.clone());
                    }
                    Entry::Occupied(o) if o.get() == p => continue,
                    // Another session of that device, not reported as left: it left all the same.
                    Entry::Occupied(mut o) => {
                        leavers.push(o.key().clone());
                        o.insert(p.clone());
                    }
                }
                joiners.push(p);
            }
        }
        for k in &leavers {
            self.remote.remove(k);
        }
        // A key send still pending (waiting for a retry) must not reach a member who left.
        if !leavers.is_empty() {
            ctx.sends.drop_recipients(&self.group.room_id, self.transport.keys_event_type(), &leavers);
        }

        if !self.joined {
            self.joined = true;
            self.left = false;
            let key = self.make_key(ctx);
            tracing::debug!(index = key.entry.index, members = self.members.len(), "joined: first key");
            self.use_key(ctx, key.clone());
            let all: Vec<DeviceKey> = self.members.keys().cloned().collect();
            self.send_keys_to(ctx, &[key.entry], all);
        } else {
            let mut rotated = false;
            if !leavers.is_empty() {
                tracing::debug!(leavers = leavers.len(), "members left: rotating");
                if self.config.leave_delay_ms == 0 {
                    self.rotate(ctx);
                    rotated = true;
                } else {
                    self.rotate_at = Some(ctx.now.plus(self.config.leave_delay_ms));
                }
            }
            if !joiners.is_empty() && !rotated {
                let young = self
                    .latest
                    .as_ref()
                    .is_some_and(|k| ctx.now.since(k.created) < self.config.join_grace_ms);
                match (&self.latest, young) {
                    (Some(k), true) => {
                        tracing::debug!(joiners = joiners.len(), index = k.entry.index, "join: current key");
                        let entry = k.entry.clone();
                        let mut to: Vec<DeviceKey> = joiners.iter().map(|p| device_key(p)).collect();
                        if to.is_sorted() {
                            // Every joiner is a member now: in order (as `on_members` hands
                            // them over), they need no set to be filtered and ordered through.
                            to.dedup();
                            self.send_keys_to(ctx, &[entry], to);
                        } else {
                            self.send_keys(ctx, &[entry], &to);
                        }
                    }
                    _ => {
                        tracing::debug!(joiners = joiners.len(), "join: fresh key for everyone");
                        self.rotate(ctx);
                    }
                }
            }
        }
        self.apply_buffered(ctx);
        // A device that joined again with a new session (an app restart): its keys were
        // forgotten with the old session. famedly key events name no session, so the new
        // session's first key may have arrived before its membership and been forgotten with
        // the old one (found by the simulator, sfu seed 213): ask it for its key (famedly
        // members answer requests from members with their latest key; Element Call keys name
        // their member and wait in the buffer instead, and nothing is sent).
        let leavers: BTreeSet<&DeviceKey> = leavers.iter().collect();
        let rejoined: Vec<Participant> = if leavers.is_empty() {
            Vec::new()
        } else {
            joiners
                .iter()
                .map(|p| device_key(p))
                .filter(|k| leavers.contains(k))
                .filter_map(|k| self.members.get(&k).cloned())
                .collect()
        };
        if !rejoined.is_empty() && self.transport.request_content(&self.group, &self.local).is_some() {
            tracing::debug!(members = rejoined.len(), "members with a new session: asking for their key");
            self.request_keys(ctx, &rejoined);
        }
    }

    /// A received to-device event of either transport's key or key-request type. `sender_device`
    /// is the Olm-verified device (None when it arrived unencrypted: refused).
    pub(crate) fn handle_to_device(
        &mut self,
        ctx: &mut Ctx<'_>,
        sender: &UserId,
        sender_device: Option<&DeviceId>,
        encrypted: bool,
        event_type: &str,
        content: &Value,
    ) -> Result<KeyDisposition, WireError> {
        use KeyDisposition::Ignored as Ign;
        let _span = tracing::debug_span!("keys", group = %self.group, %sender).entered();
        let Some(device) = sender_device.filter(|_| encrypted) else {
            tracing::warn!(event_type, "key event not Olm-encrypted: refused");
            return Ok(Ign(KeyIgnored::NotEncrypted));
        };
        let event = wire::parse(event_type, content)?;
        if self.left {
            return Ok(Ign(KeyIgnored::NotJoined));
        }
        let (room_id, call_id, claimed) = match &event {
            KeyEvent::Keys(k) => (k.room_id.as_ref(), &k.call_id, &k.claimed_device),
            KeyEvent::Request(r) => (Some(&r.room_id), &r.call_id, &r.claimed_device),
        };
        if room_id != Some(&self.group.room_id) {
            return Ok(Ign(KeyIgnored::WrongRoom));
        }
        let application = match &event {
            KeyEvent::Keys(k) => k.application.as_deref(),
            KeyEvent::Request(_) => None,
        };
        if call_id != &self.group.call_id || application.is_some_and(|a| a != CALL_APPLICATION) {
            return Ok(Ign(KeyIgnored::WrongCall));
        }
        if claimed != device {
            tracing::warn!(%device, %claimed, "key event claims another device: refused");
            return Ok(Ign(KeyIgnored::DeviceMismatch));
        }
        if sender == &self.local.user_id && device == &self.local.device_id {
            return Ok(Ign(KeyIgnored::OwnDevice));
        }
        let dk = (sender.clone(), device.clone());
        match event {
            KeyEvent::Keys(content) => match self.member_for(&dk, &content) {
                Some(p) => Ok(self.apply(ctx, &p, &content)),
                None => {
                    self.buffer(ctx.now, sender.clone(), content);
                    Ok(KeyDisposition::Buffered)
                }
            },
            KeyEvent::Request(_) => {
                if !self.joined {
                    return Ok(Ign(KeyIgnored::NotJoined));
                }
                if !self.members.contains_key(&dk) {
                    return Ok(Ign(KeyIgnored::NotMember));
                }
                let Some(latest) = self.latest.as_ref().map(|k| k.entry.clone()) else {
                    return Ok(Ign(KeyIgnored::NotJoined));
                };
                tracing::debug!(%device, index = latest.index, "answering a key request");
                self.send_keys(ctx, &[latest], &[dk]);
                Ok(KeyDisposition::Applied)
            }
        }
    }

    /// Asks these members for their keys (famedly `…encryption_keys_request`, one batch to those
    /// of them that are current members). Element Call has no request event: its members send
    /// their key to every joiner and on every change, so nothing is sent (logged).
    pub(crate) fn request_keys(&mut self, ctx: &mut Ctx<'_>, from: &[Participant]) {
        if !self.joined {
            return;
        }
        let Some(content) = self.transport.request_content(&self.group, &self.local) else {
            tracing::debug!(group = %self.group, "Element Call has no key request: nothing sent");
            return;
        };
        let targets: BTreeSet<DeviceKey> =
            from.iter().map(device_key).filter(|k| self.members.contains_key(k)).collect();
        if targets.is_empty() {
            return;
        }
        ctx.sends.send_to_devices(
            ctx.out,
            SendPurpose::Other,
            TXN_PREFIX,
            types::FAMEDLY_KEYS_REQUEST.to_owned(),
            Some(self.group.room_id.clone()),
            targets.into_iter().collect(),
            content,
            ToDeviceEncryption::Required,
        );
    }

    /// Members that joined again under the same identity (an app restart): they lost our key,
    /// send them the one in use.
    pub(crate) fn resend_current(&mut self, ctx: &mut Ctx<'_>, to: &[Participant]) {
        let Some(entry) = self.latest.as_ref().map(|k| k.entry.clone()) else { return };
        let to: Vec<DeviceKey> = to.iter().map(device_key).collect();
        tracing::debug!(members = to.len(), index = entry.index, "rejoined members: current key");
        self.send_keys(ctx, &[entry], &to);
    }

    /// We leave: forget every key (ours, the members', the buffered ones), cancel the timers;
    /// nothing more is sent and everything received is ignored until a new join.
    pub(crate) fn leave(&mut self, ctx: &mut Ctx<'_>) {
        tracing::debug!(group = %self.group, now = ctx.now.0, "left: keys forgotten");
        self.joined = false;
        self.left = true;
        // Key sends still waiting for a retry stay unsent (found by the simulator, sfu seed 6).
        let all: Vec<DeviceKey> = self.members.keys().cloned().collect();
        ctx.sends.drop_recipients(&self.group.room_id, self.transport.keys_event_type(), &all);
        self.members.clear();
        self.latest = None;
        self.in_use = None;
        self.pending_use = None;
        self.rotate_at = None;
        self.remote.clear();
        self.buffered.clear();
    }

    /// When [`KeyManager::handle_timeout`] must next run.
    /// Whether our join was processed (the first `update_members`) and we have not left since.
    pub(crate) fn is_joined(&self) -> bool {
        self.joined && !self.left
    }

    pub(crate) fn next_timer(&self) -> Option<Timestamp> {
        let use_at = self.pending_use.as_ref().map(|(at, _)| *at);
        let expiry = self.buffered.iter().map(|b| b.until).min();
        [use_at, self.rotate_at, expiry].into_iter().flatten().min()
    }

    /// Runs what is due at `ctx.now`: a delayed key comes into use, a post-leave rotation, expiry
    /// of buffered keys.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        if self.pending_use.as_ref().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = self.pending_use.take() {
                self.use_key(ctx, key);
            }
        }
        if self.rotate_at.is_some_and(|at| at <= now) {
            self.rotate_at = None;
            self.rotate(ctx);
        }
        let before = self.buffered.len();
        self.buffered.retain(|b| b.until > now);
        if self.buffered.len() != before {
            tracing::debug!(dropped = before - self.buffered.len(), "buffered keys expired");
        }
    }

    /// The latest key held per current member device: (participant, index, key bytes).
    pub(crate) fn current_keys(&self) -> Vec<(Participant, u32, Vec<u8>)> {
        self.members
            .iter()
            .filter_map(|(k, p)| {
                let (index, key, _) = self.remote.get(k)?.latest.as_ref()?;
                Some((p.clone(), *index, key.clone()))
            })
            .collect()
    }

    /// Our key in use: (index, key bytes).
    pub(crate) fn local_key(&self) -> Option<(u32, Vec<u8>)> {
        self.in_use.as_ref().map(|k| (k.entry.index, k.entry.key.clone()))
    }

    fn make_key(&mut self, ctx: &mut Ctx<'_>) -> LocalKey {
        let index = (self.made % u64::from(self.config.ring_size)) as u32;
        self.made = self.made.wrapping_add(1);
        let mut key = vec![0u8; self.config.key_len];
        ctx.rng.fill(&mut key);
        let k = LocalKey { entry: KeyEntry { index, key }, created: ctx.now };
        self.latest = Some(k.clone());
        k
    }

    /// A fresh key to every current member, used after the use delay.
    fn rotate(&mut self, ctx: &mut Ctx<'_>) {
        self.rotate_at = None;
        let key = self.make_key(ctx);
        let all: Vec<DeviceKey> = self.members.keys().cloned().collect();
        self.send_keys_to(ctx, std::slice::from_ref(&key.entry), all);
        if self.config.use_delay_ms == 0 {
            self.pending_use = None;
            self.use_key(ctx, key);
        } else {
            self.pending_use = Some((ctx.now.plus(self.config.use_delay_ms), key));
        }
    }

    fn use_key(&mut self, ctx: &mut Ctx<'_>, key: LocalKey) {
        ctx.emit(Event::EncryptionKey {
            group: self.group.clone(),
            participant: self.local.clone(),
            local: true,
            index: key.entry.index,
            key: wire::encode_key(&key.entry.key),
        });
        self.in_use = Some(key);
    }

    /// Sends `keys` to those of `to` that are current members: one to-device batch per content
    /// (famedly: one; Element Call: one per key), Olm encryption required.
    fn send_keys(&mut self, ctx: &mut Ctx<'_>, keys: &[KeyEntry], to: &[DeviceKey]) {
        let targets: BTreeSet<&DeviceKey> = to.iter().filter(|k| self.members.contains_key(*k)).collect();
        let targets: Vec<DeviceKey> = targets.into_iter().cloned().collect();
        self.send_keys_to(ctx, keys, targets);
    }

    /// [`Self::send_keys`] to `targets`: current members, in order, each once (every member:
    /// `self.members`' keys, with no filtering to do).
    fn send_keys_to(&mut self, ctx: &mut Ctx<'_>, keys: &[KeyEntry], targets: Vec<DeviceKey>) {
        if targets.is_empty() || keys.is_empty() {
            return;
        }
        let sent_ts = ctx.now.max(self.last_sent_ts.plus(1));
        self.last_sent_ts = sent_ts;
        // One content for every recipient: the send table keeps it once (a call of 10 000
        // members would otherwise hold 10 000 copies of it for retries).
        let contents = self.transport.keys_contents(&self.group, &self.local, keys, sent_ts);
        let mut targets = Some(targets);
        let last = contents.len().saturating_sub(1);
        for (i, content) in contents.into_iter().enumerate() {
            // The last content takes the list, the others a copy.
            let to = if i == last { targets.take() } else { targets.clone() };
            ctx.sends.send_to_devices(
                ctx.out,
                SendPurpose::Other,
                TXN_PREFIX,
                self.transport.keys_event_type().to_owned(),
                Some(self.group.room_id.clone()),
                to.unwrap_or_default(),
                content,
                ToDeviceEncryption::Required,
            );
        }
    }

    /// The member whose key this is, if the sender device is a current member (of the same
    /// membership session, when the content names one and `bind_member_id` is on).
    fn member_for(&self, dk: &DeviceKey, content: &KeysContent) -> Option<Participant> {
        if !self.joined {
            return None;
        }
        let p = self.members.get(dk)?;
        let same_session = match &content.member_id {
            Some(id) if self.config.bind_member_id && !p.member_id.is_empty() => id == &p.member_id,
            _ => true,
        };
        same_session.then(|| p.clone())
    }

    fn apply(&mut self, ctx: &mut Ctx<'_>, p: &Participant, content: &KeysContent) -> KeyDisposition {
        let held = self.remote.entry(device_key(p)).or_default();
        let mut why = KeyIgnored::Duplicate;
        let mut applied = false;
        for e in &content.keys {
            match held.ring.get(&e.index) {
                Some((bytes, _)) if bytes == &e.key => continue,
                Some((_, Some(held_ts))) if content.sent_ts.is_some_and(|t| t < *held_ts) => {
                    why = KeyIgnored::Older;
                    continue;
                }
                _ => {}
            }
            held.ring.insert(e.index, (e.key.clone(), content.sent_ts));
            let newest = match (&held.latest, content.sent_ts) {
                (Some((_, _, Some(latest_ts))), Some(t)) => t >= *latest_ts,
                // No timestamps (famedly): the sender's index counts up around its ring, so a
                // key less than half a ring behind the latest one is an older key that arrived
                // late (a retried send; found by the simulator, sfu seed 209). It is still held
                // at its index (media frames name their key index) but is not the current key.
                (Some((latest_index, _, None)), None) => {
                    !ring_behind(*latest_index, e.index, self.config.ring_size)
                }
                _ => true,
            };
            if newest {
                held.latest = Some((e.index, e.key.clone(), content.sent_ts));
            }
            applied = true;
            ctx.emit(Event::EncryptionKey {
                group: self.group.clone(),
                participant: p.clone(),
                local: false,
                index: e.index,
                key: wire::encode_key(&e.key),
            });
        }
        if applied {
            KeyDisposition::Applied
        } else {
            tracing::debug!(?why, "key event ignored");
            KeyDisposition::Ignored(why)
        }
    }

    /// Keeps a key from a non-member until its membership arrives. Bounded per sender as well
    /// as in total: a sender over its share loses its own oldest key, and when the buffer is
    /// full the sender holding the most loses its oldest, so one Olm user flooding keys never
    /// evicts another sender's (a member-to-be's) key.
    fn buffer(&mut self, now: Timestamp, sender: UserId, content: KeysContent) {
        let per_sender = (self.config.max_pending_keys / 8).max(1);
        let mut counts: std::collections::BTreeMap<&UserId, usize> = std::collections::BTreeMap::new();
        for b in &self.buffered {
            *counts.entry(&b.sender).or_default() += 1;
        }
        let victim = if counts.get(&sender).copied().unwrap_or(0) >= per_sender {
            self.buffered.iter().position(|b| b.sender == sender)
        } else if self.buffered.len() >= self.config.max_pending_keys {
            let top = counts.values().copied().max().unwrap_or(0);
            self.buffered.iter().position(|b| counts.get(&b.sender) == Some(&top))
        } else {
            None
        };
        if let Some(i) = victim {
            self.buffered.remove(i);
        }
        tracing::debug!(device = %content.claimed_device, "key from a non-member: buffered");
        self.buffered.push_back(Buffered {
            until: now.plus(self.config.pending_key_ttl_ms),
            sender,
            content,
        });
    }

    /// Applies the buffered keys whose sender is now a member; drops the expired ones.
    fn apply_buffered(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let pending = std::mem::take(&mut self.buffered);
        for b in pending {
            if b.until <= now {
                continue;
            }
            let dk = (b.sender.clone(), b.content.claimed_device.clone());
            match self.member_for(&dk, &b.content) {
                Some(p) => {
                    self.apply(ctx, &p, &b.content);
                }
                None => self.buffered.push_back(b),
            }
        }
    }
}

/// Which group a received key event belongs to (`room_id` + `conf_id`/`call_id`/
/// `session.call_id`), to route it. Only those fields are read, so a malformed key still reaches
/// its manager (which reports the [`WireError`]). `None` for other types and for contents without
/// a `room_id` (the legacy Element Call form: it cannot be bound to a room, and is refused).
pub(crate) fn key_event_group(event_type: &str, content: &Value) -> Option<GroupCallId> {
    let room_id = RoomId::from(content.get("room_id")?.as_str().filter(|s| !s.is_empty())?);
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let call_id = match event_type {
        types::FAMEDLY_KEYS | types::FAMEDLY_KEYS_REQUEST => {
            str_of(content.get("conf_id")).or_else(|| str_of(content.get("call_id")))?
        }
        types::ELEMENT_CALL_KEYS => str_of(content.get("session").and_then(|s| s.get("call_id")))
            .or_else(|| str_of(content.get("call_id")))
            .unwrap_or_default(),
        _ => return None,
    };
    Some(GroupCallId { room_id, call_id })
}

/// Whether `event_type` is a key or key-request event of either transport.
pub(crate) fn is_key_event_type(event_type: &str) -> bool {
    wire::is_key_event_type(event_type)
}

#[cfg(test)]
mod tests;
