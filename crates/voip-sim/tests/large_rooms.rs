//! Large rooms (issue #15): the membership store's indexes seen through the public API. A room
//! member event for a user without a call membership does nothing at all (not even in a call we
//! joined), one with a call membership changes exactly that member, expired memberships leave at
//! their timer and are then gone, both dialects, and one sender flooding sticky memberships
//! cannot push out anyone else's.

use serde_json::{json, Value};
use voip_core::{
    Command, Config, Event, Focus, GroupCallId, Input, LocalDevice, MembershipDialect, Output, Participant,
    RoomEvent, RoomId, RoomMember, RoomMembership, StateEvent, TimerKind, Timestamp, UserId, VoipMachine,
};

const ROOM: &str = "!large:example.org";
const T0: Timestamp = Timestamp(1_700_000_000_000);

fn group() -> GroupCallId {
    GroupCallId::room_call(RoomId::from(ROOM))
}

fn user(i: usize) -> UserId {
    UserId::from(format!("@u{i}:example.org").as_str())
}

fn rtc_member(i: usize, expires: u64) -> StateEvent {
    let u = user(i);
    StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: u.clone(),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: format!("_{u}_D{i}_m.call"),
        content: json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": format!("D{i}"),
            "expires": expires, "created_ts": T0.0,
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu.example.org"}]}),
        origin_server_ts: T0,
    }
}

fn famedly_list(i: usize, devices: &[(&str, u64)]) -> StateEvent {
    let u = user(i);
    let list: Vec<Value> = devices
        .iter()
        .map(|(d, expires_ts)| {
            json!({"call_id": "", "application": "m.call", "scope": "m.room", "device_id": d,
                   "foci_active": [{"type": "livekit", "livekit_service_url": "https://sfu.example.org"}],
                   "membershipID": format!("S{d}"), "expires_ts": expires_ts})
        })
        .collect();
    StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: u.clone(),
        event_type: "com.famedly.call.member".into(),
        state_key: u.to_string(),
        content: json!({ "memberships": list }),
        origin_server_ts: T0,
    }
}

fn room_member(i: usize, membership: RoomMembership) -> Input {
    Input::RoomMember(RoomMember { room_id: RoomId::from(ROOM), user_id: user(i), membership })
}

fn machine() -> VoipMachine {
    VoipMachine::new(Config::default(), LocalDevice::new("@me:example.org", "ME"), [5; 32])
}

fn drain(voip: &mut VoipMachine) -> Vec<Output> {
    std::iter::from_fn(|| voip.poll()).collect()
}

/// The `participants_changed` events among outputs: (joined, left, count).
fn changes(outputs: &[Output]) -> Vec<(Vec<Participant>, Vec<Participant>, usize)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::ParticipantsChanged { joined, left, count, .. }) => {
                Some((joined.clone(), left.clone(), *count))
            }
            _ => None,
        })
        .collect()
}

fn ids(p: &[Participant]) -> Vec<(String, String)> {
    p.iter().map(|p| (p.user_id.to_string(), p.device_id.to_string())).collect()
}

fn join_livekit(voip: &mut VoipMachine) {
    voip.handle(
        T0,
        Input::Command(Command::JoinGroupCall {
            room_id: RoomId::from(ROOM),
            call_id: String::new(),
            application: "m.call".into(),
            scope: "m.room".into(),
            dialect: MembershipDialect::MatrixRtc,
            focus: Focus::Livekit {
                livekit_service_url: Some("https://sfu.example.org".into()),
                livekit_alias: None,
            },
            owned_state_keys: false,
            notify: None,
            encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
        }),
    )
    .expect("join");
}

#[test]
fn a_member_event_of_a_user_without_call_membership_does_nothing() {
    for joined in [false, true] {
        let mut voip = machine();
        if joined {
            join_livekit(&mut voip);
            drain(&mut voip);
            // Before any membership: the group is not looked at (it would start its keys).
            voip.handle(T0, room_member(99, RoomMembership::Join)).unwrap();
            let out = drain(&mut voip);
            assert!(out.is_empty(), "a non-member's join touched the group: {out:?}");
        }
        for i in 0..20 {
            voip.handle(T0, Input::StateEvent(rtc_member(i, 3_600_000))).unwrap();
        }
        for i in 0..100 {
            voip.handle(T0, room_member(i, RoomMembership::Join)).unwrap();
        }
        drain(&mut voip);
        let deadline = voip.next_deadline();
        // Users 20.. have no call membership: joining, leaving, being banned changes nothing.
        for m in [
            RoomMembership::Leave,
            RoomMembership::Join,
            RoomMembership::Ban,
            RoomMembership::Invite,
            RoomMembership::Join,
        ] {
            voip.handle(T0, room_member(50, m)).unwrap();
            let out = drain(&mut voip);
            assert!(out.is_empty(), "joined {joined}: {m:?} of a non-member produced {out:?}");
        }
        assert_eq!(voip.next_deadline(), deadline);
        assert_eq!(voip.group_call(&group()).members.len(), 20);
        // A call member leaving the room: exactly that member leaves, and joins again.
        voip.handle(T0, room_member(7, RoomMembership::Leave)).unwrap();
        let c = changes(&drain(&mut voip));
        assert_eq!(c.len(), 1, "joined {joined}");
        assert!(c[0].0.is_empty());
        assert_eq!(ids(&c[0].1), [(user(7).to_string(), "D7".to_string())]);
        assert_eq!(c[0].2, 19);
        // Invited is not joined either: no change.
        voip.handle(T0, room_member(7, RoomMembership::Invite)).unwrap();
        assert!(changes(&drain(&mut voip)).is_empty());
        voip.handle(T0, room_member(7, RoomMembership::Join)).unwrap();
        let c = changes(&drain(&mut voip));
        assert_eq!(c.len(), 1);
        assert_eq!(ids(&c[0].0), [(user(7).to_string(), "D7".to_string())]);
        assert_eq!(c[0].2, 20);
    }
}

#[test]
fn expired_memberships_leave_at_their_timer_and_are_gone_afterwards() {
    let mut voip = machine();
    voip.handle(T0, Input::StateEvent(rtc_member(1, 60_000))).unwrap();
    voip.handle(T0, Input::StateEvent(rtc_member(2, 120_000))).unwrap();
    // famedly: two devices in one list, expiring at different times.
    voip.handle(T0, Input::StateEvent(famedly_list(3, &[("A", T0.0 + 90_000), ("B", T0.0 + 150_000)])))
        .unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(c.last().map(|c| c.2), Some(4));
    let mut left = Vec::new();
    let mut seen = 0;
    while let Some(d) = voip.next_deadline() {
        if d.reason != TimerKind::MembershipExpiry {
            // Only expiries are due in an observed call.
            panic!("unexpected deadline {d:?}");
        }
        seen += 1;
        assert!(seen <= 4, "every expiry fires once");
        voip.handle(d.at, Input::Tick).unwrap();
        for (j, l, _) in changes(&drain(&mut voip)) {
            assert!(j.is_empty());
            left.extend(ids(&l));
        }
    }
    assert_eq!(
        left,
        [
            (user(1).to_string(), "D1".into()),
            (user(3).to_string(), "A".into()),
            (user(2).to_string(), "D2".into()),
            (user(3).to_string(), "B".into())
        ],
        "each leaves at its own expiry"
    );
    assert!(voip.group_call(&group()).members.is_empty());
    // A membership that arrives already expired counts for nothing and sets no timer.
    voip.handle(T0.plus(200_000), Input::StateEvent(rtc_member(4, 60_000))).unwrap();
    assert!(changes(&drain(&mut voip)).is_empty());
    assert!(voip.next_deadline().is_none());
}

#[test]
fn leave_and_rejoin_in_both_dialects() {
    let mut voip = machine();
    voip.handle(T0, Input::StateEvent(rtc_member(1, 3_600_000))).unwrap();
    voip.handle(T0, Input::StateEvent(famedly_list(2, &[("A", T0.0 + 3_600_000), ("B", T0.0 + 3_600_000)])))
        .unwrap();
    drain(&mut voip);
    // famedly: the list loses one device.
    voip.handle(T0, Input::StateEvent(famedly_list(2, &[("B", T0.0 + 3_600_000)]))).unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(c.len(), 1);
    assert_eq!(ids(&c[0].1), [(user(2).to_string(), "A".into())]);
    assert!(c[0].0.is_empty());
    // MatrixRTC: `{}` is a leave, a new membership a rejoin.
    let leave = StateEvent { content: json!({}), ..rtc_member(1, 3_600_000) };
    voip.handle(T0, Input::StateEvent(leave)).unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(ids(&c[0].1), [(user(1).to_string(), "D1".into())]);
    voip.handle(T0.plus(10), Input::StateEvent(rtc_member(1, 3_600_000))).unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(ids(&c[0].0), [(user(1).to_string(), "D1".into())]);
    assert_eq!(c[0].2, 2);
    // The same content again changes nothing.
    voip.handle(T0.plus(20), Input::StateEvent(rtc_member(1, 3_600_000))).unwrap();
    assert!(changes(&drain(&mut voip)).is_empty());
}

#[test]
fn a_sender_flooding_sticky_memberships_cannot_push_out_another() {
    // Built from JSON as a client hands it over (fields it does not name take their defaults).
    let sticky = |sender: &str, device: &str, key: &str| -> RoomEvent {
        serde_json::from_value(json!({
            "room_id": ROOM, "sender": sender, "type": "org.matrix.msc4143.rtc.member",
            "origin_server_ts": T0.0, "age_ms": 0,
            "content": {"slot_id": "m.call#ROOM", "application": {"type": "m.call"}, "sticky_key": key,
                "member": {"user_id": sender, "device_id": device, "id": format!("{sender}:{device}")},
                "rtc_transports": [{"type": "livekit", "livekit_service_url": "https://sfu.example.org"}]}
        }))
        .expect("a room event")
    };
    let mut voip = machine();
    voip.handle(T0, Input::RoomEvent(sticky("@alice:example.org", "A", "a"))).unwrap();
    for i in 0..1000 {
        voip.handle(T0, Input::RoomEvent(sticky("@mallory:example.org", &format!("M{i}"), &format!("k{i}"))))
            .unwrap();
    }
    drain(&mut voip);
    let members = voip.group_call(&group()).members;
    let mallory = members.iter().filter(|m| m.participant.user_id.as_str() == "@mallory:example.org").count();
    assert_eq!(mallory, 64, "one sender holds at most 64 membership keys in a room");
    assert!(members.iter().any(|m| m.participant.user_id.as_str() == "@alice:example.org"));
    assert_eq!(voip.counters().memberships_over_limit, 1000 - 64);
    // Another sender is not held back by mallory's flood.
    voip.handle(T0, Input::RoomEvent(sticky("@bob:example.org", "B", "b"))).unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(ids(&c[0].0), [("@bob:example.org".to_string(), "B".to_string())]);
}

#[test]
fn a_room_state_batch_ends_where_one_by_one_ends_with_one_report_per_group() {
    let state: Vec<StateEvent> = (0..50)
        .map(|i| rtc_member(i, 3_600_000))
        .chain((50..60).map(|i| famedly_list(i, &[("A", T0.0 + 3_600_000), ("B", T0.0 + 3_600_000)])))
        .collect();
    // 0..40 joined, 40..45 left the room, 60..100 joined without a call membership.
    let members: Vec<RoomMember> = (0..100)
        .map(|i| RoomMember {
            room_id: RoomId::from(ROOM),
            user_id: user(i),
            membership: if (40..45).contains(&i) { RoomMembership::Leave } else { RoomMembership::Join },
        })
        .collect();
    let mut one = machine();
    let mut batch = machine();
    for voip in [&mut one, &mut batch] {
        join_livekit(voip);
        drain(voip);
    }
    for m in members.clone() {
        one.handle(T0, Input::RoomMember(m)).unwrap();
    }
    for e in state.clone() {
        one.handle(T0, Input::StateEvent(e)).unwrap();
    }
    let one_reports = changes(&drain(&mut one));
    batch.handle(T0, Input::RoomState { members, state }).unwrap();
    let out = drain(&mut batch);
    let reports = changes(&out);
    assert!(one_reports.len() > 1);
    assert_eq!(reports.len(), 1, "one participants_changed for the group");
    // The call's own rules (MatrixRTC): the famedly lists are another dialect.
    assert_eq!(reports[0].2, 45);
    assert!(reports[0].1.is_empty());
    let members = |v: &VoipMachine| -> Vec<Participant> {
        v.group_call(&group()).members.into_iter().map(|m| m.participant).collect()
    };
    assert_eq!(members(&batch), members(&one));
    assert_eq!(one_reports.last().map(|r| r.2), Some(45));
    assert_eq!(batch.counters().applied, one.counters().applied);
    // Malformed state events in a batch are skipped and counted, the rest applies.
    let mut bad = famedly_list(70, &[]);
    bad.content = json!({"memberships": 7});
    let malformed = batch.counters().malformed;
    batch
        .handle(
            T0,
            Input::RoomState {
                members: vec![RoomMember {
                    room_id: RoomId::from(ROOM),
                    user_id: user(71),
                    membership: RoomMembership::Join,
                }],
                state: vec![bad, rtc_member(71, 3_600_000)],
            },
        )
        .unwrap();
    assert_eq!(batch.counters().malformed, malformed + 1);
    let c = changes(&drain(&mut batch));
    assert_eq!(ids(&c[0].0), [(user(71).to_string(), "D71".to_string())]);
}

/// In a joined call of 3 000 members, one member leaving (the room, or the call) and coming back
/// reports exactly that member: the event's size follows the change, not the call, and the
/// whole list is still there for the asking (`VoipMachine::participants`). The key manager sees the
/// same change: the rotation after the leave goes to the 2 999 others, the rejoin gets a key.
#[test]
fn one_change_in_a_large_call_is_reported_as_that_change() {
    const N: usize = 3_000;
    let mut voip = machine();
    join_livekit(&mut voip);
    drain(&mut voip);
    voip.handle(
        T0,
        Input::RoomState {
            members: (0..N)
                .map(|i| RoomMember {
                    room_id: RoomId::from(ROOM),
                    user_id: user(i),
                    membership: RoomMembership::Join,
                })
                .collect(),
            state: (0..N).map(|i| rtc_member(i, 3_600_000)).collect(),
        },
    )
    .unwrap();
    let c = changes(&drain(&mut voip));
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].0.len(), c[0].2), (N, N));
    let all = voip.participants(&group());
    assert_eq!(all.len(), N);
    assert_eq!(all, c[0].0, "the snapshot is what the reports add up to");
    // Recipients of each to-device send.
    let targets = |out: &[Output]| -> Vec<usize> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(r) => match &r.kind {
                    voip_core::SendKind::ToDevice { messages, .. } => Some(messages.len()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    // A member leaves the room: one participant leaves.
    voip.handle(T0.plus(1_000), room_member(17, RoomMembership::Leave)).unwrap();
    let out = drain(&mut voip);
    let c = changes(&out);
    assert_eq!(c.len(), 1);
    assert!(c[0].0.is_empty());
    assert_eq!(ids(&c[0].1), [(user(17).to_string(), "D17".to_string())]);
    assert_eq!(c[0].2, N - 1);
    let report = out.iter().find(|o| matches!(o, Output::Event(Event::ParticipantsChanged { .. })));
    let size = serde_json::to_string(&report).map(|s| s.len()).unwrap_or(usize::MAX);
    assert!(size < 1_000, "the report of one leave is small: {size} bytes");
    assert_eq!(voip.participants(&group()).len(), N - 1);
    assert!(!voip.participants(&group()).iter().any(|p| p.user_id == user(17)));
    assert_eq!(targets(&out), [N - 1], "the new key goes to the others");
    // Its membership leaves the call too (`{}`), while it is out of the room: nothing more.
    let leave =
        StateEvent { content: json!({}), origin_server_ts: T0.plus(1_500), ..rtc_member(17, 3_600_000) };
    voip.handle(T0.plus(1_500), Input::StateEvent(leave)).unwrap();
    assert!(changes(&drain(&mut voip)).is_empty());
    voip.handle(T0.plus(2_000), room_member(17, RoomMembership::Join)).unwrap();
    assert!(changes(&drain(&mut voip)).is_empty(), "back in the room, not in the call");
    // It joins the call again: one participant joins, and gets a key.
    let rejoin = StateEvent { origin_server_ts: T0.plus(3_000), ..rtc_member(17, 3_600_000) };
    voip.handle(T0.plus(3_000), Input::StateEvent(rejoin)).unwrap();
    let out = drain(&mut voip);
    let c = changes(&out);
    assert_eq!(ids(&c[0].0), [(user(17).to_string(), "D17".to_string())]);
    assert_eq!(c[0].2, N);
    assert!(!targets(&out).is_empty(), "the joiner gets a key");
    assert_eq!(voip.participants(&group()).len(), N);
    // The rotation the leave started goes to everyone but the leaver; check the sizes seen.
    let mut seen = targets(&out);
    while let Some(d) = voip.next_deadline().filter(|d| d.at <= T0.plus(60_000)) {
        voip.handle(d.at, Input::Tick).unwrap();
        seen.extend(targets(&drain(&mut voip)));
    }
    assert!(seen.iter().all(|n| *n == 1 || *n == N), "only the joiner, or everyone: {seen:?}");
}
