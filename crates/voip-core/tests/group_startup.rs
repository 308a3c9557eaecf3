//! Group calls at start-up and without media encryption (issue #20 items 3 and 4), through the
//! public driving surface: delayed leaves an earlier process of this device left behind are
//! listed and cancelled when a current join writes the same membership; SFU calls run with
//! per-participant keys or without media encryption.

use serde_json::{json, Value};
use voip_core::{
    Command, Counters, DelayedAction, Event, GroupCallId, Input, LocalDevice, MediaEncryption,
    MembershipDialect, Output, RoomId, RoomMember, RoomMembership, ScheduledDelayedEvent, SendKind,
    SendOutcome, SendRequest, StateEvent, Timestamp, ToDeviceEvent, UserId, VoipMachine,
};

const ROOM: &str = "!group:example.org";
const ME: &str = "@alice:example.org";
const T0: u64 = 1_700_000_000_000;

/// Our MatrixRTC state key in ROOM for the room's call.
const OUR_KEY: &str = "_@alice:example.org_ALICE_m.call";

const RTC: &str = "org.matrix.msc3401.call.member";
const FAMEDLY: &str = "com.famedly.call.member";

struct H {
    voip: VoipMachine,
    now: Timestamp,
}

impl H {
    fn new() -> H {
        let voip =
            VoipMachine::new(Default::default(), LocalDevice::new(ME, "ALICE"), voip_core::seed_from_u64(3));
        H { voip, now: Timestamp(T0) }
    }

    fn feed(&mut self, input: Input) -> Vec<Output> {
        self.voip.handle(self.now, input).expect("input accepted");
        std::iter::from_fn(|| self.voip.poll()).collect()
    }

    fn advance(&mut self, ms: u64) -> Vec<Output> {
        self.now = self.now.plus(ms);
        self.feed(Input::Tick)
    }

    fn join(&mut self, dialect: MembershipDialect, encryption: Option<MediaEncryption>) -> Vec<Output> {
        self.feed(Input::Command(Command::JoinGroupCall {
            room_id: RoomId::from(ROOM),
            call_id: String::new(),
            application: "m.call".into(),
            scope: "m.room".into(),
            dialect,
            focus: voip_core::Focus::Livekit {
                livekit_service_url: Some("https://sfu.example.org".into()),
                livekit_alias: Some(ROOM.into()),
            },
            owned_state_keys: false,
            notify: None,
            encryption,
        }))
    }

    fn result(&mut self, req: &SendRequest, result: SendOutcome) -> Vec<Output> {
        self.feed(Input::SendResult { id: req.id, result })
    }

    fn sent(&mut self, req: &SendRequest) -> Vec<Output> {
        self.result(req, SendOutcome::Sent { event_id: Some("$e".into()), delay_id: None })
    }

    fn scheduled(&mut self, req: &SendRequest, delay_id: &str) -> Vec<Output> {
        self.result(req, SendOutcome::Sent { event_id: None, delay_id: Some(delay_id.into()) })
    }

    fn counters(&self) -> Counters {
        self.voip.counters().clone()
    }
}

fn sends(outs: &[Output]) -> Vec<SendRequest> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn one(outs: &[Output], what: &str, f: impl Fn(&SendKind) -> bool) -> SendRequest {
    let found: Vec<SendRequest> = sends(outs).into_iter().filter(|r| f(&r.kind)).collect();
    assert_eq!(found.len(), 1, "{what}: exactly one such send in {outs:#?}");
    found.into_iter().next().expect("one")
}

fn listing(outs: &[Output]) -> SendRequest {
    one(outs, "listing", |k| matches!(k, SendKind::ListDelayedEvents))
}

fn schedule(outs: &[Output]) -> SendRequest {
    one(outs, "delayed leave", |k| matches!(k, SendKind::DelayedStateEvent { .. }))
}

fn membership(outs: &[Output]) -> SendRequest {
    one(outs, "membership", |k| matches!(k, SendKind::StateEvent { .. }))
}

fn cancels(outs: &[Output]) -> Vec<String> {
    sends(outs)
        .into_iter()
        .filter_map(|r| match r.kind {
            SendKind::UpdateDelayedEvent { delay_id, action: DelayedAction::Cancel } => Some(delay_id),
            _ => None,
        })
        .collect()
}

fn delayed(delay_id: &str, event_type: &str, state_key: &str, content: Value) -> ScheduledDelayedEvent {
    ScheduledDelayedEvent {
        delay_id: delay_id.into(),
        room_id: RoomId::from(ROOM),
        event_type: event_type.into(),
        state_key: Some(state_key.into()),
        delay_ms: Some(8_000),
        content,
    }
}

/// The listing as Synapse would give it after a restart: the earlier process's delayed leave at
/// our key, another device's at its own key, one of ours in another room, a non-membership one.
fn stale_listing() -> Vec<ScheduledDelayedEvent> {
    let mut other_room = delayed("syd_other_room", RTC, OUR_KEY, json!({}));
    other_room.room_id = RoomId::from("!elsewhere:example.org");
    vec![
        delayed("syd_old", RTC, OUR_KEY, json!({})),
        delayed("syd_phone", RTC, "_@alice:example.org_PHONE_m.call", json!({})),
        other_room,
        delayed("syd_topic", "m.room.topic", "", json!({"topic": "x"})),
    ]
}

#[test]
fn the_listing_is_asked_once_when_the_server_announces_delayed_events() {
    let mut h = H::new();
    let outs = h.feed(Input::ServerSupport { delayed_events: true });
    let list = listing(&outs);
    assert_eq!(sends(&outs).len(), 1);
    // Announced again (the simulator and some adapters repeat it): not asked again.
    assert!(sends(&h.feed(Input::ServerSupport { delayed_events: true })).is_empty());
    h.result(&list, SendOutcome::DelayedEvents { delayed_events: Vec::new() });
    assert!(sends(&h.feed(Input::ServerSupport { delayed_events: true })).is_empty());
}

#[test]
fn no_listing_without_delayed_events() {
    let mut h = H::new();
    assert!(sends(&h.feed(Input::ServerSupport { delayed_events: false })).is_empty());
}

#[test]
fn a_stale_delayed_leave_at_our_key_is_cancelled_once_our_own_is_scheduled() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    let join = h.join(MembershipDialect::MatrixRtc, Some(MediaEncryption::PerParticipantKeys));
    let ours = schedule(&join);
    // The listing arrives while our own delayed leave is on its way: it may be in the listing
    // under an id we do not know yet, so nothing is cancelled yet.
    let outs = h.result(&list, SendOutcome::DelayedEvents { delayed_events: stale_listing() });
    assert!(cancels(&outs).is_empty(), "{outs:#?}");
    // Scheduled: the membership goes out and the stale one (only it) is cancelled.
    let outs = h.scheduled(&ours, "syd_new");
    membership(&outs);
    assert_eq!(cancels(&outs), vec!["syd_old".to_owned()]);
    assert_eq!(h.counters().stale_delayed_leaves_cancelled, 1);
    // Decided once: nothing more later.
    let outs = h.advance(10_000);
    assert!(cancels(&outs).is_empty());
}

#[test]
fn our_own_delayed_leave_in_the_listing_is_never_cancelled() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    let join = h.join(MembershipDialect::MatrixRtc, None);
    let outs = h.scheduled(&schedule(&join), "syd_new");
    h.sent(&membership(&outs));
    // The server listed ours (scheduled before the listing was served) next to the stale one.
    let mut listed = stale_listing();
    listed.push(delayed("syd_new", RTC, OUR_KEY, json!({})));
    let outs = h.result(&list, SendOutcome::DelayedEvents { delayed_events: listed });
    assert_eq!(cancels(&outs), vec!["syd_old".to_owned()]);
}

#[test]
fn a_stale_delayed_leave_is_kept_until_a_join_writes_its_key() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    // No join yet: a stale leave of a call we are not in cleans up the ghost membership when it
    // fires, so it is left alone.
    let outs = h.result(&list, SendOutcome::DelayedEvents { delayed_events: stale_listing() });
    assert!(cancels(&outs).is_empty());
    h.now = h.now.plus(2_000);
    let join = h.join(MembershipDialect::MatrixRtc, None);
    assert!(cancels(&join).is_empty(), "not before our own is scheduled");
    let outs = h.scheduled(&schedule(&join), "syd_new");
    assert_eq!(cancels(&outs), vec!["syd_old".to_owned()]);
}

#[test]
fn a_stale_delayed_leave_that_has_fired_for_sure_is_forgotten() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    h.result(&list, SendOutcome::DelayedEvents { delayed_events: stale_listing() });
    // Its 8 s delay is over: it fired (and removed the earlier process's membership).
    h.advance(9_000);
    let join = h.join(MembershipDialect::MatrixRtc, None);
    let outs = h.scheduled(&schedule(&join), "syd_new");
    assert!(cancels(&outs).is_empty(), "{outs:#?}");
    assert_eq!(h.counters().stale_delayed_leaves_cancelled, 0);
}

#[test]
fn stale_leaves_are_cancelled_also_where_the_server_refuses_our_delayed_leave() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    h.result(&list, SendOutcome::DelayedEvents { delayed_events: stale_listing() });
    let join = h.join(MembershipDialect::MatrixRtc, None);
    let refused =
        SendOutcome::Failed { retryable: false, error: "no".into(), errcode: Some("M_FORBIDDEN".into()) };
    let outs = h.result(&schedule(&join), refused);
    membership(&outs);
    assert_eq!(cancels(&outs), vec!["syd_old".to_owned()]);
}

#[test]
fn a_server_without_the_listing_endpoint_is_counted_and_not_asked_again() {
    let mut h = H::new();
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    let unrecognized =
        SendOutcome::Failed { retryable: false, error: "404".into(), errcode: Some("M_UNRECOGNIZED".into()) };
    let outs = h.result(&list, unrecognized);
    assert!(sends(&outs).is_empty(), "not retried: {outs:#?}");
    assert_eq!(h.counters().delayed_event_listing_failed, 1);
    assert!(sends(&h.advance(60_000)).is_empty());
    assert!(sends(&h.feed(Input::ServerSupport { delayed_events: true })).is_empty());
    // Joins work as before.
    let join = h.join(MembershipDialect::MatrixRtc, None);
    schedule(&join);
    assert_eq!(h.counters().delayed_event_listing_failed, 1);
}

fn famedly_entry(device: &str, expires_ts: u64) -> Value {
    json!({"call_id": "", "application": "m.call", "scope": "m.room", "device_id": device,
           "expires_ts": expires_ts, "foci_active": [{"type": "livekit",
           "livekit_service_url": "https://sfu.example.org", "livekit_alias": ROOM}],
           "membershipID": format!("session-{device}")})
}

#[test]
fn famedly_stale_leaves_are_cancelled_only_when_they_are_this_devices() {
    let mut h = H::new();
    // Our phone is in the call (famedly keeps every device of a user in one list).
    h.feed(Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$list".into()),
        sender: UserId::from(ME),
        event_type: FAMEDLY.into(),
        state_key: ME.into(),
        content: json!({"memberships": [famedly_entry("PHONE", T0 + 300_000)]}),
        origin_server_ts: Timestamp(T0 - 1_000),
    }));
    let list = listing(&h.feed(Input::ServerSupport { delayed_events: true }));
    let listed = vec![
        // The phone's own delayed leave (its list without the phone): not ours.
        delayed("syd_phone", FAMEDLY, ME, json!({"memberships": []})),
        // A leave that keeps this device's entry: another device's.
        delayed("syd_keeps_us", FAMEDLY, ME, json!({"memberships": [famedly_entry("ALICE", T0)]})),
        // Our earlier process's leave: the list without us, the phone still in it.
        delayed("syd_old", FAMEDLY, ME, json!({"memberships": [famedly_entry("PHONE", T0 + 300_000)]})),
    ];
    h.result(&list, SendOutcome::DelayedEvents { delayed_events: listed });
    let join = h.join(MembershipDialect::Famedly, None);
    let outs = h.scheduled(&schedule(&join), "syd_new");
    assert_eq!(cancels(&outs), vec!["syd_old".to_owned()]);
    assert_eq!(h.counters().stale_delayed_leaves_cancelled, 1);
}

// ===== media encryption =====

fn member(user: &str) -> Input {
    Input::RoomMember(RoomMember {
        room_id: RoomId::from(ROOM),
        user_id: UserId::from(user),
        membership: RoomMembership::Join,
    })
}

fn encryption_state() -> Input {
    Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$enc".into()),
        sender: UserId::from("@bob:example.org"),
        event_type: "m.room.encryption".into(),
        state_key: String::new(),
        content: json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        origin_server_ts: Timestamp(T0 - 5_000),
    })
}

fn bob_membership() -> Input {
    Input::StateEvent(StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$bob".into()),
        sender: UserId::from("@bob:example.org"),
        event_type: RTC.into(),
        state_key: "_@bob:example.org_BOB_m.call".into(),
        content: json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "BOB",
            "membershipID": "@bob:example.org:BOB", "expires": 14_400_000,
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu.example.org",
            "livekit_alias": ROOM}]}),
        origin_server_ts: Timestamp(T0 - 100),
    })
}

fn bobs_key() -> Input {
    Input::ToDevice(ToDeviceEvent {
        sender: UserId::from("@bob:example.org"),
        sender_device: Some("BOB".into()),
        event_type: "io.element.call.encryption_keys".into(),
        content: json!({"keys": {"index": 0, "key": "MTIzNDU2Nzg5MDEyMzQ1Ng=="}, "room_id": ROOM,
            "member": {"claimed_device_id": "BOB", "id": "@bob:example.org:BOB"},
            "session": {"application": "m.call", "call_id": "", "scope": "m.room"}, "sent_ts": T0}),
        encrypted: true,
    })
}

fn key_sends(outs: &[Output]) -> usize {
    sends(outs)
        .iter()
        .filter(|r| matches!(&r.kind, SendKind::ToDevice { event_type, .. } if event_type.contains("encryption_keys")))
        .count()
}

fn encryption_keys(outs: &[Output]) -> usize {
    outs.iter().filter(|o| matches!(o, Output::Event(Event::EncryptionKey { .. }))).count()
}

fn announced(outs: &[Output]) -> Vec<MediaEncryption> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(Event::GroupCallEncryption { encryption, .. }) => Some(*encryption),
            _ => None,
        })
        .collect()
}

/// A room whose state the core was given, with bob in the call; optionally encrypted.
fn room(encrypted: bool) -> H {
    let mut h = H::new();
    h.feed(Input::ServerSupport { delayed_events: false });
    h.feed(member(ME));
    h.feed(member("@bob:example.org"));
    if encrypted {
        h.feed(encryption_state());
    }
    h.feed(bob_membership());
    h
}

fn group() -> GroupCallId {
    GroupCallId::room_call(RoomId::from(ROOM))
}

#[test]
fn an_unencrypted_room_gets_an_unencrypted_call_without_any_key_traffic() {
    let mut h = room(false);
    let mut outs = h.join(MembershipDialect::MatrixRtc, None);
    assert_eq!(announced(&outs), vec![MediaEncryption::None]);
    let confirmed = h.sent(&membership(&outs));
    outs.extend(confirmed);
    assert_eq!(key_sends(&outs), 0, "no key is sent: {outs:#?}");
    assert_eq!(encryption_keys(&outs), 0);
    assert_eq!(h.voip.group_call(&group()).encryption, Some(MediaEncryption::None));
    assert!(h.voip.media_keys(&group()).is_none());
    // Bob's key is ignored and counted.
    let before = h.counters();
    let outs = h.feed(bobs_key());
    assert!(outs.is_empty(), "{outs:#?}");
    assert_eq!(h.counters().keys_in_unencrypted_calls, before.keys_in_unencrypted_calls + 1);
    assert_eq!(h.counters().applied, before.applied);
    let outs = h.advance(60_000);
    assert_eq!(key_sends(&outs), 0);
    // Key requests of the app do nothing.
    let outs = h.feed(Input::Command(Command::RequestEncryptionKeys {
        room_id: RoomId::from(ROOM),
        call_id: String::new(),
        participants: None,
    }));
    assert_eq!(key_sends(&outs), 0);
}

#[test]
fn an_encrypted_room_gets_per_participant_keys() {
    let mut h = room(true);
    let outs = h.join(MembershipDialect::MatrixRtc, None);
    assert!(announced(&outs).is_empty(), "the usual mode is not announced");
    assert_eq!(key_sends(&outs), 1, "our key goes to bob");
    assert_eq!(encryption_keys(&outs), 1);
    assert_eq!(h.voip.group_call(&group()).encryption, Some(MediaEncryption::PerParticipantKeys));
    let outs = h.feed(bobs_key());
    assert_eq!(encryption_keys(&outs), 1, "bob's key is used");
    assert_eq!(h.counters().keys_in_unencrypted_calls, 0);
}

#[test]
fn a_room_the_core_knows_nothing_about_gets_per_participant_keys() {
    let mut h = H::new();
    h.feed(bob_membership());
    let outs = h.join(MembershipDialect::MatrixRtc, None);
    assert_eq!(key_sends(&outs), 1);
    assert_eq!(h.voip.group_call(&group()).encryption, Some(MediaEncryption::PerParticipantKeys));
}

#[test]
fn the_app_may_choose_no_encryption_in_an_encrypted_room() {
    let mut h = room(true);
    let outs = h.join(MembershipDialect::MatrixRtc, Some(MediaEncryption::None));
    assert_eq!(announced(&outs), vec![MediaEncryption::None]);
    assert_eq!(key_sends(&outs), 0);
    h.feed(bobs_key());
    assert_eq!(h.counters().keys_in_unencrypted_calls, 1);
}

#[test]
fn the_app_may_choose_keys_in_an_unencrypted_room() {
    let mut h = room(false);
    let outs = h.join(MembershipDialect::MatrixRtc, Some(MediaEncryption::PerParticipantKeys));
    assert_eq!(key_sends(&outs), 1);
}

#[test]
fn a_call_that_defaulted_to_none_gets_keys_when_the_room_turns_out_encrypted() {
    let mut h = room(false);
    let outs = h.join(MembershipDialect::MatrixRtc, None);
    assert_eq!(key_sends(&outs), 0);
    // The room's m.room.encryption arrives late (e.g. after m.room.member in the same state).
    let outs = h.feed(encryption_state());
    assert_eq!(announced(&outs), vec![MediaEncryption::PerParticipantKeys]);
    assert_eq!(key_sends(&outs), 1, "our first key goes to bob: {outs:#?}");
    assert_eq!(h.voip.group_call(&group()).encryption, Some(MediaEncryption::PerParticipantKeys));
    let outs = h.feed(bobs_key());
    assert_eq!(encryption_keys(&outs), 1);
}

#[test]
fn a_call_the_app_chose_unencrypted_stays_so() {
    let mut h = room(false);
    h.join(MembershipDialect::MatrixRtc, Some(MediaEncryption::None));
    let outs = h.feed(encryption_state());
    assert!(announced(&outs).is_empty());
    assert_eq!(key_sends(&outs), 0);
    assert_eq!(h.voip.group_call(&group()).encryption, Some(MediaEncryption::None));
}

#[test]
fn legacy_room_event_keys_in_an_unencrypted_call_are_counted() {
    let mut h = room(false);
    h.join(MembershipDialect::MatrixRtc, None);
    let outs = h.feed(Input::RoomEvent(voip_core::RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: Some("$k".into()),
        sender: UserId::from("@bob:example.org"),
        event_type: "io.element.call.encryption_keys".into(),
        content: json!({"keys": [{"index": 0, "key": "MTIzNDU2Nzg5MDEyMzQ1Ng"}], "device_id": "BOB",
            "call_id": "", "sent_ts": T0}),
        origin_server_ts: Timestamp(T0),
        age_ms: Some(0),
        encrypted: false,
        sender_device: None,
    }));
    assert!(outs.is_empty());
    assert_eq!(h.counters().keys_in_unencrypted_calls, 1);
}

#[test]
fn mesh_calls_report_no_media_encryption_mode() {
    let mut h = room(false);
    h.feed(Input::Command(Command::JoinGroupCall {
        room_id: RoomId::from(ROOM),
        call_id: String::new(),
        application: "m.call".into(),
        scope: "m.room".into(),
        dialect: MembershipDialect::Famedly,
        focus: voip_core::Focus::Mesh,
        owned_state_keys: false,
        notify: None,
        encryption: None,
    }));
    assert_eq!(h.voip.group_call(&group()).encryption, None);
}
