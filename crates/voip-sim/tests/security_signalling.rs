//! Authenticated signalling and per-sender bounds (docs/security.md): each test here failed
//! before its rule existed. Bare cores driven through the public `VoipMachine::handle` surface, so
//! every output (peer connections created, sends, events) can be counted.

use serde_json::{json, Value};
use voip_core::{
    CallId, CallState, CallType, Config, Counters, DeviceId, Event, Input, LocalDevice, MediaCommand, Output,
    RoomEvent, RoomId, RoomMember, RoomMembership, SendKind, Signalling, StateEvent, Timestamp,
    ToDeviceEvent, UserId, VoipMachine,
};

const ROOM: &str = "!dm:example.org";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const MALLORY: &str = "@mallory:example.org";
const SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n";

/// Bob's device, with every output kept.
struct Bob {
    voip: VoipMachine,
    now: Timestamp,
    outputs: Vec<Output>,
}

impl Bob {
    fn new() -> Bob {
        let voip =
            VoipMachine::new(Config::default(), LocalDevice::new(BOB, "BOB"), voip_core::seed_from_u64(3));
        let mut bob = Bob { voip, now: Timestamp(1_700_000_000_000), outputs: Vec::new() };
        bob.member(BOB, RoomMembership::Join);
        bob
    }

    fn feed(&mut self, input: Input) {
        // Refusals of forged input are counted; errors (malformed) are fine too. No panic.
        let _ = self.voip.handle(self.now, input);
        while let Some(o) = self.voip.poll() {
            self.outputs.push(o);
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus(ms);
        self.feed(Input::Tick);
    }

    fn member(&mut self, user: &str, membership: RoomMembership) {
        let m = RoomMember { room_id: RoomId::from(ROOM), user_id: UserId::from(user), membership };
        self.feed(Input::RoomMember(m));
    }

    fn counters(&self) -> Counters {
        self.voip.counters().clone()
    }

    fn state(&self, call: &str) -> Option<CallState> {
        self.voip.call(&CallId::from(call)).map(|c| c.state)
    }

    fn create_peers(&self) -> usize {
        self.outputs
            .iter()
            .filter(|o| matches!(o, Output::Media { command: MediaCommand::CreatePeer { .. }, .. }))
            .count()
    }

    fn sends_of(&self, event_type: &str) -> usize {
        self.outputs
            .iter()
            .filter(|o| match o {
                Output::Send(r) => match &r.kind {
                    SendKind::RoomEvent { event_type: t, .. } | SendKind::ToDevice { event_type: t, .. } => {
                        t == event_type
                    }
                    _ => false,
                },
                _ => false,
            })
            .count()
    }

    fn missed_calls(&self) -> usize {
        self.outputs.iter().filter(|o| matches!(o, Output::Event(Event::MissedCall { .. }))).count()
    }
}

fn common(call: &str) -> Value {
    json!({"call_id": call, "party_id": "P", "version": "1"})
}

fn invite_content(call: &str, lifetime: u64) -> Value {
    let mut c = common(call);
    c["lifetime"] = json!(lifetime);
    c["offer"] = json!({"type": "offer", "sdp": SDP});
    c
}

fn room(sender: &str, event_type: &str, content: Value, encrypted: bool) -> Input {
    Input::RoomEvent(RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: UserId::from(sender),
        event_type: event_type.into(),
        content,
        origin_server_ts: Timestamp(1_700_000_000_000),
        age_ms: Some(0),
        encrypted,
        sender_device: None,
    })
}

/// A to-device call event; `olm` is the device Olm vouches for (`None`: it came in clear).
fn to_device(sender: &str, olm: Option<&str>, event_type: &str, mut content: Value, seq: u64) -> Input {
    content["room_id"] = json!(ROOM);
    content["seq"] = json!(seq);
    content["device_id"] = json!(olm.unwrap_or("ALICE"));
    Input::ToDevice(ToDeviceEvent {
        sender: UserId::from(sender),
        sender_device: olm.map(DeviceId::from),
        event_type: event_type.into(),
        content,
        encrypted: olm.is_some(),
    })
}

fn to_device_invite(call: &str, olm: Option<&str>) -> Value {
    let mut c = invite_content(call, 60_000);
    c["invitee"] = json!(BOB);
    c["invitee_device_id"] = json!("BOB");
    let _ = olm;
    c
}

#[test]
fn cleartext_to_device_never_creates_changes_or_ends_a_call() {
    let mut bob = Bob::new();
    bob.member(ALICE, RoomMembership::Join);
    // In clear, even naming Alice's device (as the sender field and in the content).
    let mut clear = to_device(ALICE, None, "m.call.invite", to_device_invite("C1", None), 0);
    if let Input::ToDevice(e) = &mut clear {
        e.sender_device = Some(DeviceId::from("ALICE"));
    }
    bob.feed(clear);
    assert_eq!(bob.state("C1"), None, "a cleartext invite never rings");
    assert_eq!(bob.create_peers(), 0);
    assert_eq!(bob.counters().unauthenticated, 1);
    // Olm-encrypted from Alice's device: it rings.
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C1", Some("ALICE")), 0));
    assert_eq!(bob.state("C1"), Some(CallState::Ringing));
    // A cleartext hangup and cleartext candidates change nothing.
    bob.feed(to_device(ALICE, None, "m.call.hangup", common("C1"), 1));
    let mut cands = common("C1");
    cands["candidates"] = json!([{"candidate": "candidate:1 1 udp 1 6.6.6.6 5 typ host", "sdpMid": "0"}]);
    bob.feed(to_device(ALICE, None, "m.call.candidates", cands, 2));
    assert_eq!(bob.state("C1"), Some(CallState::Ringing));
    assert_eq!(bob.counters().unauthenticated, 3);
    // The real hangup ends it.
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.hangup", common("C1"), 1));
    assert_eq!(bob.state("C1"), None);
}

#[test]
fn our_to_device_call_events_are_always_sent_olm_encrypted() {
    let mut bob = Bob::new();
    bob.member(ALICE, RoomMembership::Join);
    let call = bob
        .voip
        .place_call(
            bob.now,
            RoomId::from(ROOM),
            UserId::from(ALICE),
            Some(DeviceId::from("ALICE")),
            CallType::Voice,
            Signalling::ToDevice,
        )
        .unwrap();
    let description =
        voip_core::media::SessionDescription { sdp_type: voip_core::media::SdpType::Offer, sdp: SDP.into() };
    bob.feed(Input::Media { call_id: call, event: voip_core::MediaEvent::LocalDescription { description } });
    let encryptions: Vec<_> = bob
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(r) => match &r.kind {
                SendKind::ToDevice { encryption, .. } => Some(*encryption),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(!encryptions.is_empty());
    assert!(encryptions.iter().all(|e| *e == voip_core::ToDeviceEncryption::Required), "{encryptions:?}");
}

#[test]
fn cleartext_call_events_in_an_encrypted_room_are_refused() {
    let mut bob = Bob::new();
    bob.feed(Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: UserId::from(ALICE),
        event_type: "m.room.encryption".into(),
        state_key: String::new(),
        content: json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        origin_server_ts: Timestamp(0),
    }));
    bob.feed(room(ALICE, "m.call.invite", invite_content("C1", 60_000), false));
    assert_eq!(bob.state("C1"), None);
    assert_eq!(bob.counters().unauthenticated, 1);
    bob.feed(room(ALICE, "m.call.invite", invite_content("C1", 60_000), true));
    assert_eq!(bob.state("C1"), Some(CallState::Ringing));
    bob.feed(room(ALICE, "m.call.hangup", common("C1"), false));
    assert_eq!(bob.state("C1"), Some(CallState::Ringing), "a cleartext hangup does not end it");
    bob.feed(room(ALICE, "m.call.hangup", common("C1"), true));
    assert_eq!(bob.state("C1"), None);
    // In an unencrypted room cleartext is all there is, and it works.
    let mut plain = Bob::new();
    plain.feed(room(ALICE, "m.call.invite", invite_content("C2", 60_000), false));
    assert_eq!(plain.state("C2"), Some(CallState::Ringing));
}

#[test]
fn to_device_invites_ring_only_between_known_joined_members() {
    let mut bob = Bob::new();
    // Alice's membership unknown: refused (not "unknown = fine").
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C1", Some("ALICE")), 0));
    assert_eq!(bob.state("C1"), None);
    bob.member(ALICE, RoomMembership::Invite);
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C2", Some("ALICE")), 0));
    assert_eq!(bob.state("C2"), None, "an invited (not joined) sender does not ring us");
    bob.member(ALICE, RoomMembership::Join);
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C3", Some("ALICE")), 0));
    assert_eq!(bob.state("C3"), Some(CallState::Ringing));
    assert_eq!(bob.counters().not_for_us, 2);
    // We left the room: nothing for it rings, room invite or to-device.
    bob.member(BOB, RoomMembership::Leave);
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C4", Some("ALICE")), 0));
    bob.feed(room(ALICE, "m.call.invite", invite_content("C5", 60_000), false));
    assert_eq!((bob.state("C4"), bob.state("C5")), (None, None));
}

#[test]
fn remote_lifetimes_are_capped_and_ages_saturate() {
    let mut bob = Bob::new();
    bob.feed(room(ALICE, "m.call.invite", invite_content("C1", u64::MAX), false));
    assert_eq!(bob.state("C1"), Some(CallState::Ringing));
    bob.advance(Config::default().max_remote_lifetime_ms + 1);
    assert_eq!(bob.state("C1"), None, "ringing ends at the 90 s cap");
    // Absurd ages and timestamps: counted as expired, no overflow.
    let mut old = room(ALICE, "m.call.invite", invite_content("C2", u64::MAX), false);
    if let Input::RoomEvent(e) = &mut old {
        e.age_ms = Some(u64::MAX);
        e.origin_server_ts = Timestamp(u64::MAX);
    }
    bob.feed(old);
    let mut future = room(ALICE, "m.call.invite", invite_content("C3", 60_000), false);
    if let Input::RoomEvent(e) = &mut future {
        e.age_ms = None;
        e.origin_server_ts = Timestamp(u64::MAX);
    }
    bob.feed(future);
    assert_eq!(bob.state("C2"), None);
}

#[test]
fn seq_cannot_overflow_and_only_moves_its_senders_queue() {
    let mut bob = Bob::new();
    bob.member(ALICE, RoomMembership::Join);
    bob.member(MALLORY, RoomMembership::Join);
    // An invite at u64::MAX (debug builds used to panic in `seq + 1`).
    bob.feed(to_device(
        ALICE,
        Some("ALICE"),
        "m.call.invite",
        to_device_invite("MAX", Some("ALICE")),
        u64::MAX,
    ));
    assert_eq!(bob.state("MAX"), Some(CallState::Ringing));
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.hangup", common("MAX"), u64::MAX));
    assert_eq!(bob.state("MAX"), None);

    // Another call: Mallory's seq must not touch Alice's queue.
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.invite", to_device_invite("C1", Some("ALICE")), 0));
    let before = bob.counters();
    for seq in [1, 2, 3, u64::MAX - 1, u64::MAX] {
        bob.feed(to_device(MALLORY, Some("MALLORYDEV"), "m.call.hangup", common("C1"), seq));
    }
    assert_eq!(bob.counters().not_from_peer, before.not_from_peer + 5);
    assert_eq!(bob.state("C1"), Some(CallState::Ringing));
    // Alice's own hangup ends her call even while her seq 1 is missing: a hangup is not held
    // behind a gap (a sender drops a call's unsent messages when it hangs up; sim mesh seed
    // 3064). Her late seq 1 changes nothing. (Held messages are ordered by seq: fixture
    // `mesh-seq-reordering-candidates`.)
    let mut cands = common("C1");
    cands["candidates"] = json!([{"candidate": "candidate:1 1 udp 1 10.0.0.1 5 typ host", "sdpMid": "0"}]);
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.hangup", common("C1"), 2));
    assert_eq!(bob.state("C1"), None, "the hangup at seq 2 does not wait for seq 1");
    let before = bob.counters();
    bob.feed(to_device(ALICE, Some("ALICE"), "m.call.candidates", cands, 1));
    assert_eq!(bob.state("C1"), None);
    assert_eq!(bob.counters().applied, before.applied, "the late seq 1 changes nothing");
}

#[test]
fn ignored_users_never_ring() {
    let mut bob = Bob::new();
    bob.feed(Input::IgnoredUsers { users: vec![UserId::from(MALLORY)] });
    bob.feed(room(MALLORY, "m.call.invite", invite_content("M1", 60_000), false));
    assert_eq!(bob.state("M1"), None);
    assert_eq!(bob.counters().ignored_users, 1);
    assert_eq!(bob.sends_of("m.call.reject") + bob.sends_of("m.call.hangup"), 0, "not even told");
    bob.feed(Input::IgnoredUsers { users: vec![] });
    bob.feed(room(MALLORY, "m.call.invite", invite_content("M2", 60_000), false));
    assert_eq!(bob.state("M2"), Some(CallState::Ringing));
}

#[test]
fn ten_thousand_invites_from_one_stranger_stay_bounded() {
    let mut bob = Bob::new();
    for n in 0..10_000 {
        bob.feed(room(MALLORY, "m.call.invite", invite_content(&format!("M{n}"), 60_000), false));
    }
    let budget = Config::default().max_new_calls_per_minute;
    assert!(bob.create_peers() <= budget, "{} peer connections", bob.create_peers());
    assert!(bob.voip.calls().len() <= 1);
    assert!(bob.counters().rate_limited >= (10_000 - budget) as u64);
    // Alice is not affected.
    bob.feed(room(ALICE, "m.call.invite", invite_content("A1", 60_000), false));
    assert_eq!(bob.state("A1"), Some(CallState::Ringing));
}

#[test]
fn a_hangup_flood_does_not_make_an_ended_call_ring_again() {
    let mut bob = Bob::new();
    bob.feed(room(ALICE, "m.call.invite", invite_content("REAL", 60_000), false));
    bob.feed(room(ALICE, "m.call.hangup", common("REAL"), false));
    assert_eq!(bob.state("REAL"), None);
    for n in 0..20_000 {
        bob.feed(room(MALLORY, "m.call.hangup", common(&format!("junk{n}")), false));
    }
    // The homeserver replays Alice's invite: it must not ring.
    bob.feed(room(ALICE, "m.call.invite", invite_content("REAL", 60_000), false));
    assert_eq!(bob.state("REAL"), None);
}

#[test]
fn one_busy_reply_per_caller_per_window() {
    let mut bob = Bob::new();
    bob.feed(room(ALICE, "m.call.invite", invite_content("A1", 60_000), false));
    bob.voip.answer(bob.now, CallId::from("A1"), None).unwrap();
    while let Some(o) = bob.voip.poll() {
        bob.outputs.push(o);
    }
    assert!(!bob.voip.can_handle_new_call());
    let before = (bob.sends_of("m.call.reject"), bob.missed_calls());
    for n in 0..100 {
        bob.feed(room(MALLORY, "m.call.invite", invite_content(&format!("M{n}"), 60_000), false));
    }
    assert_eq!(bob.sends_of("m.call.reject"), before.0 + 1, "one busy reply");
    assert_eq!(bob.missed_calls(), before.1 + 1, "one missed-call event");
    assert_eq!(bob.counters().busy + bob.counters().rate_limited, 100);
    bob.advance(30_001);
    bob.feed(room(MALLORY, "m.call.invite", invite_content("LATER", 60_000), false));
    assert!(bob.sends_of("m.call.reject") <= before.0 + 2);
}

#[test]
fn early_candidates_of_one_sender_survive_another_senders_flood() {
    let mut bob = Bob::new();
    let mut cands = common("A1");
    cands["candidates"] = json!([{"candidate": "candidate:1 1 udp 1 10.0.0.1 5 typ host", "sdpMid": "0"}]);
    bob.feed(room(ALICE, "m.call.candidates", cands, false));
    for n in 0..5_000 {
        let mut junk = common(&format!("M{n}"));
        junk["candidates"] = json!([{"candidate": "candidate:1 1 udp 1 6.6.6.6 5 typ host", "sdpMid": "0"}]);
        bob.feed(room(MALLORY, "m.call.candidates", junk, false));
    }
    bob.feed(room(ALICE, "m.call.invite", invite_content("A1", 60_000), false));
    let applied = bob.outputs.iter().any(|o| {
        matches!(o, Output::Media { call_id, command: MediaCommand::AddRemoteCandidates { .. } }
            if call_id.as_str() == "A1")
    });
    assert!(applied, "Alice's early candidates were kept and applied");
}

fn state(sender: &str, event_type: &str, key: &str, content: Value) -> Input {
    Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: UserId::from(sender),
        event_type: event_type.into(),
        state_key: key.into(),
        content,
        origin_server_ts: Timestamp(1_700_000_000_000),
    })
}

#[test]
fn memberships_count_only_under_their_senders_own_state_key() {
    let mut bob = Bob::new();
    let group = voip_core::GroupCallId::room_call(RoomId::from(ROOM));
    let rtc = "org.matrix.msc3401.call.member";
    let alice_key = "_@alice:example.org_ALICE_m.call";
    let alice_join = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "ALICE",
        "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
        "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu.x", "livekit_alias": "!dm:example.org"}],
        "created_ts": 1_700_000_000_000u64, "expires": 14_400_000});
    bob.feed(state(ALICE, rtc, alice_key, alice_join.clone()));
    assert_eq!(bob.voip.group_call(&group).members.len(), 1);
    // Mallory writes a join at Alice's key: it announces nothing (not Mallory, not Alice).
    let mut forged = alice_join;
    forged["device_id"] = json!("MALLORYDEV");
    bob.feed(state(MALLORY, rtc, alice_key, forged));
    assert_eq!(bob.counters().foreign_state_keys, 1);
    assert!(bob.voip.group_call(&group).members.iter().all(|m| m.participant.user_id.as_str() != MALLORY));
    // Decision (docs/security.md): a `{}` at another user's key is that key's leave, as for
    // every client reading the room state; counted.
    bob.feed(state(MALLORY, rtc, alice_key, json!({})));
    assert_eq!(bob.counters().foreign_state_keys, 2);
    assert!(bob.voip.group_call(&group).members.is_empty());

    // famedly: a list written under our own key by Mallory is never republished as ours.
    let famedly = "com.famedly.call.member";
    let planted = json!({"memberships": [{"application": "m.call", "scope": "m.room", "call_id": "",
        "device_id": "MALLORYDEV", "expires_ts": 1_700_000_900_000u64, "foci_active": [{"type": "mesh"}],
        "membershipID": "planted"}]});
    bob.feed(state(MALLORY, famedly, BOB, planted));
    assert_eq!(bob.counters().foreign_state_keys, 3);
    bob.feed(Input::ServerSupport { delayed_events: false });
    bob.feed(Input::Command(voip_core::Command::JoinGroupCall {
        room_id: RoomId::from(ROOM),
        call_id: String::new(),
        application: "m.call".into(),
        scope: "m.room".into(),
        dialect: voip_core::MembershipDialect::Famedly,
        focus: voip_core::Focus::Mesh,
        owned_state_keys: false,
        notify: None,
        encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
    }));
    let published: Vec<Value> = bob
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(r) => match &r.kind {
                SendKind::StateEvent { event_type, state_key, content, .. }
                    if event_type == famedly && state_key == BOB =>
                {
                    Some(content.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(!published.is_empty());
    for c in &published {
        let devices: Vec<&str> =
            c["memberships"].as_array().unwrap().iter().filter_map(|m| m["device_id"].as_str()).collect();
        assert_eq!(devices, vec!["BOB"], "{c}");
    }
}
