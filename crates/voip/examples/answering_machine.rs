//! An answering machine: answers every call, plays a WAV greeting, records the caller to a WAV
//! file, hangs up after a while. Decoded audio through libopus (feature `codecs`).
//!
//! `cargo run -p voip --features codecs --example answering_machine [-- --greeting g.wav --out DIR]`
//! runs the machine and a caller on the in-process homeserver: the caller says something (a
//! two-tone signal), the machine greets it (the WAV file, or a generated three-note chime) and
//! records it. The example checks that the caller heard the greeting and that the recording
//! holds the caller's tones, and prints the decoded levels. Against a real homeserver, build
//! the machine's `Voip` with `Voip::from_client(&client)?` and the same `WebrtcConfig`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use voip::local::LocalHomeserver;
use voip::webrtc::media::audio::{
    goertzel_power, read_wav, AudioConfig, AudioHub, MultiTone, PcmSource, WavRecorder, WavSource,
};
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{Call, CallState, CallType, VoipBuilder};

/// What the caller says: 440 Hz and 1320 Hz.
const CALLER_TONES: [f64; 2] = [440.0, 1320.0];
/// The generated greeting's notes.
const CHIME: [f64; 3] = [660.0, 880.0, 990.0];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// A three-note chime, 2.4 s, 48 kHz mono.
fn write_chime(path: &PathBuf) -> Result<()> {
    let mut w = WavRecorder::create(path, 1)?;
    for (n, f) in CHIME.iter().enumerate() {
        let note: Vec<i16> = (0..38_400)
            .map(|i| {
                let t = (n * 38_400 + i) as f64 / 48_000.0;
                (9000.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16
            })
            .collect();
        w.write_samples(&note)?;
    }
    w.finish()?;
    Ok(())
}

/// Records the caller's first audio stream to `path` until the call ends (at most `limit`).
async fn record(call: Call, path: PathBuf, limit: Duration) -> Result<u64> {
    // The caller's stream id comes with its SDP stream metadata.
    let stream = loop {
        if let Some(s) = call.streams().1.into_iter().next() {
            break s.stream_id;
        }
        if call.state() == CallState::Ended {
            bail!("call ended before the caller's stream was known");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut audio = call.remote_audio(&stream).context("no decoded audio")?;
    let mut rec = WavRecorder::create(&path, 1)?;
    let end = tokio::time::Instant::now() + limit;
    while let Ok(Some(frame)) = tokio::time::timeout_at(end, audio.next()).await {
        rec.write_frame(&frame)?;
    }
    let frames = rec.frames();
    rec.finish()?;
    Ok(frames)
}

fn tone_report(label: &str, pcm: &[f32], tones: &[f64]) -> f64 {
    let level = voip::webrtc::media::audio::level_dbfs(pcm);
    let on: Vec<f64> = tones.iter().map(|&f| goertzel_power(pcm, 48_000, f)).collect();
    let off =
        [300.0, 1000.0, 1700.0, 2500.0].iter().map(|&f| goertzel_power(pcm, 48_000, f)).fold(0.0, f64::max);
    let margin = 10.0 * (on.iter().copied().fold(f64::MAX, f64::min) / off.max(1e-20)).log10();
    println!(
        "{label}: {:.1} s, level {level:.1} dBFS, tones {tones:?} {margin:.1} dB above other frequencies",
        pcm.len() as f64 / 48_000.0
    );
    margin
}

#[tokio::main]
async fn main() -> Result<()> {
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| std::env::temp_dir().display().to_string()));
    std::fs::create_dir_all(&out)?;
    let greeting = match arg("--greeting") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = out.join("greeting.wav");
            write_chime(&p)?;
            p
        }
    };
    WavSource::open(&greeting).with_context(|| format!("greeting {}", greeting.display()))?;

    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@caller:local", "@machine:local"]);

    // The machine: every call's input plays the greeting once, then silence.
    let hub = AudioHub::new(AudioConfig::default());
    let g = greeting.clone();
    hub.set_default_source(move || match WavSource::open(&g) {
        Ok(w) => Box::new(w) as Box<dyn PcmSource>,
        Err(_) => Box::new(voip::webrtc::media::audio::Silence),
    });
    let c = hs.connect("@machine:local", "MACHINE");
    let machine = VoipBuilder::new(c.device, c.transport, c.inputs)
        .webrtc(WebrtcConfig::loopback().with_audio(hub))
        .build()?;
    let mut incoming = machine.incoming_calls();
    let rec_dir = out.clone();
    let recorder = tokio::spawn(async move {
        let call = incoming.next().await.context("no call")?;
        call.answer_with(CallType::Voice).await?;
        let path = rec_dir.join(format!("recording-{}.wav", call.id()));
        let frames = record(call.clone(), path.clone(), Duration::from_secs(4)).await?;
        call.hangup().await?;
        anyhow::Ok((path, frames))
    });

    // The caller talks (two tones) and listens to the greeting.
    let caller_hub = AudioHub::new(AudioConfig::default());
    let c = hs.connect("@caller:local", "PHONE");
    let caller = VoipBuilder::new(c.device, c.transport, c.inputs)
        .webrtc(WebrtcConfig::loopback().with_audio(caller_hub))
        .build()?;
    let call = caller.invite_to_call(&room, CallType::Voice, "@machine:local").await?;
    call.replace_audio_input(MultiTone::new(&CALLER_TONES, 0.5));
    tokio::time::timeout(Duration::from_secs(20), call.wait_for_state(CallState::Connected))
        .await
        .context("not connected")?
        .context("ended before connecting")?;
    let heard_path = out.join("caller-heard.wav");
    let heard = record(call.clone(), heard_path.clone(), Duration::from_millis(3500)).await?;
    let (path, frames) = recorder.await??;
    let _ = tokio::time::timeout(Duration::from_secs(5), call.ended()).await;
    caller.shutdown().await;
    machine.shutdown().await;

    println!(
        "machine recorded {frames} frames to {}; caller recorded {heard} frames to {}",
        path.display(),
        heard_path.display()
    );
    let (recorded, _, _) = read_wav(&path)?;
    let (greeted, _, _) = read_wav(&heard_path)?;
    // Skip the first half second (the jitter buffer filling, the greeting's first note only).
    let m1 = tone_report("recording (caller's voice)", recorded.get(24_000..).unwrap_or(&[]), &CALLER_TONES);
    let m2 = if arg("--greeting").is_none() {
        tone_report("greeting heard by the caller", &greeted, &CHIME)
    } else {
        println!(
            "greeting heard by the caller: level {:.1} dBFS",
            voip::webrtc::media::audio::level_dbfs(&greeted)
        );
        f64::MAX
    };
    if m1 < 20.0 || m2 < 10.0 {
        bail!("the recording or the greeting did not come through");
    }
    Ok(())
}
