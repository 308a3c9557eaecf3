//! End-to-end tests of the public API: real Synapse (voip-testkit's rig, or `SYNAPSE_URL`),
//! matrix-sdk clients with Olm/Megolm, real webrtc-rs media over loopback.
#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use support::{encrypted_room, received, wait_until, within, MatrixPerson};
use voip::core::media::MediaKind;
use voip::StreamExt;
use voip::{CallState, CallType, CallUpdate, Config, EndReason, GroupCallBackend, Initiator};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc_dtls=error,matrix_sdk=error".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn people(names: &[&str], config: Config) -> Result<Vec<MatrixPerson>> {
    init_tracing();
    let hs = voip_testkit::synapse();
    let mut v = Vec::new();
    for n in names {
        v.push(MatrixPerson::new(hs, n, config.clone()).await?);
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_with_media_both_ways_then_hangup() -> Result<()> {
    let p = people(&["alice", "bob"], Config::default()).await?;
    let (alice, bob) = (&p[0], &p[1]);
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;
    let mut incoming = bob.voip.incoming_calls();

    let call = alice.voip.invite_to_call(&room, CallType::Video, &bob.voip.local_device().user_id).await?;
    let ringing = within("incoming call", incoming.next()).await?.context("runtime stopped")?;
    assert_eq!(ringing.id(), call.id());
    assert_eq!(ringing.remote_user().as_ref(), Some(&alice.voip.local_device().user_id));
    assert_eq!(ringing.info().map(|i| i.call_type), Some(CallType::Video));
    ringing.answer().await?;
    within("alice connected", call.wait_for_state(CallState::Connected)).await?.context("ended")?;
    within("bob connected", ringing.wait_for_state(CallState::Connected)).await?.context("ended")?;
    within(
        "audio and video both ways",
        wait_until(|| {
            [(&alice.voip, &call), (&bob.voip, &ringing)].iter().all(|(v, c)| {
                received(v, c, MediaKind::Audio, None) >= 25 && received(v, c, MediaKind::Video, None) >= 10
            })
        }),
    )
    .await?;

    ringing.hangup().await?;
    let (reason, initiator) = within("alice sees the end", call.ended()).await?.context("no end")?;
    assert_eq!((reason, initiator), (EndReason::UserHangup, Initiator::Remote));
    let (_, initiator) = within("bob's end", ringing.ended()).await?.context("no end")?;
    assert_eq!(initiator, Initiator::LocalUser);
    // The engine released the call.
    let engine = alice.voip.webrtc().expect("webrtc");
    within("alice's media closed", async {
        while !engine.calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_callee_and_missed_call() -> Result<()> {
    let p = people(&["alice", "bob", "carol"], Config::default()).await?;
    let (alice, bob, carol) = (&p[0], &p[1], &p[2]);
    let ab = encrypted_room(&[&alice.client, &bob.client]).await?;
    let cb = encrypted_room(&[&carol.client, &bob.client]).await?;
    let mut incoming = bob.voip.incoming_calls();
    let mut missed = bob.voip.missed_calls();

    // Bob is in a call with Alice...
    let call = alice.voip.invite_to_call(&ab, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let ringing = within("bob rings", incoming.next()).await?.context("stopped")?;
    ringing.answer().await?;
    within("connected", call.wait_for_state(CallState::Connected)).await?.context("ended")?;
    assert!(!bob.voip.can_handle_new_call());

    // ...so Carol's call is refused as busy, and Bob gets a missed call.
    let carols = carol.voip.invite_to_call(&cb, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let (reason, _) = within("carol's call ends", carols.ended()).await?.context("no end")?;
    assert_eq!(reason, EndReason::UserBusy);
    let m = within("missed call", missed.next()).await?.context("stopped")?;
    assert_eq!((m.call_id.clone(), m.reason), (carols.id().clone(), EndReason::UserBusy));
    assert_eq!(m.caller, carol.voip.local_device().user_id);
    assert_eq!(call.state(), CallState::Connected, "the call in progress is untouched");
    call.hangup().await?;
    within("bob's call ends", ringing.ended()).await?;

    // Unanswered: Carol gives up before Bob answers: a missed call, not an answered one.
    let again = carol.voip.invite_to_call(&cb, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let rang = within("bob rings again", incoming.next()).await?.context("stopped")?;
    assert_eq!(rang.id(), again.id());
    again.hangup().await?;
    let m = within("second missed call", missed.next()).await?.context("stopped")?;
    assert_eq!(m.call_id, *again.id());
    let (reason, initiator) = within("bob's ringing stops", rang.ended()).await?.context("no end")?;
    assert_eq!((reason, initiator), (EndReason::UserHangup, Initiator::Remote));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glare_between_two_real_clients_leaves_one_connected_call() -> Result<()> {
    let p = people(&["alice", "bob"], Config::default()).await?;
    let (alice, bob) = (&p[0], &p[1]);
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;
    // Both call at the same moment: neither has seen the other's invite yet.
    let a = alice.voip.invite_to_call(&room, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let b = bob.voip.invite_to_call(&room, CallType::Voice, &alice.voip.local_device().user_id).await?;
    let (mut ea, mut eb) = (a.updates(), b.updates());
    let survivor = |events: &mut voip::CallUpdates| {
        let mut replaced = None;
        while let Some(ev) = events.try_next() {
            if let CallUpdate::Replaced { new_call } = ev {
                replaced = Some(new_call);
            }
        }
        replaced
    };
    // Exactly one of the two outgoing calls is replaced, on both sides, by the other one.
    let (loser_side, winner) = within("glare resolved", async {
        loop {
            if let Some(n) = survivor(&mut ea) {
                return Ok::<_, anyhow::Error>((0, n));
            }
            if let Some(n) = survivor(&mut eb) {
                return Ok((1, n));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    let (winner_call, other_side) = if loser_side == 0 { (&b, &bob.voip) } else { (&a, &alice.voip) };
    assert_eq!(winner.id(), winner_call.id(), "the surviving call is the other side's");
    within("winner connected", winner.wait_for_state(CallState::Connected)).await?.context("ended")?;
    within("winner's caller connected", winner_call.wait_for_state(CallState::Connected))
        .await?
        .context("ended")?;
    let loser = if loser_side == 0 { &a } else { &b };
    assert_eq!(loser.state(), CallState::Ended);
    let live: Vec<_> = other_side
        .calls()
        .into_iter()
        .filter(|c| c.state() != CallState::Ended)
        .map(|c| c.id().clone())
        .collect();
    assert_eq!(live, vec![winner.id().clone()], "one live call per pair");
    winner.hangup().await?;
    within("ended", winner_call.ended()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_person_mesh_call_with_media_between_everyone() -> Result<()> {
    let p = people(&["alice", "bob", "carol"], Config::default()).await?;
    let clients: Vec<_> = p.iter().map(|x| &x.client).collect();
    let room = encrypted_room(&clients).await?;
    let groups: Vec<_> = futures_util::future::try_join_all(
        p.iter().map(|x| x.voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh)),
    )
    .await?;
    for g in &groups {
        g.enter().await?;
    }
    within(
        "everyone connected to everyone with audio",
        wait_until(|| {
            p.iter().zip(&groups).all(|(x, g)| {
                let calls = g.peer_calls();
                g.participants().len() == 2
                    && calls.len() == 2
                    && calls.iter().all(|(_, c)| {
                        c.state() == CallState::Connected
                            && received(&x.voip, c, MediaKind::Audio, None) >= 25
                    })
            })
        }),
    )
    .await?;
    // Carol leaves: the others see it and their calls with her end.
    groups[2].leave().await?;
    within(
        "carol gone for alice and bob",
        wait_until(|| groups[..2].iter().all(|g| g.participants().len() == 1 && g.peer_calls().len() == 1)),
    )
    .await?;
    within("carol left", wait_until(|| !groups[2].is_active())).await?;
    for g in &groups[..2] {
        g.leave().await?;
    }
    within("alice and bob left", wait_until(|| groups.iter().all(|g| !g.is_active()))).await?;
    if groups.iter().any(|g| !g.peer_calls().is_empty()) {
        bail!("peer calls survived leaving");
    }
    Ok(())
}
