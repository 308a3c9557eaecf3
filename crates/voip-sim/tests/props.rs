//! Property tests over two and three simulated devices: random interleavings and timings of
//! place / answer / reject / hangup (glare included), with seeded jitter, duplicated deliveries
//! and failing sends. Invariants:
//! - every call ends once the users are done (nothing rings or hangs forever), no send is left
//!   pending, and every peer connection is closed;
//! - both ends of a call agree on how it ended (unless both ended it themselves at once);
//! - at most one live call between two devices at any time;
//! - after a call ended, its device sends nothing new for it and issues no media command for it;
//! - no input, however malformed, panics the core.
//!
//! The invariants shared with `cargo xtask sim` run through `voip_sim::invariants::Checker`
//! after every action and every final step.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};
use voip_core::{
    CallId, CallType, Command, Config, EndReason, Event, Initiator, Input, LocalDevice, Output, RoomEvent,
    RoomId, Signalling, Timestamp, ToDeviceEvent, UserId, VoipMachine,
};
use voip_sim::invariants::Checker;
use voip_sim::{DeviceIdx, Faults, Sim};

const ROOM: &str = "!room:example.org";
const USERS: [&str; 3] = ["@alice:example.org", "@bob:example.org", "@carol:example.org"];

#[derive(Clone, Debug)]
enum Action {
    Place { from: usize, to: usize, video: bool },
    Answer { dev: usize },
    Reject { dev: usize, emit: bool },
    Hangup { dev: usize },
    Wait { ms: u64 },
}

fn action(devices: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..devices, 0..devices, any::<bool>()).prop_map(|(from, to, video)| Action::Place { from, to, video }),
        3 => (0..devices).prop_map(|dev| Action::Answer { dev }),
        1 => (0..devices, any::<bool>()).prop_map(|(dev, emit)| Action::Reject { dev, emit }),
        2 => (0..devices).prop_map(|dev| Action::Hangup { dev }),
        3 => prop_oneof![0u64..50, 50u64..2_000, 2_000u64..120_000].prop_map(|ms| Action::Wait { ms }),
    ]
}

fn live_calls(sim: &Sim, d: DeviceIdx) -> Vec<CallId> {
    sim.device(d).calls().into_iter().map(|c| c.call_id).collect()
}

fn check_one_call_per_pair(sim: &Sim, n: usize) -> Result<(), TestCaseError> {
    for d in 0..n {
        let mut peers = BTreeSet::new();
        for c in sim.device(DeviceIdx(d)).calls() {
            prop_assert!(
                peers.insert(c.peer_user.clone()),
                "device {d} has two live calls with {}",
                c.peer_user
            );
        }
    }
    Ok(())
}

/// How device `d` ended each call: (reason, initiator).
fn endings(sim: &Sim, d: DeviceIdx) -> BTreeMap<CallId, (EndReason, Initiator)> {
    let mut m = BTreeMap::new();
    for (call_id, reason, initiator) in sim.ended(d) {
        let prev = m.insert(call_id.clone(), (reason, initiator));
        assert!(prev.is_none(), "CallEnded fired twice for {call_id}");
    }
    m
}

fn check_silence_after_end(sim: &Sim, d: DeviceIdx) -> Result<(), TestCaseError> {
    let mut ended_at: BTreeMap<CallId, usize> = BTreeMap::new();
    let mut seen_requests = BTreeSet::new();
    for (i, (_, out)) in sim.device(d).outputs.iter().enumerate() {
        match out {
            Output::Event(Event::CallEnded { call_id, .. }) => {
                ended_at.insert(call_id.clone(), i);
            }
            Output::Media { call_id, command } if ended_at.contains_key(call_id) => {
                prop_assert!(false, "media command {command:?} after {call_id} ended");
            }
            Output::Send(req) => {
                let first_time = seen_requests.insert(req.id);
                let call_id = match &req.kind {
                    voip_core::SendKind::RoomEvent { content, .. } => content.get("call_id"),
                    voip_core::SendKind::ToDevice { messages, .. } => {
                        messages.first().and_then(|m| m.content.get("call_id"))
                    }
                    _ => None,
                }
                .and_then(Value::as_str)
                .map(CallId::from);
                let event_type = match &req.kind {
                    voip_core::SendKind::RoomEvent { event_type, .. }
                    | voip_core::SendKind::ToDevice { event_type, .. } => event_type.as_str(),
                    _ => "",
                };
                if let Some(call_id) = call_id {
                    // Retries of earlier requests are allowed, and so is a hangup or reject
                    // released from behind a retrying send; nothing else may start.
                    let ending =
                        matches!(event_type, "m.call.hangup" | "m.call.reject" | "m.call.select_answer");
                    prop_assert!(
                        !(first_time && !ending && ended_at.contains_key(&call_id)),
                        "new send {req:?} after {call_id} ended"
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_scenario(n: usize, seed: u64, faults: Faults, actions: Vec<Action>) -> Result<(), TestCaseError> {
    // The invariants shared with `cargo xtask sim` (one live call per pair, both ends agree,
    // nothing rings forever, ...), checked after every action.
    let mut checker = Checker::new();
    let mut sim = Sim::new(seed);
    sim.faults = faults;
    let devs: Vec<DeviceIdx> =
        (0..n).map(|i| sim.add_device(USERS[i], &format!("DEV{i}"), Config::default())).collect();
    let room = sim.join(ROOM, &USERS[..n]);
    for a in actions {
        match a {
            Action::Place { from, to, video } => {
                if from != to {
                    let call_type = if video { CallType::Video } else { CallType::Voice };
                    let r =
                        sim.try_place_call(devs[from], &room, USERS[to], None, call_type, Signalling::Room);
                    // Refused only because a call with that user exists.
                    if let Err(e) = r {
                        prop_assert!(
                            matches!(
                                e,
                                voip::VoipError::Core(voip_core::Error::ApiMisuse(
                                    voip_core::ApiMisuse::AlreadyInCall { .. }
                                ))
                            ),
                            "{e}"
                        );
                    }
                }
            }
            Action::Answer { dev } => {
                let ringing: Vec<CallId> = sim
                    .device(devs[dev])
                    .calls()
                    .into_iter()
                    .filter(|c| c.state == voip_core::CallState::Ringing)
                    .map(|c| c.call_id)
                    .collect();
                if let Some(call_id) = ringing.first() {
                    sim.command(devs[dev], Command::Answer { call_id: call_id.clone(), call_type: None })
                        .unwrap();
                }
            }
            Action::Reject { dev, emit } => {
                for c in sim.device(devs[dev]).calls() {
                    if c.state == voip_core::CallState::Ringing {
                        sim.command(devs[dev], Command::Reject { call_id: c.call_id, emit }).unwrap();
                        break;
                    }
                }
            }
            Action::Hangup { dev } => {
                if let Some(call_id) = live_calls(&sim, devs[dev]).first() {
                    sim.command(devs[dev], Command::Hangup { call_id: call_id.clone(), reason: None })
                        .unwrap();
                }
            }
            Action::Wait { ms } => sim.advance(ms),
        }
        check_one_call_per_pair(&sim, n)?;
        checker.check(&sim).map_err(|v| TestCaseError::fail(v.to_string()))?;
    }
    // The users are done: everyone hangs up whatever is live, then all timers run out.
    for d in &devs {
        for call_id in live_calls(&sim, *d) {
            let _ = sim.command(*d, Command::Hangup { call_id, reason: None });
        }
    }
    for _ in 0..1_000_000 {
        if !sim.step() {
            break;
        }
        checker.check(&sim).map_err(|v| TestCaseError::fail(v.to_string()))?;
    }
    checker.check_settled(&sim).map_err(|v| TestCaseError::fail(v.to_string()))?;
    for d in &devs {
        let dev = sim.device(*d);
        prop_assert!(dev.calls().is_empty(), "live calls left: {:?}", dev.calls());
        prop_assert_eq!(dev.pending_sends(), 0);
        prop_assert_eq!(dev.media.open_peers(), 0);
        prop_assert!(dev.errors.is_empty(), "core errors: {:?}", dev.errors);
        check_silence_after_end(&sim, *d)?;
    }
    // Both ends agree on how each call ended.
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let ea = endings(&sim, devs[a]);
            let eb = endings(&sim, devs[b]);
            for (call_id, (ra, ia)) in &ea {
                let Some((rb, ib)) = eb.get(call_id) else { continue };
                let both_decided_locally = *ia != Initiator::Remote && *ib != Initiator::Remote;
                // A newer invite from the same peer overtook this call's hangup: the old call
                // was superseded, which the receiving side reports as replaced.
                let superseded = (*ra == EndReason::Replaced && *ia == Initiator::Remote)
                    || (*rb == EndReason::Replaced && *ib == Initiator::Remote);
                prop_assert!(
                    ra == rb || both_decided_locally || superseded,
                    "{call_id}: device {a} ended with {ra:?}/{ia:?}, device {b} with {rb:?}/{ib:?}"
                );
            }
        }
    }
    Ok(())
}

fn faults() -> impl Strategy<Value = Faults> {
    (0u64..300, prop_oneof![Just(0.0), 0.0f64..0.2], prop_oneof![Just(0.0), 0.0f64..0.3]).prop_map(
        |(jitter_ms, send_failure, duplicate)| Faults {
            jitter_ms,
            send_failure,
            duplicate,
            ..Faults::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn two_devices_random_interleavings(seed in any::<u64>(), faults in faults(), actions in prop::collection::vec(action(2), 1..24)) {
        run_scenario(2, seed, faults, actions)?;
    }

    #[test]
    fn three_devices_random_interleavings(seed in any::<u64>(), faults in faults(), actions in prop::collection::vec(action(3), 1..24)) {
        run_scenario(3, seed, faults, actions)?;
    }
}

// ===== arbitrary input never panics =====

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("1")),
        Just(json!("")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("call_id".to_owned()),
                    Just("party_id".to_owned()),
                    Just("version".to_owned()),
                    Just("offer".to_owned()),
                    Just("answer".to_owned()),
                    Just("sdp".to_owned()),
                    Just("type".to_owned()),
                    Just("candidates".to_owned()),
                    Just("candidate".to_owned()),
                    Just("lifetime".to_owned()),
                    Just("description".to_owned()),
                    Just("sdp_stream_metadata".to_owned()),
                    Just("selected_party_id".to_owned()),
                    Just("room_id".to_owned()),
                    ".{0,12}".prop_map(|s| s),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const TYPES: [&str; 12] = [
    "m.call.invite",
    "m.call.answer",
    "m.call.candidates",
    "m.call.select_answer",
    "m.call.reject",
    "m.call.hangup",
    "m.call.negotiate",
    "m.call.sdp_stream_metadata_changed",
    "org.matrix.call.sdp_stream_metadata_changed",
    "m.call.asserted_identity",
    "org.matrix.call.asserted_identity",
    "m.call.replaces",
];

/// A valid content of each type, to mutate one field at a time.
fn valid(event_type: &str, call_id: &str) -> Value {
    let mut v = json!({"call_id": call_id, "party_id": "P", "version": "1"});
    let extra = match event_type {
        "m.call.invite" => {
            json!({"offer": {"type": "offer", "sdp": "v=0\r\nm=audio 9 X 0\r\n"}, "lifetime": 60000})
        }
        "m.call.answer" => json!({"answer": {"type": "answer", "sdp": "v=0"}}),
        "m.call.candidates" => {
            json!({"candidates": [{"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0"}]})
        }
        "m.call.select_answer" => json!({"selected_party_id": "X"}),
        "m.call.hangup" => json!({"reason": "user_hangup"}),
        "m.call.negotiate" => json!({"description": {"type": "offer", "sdp": "v=0"}, "lifetime": 10000}),
        "m.call.replaces" => {
            json!({"replacement_id": "r", "target_user": {"id": "@x:y"}, "create_call": "n"})
        }
        "m.call.asserted_identity" | "org.matrix.call.asserted_identity" => {
            json!({"asserted_identity": {"id": "@x:y"}})
        }
        t if t.contains("sdp_stream_metadata") => {
            json!({"sdp_stream_metadata": {"s": {"purpose": "m.usermedia"}}})
        }
        _ => json!({}),
    };
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary JSON as the content of every call event type, as a room event and as a
    /// to-device event, into a machine with a live call: never a panic, and the machine keeps
    /// working (its live call can still be hung up).
    #[test]
    fn arbitrary_content_never_panics(
        t in 0usize..TYPES.len(),
        content in arb_json(),
        mutate in any::<bool>(),
        field in prop_oneof![Just("call_id"), Just("party_id"), Just("version"), Just("offer"), Just("answer"),
                             Just("candidates"), Just("lifetime"), Just("description"), Just("sdp_stream_metadata"),
                             Just("selected_party_id"), Just("reason"), Just("target_user"), Just("room_id")],
        sender in prop_oneof![Just("@bob:example.org"), Just("@alice:example.org"), Just("@mallory:example.org")],
        age in prop::option::of(any::<u64>()),
    ) {
        let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@alice:example.org", "A"), [1; 32]);
        let now = Timestamp(1_700_000_000_000);
        let call = voip.place_call(now, RoomId::from(ROOM), UserId::from("@bob:example.org"), None, CallType::Voice, Signalling::Room).unwrap();
        while voip.poll().is_some() {}
        let content = if mutate {
            let mut v = valid(TYPES[t], call.as_str());
            v[field] = content;
            v
        } else {
            content
        };
        let room_event = RoomEvent {
            room_id: RoomId::from(ROOM),
            event_id: None,
            sender: UserId::from(sender),
            event_type: TYPES[t].to_owned(),
            content: content.clone(),
            origin_server_ts: Timestamp(now.0.wrapping_sub(age.unwrap_or(0) % 1_000_000)),
            age_ms: age,
            encrypted: false,
            sender_device: None,
        };
        let _ = voip.handle(now, Input::RoomEvent(room_event.clone()));
        let to_device = ToDeviceEvent { sender: UserId::from(sender), sender_device: None, event_type: TYPES[t].to_owned(), content, encrypted: false };
        let _ = voip.handle(now, Input::ToDevice(to_device.clone()));
        let _ = voip.handle(now, Input::SyncBatch { room_events: vec![room_event], to_device: vec![to_device] });
        while voip.poll().is_some() {}
        if voip.call(&call).is_some() {
            voip.hangup(now, call.clone()).unwrap();
            prop_assert!(voip.call(&call).is_none());
        }
    }
}
