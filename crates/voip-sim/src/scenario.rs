//! Seeded scenarios with faults, checked by the shared [`Checker`] after every step.
//!
//! A [`Trace`] is everything a run depends on: the scenario, the seed of the simulation, the
//! number of devices, the faults and the list of [`Action`]s. [`Trace::generate`] draws all of it
//! from one seed; [`Trace::run`] replays it, always the same way. A failing trace is shrunk by
//! [`shrink`] (fewer actions, fewer faults, same broken invariant) and printed as JSON, which
//! `cargo xtask sim --replay FILE` runs again.
//!
//! Scenarios:
//! - `one-to-one`: Alice, Bob on 1 to 3 devices and sometimes Carol place, answer, reject and hang
//!   up calls, glare included (both place at the same instant); at the end everyone hangs up and
//!   every call must end with every send finished and every peer connection closed.
//! - `mesh`: 2 to 8 devices join and leave a mesh group call; afterwards every pair of present
//!   devices has exactly one connected call and sees exactly the present members.
//! - `sfu`: 2 to 8 devices join and leave an SFU call (famedly or Element Call keys); afterwards
//!   every present member holds every other's current key.
//!
//! Every scenario mixes in partitions, sync gaps, crashes with restarts and waits, over seeded
//! jitter, duplicated deliveries, failing and lost sends, and clock skew.

use std::collections::BTreeSet;
use std::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use voip_core::{
    CallState, CallType, Command, Config, Event, Focus, GroupCallId, GroupCallState, MembershipDialect,
    Output, Participant, RoomId, Signalling,
};

use crate::invariants::{server_live, Checker, Violation};
use crate::{DeviceIdx, Faults, Sim};

/// Which scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 1:1 calls with glare and several callee devices.
    OneToOne,
    /// Mesh group calls of 2 to 8 devices with churn.
    Mesh,
    /// SFU group calls of 2 to 8 devices: media-key rotation with churn.
    Sfu,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 3] = [Scenario::OneToOne, Scenario::Mesh, Scenario::Sfu];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::OneToOne => "one-to-one",
            Scenario::Mesh => "mesh",
            Scenario::Sfu => "sfu",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing that happens in a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Action {
    /// Device `from` calls user `to` (all of the user's devices ring).
    Place {
        /// Caller device.
        from: usize,
        /// Callee user index.
        to: usize,
        /// Video or voice.
        video: bool,
    },
    /// Devices `a` and `b` call each other's users at the same instant (glare).
    Glare {
        /// One device.
        a: usize,
        /// The other.
        b: usize,
    },
    /// The device answers its first ringing call.
    Answer {
        /// Device.
        dev: usize,
    },
    /// The device rejects its first ringing call.
    Reject {
        /// Device.
        dev: usize,
        /// Whether the others are told.
        emit: bool,
    },
    /// The device hangs up its first live call.
    Hangup {
        /// Device.
        dev: usize,
    },
    /// The device joins the group call.
    Join {
        /// Device.
        dev: usize,
    },
    /// The device leaves the group call.
    Leave {
        /// Device.
        dev: usize,
    },
    /// The device is cut off from the homeserver for a while.
    Partition {
        /// Device.
        dev: usize,
        /// How long, ms.
        ms: u64,
    },
    /// The device's sync stalls for a while (then catches up in one batch).
    SyncGap {
        /// Device.
        dev: usize,
        /// How long, ms.
        ms: u64,
    },
    /// The device's app crashes (until it restarts).
    Crash {
        /// Device.
        dev: usize,
    },
    /// The device's app restarts (and rejoins the group call if its user is in it).
    Restart {
        /// Device.
        dev: usize,
    },
    /// Time passes.
    Wait {
        /// How long, ms.
        ms: u64,
    },
}

/// Everything a run depends on; replays identically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The scenario.
    pub scenario: Scenario,
    /// Seed of the simulation (jitter, faults, the cores' randomness).
    pub seed: u64,
    /// User index of each device.
    pub devices: Vec<usize>,
    /// Network faults.
    pub faults: Faults,
    /// Whether the homeserver supports MSC4140 delayed events.
    pub delayed_events: bool,
    /// Group calls: famedly memberships and keys (else Element Call's).
    pub famedly: bool,
    /// What happens, in order.
    pub actions: Vec<Action>,
}

/// The result of a run that kept every invariant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Simulation steps taken.
    pub steps: u64,
    /// Invariant checks done.
    pub checks: u64,
    /// Faults injected by the network.
    pub injected: crate::Injected,
}

const ROOM: &str = "!sim:example.org";
const MAX_STEPS: u64 = 2_000_000;

fn user(i: usize) -> String {
    format!("@u{i}:example.org")
}

struct Gen(ChaCha20Rng);

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
    fn idx(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    fn prob(&mut self, max: f64) -> f64 {
        if self.chance(1, 2) {
            0.0
        } else {
            (self.below(1_000) as f64 / 1_000.0) * max
        }
    }
    fn pick<T: Copy>(&mut self, weighted: &[(u64, T)]) -> T {
        let total: u64 = weighted.iter().map(|(w, _)| w).sum();
        let mut r = self.below(total);
        for (w, t) in weighted {
            if r < *w {
                return *t;
            }
            r -= w;
        }
        weighted[0].1
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Place,
    Glare,
    Answer,
    Reject,
    Hangup,
    Join,
    Leave,
    Partition,
    SyncGap,
    Crash,
    Restart,
    Wait,
}

impl Trace {
    /// Draws a whole scenario from `seed`.
    pub fn generate(scenario: Scenario, seed: u64) -> Trace {
        let mut g = Gen(ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_5ce7_a210_0000));
        let faults = Faults {
            jitter_ms: if g.chance(3, 4) { g.below(300) } else { 0 },
            send_failure: g.prob(0.15),
            duplicate: g.prob(0.25),
            drop: g.prob(0.15),
            clock_skew_ms: if g.chance(1, 2) { g.below(3_000) } else { 0 },
        };
        let devices: Vec<usize> = match scenario {
            Scenario::OneToOne => {
                // Alice, Bob on 1 to 3 devices, sometimes Carol.
                let mut d = vec![0];
                d.extend(std::iter::repeat_n(1, 1 + g.idx(3)));
                if g.chance(1, 3) {
                    d.push(2);
                }
                d
            }
            Scenario::Mesh | Scenario::Sfu => (0..2 + g.idx(7)).collect(),
        };
        let n = devices.len();
        let users = devices.iter().max().map_or(0, |m| m + 1);
        let weights: Vec<(u64, Kind)> = match scenario {
            Scenario::OneToOne => vec![
                (4, Kind::Place),
                (1, Kind::Glare),
                (4, Kind::Answer),
                (1, Kind::Reject),
                (2, Kind::Hangup),
                (1, Kind::Partition),
                (1, Kind::SyncGap),
                (1, Kind::Crash),
                (1, Kind::Restart),
                (4, Kind::Wait),
            ],
            Scenario::Mesh | Scenario::Sfu => vec![
                (5, Kind::Join),
                (2, Kind::Leave),
                (1, Kind::Partition),
                (1, Kind::SyncGap),
                (1, Kind::Crash),
                (1, Kind::Restart),
                (3, Kind::Wait),
            ],
        };
        let len = 4 + g.idx(24);
        let mut actions = Vec::with_capacity(len);
        for _ in 0..len {
            let dev = g.idx(n);
            let a = match g.pick(&weights) {
                Kind::Place => Action::Place { from: dev, to: g.idx(users), video: g.chance(1, 2) },
                Kind::Glare => Action::Glare { a: dev, b: g.idx(n) },
                Kind::Answer => Action::Answer { dev },
                Kind::Reject => Action::Reject { dev, emit: g.chance(3, 4) },
                Kind::Hangup => Action::Hangup { dev },
                Kind::Join => Action::Join { dev },
                Kind::Leave => Action::Leave { dev },
                Kind::Partition => Action::Partition { dev, ms: 100 + g.below(20_000) },
                Kind::SyncGap => Action::SyncGap { dev, ms: 100 + g.below(10_000) },
                Kind::Crash => Action::Crash { dev },
                Kind::Restart => Action::Restart { dev },
                Kind::Wait => Action::Wait {
                    ms: match g.below(3) {
                        0 => g.below(50),
                        1 => 50 + g.below(2_000),
                        _ => 2_000 + g.below(60_000),
                    },
                },
            };
            actions.push(a);
        }
        Trace {
            scenario,
            seed,
            devices,
            faults,
            delayed_events: g.chance(3, 4),
            famedly: g.chance(1, 2),
            actions,
        }
    }

    /// Runs the trace, checking every invariant after every step.
    pub fn run(&self) -> Result<Report, Violation> {
        self.run_keeping_sim().0
    }

    /// Runs the trace and returns the simulation as it was left (for inspection).
    pub fn run_keeping_sim(&self) -> (Result<Report, Violation>, Sim) {
        let mut run = Run::new(self);
        let result = run.go();
        (result, run.sim)
    }

    /// The trace as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a trace serializes")
    }

    /// A trace from JSON.
    pub fn from_json(s: &str) -> Result<Trace, serde_json::Error> {
        serde_json::from_str(s)
    }
}

struct Run<'a> {
    trace: &'a Trace,
    sim: Sim,
    checker: Checker,
    devs: Vec<DeviceIdx>,
    /// Devices in the group call (as their users want it).
    present: BTreeSet<usize>,
    crashed: BTreeSet<usize>,
    steps: u64,
}

impl<'a> Run<'a> {
    fn new(trace: &'a Trace) -> Run<'a> {
        let mut sim = Sim::new(trace.seed);
        sim.faults = trace.faults;
        sim.delayed_events = trace.delayed_events;
        let devs: Vec<DeviceIdx> = trace
            .devices
            .iter()
            .enumerate()
            .map(|(i, u)| sim.add_device(&user(*u), &format!("D{i}"), Config::default()))
            .collect();
        let users: BTreeSet<String> = trace.devices.iter().map(|u| user(*u)).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        sim.join(ROOM, &refs);
        Run {
            trace,
            sim,
            checker: Checker::new(),
            devs,
            present: BTreeSet::new(),
            crashed: BTreeSet::new(),
            steps: 0,
        }
    }

    fn check(&mut self) -> Result<(), Violation> {
        self.checker.check(&self.sim)
    }

    /// Steps through everything due within `ms`, checking after every step.
    fn advance(&mut self, ms: u64) -> Result<(), Violation> {
        let until = self.sim.now().plus(ms);
        while self.sim.next_time().is_some_and(|t| t <= until) && self.steps < MAX_STEPS {
            self.sim.step();
            self.steps += 1;
            self.check()?;
        }
        self.sim.advance(0);
        if self.sim.now() < until {
            self.sim.advance(until.since(self.sim.now()));
        }
        Ok(())
    }

    fn group(&self) -> GroupCallId {
        GroupCallId::room_call(RoomId::from(ROOM))
    }

    fn join(&mut self, i: usize) {
        let focus = match self.trace.scenario {
            Scenario::Sfu => Focus::Livekit {
                livekit_service_url: Some("https://sfu.example.org".into()),
                livekit_alias: None,
            },
            _ => Focus::Mesh,
        };
        let dialect = if self.trace.famedly || self.trace.scenario == Scenario::Mesh {
            MembershipDialect::Famedly
        } else {
            MembershipDialect::MatrixRtc
        };
        let _ = self.sim.join_group_call(self.devs[i], ROOM, dialect, focus);
    }

    fn place(&mut self, from: usize, to: usize, video: bool) {
        let invitee = user(to);
        if self.trace.devices[from] == to {
            return;
        }
        let d = self.devs[from];
        let call_type = if video { CallType::Video } else { CallType::Voice };
        // Refused only while a call with that user exists: fine.
        let _ = self.sim.try_place_call(d, &RoomId::from(ROOM), &invitee, None, call_type, Signalling::Room);
    }

    fn first_call(&self, i: usize, ringing: bool) -> Option<voip_core::CallId> {
        self.sim
            .device(self.devs[i])
            .calls()
            .into_iter()
            .find(|c| !ringing || c.state == CallState::Ringing)
            .map(|c| c.call_id)
    }

    fn act(&mut self, a: &Action) -> Result<(), Violation> {
        let n = self.devs.len();
        let alive = |i: &usize| *i < n;
        match *a {
            Action::Place { from, to, video } if alive(&from) && !self.crashed.contains(&from) => {
                self.place(from, to, video);
            }
            Action::Glare { a, b } if alive(&a) && alive(&b) => {
                let (ua, ub) = (self.trace.devices[a], self.trace.devices[b]);
                if !self.crashed.contains(&a) {
                    self.place(a, ub, true);
                }
                if !self.crashed.contains(&b) {
                    self.place(b, ua, true);
                }
            }
            Action::Answer { dev } if alive(&dev) && !self.crashed.contains(&dev) => {
                if let Some(call_id) = self.first_call(dev, true) {
                    let _ = self.sim.command(self.devs[dev], Command::Answer { call_id, call_type: None });
                }
            }
            Action::Reject { dev, emit } if alive(&dev) && !self.crashed.contains(&dev) => {
                if let Some(call_id) = self.first_call(dev, true) {
                    let _ = self.sim.command(self.devs[dev], Command::Reject { call_id, emit });
                }
            }
            Action::Hangup { dev } if alive(&dev) && !self.crashed.contains(&dev) => {
                if let Some(call_id) = self.first_call(dev, false) {
                    let _ = self.sim.command(self.devs[dev], Command::Hangup { call_id, reason: None });
                }
            }
            Action::Join { dev } if alive(&dev) && self.trace.scenario != Scenario::OneToOne => {
                self.present.insert(dev);
                if !self.crashed.contains(&dev) {
                    self.join(dev);
                }
            }
            Action::Leave { dev } if alive(&dev) && self.trace.scenario != Scenario::OneToOne => {
                self.present.remove(&dev);
                if !self.crashed.contains(&dev) {
                    let _ = self.sim.command(
                        self.devs[dev],
                        Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() },
                    );
                }
            }
            Action::Partition { dev, ms } if alive(&dev) => self.sim.partition(self.devs[dev], ms),
            Action::SyncGap { dev, ms } if alive(&dev) => self.sim.stall_sync(self.devs[dev], ms),
            Action::Crash { dev } if alive(&dev) && !self.crashed.contains(&dev) => {
                self.crashed.insert(dev);
                self.sim.crash(self.devs[dev]);
            }
            Action::Restart { dev } if alive(&dev) => self.restart(dev),
            Action::Wait { ms } => self.advance(ms)?,
            _ => {}
        }
        self.check()
    }

    fn restart(&mut self, dev: usize) {
        self.crashed.remove(&dev);
        self.sim.restart(self.devs[dev], Config::default());
        if self.present.contains(&dev) {
            self.join(dev);
        }
    }

    fn go(&mut self) -> Result<Report, Violation> {
        self.check()?;
        for a in &self.trace.actions.clone() {
            self.act(a)?;
        }
        // The end: crashed apps come back, partitions heal, then things settle.
        for dev in self.crashed.clone() {
            self.restart(dev);
        }
        self.advance(30_000)?;
        match self.trace.scenario {
            Scenario::OneToOne => {
                for i in 0..self.devs.len() {
                    for c in self.sim.device(self.devs[i]).calls() {
                        let _ = self
                            .sim
                            .command(self.devs[i], Command::Hangup { call_id: c.call_id, reason: None });
                    }
                }
                self.check()?;
                while self.sim.next_time().is_some() && self.steps < MAX_STEPS {
                    self.sim.step();
                    self.steps += 1;
                    self.check()?;
                }
                self.checker.check_settled(&self.sim)?;
            }
            Scenario::Mesh => {
                self.advance(60_000)?;
                self.check_mesh()?;
            }
            Scenario::Sfu => {
                self.advance(60_000)?;
                self.check_keys()?;
            }
        }
        Ok(Report { steps: self.steps, checks: self.checker.checks, injected: self.sim.injected })
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation { invariant, detail, at: self.sim.now() }
    }

    /// Every pair of present devices has one connected call; everyone sees the present members.
    fn check_mesh(&self) -> Result<(), Violation> {
        let group = self.group();
        for (i, d) in self.devs.iter().enumerate() {
            let dev = self.sim.device(*d);
            let mut peers = BTreeSet::new();
            for c in dev.calls() {
                if c.state != CallState::Connected {
                    return Err(self.violation(
                        "mesh_converges",
                        format!("device {i}: call with {} is {:?}", c.peer_user, c.state),
                    ));
                }
                peers.insert(c.peer_device.map(|p| p.0).unwrap_or_default());
            }
            let others: BTreeSet<String> =
                self.present.iter().filter(|j| **j != i).map(|j| format!("D{j}")).collect();
            let expected = if self.present.contains(&i) { others.clone() } else { BTreeSet::new() };
            if peers != expected || dev.calls().len() != peers.len() {
                return Err(self.violation(
                    "mesh_converges",
                    format!("device {i}: calls with {peers:?}, expected {expected:?}"),
                ));
            }
            // Everyone present, and those a crash left behind until their membership expires.
            let members: BTreeSet<Participant> =
                dev.group_call(&group).members.into_iter().map(|m| m.participant).collect();
            let shown: BTreeSet<String> = members.iter().map(|p| p.device_id.0.clone()).collect();
            let left_behind: BTreeSet<String> = members
                .iter()
                .filter(|p| server_live(&self.sim, &group, p))
                .map(|p| p.device_id.0.clone())
                .collect();
            let missing: Vec<&String> = others.difference(&shown).collect();
            let extra: Vec<&String> =
                shown.difference(&others).filter(|d| !left_behind.contains(*d)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(self.violation(
                    "members_converge",
                    format!("device {i} sees {shown:?}, present are {others:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Every present member holds every other present member's key in use, at its index, as
    /// its app's key ring has it (the `encryption_key` events since its last join: media
    /// frames name their key index, and the LiveKit adapter installs each key at its index).
    /// The member's latest key (`MediaKeys::remote`) is not required to be it: famedly keys
    /// carry neither session nor timestamp, so after a member's restart the last key of its
    /// old process can arrive after its new membership and stay the latest (index 1 vs the new
    /// process's 0) while the ring holds the new key at 0 (sim sfu seed 2951).
    fn check_keys(&self) -> Result<(), Violation> {
        let group = self.group();
        for i in &self.present {
            let dev = self.sim.device(self.devs[*i]);
            let Some(mine) = dev.media_keys(&group) else {
                return Err(self.violation("keys_converge", format!("device {i} is not in the call")));
            };
            let since_join = dev
                .outputs
                .iter()
                .rposition(|(_, o)| {
                    matches!(
                        o,
                        Output::Event(Event::GroupCallStateChanged { state: GroupCallState::Joining, .. })
                    )
                })
                .unwrap_or(0);
            for j in self.present.iter().filter(|j| *j != i) {
                let theirs = self.sim.device(self.devs[*j]).media_keys(&group).and_then(|k| k.local);
                let held = mine
                    .remote
                    .iter()
                    .find(|(p, _, _)| p.device_id.as_str() == format!("D{j}"))
                    .map(|(_, idx, k)| (*idx, k.clone()));
                let in_ring = theirs.as_ref().and_then(|(index, _)| {
                    dev.outputs[since_join..].iter().rev().find_map(|(_, o)| match o {
                        Output::Event(Event::EncryptionKey {
                            participant,
                            local: false,
                            index: at,
                            key,
                            ..
                        }) if participant.device_id.as_str() == format!("D{j}") && at == index => {
                            Some((*at, key.clone()))
                        }
                        _ => None,
                    })
                });
                if held.is_none() || in_ring != theirs || theirs.is_none() {
                    return Err(self.violation(
                        "keys_converge",
                        format!("device {i} holds {in_ring:?} (latest {held:?}) of device {j}, whose key is {theirs:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Shrinks a failing trace: drops actions and faults while the same invariant still breaks.
/// Runs the simulation at most `budget` times. Returns the smallest trace and its violation.
pub fn shrink(trace: &Trace, violation: &Violation, budget: usize) -> (Trace, Violation) {
    let mut best = trace.clone();
    let mut best_v = violation.clone();
    let mut runs = 0;
    let try_it = |t: Trace, best: &mut Trace, best_v: &mut Violation, runs: &mut usize| -> bool {
        *runs += 1;
        match t.run() {
            Err(v) if v.invariant == best_v.invariant => {
                *best = t;
                *best_v = v;
                true
            }
            _ => false,
        }
    };
    // Chunks of actions, halving the chunk size.
    let mut chunk = best.actions.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < best.actions.len() && runs < budget {
            let mut t = best.clone();
            let end = (i + chunk).min(t.actions.len());
            t.actions.drain(i..end);
            if !try_it(t, &mut best, &mut best_v, &mut runs) {
                i += chunk;
            }
        }
        if chunk == 1 || runs >= budget {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // Faults that are not needed.
    let candidates: [fn(&mut Faults); 5] = [
        |f| f.jitter_ms = 0,
        |f| f.send_failure = 0.0,
        |f| f.duplicate = 0.0,
        |f| f.drop = 0.0,
        |f| f.clock_skew_ms = 0,
    ];
    for zero in candidates {
        if runs >= budget {
            break;
        }
        let mut t = best.clone();
        zero(&mut t.faults);
        if t.faults != best.faults {
            try_it(t, &mut best, &mut best_v, &mut runs);
        }
    }
    (best, best_v)
}
