//! Crashes and restarts: a process dies with its media reports and send results in flight, its
//! peer connections fail at the other end the way a real ICE agent notices it, and a restarted
//! device gets the current state and what waited for it as one sync.

use std::cmp::Reverse;

use voip_core::media::ConnectionState;
use voip_core::{CallId, Config, Input};

use super::{DeviceIdx, Sim, ICE_DISCONNECTED_AFTER_MS, ICE_FAILED_AFTER_MS};

impl Sim {
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
    pub(super) fn fail_peer_connections_of(&mut self, d: DeviceIdx) {
        let local = self.devices[d.0].local_device().clone();
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
    pub(super) fn closed_end(&mut self, d: DeviceIdx, call_id: &CallId) {
        let local = self.devices[d.0].local_device().clone();
        self.dead_ends.entry(call_id.clone()).or_default().push((local.user_id, local.device_id));
        for e in (0..self.devices.len()).filter(|e| *e != d.0).map(DeviceIdx) {
            self.check_dead_end(e, call_id);
        }
    }

    /// If `call_id` on `e` is a call with an end that crashed (or closed its connection), its connection is dead: it never
    /// connects, and if connected it goes `Disconnected`, then `Failed`.
    pub(super) fn check_dead_end(&mut self, e: DeviceIdx, call_id: &CallId) {
        let Some(dead) = self.dead_ends.get(call_id) else { return };
        let Some(info) = self.devices[e.0].call(call_id) else { return };
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
    pub(super) fn report_ice_changes(&mut self) {
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

    /// Drops media reports and send results on their way to `d` (its process died).
    pub(super) fn kill_local_inflight(&mut self, d: DeviceIdx) {
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
}
