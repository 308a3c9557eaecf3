//! The simulator: N devices (each a `voip_core::VoipMachine` plus a [`FakeMedia`]), the in-memory
//! homeserver of `voip-homeserver` (the one `voip::local` runs too: room timelines with
//! `origin_server_ts`, state, to-device, MSC4140 delayed events, transaction de-duplication), a
//! network between them, one virtual clock.
//!
//! Every message travels with a latency; the homeserver echoes room events back to every member
//! device, the sender's own included, as a real server does. `step()` handles the earliest pending
//! thing (a delivery or a device deadline); `run_until_idle()` steps until nothing is left.
//!
//! Faults, all drawn from the simulation's seed: per-message jitter (to-device messages overtake
//! each other; room timelines stay ordered), duplicated deliveries, failing sends, lost requests
//! or responses ([`Faults::drop`]: the adapter reports a retryable timeout, the core retries with
//! the same transaction id and the homeserver de-duplicates), per-device clock skew, sync gaps
//! ([`Sim::stall_sync`]: deliveries wait, then arrive as one [`Input::SyncBatch`]), partitions
//! ([`Sim::partition`]: sends fail and deliveries wait, timers keep running), network outages
//! ([`Sim::set_offline`]) and crashes ([`Sim::crash`] / [`Sim::restart`]: state lost, the
//! memberships and delayed leaves it left behind stay on the homeserver).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use voip_core::media::{ConnectionState, MediaEvent};
use voip_core::{
    seed_from_u64, CallId, Command, Config, DeviceId, Event, Input, LocalDevice, Output, RoomEvent, RoomId,
    SendKind, SendOutcome, StateEvent, Timestamp, ToDeviceEvent, UserId, VoipMachine,
};
use voip_homeserver::{Delivery, Homeserver};

use crate::media::FakeMedia;

/// Index of a device in the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceIdx(pub usize);

/// Seeded network faults applied to every delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Extra random delay per message, uniformly in `0..=jitter_ms` (reorders messages).
    pub jitter_ms: u64,
    /// Probability that a send fails with a retryable error (the core retries it).
    pub send_failure: f64,
    /// Probability that a delivered message is delivered twice.
    pub duplicate: f64,
    /// Probability that a send times out: either the request or the response is lost (a coin
    /// flip). The adapter reports a retryable failure either way; the core retries with the same
    /// transaction id and the homeserver de-duplicates room and to-device sends by it.
    pub drop: f64,
    /// Each device's clock differs from the homeserver's by a random offset in
    /// `-clock_skew_ms..=clock_skew_ms`, drawn when the device is added.
    pub clock_skew_ms: u64,
}

/// One simulated device.
#[derive(Debug)]
pub struct Device {
    /// The core.
    pub voip: VoipMachine,
    /// Its media engine.
    pub media: FakeMedia,
    /// Every app event, time-stamped.
    pub events: Vec<(Timestamp, Event)>,
    /// Every output, time-stamped, for traces.
    pub outputs: Vec<(Timestamp, Output)>,
    /// Errors returned by `handle`.
    pub errors: Vec<(Timestamp, voip_core::Error)>,
    /// Whether the device is offline (no network or crashed): its timers stall, deliveries to it
    /// wait on the homeserver.
    pub offline: bool,
    /// Whether the device's process is down ([`Sim::crash`]) until [`Sim::restart`].
    pub crashed: bool,
    /// Offset of the device's clock from the homeserver's, ms.
    pub skew_ms: i64,
    /// Partitioned from the homeserver until then: sends fail, deliveries wait, timers run.
    pub partitioned_until: Option<Timestamp>,
    /// Its sync is stalled until then: deliveries wait, then arrive as one batch.
    pub sync_stalled_until: Option<Timestamp>,
    /// How many times its core was replaced (app restarts).
    pub generation: u32,
}

impl Device {
    /// Whether deliveries currently reach the device.
    pub fn reachable(&self) -> bool {
        !self.offline && self.partitioned_until.is_none() && self.sync_stalled_until.is_none()
    }
}

/// The simulation.
#[derive(Debug)]
pub struct Sim {
    now: Timestamp,
    seq: u64,
    devices: Vec<Device>,
    /// The homeserver (rooms, state, timelines, to-device, delayed events, transactions).
    hs: Homeserver,
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
    /// Last delivery time per (device, room): a room timeline reaches each device in order,
    /// whatever the jitter (to-device messages, in contrast, may overtake each other).
    timeline_clock: BTreeMap<(DeviceIdx, RoomId), Timestamp>,
    /// Last to-device delivery time per (device, sender, sender device).
    to_device_clock: BTreeMap<(DeviceIdx, UserId, Option<voip_core::DeviceId>), Timestamp>,
    /// Whether the homeserver supports delayed events.
    pub delayed_events: bool,
    /// Deliveries waiting for an offline device, in order.
    offline_inbox: BTreeMap<DeviceIdx, Vec<(u64, Input)>>,
    /// Counts of injected faults, for reports.
    pub injected: Injected,
    /// ICE state changes due on connections whose other end crashed: (when, device, call, state).
    ice_changes: Vec<(Timestamp, DeviceIdx, CallId, ConnectionState)>,
    /// Calls an end of which crashed, and that end: a peer connection to it never connects.
    dead_ends: BTreeMap<CallId, Vec<(UserId, voip_core::DeviceId)>>,
}

/// After the other end of a connected peer connection dies, ICE reports `Disconnected` once no
/// consent check has been answered for this long (webrtc-rs' ICE agent default 5 s)…
pub const ICE_DISCONNECTED_AFTER_MS: u64 = 5_000;
/// …and `Failed` this much later (webrtc-rs' default failed timeout, 25 s).
pub const ICE_FAILED_AFTER_MS: u64 = 25_000;

/// How many faults a simulation injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Sends that failed before reaching the homeserver.
    pub failed_sends: u64,
    /// Requests lost on the way to the homeserver.
    pub lost_requests: u64,
    /// Responses lost on the way back (the send took effect).
    pub lost_responses: u64,
    /// Retried transactions the homeserver de-duplicated.
    pub deduplicated: u64,
    /// Duplicated deliveries.
    pub duplicated: u64,
    /// Sends refused during a partition.
    pub partitioned_sends: u64,
    /// Deliveries released late as one sync batch.
    pub batched: u64,
    /// Connected peer connections whose other end crashed or closed its end (ICE then goes
    /// `Disconnected` and `Failed` on this end, unless the call ends first).
    pub dead_peer_connections: u64,
}

impl Sim {
    /// A simulation starting at a fixed time, all randomness from `seed`.
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: Timestamp(1_700_000_000_000),
            seq: 0,
            devices: Vec::new(),
            hs: Homeserver::default(),
            queue: BinaryHeap::new(),
            inflight: BTreeMap::new(),
            latency_ms: 20,
            media_delay_ms: 1,
            faults: Faults::default(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            timeline_clock: BTreeMap::new(),
            to_device_clock: BTreeMap::new(),
            delayed_events: true,
            offline_inbox: BTreeMap::new(),
            injected: Injected::default(),
            ice_changes: Vec::new(),
            dead_ends: BTreeMap::new(),
        }
    }

    /// The device's own clock (the homeserver's plus its skew).
    pub fn local_now(&self, d: DeviceIdx) -> Timestamp {
        shift(self.now, self.devices[d.0].skew_ms)
    }

    /// The virtual clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Adds a device; its core is seeded from the simulation's seed.
    pub fn add_device(&mut self, user: &str, device: &str, config: Config) -> DeviceIdx {
        let seed = seed_from_u64(self.rng.next_u64());
        let skew = self.faults.clock_skew_ms;
        let skew_ms = if skew == 0 { 0 } else { (self.rng.next_u64() % (2 * skew + 1)) as i64 - skew as i64 };
        let local = LocalDevice::new(user, device);
        // Registered at the homeserver; its first sync comes with the rooms it joins.
        self.hs.connect(&local);
        self.devices.push(Device {
            voip: VoipMachine::new(config, local, seed),
            media: FakeMedia::new(),
            events: Vec::new(),
            outputs: Vec::new(),
            errors: Vec::new(),
            offline: false,
            crashed: false,
            skew_ms,
            partitioned_until: None,
            sync_stalled_until: None,
            generation: 0,
        });
        DeviceIdx(self.devices.len() - 1)
    }

    /// Replaces a device's core and media engine by fresh ones (an app restart: all state is
    /// lost, memberships it left behind stay in the room). Room memberships are re-fed.
    pub fn replace_device(&mut self, d: DeviceIdx, config: Config) {
        let local = self.devices[d.0].voip.local_device().clone();
        // The old process is gone: its media engine's reports and its send results die with it.
        self.kill_local_inflight(d);
        let seed = seed_from_u64(self.rng.next_u64());
        self.devices[d.0].voip = VoipMachine::new(config, local.clone(), seed);
        self.devices[d.0].generation += 1;
        self.devices[d.0].media = FakeMedia::new();
        // Its first sync: the memberships and state of its user's rooms.
        for input in self.hs.rooms_of(&local.user_id) {
            self.feed(d, input);
        }
    }

    /// Joins users to a room (created if new, unencrypted). The members' devices learn each
    /// join at once; a joining user's devices also get the room's members and state.
    pub fn join(&mut self, room: &str, users: &[&str]) -> RoomId {
        let room_id = RoomId::from(room);
        let users: Vec<UserId> = users.iter().map(|u| UserId::from(*u)).collect();
        for Delivery { user_id, device_id, input } in self.hs.join(&room_id, &users) {
            if let Some(d) = self.device_of(&user_id, &device_id) {
                self.feed(d, input);
            }
        }
        room_id
    }

    /// A user leaves a room; the members' devices and the leaver's learn it after the latency.
    pub fn leave(&mut self, room: &RoomId, user: &str) {
        for Delivery { user_id, device_id, input } in self.hs.leave(room, &UserId::from(user)) {
            if let Some(d) = self.device_of(&user_id, &device_id) {
                self.deliver(d, input, self.latency_ms);
            }
        }
    }

    /// The device with this identity.
    fn device_of(&self, user_id: &UserId, device_id: &DeviceId) -> Option<DeviceIdx> {
        self.devices
            .iter()
            .position(|d| {
                let l = d.voip.local_device();
                l.user_id == *user_id && l.device_id == *device_id
            })
            .map(DeviceIdx)
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
        let now = self.local_now(from);
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
        // What the adapter learns from `/versions` at start-up.
        self.feed(d, Input::ServerSupport { delayed_events: self.delayed_events });
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
                encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
            },
        )
    }

    /// Feeds a command now; returns the core's result.
    pub fn command(&mut self, d: DeviceIdx, command: Command) -> Result<(), voip_core::Error> {
        let now = self.local_now(d);
        let r = self.devices[d.0].voip.handle(now, Input::Command(command));
        self.drain(d);
        r
    }

    /// Feeds any input now.
    pub fn feed(&mut self, d: DeviceIdx, input: Input) {
        let now = self.local_now(d);
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
        if self.devices[d.0].reachable() {
            for (seq, input) in self.offline_inbox.remove(&d).unwrap_or_default() {
                self.inflight.insert(seq, input);
                self.queue.push(Reverse((self.now, seq, d)));
            }
        }
    }

    /// Stalls `d`'s sync for `ms`: deliveries to it wait on the homeserver and then arrive
    /// together, room and to-device events as one [`Input::SyncBatch`] (a gappy sync). Its
    /// timers and sends go on.
    pub fn stall_sync(&mut self, d: DeviceIdx, ms: u64) {
        let until = self.now.plus(ms);
        let dev = &mut self.devices[d.0];
        dev.sync_stalled_until = Some(dev.sync_stalled_until.map_or(until, |u| u.max(until)));
    }

    /// Partitions `d` from the homeserver for `ms`: its sends fail with a retryable network
    /// error, deliveries to it wait (and arrive as one batch when the partition heals); its
    /// timers go on.
    pub fn partition(&mut self, d: DeviceIdx, ms: u64) {
        let until = self.now.plus(ms);
        let dev = &mut self.devices[d.0];
        dev.partitioned_until = Some(dev.partitioned_until.map_or(until, |u| u.max(until)));
    }

    /// Crashes `d`'s app: its process is gone (timers stop, media reports and send results in
    /// flight are lost); what it put on the homeserver (memberships, delayed leaves) stays, and
    /// deliveries to it wait there. [`Sim::restart`] brings it back with a fresh core.
    ///
    /// Its peer connections die with it: on the other end of each connected one, ICE goes
    /// `Disconnected` after [`ICE_DISCONNECTED_AFTER_MS`] and `Failed` [`ICE_FAILED_AFTER_MS`]
    /// later, and never connects again (as a real ICE agent does when consent checks stop being
    /// answered).
    pub fn crash(&mut self, d: DeviceIdx) {
        self.kill_local_inflight(d);
        self.fail_peer_connections_of(d);
        let dev = &mut self.devices[d.0];
        dev.offline = true;
        dev.crashed = true;
    }

    /// Marks `d` a dead end of every call it negotiated media for, and schedules ICE failure on
    /// the other end of those connections.
    fn fail_peer_connections_of(&mut self, d: DeviceIdx) {
        let local = self.devices[d.0].voip.local_device().clone();
        for call_id in self.devices[d.0].media.negotiating_calls() {
            self.dead_ends
                .entry(call_id.clone())
                .or_default()
                .push((local.user_id.clone(), local.device_id.clone()));
            for e in (0..self.devices.len()).filter(|e| *e != d.0).map(DeviceIdx) {
                self.check_dead_end(e, &call_id);
            }
        }
    }

    /// `d` closed its end of `call_id`'s peer connection (its call ended). The other end learns
    /// it from the hangup, normally; if no hangup gets there (it died with a crash, or was
    /// never sent), its ICE goes `Disconnected`, then `Failed`, as with a crashed end (a real
    /// agent's consent checks stop being answered) instead of the connection staying up for
    /// ever (sim mesh seed 7133: a device left while partitioned, its hangups waited for the
    /// partition, and it crashed).
    fn closed_end(&mut self, d: DeviceIdx, call_id: &CallId) {
        let local = self.devices[d.0].voip.local_device().clone();
        self.dead_ends.entry(call_id.clone()).or_default().push((local.user_id, local.device_id));
        for e in (0..self.devices.len()).filter(|e| *e != d.0).map(DeviceIdx) {
            self.check_dead_end(e, call_id);
        }
    }

    /// If `call_id` on `e` is a call with an end that crashed (or closed its connection), its connection is dead: it never
    /// connects, and if connected it goes `Disconnected`, then `Failed`.
    fn check_dead_end(&mut self, e: DeviceIdx, call_id: &CallId) {
        let Some(dead) = self.dead_ends.get(call_id) else { return };
        let Some(info) = self.devices[e.0].voip.call(call_id) else { return };
        let to_dead = dead.iter().any(|(user, device)| {
            info.peer_user == *user && info.peer_device.as_ref().is_none_or(|p| p == device)
        });
        if !to_dead || !self.devices[e.0].media.remote_died(call_id) {
            return;
        }
        self.injected.dead_peer_connections += 1;
        let disconnected = self.now.plus(ICE_DISCONNECTED_AFTER_MS);
        let failed = disconnected.plus(ICE_FAILED_AFTER_MS);
        self.ice_changes.push((disconnected, e, call_id.clone(), ConnectionState::Disconnected));
        self.ice_changes.push((failed, e, call_id.clone(), ConnectionState::Failed));
    }

    /// Reports the ICE state changes that are due (a device that crashed meanwhile has a fresh
    /// media engine without that connection: nothing to report).
    fn report_ice_changes(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ice_changes).into_iter().partition(|c| c.0 <= now);
        self.ice_changes = later;
        for (_, e, call_id, state) in due {
            if self.devices[e.0].crashed {
                continue;
            }
            for event in self.devices[e.0].media.force_state(&call_id, state) {
                self.deliver(e, Input::Media { call_id: call_id.clone(), event }, 0);
            }
        }
    }

    /// Restarts a crashed (or running: its peer connections die as in a crash) device with a
    /// fresh core: it learns the room members and the current room state, then gets what
    /// waited for it (timeline and to-device events) as one sync batch.
    pub fn restart(&mut self, d: DeviceIdx, config: Config) {
        if !self.devices[d.0].crashed {
            // A running app restarted: its old process's peer connections die as in a crash
            // (sim mesh seed 8421: the far end kept a connected call to the old process).
            self.fail_peer_connections_of(d);
        }
        let held = self.offline_inbox.remove(&d).unwrap_or_default();
        {
            let dev = &mut self.devices[d.0];
            dev.offline = false;
            dev.crashed = false;
            dev.partitioned_until = None;
            dev.sync_stalled_until = None;
        }
        self.replace_device(d, config);
        // The initial sync carries the current state; older state and member changes are moot.
        let rest: Vec<Input> = held
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| matches!(i, Input::RoomEvent(_) | Input::ToDevice(_)))
            .collect();
        self.feed_batched(d, rest);
    }

    /// Feeds held deliveries: runs of room and to-device events as one [`Input::SyncBatch`]
    /// each, anything else on its own, in order.
    fn feed_batched(&mut self, d: DeviceIdx, inputs: Vec<Input>) {
        let mut room_events = Vec::new();
        let mut to_device = Vec::new();
        for input in inputs {
            match input {
                Input::RoomEvent(e) => room_events.push(e),
                Input::ToDevice(e) => to_device.push(e),
                other => {
                    self.flush_batch(d, &mut room_events, &mut to_device);
                    self.feed(d, other);
                }
            }
        }
        self.flush_batch(d, &mut room_events, &mut to_device);
    }

    fn flush_batch(
        &mut self,
        d: DeviceIdx,
        room_events: &mut Vec<RoomEvent>,
        to_device: &mut Vec<ToDeviceEvent>,
    ) {
        if room_events.is_empty() && to_device.is_empty() {
            return;
        }
        self.injected.batched += (room_events.len() + to_device.len()) as u64;
        let input = Input::SyncBatch {
            room_events: std::mem::take(room_events),
            to_device: std::mem::take(to_device),
        };
        self.feed(d, input);
    }

    /// Drops media reports and send results on their way to `d` (its process died).
    fn kill_local_inflight(&mut self, d: DeviceIdx) {
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
        if let Some(inbox) = self.offline_inbox.get_mut(&d) {
            inbox.retain(|(_, i)| !matches!(i, Input::Media { .. } | Input::SendResult { .. }));
        }
    }

    /// Heals partitions and ends sync stalls that are due, delivering what waited.
    fn heal(&mut self) {
        for i in 0..self.devices.len() {
            let d = DeviceIdx(i);
            let dev = &mut self.devices[i];
            let mut released = false;
            if dev.partitioned_until.is_some_and(|u| u <= self.now) {
                dev.partitioned_until = None;
                released = true;
            }
            if dev.sync_stalled_until.is_some_and(|u| u <= self.now) {
                dev.sync_stalled_until = None;
                released = true;
            }
            if released && self.devices[i].reachable() {
                let held: Vec<Input> =
                    self.offline_inbox.remove(&d).unwrap_or_default().into_iter().map(|(_, i)| i).collect();
                self.feed_batched(d, held);
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
        let copies = if network && self.chance(self.faults.duplicate) {
            self.injected.duplicated += 1;
            2
        } else {
            1
        };
        let mut at = self.now.plus(delay + jitter);
        if let Input::RoomEvent(e) = &input {
            let last = self.timeline_clock.entry((to, e.room_id.clone())).or_default();
            at = at.max(*last);
            *last = at;
        }
        if let Input::ToDevice(e) = &input {
            // The homeserver's to-device inbox is one ordered stream per device: messages from
            // one sender device arrive in the order the homeserver took them (messages from
            // different senders may still overtake each other). Found by the simulator (sfu
            // seed 213): two processes of one restarted device sent keys at one index, and only
            // the order tells which is current.
            let key = (to, e.sender.clone(), e.sender_device.clone());
            let last = self.to_device_clock.entry(key).or_default();
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
                    self.check_dead_end(d, &call_id);
                    let closing = matches!(command, voip_core::media::MediaCommand::Close)
                        && self.devices[d.0].media.is_negotiating(&call_id);
                    let events = self.devices[d.0].media.execute(&call_id, command);
                    if closing {
                        self.closed_end(d, &call_id);
                    }
                    for event in events {
                        let input = Input::Media { call_id: call_id.clone(), event };
                        self.deliver(d, input, self.media_delay_ms);
                    }
                }
                Output::Send(req) => {
                    let result = self.send(d, req.txn_id, req.kind);
                    self.deliver(d, Input::SendResult { id: req.id, result }, self.latency_ms);
                }
                other => panic!("the simulator does not know the output {other:?}"),
            }
        }
    }

    /// One send through the faulty network to the homeserver, as the adapter reports it.
    fn send(&mut self, d: DeviceIdx, txn_id: String, kind: SendKind) -> SendOutcome {
        let timeout =
            || SendOutcome::Failed { retryable: true, error: "simulated timeout".into(), errcode: None };
        if self.devices[d.0].partitioned_until.is_some() {
            self.injected.partitioned_sends += 1;
            return SendOutcome::Failed {
                retryable: true,
                error: "simulated network unreachable".into(),
                errcode: None,
            };
        }
        if self.chance(self.faults.send_failure) {
            self.injected.failed_sends += 1;
            return SendOutcome::Failed { retryable: true, error: "simulated 502".into(), errcode: None };
        }
        let lost = self.chance(self.faults.drop);
        let response_lost = lost && self.rng.next_u64().is_multiple_of(2);
        if lost && !response_lost {
            self.injected.lost_requests += 1;
            return timeout();
        }
        // Room and to-device sends carry the transaction id; the homeserver answers a retried
        // transaction with the first outcome (state events are idempotent by themselves).
        let sender = self.devices[d.0].voip.local_device().clone();
        self.hs.set_delayed_events(self.delayed_events);
        let response = self.hs.send(self.now, &sender, &txn_id, kind);
        if response.deduplicated {
            self.injected.deduplicated += 1;
        }
        let outcome = response.outcome;
        self.dispatch(response.deliveries);
        if response_lost {
            self.injected.lost_responses += 1;
            return timeout();
        }
        outcome
    }

    /// Sends what the homeserver delivers across the network: room events and to-device
    /// messages with latency, jitter and duplicates; state in timeline order.
    fn dispatch(&mut self, deliveries: Vec<Delivery>) {
        for Delivery { user_id, device_id, input } in deliveries {
            let Some(to) = self.device_of(&user_id, &device_id) else { continue };
            let Input::StateEvent(ev) = &input else {
                self.deliver(to, input, self.latency_ms);
                continue;
            };
            // State reaches each device in timeline order, like room events.
            let mut at = self.now.plus(self.latency_ms);
            let last = self.timeline_clock.entry((to, ev.room_id.clone())).or_default();
            at = at.max(*last);
            *last = at;
            self.seq += 1;
            self.inflight.insert(self.seq, input);
            self.queue.push(Reverse((at, self.seq, to)));
        }
    }

    /// The current room state of one type (for assertions).
    pub fn room_state(&self, room: &RoomId, event_type: &str) -> Vec<StateEvent> {
        self.hs.room_state(room, event_type)
    }

    /// Scheduled delayed events (for assertions): (delay id, fire time, state key).
    pub fn scheduled_delayed(&self) -> Vec<(String, Timestamp, String)> {
        self.hs.scheduled_delayed()
    }

    /// Fires delayed events whose time has come.
    fn fire_delayed(&mut self) {
        let deliveries = self.hs.fire_due(self.now);
        self.dispatch(deliveries);
    }

    /// The earliest pending thing: a delivery, a device deadline, a healing partition or sync
    /// gap, a delayed event.
    pub fn next_time(&self) -> Option<Timestamp> {
        let q = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let d = self
            .devices
            .iter()
            .filter(|d| !d.offline)
            .filter_map(|d| d.voip.next_deadline().map(|x| shift(x.at, -d.skew_ms)))
            .min();
        let heals =
            self.devices.iter().flat_map(|d| [d.partitioned_until, d.sync_stalled_until]).flatten().min();
        let delayed = self.hs.next_delayed_at();
        let ice = self.ice_changes.iter().map(|c| c.0).min();
        [q, d, heals, delayed, ice].into_iter().flatten().min()
    }

    /// Handles everything due at the earliest pending time. Returns false when idle.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_time() else { return false };
        self.now = self.now.max(at);
        self.heal();
        self.fire_delayed();
        self.report_ice_changes();
        let mut held = Vec::new();
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > self.now {
                break;
            }
            let Reverse((_, seq, to)) = self.queue.pop().expect("peeked");
            // Deliveries cancelled by a device restart have no input left.
            let Some(input) = self.inflight.remove(&seq) else { continue };
            if !self.devices[to.0].reachable() {
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
            let local = self.local_now(DeviceIdx(i));
            if self.devices[i].voip.next_deadline().is_some_and(|d| d.at <= local) {
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

/// `t` moved by `ms` (either way), saturating.
fn shift(t: Timestamp, ms: i64) -> Timestamp {
    Timestamp(t.0.saturating_add_signed(ms))
}
