//! An in-process homeserver for the demo, examples and app tests: rooms with joined users, room
//! timelines delivered in order to every member device (the sender's own echo included),
//! to-device messages, room state, and MSC4140 delayed state events — in wall-clock time.
//!
//! It is not a Matrix server (no federation, no encryption, no persistence): it routes the
//! core's sends the way a homeserver would, so that a [`crate::Voip`] runs unchanged against it.
//! It stands in for a homeserver plus matrix-sdk's E2EE: its rooms are encrypted rooms
//! (`m.room.encryption` in their state, so group calls get media keys by default), room events
//! arrive marked as Megolm-decrypted and to-device messages as Olm-encrypted from the sending
//! device, which is what matrix-sdk would report.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), voip::VoipError> {
//! use voip::local::LocalHomeserver;
//! let hs = LocalHomeserver::new();
//! let room = hs.create_room(&["@alice:local", "@bob:local"]);
//! let alice = hs.connect("@alice:local", "ALICE");
//! assert_eq!(alice.device.user_id.as_str(), "@alice:local");
//! assert!(room.as_str().starts_with('!'));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use voip_core::{DeviceId, Input, LocalDevice, RoomId, SendRequest, StateEvent, UserId};
use voip_homeserver::{DelayedTimer, Delivery, Homeserver};

use crate::now;
use crate::transport::Transport;

/// The in-process homeserver. Cheap to clone; clones are the same server.
#[derive(Clone, Debug, Default)]
pub struct LocalHomeserver {
    inner: Arc<Mutex<Server>>,
}

/// One device's connection: its transport and input stream, for [`crate::VoipBuilder::new`].
#[derive(Debug)]
pub struct LocalConnection {
    /// Executes the device's sends.
    pub transport: LocalTransport,
    /// Everything the server delivers to the device.
    pub inputs: mpsc::UnboundedReceiver<Input>,
    /// The device.
    pub device: LocalDevice,
}

/// A device's [`Transport`] on a [`LocalHomeserver`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    server: LocalHomeserver,
    device: LocalDevice,
}

/// The shared sans-IO homeserver (`voip-homeserver`: the simulator runs the same one) and a
/// channel per connected device.
#[derive(Debug, Default)]
struct Server {
    hs: Homeserver,
    devices: HashMap<(UserId, DeviceId), mpsc::UnboundedSender<Input>>,
}

impl Server {
    fn deliver(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            if let Some(tx) = self.devices.get(&(d.user_id, d.device_id)) {
                let _ = tx.send(d.input);
            }
        }
    }
}

impl LocalHomeserver {
    /// An empty server.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a device: it receives the server's capabilities, the membership and the state of
    /// every room its user is in, and from then on everything addressed to it. Connecting the
    /// same device again replaces the old connection (an app restart).
    pub fn connect(&self, user_id: &str, device_id: &str) -> LocalConnection {
        let device = LocalDevice::new(user_id, device_id);
        let (tx, inputs) = mpsc::unbounded_channel();
        let mut s = self.lock();
        for input in s.hs.connect(&device) {
            let _ = tx.send(input);
        }
        s.devices.insert((device.user_id.clone(), device.device_id.clone()), tx);
        LocalConnection {
            transport: LocalTransport { server: self.clone(), device: device.clone() },
            inputs,
            device,
        }
    }

    /// Drops a device's connection without anything being sent for it, as when its process is
    /// killed: the others only notice through the call protocol's timers and delayed events.
    pub fn disconnect(&self, user_id: &str, device_id: &str) {
        let (user, device) = (UserId::from(user_id), DeviceId::from(device_id));
        let mut s = self.lock();
        s.hs.disconnect(&user, &device);
        s.devices.remove(&(user, device));
    }

    /// Creates a room that all `users` have joined, and tells their connected devices.
    pub fn create_room(&self, users: &[&str]) -> RoomId {
        let mut s = self.lock();
        let users: Vec<UserId> = users.iter().map(|u| UserId::from(*u)).collect();
        // An encrypted room, as clients create them (see the module docs).
        let (room, deliveries) = s.hs.create_room(now(), &users, true);
        s.deliver(deliveries);
        room
    }

    /// `user` leaves `room`; every member device (the leaver's too) is told.
    pub fn leave_room(&self, room: &RoomId, user_id: &str) {
        let mut s = self.lock();
        let deliveries = s.hs.leave(room, &UserId::from(user_id));
        s.deliver(deliveries);
    }

    /// The current state events of one type in a room.
    pub fn room_state(&self, room: &RoomId, event_type: &str) -> Vec<StateEvent> {
        self.lock().hs.room_state(room, event_type)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Server> {
        // A panic while holding the lock cannot leave the routing tables half-updated in a way
        // that matters for delivery; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delayed event fires `delay_ms` from now unless it was restarted, cancelled or sent
    /// in between (the server then ignores this timer).
    fn fire_later(&self, timer: DelayedTimer) {
        let server = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(timer.delay_ms)).await;
            let mut s = server.lock();
            let deliveries = s.hs.fire(now(), &timer);
            if !deliveries.is_empty() {
                tracing::debug!(delay_id = %timer.delay_id, "delayed event fires");
            }
            s.deliver(deliveries);
        });
    }
}

impl Transport for LocalTransport {
    fn submit(&self, request: SendRequest) {
        let SendRequest { id, txn_id, kind, .. } = request;
        let (result, timer) = {
            let mut s = self.server.lock();
            let response = s.hs.send(now(), &self.device, &txn_id, kind);
            // What the send delivers first (the sender's own echo included), then its result.
            s.deliver(response.deliveries);
            let key = (self.device.user_id.clone(), self.device.device_id.clone());
            if let Some(tx) = s.devices.get(&key) {
                let _ = tx.send(Input::SendResult { id, result: response.outcome.clone() });
            }
            (response.outcome, response.timer)
        };
        tracing::trace!(%id, ?result, "local homeserver send");
        if let Some(timer) = timer {
            self.server.fire_later(timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voip_core::{DelayedAction, RequestId, SendKind, SendOutcome, ToDeviceEncryption, ToDeviceMessage};

    fn req(id: u64, kind: SendKind) -> SendRequest {
        SendRequest { id: RequestId::from_value(id), txn_id: format!("t{id}"), kind }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Input>) -> Vec<Input> {
        let mut v = Vec::new();
        while let Ok(i) = rx.try_recv() {
            v.push(i);
        }
        v
    }

    #[tokio::test]
    async fn room_events_reach_members_and_results_reach_the_sender() {
        let hs = LocalHomeserver::new();
        let room = hs.create_room(&["@a:l", "@b:l"]);
        let mut a = hs.connect("@a:l", "A");
        let mut b = hs.connect("@b:l", "B");
        let mut c = hs.connect("@c:l", "C");
        let joined = drain(&mut b.inputs);
        assert!(joined.contains(&Input::ServerSupport { delayed_events: true }));
        assert_eq!(joined.iter().filter(|i| matches!(i, Input::RoomMember(_))).count(), 2);
        drain(&mut a.inputs);
        drain(&mut c.inputs);

        let content = serde_json::json!({"call_id": "x"});
        let kind = SendKind::RoomEvent { room_id: room.clone(), event_type: "m.call.invite".into(), content };
        a.transport.submit(req(1, kind.clone()));
        let got_b = drain(&mut b.inputs);
        assert!(matches!(&got_b[..], [Input::RoomEvent(e)] if e.sender.as_str() == "@a:l"));
        let got_a = drain(&mut a.inputs);
        assert!(matches!(got_a[0], Input::RoomEvent(_)), "the sender sees its echo first");
        assert!(matches!(
            &got_a[1],
            Input::SendResult { result: SendOutcome::Sent { event_id: Some(_), .. }, .. }
        ));
        assert!(drain(&mut c.inputs).is_empty(), "non-members see nothing");

        c.transport.submit(req(2, kind));
        let got_c = drain(&mut c.inputs);
        assert!(matches!(&got_c[..], [Input::SendResult { result: SendOutcome::Failed { .. }, .. }]));
    }

    #[tokio::test]
    async fn to_device_and_delayed_events() {
        let hs = LocalHomeserver::new();
        let room = hs.create_room(&["@a:l", "@b:l"]);
        let mut a = hs.connect("@a:l", "A");
        let mut b = hs.connect("@b:l", "B");
        drain(&mut a.inputs);
        drain(&mut b.inputs);
        let msg = ToDeviceMessage {
            user_id: "@b:l".into(),
            device_id: "B".into(),
            content: std::sync::Arc::new(serde_json::json!({"k": 1})),
        };
        a.transport.submit(req(
            1,
            SendKind::ToDevice {
                event_type: "m.call.invite".into(),
                room_id: Some(room.clone()),
                messages: vec![msg],
                encryption: ToDeviceEncryption::Required,
            },
        ));
        let got = drain(&mut b.inputs);
        assert!(matches!(&got[..], [Input::ToDevice(e)]
            if e.sender_device.as_ref().map(|d| d.as_str()) == Some("A") && e.encrypted));

        a.transport.submit(req(
            2,
            SendKind::DelayedStateEvent {
                room_id: room.clone(),
                event_type: "m.test".into(),
                state_key: "k".into(),
                content: serde_json::json!({}),
                delay_ms: 30,
            },
        ));
        let got = drain(&mut a.inputs);
        let delay_id = got
            .iter()
            .find_map(|i| match i {
                Input::SendResult { result: SendOutcome::Sent { delay_id: Some(d), .. }, .. } => {
                    Some(d.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no delay id: {got:?}"));
        assert!(hs.room_state(&room, "m.test").is_empty());
        // Restarting pushes the deadline out; then it fires once.
        a.transport.submit(req(
            3,
            SendKind::UpdateDelayedEvent { delay_id: delay_id.clone(), action: DelayedAction::Restart },
        ));
        let ev = tokio::time::timeout(Duration::from_secs(5), b.inputs.recv()).await.expect("fires");
        assert!(matches!(ev, Some(Input::StateEvent(e)) if e.event_type == "m.test"));
        assert_eq!(hs.room_state(&room, "m.test").len(), 1);
        a.transport.submit(req(
            4,
            SendKind::UpdateDelayedEvent { delay_id: delay_id.clone(), action: DelayedAction::Cancel },
        ));
        let got = drain(&mut a.inputs);
        assert!(got.iter().any(|i| matches!(i, Input::SendResult { result: SendOutcome::Failed { errcode: Some(c), .. }, .. } if c == "M_NOT_FOUND")));
    }
}
