//! The simulator: N devices (each a `voip_core::Voip` plus a [`FakeMedia`]), an in-memory
//! homeserver (room timelines with `origin_server_ts`, to-device queues), one virtual clock.
//!
//! Every message travels with a latency; the homeserver echoes room events back to every member
//! device, the sender's own included, as a real server does. `step()` handles the earliest pending
//! thing (a delivery or a device deadline); `run_until_idle()` steps until nothing is left.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use voip_core::media::{ConnectionState, MediaEvent};
use voip_core::{
    seed_from_u64, CallId, Command, Config, DeviceId, Event, Input, LocalDevice, Membership, Output,
    RoomEvent, RoomId, RoomMember, SendKind, SendOutcome, StateEvent, Timestamp, ToDeviceEvent, UserId, Voip,
};

use crate::media::FakeMedia;

/// Index of a device in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceIdx(pub usize);

/// Seeded network faults applied to every delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Extra random delay per message, uniformly in `0..=jitter_ms` (reorders messages).
    pub jitter_ms: u64,
    /// Probability that a send fails with a retryable error (the core retries it).
    pub send_failure: f64,
    /// Probability that a delivered message is delivered twice.
    pub duplicate: f64,
}

/// One simulated device.
#[derive(Debug)]
pub struct Device {
    /// The core.
    pub voip: Voip,
    /// Its media engine.
    pub media: FakeMedia,
    /// Every app event, time-stamped.
    pub events: Vec<(Timestamp, Event)>,
    /// Every output, time-stamped, for traces.
    pub outputs: Vec<(Timestamp, Output)>,
    /// Errors returned by `handle`.
    pub errors: Vec<(Timestamp, voip_core::Error)>,
    /// Whether the device is offline (crashed): deliveries to it are lost.
    pub offline: bool,
}

/// The simulation.
#[derive(Debug)]
pub struct Sim {
    now: Timestamp,
    seq: u64,
    devices: Vec<Device>,
    rooms: BTreeMap<RoomId, BTreeSet<UserId>>,
    /// (deliver at, sequence, target device); the input waits in `inflight`.
    queue: BinaryHeap<Reverse<(Timestamp, u64, DeviceIdx)>>,
    inflight: BTreeMap<u64, Input>,
    /// One-way latency of the homeserver, ms.
    pub latency_ms: u64,
    /// Time the media engine takes to answer a command, ms.
    pub media_delay_ms: u64,
    /// Network faults.
    pub faults: Faults,
    rng: ChaCha20Rng,
    next_event_id: u64,
    /// Last delivery time per (device, room): a room timeline reaches each device in order,
    /// whatever the jitter (to-device messages, in contrast, may overtake each other).
    timeline_clock: BTreeMap<(DeviceIdx, RoomId), Timestamp>,
    /// Room state: (room, type, state key) → the current state event.
    state: BTreeMap<(RoomId, String, String), StateEvent>,
    /// MSC4140 delayed state events by `delay_id`.
    delayed: BTreeMap<String, Delayed>,
    next_delay_id: u64,
    /// Whether the homeserver supports delayed events.
    pub delayed_events: bool,
    /// Deliveries waiting for an offline device, in order.
    offline_inbox: BTreeMap<DeviceIdx, Vec<(u64, Input)>>,
}

#[derive(Debug, Clone)]
struct Delayed {
    fire_at: Timestamp,
    delay_ms: u64,
    room_id: RoomId,
    sender: UserId,
    event_type: String,
    state_key: String,
    content: serde_json::Value,
}

impl Sim {
    /// A simulation starting at a fixed time, all randomness from `seed`.
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: Timestamp(1_700_000_000_000),
            seq: 0,
            devices: Vec::new(),
            rooms: BTreeMap::new(),
            queue: BinaryHeap::new(),
            inflight: BTreeMap::new(),
            latency_ms: 20,
            media_delay_ms: 1,
            faults: Faults::default(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            next_event_id: 0,
            timeline_clock: BTreeMap::new(),
            state: BTreeMap::new(),
            delayed: BTreeMap::new(),
            next_delay_id: 0,
            delayed_events: true,
            offline_inbox: BTreeMap::new(),
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Adds a device; its core is seeded from the simulation's seed.
    pub fn add_device(&mut self, user: &str, device: &str, config: Config) -> DeviceIdx {
        let seed = seed_from_u64(self.rng.next_u64());
        self.devices.push(Device {
            voip: Voip::new(config, LocalDevice::new(user, device), seed),
            media: FakeMedia::new(),
            events: Vec::new(),
            outputs: Vec::new(),
            errors: Vec::new(),
            offline: false,
        });
        DeviceIdx(self.devices.len() - 1)
    }

    /// Replaces a device's core and media engine by fresh ones (an app restart: all state is
    /// lost, memberships it left behind stay in the room). Room memberships are re-fed.
    pub fn replace_device(&mut self, d: DeviceIdx, config: Config) {
        let local = self.devices[d.0].voip.local_device().clone();
        // The old process is gone: its media engine's reports and its send results die with it.
        let dead: Vec<u64> = self
            .queue
            .iter()
            .filter(|Reverse((_, _, to))| *to == d)
            .map(|Reverse((_, seq, _))| *seq)
            .filter(|seq| {
                matches!(self.inflight.get(seq), Some(Input::Media { .. } | Input::SendResult { .. }))
            })
            .collect();
        for seq in dead {
            self.inflight.remove(&seq);
        }
        let seed = seed_from_u64(self.rng.next_u64());
        self.devices[d.0].voip = Voip::new(config, local, seed);
        self.devices[d.0].media = FakeMedia::new();
        let rooms: Vec<(RoomId, Vec<UserId>)> =
            self.rooms.iter().map(|(r, m)| (r.clone(), m.iter().cloned().collect())).collect();
        for (room_id, members) in rooms {
            for user_id in members {
                let m = RoomMember { room_id: room_id.clone(), user_id, membership: Membership::Join };
                self.feed(d, Input::RoomMember(m));
            }
        }
        let state: Vec<StateEvent> = self.state.values().cloned().collect();
        for ev in state {
            self.feed(d, Input::StateEvent(ev));
        }
    }

    /// Joins users to a room (and tells every device about the memberships).
    pub fn join(&mut self, room: &str, users: &[&str]) -> RoomId {
        let room_id = RoomId::from(room);
        for u in users {
            self.rooms.entry(room_id.clone()).or_default().insert(UserId::from(*u));
            for i in 0..self.devices.len() {
                let m = RoomMember {
                    room_id: room_id.clone(),
                    user_id: UserId::from(*u),
                    membership: Membership::Join,
                };
                self.feed(DeviceIdx(i), Input::RoomMember(m));
            }
        }
        room_id
    }

    /// A user leaves a room; every device learns it after the latency.
    pub fn leave(&mut self, room: &RoomId, user: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&UserId::from(user));
        }
        for i in 0..self.devices.len() {
            let m = RoomMember {
                room_id: room.clone(),
                user_id: UserId::from(user),
                membership: Membership::Leave,
            };
            self.deliver(DeviceIdx(i), Input::RoomMember(m), self.latency_ms);
        }
    }

    /// A device.
    pub fn device(&self, d: DeviceIdx) -> &Device {
        &self.devices[d.0]
    }

    /// A device, mutably.
    pub fn device_mut(&mut self, d: DeviceIdx) -> &mut Device {
        &mut self.devices[d.0]
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no devices.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Places a call from `from`; returns the call id.
    pub fn place_call(
        &mut self,
        from: DeviceIdx,
        room: &RoomId,
        invitee: &str,
        invitee_device: Option<&str>,
        call_type: voip_core::CallType,
        signalling: voip_core::Signalling,
    ) -> CallId {
        let now = self.now;
        let id = self.devices[from.0]
            .voip
            .place_call(
                now,
                room.clone(),
                UserId::from(invitee),
                invitee_device.map(DeviceId::from),
                call_type,
                signalling,
            )
            .expect("place_call");
        self.drain(from);
        id
    }

    /// Joins `d` to the room call (`call_id` `""`, application `m.call`, scope `m.room`) of
    /// `room` with a membership dialect and a focus.
    pub fn join_group_call(
        &mut self,
        d: DeviceIdx,
        room: &str,
        dialect: voip_core::MembershipDialect,
        focus: voip_core::Focus,
    ) -> Result<(), voip_core::Error> {
        self.command(
            d,
            Command::JoinGroupCall {
                room_id: RoomId::from(room),
                call_id: String::new(),
                application: "m.call".into(),
                scope: "m.room".into(),
                dialect,
                focus,
                owned_state_keys: false,
                notify: None,
            },
        )
    }

    /// Feeds a command now; returns the core's result.
    pub fn command(&mut self, d: DeviceIdx, command: Command) -> Result<(), voip_core::Error> {
        let r = self.devices[d.0].voip.handle(self.now, Input::Command(command));
        self.drain(d);
        r
    }

    /// Feeds any input now.
    pub fn feed(&mut self, d: DeviceIdx, input: Input) {
        let now = self.now;
        let dev = &mut self.devices[d.0];
        if let Err(e) = dev.voip.handle(now, input) {
            dev.errors.push((now, e));
        }
        self.drain(d);
    }

    /// Simulates a media-level connection change on `d`'s call.
    pub fn force_media_state(&mut self, d: DeviceIdx, call_id: &CallId, state: ConnectionState) {
        let events = self.devices[d.0].media.force_state(call_id, state);
        for event in events {
            self.feed(d, Input::Media { call_id: call_id.clone(), event });
        }
    }

    /// Takes a device offline (no network: its timers stall, deliveries to it wait) or back
    /// online (what waited is delivered, in order, as a sync would).
    pub fn set_offline(&mut self, d: DeviceIdx, offline: bool) {
        self.devices[d.0].offline = offline;
        if !offline {
            for (seq, input) in self.offline_inbox.remove(&d).unwrap_or_default() {
                self.inflight.insert(seq, input);
                self.queue.push(Reverse((self.now, seq, d)));
            }
        }
    }

    fn deliver(&mut self, to: DeviceIdx, input: Input, delay: u64) {
        // Faults hit what crosses the network; the media engine and send results are local.
        let network = matches!(input, Input::RoomEvent(_) | Input::ToDevice(_));
        let jitter = if network && self.faults.jitter_ms > 0 {
            self.rng.next_u64() % (self.faults.jitter_ms + 1)
        } else {
            0
        };
        let copies = if network && self.chance(self.faults.duplicate) { 2 } else { 1 };
        let mut at = self.now.plus(delay + jitter);
        if let Input::RoomEvent(e) = &input {
            let last = self.timeline_clock.entry((to, e.room_id.clone())).or_default();
            at = at.max(*last);
            *last = at;
        }
        for _ in 0..copies {
            self.seq += 1;
            self.inflight.insert(self.seq, input.clone());
            self.queue.push(Reverse((at, self.seq, to)));
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// Drains a device's outputs: sends go to the homeserver, media commands to its engine.
    fn drain(&mut self, d: DeviceIdx) {
        while let Some(out) = self.devices[d.0].voip.poll() {
            let now = self.now;
            self.devices[d.0].outputs.push((now, out.clone()));
            match out {
                Output::Event(e) => self.devices[d.0].events.push((now, e)),
                Output::Media { call_id, command } => {
                    let events = self.devices[d.0].media.execute(&call_id, command);
                    for event in events {
                        let input = Input::Media { call_id: call_id.clone(), event };
                        self.deliver(d, input, self.media_delay_ms);
                    }
                }
                Output::Send(req) => {
                    let fail = self.chance(self.faults.send_failure);
                    let result = if fail {
                        SendOutcome::Failed { retryable: true, error: "simulated 502".into(), errcode: None }
                    } else {
                        self.route(d, req.kind)
                    };
                    self.deliver(d, Input::SendResult { id: req.id, result }, self.latency_ms);
                }
            }
        }
    }

    /// The homeserver: room events to every member device (echo included), to-device to one.
    fn route(&mut self, from: DeviceIdx, kind: SendKind) -> SendOutcome {
        let sender = self.devices[from.0].voip.local_device().clone();
        let sent = |event_id: Option<String>| SendOutcome::Sent { event_id, delay_id: None };
        match kind {
            SendKind::StateEvent { room_id, event_type, state_key, content } => {
                if !self.rooms.get(&room_id).is_some_and(|m| m.contains(&sender.user_id)) {
                    return forbidden();
                }
                sent(Some(self.apply_state(room_id, sender.user_id, event_type, state_key, content)))
            }
            SendKind::DelayedStateEvent { room_id, event_type, state_key, content, delay_ms } => {
                if !self.delayed_events {
                    return SendOutcome::Failed {
                        retryable: false,
                        error: "delayed events are disabled".into(),
                        errcode: Some("M_UNRECOGNIZED".into()),
                    };
                }
                self.next_delay_id += 1;
                let delay_id = format!("syd_{}", self.next_delay_id);
                let d = Delayed {
                    fire_at: self.now.plus(delay_ms),
                    delay_ms,
                    room_id,
                    sender: sender.user_id,
                    event_type,
                    state_key,
                    content,
                };
                self.delayed.insert(delay_id.clone(), d);
                SendOutcome::Sent { event_id: None, delay_id: Some(delay_id) }
            }
            SendKind::UpdateDelayedEvent { delay_id, action } => {
                let Some(d) = self.delayed.get_mut(&delay_id) else {
                    return SendOutcome::Failed {
                        retryable: false,
                        error: "unknown delayed event".into(),
                        errcode: Some("M_NOT_FOUND".into()),
                    };
                };
                match action {
                    voip_core::DelayedAction::Restart => d.fire_at = self.now.plus(d.delay_ms),
                    voip_core::DelayedAction::Cancel => {
                        self.delayed.remove(&delay_id);
                    }
                    voip_core::DelayedAction::Send => {
                        let d = self.delayed.remove(&delay_id).expect("checked");
                        self.apply_state(d.room_id, d.sender, d.event_type, d.state_key, d.content);
                    }
                }
                sent(None)
            }
            SendKind::RoomEvent { room_id, event_type, content } => {
                self.next_event_id += 1;
                let event_id = format!("$ev{}", self.next_event_id);
                let members = self.rooms.get(&room_id).cloned().unwrap_or_default();
                if !members.contains(&sender.user_id) {
                    return forbidden();
                }
                let ev = RoomEvent {
                    room_id,
                    event_id: Some(event_id.clone()),
                    sender: sender.user_id.clone(),
                    event_type,
                    content,
                    origin_server_ts: self.now,
                    age_ms: None,
                };
                for i in 0..self.devices.len() {
                    if members.contains(&self.devices[i].voip.local_device().user_id) {
                        self.deliver(DeviceIdx(i), Input::RoomEvent(ev.clone()), self.latency_ms);
                    }
                }
                sent(Some(event_id))
            }
            SendKind::ToDevice { event_type, messages, .. } => {
                for m in messages {
                    let target = (0..self.devices.len()).find(|i| {
                        let l = self.devices[*i].voip.local_device();
                        l.user_id == m.user_id && l.device_id == m.device_id
                    });
                    if let Some(i) = target {
                        let ev = ToDeviceEvent {
                            sender: sender.user_id.clone(),
                            sender_device: Some(sender.device_id.clone()),
                            event_type: event_type.clone(),
                            content: m.content,
                            encrypted: true,
                        };
                        self.deliver(DeviceIdx(i), Input::ToDevice(ev), self.latency_ms);
                    }
                }
                sent(None)
            }
        }
    }

    /// Stores a state event and delivers it to every member device.
    fn apply_state(
        &mut self,
        room_id: RoomId,
        sender: UserId,
        event_type: String,
        state_key: String,
        content: serde_json::Value,
    ) -> String {
        self.next_event_id += 1;
        let event_id = format!("$st{}", self.next_event_id);
        let ev = StateEvent {
            room_id: room_id.clone(),
            event_id: Some(event_id.clone()),
            sender,
            event_type: event_type.clone(),
            state_key: state_key.clone(),
            content,
            origin_server_ts: self.now,
        };
        self.state.insert((room_id.clone(), event_type, state_key), ev.clone());
        let members = self.rooms.get(&room_id).cloned().unwrap_or_default();
        for i in 0..self.devices.len() {
            if members.contains(&self.devices[i].voip.local_device().user_id) {
                let input = Input::StateEvent(ev.clone());
                // State reaches each device in timeline order, like room events.
                let mut at = self.now.plus(self.latency_ms);
                let last = self.timeline_clock.entry((DeviceIdx(i), room_id.clone())).or_default();
                at = at.max(*last);
                *last = at;
                self.seq += 1;
                self.inflight.insert(self.seq, input);
                self.queue.push(Reverse((at, self.seq, DeviceIdx(i))));
            }
        }
        event_id
    }

    /// The current room state of one type (for assertions).
    pub fn room_state(&self, room: &RoomId, event_type: &str) -> Vec<StateEvent> {
        self.state
            .iter()
            .filter(|((r, t, _), _)| r == room && t == event_type)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Scheduled delayed events (for assertions): (delay id, fire time, state key).
    pub fn scheduled_delayed(&self) -> Vec<(String, Timestamp, String)> {
        self.delayed.iter().map(|(id, d)| (id.clone(), d.fire_at, d.state_key.clone())).collect()
    }

    /// Fires delayed events whose time has come.
    fn fire_delayed(&mut self) {
        let due: Vec<String> =
            self.delayed.iter().filter(|(_, d)| d.fire_at <= self.now).map(|(id, _)| id.clone()).collect();
        for id in due {
            if let Some(d) = self.delayed.remove(&id) {
                self.apply_state(d.room_id, d.sender, d.event_type, d.state_key, d.content);
            }
        }
    }

    /// The earliest pending thing: a delivery or a device deadline.
    fn next_time(&self) -> Option<Timestamp> {
        let q = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let d = self
            .devices
            .iter()
            .filter(|d| !d.offline)
            .filter_map(|d| d.voip.next_deadline().map(|x| x.at))
            .min();
        let delayed = self.delayed.values().map(|d| d.fire_at).min();
        [q, d, delayed].into_iter().flatten().min()
    }

    /// Handles everything due at the earliest pending time. Returns false when idle.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_time() else { return false };
        self.now = self.now.max(at);
        self.fire_delayed();
        let mut held = Vec::new();
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > self.now {
                break;
            }
            let Reverse((_, seq, to)) = self.queue.pop().expect("peeked");
            // Deliveries cancelled by a device restart have no input left.
            let Some(input) = self.inflight.remove(&seq) else { continue };
            if self.devices[to.0].offline {
                // Like /sync after a network outage: it arrives once the device is back.
                held.push((seq, to, input));
            } else {
                self.feed(to, input);
            }
        }
        for (seq, to, input) in held {
            self.offline_inbox.entry(to).or_default().push((seq, input));
        }
        for i in 0..self.devices.len() {
            if self.devices[i].offline {
                continue;
            }
            if self.devices[i].voip.next_deadline().is_some_and(|d| d.at <= self.now) {
                self.feed(DeviceIdx(i), Input::Tick);
            }
        }
        true
    }

    /// Steps until idle or `max_steps`; returns the number of steps taken.
    pub fn run_until_idle(&mut self, max_steps: usize) -> usize {
        let mut n = 0;
        while n < max_steps && self.step() {
            n += 1;
        }
        n
    }

    /// Steps through everything due within `window_ms` from now (deliveries, batching, short
    /// timers, periodic heartbeats), leaving later timers (ringing, invite lifetime) pending.
    /// Returns the steps taken.
    pub fn settle_within(&mut self, window_ms: u64, max_steps: usize) -> usize {
        let mut n = 0;
        let horizon = self.now.plus(window_ms);
        while n < max_steps && self.next_time().is_some_and(|t| t <= horizon) {
            self.step();
            n += 1;
        }
        n
    }

    /// [`Sim::settle_within`] a 5 s window: every message exchange in flight completes.
    pub fn settle(&mut self) -> usize {
        self.settle_within(5_000, 100_000)
    }

    /// Steps until the clock reaches `now + ms` (handling everything due before), then sets it.
    pub fn advance(&mut self, ms: u64) {
        let until = self.now.plus(ms);
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = until;
    }

    /// Steps until `pred` holds or `max_steps` pass; returns whether it holds.
    pub fn run_until(&mut self, max_steps: usize, mut pred: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if pred(self) {
                return true;
            }
            if !self.step() {
                break;
            }
        }
        pred(self)
    }

    /// App events of a device (without timestamps).
    pub fn events(&self, d: DeviceIdx) -> Vec<Event> {
        self.devices[d.0].events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The `CallEnded` events of a device: (call, reason, initiator).
    pub fn ended(&self, d: DeviceIdx) -> Vec<(CallId, voip_core::EndReason, voip_core::Initiator)> {
        self.devices[d.0]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::CallEnded { call_id, reason, initiator } => {
                    Some((call_id.clone(), reason.clone(), *initiator))
                }
                _ => None,
            })
            .collect()
    }

    /// The call ids of `IncomingCall` events of a device.
    pub fn incoming(&self, d: DeviceIdx) -> Vec<CallId> {
        self.devices[d.0]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::IncomingCall { call_id, .. } => Some(call_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether `d`'s call is in state `Connected`.
    pub fn is_connected(&self, d: DeviceIdx, call_id: &CallId) -> bool {
        self.devices[d.0].voip.call(call_id).is_some_and(|c| c.state == voip_core::CallState::Connected)
    }

    /// Feeds a media event directly (e.g. `NegotiationNeeded`).
    pub fn media_event(&mut self, d: DeviceIdx, call_id: &CallId, event: MediaEvent) {
        self.feed(d, Input::Media { call_id: call_id.clone(), event });
    }
}

fn forbidden() -> SendOutcome {
    SendOutcome::Failed {
        retryable: false,
        error: "not a member of the room".into(),
        errcode: Some("M_FORBIDDEN".into()),
    }
}
