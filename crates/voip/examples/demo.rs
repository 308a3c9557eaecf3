//! The demo: a readable timeline of real calls through the public API.
//!
//! 1. Alice calls Bob by video, Bob answers, media flows (packet counts), hold and unhold,
//!    screenshare, hang-up.
//! 2. A three-person mesh group call (famedly membership format), media between everyone.
//! 3. A LiveKit-mode group call (Element Call's MatrixRTC format): media keys exchanged over
//!    to-device; one member leaves and the keys rotate (printed as short fingerprints).
//!
//! Media is real webrtc-rs over loopback. Built with the `codecs` feature (`cargo xtask demo`
//! builds it so), every person sends a tone of their own (alice 440 Hz, bob 660 Hz, carol 880 Hz)
//! encoded with libopus and a frame-numbered `TestPattern` (320×240, 30 fps) encoded with libvpx,
//! and the demo prints what each side *decodes*: per call, the RMS level in dBFS over one second,
//! the dominant frequency (and a Goertzel check that it is the peer's tone), decoded video frames
//! per second, the last frame's number and its resolution. It fails if a side of the video call
//! decodes no audio or no video, or hears the wrong tone. Without `codecs` the media is a
//! pre-encoded Opus tone and VP8 clip and the demo counts packets only. Signalling runs on an
//! in-process homeserver by default, or on a real one:
//!
//! ```text
//! cargo xtask demo                                  # = cargo run -p voip --features codecs --example demo
//! cargo run -p voip --example demo                  # signalling and media, no decoding
//! cargo run -p voip --features codecs --example demo -- --homeserver http://127.0.0.1:8008 --registration-secret SECRET
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
use support::{encrypted_room, wait_until};
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

/// One registered, logged-in and syncing device on the real homeserver.
struct OnServer {
    voip: Voip,
    client: matrix_sdk::Client,
    _sync: voip_testkit::Syncing,
}

impl Person {
    fn user(&self) -> UserId {
        self.voip.local_device().user_id.clone()
    }
}

enum World {
    Local(LocalHomeserver),
    Matrix(Vec<OnServer>),
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

/// `name`'s media: with `codecs`, decoded audio and video whose inputs play `name`'s tone and a
/// test pattern (on every call, screenshare included); without, webrtc-rs's packet sources.
fn media(name: &str) -> WebrtcConfig {
    #[cfg(feature = "codecs")]
    {
        decoded::media(name)
    }
    #[cfg(not(feature = "codecs"))]
    {
        let _ = name;
        WebrtcConfig::loopback()
    }
}

async fn local_world() -> Result<(World, Vec<Person>)> {
    let hs = LocalHomeserver::new();
    let mut people = Vec::new();
    for (name, user, device) in
        [("alice", "@alice:local", "ALICE"), ("bob", "@bob:local", "BOB"), ("carol", "@carol:local", "CAROL")]
    {
        let c = hs.connect(user, device);
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(media(name)).build()?;
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
        let user = voip_testkit::register_user_on(&hs, name).await?;
        let client = voip_testkit::login(&user, None).await?;
        // Built before the first sync, so it sees the initial state.
        let voip = Voip::from_client(&client)?.webrtc(media(name)).build()?;
        let sync = voip_testkit::Syncing::start(&client).await?;
        people.push(Person { name, voip: voip.clone() });
        matrix.push(OnServer { voip, client, _sync: sync });
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
    #[cfg(feature = "codecs")]
    t.step("both sides decode the other's tone and pattern", async {
        decoded::check_call(t, &[(alice, bob, &call), (bob, alice, &ringing)], true).await
    })
    .await?;

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
    #[cfg(feature = "codecs")]
    t.step("every member decodes every other member's tone", async {
        let mut calls = Vec::new();
        for (p, g) in people.iter().zip(&groups) {
            for (who, c) in g.peer_calls() {
                let peer = people.iter().find(|q| q.user() == who.user_id).context("a member")?;
                calls.push((p, peer, c));
            }
        }
        let refs: Vec<(&Person, &Person, &Call)> = calls.iter().map(|(p, q, c)| (*p, *q, c)).collect();
        decoded::check_call(t, &refs, false).await
    })
    .await?;
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
    if cfg!(feature = "codecs") {
        println!("decoded media: libopus and libvpx; alice sends 440 Hz, bob 660 Hz, carol 880 Hz, each a 320×240 pattern");
    } else {
        println!(
            "decoded media: not built (it needs `--features codecs`: `cargo xtask demo`); packet counts only"
        );
    }
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

/// Decoded media (feature `codecs`): what each side hears and sees.
#[cfg(feature = "codecs")]
mod decoded {
    use super::*;
    use voip::webrtc::media::audio::{goertzel_power, level_dbfs, AudioConfig, AudioHub, Tone, SAMPLE_RATE};
    use voip::webrtc::media::video::{read_frame_number, TestPattern, VideoConfig, VideoHub};

    /// How long each side listens and watches.
    const SPAN: Duration = Duration::from_secs(1);

    /// The tone `name` sends.
    pub fn tone(name: &str) -> f64 {
        match name {
            "alice" => 440.0,
            "bob" => 660.0,
            _ => 880.0,
        }
    }

    pub fn media(name: &str) -> WebrtcConfig {
        let audio = AudioHub::new(AudioConfig::default());
        let freq = tone(name);
        audio.set_default_source(move || Box::new(Tone::new(freq, 0.3)));
        let video = VideoHub::new(VideoConfig::default());
        video.set_default_source(|| Box::new(TestPattern::new(320, 240, 30)));
        WebrtcConfig::loopback().with_audio(audio).with_video(video)
    }

    /// One second of one remote stream, decoded.
    struct Heard {
        audio_frames: usize,
        samples: Vec<f32>,
        video_frames: usize,
        last_number: Option<u32>,
        size: Option<(u32, u32)>,
    }

    /// The peer's usermedia stream on `call`, once known with its tracks.
    async fn usermedia(call: &Call, video: bool) -> Result<voip::core::StreamId> {
        loop {
            let found =
                call.streams().1.into_iter().find(|s| {
                    s.purpose == StreamPurpose::Usermedia && s.has_audio && (s.has_video || !video)
                });
            if let Some(s) = found {
                return Ok(s.stream_id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn listen(call: &Call, video: bool) -> Result<Heard> {
        let stream = usermedia(call, video).await?;
        let mut audio = call.remote_audio(&stream).context("no decoded audio configured")?;
        let mut frames = call.remote_video(&stream).context("no decoded video configured")?;
        let end = tokio::time::Instant::now() + SPAN;
        let hear = async {
            let (mut n, mut samples) = (0, Vec::new());
            while let Ok(Some(f)) = tokio::time::timeout_at(end, audio.next()).await {
                n += 1;
                samples.extend(f.mono_f32());
            }
            (n, samples)
        };
        let see = async {
            let (mut n, mut last, mut size) = (0, None, None);
            while let Ok(Some(f)) = tokio::time::timeout_at(end, frames.next()).await {
                n += 1;
                last = read_frame_number(&f).or(last);
                size = Some((f.width, f.height));
            }
            (n, last, size)
        };
        let ((audio_frames, samples), (video_frames, last_number, size)) = tokio::join!(hear, see);
        Ok(Heard { audio_frames, samples, video_frames, last_number, size })
    }

    /// The strongest frequency of `samples` between 100 Hz and 2 kHz (20 Hz steps), scanned on
    /// every 4th sample (12 kHz: well above twice 2 kHz, and 4× less work).
    fn dominant(samples: &[f32]) -> f64 {
        let decimated: Vec<f32> = samples.iter().step_by(4).copied().collect();
        (5..=100)
            .map(|k| f64::from(k) * 20.0)
            .map(|f| (f, goertzel_power(&decimated, SAMPLE_RATE / 4, f)))
            .fold((0.0, -1.0), |best, x| if x.1 > best.1 { x } else { best })
            .0
    }

    /// Each `(listener, peer, call)` listens to `peer` on `call` for a second (all at once) and
    /// prints what it decoded. Fails when a listener decodes no audio, hears silence or not the
    /// peer's tone, or (with `video`) decodes no video frame.
    pub async fn check_call(t: &Timeline, calls: &[(&Person, &Person, &Call)], video: bool) -> Result<()> {
        let heard =
            futures_util::future::try_join_all(calls.iter().map(|(_, _, c)| listen(c, video))).await?;
        let mut failures = Vec::new();
        for ((me, peer, _), h) in calls.iter().zip(heard) {
            let level = level_dbfs(&h.samples);
            let want = tone(peer.name);
            let at_want = goertzel_power(&h.samples, SAMPLE_RATE, want);
            // The other people's tones, the strongest of them.
            let others = ["alice", "bob", "carol"]
                .iter()
                .map(|n| tone(n))
                .filter(|&f| f != want)
                .map(|f| goertzel_power(&h.samples, SAMPLE_RATE, f))
                .fold(1e-12, f64::max);
            let margin = 10.0 * (at_want.max(1e-12) / others).log10();
            let dominant = dominant(&h.samples);
            let fps = h.video_frames as f64 / SPAN.as_secs_f64();
            let picture = match (h.size, h.last_number) {
                (Some((w, hgt)), Some(n)) => format!(", last frame #{n} {w}×{hgt}"),
                (Some((w, hgt)), None) => format!(", last frame {w}×{hgt} (no number)"),
                _ => String::new(),
            };
            t.say(
                me.name,
                format!(
                    "decoded from {}: audio {} frames, {level:.1} dBFS, dominant {dominant:.0} Hz ({want:.0} Hz {margin:+.0} dB over the other tones); video {fps:.0} frames/s{picture}",
                    peer.name, h.audio_frames
                ),
            );
            if h.audio_frames == 0 {
                failures.push(format!("{} decoded no audio from {}", me.name, peer.name));
            } else if level < -40.0 || (dominant - want).abs() > 20.0 || margin < 20.0 {
                failures.push(format!("{} does not hear {}'s {want} Hz tone", me.name, peer.name));
            }
            if video && h.video_frames == 0 {
                failures.push(format!("{} decoded no video from {}", me.name, peer.name));
            }
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(())
    }
}
