//! 1:1 calls: `call`, `answer` (also `--auto`: answering machine, echo bot), `reject`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use voip::core::{CallId, RoomId, StreamId};
use voip::webrtc::media::audio::{AudioHub, WavRecorder, WavSource};
use voip::{Call, CallState, CallType, CallUpdate, EndReason, Initiator, StreamExt};

use crate::error::{one_line, CliError};
use crate::output::Status;
use crate::Ctx;

/// What a call plays and records, and when it ends by itself.
#[derive(Clone, Debug, Default)]
pub struct MediaOptions {
    /// A WAV file sent as our microphone (then silence); `None`: silence.
    pub play: Option<PathBuf>,
    /// Play the file in a loop.
    pub loop_play: bool,
    /// Where to record the peer's audio (48 kHz mono WAV).
    pub record: Option<PathBuf>,
    /// Send the peer's own audio back (echo bot).
    pub echo: bool,
    /// Hang up this long after the call connected.
    pub hangup_after: Option<Duration>,
    /// The microphone to send (when nothing is played).
    #[cfg(feature = "devices")]
    pub mic: Option<DeviceChoice>,
    /// The speaker to play the other side on (when it is not recorded).
    #[cfg(feature = "devices")]
    pub speaker: Option<DeviceChoice>,
}

/// An audio device a call uses (feature `devices`).
#[cfg(feature = "devices")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceChoice {
    /// The device's name; `None`: the default device.
    pub name: Option<String>,
    /// Asked for on the command line (then failing to open it is an error; otherwise the call
    /// goes on without it).
    pub explicit: bool,
}

#[cfg(feature = "devices")]
impl DeviceChoice {
    /// `--mic`/`--speaker` as given (`Some("")`: the default device), else the default device
    /// when `implied` and a person is at the terminal (stdin and stdout both terminals: never in
    /// scripts and tests, whose output is piped).
    pub fn pick(arg: Option<&str>, implied: bool) -> Option<Self> {
        use std::io::IsTerminal;
        match arg {
            Some(name) => {
                Some(DeviceChoice { name: (!name.is_empty()).then(|| name.to_owned()), explicit: true })
            }
            None if implied && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() => {
                Some(DeviceChoice { name: None, explicit: false })
            }
            None => None,
        }
    }

    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }

    /// An error opening the device: fatal when it was asked for, a notice otherwise.
    fn failed(
        &self,
        out: &crate::output::Out,
        what: &str,
        e: &voip::webrtc::media::audio::devices::DeviceError,
    ) -> Result<(), CliError> {
        use voip::webrtc::media::audio::devices::DeviceError;
        if self.explicit {
            return Err(match e {
                DeviceError::NotFound { .. } => CliError::NotFound(e.to_string()),
                _ => CliError::Other(anyhow::anyhow!("{what}: {e}")),
            });
        }
        out.event(
            "device_unavailable",
            json!({ "device": what, "name": self.label(), "error": e.to_string() }),
            || format!("No {what} ({e}): going on without it"),
        );
        Ok(())
    }
}

impl MediaOptions {
    /// Checks the input file before anything is sent.
    pub fn check(&self) -> Result<(), CliError> {
        if let Some(p) = &self.play {
            WavSource::open(p).map_err(|e| CliError::file(p, e))?;
        }
        if let Some(p) = &self.record {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(CliError::file(p, anyhow::anyhow!("the directory does not exist")));
                }
            }
        }
        Ok(())
    }
}

/// How a call went.
#[derive(Debug)]
pub struct Outcome {
    /// Why it ended.
    pub reason: EndReason,
    /// Who ended it.
    pub initiator: Initiator,
    /// Whether it ever connected.
    pub connected: bool,
    /// Ctrl-C hung it up.
    pub interrupted: bool,
}

impl Outcome {
    /// `Ok` for a call that connected and ended normally; the matching error otherwise.
    pub fn result(&self) -> Result<(), CliError> {
        if self.interrupted {
            return Err(CliError::Interrupted);
        }
        let reason = reason_name(&self.reason);
        match &self.reason {
            EndReason::UserHangup if self.connected => Ok(()),
            EndReason::PeerLeftRoom if self.connected => Ok(()),
            EndReason::UserHangup
            | EndReason::UserBusy
            | EndReason::InviteTimeout
            | EndReason::Rejected
            | EndReason::AnsweredElsewhere
            | EndReason::PeerLeftRoom
            | EndReason::Replaced => Err(CliError::NotAnswered(reason)),
            _ if self.connected && self.initiator == Initiator::Remote => Ok(()),
            _ => Err(CliError::CallFailed(reason)),
        }
    }
}

/// The wire-style name of an end reason (`user_hangup`, `rejected`, ...).
pub fn reason_name(reason: &EndReason) -> String {
    match serde_json::to_value(reason) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => format!("{reason:?}"),
    }
}

fn name<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

/// `call @user`: rings the user in their DM room (or `room`), holds the call until it ends.
pub async fn call(
    ctx: &Ctx,
    user: &str,
    room: Option<&str>,
    video: bool,
    media: &MediaOptions,
) -> Result<(), CliError> {
    media.check()?;
    let client = &ctx.client;
    let user = crate::session::user_id(client, user)?;
    if client.user_id() == Some(&*user) {
        return Err(CliError::Usage("calling yourself: use another account (or device) to answer".into()));
    }
    let room = match room {
        Some(r) => crate::session::joined_room(client, r).await?,
        None => crate::session::dm_room(client, &user).await?,
    };
    let room_id = RoomId::from(room.room_id().as_str());
    let kind = if video { CallType::Video } else { CallType::Voice };
    let call = ctx
        .voip
        .invite_to_call(&room_id, kind, user.as_str())
        .await
        .map_err(|e| CliError::CallFailed(one_line(&e)))?;
    ctx.out.event(
        "calling",
        json!({ "call_id": call.id().as_str(), "user_id": user, "room_id": room_id.as_str(), "video": video }),
        || format!("Calling {user} in {room_id}{}", if video { " (video)" } else { "" }),
    );
    let outcome = run(ctx, &call, media, media.record.clone()).await?;
    outcome.result()
}

/// `answer`: answers the next call (every call with `auto`), `reject`: rejects the next one.
pub async fn answer(
    ctx: &Ctx,
    incoming: &mut voip::IncomingCalls,
    auto: bool,
    reject: bool,
    timeout: Option<Duration>,
    media: &MediaOptions,
) -> Result<(), CliError> {
    media.check()?;
    let me = ctx.client.user_id().map(|u| u.to_string()).unwrap_or_default();
    ctx.out.event("waiting", json!({ "user_id": me, "auto": auto }), || {
        format!(
            "Waiting for a call to {me}{}",
            if auto { " (answering every call; Ctrl-C to stop)" } else { "" }
        )
    });
    let mut answered = 0u32;
    loop {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let call = tokio::select! {
            c = incoming.next() => c.ok_or_else(|| CliError::Other(anyhow::anyhow!("the call runtime stopped")))?,
            _ = sleep_until(deadline) => {
                return Err(CliError::NotAnswered(format!("no call within {} s", timeout.unwrap_or_default().as_secs())));
            }
            _ = ctx.interrupt.wait() => return Err(CliError::Interrupted),
        };
        if call.state() != CallState::Ringing {
            continue;
        }
        let from = call.remote_user().map(|u| u.to_string()).unwrap_or_default();
        let room = call.room_id().map(|r| r.to_string()).unwrap_or_default();
        let video = call.info().is_some_and(|i| i.call_type == CallType::Video);
        ctx.out.event(
            "incoming",
            json!({ "call_id": call.id().as_str(), "user_id": from, "room_id": room, "video": video }),
            || format!("Incoming {} call from {from} in {room}", if video { "video" } else { "voice" }),
        );
        if reject {
            call.reject().await.map_err(|e| CliError::CallFailed(one_line(&e)))?;
            let ended = tokio::time::timeout(Duration::from_secs(10), call.ended()).await.ok().flatten();
            let reason = ended.map(|(r, _)| reason_name(&r)).unwrap_or_else(|| "rejected".into());
            ctx.out.event("rejected", json!({ "call_id": call.id().as_str(), "reason": reason }), || {
                format!("Rejected the call from {from}")
            });
            return Ok(());
        }
        answered += 1;
        call.answer().await.map_err(|e| CliError::CallFailed(one_line(&e)))?;
        let record = media.record.as_deref().map(|p| numbered(p, answered));
        let outcome = run(ctx, &call, media, record).await?;
        if !auto || outcome.interrupted {
            return outcome.result();
        }
        if let Err(e) = outcome.result() {
            ctx.out.event(
                "call_result",
                json!({ "call_id": call.id().as_str(), "error": e.to_string() }),
                || format!("({e})"),
            );
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `out.wav` for the first call, `out-2.wav`, `out-3.wav`, ... for the next ones.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    if n <= 1 {
        return path.to_owned();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

/// Holds one call until it ends: prints its state changes and a status line every second,
/// plays, records and echoes, hangs up after `hangup_after` or on Ctrl-C.
pub async fn run(
    ctx: &Ctx,
    call: &Call,
    media: &MediaOptions,
    record: Option<PathBuf>,
) -> Result<Outcome, CliError> {
    let out = &ctx.out;
    let started = Instant::now();
    if let Some(p) = &media.play {
        let wav = WavSource::open(p).map_err(|e| CliError::file(p, e))?;
        let playing = if media.loop_play {
            call.replace_audio_input(wav.looped())
        } else {
            call.replace_audio_input(wav)
        };
        if !playing {
            return Err(CliError::Other(anyhow::anyhow!("no decoded audio for this call")));
        }
    }
    #[cfg(feature = "devices")]
    let mut mic_monitor = None;
    #[cfg(feature = "devices")]
    if let (None, Some(choice)) = (&media.play, &media.mic) {
        use voip::webrtc::media::audio::devices::Microphone;
        match Microphone::open(choice.name.as_deref()) {
            Ok(mic) => {
                mic_monitor = Some((mic.monitor(), mic.format().sample_rate));
                let format = mic.format();
                out.event(
                    "device",
                    json!({ "device": "microphone", "name": mic.device_name(), "sample_rate": format.sample_rate, "channels": format.channels }),
                    || format!("Microphone: {} ({} Hz, {} ch)", mic.device_name(), format.sample_rate, format.channels),
                );
                if !call.replace_audio_input(mic) {
                    return Err(CliError::Other(anyhow::anyhow!("no decoded audio for this call")));
                }
            }
            Err(e) => choice.failed(out, "microphone", &e)?,
        }
    }
    #[cfg(feature = "devices")]
    let speaker = open_speaker(out, media, record.as_deref())?;
    let mut updates = call.updates();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connected_at: Option<Instant> = None;
    let mut hangup_at: Option<tokio::time::Instant> = None;
    let mut interrupted = false;
    let mut audio_tasks: Vec<tokio::task::JoinHandle<Option<Recorded>>> = Vec::new();
    let mut started_audio = false;
    let mut rates = Rates::default();
    let mut state = call.state();
    let ended = loop {
        tokio::select! {
            update = updates.next() => {
                let Some(update) = update else {
                    break None;
                };
                match update {
                    CallUpdate::StateChanged(s) => {
                        state = s;
                        if s == CallState::Connected && connected_at.is_none() {
                            connected_at = Some(Instant::now());
                            hangup_at = media.hangup_after.map(|d| tokio::time::Instant::now() + d);
                        }
                        let setup_ms = (s == CallState::Connected).then(|| started.elapsed().as_millis() as u64);
                        out.event("state", json!({ "call_id": call.id().as_str(), "state": s, "setup_ms": setup_ms }), || {
                            match setup_ms {
                                Some(ms) => format!("State: {} ({ms} ms)", name(&s)),
                                None => format!("State: {}", name(&s)),
                            }
                        });
                    }
                    CallUpdate::StreamsChanged { remote, .. } if !started_audio => {
                        if let Some(stream) = remote.first() {
                            started_audio = true;
                            audio_tasks.extend(start_audio(ctx, call, &stream.stream_id, media, record.clone()));
                            #[cfg(feature = "devices")]
                            if let (Some(speaker), Some(audio)) = (&speaker, call.remote_audio(&stream.stream_id)) {
                                // The speaker plays until the peer's track ends.
                                let playing = speaker.play(audio);
                                audio_tasks.push(tokio::spawn(async move {
                                    let _ = playing.await;
                                    None
                                }));
                            }
                        }
                    }
                    CallUpdate::HoldChanged { local_hold, remote_hold } => {
                        out.event("hold", json!({ "call_id": call.id().as_str(), "local_hold": local_hold, "remote_hold": remote_hold }), || {
                            format!("Hold: local {local_hold}, remote {remote_hold}")
                        });
                    }
                    CallUpdate::Ended { reason, initiator } => break Some((reason, initiator)),
                    _ => {}
                }
            }
            _ = ticker.tick() => {
                let status = sample(ctx, call.id(), state, connected_at.unwrap_or(started), &mut rates).await;
                out.status(&status);
            }
            _ = sleep_until(hangup_at) => {
                hangup_at = None;
                out.event("hanging_up", json!({ "call_id": call.id().as_str(), "why": "hangup_after" }), || "Hanging up".into());
                if let Err(e) = call.hangup().await {
                    tracing::warn!("hangup: {e}");
                }
            }
            _ = ctx.interrupt.wait(), if !interrupted => {
                interrupted = true;
                out.event("hanging_up", json!({ "call_id": call.id().as_str(), "why": "interrupted" }), || "Interrupted: hanging up".into());
                let r = if call.state() == CallState::Ringing { call.reject().await } else { call.hangup().await };
                if let Err(e) = r {
                    tracing::warn!("hangup: {e}");
                }
            }
        }
    };
    out.finish();
    #[cfg(feature = "devices")]
    {
        let devices = speaker.as_ref().map(|s| ("speaker", s.monitor(), s.format().sample_rate)).into_iter();
        for (what, monitor, rate) in devices.chain(mic_monitor.map(|(m, rate)| ("microphone", m, rate))) {
            device_report(out, call, what, &monitor.stats(), rate);
        }
    }
    let (reason, initiator) = ended.unwrap_or((EndReason::UnknownError, Initiator::Library));
    let duration = connected_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    out.event(
        "ended",
        json!({
            "call_id": call.id().as_str(),
            "reason": reason_name(&reason),
            "initiator": initiator,
            "connected": connected_at.is_some(),
            "duration_s": (duration * 10.0).round() / 10.0,
        }),
        || match connected_at {
            Some(_) => {
                format!("Call ended: {} by {} after {duration:.1} s", reason_name(&reason), name(&initiator))
            }
            None => {
                format!("Call ended before it connected: {} by {}", reason_name(&reason), name(&initiator))
            }
        },
    );
    for task in audio_tasks {
        // The recorder ends with the peer's track; never wait for long.
        if let Ok(Ok(Some(rec))) = tokio::time::timeout(Duration::from_secs(5), task).await {
            out.event(
                "recorded",
                json!({ "call_id": call.id().as_str(), "path": rec.path, "seconds": rec.seconds, "level_dbfs": rec.level }),
                || format!("Recorded {:.1} s of {} to {} (level {:.0} dBFS)", rec.seconds, call.remote_user().map(|u| u.to_string()).unwrap_or_default(), rec.path.display(), rec.level),
            );
        }
    }
    Ok(Outcome { reason, initiator, connected: connected_at.is_some(), interrupted })
}

/// What a device did during the call: seconds of audio from (speaker) or to (microphone) the
/// call, underruns and overflows (buffer empty or full), callbacks, whether it was paced.
#[cfg(feature = "devices")]
fn device_report(
    out: &crate::output::Out,
    call: &Call,
    what: &str,
    st: &voip::webrtc::media::audio::devices::DeviceStats,
    rate: u32,
) {
    let secs = |n: u64| (n as f64 / f64::from(rate.max(1)) * 100.0).round() / 100.0;
    out.event(
        "device_stats",
        json!({ "call_id": call.id().as_str(), "device": what, "delivered_s": secs(st.delivered),
                "underrun_s": secs(st.underrun), "overflow_s": secs(st.overflow), "callbacks": st.callbacks,
                "errors": st.errors, "paced": st.paced }),
        || {
            format!(
                "{what}: {:.1} s of the call's audio, {:.1} s underrun, {:.1} s overflow, {} callbacks{}",
                secs(st.delivered),
                secs(st.underrun),
                secs(st.overflow),
                st.callbacks,
                if st.paced { " (unclocked device, paced)" } else { "" }
            )
        },
    );
}

/// The speaker a call plays the peer on: asked for (or implied) and not recording.
#[cfg(feature = "devices")]
fn open_speaker(
    out: &crate::output::Out,
    media: &MediaOptions,
    record: Option<&Path>,
) -> Result<Option<voip::webrtc::media::audio::devices::Speaker>, CliError> {
    use voip::webrtc::media::audio::devices::Speaker;
    let (None, Some(choice)) = (record, &media.speaker) else { return Ok(None) };
    match Speaker::open(choice.name.as_deref()) {
        Ok(speaker) => {
            let format = speaker.format();
            out.event(
                "device",
                json!({ "device": "speaker", "name": speaker.device_name(), "sample_rate": format.sample_rate, "channels": format.channels }),
                || format!("Speaker: {} ({} Hz, {} ch)", speaker.device_name(), format.sample_rate, format.channels),
            );
            Ok(Some(speaker))
        }
        Err(e) => choice.failed(out, "speaker", &e).map(|()| None),
    }
}

/// A finished recording.
#[derive(Debug)]
struct Recorded {
    path: PathBuf,
    seconds: f64,
    level: f32,
}

/// The recorder and the echo of the peer's stream `stream`.
fn start_audio(
    ctx: &Ctx,
    call: &Call,
    stream: &StreamId,
    media: &MediaOptions,
    record: Option<PathBuf>,
) -> Vec<tokio::task::JoinHandle<Option<Recorded>>> {
    let mut tasks = Vec::new();
    if let Some(path) = record {
        if let Some(mut audio) = call.remote_audio(stream) {
            let out = ctx.out.clone();
            tasks.push(tokio::spawn(async move {
                let mut rec = match WavRecorder::create(&path, 1) {
                    Ok(r) => r,
                    Err(e) => {
                        out.error("file", crate::error::exit::USAGE, &format!("{}: {e}", path.display()));
                        return None;
                    }
                };
                let mut sum_sq = 0.0f64;
                let mut n = 0u64;
                while let Some(frame) = audio.next().await {
                    for s in frame.mono_f32() {
                        sum_sq += f64::from(s) * f64::from(s);
                        n += 1;
                    }
                    if let Err(e) = rec.write_frame(&frame) {
                        out.error("file", crate::error::exit::OTHER, &format!("{}: {e}", path.display()));
                        return None;
                    }
                }
                if let Err(e) = rec.finish() {
                    out.error("file", crate::error::exit::OTHER, &format!("{}: {e}", path.display()));
                    return None;
                }
                let rms = if n > 0 { (sum_sq / n as f64).sqrt() } else { 0.0 };
                let level = if rms > 0.0 { (20.0 * rms.log10()) as f32 } else { f32::NEG_INFINITY };
                // `n` counts the mono samples written, at the decoder's 48 kHz (`rec.frames()`
                // counts 20 ms frames, not samples).
                Some(Recorded { path, seconds: n as f64 / 48_000.0, level: level.max(-120.0) })
            }));
        }
    }
    if media.echo {
        if let (Some(mut audio), Some(input)) = (call.remote_audio(stream), call.audio_input()) {
            tasks.push(tokio::spawn(async move {
                while let Some(frame) = audio.next().await {
                    input.push_i16(frame.sample_rate, frame.channels, &frame.samples);
                }
                None
            }));
        }
    }
    tasks
}

/// Byte counters of the previous sample, for bitrates.
#[derive(Debug, Default)]
pub struct Rates {
    at: Option<Instant>,
    sent: u64,
    received: u64,
}

/// One status sample of a call: the engine's stats and the decoded audio's level.
async fn sample(ctx: &Ctx, call_id: &CallId, state: CallState, since: Instant, rates: &mut Rates) -> Status {
    let mut status = one_sample(ctx, call_id, rates).await;
    status.call_id = call_id.as_str().to_owned();
    status.state = name(&state);
    status.elapsed_s = (since.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    status
}

/// The media figures of one call (no id, state or time).
async fn one_sample(ctx: &Ctx, call_id: &CallId, rates: &mut Rates) -> Status {
    let mut status = Status::default();
    if let Some(Ok(stats)) = match ctx.voip.webrtc() {
        Some(engine) => Some(engine.stats(call_id).await),
        None => None,
    } {
        status.rtt_ms = stats.round_trip_time.map(|d| d.as_secs_f64() * 1000.0);
        let expected = stats.packets_received as f64 + stats.packets_lost.max(0) as f64;
        status.loss_percent = (expected > 0.0).then(|| 100.0 * stats.packets_lost.max(0) as f64 / expected);
        let now = Instant::now();
        if let Some(at) = rates.at {
            let dt = now.duration_since(at).as_secs_f64().max(0.001);
            status.send_kbps = stats.bytes_sent.saturating_sub(rates.sent) as f64 * 8.0 / dt / 1000.0;
            status.recv_kbps = stats.bytes_received.saturating_sub(rates.received) as f64 * 8.0 / dt / 1000.0;
        }
        *rates = Rates { at: Some(now), sent: stats.bytes_sent, received: stats.bytes_received };
        status.path = stats.selected_pair.and_then(|p| p.local).map(|c| c.candidate_type);
    }
    status.audio_level_dbfs = audio_level(&ctx.hub, call_id);
    status
}

/// The status of several calls at once (a mesh group call's peer calls): bitrates summed, the
/// worst round-trip time and loss, the loudest peer.
pub async fn sample_calls(
    ctx: &Ctx,
    calls: &[CallId],
    state: &str,
    since: Instant,
    rates: &mut std::collections::HashMap<CallId, Rates>,
) -> Status {
    let mut total = Status {
        state: state.to_owned(),
        elapsed_s: (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        ..Status::default()
    };
    rates.retain(|id, _| calls.contains(id));
    for id in calls {
        let s = one_sample(ctx, id, rates.entry(id.clone()).or_default()).await;
        total.send_kbps += s.send_kbps;
        total.recv_kbps += s.recv_kbps;
        total.rtt_ms = max_opt(total.rtt_ms, s.rtt_ms);
        total.loss_percent = max_opt(total.loss_percent, s.loss_percent);
        total.audio_level_dbfs = max_opt(total.audio_level_dbfs, s.audio_level_dbfs);
        if total.path.is_none() {
            total.path = s.path;
        }
    }
    total
}

fn max_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The level of the last decoded frame of the peer's first audio stream.
fn audio_level(hub: &AudioHub, call_id: &CallId) -> Option<f32> {
    let stream = hub.remote_streams(call_id).into_iter().next()?;
    let level = hub.remote_stats(call_id, &stream)?.level_dbfs;
    Some(if level.is_finite() { level.max(-120.0) } else { -120.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reason: EndReason, initiator: Initiator, connected: bool) -> Outcome {
        Outcome { reason, initiator, connected, interrupted: false }
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        let code = |o: Outcome| o.result().err().map_or(0, |e| e.exit_code());
        assert_eq!(code(outcome(EndReason::UserHangup, Initiator::Remote, true)), 0);
        assert_eq!(code(outcome(EndReason::UserHangup, Initiator::LocalUser, true)), 0);
        assert_eq!(code(outcome(EndReason::Rejected, Initiator::Remote, false)), 5);
        assert_eq!(code(outcome(EndReason::UserBusy, Initiator::Remote, false)), 5);
        assert_eq!(code(outcome(EndReason::InviteTimeout, Initiator::Library, false)), 5);
        assert_eq!(code(outcome(EndReason::IceFailed, Initiator::Library, true)), 6);
        assert_eq!(code(outcome(EndReason::IceFailed, Initiator::Library, false)), 6);
        let mut o = outcome(EndReason::UserHangup, Initiator::LocalUser, true);
        o.interrupted = true;
        assert_eq!(code(o), 130);
    }

    #[test]
    fn recordings_of_later_calls_are_numbered() {
        assert_eq!(numbered(Path::new("/tmp/out.wav"), 1), PathBuf::from("/tmp/out.wav"));
        assert_eq!(numbered(Path::new("/tmp/out.wav"), 3), PathBuf::from("/tmp/out-3.wav"));
        assert_eq!(numbered(Path::new("rec"), 2), PathBuf::from("rec-2"));
    }

    #[test]
    fn max_opt_keeps_the_larger_known_value() {
        assert_eq!(max_opt(Some(3.0), Some(5.0)), Some(5.0));
        assert_eq!(max_opt(Some(3.0), None), Some(3.0));
        assert_eq!(max_opt(None, Some(-20.0)), Some(-20.0));
        assert_eq!(max_opt::<f64>(None, None), None);
    }

    #[test]
    fn reason_names_are_the_wire_names() {
        assert_eq!(reason_name(&EndReason::UserHangup), "user_hangup");
        assert_eq!(reason_name(&EndReason::InviteTimeout), "invite_timeout");
    }
}
