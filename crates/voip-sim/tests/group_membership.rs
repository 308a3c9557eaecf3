//! Group-call membership through the simulated homeserver, in both dialects: join, see each
//! other, leave; delayed leave after a crash; expiry without delayed events; rejoin when the
//! server applied our delayed leave while we were still there.

use voip_core::{
    Command, Config, Event, Focus, GroupCallId, GroupCallState, MembershipDialect, Participant, RoomId,
    UserId,
};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!group:example.org";
const USERS: [&str; 3] = ["@alice:example.org", "@bob:example.org", "@carol:example.org"];

fn join(sim: &mut Sim, d: DeviceIdx, dialect: MembershipDialect) {
    let focus = match dialect {
        MembershipDialect::Famedly => Focus::Mesh,
        _ => Focus::Livekit {
            livekit_service_url: Some("https://sfu.example.org".into()),
            livekit_alias: Some(ROOM.into()),
        },
    };
    sim.join_group_call(d, ROOM, dialect, focus).expect("join");
}

fn participants(sim: &Sim, d: DeviceIdx) -> Vec<UserId> {
    let info = sim.device(d).group_call(&GroupCallId::room_call(RoomId::from(ROOM)));
    info.members.into_iter().map(|m| m.participant.user_id).collect()
}

fn setup(n: usize) -> (Sim, Vec<DeviceIdx>) {
    let mut sim = Sim::new(11);
    let devs: Vec<DeviceIdx> =
        (0..n).map(|i| sim.add_device(USERS[i], &format!("DEV{i}"), Config::default())).collect();
    sim.join(ROOM, &USERS[..n]);
    (sim, devs)
}

#[test]
fn three_users_join_see_each_other_and_leave_in_both_dialects() {
    for dialect in [MembershipDialect::Famedly, MembershipDialect::MatrixRtc] {
        let (mut sim, devs) = setup(3);
        for d in &devs {
            join(&mut sim, *d, dialect);
        }
        sim.settle();
        for (i, d) in devs.iter().enumerate() {
            let mut expected: Vec<UserId> =
                USERS.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, u)| UserId::from(*u)).collect();
            let mut got = participants(&sim, *d);
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "{dialect:?}: device {i} sees the other two");
            assert!(sim.events(*d).contains(&Event::GroupCallStateChanged {
                group: GroupCallId::room_call(RoomId::from(ROOM)),
                state: GroupCallState::Joined
            }));
        }
        sim.command(devs[2], Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() })
            .unwrap();
        sim.settle();
        assert_eq!(participants(&sim, devs[0]), vec![UserId::from(USERS[1])], "{dialect:?}: carol left");
        let left_seen = sim.events(devs[0]).iter().any(|e| matches!(e, Event::ParticipantsChanged { left, .. } if left.iter().any(|p: &Participant| p.user_id.as_str() == USERS[2])));
        assert!(left_seen, "{dialect:?}: a left event for carol");
        assert!(
            sim.scheduled_delayed().iter().all(|(_, _, key)| !key.contains("carol")),
            "carol's delayed leave was used"
        );
    }
}

#[test]
fn a_crashed_client_is_seen_gone_within_the_delayed_leave() {
    for dialect in [MembershipDialect::Famedly, MembershipDialect::MatrixRtc] {
        let (mut sim, devs) = setup(2);
        join(&mut sim, devs[0], dialect);
        join(&mut sim, devs[1], dialect);
        sim.settle();
        assert_eq!(participants(&sim, devs[0]), vec![UserId::from(USERS[1])]);
        let crash_at = sim.now();
        sim.set_offline(devs[1], true);
        let delay = match dialect {
            MembershipDialect::Famedly => Config::default().famedly_delayed_leave_ms,
            _ => Config::default().rtc_delayed_leave_ms,
        };
        let restart = match dialect {
            MembershipDialect::Famedly => Config::default().famedly_delayed_restart_ms,
            _ => Config::default().rtc_delayed_restart_ms,
        };
        sim.advance(delay + restart + 1_000);
        assert!(participants(&sim, devs[0]).is_empty(), "{dialect:?}: bob is gone after the delay");
        let gone_at = sim.device(devs[0]).events.iter().rev().find_map(|(t, e)| match e {
            Event::ParticipantsChanged { left, .. } if !left.is_empty() => Some(*t),
            _ => None,
        });
        assert!(
            gone_at.is_some_and(|t| t.since(crash_at) <= delay + restart + 100),
            "{dialect:?}: within delay + one heartbeat"
        );
    }
}

#[test]
fn without_delayed_events_members_expire_by_their_expiry() {
    let (mut sim, devs) = setup(2);
    sim.delayed_events = false;
    join(&mut sim, devs[0], MembershipDialect::Famedly);
    join(&mut sim, devs[1], MembershipDialect::Famedly);
    sim.settle();
    assert_eq!(participants(&sim, devs[0]).len(), 1);
    sim.set_offline(devs[1], true);
    sim.advance(Config::default().famedly_expires_ms - 1_000);
    assert_eq!(participants(&sim, devs[0]).len(), 1, "still within expires_ts");
    sim.advance(2_000);
    assert!(participants(&sim, devs[0]).is_empty(), "expired by a timer, not by the next message");
}

#[test]
fn membership_is_refreshed_and_survives_the_server_applying_the_leave() {
    let config = Config::default().with_rtc_expires_ms(60_000).with_rtc_refresh_ms(30_000);
    let mut sim = Sim::new(12);
    let devs: Vec<DeviceIdx> =
        (0..2).map(|i| sim.add_device(USERS[i], &format!("DEV{i}"), config.clone())).collect();
    sim.join(ROOM, &USERS[..2]);
    join(&mut sim, devs[0], MembershipDialect::MatrixRtc);
    join(&mut sim, devs[1], MembershipDialect::MatrixRtc);
    sim.settle();
    // Bob's device stalls long enough for the server to apply his delayed leave, then recovers.
    sim.set_offline(devs[1], true);
    sim.advance(Config::default().rtc_delayed_leave_ms + 500);
    assert!(participants(&sim, devs[0]).is_empty());
    sim.set_offline(devs[1], false);
    sim.advance(Config::default().rtc_delayed_restart_ms * 3);
    assert_eq!(participants(&sim, devs[0]), vec![UserId::from(USERS[1])], "bob rejoined by himself");
    // Five expiry periods later both are still members: the refresh moves `expires` on.
    sim.advance(5 * 60_000);
    assert_eq!(participants(&sim, devs[0]), vec![UserId::from(USERS[1])]);
    assert_eq!(participants(&sim, devs[1]), vec![UserId::from(USERS[0])]);
}

#[test]
fn the_first_joiner_rings_the_room_and_a_decline_is_surfaced() {
    let (mut sim, devs) = setup(2);
    sim.command(
        devs[0],
        Command::JoinGroupCall {
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
            notify: Some(voip_core::NotificationType::Ring),
            encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
        },
    )
    .unwrap();
    sim.settle();
    let rang = sim.events(devs[1]).into_iter().find_map(|e| match e {
        Event::GroupCallNotification { sender, notification_type, event_id, .. } => {
            Some((sender, notification_type, event_id))
        }
        _ => None,
    });
    let (sender, kind, event_id) = rang.expect("bob is rung");
    assert_eq!((sender.as_str(), kind), (USERS[0], voip_core::NotificationType::Ring));
    assert!(
        !sim.events(devs[0]).iter().any(|e| matches!(e, Event::GroupCallNotification { .. })),
        "no ring for our own notification"
    );
    // Bob declines (MSC4310): Alice is told.
    let decline = voip_core::RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: UserId::from(USERS[1]),
        event_type: voip_core::RTC_DECLINE.into(),
        content: serde_json::json!({"m.relates_to": {"rel_type": "m.reference", "event_id": event_id.clone().unwrap()}}),
        origin_server_ts: sim.now(),
        age_ms: Some(0),
        encrypted: false,
        sender_device: None,
    };
    sim.feed(devs[0], voip_core::Input::RoomEvent(decline));
    assert!(sim.events(devs[0]).contains(&Event::GroupCallDeclined {
        room_id: RoomId::from(ROOM),
        sender: UserId::from(USERS[1]),
        notification_event_id: event_id.unwrap(),
    }));
}
