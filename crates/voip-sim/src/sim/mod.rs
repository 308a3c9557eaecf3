//! The simulator: N devices (each the `voip` runtime's driver — the task apps run — owning its
//! `voip_core::VoipMachine`, plus a [`FakeMedia`]), the in-memory
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
//!
//! Modules: this one holds the devices and the API tests use; `process` a device's runtime on
//! the deterministic executor (transport, engine and clock of the simulation); `network` the
//! faulty network and the homeserver's delivery order; `crash` crashes, restarts and dead peer
//! connections; `stepper` the virtual clock and output draining.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use voip_core::media::{ConnectionState, MediaEvent};
use voip_core::{
    seed_from_u64, CallId, CallInfo, Command, Config, Counters, DeviceId, Event, GroupCallId, GroupCallInfo,
    Input, LocalDevice, MediaKeys, Output, RoomId, StateEvent, Timestamp, UserId,
};
use voip_homeserver::{Delivery, Homeserver};

use crate::media::FakeMedia;

mod crash;
mod network;
mod process;
mod stepper;

use process::Process;

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
    /// Its app process: the `voip` runtime (handle and driver task).
    process: Process,
    /// Its media engine.
    pub media: FakeMedia,
    /// Every app event, time-stamped.
    pub events: Vec<(Timestamp, Event)>,
    /// Every output, time-stamped, for traces: sends and media commands in the core's order,
    /// then the app events of the same turn of the runtime.
    pub outputs: Vec<(Timestamp, Output)>,
    /// Inputs the core refused (`voip::Voip::input_errors`), time-stamped.
    pub errors: Vec<(Timestamp, String)>,
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

    /// The app's handle on the device's runtime.
    pub fn voip(&self) -> &voip::Voip {
        &self.process.voip
    }

    /// This device.
    pub fn local_device(&self) -> &LocalDevice {
        self.process.voip.local_device()
    }

    /// The calls its runtime knows (ringing, in progress, just ended), by call id.
    pub fn calls(&self) -> Vec<CallInfo> {
        let mut calls: Vec<CallInfo> =
            self.process.voip.calls().iter().filter_map(voip::Call::info).collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        calls
    }

    /// One call.
    pub fn call(&self, call_id: &CallId) -> Option<CallInfo> {
        self.process.voip.call(call_id)?.info()
    }

    /// The room call of a room the device is in (joined or observed).
    ///
    /// # Panics
    ///
    /// For a group call the app does not show (every room call of a room the device joined is).
    pub fn group_call(&self, group: &GroupCallId) -> GroupCallInfo {
        self.shown(group).info()
    }

    /// The media keys of a room call (`None` when not in it).
    pub fn media_keys(&self, group: &GroupCallId) -> Option<MediaKeys> {
        self.shown(group).media_keys()
    }

    fn shown(&self, group: &GroupCallId) -> &voip::GroupCall {
        self.process
            .group(group)
            .unwrap_or_else(|| panic!("{group:?} is not a room call of the device's rooms"))
    }

    /// What its core ignored from the network.
    pub fn counters(&self) -> Counters {
        self.process.voip.counters()
    }

    /// Whether a new call would ring.
    pub fn can_handle_new_call(&self) -> bool {
        self.process.voip.can_handle_new_call()
    }

    /// Sends its core still waits on.
    pub fn pending_sends(&self) -> usize {
        self.process.voip.pending_sends()
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
        let now = shift(self.now, skew_ms);
        self.devices.push(Device {
            process: Process::start(local, config, seed, now),
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
        let local = self.devices[d.0].local_device().clone();
        // The old process is gone: its media engine's reports and its send results die with it.
        self.kill_local_inflight(d);
        let seed = seed_from_u64(self.rng.next_u64());
        let now = self.local_now(d);
        // The old driver task is dropped with its process, as a killed app's is.
        // The new app shows the room calls the old one showed.
        let shown = self.devices[d.0].process.shown_rooms();
        self.devices[d.0].process = Process::start(local.clone(), config, seed, now);
        self.devices[d.0].generation += 1;
        self.devices[d.0].media = FakeMedia::new();
        for room in &shown {
            self.devices[d.0].process.watch(room);
        }
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
                self.show_room_call(d, &room_id);
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

    /// `d`'s app shows the room call of `room` (as Element shows a room's ongoing call).
    fn show_room_call(&mut self, d: DeviceIdx, room: &RoomId) {
        self.devices[d.0].process.watch(room);
    }

    /// The device with this identity.
    fn device_of(&self, user_id: &UserId, device_id: &DeviceId) -> Option<DeviceIdx> {
        self.devices
            .iter()
            .position(|d| {
                let l = d.local_device();
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
        self.try_place_call(from, room, invitee, invitee_device, call_type, signalling).expect("place_call")
    }

    /// [`Sim::place_call`], with the runtime's refusal as an error.
    pub fn try_place_call(
        &mut self,
        from: DeviceIdx,
        room: &RoomId,
        invitee: &str,
        invitee_device: Option<&str>,
        call_type: voip_core::CallType,
        signalling: voip_core::Signalling,
    ) -> Result<CallId, voip::VoipError> {
        let voip = self.devices[from.0].process.voip.clone();
        let placed = self.devices[from.0].process.block_on(async {
            match (invitee_device, signalling) {
                (None, voip_core::Signalling::ToDevice) => {
                    Err(voip::VoipError::Core(voip_core::ApiMisuse::MissingDevice.into()))
                }
                (None, _) => voip.invite_to_call(room, call_type, invitee).await,
                (Some(device), voip_core::Signalling::ToDevice) => {
                    voip.invite_device_to_call(room, call_type, invitee, device).await
                }
                (Some(device), _) => voip.invite_device_in_room(room, call_type, invitee, device).await,
            }
        });
        self.drain(from);
        placed.map(|call| call.id().clone())
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
        self.show_room_call(d, &RoomId::from(room));
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

    /// Runs a command through the device's runtime (`voip::Voip::command`, as an app does);
    /// returns the core's verdict.
    pub fn command(&mut self, d: DeviceIdx, command: Command) -> Result<(), voip_core::Error> {
        let voip = self.devices[d.0].process.voip.clone();
        let r = self.devices[d.0].process.block_on(voip.command(command));
        self.drain(d);
        r.map_err(|e| match e {
            voip::VoipError::Core(e) => e,
            other => voip_core::Error::Unreachable(format!("the runtime failed a command: {other}")),
        })
    }

    /// Hands any input to the device's runtime now (as its transport or media engine does).
    pub fn feed(&mut self, d: DeviceIdx, input: Input) {
        let dev = &mut self.devices[d.0];
        dev.process.push(input);
        dev.process.run();
        self.drain(d);
    }

    /// Simulates a media-level connection change on `d`'s call.
    pub fn force_media_state(&mut self, d: DeviceIdx, call_id: &CallId, state: ConnectionState) {
        let events = self.devices[d.0].media.force_state(call_id, state);
        for event in events {
            self.feed(d, Input::Media { call_id: call_id.clone(), event });
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
        self.devices[d.0].call(call_id).is_some_and(|c| c.state == voip_core::CallState::Connected)
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
