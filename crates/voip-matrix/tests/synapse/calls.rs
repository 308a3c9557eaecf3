//! 1:1 calls end to end: on each device the `voip` runtime's driver (the one the library ships)
//! runs the core over the adapter and a real Synapse, media faked by voip-sim's engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::sync::mpsc;
use voip::core::media::{ConnectionState, MediaCommand, MediaEvent};
use voip::MediaEngine;
use voip::{GroupCall, GroupCallBackend, GroupCallOptions, StreamExt, VoipBuilder};
use voip_core::{
    CallId, CallState, CallType, Command, Config, EndReason, Event, Initiator, Input, LocalDevice, RequestId,
    RoomId, SendKind, SendOutcome, SendRequest, Signalling, Timestamp,
};
use voip_matrix::MatrixAdapter;
use voip_sim::FakeMedia;

use crate::{room_with, Peer, TIMEOUT};

pub(crate) fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64)
}

/// What a device did, as the tests look at it: the app events, and every send with its result.
#[derive(Default)]
pub(crate) struct Log {
    pub(crate) events: Vec<Event>,
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
        SendKind::ToDevice { event_type, .. } => format!("to-device {event_type}"),
        other => format!("{other:?}").split([' ', '{']).next().unwrap_or_default().to_owned(),
    }
}

/// The adapter as the runtime's transport, noting what is sent.
struct Recording {
    adapter: MatrixAdapter,
    log: Arc<Mutex<Log>>,
}

impl voip::Transport for Recording {
    fn submit(&self, request: SendRequest) {
        self.log.lock().unwrap().sends.insert(request.id, label(&request.kind));
        self.adapter.submit(request);
    }
}

/// voip-sim's fake engine behind a real engine's channel; calls in `cut` never reconnect.
struct SimEngine {
    fake: Mutex<FakeMedia>,
    cut: Mutex<BTreeSet<CallId>>,
    events: mpsc::UnboundedSender<(CallId, MediaEvent)>,
}

impl MediaEngine for SimEngine {
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        let events = self.fake.lock().unwrap().execute(&call_id, command);
        let cut = self.cut.lock().unwrap().contains(&call_id);
        for event in events {
            let reconnect = matches!(
                event,
                MediaEvent::ConnectionState { state: ConnectionState::Connected | ConnectionState::Checking }
            );
            if !(reconnect && cut) {
                let _ = self.events.send((call_id.clone(), event));
            }
        }
    }
}

/// A device running the `voip` runtime: inputs from the adapter, sends to the adapter, media to
/// a fake. Dropping it stops the runtime (as a process that dies: nothing more is sent).
pub(crate) struct Phone {
    pub(crate) peer_user: String,
    pub(crate) voip: voip::Voip,
    pub(crate) state: Arc<Mutex<Log>>,
    pub(crate) adapter: MatrixAdapter,
    engine: Arc<SimEngine>,
    /// Inputs the test feeds besides the adapter's (whole sync responses).
    inject: mpsc::UnboundedSender<Input>,
    groups: Mutex<HashMap<String, GroupCall>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) _peer: Peer,
}

impl Phone {
    pub(crate) fn new(peer: Peer) -> Phone {
        Phone::with_config(peer, Config::default())
    }

    pub(crate) fn with_config(mut peer: Peer, config: Config) -> Phone {
        let local = LocalDevice::new(peer.user_id(), peer.device_id());
        let log = Arc::new(Mutex::new(Log::default()));
        let adapter = peer.adapter.clone();
        let mut from_adapter = std::mem::replace(&mut peer.inputs, mpsc::channel(1).1);
        // The adapter's inputs (noting send results) and the test's, into the runtime.
        let (inputs, rx) = mpsc::unbounded_channel();
        let (inject, mut injected) = mpsc::unbounded_channel::<Input>();
        let (tx, l) = (inputs.clone(), log.clone());
        let forward = tokio::spawn(async move {
            loop {
                let input = tokio::select! {
                    // What the adapter queued first (memberships before an injected batch).
                    biased;
                    i = from_adapter.recv() => i,
                    i = injected.recv() => i,
                };
                let Some(input) = input else { return };
                if let Input::SendResult { id, result } = &input {
                    l.lock().unwrap().results.insert(*id, result.clone());
                }
                if tx.send(input).is_err() {
                    return;
                }
            }
        });
        drop(inputs);
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let engine = Arc::new(SimEngine {
            fake: Mutex::new(FakeMedia::new()),
            cut: Mutex::new(BTreeSet::new()),
            events: media_tx,
        });
        let transport = Recording { adapter: adapter.clone(), log: log.clone() };
        let voip = VoipBuilder::new(local, transport, rx)
            .config(config)
            .seed(voip_core::seed_from_u64(now().0))
            .media_engine(engine.clone(), media_rx)
            .build()
            .expect("runtime");
        let mut events = voip.events();
        let l = log.clone();
        let record = tokio::spawn(async move {
            while let Some(e) = events.next().await {
                l.lock().unwrap().events.push(e);
            }
        });
        Phone {
            peer_user: peer.user_id(),
            voip,
            state: log,
            adapter,
            engine,
            inject,
            groups: Mutex::new(HashMap::new()),
            tasks: vec![forward, record],
            _peer: peer,
        }
    }

    /// Runs a core command through the runtime; it must be accepted.
    pub(crate) async fn command(&self, command: Command) {
        self.voip.command(command).await.expect("command accepted");
    }

    /// Feeds an input as if the adapter had produced it.
    pub(crate) fn inject(&self, input: Input) {
        self.inject.send(input).expect("runtime running");
    }

    /// A handle on `call`.
    pub(crate) fn call(&self, call: &CallId) -> voip::Call {
        self.voip.call(call).expect("the runtime knows the call")
    }

    /// The room's group call handle (kept, so its snapshot is published).
    pub(crate) async fn group(&self, room: &str) -> GroupCall {
        if let Some(g) = self.groups.lock().unwrap().get(room) {
            return g.clone();
        }
        // The options only matter for `enter`; tests join with raw commands.
        let options = GroupCallOptions::new(GroupCallBackend::Mesh);
        let g = self.voip.fetch_or_create_group_call(room, options).await.expect("runtime running");
        self.groups.lock().unwrap().insert(room.to_owned(), g.clone());
        g
    }

    /// The media path of `call` is gone (the remote process died): the engine reports
    /// `disconnected` and never reconnects, so the core's ICE timers must end the call.
    pub(crate) fn cut_media(&self, call: &CallId) {
        self.engine.cut.lock().unwrap().insert(call.clone());
        let events = self.engine.fake.lock().unwrap().force_state(call, ConnectionState::Disconnected);
        for event in events {
            self.engine.events.send((call.clone(), event)).expect("runtime running");
        }
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

    pub(crate) async fn place_call(
        &self,
        room: &str,
        invitee: &str,
        device: Option<&str>,
        signalling: Signalling,
    ) -> CallId {
        let call = match (device, signalling) {
            (Some(d), Signalling::ToDevice) => {
                self.voip.invite_device_to_call(room, CallType::Voice, invitee, d).await
            }
            _ => self.voip.invite_to_call(room, CallType::Voice, invitee).await,
        };
        call.expect("place_call").id().clone()
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
        self.engine.fake.lock().unwrap().is_connected(call)
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
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
    let call = a.place_call(room, &b.peer_user, None, Signalling::Room).await;
    let incoming = b.incoming().await?;
    assert_eq!(incoming, call, "same call id on both sides");
    b.call(&incoming).answer().await.expect("answer");
    a.state_reached(&call, CallState::Connected).await?;
    b.state_reached(&incoming, CallState::Connected).await?;
    assert!(a.connected(&call) && b.connected(&incoming));
    Ok((call, incoming))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_encrypted_dm_caller_hangs_up() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let (call, _) = connect(&alice, &bob, &room).await?;
    alice.call(&call).hangup().await.expect("hangup");
    assert_eq!(bob.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::LocalUser));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_encrypted_dm_callee_hangs_up() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let (call, _) = connect(&alice, &bob, &room).await?;
    bob.call(&call).hangup().await.expect("hangup");
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert_eq!(bob.ended(&call).await?.1, Initiator::LocalUser);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_rejected() -> Result<()> {
    let (alice, bob, room) = dm_phones().await?;
    let call = alice.place_call(&room, &bob.peer_user, None, Signalling::Room).await;
    let incoming = bob.incoming().await?;
    bob.command(Command::Reject { call_id: incoming, emit: true }).await;
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
    let call = carol.place_call(&cb, &bob.peer_user, None, Signalling::Room).await;
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
    let call = a1.place_call(&room, &user, Some(&a2_device), Signalling::ToDevice).await;
    let incoming = a2.incoming().await?;
    assert_eq!(incoming, call);
    a2.call(&incoming).answer().await.expect("answer");
    a1.state_reached(&call, CallState::Connected).await?;
    a2.state_reached(&call, CallState::Connected).await?;
    a2.call(&call).hangup().await.expect("hangup");
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
    let bob = Peer {
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

    // Bob's runtime; the batches are fed to it as the app would.
    let bob = Phone::new(bob);
    // Sync until the hangup has come down.
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
    let Input::SyncBatch { room_events, .. } = &batch else { unreachable!() };
    let types: Vec<&str> = room_events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["m.call.invite", "m.call.hangup"], "decrypted, in timeline order, one response");
    bob.inject(batch);

    // A live invite in the next response rings.
    alice.adapter.execute(send(3, "m.call.invite", invite("live"))).await;
    let live = |e: &Event| matches!(e, Event::IncomingCall { call_id, .. } if call_id.as_str() == "live");
    for _ in 0..30 {
        let r = bob_client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await?;
        if let Some(b) = MatrixAdapter::sync_batch(&r) {
            bob.inject(b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if bob.state.lock().unwrap().events.iter().any(live) {
            break;
        }
    }
    bob.wait("the live invite rings", |e| live(e).then_some(())).await?;
    // The runtime handles its inputs in order: the earlier batch was handled before, and its
    // hung-up invite never rang.
    let events = bob.state.lock().unwrap().events.clone();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::IncomingCall { call_id, .. } if call_id.as_str() == "gone")),
        "hung-up invite rang: {events:?}"
    );
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
    let counters = || bob.voip.counters();
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
    assert!(bob.voip.calls().is_empty());
    // The real thing still works.
    connect(&alice, &bob, &room).await?;
    Ok(())
}
