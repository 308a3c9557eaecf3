//! `rust-peer`: one matrix-voip-rs device per process for the matrix-js-sdk interop harness
//! (`cargo xtask interop`, docs/interop.md). It speaks the same JSON-lines protocol as
//! `interop/js-peer.mjs`: commands on stdin, events on stdout, logs on stderr.
//!
//! ```text
//! rust-peer peer --hs URL --user-id @u:localhost --device-id DEV --token TOKEN --room !r:localhost
//!                [--busy-signal hangup|reject] [--crypto] [--busy] [--tone HZ] [--video] [--relay-only]
//! rust-peer tone-wav --out FILE.wav --hz HZ --seconds S
//! rust-peer analyse-wav --in FILE.wav --target HZ --freqs HZ,HZ,... [--skip-ms MS]
//! ```
//!
//! `--tone HZ` turns on decoded audio (feature `codecs`: libopus through the engine's
//! `AudioHub`): every call sends a `HZ` sine, and `{"cmd":"measure-audio"}` analyses the decoded
//! PCM of the peer's audio (an `audio` event: Goertzel power at the target and other frequencies,
//! the margin in dB, the level). `--video` turns on decoded video (libvpx VP8 through the
//! engine's `VideoHub`): every call's camera is voip-webrtc's `TestPattern` (640×480, 15 fps),
//! `{"cmd":"call","video":true}` places a video call, and `{"cmd":"measure-video"}` reads the
//! peer's decoded frames (a `video` event: frame numbers found, order, size, luma movement).
//! `--relay-only` gathers relay candidates only (`WebrtcConfig::with_relay_only`: media through
//! the homeserver's TURN servers); `stats` events carry the selected candidate pair either way.
//!
//! `tone-wav` and `analyse-wav` are one-shot helpers for the `matrix-call` scenario: a sine WAV
//! for the CLI to `--play`, and the same tone analysis as `measure-audio` over a WAV the CLI
//! recorded (one `audio` line on stdout).
//!
//! It is built on the public API of the `voip` crate only: a `Voip` from a matrix-sdk `Client`
//! (session restored from the access token the harness registered) with the webrtc-rs engine.

#![recursion_limit = "256"]

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use voip::core::BusySignal;
use voip::core::{RoomId, UserId};
use voip::webrtc::media::audio::{
    goertzel_power, level_dbfs, read_wav, AudioConfig, AudioHub, FrameOrigin, Tone, WavRecorder, SAMPLE_RATE,
};
use voip::webrtc::media::video::{read_frame_number, TestPattern, VideoConfig, VideoHub};
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{
    Call, CallType, CallUpdate, Config, GroupCall, GroupCallBackend, GroupCallUpdate, Initiator, Voip,
};

/// Writes one protocol event (stdout is the protocol; nothing else goes there).
fn emit(t0: std::time::Instant, ev: &str, mut fields: Value) {
    if let Value::Object(m) = &mut fields {
        m.insert("ev".into(), json!(ev));
        m.insert("t".into(), json!(t0.elapsed().as_millis() as u64));
    }
    println!("{fields}");
}

struct Args {
    hs: String,
    user_id: String,
    device_id: String,
    token: String,
    room: String,
    busy_signal: BusySignal,
    /// `--tone HZ`: decoded audio on, every call sends this tone.
    tone: Option<f64>,
    /// `--video`: decoded video on, every call's camera is the test pattern.
    video: bool,
    /// `--relay-only`: relay candidates only (TURN from `/voip/turnServer`).
    relay_only: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("peer") {
        bail!("usage: rust-peer peer --hs URL --user-id U --device-id D --token T --room R");
    }
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    let need = |f: &str| value(f).ok_or_else(|| anyhow!("missing {f}"));
    Ok(Args {
        hs: need("--hs")?,
        user_id: need("--user-id")?,
        device_id: need("--device-id")?,
        token: need("--token")?,
        room: need("--room")?,
        busy_signal: match value("--busy-signal").as_deref() {
            Some("reject") => BusySignal::Reject,
            _ => Config::default().busy_signal,
        },
        video: args.iter().any(|a| a == "--video"),
        relay_only: args.iter().any(|a| a == "--relay-only"),
        tone: value("--tone").map(|t| t.parse()).transpose().context("--tone HZ")?,
    })
}

/// What the peer is doing: the current call, an unanswered incoming one, the group call.
#[derive(Default)]
struct State {
    call: Option<Call>,
    incoming: Option<Call>,
    group: Option<GroupCall>,
    /// The decoded-audio hub (`--tone`).
    hub: Option<AudioHub>,
    /// The decoded-video hub (`--video`).
    video: Option<VideoHub>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn initiator(i: &Initiator) -> &'static str {
    match i {
        Initiator::Remote => "remote",
        _ => "local",
    }
}

/// Reports a call's events as protocol events, in the js peer's vocabulary.
fn watch(t0: std::time::Instant, state: Shared, call: Call, direction: &'static str) {
    let id = call.id().to_string();
    emit(
        t0,
        "call",
        json!({"call_id": id, "direction": direction, "peer": call.remote_user().map(|u| u.to_string())}),
    );
    let mut events = call.updates();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                CallUpdate::StateChanged(s) => emit(
                    t0,
                    "state",
                    json!({"call_id": id, "state": serde_json::to_value(s).unwrap_or(Value::Null)}),
                ),
                // js-sdk's words: "remote on hold" = we hold the peer; "local on hold" = held by it.
                CallUpdate::HoldChanged { local_hold, remote_hold } => emit(
                    t0,
                    "hold",
                    json!({"call_id": id, "remote_on_hold": local_hold, "local_on_hold": remote_hold}),
                ),
                CallUpdate::Replaced { new_call } => {
                    emit(t0, "replaced", json!({"call_id": id, "by": new_call.id().to_string()}));
                    lock(&state).call = Some(new_call.clone());
                    watch(t0, state.clone(), new_call, "replacement");
                }
                CallUpdate::Ended { reason, initiator: who } => emit(
                    t0,
                    "ended",
                    json!({"call_id": id, "reason": reason.wire_reason(), "party": initiator(&who)}),
                ),
                _ => {}
            }
        }
    });
}

fn watch_group(t0: std::time::Instant, me: (String, String), group: &GroupCall) {
    let mut events = group.updates();
    let group = group.clone();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                GroupCallUpdate::ParticipantsChanged { .. } => {
                    // The update is a diff: the whole list is the call's snapshot. js-sdk lists
                    // its own membership too; the library never lists ours.
                    let mut members: Vec<Value> = group
                        .participants()
                        .iter()
                        .map(|p| json!({"user_id": p.user_id.to_string(), "device_id": p.device_id.to_string()}))
                        .collect();
                    members.push(json!({"user_id": me.0, "device_id": me.1}));
                    emit(t0, "rtc-members", json!({"members": members}));
                }
                GroupCallUpdate::EncryptionKey { participant, local, index, key } => emit(
                    t0,
                    "rtc-key",
                    json!({
                        "user_id": participant.user_id.to_string(),
                        "device_id": participant.device_id.to_string(),
                        "index": index,
                        "key": key,
                        "local": local,
                    }),
                ),
                GroupCallUpdate::StateChanged(s) => emit(t0, "rtc-state", json!({"state": format!("{s:?}")})),
                _ => {}
            }
        }
    });
}

async fn command(
    t0: std::time::Instant,
    voip: &Voip,
    args: &Args,
    state: &Shared,
    c: &Value,
) -> anyhow::Result<()> {
    let current = || lock(state).call.clone().context("no call");
    match c["cmd"].as_str().unwrap_or("") {
        "call" => {
            let to = c["to"].as_str().context("call: no `to`")?;
            let room = RoomId::from(c["room"].as_str().unwrap_or(&args.room));
            let kind = if c["video"] == true { CallType::Video } else { CallType::Voice };
            let call = voip.invite_to_call(&room, kind, &UserId::from(to)).await?;
            lock(state).call = Some(call.clone());
            watch(t0, state.clone(), call, "outgoing");
        }
        "answer" => {
            let call = lock(state).incoming.take().context("no incoming call")?;
            lock(state).call = Some(call.clone());
            call.answer().await?;
        }
        "reject" => {
            let call = lock(state).incoming.take().context("no incoming call")?;
            call.reject().await?;
        }
        "hangup" => current()?.hangup().await?,
        "hold" => current()?.set_hold(true).await?,
        "unhold" => current()?.set_hold(false).await?,
        "stats" => {
            let call = lock(state).call.clone();
            let (mut sent, mut received, mut pair) = (0, 0, Value::Null);
            if let (Some(call), Some(engine)) = (&call, voip.webrtc()) {
                if let Ok(s) = engine.stats(call.id()).await {
                    sent = s.packets_sent;
                    received = s.packets_received;
                    if let Some(p) = s.selected_pair {
                        let side = |c: &Option<voip::webrtc::CandidateSummary>| {
                            c.as_ref().map(|c| json!({"type": c.candidate_type, "address": c.address}))
                        };
                        pair = json!({"local": side(&p.local), "remote": side(&p.remote), "nominated": p.nominated});
                    }
                }
            }
            emit(
                t0,
                "stats",
                json!({
                    "call_id": call.as_ref().map(|c| c.id().to_string()),
                    "state": call.as_ref().map(|c| serde_json::to_value(c.state()).unwrap_or(Value::Null)),
                    "sent": sent,
                    "received": received,
                    "pair": pair,
                }),
            );
        }
        "measure-audio" => {
            let call = current()?;
            let hub = lock(state).hub.clone().context("decoded audio is off (start with --tone HZ)")?;
            let report = measure_audio(&call, &hub, c).await?;
            emit(t0, "audio", report);
        }
        "measure-video" => {
            let call = current()?;
            if lock(state).video.is_none() {
                bail!("decoded video is off (start with --video)");
            }
            let report = measure_video(&call, c).await?;
            emit(t0, "video", report);
        }
        "rtc-join" => {
            let room = RoomId::from(args.room.as_str());
            let backend =
                GroupCallBackend::LiveKit { service_url: "http://127.0.0.1:9/livekit".into(), alias: None };
            let group = voip.fetch_or_create_group_call(&room, backend).await?;
            watch_group(t0, (args.user_id.clone(), args.device_id.clone()), &group);
            group.enter().await?;
            lock(state).group = Some(group);
            emit(t0, "rtc-joined", json!({"room_id": args.room}));
        }
        "rtc-leave" => {
            let group = lock(state).group.clone().context("not joined")?;
            group.leave().await?;
            emit(t0, "rtc-left", json!({"ok": true}));
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}

/// Amplitude of the tone `--tone` sends (0–1 of full scale).
const TONE_AMPLITUDE: f32 = 0.3;

/// `{"cmd":"measure-audio","ms":2000,"skip_ms":200,"target":440,"freqs":[...]}`: decoded PCM of
/// the current call's first remote audio stream (skipping `skip_ms`, then `ms` of it) and its
/// tone analysis, in the same terms as the js peer's `RTCAudioSink` report.
async fn measure_audio(call: &Call, hub: &AudioHub, c: &Value) -> anyhow::Result<Value> {
    let ms = c["ms"].as_u64().unwrap_or(2000);
    let skip_ms = c["skip_ms"].as_u64().unwrap_or(200);
    let target = c["target"].as_f64().context("measure-audio: no `target`")?;
    let freqs: Vec<f64> =
        c["freqs"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms + skip_ms + 5000);
    // The playout starts with the first packet; the stream id comes with it (or the metadata).
    let stream = loop {
        if let Some(s) = hub.remote_streams(call.id()).into_iter().next() {
            break s;
        }
        if let Some(s) = call.streams().1.into_iter().next() {
            break s.stream_id;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no remote audio stream");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut audio = call.remote_audio(&stream).context("no decoded audio")?;
    let (skip, want) = (skip_ms as usize * 48, ms as usize * 48);
    let (mut seen, mut mono, mut channels, mut origins) = (0usize, Vec::with_capacity(want), 0u16, [0u64; 3]);
    while mono.len() < want {
        let Ok(Some(frame)) = tokio::time::timeout_at(deadline, audio.next()).await else {
            bail!("decoded audio stopped after {} ms", mono.len() / 48);
        };
        channels = frame.channels;
        let pcm = frame.mono_f32();
        let n = pcm.len();
        if seen + n > skip {
            mono.extend_from_slice(&pcm[skip.saturating_sub(seen).min(n)..]);
            origins[match frame.origin {
                FrameOrigin::Decoded => 0,
                FrameOrigin::Fec => 1,
                FrameOrigin::Concealed => 2,
            }] += 1;
        }
        seen += n;
    }
    let mut report = tone_report(&mono, SAMPLE_RATE, target, &freqs);
    report.insert("call_id".into(), json!(call.id().to_string()));
    report.insert("stream_id".into(), json!(stream.to_string()));
    report.insert("channels".into(), json!(channels));
    report
        .insert("frames".into(), json!({"decoded": origins[0], "fec": origins[1], "concealed": origins[2]}));
    Ok(Value::Object(report))
}

/// Goertzel power of `mono` at `target` and at each of `freqs`, the margin of the target over
/// the strongest other one in dB, the length and the RMS level.
fn tone_report(mono: &[f32], rate: u32, target: f64, freqs: &[f64]) -> serde_json::Map<String, Value> {
    let mut power = serde_json::Map::new();
    let p_target = goertzel_power(mono, rate, target);
    power.insert(format!("{target}"), json!(db(p_target)));
    let mut off = 1e-20f64;
    for f in freqs.iter().filter(|&&f| f != target) {
        let p = goertzel_power(mono, rate, *f);
        off = off.max(p);
        power.insert(format!("{f}"), json!(db(p)));
    }
    let Value::Object(m) = json!({
        "ms": mono.len() as u64 * 1000 / u64::from(rate.max(1)),
        "sample_rate": rate,
        "target": target,
        "margin_db": db(p_target) - db(off),
        "level_dbfs": level_dbfs(mono),
        "power_db": power,
    }) else {
        unreachable!("a JSON object literal")
    };
    m
}

/// `tone-wav --out FILE --hz HZ --seconds S`: a mono 48 kHz sine at `TONE_AMPLITUDE`.
fn tone_wav(args: &[String]) -> anyhow::Result<()> {
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    let out = value("--out").context("tone-wav: --out FILE")?;
    let hz: f64 = value("--hz").context("tone-wav: --hz HZ")?.parse()?;
    let seconds: f64 = value("--seconds").context("tone-wav: --seconds S")?.parse()?;
    let mut wav = WavRecorder::create(&out, 1)?;
    let n = (seconds * f64::from(SAMPLE_RATE)) as usize;
    let step = 2.0 * std::f64::consts::PI * hz / f64::from(SAMPLE_RATE);
    let samples: Vec<i16> =
        (0..n).map(|i| (f64::from(TONE_AMPLITUDE) * 32767.0 * (step * i as f64).sin()) as i16).collect();
    wav.write_samples(&samples)?;
    wav.finish()?;
    Ok(())
}

/// `analyse-wav --in FILE --target HZ --freqs A,B,... [--skip-ms MS]`: the first channel of the
/// WAV after `MS` (default 500) through `tone_report`, printed as one `audio` line.
fn analyse_wav(args: &[String]) -> anyhow::Result<()> {
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    let path = value("--in").context("analyse-wav: --in FILE")?;
    let target: f64 = value("--target").context("analyse-wav: --target HZ")?.parse()?;
    let freqs = value("--freqs")
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<f64>, _>>()
        .context("--freqs HZ,HZ,...")?;
    let skip_ms: u64 = value("--skip-ms").map(|v| v.parse()).transpose()?.unwrap_or(500);
    let (samples, rate, channels) = read_wav(&path)?;
    let mono: Vec<f32> = samples.iter().step_by(usize::from(channels.max(1))).copied().collect();
    let skip = (skip_ms * u64::from(rate) / 1000) as usize;
    let mono = mono.get(skip..).unwrap_or_default();
    let mut report = tone_report(mono, rate, target, &freqs);
    report.insert("path".into(), json!(path));
    report.insert("channels".into(), json!(channels));
    report.insert("ev".into(), json!("audio"));
    println!("{}", Value::Object(report));
    Ok(())
}

/// Test pattern the `--video` camera sends.
const PATTERN: (u32, u32, u32) = (640, 480, 15);

/// `{"cmd":"measure-video","ms":3000}`: decoded frames of the current call's remote video for
/// `ms`: how many carried a frame number (`read_frame_number`, the pattern both peers send),
/// whether those rise, the size, and how much the mean luma below the number rows moves.
async fn measure_video(call: &Call, c: &Value) -> anyhow::Result<Value> {
    let ms = c["ms"].as_u64().unwrap_or(3000);
    let start = tokio::time::Instant::now();
    let until = start + std::time::Duration::from_millis(ms);
    let stream = loop {
        if let Some(s) = call.streams().1.into_iter().find(|s| s.has_video) {
            break s.stream_id;
        }
        if tokio::time::Instant::now() > until {
            bail!("no remote video stream");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut video = call.remote_video(&stream).context("no decoded video")?;
    let (mut frames, mut numbers, mut lumas, mut size) = (0u64, Vec::new(), Vec::new(), (0, 0));
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, video.next()).await {
        frames += 1;
        size = (frame.width, frame.height);
        if let Some(n) = read_frame_number(&frame) {
            numbers.push(n);
        }
        let from = (frame.height / 5 * frame.width) as usize;
        let luma = &frame.y()[from..];
        let sum: u64 = luma.iter().step_by(7).map(|&v| u64::from(v)).sum();
        lumas.push(sum as f64 / luma.len().div_ceil(7).max(1) as f64);
    }
    let rising = numbers.windows(2).filter(|w| w[1] > w[0]).count();
    let mean = lumas.iter().sum::<f64>() / lumas.len().max(1) as f64;
    let sd = (lumas.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lumas.len().max(1) as f64).sqrt();
    Ok(json!({
        "call_id": call.id().to_string(),
        "stream_id": stream.to_string(),
        "ms": ms,
        "frames": frames,
        "width": size.0,
        "height": size.1,
        "numbered": numbers.len(),
        "in_order": numbers.len() > 1 && rising == numbers.len() - 1,
        "first": numbers.first(),
        "last": numbers.last(),
        "luma_mean": mean,
        "luma_sd": sd,
        "lagged": video.lagged(),
    }))
}

fn db(p: f64) -> f64 {
    10.0 * p.max(1e-20).log10()
}

async fn run(t0: std::time::Instant) -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = Client::builder().homeserver_url(&args.hs).build().await.context("build client")?;
    let session: MatrixSession = serde_json::from_value(json!({
        "user_id": args.user_id, "device_id": args.device_id, "access_token": args.token,
    }))?;
    client
        .matrix_auth()
        .restore_session(session, RoomLoadSettings::default())
        .await
        .context("restore session")?;
    let config = Config::default().with_busy_signal(args.busy_signal);
    // Inside the harness's namespace the only addresses are loopback ones (127.0.0.1, and
    // 127.0.0.2 on the veth): gather loopback candidates.
    let mut webrtc = WebrtcConfig::loopback().with_relay_only(args.relay_only);
    let state: Shared = Arc::default();
    if let Some(hz) = args.tone {
        let hub = AudioHub::new(AudioConfig::default());
        hub.set_default_source(move || Box::new(Tone::new(hz, TONE_AMPLITUDE)));
        webrtc = webrtc.with_audio(hub.clone());
        lock(&state).hub = Some(hub);
    }
    if args.video {
        let hub = VideoHub::new(VideoConfig::default());
        let (w, h, fps) = PATTERN;
        hub.set_default_source(move || Box::new(TestPattern::new(w, h, fps)));
        webrtc = webrtc.with_video(hub.clone());
        lock(&state).video = Some(hub);
    }
    let voip = Voip::from_client(&client)?.config(config).webrtc(webrtc).build()?;

    let mut incoming = voip.incoming_calls();
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(call) = incoming.next().await {
                // Stored before it is reported: the harness may answer as soon as it reads it.
                lock(&state).incoming = Some(call.clone());
                emit(
                    t0,
                    "incoming",
                    json!({
                        "call_id": call.id().to_string(),
                        "from": call.remote_user().map(|u| u.to_string()),
                        "room_id": call.room_id().map(|r| r.to_string()),
                    }),
                );
                watch(t0, state.clone(), call, "incoming");
            }
        });
    }
    let mut missed = voip.missed_calls();
    tokio::spawn(async move {
        while let Some(m) = missed.next().await {
            emit(t0, "missed", json!({"call_id": m.call_id.to_string(), "reason": m.reason.wire_reason()}));
        }
    });

    client.sync_once(SyncSettings::default()).await.context("first sync")?;
    let c = client.clone();
    tokio::spawn(async move {
        loop {
            let settings = SyncSettings::default().timeout(std::time::Duration::from_secs(2));
            if let Err(e) = c.sync(settings).await {
                tracing::debug!("sync failed, syncing again: {e}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    // Relay-only needs the homeserver's TURN servers before the first call.
    let turn_servers = || {
        voip.webrtc().map_or(0, |e| {
            e.ice_servers().iter().filter(|s| s.urls.iter().any(|u| u.starts_with("turn"))).count()
        })
    };
    if args.relay_only {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while turn_servers() == 0 {
            if tokio::time::Instant::now() > deadline {
                bail!("--relay-only: no TURN server from /voip/turnServer within 20 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    emit(
        t0,
        "ready",
        json!({
            "user_id": args.user_id,
            "device_id": args.device_id,
            "sdk": "matrix-voip-rs",
            "voip": true,
            "turn_servers": turn_servers(),
            "relay_only": args.relay_only,
        }),
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(c) = serde_json::from_str::<Value>(&line) else {
            emit(t0, "error", json!({"message": format!("not JSON: {line}")}));
            continue;
        };
        if c["cmd"] == "quit" {
            break;
        }
        match command(t0, &voip, &args, &state, &c).await {
            Ok(()) => emit(t0, "ok", json!({"cmd": c["cmd"]})),
            Err(e) => emit(t0, "error", json!({"cmd": c["cmd"], "message": format!("{e:#}")})),
        }
    }
    emit(t0, "bye", json!({}));
    voip.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_PEER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,matrix_sdk=warn,webrtc=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let t0 = std::time::Instant::now();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let helper = match argv.first().map(String::as_str) {
        Some("tone-wav") => Some(tone_wav(&argv)),
        Some("analyse-wav") => Some(analyse_wav(&argv)),
        _ => None,
    };
    if let Some(result) = helper {
        if let Err(e) = result {
            eprintln!("rust-peer: {e:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    if let Err(e) = run(t0).await {
        emit(t0, "fatal", json!({"message": format!("{e:#}")}));
        std::process::exit(1);
    }
    std::process::exit(0);
}
