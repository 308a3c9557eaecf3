//! The stepper: one virtual clock, the earliest pending thing (a delivery, a device deadline, a
//! healing partition, a delayed event, an ICE change) handled next; each device's runtime run
//! after every input and its outputs drained (sends to the homeserver, media commands to its
//! fake engine, app events to the record).

use std::cmp::Reverse;

use voip_core::{Input, Output, Timestamp};

use super::process::Out;
use super::{shift, DeviceIdx, Sim};

impl Sim {
    /// Moves the virtual clock (never back) and every device's clock with it.
    pub(super) fn set_now(&mut self, at: Timestamp) {
        self.now = self.now.max(at);
        for dev in &self.devices {
            dev.process.clock.set(shift(self.now, dev.skew_ms));
        }
    }

    /// Drains what a device's runtime put out: sends go to the homeserver, media commands to
    /// its engine, app events and refused inputs to its record.
    pub(super) fn drain(&mut self, d: DeviceIdx) {
        let now = self.now;
        for out in self.devices[d.0].process.take_outputs() {
            match out {
                Out::Media(call_id, command) => {
                    let out = Output::Media { call_id: call_id.clone(), command: command.clone() };
                    self.devices[d.0].outputs.push((now, out));
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
                Out::Send(req) => {
                    self.devices[d.0].outputs.push((now, Output::Send(req.clone())));
                    let result = self.send(d, req.txn_id, req.kind);
                    self.deliver(d, Input::SendResult { id: req.id, result }, self.latency_ms);
                }
            }
        }
        let dev = &mut self.devices[d.0];
        for event in dev.process.take_events() {
            dev.outputs.push((now, Output::Event(event.clone())));
            dev.events.push((now, event));
        }
        let refused = dev.process.voip.input_errors();
        while (dev.errors.len() as u64) < refused.count {
            let (at, error) = refused.last.clone().unwrap_or((now, String::new()));
            dev.errors.push((at, error));
        }
    }

    /// The earliest pending thing: a delivery, a device deadline, a healing partition or sync
    /// gap, a delayed event.
    pub fn next_time(&self) -> Option<Timestamp> {
        let q = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let d = self
            .devices
            .iter()
            .filter(|d| !d.offline)
            .filter_map(|d| d.process.clock.next_deadline().map(|at| shift(at, -d.skew_ms)))
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
        self.set_now(at);
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
            if self.devices[i].process.clock.next_deadline().is_some_and(|at| at <= local) {
                // The driver's timer is due: it feeds the core a tick.
                self.devices[i].process.run();
                self.drain(DeviceIdx(i));
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
        self.set_now(until);
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
}
