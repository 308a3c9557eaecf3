//! Group calls end to end: real cores on three devices, memberships in both dialects through a
//! real Synapse, MSC4140 delayed leave, Olm-encrypted media keys with rotation.

use std::collections::BTreeSet;

use anyhow::Result;
use voip_core::{CallState, Command, Config, Event, Focus, GroupCallState, MembershipDialect, RoomId};

use crate::calls::Phone;
use crate::{room_with, Peer, TIMEOUT};

pub(crate) fn join_command(room: &str, dialect: MembershipDialect) -> Command {
    let focus = match dialect {
        MembershipDialect::Famedly => Focus::Mesh,
        _ => Focus::Livekit {
            livekit_service_url: Some("http://127.0.0.1:9/livekit/jwt".into()),
            livekit_alias: Some(room.into()),
        },
    };
    Command::JoinGroupCall {
        room_id: RoomId::from(room),
        call_id: String::new(),
        application: "m.call".into(),
        scope: "m.room".into(),
        dialect,
        focus,
        owned_state_keys: false,
        notify: None,
        encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
    }
}

pub(crate) async fn members(phone: &Phone, room: &str) -> BTreeSet<String> {
    let group = phone.group(room).await;
    group.info().members.into_iter().map(|m| m.participant.user_id.0).collect()
}

pub(crate) async fn wait_members(phone: &Phone, room: &str, expected: &[&str]) -> Result<()> {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    voip_testkit::wait_for(&format!("{} sees {expected:?}", phone.peer_user), TIMEOUT, || {
        let expected = &expected;
        async move { (members(phone, room).await == *expected).then_some(()) }
    })
    .await
}

async fn three_phones(config: Config) -> Result<(Vec<Phone>, String)> {
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let carol = Peer::new("carol").await?;
    let room = room_with(&mut alice, &[&bob, &carol], true).await?;
    let phones = [alice, bob, carol].map(|p| Phone::with_config(p, config.clone())).into_iter().collect();
    Ok((phones, room))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_join_see_each_other_and_leave_in_both_dialects() -> Result<()> {
    for dialect in [MembershipDialect::Famedly, MembershipDialect::MatrixRtc] {
        let (phones, room) = three_phones(Config::default()).await?;
        let users: Vec<String> = phones.iter().map(|p| p.peer_user.clone()).collect();
        for p in &phones {
            p.command(join_command(&room, dialect)).await;
        }
        for (i, p) in phones.iter().enumerate() {
            let others: Vec<&str> =
                users.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, u)| u.as_str()).collect();
            wait_members(p, &room, &others).await?;
            p.wait("joined", |e| match e {
                Event::GroupCallStateChanged { state: GroupCallState::Joined, .. } => Some(()),
                _ => None,
            })
            .await?;
        }
        if dialect == MembershipDialect::Famedly {
            // Mesh: every pair sets up a peer call over Olm-encrypted to-device signalling.
            for p in &phones {
                voip_testkit::wait_for(
                    &format!("{}: two connected mesh calls", p.peer_user),
                    TIMEOUT,
                    || {
                        let connected: BTreeSet<String> = p
                            .state
                            .lock()
                            .unwrap()
                            .events
                            .iter()
                            .filter_map(|e| match e {
                                Event::StateChanged { call_id, state: CallState::Connected } => {
                                    Some(call_id.0.clone())
                                }
                                _ => None,
                            })
                            .collect();
                        async move { (connected.len() >= 2).then_some(()) }
                    },
                )
                .await?;
            }
        }
        phones[2]
            .command(Command::LeaveGroupCall { room_id: RoomId::from(room.as_str()), call_id: String::new() })
            .await;
        wait_members(&phones[0], &room, &[&users[1]]).await?;
        wait_members(&phones[1], &room, &[&users[0]]).await?;
        phones[0]
            .wait("carol left", |e| match e {
                Event::ParticipantsChanged { left, .. }
                    if left.iter().any(|p| p.user_id.as_str() == users[2]) =>
                {
                    Some(())
                }
                _ => None,
            })
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disappears_is_seen_gone_within_the_delayed_leave() -> Result<()> {
    // Short delays so the test is quick; the memberships themselves would last 4 h.
    let config = Config::default().with_rtc_delayed_leave_ms(4_000).with_rtc_delayed_restart_ms(1_000);
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (alice, bob) = (Phone::with_config(alice, config.clone()), Phone::with_config(bob, config));
    let bob_user = bob.peer_user.clone();
    alice.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    bob.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    wait_members(&alice, &room, &[&bob_user]).await?;
    // Bob's process dies: no leave, no more heartbeats.
    drop(bob);
    wait_members(&alice, &room, &[]).await?;
    Ok(())
}

/// Element Call media keys between three real clients: Olm-encrypted to-device through Synapse,
/// each member ends up with the others' keys, and a leave makes the others rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keys_reach_the_others_encrypted_and_rotate_when_one_leaves() -> Result<()> {
    let (phones, room) = three_phones(Config::default()).await?;
    let users: Vec<String> = phones.iter().map(|p| p.peer_user.clone()).collect();
    for p in &phones {
        p.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    }
    let remote_keys = |phone: &Phone, from: &str| -> Vec<String> {
        let st = phone.state.lock().unwrap();
        st.events
            .iter()
            .filter_map(|e| match e {
                Event::EncryptionKey { participant, local: false, key, .. }
                    if participant.user_id.as_str() == from =>
                {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect()
    };
    // Everyone gets everyone else's key.
    for (i, p) in phones.iter().enumerate() {
        for (j, from) in users.iter().enumerate() {
            if i != j {
                voip_testkit::wait_for(&format!("{} has {from}'s key", users[i]), TIMEOUT, || {
                    let got = !remote_keys(p, from).is_empty();
                    async move { got.then_some(()) }
                })
                .await?;
            }
        }
    }
    let bobs_first = remote_keys(&phones[0], &users[1]);
    let carols_view_of_bob = remote_keys(&phones[2], &users[1]);

    // Carol leaves: Bob rotates, Alice gets the new key, Carol never does.
    phones[2]
        .command(Command::LeaveGroupCall { room_id: RoomId::from(room.as_str()), call_id: String::new() })
        .await;
    voip_testkit::wait_for("alice gets bob's rotated key", TIMEOUT, || {
        let new = remote_keys(&phones[0], &users[1]).into_iter().any(|k| !bobs_first.contains(&k));
        async move { new.then_some(()) }
    })
    .await?;
    let rotated: Vec<String> =
        remote_keys(&phones[0], &users[1]).into_iter().filter(|k| !bobs_first.contains(k)).collect();
    let carol_now = remote_keys(&phones[2], &users[1]);
    assert!(
        rotated.iter().all(|k| !carol_now.contains(k)),
        "the departed device must not receive the rotated key (had {carols_view_of_bob:?}, now {carol_now:?})"
    );
    Ok(())
}

/// A homeserver that caps MSC4140 delays (`max_event_delay_duration: 3s`) refuses our 10 s
/// delayed leave (Synapse 1.163: `400 ORG.MATRIX.MSC4140_DELAY_TOO_LARGE`, the maximum in the
/// message): the leave is scheduled again with 3 s instead of being given up, the heartbeat
/// keeps it from firing while we are there, and a client that disappears is gone within the
/// capped delay, not the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_capping_delays_gets_the_delayed_leave_at_its_maximum() -> Result<()> {
    use std::time::{Duration, Instant};
    use voip_testkit::rig::{Instance, StartOptions};
    let instance = tokio::task::spawn_blocking(|| {
        Instance::start_with_options(StartOptions::owned_by_this_process().with_max_event_delay("3s"))
    })
    .await??;
    let hs = voip_testkit::Synapse::of(&instance);
    let mut alice = Peer::new_on(&hs, "alice").await?;
    let bob = Peer::new_on(&hs, "bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (bob_url, bob_token) = (hs.url.clone(), bob.client.access_token().expect("logged in"));
    // Element Call's 10 s delay and 5 s heartbeat, both above what this server allows.
    let (alice, bob) =
        (Phone::with_config(alice, Config::default()), Phone::with_config(bob, Config::default()));
    let bob_user = bob.peer_user.clone();
    alice.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    bob.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    wait_members(&alice, &room, &[&bob_user]).await?;
    // Bob's delayed leave runs with the server's maximum.
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{bob_url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events"))
        .bearer_auth(&bob_token)
        .send()
        .await?
        .json()
        .await?;
    let delays: Vec<u64> = listed["delayed_events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["delay_ms"].as_u64().or(e["delay"].as_u64())).collect())
        .unwrap_or_default();
    assert_eq!(delays, vec![3_000], "bob's delayed leave: {listed}");
    // Several capped delays later Bob is still there: the heartbeat (every 1.5 s) keeps it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(members(&alice, &room).await, BTreeSet::from([bob_user.clone()]), "bob kept by his heartbeat");
    // Bob's process dies: gone within the 3 s maximum (plus sync), well before 10 s.
    let died = Instant::now();
    drop(bob);
    wait_members(&alice, &room, &[]).await?;
    let gone = died.elapsed();
    assert!(gone < Duration::from_millis(8_000), "bob gone after {gone:?}");
    eprintln!("capped delayed leave: bob gone {gone:?} after his process died");
    drop(alice);
    Ok(())
}
