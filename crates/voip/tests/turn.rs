//! Calls relayed through a real TURN server (issue #18): coturn on loopback with Synapse's
//! `turn_shared_secret`, both sides relay-only (`WebrtcConfig::with_relay_only`), TURN
//! credentials from the homeserver's `/voip/turnServer` merged with the app's own ICE servers,
//! Olm/Megolm signalling, real webrtc-rs media both ways; and a relayed call held past the TTL
//! of its TURN credentials (refreshed into the call with an ICE restart). Each test starts its
//! own Synapse (the shared one's TURN secret is not known) and its own `turnserver`, installing
//! coturn with apt when missing (as root).
#![recursion_limit = "256"]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    person_with(hs, name, |c| c).await
}

/// A relay-only person whose engine configuration `tune` adjusts.
async fn person_with(
    hs: &voip_testkit::Synapse,
    name: &str,
    tune: impl FnOnce(WebrtcConfig) -> WebrtcConfig,
) -> Result<Person> {
    let user = voip_testkit::register_user_on(hs, name).await?;
    let client = voip_testkit::login(&user, None).await?;
    let config = tune(
        WebrtcConfig::loopback()
            .with_relay_only(true)
            .with_ice_servers(vec![IceServer { urls: vec![APP_STUN.into()], ..IceServer::default() }]),
    );
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

/// Synapse's TURN credentials live this long in the refresh test (`turn_user_lifetime`);
/// `voip-matrix` fetches new ones after half of it (`TurnServers::refresh_at`).
const TTL: Duration = Duration::from_secs(20);

/// The TURN server entry the homeserver added to `p`'s engine.
fn turn_entry(p: &Person, uri: &str) -> Result<IceServer> {
    let engine = p.voip.webrtc().context("webrtc")?;
    engine.ice_servers().into_iter().find(|s| s.urls.iter().any(|u| u == uri)).context("no TURN server")
}

/// The expiry (Unix seconds) a TURN REST username (`"<expiry>:<user>"`) carries.
fn expiry(username: &str) -> Result<u64> {
    username
        .split(':')
        .next()
        .and_then(|e| e.parse().ok())
        .with_context(|| format!("TURN REST username {username}"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// coturn's verdicts on the requests signed with a username of `user`:
/// `(request, username, accepted)`, in log order.
fn verdicts(log: &str, user: &str) -> Vec<(String, String, bool)> {
    log.lines()
        .filter_map(|l| {
            let name = l.split("user <").nth(1)?.split('>').next()?;
            let rest = l.split("incoming packet ").nth(1)?;
            let request = rest.split(' ').next()?;
            (name.ends_with(&format!(":{user}")) && rest.contains("processed,"))
                .then(|| (request.to_owned(), name.to_owned(), rest.contains("processed, success")))
        })
        .collect()
}

/// Audio packets received on each side of a call.
fn audio(pair: &[(&Person, voip::Call); 2]) -> [u64; 2] {
    [0, 1].map(|i| received(&pair[i].0.voip, &pair[i].1, MediaKind::Audio, None))
}

/// Issue #18: a relay-only call held past the TTL of its TURN REST credentials (Synapse's
/// `turn_shared_secret`, TTL 20 s here) keeps a relay it can rebuild. Each refresh of the
/// credentials goes into the live peer connection and restarts ICE on the call, which
/// allocates a new relay with them: coturn sees allocations under several usernames, refreshes
/// signed with newer ones, and refuses nothing. After about twice the TTL both sides restart
/// ICE once more (what a network change does) and the media continues. The same call without
/// live ICE server updates still holds its first allocation (coturn 4.6.1 keeps refreshing an
/// existing allocation with an expired username: measured, the key is checked once per
/// session), but that restart must allocate with the expired username, coturn refuses it, and
/// the call loses its media. Both calls run at once on one Synapse and one coturn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_outlives_its_turn_credentials() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc_dtls=error,matrix_sdk=error,webrtc=off,rtc=off".into()),
        )
        .with_test_writer()
        .try_init();
    let secret = voip_testkit::rig::random_hex(16);
    let s = secret.clone();
    let coturn = tokio::task::spawn_blocking(move || Coturn::start(&s)).await??;
    let (uri, s) = (coturn.uri(), secret.clone());
    let instance = tokio::task::spawn_blocking(move || {
        Instance::start_with_options(
            StartOptions::owned_by_this_process()
                .with_turn(uri, s)
                .with_turn_user_lifetime(format!("{}s", TTL.as_secs())),
        )
    })
    .await??;
    let hs = voip_testkit::Synapse::of(&instance);
    let uri = coturn.uri();

    // alice and bob get fresh credentials into their call; carol and dave do not.
    let alice = person_with(&hs, "alice", |c| c.with_live_ice_server_updates(true)).await?;
    let bob = person_with(&hs, "bob", |c| c.with_live_ice_server_updates(true)).await?;
    let carol = person_with(&hs, "carol", |c| c.with_live_ice_server_updates(false)).await?;
    let dave = person_with(&hs, "dave", |c| c.with_live_ice_server_updates(false)).await?;
    for p in [&alice, &bob, &carol, &dave] {
        let engine = p.voip.webrtc().context("webrtc")?;
        within(
            "TURN credentials from /voip/turnServer",
            wait_until(|| engine.ice_servers().iter().any(|s| s.urls.contains(&uri))),
        )
        .await?;
    }
    let room = encrypted_room(&[&alice.client, &bob.client]).await?;
    let other_room = encrypted_room(&[&carol.client, &dave.client]).await?;

    let mut pairs = Vec::new();
    for (caller, callee, room) in [(&alice, &bob, &room), (&carol, &dave, &other_room)] {
        let mut incoming = callee.voip.incoming_calls();
        let call =
            caller.voip.invite_to_call(room, CallType::Voice, &callee.voip.local_device().user_id).await?;
        let ringing = within("the phone rings", incoming.next()).await?.context("runtime stopped")?;
        ringing.answer().await?;
        pairs.push([(caller, call), (callee, ringing)]);
    }
    for pair in &pairs {
        within(
            "connected with audio both ways through the relay",
            wait_until(|| {
                pair.iter().all(|(p, c)| {
                    c.state() == CallState::Connected && received(&p.voip, c, MediaKind::Audio, None) > 0
                })
            }),
        )
        .await?;
    }
    let connected = Instant::now();
    // The credentials the calls started with expire by `first_expiry` (the latest expiry the
    // four engines hold now; a call cannot have started with later ones).
    let mut first_expiry = 0;
    for p in [&alice, &bob, &carol, &dave] {
        first_expiry = first_expiry.max(expiry(&turn_entry(p, &uri)?.username)?);
    }
    // Hold the calls until a TTL after that: about twice the TTL after the first fetch, when
    // the credentials of the first refresh have expired too.
    let wait = (first_expiry + TTL.as_secs()).saturating_sub(unix_now());
    eprintln!(
        "credentials expire in {} s; holding both calls {wait} s",
        first_expiry.saturating_sub(unix_now())
    );
    // The longest time without a new audio packet on the refreshed call, each way (sampled
    // every 20 ms): what each ICE restart onto a new allocation costs.
    let until = Instant::now() + Duration::from_secs(wait);
    let (mut last, mut since, mut longest) = (audio(&pairs[0]), [Instant::now(); 2], [Duration::ZERO; 2]);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = audio(&pairs[0]);
        for i in 0..2 {
            if now[i] > last[i] {
                since[i] = Instant::now();
            }
            longest[i] = longest[i].max(since[i].elapsed());
        }
        last = now;
    }
    let before = audio(&pairs[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = audio(&pairs[0]);
    eprintln!(
        "{:?} after connecting ({} s past the first credentials' expiry): refreshed call, audio packets \
         in 2 s alice<-bob {} bob<-alice {}; longest audio gap alice<-bob {:?}, bob<-alice {:?}",
        connected.elapsed(),
        unix_now().saturating_sub(first_expiry),
        after[0] - before[0],
        after[1] - before[1],
        longest[0],
        longest[1],
    );
    for (i, (p, c)) in pairs[0].iter().enumerate() {
        assert_eq!(
            c.state(),
            CallState::Connected,
            "{:?} is still in the call",
            p.voip.local_device().user_id
        );
        assert!(after[i] - before[i] >= 25, "audio keeps flowing both ways: {before:?} -> {after:?}");
        let local = relayed(p, c).await?.local.context("selected pair without its local candidate")?;
        assert_eq!(local.candidate_type, "relay", "still relayed");
    }
    let log = coturn.log();
    for p in [&alice, &bob] {
        let user = p.voip.local_device().user_id.to_string();
        let all = verdicts(&log, &user);
        let usernames: BTreeSet<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
        let fresh = all.iter().filter(|(_, n, ok)| *ok && expiry(n).is_ok_and(|e| e > first_expiry)).count();
        eprintln!(
            "coturn, {user}: {} requests accepted ({fresh} with credentials newer than the first), \
             allocations under {} usernames",
            all.iter().filter(|v| v.2).count(),
            usernames.len()
        );
        // An ICE restart with each refresh: new allocations under the first username and at
        // least two refreshed ones.
        assert!(usernames.len() >= 3, "allocations with each refreshed username: {usernames:?}");
        assert!(fresh > 0, "requests signed with credentials newer than the first");
        let refused: Vec<_> = all.iter().filter(|v| !v.2).collect();
        assert!(refused.is_empty(), "coturn refused none of {user}'s requests: {refused:?}");
    }

    // Both calls restart ICE, past the TTL (a network change would).
    for pair in &pairs {
        pair[0].1.restart_ice().await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = [audio(&pairs[0]), audio(&pairs[1])];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = [audio(&pairs[0]), audio(&pairs[1])];
    let grew = |k: usize, i: usize| after[k][i].saturating_sub(before[k][i]);
    eprintln!(
        "4-7 s after an ICE restart: audio packets in 3 s, refreshed alice<-bob {} bob<-alice {}, \
         not refreshed carol<-dave {} dave<-carol {} (calls {:?}, {:?})",
        grew(0, 0),
        grew(0, 1),
        grew(1, 0),
        grew(1, 1),
        pairs[0][0].1.state(),
        pairs[1][0].1.state(),
    );
    for i in 0..2 {
        assert!(
            grew(0, i) >= 50,
            "the refreshed call's audio continues after the restart: {before:?} -> {after:?}"
        );
        assert!(
            grew(1, i) < 5,
            "the call without fresh credentials lost its media at the restart: {before:?} -> {after:?}"
        );
    }
    let log = coturn.log();
    for p in [&carol, &dave] {
        let user = p.voip.local_device().user_id.to_string();
        let all = verdicts(&log, &user);
        let usernames: BTreeSet<&str> = all.iter().map(|(_, n, _)| n.as_str()).collect();
        // coturn names a refused allocation request "message" in its log.
        let refused: Vec<_> = all.iter().filter(|v| !v.2).collect();
        eprintln!("coturn, {user}: usernames {usernames:?}, refused requests {refused:?}");
        assert_eq!(usernames.len(), 1, "{user}'s call kept its first credentials");
        assert!(
            !refused.is_empty(),
            "coturn refuses {user}'s new allocation with the expired username: {all:?}"
        );
    }

    for p in [&alice, &bob, &carol, &dave] {
        p.voip.shutdown().await;
    }
    drop(instance);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
