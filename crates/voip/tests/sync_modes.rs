//! Calls under each way an app syncs (issue #18), against a real Synapse with Olm/Megolm and real
//! webrtc-rs media: matrix-sdk's `Client::sync`, `voip::sync` (a `sync_once` loop without the
//! 1 s pause) and matrix-sdk-ui's `SyncService` (simplified sliding sync, MSC4186) through
//! `voip::sync::sync_service`. Needs feature `sync-service`:
//! `cargo test -p voip --features sync-service --test sync_modes`.
#![recursion_limit = "256"]

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use support::{encrypted_room, received, wait_until, within, MatrixPerson, SyncMode};
use voip::core::media::MediaKind;
use voip::StreamExt;
use voip::{CallState, CallType, Config, EndReason, GroupCallBackend, Initiator};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "warn,rtc_dtls=error,matrix_sdk=error,matrix_sdk::http_client=off,matrix_sdk_ui=error".into()
        }))
        .with_test_writer()
        .try_init();
}

async fn person(name: &str, mode: SyncMode) -> Result<MatrixPerson> {
    init_tracing();
    MatrixPerson::with_sync(voip_testkit::synapse(), name, Config::default(), mode).await
}

/// Alice calls Bob by voice, Bob answers when it rings; returns the set-up time (invite until
/// both connected with audio both ways), then Bob hangs up and both see the end.
async fn call_and_hang_up(
    alice: &MatrixPerson,
    bob: &MatrixPerson,
    room: &voip::core::RoomId,
) -> Result<Duration> {
    let mut incoming = bob.voip.incoming_calls();
    let t0 = Instant::now();
    let call = alice.voip.invite_to_call(room, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let ringing = within("bob's phone rings", incoming.next()).await?.context("runtime stopped")?;
    assert_eq!(ringing.id(), call.id());
    ringing.answer().await?;
    within(
        "connected with audio both ways",
        wait_until(|| {
            [(&alice.voip, &call), (&bob.voip, &ringing)]
                .iter()
                .all(|(v, c)| c.state() == CallState::Connected && received(v, c, MediaKind::Audio, None) > 0)
        }),
    )
    .await?;
    let setup = t0.elapsed();
    within("more audio both ways", {
        wait_until(|| {
            [(&alice.voip, &call), (&bob.voip, &ringing)]
                .iter()
                .all(|(v, c)| received(v, c, MediaKind::Audio, None) >= 25)
        })
    })
    .await?;
    ringing.hangup().await?;
    let (reason, initiator) = within("alice sees the hang-up", call.ended()).await?.context("no end")?;
    assert_eq!((reason, initiator), (EndReason::UserHangup, Initiator::Remote));
    within("bob's call ended", ringing.ended()).await?.context("no end")?;
    Ok(setup)
}

async fn one_to_one(alice_mode: SyncMode, bob_mode: SyncMode, tag: &str) -> Result<Vec<Duration>> {
    let alice = person(&format!("alice-{tag}"), alice_mode).await?;
    let bob = person(&format!("bob-{tag}"), bob_mode).await?;
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;
    // Two calls: the first one also sets up the Olm session and the Megolm key share.
    let mut times = Vec::new();
    for _ in 0..2 {
        times.push(call_and_hang_up(&alice, &bob, &room).await?);
    }
    eprintln!("{tag}: set-up {times:?}");
    for p in [&alice, &bob] {
        p.voip.shutdown().await;
    }
    Ok(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_when_both_sync_with_sync_service() -> Result<()> {
    let times = one_to_one(SyncMode::Service, SyncMode::Service, "ss").await?;
    assert_eq!(times.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_when_both_sync_with_the_voip_helper() -> Result<()> {
    let times = one_to_one(SyncMode::Helper, SyncMode::Helper, "helper").await?;
    assert_eq!(times.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_when_both_use_client_sync() -> Result<()> {
    let times = one_to_one(SyncMode::ClientSync, SyncMode::ClientSync, "sdk").await?;
    assert_eq!(times.len(), 2);
    Ok(())
}

/// Under `Client::sync` the caller's sync sleeps a second right after its own invite's echo
/// when another response came just before (here: the previous call's hang-up); the adapter's
/// answer watch brings the answer ahead of it (voip-matrix `answer_watch.rs`). Calls back to
/// back in one encrypted room: the answers after the first come through the watch, decrypted
/// (Megolm), and the calls work as before. The set-up time itself is measured by
/// `cargo xtask bench` ("Sync modes"), not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_client_sync_the_answer_comes_ahead_of_the_sleeping_sync() -> Result<()> {
    let alice = person("alice-watch", SyncMode::ClientSync).await?;
    let bob = person("bob-watch", SyncMode::ClientSync).await?;
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;
    let adapter = alice.voip.matrix().context("a matrix runtime")?.clone();
    let mut times = Vec::new();
    let mut ahead = Vec::new();
    for _ in 0..3 {
        times.push(call_and_hang_up(&alice, &bob, &room).await?);
        ahead.push(adapter.events_ahead_of_sync());
    }
    eprintln!("client-sync with the answer watch: set-up {times:?}, events ahead of sync {ahead:?}");
    assert!(ahead[2] > ahead[0], "the answers of the later calls did not come through the watch: {ahead:?}");
    for p in [&alice, &bob] {
        p.voip.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_call_between_sync_service_and_client_sync() -> Result<()> {
    let times = one_to_one(SyncMode::Service, SyncMode::ClientSync, "mixed").await?;
    assert_eq!(times.len(), 2);
    Ok(())
}

async fn three(mode: SyncMode, tag: &str) -> Result<(Vec<MatrixPerson>, voip::core::RoomId)> {
    let mut ps = Vec::new();
    for n in ["a", "b", "c"] {
        ps.push(person(&format!("{n}-{tag}"), mode).await?);
    }
    let clients: Vec<_> = ps.iter().map(|p| &p.client).collect();
    let room = encrypted_room(&clients).await?;
    Ok((ps, room))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_call_when_everyone_syncs_with_sync_service() -> Result<()> {
    let (ps, room) = three(SyncMode::Service, "mesh-ss").await?;
    let groups: Vec<_> = futures_util::future::try_join_all(
        ps.iter().map(|p| p.voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh)),
    )
    .await?;
    for g in &groups {
        g.enter().await?;
    }
    within(
        "everyone connected to everyone with audio",
        wait_until(|| {
            ps.iter().zip(&groups).all(|(p, g)| {
                let calls = g.peer_calls();
                g.participants().len() == 2
                    && calls.len() == 2
                    && calls.iter().all(|(_, c)| {
                        c.state() == CallState::Connected
                            && received(&p.voip, c, MediaKind::Audio, None) >= 25
                    })
            })
        }),
    )
    .await?;
    groups[2].leave().await?;
    within(
        "the leaver is gone for the others",
        wait_until(|| groups[..2].iter().all(|g| g.participants().len() == 1 && g.peer_calls().len() == 1)),
    )
    .await?;
    for g in &groups[..2] {
        g.leave().await?;
    }
    within("everyone left", wait_until(|| groups.iter().all(|g| !g.is_active()))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_membership_and_keys_when_everyone_syncs_with_sync_service() -> Result<()> {
    let (ps, room) = three(SyncMode::Service, "lk-ss").await?;
    let backend =
        GroupCallBackend::LiveKit { service_url: "https://livekit-jwt.example.org".into(), alias: None };
    let groups: Vec<_> = futures_util::future::try_join_all(
        ps.iter().map(|p| p.voip.fetch_or_create_group_call(&room, backend.clone())),
    )
    .await?;
    for g in &groups {
        g.enter().await?;
    }
    within(
        "every member sees the others and has their keys",
        wait_until(|| {
            groups.iter().all(|g| {
                g.participants().len() == 2
                    && g.media_keys().is_some_and(|k| k.local.is_some() && k.remote.len() == 2)
            })
        }),
    )
    .await?;
    let rest = &groups[..2];
    let before: Vec<String> =
        rest.iter().map(|g| g.media_keys().and_then(|k| k.local).map(|l| l.1).unwrap_or_default()).collect();
    groups[2].leave().await?;
    within(
        "both remaining members rotated to a key the other has",
        wait_until(|| {
            let keys: Vec<_> = rest.iter().filter_map(|g| g.media_keys()).collect();
            let locals: Vec<Option<String>> =
                keys.iter().map(|k| k.local.as_ref().map(|l| l.1.clone())).collect();
            keys.len() == 2
                && rest.iter().all(|g| g.participants().len() == 1)
                && locals.iter().zip(&before).all(|(l, b)| l.as_ref().is_some_and(|l| l != b))
                && keys.iter().all(|k| {
                    k.remote.len() == 1
                        && k.remote.iter().all(|(_, _, key)| locals.iter().any(|l| l.as_deref() == Some(key)))
                })
        }),
    )
    .await?;
    for g in rest {
        g.leave().await?;
    }
    within("everyone left", wait_until(|| groups.iter().all(|g| !g.is_active()))).await?;
    Ok(())
}
