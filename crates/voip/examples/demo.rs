//! The demo: a readable timeline of real calls through the public API.
//!
//! 1. Alice calls Bob by video, Bob answers, media flows (packet counts), hold and unhold,
//!    screenshare, hang-up.
//! 2. A three-person mesh group call (famedly membership format), media between everyone.
//! 3. A LiveKit-mode group call (Element Call's MatrixRTC format): media keys exchanged over
//!    to-device; one member leaves and the keys rotate (printed as short fingerprints).
//!
//! Media is real webrtc-rs (Opus tone, VP8 clip) over loopback. Signalling runs on an in-process
//! homeserver by default, or on a real one:
//!
//! ```text
//! cargo run -p voip --example demo
//! cargo run -p voip --example demo -- --homeserver http://127.0.0.1:8008 --registration-secret SECRET
//! ```
//!
//! The second form registers three fresh users (Synapse's shared-secret registration) and runs
//! the same steps in an encrypted room. The demo exits non-zero if any step fails, and gives up
//! after 90 s.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use support::{encrypted_room, wait_until, MatrixPerson};
use voip::core::media::{MediaKind, StreamPurpose};
use voip::core::{RoomId, UserId};
use voip::local::LocalHomeserver;
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{
    Call, CallState, CallType, CallUpdate, GroupCall, GroupCallBackend, GroupCallUpdate, Voip, VoipBuilder,
};

#[path = "../tests/support/mod.rs"]
mod support;

const STEP: Duration = Duration::from_secs(20);

/// Packets `p` received on `call` (see `support::received`).
fn received(p: &Person, call: &Call, kind: MediaKind, purpose: Option<StreamPurpose>) -> u64 {
    support::received(&p.voip, call, kind, purpose)
}

struct Person {
    name: &'static str,
    voip: Voip,
}

impl Person {
    fn user(&self) -> UserId {
        self.voip.local_device().user_id.clone()
    }
}

enum World {
    Local(LocalHomeserver),
    Matrix(Vec<MatrixPerson>),
}

struct Timeline(Instant);

impl Timeline {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        println!("{:>7} ms  {who:<6} {what}", self.0.elapsed().as_millis());
    }

    async fn step<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(STEP, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.say("FAIL", format!("{what}: {e:#}"));
                Err(e)
            }
            Err(_) => {
                self.say("FAIL", format!("{what}: nothing after {STEP:?}"));
                bail!("{what}: timed out")
            }
        }
    }
}

fn fingerprint(key_b64: &str) -> String {
    let digest = Sha256::digest(key_b64.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

async fn until(cond: impl FnMut() -> bool) -> Result<()> {
    wait_until(cond).await;
    Ok(())
}

async fn next_matching(call: &Call, mut pick: impl FnMut(&CallUpdate) -> bool) -> Result<CallUpdate> {
    let mut events = call.updates();
    while let Some(ev) = events.next().await {
        if pick(&ev) {
            return Ok(ev);
        }
    }
    bail!("the call's events ended")
}

async fn connected(call: &Call) -> Result<()> {
    call.wait_for_state(CallState::Connected).await.map(|_| ()).context("the call ended before connecting")
}

// ===== the worlds =====

fn media() -> WebrtcConfig {
    WebrtcConfig::loopback()
}

async fn local_world() -> Result<(World, Vec<Person>)> {
    let hs = LocalHomeserver::new();
    let mut people = Vec::new();
    for (name, user, device) in
        [("alice", "@alice:local", "ALICE"), ("bob", "@bob:local", "BOB"), ("carol", "@carol:local", "CAROL")]
    {
        let c = hs.connect(user, device);
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(media()).build()?;
        people.push(Person { name, voip });
    }
    Ok((World::Local(hs), people))
}

async fn matrix_world(url: &str, secret: &str, server_name: &str) -> Result<(World, Vec<Person>)> {
    let hs = voip_testkit::Synapse {
        url: url.to_owned(),
        reg_secret: secret.to_owned(),
        server_name: server_name.to_owned(),
        owned: false,
    };
    let (mut people, mut matrix) = (Vec::new(), Vec::new());
    for name in ["alice", "bob", "carol"] {
        let person = MatrixPerson::new(&hs, name, voip::Config::default()).await?;
        people.push(Person { name, voip: person.voip.clone() });
        matrix.push(person);
    }
    Ok((World::Matrix(matrix), people))
}

impl World {
    /// A room with `members` joined; waits until every member's client knows all of them.
    async fn room(&self, members: &[&Person]) -> Result<RoomId> {
        let names: Vec<String> = members.iter().map(|p| p.user().to_string()).collect();
        match self {
            World::Local(hs) => Ok(hs.create_room(&names.iter().map(String::as_str).collect::<Vec<_>>())),
            World::Matrix(all) => {
                let clients: Vec<&matrix_sdk::Client> = members
                    .iter()
                    .filter_map(|p| all.iter().find(|m| m.voip.local_device() == p.voip.local_device()))
                    .map(|m| &m.client)
                    .collect();
                encrypted_room(&clients).await
            }
        }
    }
}

// ===== the scenes =====

async fn one_to_one(t: &Timeline, world: &World, alice: &Person, bob: &Person) -> Result<()> {
    println!("\n— 1:1 video call —");
    let room = world.room(&[alice, bob]).await?;
    let mut incoming = bob.voip.incoming_calls();
    let call = alice.voip.invite_to_call(&room, CallType::Video, &bob.user()).await?;
    t.say(alice.name, format!("calls {} by video ({})", bob.name, call.id()));
    let ringing =
        t.step("bob's phone rings", async { incoming.next().await.context("no incoming call") }).await?;
    t.say(bob.name, format!("incoming {:?} call from {}", ringing.info().map(|i| i.call_type), alice.name));
    ringing.answer().await?;
    t.say(bob.name, "answers");
    t.step("both sides connected", async {
        connected(&call).await?;
        connected(&ringing).await
    })
    .await?;
    t.say("both", "connected");
    t.step("audio and video flow both ways", async {
        until(|| {
            [(alice, &call), (bob, &ringing)].iter().all(|(p, c)| {
                received(p, c, MediaKind::Audio, None) >= 25 && received(p, c, MediaKind::Video, None) >= 10
            })
        })
        .await
    })
    .await?;
    for (p, c) in [(alice, &call), (bob, &ringing)] {
        t.say(
            p.name,
            format!(
                "received {} audio and {} video packets",
                received(p, c, MediaKind::Audio, None),
                received(p, c, MediaKind::Video, None)
            ),
        );
    }

    call.set_hold(true).await?;
    t.say(alice.name, "puts bob on hold");
    t.step("bob sees he is held", async {
        next_matching(&ringing, |e| matches!(e, CallUpdate::HoldChanged { remote_hold: true, .. })).await
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = received(alice, &call, MediaKind::Audio, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = received(alice, &call, MediaKind::Audio, None) - frozen;
    t.say(alice.name, format!("received {during} audio packets from bob in 1 s of hold"));
    if during > 10 {
        bail!("media kept flowing in the held direction ({during} packets)");
    }
    call.set_hold(false).await?;
    t.say(alice.name, "resumes");
    t.step("media resumes", async {
        until(|| received(alice, &call, MediaKind::Audio, None) >= frozen + during + 25).await
    })
    .await?;
    t.say(
        alice.name,
        format!("audio from bob again: {} packets", received(alice, &call, MediaKind::Audio, None)),
    );

    call.set_screensharing(true).await?;
    t.say(alice.name, "shares her screen");
    t.step("bob sees a second stream, purpose m.screenshare", async {
        next_matching(&ringing, |e| {
            matches!(e, CallUpdate::StreamsChanged { remote, .. }
                if remote.iter().any(|s| s.purpose == StreamPurpose::Screenshare))
        })
        .await?;
        until(|| received(bob, &ringing, MediaKind::Video, Some(StreamPurpose::Screenshare)) >= 10).await
    })
    .await?;
    t.say(
        bob.name,
        format!(
            "screenshare: {} video packets",
            received(bob, &ringing, MediaKind::Video, Some(StreamPurpose::Screenshare))
        ),
    );
    call.set_screensharing(false).await?;

    ringing.hangup().await?;
    t.say(bob.name, "hangs up");
    let (reason, initiator) =
        t.step("alice's call ends", async { call.ended().await.context("no end") }).await?;
    t.say(alice.name, format!("call ended: {reason:?} by {initiator:?}"));
    Ok(())
}

async fn mesh(t: &Timeline, world: &World, people: &[Person]) -> Result<()> {
    println!("\n— three-person mesh group call —");
    let refs: Vec<&Person> = people.iter().collect();
    let room = world.room(&refs).await?;
    let groups: Vec<GroupCall> = futures_util::future::try_join_all(
        people.iter().map(|p| p.voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh)),
    )
    .await?;
    for (p, g) in people.iter().zip(&groups) {
        g.enter().await?;
        t.say(p.name, "enters the group call");
    }
    t.step("everyone is connected to everyone", async {
        until(|| {
            groups.iter().all(|g| {
                let calls = g.peer_calls();
                g.participants().len() == 2
                    && calls.len() == 2
                    && calls.iter().all(|(_, c)| c.state() == CallState::Connected)
            })
        })
        .await
    })
    .await?;
    t.step("audio flows on every pair", async {
        until(|| {
            people.iter().zip(&groups).all(|(p, g)| {
                g.peer_calls().iter().all(|(_, c)| received(p, c, MediaKind::Audio, None) >= 25)
            })
        })
        .await
    })
    .await?;
    for (p, g) in people.iter().zip(&groups) {
        let counts: Vec<String> = g
            .peer_calls()
            .iter()
            .map(|(who, c)| format!("{} from {}", received(p, c, MediaKind::Audio, None), who.user_id))
            .collect();
        t.say(p.name, format!("audio packets: {}", counts.join(", ")));
    }
    for (p, g) in people.iter().zip(&groups) {
        g.leave().await?;
        t.say(p.name, "leaves");
    }
    t.step("everyone has left", async { until(|| groups.iter().all(|g| !g.is_active())).await }).await?;
    Ok(())
}

async fn livekit(t: &Timeline, world: &World, people: &[Person]) -> Result<()> {
    println!("\n— LiveKit-mode group call (Element Call format), key rotation —");
    let refs: Vec<&Person> = people.iter().collect();
    let room = world.room(&refs).await?;
    let backend =
        GroupCallBackend::LiveKit { service_url: "https://livekit-jwt.example.org".into(), alias: None };
    let groups: Vec<GroupCall> = futures_util::future::try_join_all(
        people.iter().map(|p| p.voip.fetch_or_create_group_call(&room, backend.clone())),
    )
    .await?;
    for (p, g) in people.iter().zip(&groups) {
        g.enter().await?;
        t.say(p.name, "enters (no media: the app's LiveKit client would connect to the SFU)");
    }
    let has_keys_of_all =
        |g: &GroupCall, n: usize| g.media_keys().is_some_and(|k| k.local.is_some() && k.remote.len() == n);
    t.step("everyone has everyone's key", async {
        until(|| groups.iter().all(|g| has_keys_of_all(g, 2))).await
    })
    .await?;
    let show = |p: &Person, g: &GroupCall| {
        if let Some(k) = g.media_keys() {
            let mut parts = vec![format!(
                "own key #{} {}",
                k.local.as_ref().map_or(0, |l| l.0),
                k.local.as_ref().map_or("-".into(), |l| fingerprint(&l.1))
            )];
            for (who, index, key) in &k.remote {
                parts.push(format!("{}#{} {}", who.user_id, index, fingerprint(key)));
            }
            t.say(p.name, parts.join(" | "));
        }
    };
    for (p, g) in people.iter().zip(&groups) {
        show(p, g);
    }
    let before: Vec<String> = groups[..2]
        .iter()
        .map(|g| g.media_keys().and_then(|k| k.local).map(|l| l.1).unwrap_or_default())
        .collect();
    let mut alice_events = groups[0].updates();
    groups[2].leave().await?;
    t.say(people[2].name, "leaves");
    t.step("alice sees carol leave", async {
        while let Some(ev) = alice_events.next().await {
            if let GroupCallUpdate::ParticipantsChanged { count, .. } = ev {
                if count == 1 {
                    return Ok(());
                }
            }
        }
        bail!("no participants change")
    })
    .await?;
    t.step("alice and bob rotate their keys and receive each other's new key", async {
        until(|| {
            let (a, b) = (groups[0].media_keys(), groups[1].media_keys());
            let (Some(a), Some(b)) = (a, b) else { return false };
            let (Some(al), Some(bl)) = (&a.local, &b.local) else { return false };
            al.1 != before[0]
                && bl.1 != before[1]
                && a.remote.len() == 1
                && b.remote.len() == 1
                && a.remote[0].2 == bl.1
                && b.remote[0].2 == al.1
        })
        .await
    })
    .await?;
    for (p, g) in people[..2].iter().zip(&groups) {
        show(p, g);
    }
    for g in &groups[..2] {
        g.leave().await?;
    }
    t.step("everyone has left", until(|| groups.iter().all(|g| !g.is_active()))).await?;
    Ok(())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = Timeline(Instant::now());
    let (world, people) = match arg(&args, "--homeserver") {
        Some(url) => {
            let secret = arg(&args, "--registration-secret")
                .context("--homeserver needs --registration-secret (Synapse's registration_shared_secret)")?;
            let server_name = arg(&args, "--server-name").unwrap_or_else(|| "localhost".into());
            println!("homeserver {url}: registering alice, bob and carol");
            matrix_world(&url, &secret, &server_name).await?
        }
        None => {
            println!("in-process homeserver, real webrtc-rs media on loopback");
            local_world().await?
        }
    };
    let [alice, bob, _carol] = &people[..] else { unreachable!("three people") };
    one_to_one(&t, &world, alice, bob).await?;
    mesh(&t, &world, &people).await?;
    livekit(&t, &world, &people).await?;
    for p in &people {
        p.voip.shutdown().await;
    }
    println!("\nall steps passed in {:.1} s", t.0.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    // webrtc-rs logs an error for every RTP packet of a sender whose direction changed (hold);
    // harmless, and it would bury the timeline.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,webrtc::peer_connection::driver=off".into()),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let Ok(rt) = rt else {
        eprintln!("cannot start tokio");
        return ExitCode::FAILURE;
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(90), run()).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo failed: not finished within 90 s");
            ExitCode::FAILURE
        }
    }
}
