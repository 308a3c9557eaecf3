//! The adapter itself, without a core: what one client's adapter sends arrives at another's as
//! the right inputs; encryption rules; 429s; state, delayed events, OpenID, TURN, capabilities.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use voip_core::{
    DeviceId, Input, RequestId, RoomId, RoomMembership, SendKind, SendOutcome, SendRequest,
    ToDeviceEncryption, ToDeviceMessage, UserId,
};
use voip_matrix::{
    DelayedAction, DelayedEvent, DelayedEventRequest, Failure, MatrixAdapter, StateEventRequest,
};

use crate::{room_with, Peer, TIMEOUT};

fn req(id: u64, txn: &str, kind: SendKind) -> SendRequest {
    SendRequest { id: RequestId::from_value(id), txn_id: txn.to_owned(), kind }
}

fn room_event(room: &str, event_type: &str, content: Value) -> SendKind {
    SendKind::RoomEvent { room_id: RoomId::from(room), event_type: event_type.to_owned(), content }
}

fn to_device(
    event_type: &str,
    room: Option<&str>,
    targets: &[(&Peer, Value)],
    encryption: ToDeviceEncryption,
) -> SendKind {
    SendKind::ToDevice {
        event_type: event_type.to_owned(),
        room_id: room.map(RoomId::from),
        messages: targets
            .iter()
            .map(|(p, content)| ToDeviceMessage {
                user_id: UserId::from(p.user_id()),
                device_id: DeviceId::from(p.device_id()),
                content: std::sync::Arc::new(content.clone()),
            })
            .collect(),
        encryption,
    }
}

fn txn() -> String {
    format!("t{}", voip_testkit::rig::random_hex(6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_call_events_are_decrypted_and_txn_ids_idempotent() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let mut bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let matrix_room = alice.client.get_room(&crate::rid(&room)?).expect("room");
    assert!(matrix_room.latest_encryption_state().await?.is_encrypted());

    let content = json!({"call_id": "c1", "version": "1", "party_id": "p1", "lifetime": 60000,
                         "offer": {"type": "offer", "sdp": "v=0\r\n"}});
    let t = txn();
    let sent = alice.adapter.execute(req(1, &t, room_event(&room, "m.call.invite", content.clone()))).await;
    let SendOutcome::Sent { event_id: Some(event_id), .. } = sent else { panic!("not sent: {sent:?}") };
    // Same transaction id: the homeserver deduplicates, same event id.
    let again = alice.adapter.execute(req(2, &t, room_event(&room, "m.call.invite", content.clone()))).await;
    assert_eq!(again, SendOutcome::Sent { event_id: Some(event_id.clone()), delay_id: None });

    let ev = bob
        .expect("m.call.invite", |i| match i {
            Input::RoomEvent(e) if e.event_type == "m.call.invite" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(ev.room_id.as_str(), room);
    assert_eq!(ev.sender.as_str(), alice.user_id());
    assert_eq!(ev.content, content);
    assert_eq!(ev.event_id.as_deref(), Some(event_id.as_str()));
    assert!(ev.origin_server_ts.0 > 0);

    // The event is stored encrypted on the server: bob's adapter saw it only after Megolm.
    let raw = bob
        .client
        .get_room(&crate::rid(&room)?)
        .expect("room")
        .event(&matrix_sdk::ruma::OwnedEventId::try_from(event_id.as_str())?, None)
        .await?;
    assert!(raw.encryption_info().is_some(), "call event was not Megolm-encrypted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_olm_carries_sender_device_and_clear_does_not() -> Result<()> {
    let alice = Peer::new("alice").await?;
    let mut bob = Peer::new("bob").await?;

    let content = json!({"call_id": "c2", "version": "1", "party_id": "p", "room_id": "!x:localhost"});
    let out = alice
        .adapter
        .execute(req(
            1,
            &txn(),
            to_device("m.call.hangup", None, &[(&bob, content.clone())], ToDeviceEncryption::Required),
        ))
        .await;
    assert_eq!(out, SendOutcome::Sent { event_id: None, delay_id: None });
    let ev = bob
        .expect("Olm to-device hangup", |i| match i {
            Input::ToDevice(e) if e.event_type == "m.call.hangup" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert!(ev.encrypted);
    assert_eq!(ev.sender.as_str(), alice.user_id());
    assert_eq!(ev.sender_device.as_ref().map(|d| d.as_str().to_owned()), Some(alice.device_id()));
    assert_eq!(ev.content["call_id"], "c2");

    // No room, not required: sent in clear.
    let clear = json!({"call_id": "c3", "version": "1", "party_id": "p"});
    let out = alice
        .adapter
        .execute(req(
            2,
            &txn(),
            to_device("m.call.hangup", None, &[(&bob, clear)], ToDeviceEncryption::IfRoomEncrypted),
        ))
        .await;
    assert_eq!(out, SendOutcome::Sent { event_id: None, delay_id: None });
    let ev = bob
        .expect("clear to-device hangup", |i| match i {
            Input::ToDevice(e) if e.content["call_id"] == "c3" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert!(!ev.encrypted);
    assert_eq!(ev.sender_device, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_encryption_refuses_devices_without_keys() -> Result<()> {
    let alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let ghost = ToDeviceMessage {
        user_id: UserId::from(bob.user_id()),
        device_id: DeviceId::from("NOSUCHDEVICE"),
        content: std::sync::Arc::new(json!({"keys": {"index": 0, "key": "c2VjcmV0"}})),
    };
    for (event_type, encryption) in [
        ("m.call.invite", ToDeviceEncryption::Required),
        // Media keys are never sent in clear, even when the request allows it.
        ("io.element.call.encryption_keys", ToDeviceEncryption::IfRoomEncrypted),
    ] {
        let kind = SendKind::ToDevice {
            event_type: event_type.into(),
            room_id: None,
            messages: vec![ghost.clone()],
            encryption,
        };
        match alice.adapter.execute(req(1, &txn(), kind)).await {
            SendOutcome::Failed { error, .. } => assert!(error.contains("refusing"), "{error}"),
            other => panic!("{event_type}: expected a refusal, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keys_to_three_devices_of_two_users() -> Result<()> {
    let alice = Peer::new("alice").await?;
    let mut bob = Peer::new("bob").await?;
    let mut bob2 = Peer::device(&bob.user, Some("BOBDEV2")).await?;
    let mut carol = Peer::new("carol").await?;
    let key = |k: &str| {
        json!({"keys": {"index": 0, "key": k}, "room_id": "!r:localhost", "call_id": "",
                               "member": {"claimed_device_id": "A"}})
    };
    let kind = to_device(
        "io.element.call.encryption_keys",
        None,
        &[(&bob, key("Ym9i")), (&bob2, key("Ym9iMg")), (&carol, key("Y2Fyb2w"))],
        ToDeviceEncryption::Required,
    );
    assert_eq!(
        alice.adapter.execute(req(1, &txn(), kind)).await,
        SendOutcome::Sent { event_id: None, delay_id: None }
    );
    for (peer, k) in [(&mut bob, "Ym9i"), (&mut bob2, "Ym9iMg"), (&mut carol, "Y2Fyb2w")] {
        let ev = peer
            .expect("media key", |i| match i {
                Input::ToDevice(e) if e.event_type == "io.element.call.encryption_keys" => Some(e.clone()),
                _ => None,
            })
            .await?;
        assert!(ev.encrypted);
        assert_eq!(ev.content["keys"]["key"], k, "each device gets its own content");
        assert_eq!(ev.sender_device.as_ref().map(|d| d.as_str().to_owned()), Some(alice.device_id()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_between_two_devices_of_one_user() -> Result<()> {
    let a1 = Peer::new("alice").await?;
    let mut a2 = Peer::device(&a1.user, Some("ALICE2")).await?;
    let kind =
        to_device("m.call.invite", None, &[(&a2, json!({"call_id": "own"}))], ToDeviceEncryption::Required);
    assert_eq!(
        a1.adapter.execute(req(1, &txn(), kind)).await,
        SendOutcome::Sent { event_id: None, delay_id: None }
    );
    let ev = a2
        .expect("own-device invite", |i| match i {
            Input::ToDevice(e) if e.content["call_id"] == "own" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert!(ev.encrypted);
    assert_eq!(ev.sender.as_str(), a1.user_id());
    assert_eq!(ev.sender_device.map(|d| d.0), Some(a1.device_id()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_submit_results() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], false).await?;
    // submit(): executed in the background, result comes back as an input.
    alice.adapter.submit(req(
        77,
        &txn(),
        room_event(
            &room,
            "m.call.candidates",
            json!({"call_id": "c", "version": "1", "party_id": "p", "candidates": []}),
        ),
    ));
    let result = alice
        .expect("send result", |i| match i {
            Input::SendResult { id, result } if id.value() == 77 => Some(result.clone()),
            _ => None,
        })
        .await?;
    assert!(matches!(result, SendOutcome::Sent { event_id: Some(_), .. }), "{result:?}");

    // Dropping the adapter right after submitting does not lose the send nor its result.
    let (short_lived, mut short_inputs) = MatrixAdapter::new(alice.client.clone());
    short_lived.submit(req(
        79,
        &txn(),
        room_event(&room, "m.call.hangup", json!({"call_id": "c", "version": "1", "party_id": "p"})),
    ));
    drop(short_lived);
    let result = tokio::time::timeout(TIMEOUT, async {
        loop {
            match short_inputs.recv().await {
                Some(Input::SendResult { id, result }) if id.value() == 79 => break Some(result),
                Some(_) => {}
                None => break None,
            }
        }
    })
    .await?;
    assert!(matches!(result, Some(SendOutcome::Sent { event_id: Some(_), .. })), "{result:?}");

    // A later adapter on the same client replays the stored membership of known rooms.
    let (late, mut late_inputs) = MatrixAdapter::new(alice.client.clone());
    late.room_state_inputs(&alice.client.get_room(&crate::rid(&room)?).expect("room")).await?;
    // One `Input::RoomState` with the room's members (and state), as the core takes a room in.
    let mut joined = Vec::new();
    while let Ok(input) = late_inputs.try_recv() {
        let members = match input {
            Input::RoomState { members, .. } => members,
            Input::RoomMember(m) => vec![m],
            _ => continue,
        };
        for m in members {
            assert_eq!(m.room_id.as_str(), room);
            joined.extend((m.membership == RoomMembership::Join).then_some(m.user_id.0));
        }
    }
    joined.sort();
    let mut expected = vec![alice.user_id(), bob.user_id()];
    expected.sort();
    assert_eq!(joined, expected);
    late.shutdown().await;

    bob.client.get_room(&crate::rid(&room)?).expect("room").leave().await?;
    alice.expect_member(&room, &bob.user_id(), RoomMembership::Leave).await?;

    // Sending into a room the client does not know fails, retryable, without panicking.
    let out = alice
        .adapter
        .execute(req(78, &txn(), room_event("!unknown:localhost", "m.call.hangup", json!({}))))
        .await;
    assert!(matches!(out, SendOutcome::Failed { retryable: true, .. }), "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_sends_honour_retry_after() -> Result<()> {
    let admin = voip_testkit::register_admin("admin").await?;
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], false).await?;
    // One message per second for alice, burst 1: the second of two quick sends gets a 429.
    voip_testkit::override_ratelimit(&admin, &alice.user_id(), 1, 1).await?;

    // The core's sends get one attempt: the 429 and the server's delay go back to the core.
    let mut limited = None;
    for n in 0..5 {
        let content = json!({"call_id": format!("rl{n}"), "version": "1", "party_id": "p"});
        let request = req(n, &txn(), room_event(&room, "m.call.select_answer", content));
        let out = alice.adapter.execute(request.clone()).await;
        if let SendOutcome::RateLimited { retry_after_ms } = out {
            limited = Some((request, retry_after_ms));
            break;
        }
    }
    let (request, retry_after_ms) = limited.expect("no 429 from a 1/s limit");
    let wait = retry_after_ms.expect("Synapse gives retry_after_ms");
    assert!(wait > 0, "retry_after_ms: {wait}");
    let stats = alice.adapter.send_stats();
    assert_eq!(stats.retried, 0, "the adapter retried a core send itself: {stats:?}");

    // The core's retry (same request, same transaction id) after the server's delay goes through.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let out = alice.adapter.execute(request).await;
    assert!(matches!(out, SendOutcome::Sent { event_id: Some(_), .. }), "{out:?}");
    Ok(())
}

/// The core's group-call sends (`SendKind::StateEvent`, `DelayedStateEvent`,
/// `UpdateDelayedEvent`) through `execute`, and the resulting `Input::StateEvent`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_with_explicit_keys_and_delayed_leave() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let mut bob = Peer::new("bob").await?;
    // Created in a runtime: the adapter announces what the server supports.
    let delayed_events = alice
        .expect("server support", |i| match i {
            Input::ServerSupport { delayed_events } => Some(*delayed_events),
            _ => None,
        })
        .await?;
    assert!(delayed_events);
    let room = room_with(&mut alice, &[&bob], true).await?;

    let event_type = "org.matrix.msc3401.call.member";
    let key = format!("_{}_{}", alice.user_id(), alice.device_id());
    let membership = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": alice.device_id(),
                            "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                            "foci_preferred": [], "expires": 14_400_000});
    let rid = RoomId::from(room.as_str());
    let state = SendKind::StateEvent {
        room_id: rid.clone(),
        event_type: event_type.into(),
        state_key: key.clone(),
        content: membership.clone(),
    };
    let out = alice.adapter.execute(req(1, "unused", state)).await;
    assert!(matches!(out, SendOutcome::Sent { event_id: Some(_), .. }), "{out:?}");
    let seen = bob
        .expect("membership state input", |i| match i {
            Input::StateEvent(s) if s.state_key == key && s.content.get("application").is_some() => {
                Some(s.clone())
            }
            _ => None,
        })
        .await?;
    assert_eq!(seen.event_type, event_type);
    assert_eq!(seen.sender.as_str(), alice.user_id());
    assert_eq!(seen.room_id, rid);

    // Delayed leave: scheduled, restarted (heartbeat), then the client disappears.
    let leave = || SendKind::DelayedStateEvent {
        room_id: rid.clone(),
        event_type: event_type.into(),
        state_key: key.clone(),
        content: json!({}),
        delay_ms: 3000,
    };
    let delay_id = |out: SendOutcome| match out {
        SendOutcome::Sent { delay_id: Some(id), .. } => id,
        other => panic!("not scheduled: {other:?}"),
    };
    let update = |delay_id: &str, action| SendKind::UpdateDelayedEvent { delay_id: delay_id.into(), action };
    let id = delay_id(alice.adapter.execute(req(2, "unused", leave())).await);
    let out = alice.adapter.execute(req(3, "unused", update(&id, DelayedAction::Restart))).await;
    assert!(matches!(out, SendOutcome::Sent { .. }), "{out:?}");
    // A cancelled one never fires, and is then unknown: M_NOT_FOUND.
    let other = delay_id(alice.adapter.execute(req(4, "unused", leave())).await);
    let out = alice.adapter.execute(req(5, "unused", update(&other, DelayedAction::Cancel))).await;
    assert!(matches!(out, SendOutcome::Sent { .. }), "{out:?}");
    let gone = alice.adapter.execute(req(6, "unused", update(&other, DelayedAction::Restart))).await;
    match gone {
        SendOutcome::Failed { retryable: false, errcode, .. } => {
            assert_eq!(errcode.as_deref(), Some("M_NOT_FOUND"))
        }
        other => panic!("restart of a cancelled delayed event: {other:?}"),
    }

    alice.sync.take();
    drop(alice);
    // Bob sees the leave ({}), sent by the homeserver, within the delay (+ generous slack).
    bob.expect("delayed leave", |i| match i {
        Input::StateEvent(s) if s.state_key == key && s.content.as_object().is_some_and(|o| o.is_empty()) => {
            Some(())
        }
        _ => None,
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_send_fires_now_and_message_events_can_be_delayed() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let mut bob = Peer::new("bob").await?;
    let mut bob_members = bob.adapter.call_member_events();
    let room = room_with(&mut alice, &[&bob], false).await?;
    let key = alice.user_id();
    let leave = DelayedEventRequest {
        room_id: RoomId::from(room.as_str()),
        event: DelayedEvent::State {
            event_type: "com.famedly.call.member".into(),
            state_key: key.clone(),
            content: json!({"memberships": []}),
        },
        delay: Duration::from_secs(3600),
    };
    let id = alice.adapter.schedule_delayed(leave).await.map_err(anyhow_failure)?;
    alice.adapter.update_delayed(&id, DelayedAction::Send).await.map_err(anyhow_failure)?;
    let seen = expect_member_state(&mut bob_members, &key, |c| c.get("memberships").is_some()).await?;
    assert_eq!(seen.event_type, "com.famedly.call.member");

    let msg = DelayedEventRequest {
        room_id: RoomId::from(room.as_str()),
        event: DelayedEvent::Message {
            event_type: "m.call.hangup".into(),
            content: json!({"call_id": "delayed", "version": "1", "party_id": "p"}),
            txn_id: txn(),
        },
        delay: Duration::from_millis(500),
    };
    alice.adapter.schedule_delayed(msg).await.map_err(anyhow_failure)?;
    bob.expect("delayed hangup", |i| match i {
        Input::RoomEvent(e) if e.content["call_id"] == "delayed" => Some(()),
        _ => None,
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_turn_and_capabilities() -> Result<()> {
    let alice = Peer::new("alice").await?;
    let token = alice.adapter.openid_token().await?;
    assert_eq!(token.matrix_server_name, "localhost");
    assert!(!token.access_token.is_empty());
    // A third party validates it on the federation userinfo endpoint (same plain-HTTP port here).
    let url = format!(
        "{}/_matrix/federation/v1/openid/userinfo?access_token={}",
        voip_testkit::synapse().url,
        token.access_token
    );
    let info: Value = reqwest::Client::builder().no_proxy().build()?.get(url).send().await?.json().await?;
    assert_eq!(info["sub"], alice.user_id());

    let turn = alice.adapter.turn_servers().await?.expect("the rig configures TURN");
    assert!(turn.uris.iter().any(|u| u.starts_with("turn:127.0.0.1")), "{:?}", turn.uris);
    assert_eq!(turn.ttl, Duration::from_secs(3600));
    assert!(turn.username.contains(&alice.user_id()));
    // Cached until the refresh point.
    let again = alice.adapter.turn_servers().await?.expect("cached");
    assert_eq!(again, turn);
    let mut watch = alice.adapter.watch_turn_servers();
    let watched = tokio::time::timeout(TIMEOUT, watch.wait_for(|t| t.is_some())).await??.clone();
    assert_eq!(watched.map(|t| t.uris), Some(turn.uris));

    assert!(alice.adapter.supports_delayed_events().await?);
    Ok(())
}

async fn expect_member_state(
    rx: &mut tokio::sync::mpsc::Receiver<voip_matrix::CallMemberState>,
    key: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<voip_matrix::CallMemberState> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) if s.state_key == key && pred(&s.content) => return Ok(s),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("call member channel closed"),
            Err(_) => anyhow::bail!("timed out waiting for call member state {key}"),
        }
    }
}

fn anyhow_failure(f: Failure) -> anyhow::Error {
    anyhow::anyhow!("{f:?}")
}

/// Group-call plumbing (no core yet): three users publish memberships in both dialects, see each
/// other's, and one leaves; to-device signalling in the encrypted room is Olm-encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_see_each_others_call_memberships_in_both_dialects() -> Result<()> {
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let carol = Peer::new("carol").await?;
    let mut subs = [&alice, &bob, &carol].map(|p| p.adapter.call_member_events());
    let room = room_with(&mut alice, &[&bob, &carol], true).await?;

    // Element Call style (`_@user_DEVICE`, one event per device) and famedly style (`@user`,
    // a list of memberships).
    let dialects = [("org.matrix.msc3401.call.member", true), ("com.famedly.call.member", false)];
    for (event_type, per_device) in dialects {
        for p in [&alice, &bob, &carol] {
            let (key, content) = membership(p, per_device);
            let out = p
                .adapter
                .send_state(StateEventRequest {
                    room_id: RoomId::from(room.as_str()),
                    event_type: event_type.into(),
                    state_key: key,
                    content,
                    critical: false,
                })
                .await;
            assert!(matches!(out, SendOutcome::Sent { event_id: Some(_), .. }), "{event_type}: {out:?}");
        }
        for rx in subs.iter_mut() {
            for p in [&alice, &bob, &carol] {
                let (key, _) = membership(p, per_device);
                let s =
                    expect_member_state(rx, &key, |c| c.as_object().is_some_and(|o| !o.is_empty())).await?;
                assert_eq!(s.event_type, event_type);
            }
        }
    }

    // Carol leaves the call (both dialects: `{}`), critical sends.
    for (event_type, per_device) in dialects {
        let (key, _) = membership(&carol, per_device);
        let out = carol
            .adapter
            .send_state(StateEventRequest {
                room_id: RoomId::from(room.as_str()),
                event_type: event_type.into(),
                state_key: key.clone(),
                content: json!({}),
                critical: true,
            })
            .await;
        assert!(matches!(out, SendOutcome::Sent { .. }), "{out:?}");
        for rx in subs[..2].iter_mut() {
            expect_member_state(rx, &key, |c| c.as_object().is_some_and(|o| o.is_empty())).await?;
        }
    }

    // Mesh-style to-device signalling about this room: Olm because the room is encrypted.
    let kind = to_device(
        "m.call.invite",
        Some(&room),
        &[(&bob, json!({"call_id": "mesh", "room_id": room}))],
        ToDeviceEncryption::IfRoomEncrypted,
    );
    assert_eq!(
        alice.adapter.execute(req(1, &txn(), kind)).await,
        SendOutcome::Sent { event_id: None, delay_id: None }
    );
    let mut bob = bob;
    let ev = bob
        .expect("mesh invite", |i| match i {
            Input::ToDevice(e) if e.content["call_id"] == "mesh" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert!(ev.encrypted, "to-device about an encrypted room must be Olm-encrypted");
    Ok(())
}

fn membership(p: &Peer, per_device: bool) -> (String, Value) {
    let member = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": p.device_id(),
                        "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                        "foci_preferred": [], "expires": 14_400_000});
    if per_device {
        (format!("_{}_{}", p.user_id(), p.device_id()), member)
    } else {
        (p.user_id(), json!({"memberships": [member]}))
    }
}
