//! Group calls end to end: real cores on three devices, memberships in both dialects through a
//! real Synapse, MSC4140 delayed leave, Olm-encrypted media keys with rotation.

use std::collections::BTreeSet;

use anyhow::Result;
use voip_core::{
    CallState, Command, Config, Event, Focus, GroupCallId, GroupCallState, MembershipDialect, RoomId,
};

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
    }
}

pub(crate) fn members(phone: &Phone, room: &str) -> BTreeSet<String> {
    let st = phone.state.lock().unwrap();
    let info = st.voip.group_call(&GroupCallId::room_call(RoomId::from(room)));
    info.members.into_iter().map(|m| m.participant.user_id.0).collect()
}

pub(crate) async fn wait_members(phone: &Phone, room: &str, expected: &[&str]) -> Result<()> {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    voip_testkit::wait_for(&format!("{} sees {expected:?}", phone.peer_user), TIMEOUT, || {
        let ok = members(phone, room) == expected;
        async move { ok.then_some(()) }
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
            p.command(join_command(&room, dialect));
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
        phones[2].command(Command::LeaveGroupCall {
            room_id: RoomId::from(room.as_str()),
            call_id: String::new(),
        });
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
    let config = Config { rtc_delayed_leave_ms: 4_000, rtc_delayed_restart_ms: 1_000, ..Config::default() };
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (alice, bob) = (Phone::with_config(alice, config.clone()), Phone::with_config(bob, config));
    let bob_user = bob.peer_user.clone();
    alice.command(join_command(&room, MembershipDialect::MatrixRtc));
    bob.command(join_command(&room, MembershipDialect::MatrixRtc));
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
        p.command(join_command(&room, MembershipDialect::MatrixRtc));
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
        .command(Command::LeaveGroupCall { room_id: RoomId::from(room.as_str()), call_id: String::new() });
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
