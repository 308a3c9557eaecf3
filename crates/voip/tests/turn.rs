//! Calls relayed through a real TURN server (issue #18): coturn on loopback with Synapse's
//! `turn_shared_secret`, both sides relay-only (`WebrtcConfig::with_relay_only`), TURN
//! credentials from the homeserver's `/voip/turnServer` merged with the app's own ICE servers,
//! Olm/Megolm signalling, real webrtc-rs media both ways. This test starts its own Synapse (the
//! shared one's TURN secret is not known) and its own `turnserver`, installing coturn with apt
//! when missing (as root).
#![recursion_limit = "256"]

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use support::{encrypted_room, received, wait_until, within};
use voip::core::media::MediaKind;
use voip::webrtc::{IceServer, WebrtcConfig};
use voip::StreamExt;
use voip::{CallState, CallType, EndReason, Initiator, Voip};
use voip_testkit::coturn::Coturn;
use voip_testkit::rig::{Instance, StartOptions};

struct Person {
    voip: Voip,
    client: matrix_sdk::Client,
    _sync: voip_testkit::Syncing,
}

/// A STUN server the app configures itself; nothing listens there (relay-only never uses it), it
/// only has to stay in the list next to the homeserver's TURN server.
const APP_STUN: &str = "stun:127.0.0.1:9";

async fn person(hs: &voip_testkit::Synapse, name: &str) -> Result<Person> {
    let user = voip_testkit::register_user_on(hs, name).await?;
    let client = voip_testkit::login(&user, None).await?;
    let config = WebrtcConfig::loopback()
        .with_relay_only(true)
        .with_ice_servers(vec![IceServer { urls: vec![APP_STUN.into()], ..IceServer::default() }]);
    let voip = Voip::from_client(&client)?.webrtc(config).build()?;
    let _sync = voip_testkit::Syncing::start(&client).await?;
    Ok(Person { voip, client, _sync })
}

async fn relayed(p: &Person, call: &voip::Call) -> Result<voip::webrtc::SelectedPair> {
    let stats = p.voip.webrtc().context("webrtc")?.stats(call.id()).await?;
    stats.selected_pair.context("no selected candidate pair")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_coturn_with_media_both_ways() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc_dtls=error,matrix_sdk=error".into()),
        )
        .with_test_writer()
        .try_init();
    let secret = voip_testkit::rig::random_hex(16);
    let s = secret.clone();
    let coturn = tokio::task::spawn_blocking(move || Coturn::start(&s)).await??;
    let (uri, s) = (coturn.uri(), secret.clone());
    let instance = tokio::task::spawn_blocking(move || {
        Instance::start_with_options(StartOptions::owned_by_this_process().with_turn(uri, s))
    })
    .await??;
    let hs = voip_testkit::Synapse::of(&instance);

    let alice = person(&hs, "alice").await?;
    let bob = person(&hs, "bob").await?;
    // The homeserver's TURN server is added to the app's STUN server, not put in its place.
    for p in [&alice, &bob] {
        let engine = p.voip.webrtc().context("webrtc")?;
        within(
            "TURN credentials from /voip/turnServer",
            wait_until(|| engine.ice_servers().iter().any(|s| s.urls.contains(&coturn.uri()))),
        )
        .await?;
        let servers = engine.ice_servers();
        assert_eq!(servers[0].urls, vec![APP_STUN.to_owned()], "the app's own server comes first");
        assert!(servers[1].username.contains(':') && !servers[1].credential.is_empty(), "REST credentials");
    }
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;

    let mut incoming = bob.voip.incoming_calls();
    let t0 = Instant::now();
    let call = alice.voip.invite_to_call(&room, CallType::Voice, &bob.voip.local_device().user_id).await?;
    let ringing = within("bob's phone rings", incoming.next()).await?.context("runtime stopped")?;
    ringing.answer().await?;
    within(
        "connected with audio both ways through the relay",
        wait_until(|| {
            [(&alice.voip, &call), (&bob.voip, &ringing)]
                .iter()
                .all(|(v, c)| c.state() == CallState::Connected && received(v, c, MediaKind::Audio, None) > 0)
        }),
    )
    .await?;
    eprintln!("relayed set-up (invite -> audio both ways): {:?}", t0.elapsed());
    within(
        "more audio both ways",
        wait_until(|| {
            [(&alice.voip, &call), (&bob.voip, &ringing)]
                .iter()
                .all(|(v, c)| received(v, c, MediaKind::Audio, None) >= 50)
        }),
    )
    .await?;
    for (p, c) in [(&alice, &call), (&bob, &ringing)] {
        let pair = relayed(p, c).await?;
        let local = pair.local.clone().context("selected pair without its local candidate")?;
        assert_eq!(local.candidate_type, "relay", "relay-only: media goes through coturn ({pair:?})");
        assert_eq!(local.address, "127.0.0.1");
    }
    // coturn granted both sides an allocation and permissions for the peer's relay address.
    let log = coturn.log();
    let allocations = log.lines().filter(|l| l.contains("ALLOCATE processed, success")).count();
    let permissions = log.lines().filter(|l| l.contains("CREATE_PERMISSION processed, success")).count();
    assert!(
        allocations >= 2 && permissions >= 2,
        "coturn log: {allocations} allocations, {permissions} permissions"
    );

    ringing.hangup().await?;
    let (reason, initiator) = within("alice sees the hang-up", call.ended()).await?.context("no end")?;
    assert_eq!((reason, initiator), (EndReason::UserHangup, Initiator::Remote));
    for p in [&alice, &bob] {
        p.voip.shutdown().await;
    }
    drop(instance);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
