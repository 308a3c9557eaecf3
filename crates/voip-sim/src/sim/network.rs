//! The network between the devices and the homeserver: latency, seeded jitter and duplicates,
//! failing and lost sends, partitions, sync gaps, outages, and the order a real homeserver keeps
//! (room timelines in order per device, to-device in order per sender device).

use std::cmp::Reverse;

use rand_core::RngCore;
use voip_core::{Input, RoomEvent, SendKind, SendOutcome, ToDeviceEvent};
use voip_homeserver::Delivery;

use super::{DeviceIdx, Sim};

impl Sim {
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

    /// Feeds held deliveries: runs of room and to-device events as one [`Input::SyncBatch`]
    /// each, anything else on its own, in order.
    pub(super) fn feed_batched(&mut self, d: DeviceIdx, inputs: Vec<Input>) {
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

    pub(super) fn flush_batch(
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

    /// Heals partitions and ends sync stalls that are due, delivering what waited.
    pub(super) fn heal(&mut self) {
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

    pub(super) fn deliver(&mut self, to: DeviceIdx, input: Input, delay: u64) {
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

    pub(super) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// One send through the faulty network to the homeserver, as the adapter reports it.
    pub(super) fn send(&mut self, d: DeviceIdx, txn_id: String, kind: SendKind) -> SendOutcome {
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
        let sender = self.devices[d.0].local_device().clone();
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
    pub(super) fn dispatch(&mut self, deliveries: Vec<Delivery>) {
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

    /// Fires delayed events whose time has come.
    pub(super) fn fire_delayed(&mut self) {
        let deliveries = self.hs.fire_due(self.now);
        self.dispatch(deliveries);
    }
}
