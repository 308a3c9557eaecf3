//! Calls relayed through a real TURN server (issue #18): coturn on loopback with Synapse's
//! `turn_shared_secret`, both sides relay-only (`WebrtcConfig::with_relay_only`), TURN
//! credentials from the homeserver's `/voip/turnServer` merged with the app's own ICE servers,
//! Olm/Megolm signalling, real webrtc-rs media both ways; and relayed calls held past the TTL
//! of their TURN credentials (refreshed into the live call by default, with an ICE restart at
//! each refresh when opted in, not at all as the failing control). Each test starts its
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

/// Tracing with `filter` (unless `RUST_LOG` says otherwise), then coturn with a fresh REST
/// secret and a Synapse handing out its credentials (`turn_uris`, `turn_shared_secret`), with
/// `options` for anything more.
async fn coturn_and_synapse(
    filter: &str,
    options: impl FnOnce(StartOptions) -> StartOptions + Send + 'static,
) -> Result<(Coturn, Instance)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_test_writer()
        .try_init();
    let secret = voip_testkit::rig::random_hex(16);
    let s = secret.clone();
    let coturn = tokio::task::spawn_blocking(move || Coturn::start(&s)).await??;
    let uri = coturn.uri();
    let instance = tokio::task::spawn_blocking(move || {
        Instance::start_with_options(options(StartOptions::owned_by_this_process().with_turn(uri, secret)))
    })
    .await??;
    Ok((coturn, instance))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_coturn_with_media_both_ways() -> Result<()> {
    let (coturn, instance) = coturn_and_synapse("warn,rtc_dtls=error,matrix_sdk=error", |o| o).await?;
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

/// What coturn's `log` says of `p`'s requests: its user id, the usernames used, how many
/// requests it accepted with credentials newer than `first_expiry`, and the refused requests.
type CoturnView = (String, BTreeSet<String>, usize, Vec<(String, String, bool)>);

fn coturn_view(log: &str, p: &Person, first_expiry: u64) -> CoturnView {
    let user = p.voip.local_device().user_id.to_string();
    let all = verdicts(log, &user);
    let usernames: BTreeSet<String> = all.iter().map(|(_, n, _)| n.clone()).collect();
    let fresh = all.iter().filter(|(_, n, ok)| *ok && expiry(n).is_ok_and(|e| e > first_expiry)).count();
    let refused: Vec<_> = all.iter().filter(|v| !v.2).cloned().collect();
    eprintln!(
        "coturn, {user}: {} requests accepted ({fresh} with credentials newer than the first), \
         usernames {usernames:?}, {} refused",
        all.len() - refused.len(),
        refused.len()
    );
    (user, usernames, fresh, refused)
}

/// The longest time without a new audio packet, each way, over each call of `pairs`, sampled
/// every 20 ms until `until`; and coturn's log as it was at `snapshot_at` (on the way).
async fn longest_gaps(
    pairs: &[[(&Person, voip::Call); 2]],
    until: Instant,
    coturn: &Coturn,
    snapshot_at: Instant,
) -> (Vec<[Duration; 2]>, String) {
    let mut last: Vec<[u64; 2]> = pairs.iter().map(audio).collect();
    let mut since = vec![[Instant::now(); 2]; pairs.len()];
    let mut longest = vec![[Duration::ZERO; 2]; pairs.len()];
    let mut snapshot = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (k, pair) in pairs.iter().enumerate() {
            let now = audio(pair);
            for i in 0..2 {
                if now[i] > last[k][i] {
                    since[k][i] = Instant::now();
                }
                longest[k][i] = longest[k][i].max(since[k][i].elapsed());
            }
            last[k] = now;
        }
        if snapshot.is_none() && Instant::now() >= snapshot_at {
            snapshot = Some(coturn.log());
        }
    }
    (longest, snapshot.unwrap_or_else(|| coturn.log()))
}

/// Allocation refreshes coturn accepted under `p`'s first (earliest-expiring) username.
fn refreshes_under_first_username(log: &str, p: &Person) -> usize {
    let all = verdicts(log, p.voip.local_device().user_id.as_ref());
    let first = all.iter().map(|(_, n, _)| n).min_by_key(|n| expiry(n).unwrap_or(u64::MAX));
    all.iter().filter(|(r, n, ok)| *ok && r == "REFRESH" && Some(n) == first).count()
}

/// Issue #18: relay-only calls held past the TTL of their TURN REST credentials (Synapse's
/// `turn_shared_secret`, TTL 20 s here), three at once on one Synapse and one coturn:
///
/// * default (live ICE server updates, no proactive restart): each refresh goes into the live
///   peer connection and nothing else happens, so the audio has no gap over 300 ms; coturn
///   keeps refreshing the first allocation under its expired username (4.6.1: the key is
///   checked once per session; allocations are refreshed every 4 s here to see it). A later
///   ICE restart (what a network change does) allocates with fresh credentials and the media
///   continues.
/// * `with_restart_on_turn_refresh(true)`: each refresh also restarts ICE on the call, which
///   allocates a new relay under the new username: coturn sees allocations under several
///   usernames, refreshes signed with newer ones, refuses nothing, and the audio flows.
/// * `with_live_ice_server_updates(false)`: the call still holds its first allocation, but the
///   later restart must allocate with the expired username, coturn refuses it and the call
///   loses its media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_outlives_its_turn_credentials() -> Result<()> {
    let (coturn, instance) =
        coturn_and_synapse("warn,rtc_dtls=error,matrix_sdk=error,webrtc=off,rtc=off", |o| {
            o.with_turn_user_lifetime(format!("{}s", TTL.as_secs()))
        })
        .await?;
    let hs = voip_testkit::Synapse::of(&instance);
    let uri = coturn.uri();

    // alice and bob: the defaults. erin and frank: a restart at each refresh. carol and dave:
    // no fresh credentials in their call.
    // Allocations are refreshed every 4 s (instead of coturn's 300 s), to see coturn's verdict
    // on refreshes under an expired username within the test.
    let cap = |c: WebrtcConfig| c.with_turn_refresh_interval_cap(Some(Duration::from_secs(4)));
    let restarting = |c: WebrtcConfig| cap(c).with_restart_on_turn_refresh(true);
    let frozen = |c: WebrtcConfig| cap(c).with_live_ice_server_updates(false);
    let alice = person_with(&hs, "alice", cap).await?;
    let bob = person_with(&hs, "bob", cap).await?;
    let erin = person_with(&hs, "erin", restarting).await?;
    let frank = person_with(&hs, "frank", restarting).await?;
    let carol = person_with(&hs, "carol", frozen).await?;
    let dave = person_with(&hs, "dave", frozen).await?;
    let everyone = [&alice, &bob, &erin, &frank, &carol, &dave];
    for p in everyone {
        let engine = p.voip.webrtc().context("webrtc")?;
        within(
            "TURN credentials from /voip/turnServer",
            wait_until(|| engine.ice_servers().iter().any(|s| s.urls.contains(&uri))),
        )
        .await?;
    }
    let mut pairs = Vec::new();
    for (caller, callee) in [(&alice, &bob), (&erin, &frank), (&carol, &dave)] {
        let room = encrypted_room(&[&caller.client, &callee.client]).await?;
        let mut incoming = callee.voip.incoming_calls();
        let call =
            caller.voip.invite_to_call(&room, CallType::Voice, &callee.voip.local_device().user_id).await?;
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
    // engines hold now; a call cannot have started with later ones).
    let mut first_expiry = 0;
    for p in everyone {
        first_expiry = first_expiry.max(expiry(&turn_entry(p, &uri)?.username)?);
    }
    // Hold the calls until a TTL after that: about twice the TTL after the first fetch, when
    // the credentials of the first refresh have expired too.
    let wait = (first_expiry + TTL.as_secs()).saturating_sub(unix_now());
    eprintln!(
        "credentials expire in {} s; holding the calls {wait} s",
        first_expiry.saturating_sub(unix_now())
    );
    // Every person's own first credentials have expired 1 s after `first_expiry`.
    let expired = Instant::now() + Duration::from_secs(first_expiry.saturating_sub(unix_now()) + 1);
    let until = Instant::now() + Duration::from_secs(wait);
    let (gaps, log_at_expiry) = longest_gaps(&pairs, until, &coturn, expired).await;
    let before: Vec<_> = pairs.iter().map(audio).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<_> = pairs.iter().map(audio).collect();
    let names = ["default", "restart on refresh", "no live updates"];
    for (k, name) in names.iter().enumerate() {
        eprintln!(
            "{:?} after connecting ({} s past the first credentials' expiry), {name}: audio packets in \
             2 s {} / {}, longest audio gap {:?} / {:?}",
            connected.elapsed(),
            unix_now().saturating_sub(first_expiry),
            after[k][0] - before[k][0],
            after[k][1] - before[k][1],
            gaps[k][0],
            gaps[k][1],
        );
    }
    for (k, pair) in pairs.iter().enumerate() {
        for (i, (p, c)) in pair.iter().enumerate() {
            let who = &p.voip.local_device().user_id;
            assert_eq!(c.state(), CallState::Connected, "{who} is still in the call");
            assert!(
                after[k][i] - before[k][i] >= 25,
                "{}: audio keeps flowing both ways: {before:?} -> {after:?}",
                names[k]
            );
            let local = relayed(p, c).await?.local.context("selected pair without its local candidate")?;
            assert_eq!(local.candidate_type, "relay", "{who}: still relayed");
        }
    }
    for (i, gap) in gaps[0].iter().enumerate() {
        assert!(
            *gap <= Duration::from_millis(300),
            "the default call has no audio gap over 300 ms across the refreshes (side {i}): {:?}",
            gaps[0]
        );
    }
    let log = coturn.log();
    for p in [&alice, &bob, &carol, &dave] {
        // No restart: the first allocation, refreshed under its expired username (every 4 s
        // here: `with_turn_refresh_interval_cap`).
        let (user, usernames, _, refused) = coturn_view(&log, p, first_expiry);
        let late = refreshes_under_first_username(&log, p)
            .saturating_sub(refreshes_under_first_username(&log_at_expiry, p));
        eprintln!("coturn, {user}: {late} allocation refreshes accepted under the expired username");
        assert_eq!(usernames.len(), 1, "{user}'s call was not restarted: {usernames:?}");
        assert!(late >= 2, "coturn refreshed {user}'s allocation under its expired username");
        assert!(refused.is_empty(), "coturn refused none of {user}'s requests: {refused:?}");
    }
    for p in [&erin, &frank] {
        // An ICE restart with each refresh: allocations under the first username and at least
        // two refreshed ones.
        let (user, usernames, fresh, refused) = coturn_view(&log, p, first_expiry);
        assert!(usernames.len() >= 3, "allocations with each refreshed username: {usernames:?}");
        assert!(fresh > 0, "requests signed with credentials newer than the first");
        assert!(refused.is_empty(), "coturn refused none of {user}'s requests: {refused:?}");
    }

    // Every call restarts ICE, past the TTL (a network change would).
    for pair in &pairs {
        pair[0].1.restart_ice().await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before: Vec<_> = pairs.iter().map(audio).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<_> = pairs.iter().map(audio).collect();
    let grew = |k: usize, i: usize| after[k][i].saturating_sub(before[k][i]);
    for (k, name) in names.iter().enumerate() {
        eprintln!(
            "4-7 s after an ICE restart, {name}: audio packets in 3 s {} / {} (call {:?})",
            grew(k, 0),
            grew(k, 1),
            pairs[k][0].1.state(),
        );
    }
    for i in 0..2 {
        for (k, name) in names.iter().enumerate().take(2) {
            assert!(
                grew(k, i) >= 50,
                "{name}: the audio continues after the restart: {before:?} -> {after:?}"
            );
        }
        assert!(
            grew(2, i) < 5,
            "the call without fresh credentials lost its media at the restart: {before:?} -> {after:?}"
        );
    }
    let log = coturn.log();
    for p in [&alice, &bob] {
        // The restart allocated under the fresh credentials live updates gave the call.
        let (user, usernames, fresh, refused) = coturn_view(&log, p, first_expiry);
        assert_eq!(usernames.len(), 2, "{user}: one new allocation under fresh credentials");
        assert!(fresh > 0, "{user}: requests signed with credentials newer than the first");
        assert!(refused.is_empty(), "coturn refused none of {user}'s requests: {refused:?}");
    }
    for p in [&carol, &dave] {
        // coturn names a refused allocation request "message" in its log.
        let (user, usernames, _, refused) = coturn_view(&log, p, first_expiry);
        assert_eq!(usernames.len(), 1, "{user}'s call kept its first credentials");
        assert!(!refused.is_empty(), "coturn refuses {user}'s new allocation with the expired username");
    }

    for p in everyone {
        p.voip.shutdown().await;
    }
    drop(instance);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
