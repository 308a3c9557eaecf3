//! `media-bench`: the Rust side of `cargo xtask bench --media` (docs/benchmarks.md, issue #17).
//!
//! ```text
//! media-bench [--seconds 20] [--warmup 2] [--video] [--out FILE]
//! ```
//!
//! One process holds both ends of one 1:1 voice call, on the public API of the `voip` crate
//! (two `Voip`s on the in-process homeserver, webrtc-rs media over loopback, decoded audio
//! through libopus and the jitter buffer: `WebrtcConfig::with_audio(AudioHub)`), measured the
//! way `bench/js-media.mjs` measures two libwebrtc peers in one Node process:
//!
//! * CPU: user + system time of the whole process (`/proc/self/stat`) over the call window;
//! * memory: resident set (`/proc/self/status` `VmRSS`) during the call minus before the peers
//!   existed;
//! * mouth-to-ear delay: each side sends 500 ms tone bursts once a second; the capture instant
//!   of a burst's first sample (when the encoder's input reads it) to the instant the other
//!   side's playout emits the first decoded frame above −30 dBFS.
//!
//! `--video` makes it a video call: both ends also send voip-webrtc's `TestPattern` at 640×480,
//! 30 fps (VP8 by libvpx at the default 1000 kbit/s CBR) and read the other's decoded frames.
//!
//! Prints one JSON object (and writes it to `--out`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use voip::local::LocalHomeserver;
use voip::webrtc::media::audio::{AudioConfig, AudioHub, PcmSource};
use voip::webrtc::media::video::{TestPattern, VideoConfig, VideoHub};
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{Call, CallState, CallType, VoipBuilder};

/// Burst period and length, in samples at 48 kHz (multiples of the 20 ms encoder frame, so a
/// burst starts on a frame boundary).
const PERIOD: u64 = 48_000;
const BURST: u64 = 24_000;
const AMPLITUDE: f64 = 0.3;
/// A decoded frame louder than this starts a burst at the receiver; quieter than `QUIET` ends it.
const LOUD_DBFS: f32 = -30.0;
const QUIET_DBFS: f32 = -50.0;

/// Tone bursts that remember the capture instant of each burst's first sample.
struct Bursts {
    freq: f64,
    n: u64,
    onsets: Arc<Mutex<Vec<Instant>>>,
}

impl PcmSource for Bursts {
    fn sample_rate(&self) -> u32 {
        48_000
    }
    fn channels(&self) -> u16 {
        1
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        let now = Instant::now();
        for s in out.iter_mut() {
            let pos = self.n % PERIOD;
            if pos == 0 {
                self.onsets.lock().unwrap_or_else(|e| e.into_inner()).push(now);
            }
            *s = if pos < BURST {
                let t = self.n as f64 / 48_000.0;
                (AMPLITUDE * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as f32
            } else {
                0.0
            };
            self.n += 1;
        }
        out.len()
    }
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks / 100.0)
}

/// Resident set size in MiB, from `/proc/self/status`.
fn rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse::<f64>()?;
    Ok(kb / 1024.0)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// The remote stream id of `call` once the peer's stream is known.
async fn remote_stream(call: &Call) -> anyhow::Result<voip::core::StreamId> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = call.streams().1.into_iter().next() {
            return Ok(s.stream_id);
        }
        if Instant::now() > deadline {
            bail!("no remote stream");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads decoded frames until `until`; the instants at which a burst started being heard.
async fn arrivals(call: Call, until: tokio::time::Instant) -> anyhow::Result<(Vec<Instant>, u64)> {
    let stream = remote_stream(&call).await?;
    let mut audio = call.remote_audio(&stream).context("no decoded audio")?;
    let (mut loud, mut heard, mut frames) = (false, Vec::new(), 0u64);
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, audio.next()).await {
        let now = Instant::now();
        frames += 1;
        let level = frame.level_dbfs();
        if !loud && level > LOUD_DBFS {
            loud = true;
            heard.push(now);
        } else if loud && level < QUIET_DBFS {
            loud = false;
        }
    }
    Ok((heard, frames))
}

/// Decoded video frames of `call` until `until`: (frames, last width, last height).
async fn watch_video(call: Call, until: tokio::time::Instant) -> anyhow::Result<(u64, u32, u32)> {
    let stream = remote_stream(&call).await?;
    let mut video = call.remote_video(&stream).context("no decoded video")?;
    let mut seen = (0, 0, 0);
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, video.next()).await {
        seen = (seen.0 + 1, frame.width, frame.height);
    }
    Ok(seen)
}

/// Video payload bytes `voip` received in `call` (engine statistics, inbound video streams).
async fn video_bytes(voip: &voip::Voip, call: &Call) -> u64 {
    let Some(engine) = voip.webrtc() else { return 0 };
    let Ok(stats) = engine.stats(call.id()).await else { return 0 };
    stats
        .streams
        .iter()
        .filter(|s| !s.outbound && s.kind == voip::core::media::MediaKind::Video)
        .map(|s| s.bytes)
        .sum()
}

/// Delay of each heard burst after the latest onset before it (within one period).
fn delays_ms(onsets: &[Instant], heard: &[Instant]) -> Vec<f64> {
    heard
        .iter()
        .filter_map(|h| {
            let o = onsets.iter().rev().find(|o| *o <= h)?;
            let d = h.duration_since(*o);
            (d < Duration::from_millis(PERIOD * 1000 / 48_000)).then_some(d.as_secs_f64() * 1000.0)
        })
        .collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = arg("--seconds").map(|s| s.parse()).transpose()?.unwrap_or(20);
    let warmup: u64 = arg("--warmup").map(|s| s.parse()).transpose()?.unwrap_or(2);
    let video = std::env::args().any(|a| a == "--video");
    let rss_before = rss_mib()?;

    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@a:local", "@b:local"]);
    let mut ends = Vec::new();
    let mut video_hubs = Vec::new();
    for (user, device, freq) in [("@a:local", "A", 1000.0), ("@b:local", "B", 440.0)] {
        let onsets = Arc::new(Mutex::new(Vec::new()));
        let hub = AudioHub::new(AudioConfig::default());
        let o = onsets.clone();
        hub.set_default_source(move || Box::new(Bursts { freq, n: 0, onsets: o.clone() }));
        let c = hs.connect(user, device);
        let mut webrtc = WebrtcConfig::loopback().with_audio(hub);
        if video {
            let hub = VideoHub::new(VideoConfig::default());
            hub.set_default_source(|| Box::new(TestPattern::new(640, 480, 30)));
            video_hubs.push(hub.clone());
            webrtc = webrtc.with_video(hub);
        }
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(webrtc).build()?;
        ends.push((voip, onsets));
    }
    let mut incoming = ends[1].0.incoming_calls();
    let t_call = Instant::now();
    let kind = if video { CallType::Video } else { CallType::Voice };
    let a = ends[0].0.invite_to_call(&room, kind, "@b:local").await?;
    let b = tokio::time::timeout(Duration::from_secs(20), incoming.next()).await?.context("no call")?;
    b.answer().await?;
    for call in [&a, &b] {
        tokio::time::timeout(Duration::from_secs(20), call.wait_for_state(CallState::Connected))
            .await
            .context("not connected")?
            .context("ended before connecting")?;
    }
    let connected_ms = t_call.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(warmup)).await;

    let bytes0 = video_bytes(&ends[0].0, &a).await + video_bytes(&ends[1].0, &b).await;
    let cpu0 = cpu_seconds()?;
    let wall0 = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let heard_by_b = tokio::spawn(arrivals(b.clone(), until));
    let heard_by_a = tokio::spawn(arrivals(a.clone(), until));
    let (seen_by_b, seen_by_a) = if video {
        (Some(tokio::spawn(watch_video(b.clone(), until))), Some(tokio::spawn(watch_video(a.clone(), until))))
    } else {
        (None, None)
    };
    let (hb, fb) = heard_by_b.await??;
    let (ha, fa) = heard_by_a.await??;
    let mut video_seen = Vec::new();
    for t in [seen_by_a, seen_by_b].into_iter().flatten() {
        let (frames, w, h) = t.await??;
        video_seen.push(json!({"frames": frames, "width": w, "height": h}));
    }
    let cpu = cpu_seconds()? - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let rss_call = rss_mib()?;
    let bytes = video_bytes(&ends[0].0, &a).await + video_bytes(&ends[1].0, &b).await - bytes0;

    // Where video frames go: encoded by each sender, and per receiver reassembled, decoded,
    // dropped (whole call, warm-up included).
    let mut video_stats = Vec::new();
    for (hub, mine) in video_hubs.iter().zip([&a, &b]) {
        let local = hub.local_stats(mine.id());
        let stream = mine.streams().1.into_iter().next().map(|s| s.stream_id);
        let remote = stream.and_then(|s| hub.remote_stats(mine.id(), &s));
        video_stats.push(json!({
            "frames_encoded": local.map(|l| l.frames_encoded),
            "keyframes_sent": local.map(|l| l.keyframes),
            "keyframe_requests": local.map(|l| l.keyframe_requests),
            "remote": remote.map(|r| json!({
                "packets": r.packets, "frames_received": r.frames_received,
                "frames_decoded": r.frames_decoded, "frames_dropped": r.frames_dropped,
                "losses": r.losses, "plis_sent": r.plis_sent, "stale": r.stale,
                "decode_errors": r.decode_errors,
            })),
        }));
    }
    let onsets = |i: usize| ends[i].1.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut delays = delays_ms(&onsets(0), &hb);
    delays.extend(delays_ms(&onsets(1), &ha));
    a.hangup().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), b.ended()).await;
    for (voip, _) in &ends {
        voip.shutdown().await;
    }
    let out = json!({
        "impl": if video { "rust (voip: webrtc-rs + libopus + libvpx)" } else { "rust (voip: webrtc-rs + libopus)" },
        "video": video,
        "video_decoded": video_seen,
        "video_stats": video_stats,
        "video_kbps_each_way": video.then(|| bytes as f64 * 8.0 / 1000.0 / wall / 2.0),
        "seconds": wall,
        "connected_ms": connected_ms,
        "cpu_s": cpu,
        "cpu_s_per_20s_call": cpu * 20.0 / wall,
        "cpu_percent_of_one_core": 100.0 * cpu / wall,
        "rss_before_mib": rss_before,
        "rss_call_mib": rss_call,
        "rss_per_call_mib": rss_call - rss_before,
        "decoded_frames": [fa, fb],
        "bursts_heard": delays.len(),
        "delays_ms": delays,
        "delay_median_ms": median(&delays),
    });
    println!("{out}");
    if let Some(p) = arg("--out") {
        std::fs::write(&p, format!("{out:#}\n")).with_context(|| format!("writing {p}"))?;
    }
    if delays.len() < (seconds as usize) {
        bail!("only {} bursts heard in {seconds} s both ways", delays.len());
    }
    Ok(())
}
