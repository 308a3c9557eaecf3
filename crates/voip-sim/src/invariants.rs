//! The invariants every simulation must keep, checked after every step by one [`Checker`]
//! (shared by the property tests and `cargo xtask sim`):
//!
//! - **no call rings forever**: a call that is not connected ends or connects within its
//!   lifetimes (counted in time its device is running);
//! - **both ends agree** on how a call ended (unless both ended it themselves at once, or a newer
//!   invite superseded it);
//! - **at most one live call per pair** of devices;
//! - **no key reaches a non-member**: media keys are sent only to devices the sender counts as
//!   members, and surfaced only while the receiver is in the call and from members;
//! - **no ghost member** outlives its expiry or its delayed leave: a member a device shows must
//!   have a live membership on the homeserver, give or take the time a change takes to arrive;
//! - **no core error** (honest devices never send anything a core refuses);
//! - **participant reports add up**: every `participants_changed` diff applies to the
//!   participants reported before (nobody leaves who had not joined, nobody joins twice) and
//!   its `count` is the result.
//!
//! Liveness (every call ended, every pair connected, keys converged) is a property of quiet
//! times: [`Checker::check_settled`] and the scenario's own end checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use voip_core::wire::keys::{self as wire_keys, KeyEvent};
use voip_core::wire::member;
use voip_core::{
    CallId, CallInfo, CallState, DeviceId, EndReason, Event, GroupCallId, GroupCallState, Initiator, Output,
    Participant, SendKind, Signalling, Timestamp, UserId,
};

use crate::{DeviceIdx, Sim};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (a short stable name).
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
    /// Virtual time of the check.
    pub at: Timestamp,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] at {}: {}", self.invariant, self.at.0, self.detail)
    }
}

impl std::error::Error for Violation {}

/// Bounds of the checker.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Longest a call may stay unconnected while its device runs, ms (lifetimes plus retries).
    pub unsettled_ms: u64,
    /// Longest a device may show a member the homeserver no longer has, ms of reachable time
    /// (delivery latency, jitter, clock skew).
    pub ghost_ms: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        // The invite lifetime (90 s) plus answer, ICE and send-retry time.
        Bounds { unsettled_ms: 180_000, ghost_ms: 15_000 }
    }
}

/// What the checker knows of one device's output stream.
#[derive(Debug, Default)]
struct Stream {
    outputs: usize,
    generation: u32,
    state: BTreeMap<GroupCallId, GroupCallState>,
    /// Participants per group, from the `participants_changed` diffs.
    participants: BTreeMap<GroupCallId, BTreeSet<Participant>>,
}

/// Checks the invariants of a running simulation; call [`Checker::check`] after every step.
#[derive(Debug, Default)]
pub struct Checker {
    /// The bounds.
    pub bounds: Bounds,
    last: Option<Timestamp>,
    streams: Vec<Stream>,
    /// Reachable time each unconnected call has spent so far, per (device, call).
    unsettled: BTreeMap<(usize, CallId), u64>,
    /// The latest snapshot of each call per device (for who its ends are).
    info: BTreeMap<(usize, CallId), CallInfo>,
    /// How each device ended each call.
    endings: BTreeMap<CallId, BTreeMap<usize, (EndReason, Initiator)>>,
    /// Reachable time each member shown without a live membership has been shown, per device.
    ghosts: BTreeMap<(usize, UserId, DeviceId), u64>,
    /// Checks done.
    pub checks: u64,
}

macro_rules! fail {
    ($at:expr, $inv:expr, $($arg:tt)*) => {
        return Err(Violation { invariant: $inv, detail: format!($($arg)*), at: $at })
    };
}

impl Checker {
    /// A checker with the default bounds.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Checks every invariant against the simulation as it is now.
    pub fn check(&mut self, sim: &Sim) -> Result<(), Violation> {
        self.checks += 1;
        let now = sim.now();
        let dt = self.last.map_or(0, |l| now.since(l));
        self.last = Some(now);
        while self.streams.len() < sim.len() {
            self.streams.push(Stream::default());
        }
        for i in 0..sim.len() {
            self.check_device(sim, i, dt)?;
        }
        self.check_endings(sim, now)?;
        Ok(())
    }

    fn check_device(&mut self, sim: &Sim, i: usize, dt: u64) -> Result<(), Violation> {
        let now = sim.now();
        let dev = sim.device(DeviceIdx(i));
        if let Some((at, e)) = dev.errors.first() {
            fail!(now, "no_core_error", "device {i} at {}: {e}", at.0);
        }
        if dev.crashed {
            // The process is gone; what it had is gone with it.
            self.unsettled.retain(|(d, _), _| *d != i);
            self.ghosts.retain(|(d, _, _), _| *d != i);
            return Ok(());
        }
        let me = format!("{}/{}", dev.local_device().user_id.as_str(), dev.local_device().device_id.as_str());
        // Replay the new part of the device's output stream.
        let stream = &mut self.streams[i];
        if stream.generation != dev.generation {
            *stream = Stream { outputs: stream.outputs, generation: dev.generation, ..Stream::default() };
        }
        // Members as known at any point of this batch of outputs: within one input, a core may
        // queue a key send before the event that reports the member it is for.
        let mut known: BTreeSet<(GroupCallId, UserId, DeviceId)> = stream
            .participants
            .iter()
            .flat_map(|(g, ps)| ps.iter().map(move |p| (g.clone(), p.user_id.clone(), p.device_id.clone())))
            .collect();
        for (_, out) in &dev.outputs[stream.outputs..] {
            if let Output::Event(Event::ParticipantsChanged { group, joined, .. }) = out {
                known.extend(joined.iter().map(|p| (group.clone(), p.user_id.clone(), p.device_id.clone())));
            }
        }
        for (_, out) in &dev.outputs[stream.outputs..] {
            match out {
                Output::Event(Event::GroupCallStateChanged { group, state }) => {
                    stream.state.insert(group.clone(), *state);
                }
                Output::Event(Event::ParticipantsChanged { group, joined, left, count }) => {
                    // A diff: left first, then joined (a new session of a device is in both).
                    let set = stream.participants.entry(group.clone()).or_default();
                    for p in left {
                        if !set.remove(p) {
                            fail!(
                                now,
                                "participants_consistent",
                                "device {i} ({me}): {p:?} left {group:?} without having joined"
                            );
                        }
                    }
                    for p in joined {
                        if !set.insert(p.clone()) {
                            fail!(
                                now,
                                "participants_consistent",
                                "device {i} ({me}): {p:?} joined {group:?} twice"
                            );
                        }
                    }
                    if set.len() != *count {
                        fail!(now, "participants_consistent", "device {i} ({me}): {group:?} counts {count} participants, the diffs add up to {}", set.len());
                    }
                }
                Output::Event(Event::EncryptionKey { group, participant, local: false, index, .. }) => {
                    let joined = matches!(
                        stream.state.get(group),
                        Some(GroupCallState::Joining | GroupCallState::Joined)
                    );
                    if !joined {
                        fail!(now, "no_key_to_non_member", "device {i} ({me}) surfaced key {index} of {participant:?} in {group:?} while {:?}", stream.state.get(group));
                    }
                    let member = known.contains(&(
                        group.clone(),
                        participant.user_id.clone(),
                        participant.device_id.clone(),
                    ));
                    if !member {
                        fail!(
                            now,
                            "no_key_to_non_member",
                            "device {i} ({me}) surfaced a key of non-member {participant:?}"
                        );
                    }
                }
                Output::Event(Event::CallEnded { call_id, reason, initiator }) => {
                    let prev = self
                        .endings
                        .entry(call_id.clone())
                        .or_default()
                        .insert(i, (reason.clone(), *initiator));
                    if prev.is_some() {
                        fail!(now, "one_ending", "device {i} ended {call_id} twice");
                    }
                }
                Output::Send(req) => {
                    if let SendKind::ToDevice { event_type, messages, .. } = &req.kind {
                        if !wire_keys::is_key_event_type(event_type) {
                            continue;
                        }
                        for m in messages {
                            let Ok(KeyEvent::Keys(keys)) = wire_keys::parse(event_type, &m.content) else {
                                continue;
                            };
                            let is_member = known.iter().any(|(g, u, d)| {
                                g.call_id == keys.call_id
                                    && keys.room_id.as_ref().is_none_or(|r| *r == g.room_id)
                                    && *u == m.user_id
                                    && *d == m.device_id
                            });
                            if !is_member {
                                fail!(
                                    now,
                                    "no_key_to_non_member",
                                    "device {i} ({me}) sent keys to {}:{}, not a member it knows",
                                    m.user_id,
                                    m.device_id
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        stream.outputs = dev.outputs.len();

        let running = !dev.offline;
        let reachable = dev.reachable();
        // At most one live call per pair; nothing stays unconnected beyond its lifetimes.
        let calls = dev.calls();
        let mut pairs = BTreeSet::new();
        for c in &calls {
            let device = if c.signalling == Signalling::ToDevice { c.peer_device.clone() } else { None };
            if !pairs.insert((c.room_id.clone(), c.peer_user.clone(), device)) {
                fail!(now, "one_call_per_pair", "device {i} ({me}) has two live calls with {}", c.peer_user);
            }
            let key = (i, c.call_id.clone());
            self.info.insert(key.clone(), c.clone());
            if c.state == CallState::Connected {
                self.unsettled.remove(&key);
            } else {
                let t = self.unsettled.entry(key).or_insert(0);
                if running {
                    *t += dt;
                }
                if *t > self.bounds.unsettled_ms {
                    fail!(
                        now,
                        "no_endless_ringing",
                        "device {i} ({me}): call {} with {} still {:?} after {} ms",
                        c.call_id,
                        c.peer_user,
                        c.state,
                        t
                    );
                }
            }
        }
        let live: BTreeSet<&CallId> = calls.iter().map(|c| &c.call_id).collect();
        self.unsettled.retain(|(d, id), _| *d != i || live.contains(id));

        // Ghost members: everyone shown must have a live membership on the homeserver.
        let groups: BTreeSet<GroupCallId> = self.streams[i].participants.keys().cloned().collect();
        let mut shown = BTreeMap::new();
        for group in groups {
            for m in dev.group_call(&group).members {
                let p = m.participant;
                if !server_live(sim, &group, &p) {
                    let ended = server_ended_at(sim, &group, &p);
                    shown.insert((i, p.user_id, p.device_id), ended);
                }
            }
        }
        self.ghosts.retain(|k, _| k.0 != i || shown.contains_key(k));
        for (k, ended) in shown {
            // A ghost seen for the first time counts only from when its membership ended (the
            // last check may be long before that; found by the simulator, mesh seed 112).
            let first = !self.ghosts.contains_key(&k);
            let t = self.ghosts.entry(k.clone()).or_insert(0);
            if reachable {
                *t += if first { dt.min(now.since(ended)) } else { dt };
            }
            if *t > self.bounds.ghost_ms {
                fail!(
                    now,
                    "no_ghost_member",
                    "device {i} ({me}) still shows {}:{} {t} ms after its membership ended on the homeserver",
                    k.1,
                    k.2
                );
            }
        }
        Ok(())
    }

    fn check_endings(&self, sim: &Sim, now: Timestamp) -> Result<(), Violation> {
        for (call_id, ends) in &self.endings {
            if ends.len() < 2 {
                continue;
            }
            let devices: Vec<usize> = ends.keys().copied().collect();
            for (x, a) in devices.iter().enumerate() {
                for b in &devices[x + 1..] {
                    if !self.are_ends(sim, call_id, *a, *b, devices.len()) {
                        continue;
                    }
                    let (ra, ia) = &ends[a];
                    let (rb, ib) = &ends[b];
                    let both_local = *ia != Initiator::Remote && *ib != Initiator::Remote;
                    let superseded = (*ra == EndReason::Replaced && *ia == Initiator::Remote)
                        || (*rb == EndReason::Replaced && *ib == Initiator::Remote);
                    if ra != rb && !both_local && !superseded {
                        fail!(
                            now,
                            "ends_agree",
                            "{call_id}: device {a} ended with {ra:?}/{ia:?}, device {b} with {rb:?}/{ib:?}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether devices `a` and `b` are the two ends of `call_id` (not, say, the caller and a
    /// sibling device of the callee that never answered).
    fn are_ends(&self, sim: &Sim, call_id: &CallId, a: usize, b: usize, enders: usize) -> bool {
        let (Some(ia), Some(ib)) =
            (self.info.get(&(a, call_id.clone())), self.info.get(&(b, call_id.clone())))
        else {
            return false;
        };
        let la = sim.device(DeviceIdx(a)).local_device();
        let lb = sim.device(DeviceIdx(b)).local_device();
        let points = |info: &CallInfo, other: &voip_core::LocalDevice| {
            info.peer_user == other.user_id && info.peer_device.as_ref().is_none_or(|d| *d == other.device_id)
        };
        // Without a known peer device, the other side is an end only if it is its user's only
        // device (else it may be a sibling that rang and never answered).
        let only_device = |info: &CallInfo, other: &voip_core::LocalDevice| {
            info.peer_device.is_some()
                || (0..sim.len())
                    .filter(|j| sim.device(DeviceIdx(*j)).local_device().user_id == other.user_id)
                    .count()
                    == 1
        };
        let _ = enders;
        points(ia, lb) && points(ib, la) && only_device(ia, lb) && only_device(ib, la)
    }

    /// Liveness once everything is quiet: no live call left, no send pending, no peer
    /// connection open (for scenarios that end every call).
    pub fn check_settled(&self, sim: &Sim) -> Result<(), Violation> {
        let now = sim.now();
        for i in 0..sim.len() {
            let dev = sim.device(DeviceIdx(i));
            if !dev.calls().is_empty() {
                fail!(
                    now,
                    "calls_end",
                    "device {i}: live calls left: {:?}",
                    dev.calls().iter().map(|c| (&c.call_id, c.state)).collect::<Vec<_>>()
                );
            }
            if dev.pending_sends() != 0 {
                fail!(now, "sends_finish", "device {i}: {} sends pending", dev.pending_sends());
            }
            if dev.media.open_peers() != 0 {
                fail!(now, "peers_closed", "device {i}: {} peer connections open", dev.media.open_peers());
            }
        }
        Ok(())
    }
}

/// When `p`'s membership in `group` last ended on the homeserver, for a membership that is not
/// live: the latest of the member state events of its user (a leave, or an update without it)
/// and of the expiry times of its entries that have passed.
pub fn server_ended_at(sim: &Sim, group: &GroupCallId, p: &Participant) -> Timestamp {
    let now = sim.now();
    let mut ended = Timestamp(0);
    for t in [member::FAMEDLY_MEMBER, member::RTC_MEMBER] {
        for ev in sim.room_state(&group.room_id, t).iter().filter(|ev| ev.sender == p.user_id) {
            ended = ended.max(ev.origin_server_ts);
            let Ok(Some(parsed)) = member::parse(t, &ev.content) else { continue };
            for e in parsed.entries.iter().filter(|e| e.device_id == p.device_id.as_str()) {
                let expires = e.expires_ts.unwrap_or_else(|| {
                    e.created_ts
                        .unwrap_or(ev.origin_server_ts.0)
                        .saturating_add(e.expires.unwrap_or(u64::MAX / 4))
                });
                if expires <= now.0 {
                    ended = ended.max(Timestamp(expires));
                }
            }
        }
    }
    ended.min(now)
}

/// Whether the homeserver's room state has an unexpired membership of `p` in `group`.
pub fn server_live(sim: &Sim, group: &GroupCallId, p: &Participant) -> bool {
    let now = sim.now();
    [member::FAMEDLY_MEMBER, member::RTC_MEMBER].iter().any(|t| {
        sim.room_state(&group.room_id, t).iter().filter(|ev| ev.sender == p.user_id).any(|ev| {
            let Ok(Some(parsed)) = member::parse(t, &ev.content) else { return false };
            parsed.entries.iter().any(|e| {
                let expires = e.expires_ts.unwrap_or_else(|| {
                    e.created_ts
                        .unwrap_or(ev.origin_server_ts.0)
                        .saturating_add(e.expires.unwrap_or(u64::MAX / 4))
                });
                e.call_id == group.call_id && e.device_id == p.device_id.as_str() && now.0 < expires
            })
        })
    })
}
