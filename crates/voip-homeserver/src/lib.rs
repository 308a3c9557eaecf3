//! A sans-IO, in-memory model of a Matrix homeserver, as far as calls need one: rooms and their
//! members, room state, room timelines, to-device messages, MSC4140 delayed state events and
//! transaction de-duplication.
//!
//! It is the one home of these rules for everything in this workspace that runs cores without a
//! real Synapse: `voip::local` (the in-process homeserver of the demo, the examples and the
//! runtime tests) and `voip-sim` (the seeded simulator) both execute a core's
//! [`SendKind`]s here. Like the core, it does no I/O and reads no clock: every call takes the
//! current time, and every answer says what to deliver to whom ([`Delivery`]); the embedding
//! decides how (a channel per device, or a simulated network with latency and faults).
//!
//! ```
//! use voip_core::{LocalDevice, SendKind, SendOutcome, Timestamp};
//! use voip_homeserver::Homeserver;
//!
//! let mut hs = Homeserver::default();
//! let alice = LocalDevice::new("@alice:local", "A");
//! let bob = LocalDevice::new("@bob:local", "B");
//! hs.connect(&alice);
//! hs.connect(&bob);
//! let now = Timestamp(1_700_000_000_000);
//! let (room, _) = hs.create_room(now, &[alice.user_id.clone(), bob.user_id.clone()], false);
//! let kind = SendKind::RoomEvent {
//!     room_id: room,
//!     event_type: "m.call.invite".into(),
//!     content: serde_json::json!({"call_id": "c1"}),
//! };
//! let response = hs.send(now, &alice, "txn1", kind);
//! assert!(matches!(response.outcome, SendOutcome::Sent { event_id: Some(_), .. }));
//! // The room's timeline reaches every member device, the sender's included.
//! assert_eq!(response.deliveries.len(), 2);
//! ```

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::Value;
use voip_core::{
    DelayedAction, DeviceId, Input, LocalDevice, RoomEvent, RoomId, RoomMember, RoomMembership,
    ScheduledDelayedEvent, SendKind, SendOutcome, StateEvent, Timestamp, ToDeviceEvent, UserId,
};

/// What the server supports and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HomeserverConfig {
    /// MSC4140 delayed events (scheduling, listing, updating); without them those endpoints
    /// answer `M_UNRECOGNIZED`, as a homeserver without the feature does.
    pub delayed_events: bool,
    /// Transactions remembered for de-duplication (per server; the oldest are forgotten first).
    pub max_transactions: usize,
}

impl Default for HomeserverConfig {
    fn default() -> Self {
        HomeserverConfig { delayed_events: true, max_transactions: 100_000 }
    }
}

impl HomeserverConfig {
    /// With or without MSC4140 delayed events.
    pub fn with_delayed_events(mut self, on: bool) -> Self {
        self.delayed_events = on;
        self
    }
}

/// One input for one device, to be delivered by the embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The receiving user.
    pub user_id: UserId,
    /// The receiving device.
    pub device_id: DeviceId,
    /// What it receives (a room event, a state event, a membership or a to-device message).
    pub input: Input,
}

/// The server's answer to one send.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Response {
    /// The outcome for the sender (its [`Input::SendResult`]).
    pub outcome: SendOutcome,
    /// What the send delivers, in order.
    pub deliveries: Vec<Delivery>,
    /// The send repeated a transaction already taken: `outcome` is the first one and nothing
    /// was delivered again.
    pub deduplicated: bool,
    /// A delayed event was scheduled or restarted: it fires `delay_ms` from now unless
    /// restarted, cancelled or sent before (see [`Homeserver::fire`]).
    pub timer: Option<DelayedTimer>,
}

/// A delayed event's timer, for embeddings with real time (see [`Homeserver::fire`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayedTimer {
    /// The delayed event.
    pub delay_id: String,
    /// Its schedule (bumped by every restart).
    pub generation: u64,
    /// Its delay.
    pub delay_ms: u64,
}

#[derive(Clone, Debug)]
struct Room {
    members: BTreeSet<UserId>,
    encrypted: bool,
}

#[derive(Clone, Debug)]
struct Delayed {
    fire_at: Timestamp,
    delay_ms: u64,
    generation: u64,
    room_id: RoomId,
    sender: UserId,
    event_type: String,
    state_key: String,
    content: Value,
}

/// The homeserver. See the crate docs.
#[derive(Clone, Debug, Default)]
pub struct Homeserver {
    config: HomeserverConfig,
    /// Devices in the order they first connected (deliveries follow it, so an embedding that
    /// draws randomness per delivery stays deterministic).
    devices: Vec<(UserId, DeviceId)>,
    rooms: BTreeMap<RoomId, Room>,
    /// (room, type, state key) → the current state event.
    state: BTreeMap<(RoomId, String, String), StateEvent>,
    delayed: BTreeMap<String, Delayed>,
    /// First outcome of each room / to-device transaction by (user, device, txn id).
    txns: HashMap<(UserId, DeviceId, String), SendOutcome>,
    txn_order: VecDeque<(UserId, DeviceId, String)>,
    next_event: u64,
    next_delay: u64,
    next_room: u64,
}

fn failed(errcode: &str, error: &str) -> SendOutcome {
    SendOutcome::Failed { retryable: false, error: error.to_owned(), errcode: Some(errcode.to_owned()) }
}

fn sent(event_id: Option<String>) -> SendOutcome {
    SendOutcome::Sent { event_id, delay_id: None }
}

fn member(room_id: &RoomId, user_id: &UserId, membership: RoomMembership) -> Input {
    Input::RoomMember(RoomMember { room_id: room_id.clone(), user_id: user_id.clone(), membership })
}

impl Homeserver {
    /// An empty server.
    pub fn new(config: HomeserverConfig) -> Self {
        Homeserver { config, ..Default::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &HomeserverConfig {
        &self.config
    }

    /// Whether delayed events are supported (the `ServerSupport` a client learns).
    pub fn set_delayed_events(&mut self, on: bool) {
        self.config.delayed_events = on;
    }

    /// Registers a device (again: nothing changes) and returns its initial sync: what the server
    /// supports, then the memberships and the state of every room its user is in.
    pub fn connect(&mut self, device: &LocalDevice) -> Vec<Input> {
        let key = (device.user_id.clone(), device.device_id.clone());
        if !self.devices.contains(&key) {
            self.devices.push(key);
        }
        let mut sync = vec![Input::ServerSupport { delayed_events: self.config.delayed_events }];
        sync.extend(self.rooms_of(&device.user_id));
        sync
    }

    /// The memberships and state of every room `user` is in (a restarted client's first sync,
    /// without the server's capabilities).
    pub fn rooms_of(&self, user: &UserId) -> Vec<Input> {
        let mut out = Vec::new();
        for (room_id, room) in self.rooms.iter().filter(|(_, r)| r.members.contains(user)) {
            out.extend(room.members.iter().map(|m| member(room_id, m, RoomMembership::Join)));
            out.extend(
                self.state
                    .range((room_id.clone(), String::new(), String::new())..)
                    .take_while(|((r, _, _), _)| r == room_id)
                    .map(|(_, ev)| Input::StateEvent(ev.clone())),
            );
        }
        out
    }

    /// Forgets a device: nothing is delivered to it any more.
    pub fn disconnect(&mut self, user_id: &UserId, device_id: &DeviceId) {
        self.devices.retain(|(u, d)| !(u == user_id && d == device_id));
    }

    /// Creates a room that all `users` have joined; an `encrypted` room gets its
    /// `m.room.encryption` state (from the first user) and delivers its timeline as decrypted
    /// Megolm events. Returns the room and what its creation delivers.
    pub fn create_room(
        &mut self,
        now: Timestamp,
        users: &[UserId],
        encrypted: bool,
    ) -> (RoomId, Vec<Delivery>) {
        self.next_room += 1;
        let room_id = RoomId::from(format!("!room{}:local", self.next_room));
        let mut deliveries = self.join(&room_id, users);
        if encrypted {
            if let Some(creator) = users.first() {
                self.rooms.get_mut(&room_id).expect("just joined").encrypted = true;
                let content = serde_json::json!({ "algorithm": "m.megolm.v1.aes-sha2" });
                let (_, d) = self.apply_state(
                    now,
                    &room_id,
                    creator.clone(),
                    "m.room.encryption".into(),
                    String::new(),
                    content,
                );
                deliveries.extend(d);
            }
        }
        (room_id, deliveries)
    }

    /// Joins `users` to `room_id` (created unencrypted if new). Every member device learns each
    /// new membership; a joining user's devices also get the room's members and state.
    pub fn join(&mut self, room_id: &RoomId, users: &[UserId]) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for user in users {
            let room = self
                .rooms
                .entry(room_id.clone())
                .or_insert_with(|| Room { members: BTreeSet::new(), encrypted: false });
            if !room.members.insert(user.clone()) {
                continue;
            }
            let earlier: Vec<Input> = room
                .members
                .iter()
                .filter(|m| *m != user)
                .map(|m| member(room_id, m, RoomMembership::Join))
                .chain(
                    self.state
                        .range((room_id.clone(), String::new(), String::new())..)
                        .take_while(|((r, _, _), _)| r == room_id)
                        .map(|(_, ev)| Input::StateEvent(ev.clone())),
                )
                .collect();
            for input in earlier {
                deliveries.extend(self.to_user(user, &input));
            }
            deliveries.extend(self.to_room(room_id, &member(room_id, user, RoomMembership::Join)));
        }
        deliveries
    }

    /// `user` leaves `room_id`; the remaining members' devices and the leaver's learn it.
    pub fn leave(&mut self, room_id: &RoomId, user: &UserId) -> Vec<Delivery> {
        let input = member(room_id, user, RoomMembership::Leave);
        let mut deliveries = self.to_room(room_id, &input);
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.members.remove(user);
        }
        // The leaver's devices were among the members: deliver once to each device.
        deliveries.retain(|d| &d.user_id != user);
        deliveries.extend(self.to_user(user, &input));
        deliveries
    }

    /// Whether `user` is joined to `room_id`.
    pub fn is_member(&self, room_id: &RoomId, user: &UserId) -> bool {
        self.rooms.get(room_id).is_some_and(|r| r.members.contains(user))
    }

    /// The joined users of a room.
    pub fn members(&self, room_id: &RoomId) -> Vec<UserId> {
        self.rooms.get(room_id).map(|r| r.members.iter().cloned().collect()).unwrap_or_default()
    }

    /// The current state events of one type in a room.
    pub fn room_state(&self, room_id: &RoomId, event_type: &str) -> Vec<StateEvent> {
        self.state
            .iter()
            .filter(|((r, t, _), _)| r == room_id && t == event_type)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every current state event.
    pub fn all_state(&self) -> Vec<StateEvent> {
        self.state.values().cloned().collect()
    }

    /// Scheduled delayed events: (delay id, when it fires, state key).
    pub fn scheduled_delayed(&self) -> Vec<(String, Timestamp, String)> {
        self.delayed.iter().map(|(id, d)| (id.clone(), d.fire_at, d.state_key.clone())).collect()
    }

    /// When the next delayed event fires (for embeddings that step a clock).
    pub fn next_delayed_at(&self) -> Option<Timestamp> {
        self.delayed.values().map(|d| d.fire_at).min()
    }

    /// Fires every delayed event due at `now`.
    pub fn fire_due(&mut self, now: Timestamp) -> Vec<Delivery> {
        let due: Vec<String> =
            self.delayed.iter().filter(|(_, d)| d.fire_at <= now).map(|(id, _)| id.clone()).collect();
        due.into_iter().flat_map(|id| self.fire_now(now, &id)).collect()
    }

    /// Fires one delayed event if `timer` is still its schedule (not restarted, cancelled or
    /// sent since): for embeddings with a real timer per [`DelayedTimer`].
    pub fn fire(&mut self, now: Timestamp, timer: &DelayedTimer) -> Vec<Delivery> {
        if self.delayed.get(&timer.delay_id).is_some_and(|d| d.generation == timer.generation) {
            self.fire_now(now, &timer.delay_id)
        } else {
            Vec::new()
        }
    }

    fn fire_now(&mut self, now: Timestamp, delay_id: &str) -> Vec<Delivery> {
        let Some(d) = self.delayed.remove(delay_id) else { return Vec::new() };
        self.apply_state(now, &d.room_id, d.sender, d.event_type, d.state_key, d.content).1
    }

    /// Executes one send of `from` with transaction id `txn_id`. Room events and to-device
    /// messages are idempotent per transaction: a repeat gets the first outcome and delivers
    /// nothing (state events are idempotent by themselves).
    pub fn send(&mut self, now: Timestamp, from: &LocalDevice, txn_id: &str, kind: SendKind) -> Response {
        let txn = matches!(kind, SendKind::RoomEvent { .. } | SendKind::ToDevice { .. });
        let key = (from.user_id.clone(), from.device_id.clone(), txn_id.to_owned());
        if txn {
            if let Some(first) = self.txns.get(&key) {
                return Response {
                    outcome: first.clone(),
                    deliveries: Vec::new(),
                    deduplicated: true,
                    timer: None,
                };
            }
        }
        let response = self.route(now, from, kind);
        if txn && matches!(response.outcome, SendOutcome::Sent { .. }) {
            self.txns.insert(key.clone(), response.outcome.clone());
            self.txn_order.push_back(key);
            while self.txn_order.len() > self.config.max_transactions {
                if let Some(old) = self.txn_order.pop_front() {
                    self.txns.remove(&old);
                }
            }
        }
        response
    }

    fn route(&mut self, now: Timestamp, from: &LocalDevice, kind: SendKind) -> Response {
        let answer = |outcome| Response { outcome, deliveries: Vec::new(), deduplicated: false, timer: None };
        let forbidden = || answer(failed("M_FORBIDDEN", "not a member of the room"));
        let unsupported = || answer(failed("M_UNRECOGNIZED", "delayed events are not supported"));
        let delayed_kind = matches!(
            kind,
            SendKind::DelayedStateEvent { .. }
                | SendKind::ListDelayedEvents
                | SendKind::UpdateDelayedEvent { .. }
        );
        if delayed_kind && !self.config.delayed_events {
            return unsupported();
        }
        match kind {
            SendKind::RoomEvent { room_id, event_type, content } => {
                let Some(room) = self.rooms.get(&room_id).filter(|r| r.members.contains(&from.user_id))
                else {
                    return forbidden();
                };
                self.next_event += 1;
                let event_id = format!("$ev{}", self.next_event);
                let ev = RoomEvent {
                    room_id: room_id.clone(),
                    event_id: Some(event_id.clone()),
                    sender: from.user_id.clone(),
                    event_type,
                    content,
                    origin_server_ts: now,
                    age_ms: None,
                    // In an encrypted room, as matrix-sdk hands over a decrypted Megolm event.
                    encrypted: room.encrypted,
                    sender_device: None,
                };
                let deliveries = self.to_room(&room_id, &Input::RoomEvent(ev));
                Response { deliveries, ..answer(sent(Some(event_id))) }
            }
            SendKind::StateEvent { room_id, event_type, state_key, content } => {
                if !self.is_member(&room_id, &from.user_id) {
                    return forbidden();
                }
                let (id, deliveries) =
                    self.apply_state(now, &room_id, from.user_id.clone(), event_type, state_key, content);
                Response { deliveries, ..answer(sent(Some(id))) }
            }
            SendKind::DelayedStateEvent { room_id, event_type, state_key, content, delay_ms } => {
                if !self.is_member(&room_id, &from.user_id) {
                    return forbidden();
                }
                self.next_delay += 1;
                let delay_id = format!("syd_{}", self.next_delay);
                let d = Delayed {
                    fire_at: now.plus(delay_ms),
                    delay_ms,
                    generation: 0,
                    room_id,
                    sender: from.user_id.clone(),
                    event_type,
                    state_key,
                    content,
                };
                self.delayed.insert(delay_id.clone(), d);
                Response {
                    timer: Some(DelayedTimer { delay_id: delay_id.clone(), generation: 0, delay_ms }),
                    ..answer(SendOutcome::Sent { event_id: None, delay_id: Some(delay_id) })
                }
            }
            SendKind::ListDelayedEvents => {
                // MSC4140's listing: the user's pending delayed events (any of its devices).
                let delayed_events = self
                    .delayed
                    .iter()
                    .filter(|(_, d)| d.sender == from.user_id)
                    .map(|(id, d)| ScheduledDelayedEvent {
                        delay_id: id.clone(),
                        room_id: d.room_id.clone(),
                        event_type: d.event_type.clone(),
                        state_key: Some(d.state_key.clone()),
                        delay_ms: Some(d.delay_ms),
                        content: d.content.clone(),
                    })
                    .collect();
                answer(SendOutcome::DelayedEvents { delayed_events })
            }
            SendKind::UpdateDelayedEvent { delay_id, action } => {
                // Only its owner may touch a delayed event (someone else's id is unknown to them).
                let Some(d) = self.delayed.get_mut(&delay_id).filter(|d| d.sender == from.user_id) else {
                    return answer(failed("M_NOT_FOUND", "unknown delayed event"));
                };
                match action {
                    DelayedAction::Restart => {
                        d.fire_at = now.plus(d.delay_ms);
                        d.generation += 1;
                        let timer = DelayedTimer { delay_id, generation: d.generation, delay_ms: d.delay_ms };
                        Response { timer: Some(timer), ..answer(sent(None)) }
                    }
                    DelayedAction::Cancel => {
                        self.delayed.remove(&delay_id);
                        answer(sent(None))
                    }
                    DelayedAction::Send => {
                        let deliveries = self.fire_now(now, &delay_id);
                        Response { deliveries, ..answer(sent(None)) }
                    }
                }
            }
            SendKind::ToDevice { event_type, messages, .. } => {
                let mut deliveries = Vec::new();
                for m in messages {
                    let input = Input::ToDevice(ToDeviceEvent {
                        sender: from.user_id.clone(),
                        sender_device: Some(from.device_id.clone()),
                        event_type: event_type.clone(),
                        content: std::sync::Arc::unwrap_or_clone(m.content),
                        // As matrix-sdk hands over an Olm-decrypted message.
                        encrypted: true,
                    });
                    if m.device_id.as_str() == "*" {
                        deliveries.extend(self.to_user(&m.user_id, &input));
                    } else if self.devices.iter().any(|(u, d)| *u == m.user_id && *d == m.device_id) {
                        deliveries.push(Delivery { user_id: m.user_id, device_id: m.device_id, input });
                    }
                }
                Response { deliveries, ..answer(sent(None)) }
            }
            _ => answer(failed("M_UNRECOGNIZED", "the in-memory homeserver has no such endpoint")),
        }
    }

    /// Stores a state event; returns its id and its deliveries to every member device.
    fn apply_state(
        &mut self,
        now: Timestamp,
        room_id: &RoomId,
        sender: UserId,
        event_type: String,
        state_key: String,
        content: Value,
    ) -> (String, Vec<Delivery>) {
        self.next_event += 1;
        let event_id = format!("$st{}", self.next_event);
        let ev = StateEvent {
            room_id: room_id.clone(),
            event_id: Some(event_id.clone()),
            sender,
            event_type: event_type.clone(),
            state_key: state_key.clone(),
            content,
            origin_server_ts: now,
        };
        self.state.insert((room_id.clone(), event_type, state_key), ev.clone());
        (event_id, self.to_room(room_id, &Input::StateEvent(ev)))
    }

    fn to_room(&self, room_id: &RoomId, input: &Input) -> Vec<Delivery> {
        let Some(room) = self.rooms.get(room_id) else { return Vec::new() };
        self.devices
            .iter()
            .filter(|(u, _)| room.members.contains(u))
            .map(|(u, d)| Delivery { user_id: u.clone(), device_id: d.clone(), input: input.clone() })
            .collect()
    }

    fn to_user(&self, user: &UserId, input: &Input) -> Vec<Delivery> {
        self.devices
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(u, d)| Delivery { user_id: u.clone(), device_id: d.clone(), input: input.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests;
