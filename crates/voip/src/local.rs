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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use voip_core::{
    DelayedAction, DeviceId, Input, LocalDevice, RoomEvent, RoomId, RoomMember, RoomMembership, SendKind,
    SendOutcome, SendRequest, StateEvent, ToDeviceEvent, UserId,
};

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

#[derive(Debug, Default)]
struct Server {
    next_id: u64,
    /// Joined users per room.
    rooms: BTreeMap<RoomId, BTreeSet<UserId>>,
    /// Connected devices.
    devices: HashMap<(UserId, DeviceId), mpsc::UnboundedSender<Input>>,
    state: BTreeMap<(RoomId, String, String), StateEvent>,
    delayed: HashMap<String, Delayed>,
}

#[derive(Debug)]
struct Delayed {
    room_id: RoomId,
    sender: UserId,
    event_type: String,
    state_key: String,
    content: Value,
    delay_ms: u64,
    /// Bumped by every restart, so the timer task of an older schedule does nothing.
    generation: u64,
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
        let _ = tx.send(Input::ServerSupport { delayed_events: true });
        for (room, members) in &s.rooms {
            if !members.contains(&device.user_id) {
                continue;
            }
            for m in members {
                let _ = tx.send(member(room, m, RoomMembership::Join));
            }
            for ((r, _, _), ev) in &s.state {
                if r == room {
                    let _ = tx.send(Input::StateEvent(ev.clone()));
                }
            }
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
        self.lock().devices.remove(&(UserId::from(user_id), DeviceId::from(device_id)));
    }

    /// Creates a room that all `users` have joined, and tells their connected devices.
    pub fn create_room(&self, users: &[&str]) -> RoomId {
        let mut s = self.lock();
        let room = RoomId::from(format!("!room{}:local", s.fresh()));
        let members: BTreeSet<UserId> = users.iter().map(|u| UserId::from(*u)).collect();
        s.rooms.insert(room.clone(), members.clone());
        for m in &members {
            s.deliver_to_room(&room, &member(&room, m, RoomMembership::Join));
        }
        if let Some(creator) = members.first() {
            // An encrypted room, as clients create them (see the module docs).
            let content = serde_json::json!({ "algorithm": "m.megolm.v1.aes-sha2" });
            s.apply_state(room.clone(), creator.clone(), "m.room.encryption".into(), String::new(), content);
        }
        room
    }

    /// `user` leaves `room`; every member device (the leaver's too) is told.
    pub fn leave_room(&self, room: &RoomId, user_id: &str) {
        let mut s = self.lock();
        let user = UserId::from(user_id);
        let input = member(room, &user, RoomMembership::Leave);
        s.deliver_to_room(room, &input);
        s.deliver_to_user(&user, &input);
        if let Some(members) = s.rooms.get_mut(room) {
            members.remove(&user);
        }
    }

    /// The current state events of one type in a room.
    pub fn room_state(&self, room: &RoomId, event_type: &str) -> Vec<StateEvent> {
        let s = self.lock();
        s.state.iter().filter(|((r, t, _), _)| r == room && t == event_type).map(|(_, e)| e.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Server> {
        // A panic while holding the lock cannot leave the routing tables half-updated in a way
        // that matters for delivery; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fire_later(&self, delay_id: String, generation: u64, delay_ms: u64) {
        let server = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut s = server.lock();
            if s.delayed.get(&delay_id).is_some_and(|d| d.generation == generation) {
                let d = s.delayed.remove(&delay_id).expect("checked above");
                tracing::debug!(%delay_id, "delayed event fires");
                s.apply_state(d.room_id, d.sender, d.event_type, d.state_key, d.content);
            }
        });
    }
}

fn member(room: &RoomId, user: &UserId, membership: RoomMembership) -> Input {
    Input::RoomMember(RoomMember { room_id: room.clone(), user_id: user.clone(), membership })
}

fn failed(errcode: &str, error: &str) -> SendOutcome {
    SendOutcome::Failed { retryable: false, error: error.to_owned(), errcode: Some(errcode.to_owned()) }
}

impl Server {
    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn is_member(&self, room: &RoomId, user: &UserId) -> bool {
        self.rooms.get(room).is_some_and(|m| m.contains(user))
    }

    fn deliver_to_room(&self, room: &RoomId, input: &Input) {
        let Some(members) = self.rooms.get(room) else { return };
        for ((user, _), tx) in &self.devices {
            if members.contains(user) {
                let _ = tx.send(input.clone());
            }
        }
    }

    fn deliver_to_user(&self, user_id: &UserId, input: &Input) {
        for ((user, _), tx) in &self.devices {
            if user == user_id {
                let _ = tx.send(input.clone());
            }
        }
    }

    fn apply_state(
        &mut self,
        room_id: RoomId,
        sender: UserId,
        event_type: String,
        state_key: String,
        content: Value,
    ) -> String {
        let event_id = format!("$state{}", self.fresh());
        let ev = StateEvent {
            room_id: room_id.clone(),
            event_id: Some(event_id.clone()),
            sender,
            event_type: event_type.clone(),
            state_key: state_key.clone(),
            content,
            origin_server_ts: now(),
        };
        self.deliver_to_room(&room_id, &Input::StateEvent(ev.clone()));
        self.state.insert((room_id, event_type, state_key), ev);
        event_id
    }

    /// Executes one send; returns its outcome and, for a new delayed event, the timer to start.
    fn route(&mut self, from: &LocalDevice, kind: SendKind) -> (SendOutcome, Option<(String, u64, u64)>) {
        let sent = |event_id: Option<String>| SendOutcome::Sent { event_id, delay_id: None };
        let forbidden = || failed("M_FORBIDDEN", "not a member of the room");
        match kind {
            SendKind::RoomEvent { room_id, event_type, content } => {
                if !self.is_member(&room_id, &from.user_id) {
                    return (forbidden(), None);
                }
                let event_id = format!("$event{}", self.fresh());
                let ev = RoomEvent {
                    room_id: room_id.clone(),
                    event_id: Some(event_id.clone()),
                    sender: from.user_id.clone(),
                    event_type,
                    content,
                    origin_server_ts: now(),
                    age_ms: Some(0),
                    // Delivered as matrix-sdk delivers a decrypted Megolm event.
                    encrypted: true,
                    sender_device: None,
                };
                self.deliver_to_room(&room_id, &Input::RoomEvent(ev));
                (sent(Some(event_id)), None)
            }
            SendKind::StateEvent { room_id, event_type, state_key, content } => {
                if !self.is_member(&room_id, &from.user_id) {
                    return (forbidden(), None);
                }
                let id = self.apply_state(room_id, from.user_id.clone(), event_type, state_key, content);
                (sent(Some(id)), None)
            }
            SendKind::DelayedStateEvent { room_id, event_type, state_key, content, delay_ms } => {
                if !self.is_member(&room_id, &from.user_id) {
                    return (forbidden(), None);
                }
                let delay_id = format!("delay{}", self.fresh());
                let d = Delayed {
                    room_id,
                    sender: from.user_id.clone(),
                    event_type,
                    state_key,
                    content,
                    delay_ms,
                    generation: 0,
                };
                self.delayed.insert(delay_id.clone(), d);
                let timer = (delay_id.clone(), 0, delay_ms);
                (SendOutcome::Sent { event_id: None, delay_id: Some(delay_id) }, Some(timer))
            }
            SendKind::ListDelayedEvents => {
                // MSC4140's listing: the user's pending delayed events.
                let delayed_events = self
                    .delayed
                    .iter()
                    .filter(|(_, d)| d.sender == from.user_id)
                    .map(|(id, d)| voip_core::ScheduledDelayedEvent {
                        delay_id: id.clone(),
                        room_id: d.room_id.clone(),
                        event_type: d.event_type.clone(),
                        state_key: Some(d.state_key.clone()),
                        delay_ms: Some(d.delay_ms),
                        content: d.content.clone(),
                    })
                    .collect();
                (SendOutcome::DelayedEvents { delayed_events }, None)
            }
            SendKind::UpdateDelayedEvent { delay_id, action } => {
                let Some(d) = self.delayed.get_mut(&delay_id) else {
                    return (failed("M_NOT_FOUND", "unknown delayed event"), None);
                };
                match action {
                    DelayedAction::Restart => {
                        d.generation += 1;
                        let timer = (delay_id, d.generation, d.delay_ms);
                        (sent(None), Some(timer))
                    }
                    DelayedAction::Cancel => {
                        self.delayed.remove(&delay_id);
                        (sent(None), None)
                    }
                    DelayedAction::Send => {
                        let d = self.delayed.remove(&delay_id).expect("checked above");
                        self.apply_state(d.room_id, d.sender, d.event_type, d.state_key, d.content);
                        (sent(None), None)
                    }
                }
            }
            SendKind::ToDevice { event_type, messages, .. } => {
                for m in messages {
                    let ev = Input::ToDevice(ToDeviceEvent {
                        sender: from.user_id.clone(),
                        sender_device: Some(from.device_id.clone()),
                        event_type: event_type.clone(),
                        content: std::sync::Arc::unwrap_or_clone(m.content),
                        encrypted: true,
                    });
                    if m.device_id.as_str() == "*" {
                        self.deliver_to_user(&m.user_id, &ev);
                    } else if let Some(tx) = self.devices.get(&(m.user_id, m.device_id)) {
                        let _ = tx.send(ev);
                    }
                }
                (sent(None), None)
            }
            _ => (failed("M_UNRECOGNIZED", "the in-process homeserver has no such endpoint"), None),
        }
    }
}

impl Transport for LocalTransport {
    fn submit(&self, request: SendRequest) {
        let SendRequest { id, kind, .. } = request;
        let (result, timer) = {
            let mut s = self.server.lock();
            let (result, timer) = s.route(&self.device, kind);
            if let Some(tx) = s.devices.get(&(self.device.user_id.clone(), self.device.device_id.clone())) {
                let _ = tx.send(Input::SendResult { id, result: result.clone() });
            }
            (result, timer)
        };
        tracing::trace!(%id, ?result, "local homeserver send");
        if let Some((delay_id, generation, delay_ms)) = timer {
            self.server.fire_later(delay_id, generation, delay_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voip_core::{RequestId, ToDeviceEncryption, ToDeviceMessage};

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
