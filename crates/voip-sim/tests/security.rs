//! Security tests: forged and replayed input is refused, and every refusal is counted in the
//! core's [`voip_core::Counters`] under its cause. Through the simulator (real cores, real
//! homeserver behaviour), with Mallory as a member of the room who sends whatever she likes.

use serde_json::json;
use voip_core::wire::keys::{element_call_keys_content, famedly_keys_content, types as key_types, KeyEntry};
use voip_core::{
    CallState, CallType, Config, Counters, DeviceId, Focus, GroupCallId, Input, MembershipDialect, RoomEvent,
    RoomId, Signalling, StateEvent, Timestamp, ToDeviceEvent, UserId,
};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!sec:example.org";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const MALLORY: &str = "@mallory:example.org";

fn counters(sim: &Sim, d: DeviceIdx) -> Counters {
    sim.device(d).counters().clone()
}

/// Alice calls Bob; returns (sim, alice, bob, call id) with Bob ringing.
fn ringing() -> (Sim, DeviceIdx, DeviceIdx, voip_core::CallId) {
    let mut sim = Sim::new(7);
    let alice = sim.add_device(ALICE, "A", Config::default());
    let bob = sim.add_device(BOB, "B", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB, MALLORY]);
    let call = sim.place_call(alice, &room, BOB, None, CallType::Voice, Signalling::Room);
    sim.settle();
    assert_eq!(sim.device(bob).call(&call).map(|c| c.state), Some(CallState::Ringing));
    (sim, alice, bob, call)
}

fn room_event(sim: &Sim, sender: &str, event_type: &str, content: serde_json::Value) -> Input {
    Input::RoomEvent(RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$forged".into()),
        sender: UserId::from(sender),
        event_type: event_type.into(),
        content,
        origin_server_ts: sim.now(),
        age_ms: None,
        encrypted: false,
        sender_device: None,
    })
}

#[test]
fn spoofed_call_events_from_another_sender_are_refused_and_counted() {
    let (mut sim, _alice, bob, call) = ringing();
    let before = counters(&sim, bob);
    // Mallory forges Alice's hangup and an answer-side event for Alice's call.
    let hangup = json!({"call_id": call.as_str(), "party_id": "P", "version": "1", "reason": "user_hangup"});
    let input = room_event(&sim, MALLORY, "m.call.hangup", hangup);
    sim.feed(bob, input);
    let cands = json!({"call_id": call.as_str(), "party_id": "P", "version": "1",
                       "candidates": [{"candidate": "candidate:1 1 udp 1 6.6.6.6 5 typ host", "sdpMid": "0"}]});
    let input = room_event(&sim, MALLORY, "m.call.candidates", cands);
    sim.feed(bob, input);
    let after = counters(&sim, bob);
    assert_eq!(after.not_from_peer, before.not_from_peer + 2, "{after:?}");
    assert_eq!(after.applied, before.applied);
    assert_eq!(sim.device(bob).call(&call).map(|c| c.state), Some(CallState::Ringing), "still ringing");
}

#[test]
fn replayed_old_invites_do_not_ring_and_are_counted() {
    let (mut sim, alice, bob, call) = ringing();
    // The call ends; the homeserver (or an attacker) replays its invite.
    sim.command(alice, voip_core::Command::Hangup { call_id: call.clone(), reason: None }).unwrap();
    sim.settle();
    assert!(sim.device(bob).call(&call).is_none());
    let invite = json!({"call_id": call.as_str(), "party_id": "P", "version": "1", "lifetime": 60000,
                        "offer": {"type": "offer", "sdp": "v=0\r\nm=audio 9 X 0\r\n"}});
    let before = counters(&sim, bob);
    let input = room_event(&sim, ALICE, "m.call.invite", invite.clone());
    sim.feed(bob, input);
    assert_eq!(counters(&sim, bob).duplicates, before.duplicates + 1);
    // An old invite of a call never seen: past its lifetime, it does not ring either.
    let mut old = invite;
    old["call_id"] = json!("OLDCALL");
    let stale = Input::RoomEvent(RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$old".into()),
        sender: UserId::from(ALICE),
        event_type: "m.call.invite".into(),
        content: old,
        origin_server_ts: Timestamp(sim.now().0 - 3_600_000),
        age_ms: Some(3_600_000),
        encrypted: false,
        sender_device: None,
    });
    let before = counters(&sim, bob);
    sim.feed(bob, stale);
    assert_eq!(counters(&sim, bob).expired, before.expired + 1);
    assert!(sim.device(bob).calls().is_empty(), "nothing rings");
}

#[test]
fn oversized_events_are_refused_and_counted() {
    let (mut sim, _alice, bob, call) = ringing();
    let before = counters(&sim, bob);
    // An SDP beyond 64 KiB, and a call id beyond 255 characters.
    let huge_sdp = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
    let invite = json!({"call_id": "BIG", "party_id": "P", "version": "1", "lifetime": 60000,
                        "offer": {"type": "offer", "sdp": huge_sdp}});
    let input = room_event(&sim, ALICE, "m.call.invite", invite);
    sim.feed(bob, input);
    let long_id = "x".repeat(300);
    let hangup = json!({"call_id": long_id, "party_id": "P", "version": "1"});
    let input = room_event(&sim, ALICE, "m.call.hangup", hangup);
    sim.feed(bob, input);
    let after = counters(&sim, bob);
    assert_eq!(after.malformed, before.malformed + 2, "{after:?}");
    assert!(sim.device(bob).call(&voip_core::CallId::from("BIG")).is_none());
    assert_eq!(sim.device(bob).calls().len(), 1, "only the real call");
    assert!(sim.device(bob).call(&call).is_some());
}

/// Two devices in an SFU call with keys of the given transport.
fn sfu(dialect: MembershipDialect) -> (Sim, DeviceIdx, DeviceIdx) {
    let mut sim = Sim::new(11);
    let alice = sim.add_device(ALICE, "A", Config::default());
    let bob = sim.add_device(BOB, "B", Config::default());
    sim.join(ROOM, &[ALICE, BOB, MALLORY]);
    let focus =
        Focus::Livekit { livekit_service_url: Some("https://sfu.example.org".into()), livekit_alias: None };
    sim.join_group_call(alice, ROOM, dialect, focus.clone()).unwrap();
    sim.join_group_call(bob, ROOM, dialect, focus).unwrap();
    sim.settle();
    let group = GroupCallId::room_call(RoomId::from(ROOM));
    assert!(sim.device(bob).media_keys(&group).is_some_and(|k| k.remote.len() == 1));
    (sim, alice, bob)
}

fn to_device(sender: &str, device: &str, event_type: &str, content: serde_json::Value) -> Input {
    Input::ToDevice(ToDeviceEvent {
        sender: UserId::from(sender),
        sender_device: Some(DeviceId::from(device)),
        event_type: event_type.into(),
        content,
        encrypted: true,
    })
}

fn held_keys(sim: &Sim, d: DeviceIdx) -> Vec<(String, u32, String)> {
    let group = GroupCallId::room_call(RoomId::from(ROOM));
    let keys = sim.device(d).media_keys(&group).expect("in the call");
    keys.remote.into_iter().map(|(p, i, k)| (p.device_id.0, i, k)).collect()
}

#[test]
fn spoofed_keys_are_refused_and_counted_in_both_transports() {
    for dialect in [MembershipDialect::Famedly, MembershipDialect::MatrixRtc] {
        let (mut sim, _alice, bob) = sfu(dialect);
        let held = held_keys(&sim, bob);
        let entry = KeyEntry { index: 1, key: vec![0x66; 16] };
        let room = RoomId::from(ROOM);
        let (event_type, content) = match dialect {
            MembershipDialect::Famedly => {
                (key_types::FAMEDLY_KEYS, famedly_keys_content(&room, "", &DeviceId::from("A"), &[entry]))
            }
            _ => (
                key_types::ELEMENT_CALL_KEYS,
                element_call_keys_content(
                    &room,
                    "",
                    &DeviceId::from("A"),
                    "@alice:example.org:A",
                    &entry,
                    sim.now(),
                ),
            ),
        };
        let before = counters(&sim, bob);
        // Mallory's own device, claiming Alice's device in the content.
        sim.feed(bob, to_device(MALLORY, "M", event_type, content.clone()));
        // Alice's user but another device than the member's (the Olm-verified device wins).
        sim.feed(bob, to_device(ALICE, "EVIL", event_type, content.clone()));
        // Sent in the clear.
        let mut clear = to_device(ALICE, "A", event_type, content);
        if let Input::ToDevice(e) = &mut clear {
            e.encrypted = false;
        }
        sim.feed(bob, clear);
        sim.settle();
        let after = counters(&sim, bob);
        let refused = (after.not_from_peer + after.malformed + after.not_for_us)
            - (before.not_from_peer + before.malformed + before.not_for_us);
        assert_eq!(refused, 3, "{dialect:?}: {after:?}");
        assert_eq!(after.applied, before.applied, "{dialect:?}");
        assert_eq!(held_keys(&sim, bob), held, "{dialect:?}: keys unchanged");
    }
}

#[test]
fn keys_for_another_room_are_refused_and_counted() {
    let (mut sim, _alice, bob) = sfu(MembershipDialect::Famedly);
    let held = held_keys(&sim, bob);
    let entry = KeyEntry { index: 2, key: vec![0x42; 16] };
    let other = RoomId::from("!other:example.org");
    let content = famedly_keys_content(&other, "", &DeviceId::from("A"), &[entry]);
    let before = counters(&sim, bob);
    sim.feed(bob, to_device(ALICE, "A", key_types::FAMEDLY_KEYS, content));
    let after = counters(&sim, bob);
    assert_eq!(after.not_for_us, before.not_for_us + 1, "{after:?}");
    assert_eq!(held_keys(&sim, bob), held);
}

#[test]
fn membership_whose_state_key_claims_another_user_never_counts_as_that_user() {
    let (mut sim, _alice, bob) = sfu(MembershipDialect::MatrixRtc);
    let group = GroupCallId::room_call(RoomId::from(ROOM));
    let members_before = sim.device(bob).group_call(&group).members.len();
    let before = counters(&sim, bob);
    // Mallory writes a membership under Alice's state key, for a device "EVIL".
    let content = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "EVIL",
                         "expires": 3_600_000, "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                         "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://evil.example.org"}]});
    let forged = Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$forged".into()),
        sender: UserId::from(MALLORY),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: "_@alice:example.org_EVIL_m.call".into(),
        content,
        origin_server_ts: sim.now(),
    });
    sim.feed(bob, forged);
    sim.settle();
    let members = sim.device(bob).group_call(&group).members;
    assert!(
        !members
            .iter()
            .any(|m| m.participant.user_id.as_str() == ALICE && m.participant.device_id.as_str() == "EVIL"),
        "the state key's user is never taken as the member: {members:?}"
    );
    // Whatever the core makes of it, it is refused or attributed to Mallory, the sender.
    let after = counters(&sim, bob);
    let counted = (after.not_from_peer + after.malformed + after.not_for_us + after.applied)
        - (before.not_from_peer + before.malformed + before.not_for_us + before.applied);
    assert_eq!(counted, 1, "{after:?}");
    assert!(members.len() <= members_before + 1);
    assert!(members
        .iter()
        .all(|m| m.participant.user_id.as_str() != ALICE || m.participant.device_id.as_str() == "A"));
}
