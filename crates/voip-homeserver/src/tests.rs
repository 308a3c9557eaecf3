use std::sync::Arc;

use serde_json::json;
use voip_core::{ToDeviceEncryption, ToDeviceMessage};

use super::*;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn dev(user: &str, device: &str) -> LocalDevice {
    LocalDevice::new(user, device)
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|u| UserId::from(*u)).collect()
}

fn to(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| format!("{}/{}", d.user_id.as_str(), d.device_id.as_str())).collect()
}

fn state(room: &RoomId, key: &str) -> SendKind {
    SendKind::StateEvent {
        room_id: room.clone(),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: key.into(),
        content: json!({"k": key}),
    }
}

fn delayed(room: &RoomId, delay_ms: u64) -> SendKind {
    SendKind::DelayedStateEvent {
        room_id: room.clone(),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: "_@a:l_A".into(),
        content: json!({}),
        delay_ms,
    }
}

fn delay_id(r: &Response) -> String {
    match &r.outcome {
        SendOutcome::Sent { delay_id: Some(id), .. } => id.clone(),
        other => panic!("not scheduled: {other:?}"),
    }
}

#[test]
fn room_timeline_and_state_reach_member_devices_in_connect_order() {
    let mut hs = Homeserver::default();
    let (a1, a2, b, c) = (dev("@a:l", "A1"), dev("@a:l", "A2"), dev("@b:l", "B"), dev("@c:l", "C"));
    for d in [&b, &a1, &c, &a2] {
        hs.connect(d);
    }
    let (room, created) = hs.create_room(T0, &users(&["@a:l", "@b:l"]), true);
    // Memberships and the encryption state reach a's two devices and b's, not c's.
    assert!(created.iter().all(|d| d.user_id.as_str() != "@c:l"));
    assert!(created
        .iter()
        .any(|d| matches!(&d.input, Input::StateEvent(e) if e.event_type == "m.room.encryption")));
    let r = hs.send(
        T0,
        &a1,
        "t1",
        SendKind::RoomEvent {
            room_id: room.clone(),
            event_type: "m.call.invite".into(),
            content: json!({"call_id": "x"}),
        },
    );
    assert_eq!(to(&r.deliveries), ["@b:l/B", "@a:l/A1", "@a:l/A2"]);
    let Input::RoomEvent(ev) = &r.deliveries[0].input else { panic!("not a room event") };
    assert!(ev.encrypted, "an encrypted room's timeline arrives decrypted");
    assert_eq!(ev.origin_server_ts, T0);
    // A stranger cannot send into the room.
    let r = hs.send(T0, &c, "t2", state(&room, "_@c:l_C"));
    assert!(matches!(r.outcome, SendOutcome::Failed { errcode: Some(ref e), .. } if e == "M_FORBIDDEN"));
    assert!(r.deliveries.is_empty());
    let r = hs.send(T0, &b, "t3", state(&room, "_@b:l_B"));
    assert_eq!(r.deliveries.len(), 3);
    assert_eq!(hs.room_state(&room, "org.matrix.msc3401.call.member").len(), 1);
}

#[test]
fn a_repeated_transaction_gets_the_first_outcome_and_delivers_nothing() {
    let mut hs = Homeserver::default();
    let (a, b) = (dev("@a:l", "A"), dev("@b:l", "B"));
    hs.connect(&a);
    hs.connect(&b);
    let (room, _) = hs.create_room(T0, &users(&["@a:l", "@b:l"]), false);
    let ev = || SendKind::RoomEvent {
        room_id: room.clone(),
        event_type: "m.call.hangup".into(),
        content: json!({}),
    };
    let first = hs.send(T0, &a, "same", ev());
    let again = hs.send(T0, &a, "same", ev());
    assert_eq!(again.outcome, first.outcome);
    assert!(again.deduplicated && again.deliveries.is_empty());
    // The same transaction id from another device is another transaction.
    let mut c = a.clone();
    c.device_id = DeviceId::from("A2");
    hs.connect(&c);
    let other = hs.send(T0, &c, "same", ev());
    assert!(!other.deduplicated);
    assert_ne!(other.outcome, first.outcome);
}

#[test]
fn transaction_memory_is_bounded() {
    let mut hs = Homeserver::new(HomeserverConfig { max_transactions: 3, ..Default::default() });
    let a = dev("@a:l", "A");
    hs.connect(&a);
    let (room, _) = hs.create_room(T0, &users(&["@a:l"]), false);
    let ev = || SendKind::RoomEvent { room_id: room.clone(), event_type: "x".into(), content: json!({}) };
    for i in 0..10 {
        hs.send(T0, &a, &format!("t{i}"), ev());
    }
    assert_eq!(hs.txns.len(), 3);
    assert!(hs.send(T0, &a, "t9", ev()).deduplicated);
    assert!(!hs.send(T0, &a, "t0", ev()).deduplicated, "the oldest are forgotten first");
}

#[test]
fn delayed_events_fire_restart_cancel_and_send_msc4140() {
    let mut hs = Homeserver::default();
    let (a, b) = (dev("@a:l", "A"), dev("@b:l", "B"));
    hs.connect(&a);
    hs.connect(&b);
    let (room, _) = hs.create_room(T0, &users(&["@a:l", "@b:l"]), false);
    let r = hs.send(T0, &a, "d1", delayed(&room, 1000));
    let id = delay_id(&r);
    let timer = r.timer.expect("a timer for real-time embeddings");
    assert_eq!(hs.next_delayed_at(), Some(T0.plus(1000)));
    // A heartbeat restart moves it and outdates the first timer.
    let restart = |hs: &mut Homeserver, who: &LocalDevice, at: Timestamp| {
        hs.send(
            at,
            who,
            "r",
            SendKind::UpdateDelayedEvent { delay_id: id.clone(), action: DelayedAction::Restart },
        )
    };
    let r = restart(&mut hs, &a, T0.plus(600));
    assert_eq!(r.timer.as_ref().map(|t| t.generation), Some(1));
    assert!(hs.fire(T0.plus(1000), &timer).is_empty(), "an outdated timer fires nothing");
    assert!(hs.fire_due(T0.plus(1599)).is_empty());
    // Someone else cannot restart (or cancel) it.
    let r = restart(&mut hs, &b, T0.plus(700));
    assert!(matches!(r.outcome, SendOutcome::Failed { errcode: Some(ref e), .. } if e == "M_NOT_FOUND"));
    let listed = hs.send(T0, &a, "l", SendKind::ListDelayedEvents);
    assert!(
        matches!(listed.outcome, SendOutcome::DelayedEvents { ref delayed_events } if delayed_events.len() == 1)
    );
    let fired = hs.fire_due(T0.plus(1600));
    assert_eq!(to(&fired), ["@a:l/A", "@b:l/B"]);
    assert!(hs.scheduled_delayed().is_empty());
    // Cancel and send.
    let id2 = delay_id(&hs.send(T0, &a, "d2", delayed(&room, 1000)));
    let id3 = delay_id(&hs.send(T0, &a, "d3", delayed(&room, 1000)));
    let cancel = SendKind::UpdateDelayedEvent { delay_id: id2, action: DelayedAction::Cancel };
    assert!(hs.send(T0, &a, "c", cancel).deliveries.is_empty());
    let send = SendKind::UpdateDelayedEvent { delay_id: id3, action: DelayedAction::Send };
    assert_eq!(hs.send(T0, &a, "s", send).deliveries.len(), 2);
    assert!(hs.fire_due(T0.plus(10_000)).is_empty());
}

#[test]
fn without_delayed_events_the_endpoints_are_unrecognized() {
    let mut hs = Homeserver::new(HomeserverConfig::default().with_delayed_events(false));
    let a = dev("@a:l", "A");
    assert_eq!(hs.connect(&a)[0], Input::ServerSupport { delayed_events: false });
    let (room, _) = hs.create_room(T0, &users(&["@a:l"]), false);
    for kind in [delayed(&room, 10), SendKind::ListDelayedEvents] {
        let r = hs.send(T0, &a, "x", kind);
        assert!(
            matches!(r.outcome, SendOutcome::Failed { errcode: Some(ref e), .. } if e == "M_UNRECOGNIZED")
        );
    }
}

#[test]
fn to_device_reaches_one_device_or_every_device_of_a_user() {
    let mut hs = Homeserver::default();
    let (a, b1, b2) = (dev("@a:l", "A"), dev("@b:l", "B1"), dev("@b:l", "B2"));
    for d in [&a, &b1, &b2] {
        hs.connect(d);
    }
    let content = Arc::new(json!({"call_id": "x"}));
    let msg = |device: &str| ToDeviceMessage {
        user_id: UserId::from("@b:l"),
        device_id: DeviceId::from(device),
        content: content.clone(),
    };
    let send = |messages| SendKind::ToDevice {
        event_type: "m.call.invite".into(),
        room_id: None,
        messages,
        encryption: ToDeviceEncryption::Required,
    };
    let r = hs.send(T0, &a, "1", send(vec![msg("B2"), msg("GONE")]));
    assert_eq!(to(&r.deliveries), ["@b:l/B2"], "unknown devices get nothing");
    let Input::ToDevice(ev) = &r.deliveries[0].input else { panic!("not to-device") };
    assert_eq!((ev.sender_device.as_ref().map(|d| d.as_str()), ev.encrypted), (Some("A"), true));
    let r = hs.send(T0, &a, "2", send(vec![msg("*")]));
    assert_eq!(to(&r.deliveries), ["@b:l/B1", "@b:l/B2"]);
    hs.disconnect(&UserId::from("@b:l"), &DeviceId::from("B1"));
    assert_eq!(to(&hs.send(T0, &a, "3", send(vec![msg("*")])).deliveries), ["@b:l/B2"]);
}

#[test]
fn joining_and_leaving_tell_the_right_devices() {
    let mut hs = Homeserver::default();
    let (a, b, c) = (dev("@a:l", "A"), dev("@b:l", "B"), dev("@c:l", "C"));
    for d in [&a, &b, &c] {
        hs.connect(d);
    }
    let room = RoomId::from("!r:l");
    hs.join(&room, &users(&["@a:l", "@b:l"]));
    hs.send(T0, &a, "s", state(&room, "_@a:l_A"));
    // c joins late: it gets the members before it and the state, everyone gets its join.
    let d = hs.join(&room, &users(&["@c:l"]));
    let for_c: Vec<&Input> = d.iter().filter(|d| d.user_id.as_str() == "@c:l").map(|d| &d.input).collect();
    assert_eq!(for_c.len(), 4, "a's and b's joins, the state event, its own join: {for_c:?}");
    assert_eq!(to(&d).iter().filter(|t| t.starts_with("@a") || t.starts_with("@b")).count(), 2);
    assert!(hs.join(&room, &users(&["@c:l"])).is_empty(), "joining twice changes nothing");
    // A restarted client's first sync.
    assert_eq!(hs.connect(&c).len(), 1 + 3 + 1);
    let d = hs.leave(&room, &UserId::from("@b:l"));
    assert_eq!(to(&d), ["@a:l/A", "@c:l/C", "@b:l/B"]);
    assert!(!hs.is_member(&room, &UserId::from("@b:l")));
    assert_eq!(hs.members(&room), users(&["@a:l", "@c:l"]));
}
