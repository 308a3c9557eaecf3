//! 1:1 calls end to end: real `voip_core::Voip` machines on each device, driven through the
//! adapter and a real Synapse, media faked by voip-sim's engine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::sync::Notify;
use voip_core::media::{ConnectionState, MediaEvent};
use voip_core::{
    CallId, CallState, CallType, Command, Config, EndReason, Event, Initiator, Input, LocalDevice, Output,
    RequestId, RoomId, SendKind, SendOutcome, Signalling, Timestamp, UserId,
};
use voip_matrix::MatrixAdapter;
use voip_sim::FakeMedia;

use crate::{room_with, Peer, TIMEOUT};

pub(crate) fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64)
}

pub(crate) struct State {
    pub(crate) voip: voip_core::Voip,
    media: FakeMedia,
    pub(crate) events: Vec<Event>,
    /// Calls whose media path is gone (the peer died): the fake engine's reconnects are dropped.
    cut: BTreeSet<CallId>,
    /// Every request the core asked to send: what it was (event type, or the kind).
    pub(crate) sends: BTreeMap<RequestId, String>,
    /// The last result the core received for each request.
    pub(crate) results: BTreeMap<RequestId, SendOutcome>,
}

fn label(kind: &SendKind) -> String {
    match kind {
        SendKind::RoomEvent { event_type, .. } => event_type.clone(),
        SendKind::StateEvent { event_type, .. } => format!("state {event_type}"),
        SendKind::DelayedStateEvent { event_type, .. } => format!("delayed {event_type}"),
        SendKind::UpdateDelayedEvent { action, .. } => format!("update delayed {action:?}"),
        SendKind::ListDelayedEvents => "list delayed".to_owned(),
        SendKind::ToDevice { event_type, .. } => format!("to-device {event_type}"),
    }
}

/// A device running a core: inputs from the adapter, sends to the adapter, media to a fake.
pub(crate) struct Phone {
    pub(crate) peer_user: String,
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) adapter: MatrixAdapter,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    pub(crate) _peer: Peer,
}

fn drain(st: &mut State, adapter: &MatrixAdapter) {
    while let Some(out) = st.voip.poll() {
        match out {
            Output::Send(req) => {
                st.sends.insert(req.id, label(&req.kind));
                adapter.submit(req)
            }
            Output::Media { call_id, command } => {
                for event in st.media.execute(&call_id, command) {
                    let reconnect = matches!(
                        event,
                        MediaEvent::ConnectionState {
                            state: ConnectionState::Connected | ConnectionState::Checking
                        }
                    );
                    if reconnect && st.cut.contains(&call_id) {
                        continue;
                    }
                    let input = Input::Media { call_id: call_id.clone(), event };
                    if let Err(e) = st.voip.handle(now(), input) {
                        panic!("media input rejected: {e}");
                    }
                }
            }
            Output::Event(e) => st.events.push(e),
        }
    }
}

impl Phone {
    pub(crate) fn new(peer: Peer) -> Phone {
        Phone::with_config(peer, Config::default())
    }

    pub(crate) fn with_config(mut peer: Peer, config: Config) -> Phone {
        let local = LocalDevice::new(peer.user_id(), peer.device_id());
        let seed = voip_core::seed_from_u64(now().0);
        let voip = voip_core::Voip::new(config, local, seed);
        let state = Arc::new(Mutex::new(State {
            voip,
            media: FakeMedia::new(),
            events: Vec::new(),
            cut: BTreeSet::new(),
            sends: BTreeMap::new(),
            results: BTreeMap::new(),
        }));
        let wake = Arc::new(Notify::new());
        let adapter = peer.adapter.clone();
        let mut inputs = std::mem::replace(&mut peer.inputs, tokio::sync::mpsc::channel(1).1);
        let (st, ad, wk) = (state.clone(), adapter.clone(), wake.clone());
        let task = tokio::spawn(async move {
            loop {
                let deadline = st.lock().unwrap().voip.next_deadline().map(|d| d.at);
                let sleep =
                    deadline.map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.since(now())));
                let input = tokio::select! {
                    i = inputs.recv() => match i { Some(i) => i, None => return },
                    _ = tokio::time::sleep(sleep) => Input::Tick,
                    _ = wk.notified() => continue,
                };
                let mut s = st.lock().unwrap();
                if let Input::SendResult { id, result } = &input {
                    s.results.insert(*id, result.clone());
                }
                if let Err(e) = s.voip.handle(now(), input) {
                    tracing::warn!("input rejected: {e}");
                }
                drain(&mut s, &ad);
            }
        });
        Phone { peer_user: peer.user_id(), state, adapter, wake, task, _peer: peer }
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut voip_core::Voip) -> T) -> T {
        let mut s = self.state.lock().unwrap();
        let r = f(&mut s.voip);
        drain(&mut s, &self.adapter);
        drop(s);
        self.wake.notify_one();
        r
    }

    pub(crate) fn command(&self, command: Command) {
        self.with(|v| v.handle(now(), Input::Command(command))).expect("command accepted");
    }

    /// The media path of `call` is gone (the remote process died): the engine reports
    /// `disconnected` and never reconnects, so the core's ICE timers must end the call.
    pub(crate) fn cut_media(&self, call: &CallId) {
        let mut s = self.state.lock().unwrap();
        s.cut.insert(call.clone());
        for event in s.media.force_state(call, ConnectionState::Disconnected) {
            let input = Input::Media { call_id: call.clone(), event };
            if let Err(e) = s.voip.handle(now(), input) {
                panic!("media input rejected: {e}");
            }
        }
        drain(&mut s, &self.adapter);
        drop(s);
        self.wake.notify_one();
    }

    /// Waits until every request the core made has a result, and returns them as
    /// `(what, outcome)`.
    pub(crate) async fn settled_sends(&self) -> Result<Vec<(String, SendOutcome)>> {
        voip_testkit::wait_for(&format!("{}: every send result", self.peer_user), TIMEOUT, || {
            let s = self.state.lock().unwrap();
            let done = s.sends.keys().all(|id| s.results.contains_key(id)).then(|| {
                s.sends.iter().map(|(id, what)| (what.clone(), s.results[id].clone())).collect::<Vec<_>>()
            });
            async move { done }
        })
        .await
    }

    pub(crate) fn place_call(
        &self,
        room: &str,
        invitee: &str,
        device: Option<&str>,
        signalling: Signalling,
    ) -> CallId {
        self.with(|v| {
            v.place_call(
                now(),
                RoomId::from(room),
                UserId::from(invitee),
                device.map(Into::into),
                CallType::Voice,
                signalling,
            )
        })
        .expect("place_call")
    }

    pub(crate) async fn wait<T>(&self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T> {
        voip_testkit::wait_for(&format!("{}: {what}", self.peer_user), TIMEOUT, || {
            let found = self.state.lock().unwrap().events.iter().find_map(&mut pick);
            async move { found }
        })
        .await
    }

    pub(crate) async fn incoming(&self) -> Result<CallId> {
        self.wait("incoming call", |e| match e {
            Event::IncomingCall { call_id, .. } => Some(call_id.clone()),
            _ => None,
        })
        .await
    }

    pub(crate) async fn state_reached(&self, call: &CallId, state: CallState) -> Result<()> {
        self.wait(&format!("{call} {state:?}"), |e| match e {
            Event::StateChanged { call_id, state: s } if call_id == call && *s == state => Some(()),
            _ => None,
        })
        .await
    }

    pub(crate) async fn ended(&self, call: &CallId) -> Result<(EndReason, Initiator)> {
        self.wait(&format!("{call} ended"), |e| match e {
            Event::CallEnded { call_id, reason, initiator } if call_id == call => {
                Some((reason.clone(), *initiator))
            }
            _ => None,
        })
        .await
    }

    fn connected(&self, call: &CallId) -> bool {
        self.state.lock().unwrap().media.is_connected(call)
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Alice and Bob in an encrypted DM, each with a core.
async fn dm_phones() -> Result<(Phone, Phone, String)> {
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    Ok((Phone::new(alice), Phone::new(bob), room))
}

/// Places a call from `a` to `b` and answers it; both reach `Connected`.
pub(crate) async fn connect(a: &Phone, b: &Phone, room: &str) -> Result<(CallId, CallId)> {
    let call = a.place_call(room, &b.peer_user, None, Signalling::Room);
    let incoming = b.incoming().await?;
    assert_eq!(incoming, call, "same call id on both sides");
    b.with(|v| v.answer(now(), incoming.clone(), None)).expect("answer");
    a.state_reached(&call, CallState::Connected).await?;
    b.state_reached(&incoming, CallState::Connected).await?;
    assert!(a.connected(&call) && b.connected(&incoming));
    Ok((call, incoming))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_encrypted_dm_caller_hangs_up() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let (call, _) = connect(&alice, &bob, &room).await?;
    alice.with(|v| v.hangup(now(), call.clone())).expect("hangup");
    assert_eq!(bob.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::LocalUser));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_encrypted_dm_callee_hangs_up() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let (call, _) = connect(&alice, &bob, &room).await?;
    bob.with(|v| v.hangup(now(), call.clone())).expect("hangup");
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert_eq!(bob.ended(&call).await?.1, Initiator::LocalUser);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_rejected() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let call = alice.place_call(&room, &bob.peer_user, None, Signalling::Room);
    let incoming = bob.incoming().await?;
    bob.command(Command::Reject { call_id: incoming, emit: true });
    let (reason, initiator) = alice.ended(&call).await?;
    assert_eq!((reason, initiator), (EndReason::Rejected, Initiator::Remote));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_busy_in_another_call() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let mut carol = Peer::new("carol").await?;
    let ab = room_with(&mut alice, &[&bob], true).await?;
    // Carol's DM with Bob, created before Bob's core takes his inputs.
    let cb = room_with(&mut carol, &[&bob], true).await?;
    let (alice, bob, carol) = (Phone::new(alice), Phone::new(bob), Phone::new(carol));
    connect(&alice, &bob, &ab).await?;
    let call = carol.place_call(&cb, &bob.peer_user, None, Signalling::Room);
    let (reason, initiator) = carol.ended(&call).await?;
    assert_eq!((reason, initiator), (EndReason::UserBusy, Initiator::Remote));
    bob.wait("missed busy call", |e| match e {
        Event::MissedCall { call_id, reason: EndReason::UserBusy, .. } if *call_id == call => Some(()),
        _ => None,
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_between_two_devices_of_one_user() -> Result<()> {
    let a1 = Peer::new("alice").await?;
    let a2 = Peer::device(&a1.user, Some("ALICEDEV2")).await?;
    let mut creator = a1;
    let room = room_with(&mut creator, &[], true).await?;
    let (a1, a2) = (Phone::new(creator), Phone::new(a2));
    let a2_device = a2._peer.device_id();
    let user = a1.peer_user.clone();
    let call = a1.place_call(&room, &user, Some(&a2_device), Signalling::ToDevice);
    let incoming = a2.incoming().await?;
    assert_eq!(incoming, call);
    a2.with(|v| v.answer(now(), incoming.clone(), None)).expect("answer");
    a1.state_reached(&call, CallState::Connected).await?;
    a2.state_reached(&call, CallState::Connected).await?;
    a2.with(|v| v.hangup(now(), call.clone())).expect("hangup");
    assert_eq!(a1.ended(&call).await?.1, Initiator::Remote);
    Ok(())
}

/// `Delivery::Manual`: the app syncs itself and feeds whole responses. An invite hung up within
/// the same response never rings; a live one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_batch_drops_invite_hung_up_in_same_response() -> Result<()> {
    use matrix_sdk::config::SyncSettings;
    use serde_json::json;
    use voip_core::{RequestId, SendKind, SendOutcome, SendRequest};
    use voip_matrix::{AdapterOptions, Delivery};

    let mut alice = Peer::new("alice").await?;
    let bob_user = voip_testkit::register_user("bob").await?;
    let bob_client = voip_testkit::login(&bob_user, None).await?;
    let manual = AdapterOptions { delivery: Delivery::Manual, ..AdapterOptions::default() };
    let (bob_adapter, bob_inputs) = MatrixAdapter::with_options(bob_client.clone(), manual);
    bob_client.sync_once(SyncSettings::default()).await?;
    let mut bob = Peer {
        user: bob_user,
        client: bob_client.clone(),
        adapter: bob_adapter,
        inputs: bob_inputs,
        sync: None,
    };
    let room = room_with(&mut alice, &[&bob], true).await?;

    let send = |n: u64, event_type: &str, content: serde_json::Value| SendRequest {
        id: RequestId::from_value(n),
        txn_id: format!("sb{n}-{}", voip_testkit::rig::random_hex(4)),
        kind: SendKind::RoomEvent {
            room_id: RoomId::from(room.as_str()),
            event_type: event_type.into(),
            content,
        },
    };
    let invite = |call: &str| {
        json!({"call_id": call, "party_id": "alicep", "version": "1", "lifetime": 60000,
               "offer": {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n"}})
    };
    for (n, t, c) in [
        (1, "m.call.invite", invite("gone")),
        (
            2,
            "m.call.hangup",
            json!({"call_id": "gone", "party_id": "alicep", "version": "1", "reason": "user_hangup"}),
        ),
    ] {
        let out = alice.adapter.execute(send(n, t, c)).await;
        assert!(matches!(out, SendOutcome::Sent { .. }), "{out:?}");
    }

    let mut voip = voip_core::Voip::new(
        Config::default(),
        LocalDevice::new(bob.user_id(), bob.device_id()),
        voip_core::seed_from_u64(7),
    );
    // Sync until the hangup has come down, feeding memberships (from the handlers) first.
    let has_hangup = |b: &Input| matches!(b, Input::SyncBatch { room_events, .. } if room_events.iter().any(|e| e.event_type == "m.call.hangup"));
    let mut batch = None;
    for _ in 0..30 {
        let r = bob_client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await?;
        if let Some(b) = MatrixAdapter::sync_batch(&r).filter(|b| has_hangup(b)) {
            batch = Some(b);
            break;
        }
    }
    let batch = batch.expect("hangup never arrived");
    while let Ok(input) = bob.inputs.try_recv() {
        let _ = voip.handle(now(), input);
    }
    let Input::SyncBatch { room_events, .. } = &batch else { unreachable!() };
    let types: Vec<&str> = room_events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["m.call.invite", "m.call.hangup"], "decrypted, in timeline order, one response");
    voip.handle(now(), batch)?;
    let mut events = Vec::new();
    while let Some(out) = voip.poll() {
        if let Output::Event(e) = out {
            events.push(e);
        }
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::IncomingCall { .. })),
        "hung-up invite rang: {events:?}"
    );

    // A live invite in the next response rings.
    alice.adapter.execute(send(3, "m.call.invite", invite("live"))).await;
    let mut rang = false;
    for _ in 0..30 {
        let r = bob_client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await?;
        while let Ok(input) = bob.inputs.try_recv() {
            let _ = voip.handle(now(), input);
        }
        if let Some(b) = MatrixAdapter::sync_batch(&r) {
            voip.handle(now(), b)?;
        }
        while let Some(out) = voip.poll() {
            rang |= matches!(out, Output::Event(Event::IncomingCall { ref call_id, .. }) if call_id.as_str() == "live");
        }
        if rang {
            break;
        }
    }
    assert!(rang, "live invite did not ring");
    Ok(())
}

/// Forged signalling through a real Synapse (docs/security.md): in an encrypted DM, a cleartext
/// `m.call.invite` room event and a cleartext to-device invite (both sent raw, past matrix-sdk's
/// encryption) never ring; the adapter reports them as cleartext and the core counts them. A
/// real, encrypted call between the same two still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_call_events_are_refused_in_an_encrypted_dm() -> Result<()> {
    use matrix_sdk::ruma::api::client::message::send_message_event;
    use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
    use matrix_sdk::ruma::serde::Raw;
    use matrix_sdk::ruma::to_device::DeviceIdOrAllDevices;
    use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};

    let (alice, bob, room) = dm_phones().await?;
    let client = alice._peer.client.clone();
    let room_id = OwnedRoomId::try_from(room.as_str())?;
    // Wait until Bob's core knows the room is encrypted (its m.room.encryption came through).
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n";
    let invite = |call: &str| {
        serde_json::json!({"call_id": call, "party_id": "P", "version": "1", "lifetime": 60000,
            "offer": {"type": "offer", "sdp": sdp}, "invitee": bob.peer_user, "room_id": room,
            "invitee_device_id": bob._peer.client.device_id().map(|d| d.to_string()),
            "device_id": alice._peer.client.device_id().map(|d| d.to_string()), "seq": 0})
    };
    let counters = || bob.with(|v| v.counters().clone());
    let raw = Raw::new(&invite("CLEARROOM"))?.cast_unchecked();
    let request =
        send_message_event::v3::Request::new_raw(room_id, "clear1".into(), "m.call.invite".into(), raw);
    client.send(request).await?;
    voip_testkit::wait_for("bob counts the cleartext room invite", TIMEOUT, || {
        let n = counters().unauthenticated;
        async move { (n >= 1).then_some(()) }
    })
    .await?;
    // A cleartext to-device invite naming the room and Alice's device.
    let bob_user = OwnedUserId::try_from(bob.peer_user.as_str())?;
    let bob_device: OwnedDeviceId = bob._peer.client.device_id().expect("bob's device").to_owned();
    let mut messages = std::collections::BTreeMap::new();
    let content = Raw::new(&invite("CLEARTODEVICE"))?.cast_unchecked();
    messages
        .entry(bob_user)
        .or_insert_with(std::collections::BTreeMap::new)
        .insert(DeviceIdOrAllDevices::DeviceId(bob_device), content);
    client
        .send(send_event_to_device::v3::Request::new_raw("m.call.invite".into(), "clear2".into(), messages))
        .await?;
    voip_testkit::wait_for("bob counts the cleartext to-device invite", TIMEOUT, || {
        let n = counters().unauthenticated;
        async move { (n >= 2).then_some(()) }
    })
    .await?;
    let rang = bob.state.lock().unwrap().events.iter().any(|e| matches!(e, Event::IncomingCall { .. }));
    assert!(!rang, "nothing rang");
    assert!(bob.with(|v| v.calls().is_empty()));
    // The real thing still works.
    connect(&alice, &bob, &room).await?;
    Ok(())
}
