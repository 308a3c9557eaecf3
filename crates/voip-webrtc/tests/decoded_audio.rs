//! Decoded audio end to end (feature `codecs`): PCM in on one engine, libopus, real webrtc-rs
//! RTP/SRTP over loopback, jitter buffer and decoder on the other engine, PCM out.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pair;
use voip_core::media::{CallType, MediaCommand, MediaKind};
use voip_core::StreamId;
use voip_webrtc::media::audio::{
    goertzel_power, level_dbfs, AudioConfig, AudioFrame, AudioHub, FrameOrigin, Impairment, MultiTone,
    PcmSource, RemoteAudio, Tone,
};
use voip_webrtc::WebrtcConfig;

/// Real-time audio: the tests of this file run one at a time (each runs two engines whose
/// playout and pacing must keep up on a two-core machine).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TONES: [f64; 3] = [500.0, 1200.0, 2900.0];
const OFF: [f64; 6] = [700.0, 900.0, 1600.0, 2000.0, 2500.0, 3500.0];

/// Silence until armed, then the multi-tone; remembers when the tone's first sample was taken
/// (the capture instant of the marker).
struct Marker {
    tone: MultiTone,
    armed: Arc<AtomicBool>,
    onset: Arc<Mutex<Option<Instant>>>,
}

impl PcmSource for Marker {
    fn sample_rate(&self) -> u32 {
        48_000
    }
    fn channels(&self) -> u16 {
        1
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        if self.armed.load(Ordering::SeqCst) {
            self.onset.lock().unwrap().get_or_insert_with(Instant::now);
            self.tone.read(out)
        } else {
            out.fill(0.0);
            out.len()
        }
    }
}

/// Frames of `audio` received during `span`, with when each arrived.
async fn collect(audio: &mut RemoteAudio, span: Duration) -> Vec<(Instant, AudioFrame)> {
    let end = tokio::time::Instant::now() + span;
    let mut frames = Vec::new();
    while let Ok(Some(f)) = tokio::time::timeout_at(end, audio.next()).await {
        frames.push((Instant::now(), f));
    }
    frames
}

/// Tone power against the strongest off-tone frequency, in dB (the weakest tone counts).
fn tone_margin_db(pcm: &[f32], tones: &[f64]) -> (f64, Vec<f64>) {
    let on: Vec<f64> = tones.iter().map(|&f| goertzel_power(pcm, 48_000, f)).collect();
    let off = OFF.iter().map(|&f| goertzel_power(pcm, 48_000, f)).fold(0.0, f64::max);
    let weakest = on.iter().copied().fold(f64::MAX, f64::min);
    (10.0 * (weakest / off.max(1e-20)).log10(), on)
}

/// The longest run of 10 ms blocks below −40 dBFS, in ms.
fn longest_silence_ms(pcm: &[f32]) -> usize {
    let (mut run, mut longest) = (0, 0);
    for block in pcm.chunks(480) {
        if level_dbfs(block) < -40.0 {
            run += 10;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

struct Setup {
    pair: Pair,
    hub_a: AudioHub,
    audio_b: RemoteAudio,
    armed: Arc<AtomicBool>,
    onset: Arc<Mutex<Option<Instant>>>,
}

async fn setup(b_config: AudioConfig) -> Setup {
    let hub_a = AudioHub::new(AudioConfig::default());
    let hub_b = AudioHub::new(b_config);
    let mut pair = Pair::new(
        WebrtcConfig::loopback().with_audio(hub_a.clone()),
        WebrtcConfig::loopback().with_audio(hub_b.clone()),
    );
    let armed = Arc::new(AtomicBool::new(false));
    let onset = Arc::new(Mutex::new(None));
    hub_a.input(&pair.call).replace(Marker {
        tone: MultiTone::new(&TONES, 0.6),
        armed: armed.clone(),
        onset: onset.clone(),
    });
    let audio_b = hub_b.remote_audio(&pair.call, &StreamId::from("a-user"));
    pair.connect(CallType::Voice).await;
    let call = pair.call.clone();
    let flowing = pair
        .pump_until(Duration::from_secs(10), |p| p.b.remote_packets(&call, "a-user", MediaKind::Audio) >= 25)
        .await;
    assert!(flowing, "no audio packets at b");
    Setup { pair, hub_a, audio_b, armed, onset }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_tone_in_is_multi_tone_out_with_delay_mute_and_replace() {
    let _serial = SERIAL.lock().await;
    let Setup { mut pair, hub_a, mut audio_b, armed, onset } = setup(AudioConfig::default()).await;
    let call = pair.call.clone();
    // Drain what was played before the marker.
    let _ = collect(&mut audio_b, Duration::from_millis(300)).await;
    armed.store(true, Ordering::SeqCst);
    let frames = collect(&mut audio_b, Duration::from_millis(2500)).await;
    let onset = onset.lock().unwrap().expect("marker played");
    let first_loud = frames.iter().find(|(_, f)| f.level_dbfs() > -30.0).expect("tone arrived");
    let delay = first_loud.0.saturating_duration_since(onset);
    let pcm: Vec<f32> = frames
        .iter()
        .filter(|(at, _)| *at > first_loud.0 + Duration::from_millis(300))
        .flat_map(|(_, f)| f.mono_f32())
        .collect();
    assert!(pcm.len() >= 48_000, "only {} samples of tone", pcm.len());
    let (margin, powers) = tone_margin_db(&pcm, &TONES);
    let stats = pair.b.engine.audio().unwrap().remote_stats(&call, &StreamId::from("a-user")).unwrap();
    eprintln!(
        "multi-tone {TONES:?}: weakest tone {margin:.1} dB above the strongest other frequency \
         (powers {powers:.4?}); end-to-end delay (capture of the marker to its decoded frame) {delay:?}; \
         frames {} decoded {} fec {} concealed {}; jitter buffer target {} ms",
        stats.frames, stats.decoded, stats.fec, stats.concealed, stats.jitter.target_ms
    );
    assert!(margin >= 20.0, "tones only {margin:.1} dB above the rest");
    assert!(delay < Duration::from_millis(250), "end-to-end delay {delay:?}");
    assert!(frames.iter().all(|(_, f)| f.sample_rate == 48_000 && f.channels == 1 && f.samples.len() == 960));
    assert!(frames.windows(2).all(|w| w[1].1.timestamp == w[0].1.timestamp + Duration::from_millis(20)));
    // No loss here; a loaded machine can still starve a task for a few frames.
    assert!(longest_silence_ms(&pcm) <= 60, "a {} ms gap without loss", longest_silence_ms(&pcm));

    // Replace the input mid-call: B hears the new tone.
    hub_a.input(&call).replace(Tone::new(3700.0, 0.5));
    let _ = collect(&mut audio_b, Duration::from_millis(300)).await;
    let pcm: Vec<f32> = collect(&mut audio_b, Duration::from_millis(1000))
        .await
        .iter()
        .flat_map(|(_, f)| f.mono_f32())
        .collect();
    let (margin, _) = tone_margin_db(&pcm, &[3700.0]);
    assert!(margin >= 20.0, "replaced tone only {margin:.1} dB above the rest");
    let old = goertzel_power(&pcm, 48_000, TONES[1]);
    assert!(goertzel_power(&pcm, 48_000, 3700.0) > 1000.0 * old, "the old input still plays");

    // Mute: no packets, B conceals into silence.
    pair.a.exec(
        &call,
        MediaCommand::SetTrackEnabled {
            stream_id: StreamId::from("a-user"),
            kind: MediaKind::Audio,
            enabled: false,
        },
    );
    let _ = collect(&mut audio_b, Duration::from_millis(300)).await;
    let before = pair.b.remote_packets(&call, "a-user", MediaKind::Audio);
    let muted = collect(&mut audio_b, Duration::from_millis(600)).await;
    let after = pair.b.remote_packets(&call, "a-user", MediaKind::Audio);
    assert_eq!(after, before, "packets arrived while muted");
    assert!(muted.iter().all(|(_, f)| f.origin == FrameOrigin::Concealed));
    let tail: Vec<f32> = muted.iter().skip(10).flat_map(|(_, f)| f.mono_f32()).collect();
    assert!(level_dbfs(&tail) < -60.0, "concealment did not fade: {} dBFS", level_dbfs(&tail));
    pair.assert_no_failures();
    pair.hang_up_and_check_no_leaks().await;
    // Frames played before the close may still be queued; then the stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        let mut queued = 0;
        while audio_b.next().await.is_some() {
            queued += 1;
        }
        queued
    })
    .await;
    assert!(matches!(ended, Ok(q) if q < 100), "the stream does not end with the call: {ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_and_30ms_jitter_stay_continuous() {
    let _serial = SERIAL.lock().await;
    let impairment = Impairment { loss_percent: 5.0, jitter: Duration::from_millis(30), seed: 17 };
    let Setup { mut pair, mut audio_b, armed, .. } =
        setup(AudioConfig { impairment: Some(impairment), ..AudioConfig::default() }).await;
    let call = pair.call.clone();
    armed.store(true, Ordering::SeqCst);
    let _ = collect(&mut audio_b, Duration::from_millis(800)).await;
    let frames = collect(&mut audio_b, Duration::from_secs(5)).await;
    let pcm: Vec<f32> = frames.iter().flat_map(|(_, f)| f.mono_f32()).collect();
    let longest = longest_silence_ms(&pcm);
    let (margin, _) = tone_margin_db(&pcm, &TONES);
    let count = |o: FrameOrigin| frames.iter().filter(|(_, f)| f.origin == o).count();
    let stats = pair.b.engine.audio().unwrap().remote_stats(&call, &StreamId::from("a-user")).unwrap();
    eprintln!(
        "5 % loss, ±30 ms jitter, 5 s: {} frames ({} decoded, {} FEC, {} concealed), longest silence {longest} ms, \
         tone margin {margin:.1} dB; dropped by impairment {}, late {}, jitter {} µs, target delay {} ms",
        frames.len(),
        count(FrameOrigin::Decoded),
        count(FrameOrigin::Fec),
        count(FrameOrigin::Concealed),
        stats.impaired_drops,
        stats.jitter.late,
        stats.jitter.jitter_us,
        stats.jitter.target_ms,
    );
    assert!(frames.len() >= 240, "frames {}", frames.len());
    assert!(longest <= 60, "a silence gap of {longest} ms where the input had sound");
    assert!(stats.impaired_drops > 0, "the impairment dropped nothing");
    assert!(count(FrameOrigin::Fec) > 0, "no lost frame was recovered from FEC (negotiated useinbandfec=1)");
    assert!(stats.jitter.target_ms >= 40, "target delay {} ms under ±30 ms jitter", stats.jitter.target_ms);
    assert!(margin >= 20.0, "tones only {margin:.1} dB above the rest under loss");
    pair.assert_no_failures();
    pair.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_pushed_at_44k1_stereo_is_heard_decoded_in_stereo() {
    let _serial = SERIAL.lock().await;
    let hub_a = AudioHub::new(AudioConfig::default());
    let hub_b = AudioHub::new(AudioConfig { output_channels: 2, ..AudioConfig::default() });
    let mut pair = Pair::new(
        WebrtcConfig::loopback().with_audio(hub_a.clone()),
        WebrtcConfig::loopback().with_audio(hub_b.clone()),
    );
    let call = pair.call.clone();
    let mut audio_b = hub_b.remote_audio(&call, &StreamId::from("a-user"));
    pair.connect(CallType::Voice).await;
    // The app's capture callback: 10 ms of 44.1 kHz stereo i16 every 10 ms.
    let input = hub_a.input(&call);
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            let block: Vec<i16> = (0..441)
                .flat_map(|_| {
                    let t = n as f64 / 44_100.0;
                    n += 1;
                    let s = 6000.0 * (2.0 * std::f64::consts::PI * 750.0 * t).sin()
                        + 6000.0 * (2.0 * std::f64::consts::PI * 1900.0 * t).sin();
                    [s as i16, s as i16]
                })
                .collect();
            input.push_i16(44_100, 2, &block);
        }
    });
    let _ = collect(&mut audio_b, Duration::from_millis(700)).await;
    let frames = collect(&mut audio_b, Duration::from_millis(1500)).await;
    pusher.abort();
    assert!(frames.len() >= 60, "frames {}", frames.len());
    assert!(frames.iter().all(|(_, f)| f.channels == 2 && f.samples.len() == 1920));
    let pcm: Vec<f32> = frames.iter().flat_map(|(_, f)| f.mono_f32()).collect();
    let (margin, _) = tone_margin_db(&pcm, &[750.0, 1900.0]);
    eprintln!(
        "pushed 44.1 kHz stereo PCM: tones 750/1900 Hz {margin:.1} dB above the rest, longest silence {} ms",
        longest_silence_ms(&pcm)
    );
    assert!(margin >= 20.0, "pushed tones only {margin:.1} dB above the rest");
    assert!(longest_silence_ms(&pcm) <= 60, "the pushed audio has gaps");
    pair.assert_no_failures();
    pair.hang_up_and_check_no_leaks().await;
}
