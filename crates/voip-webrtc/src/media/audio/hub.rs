//! [`AudioHub`]: the decoded-audio side of an engine. It makes the Opus source of every local
//! audio track (from the call's [`AudioInput`]) and runs, per remote audio track, the jitter
//! buffer, the decoder and a playout clock whose frames apps read with [`RemoteAudio`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use voip_core::media::{MediaKind, StreamPurpose};
use voip_core::{CallId, StreamId};

use super::codec::{OpusDecoder, OpusSettings};
use super::input::{AudioInput, OpusSource, PcmSource};
use super::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use super::{level_dbfs, AudioFrame, FrameOrigin, SAMPLE_RATE};
use crate::error::Result;
use crate::media::sink::{MediaSink, ReceivedPacket};
use crate::media::source::{bundled_media, MediaSource, SourceFactory};

/// Network impairment applied to received audio packets before the jitter buffer (tests and
/// demos of loss and jitter handling on a loopback network).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Packets dropped, in percent.
    pub loss_percent: f64,
    /// Each packet is delayed by a uniform random 0..=2×`jitter` (±`jitter` around the mean).
    pub jitter: Duration,
    /// Seed of the impairment's pseudo-random generator.
    pub seed: u64,
}

/// Settings of decoded audio.
#[derive(Clone)]
pub struct AudioConfig {
    /// Encoder settings of local audio tracks.
    pub opus: OpusSettings,
    /// Jitter buffer bounds of remote audio tracks.
    pub jitter: JitterConfig,
    /// Channels of decoded frames (1 or 2).
    pub output_channels: u16,
    /// Impairment of received packets (none by default).
    pub impairment: Option<Impairment>,
    /// Sources of local video tracks (default: the bundled clip).
    pub video: Arc<dyn SourceFactory>,
}

impl std::fmt::Debug for AudioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioConfig")
            .field("opus", &self.opus)
            .field("jitter", &self.jitter)
            .field("output_channels", &self.output_channels)
            .field("impairment", &self.impairment)
            .finish_non_exhaustive()
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            opus: OpusSettings::default(),
            jitter: JitterConfig::default(),
            output_channels: 1,
            impairment: None,
            video: bundled_media(),
        }
    }
}

/// Counters of one remote audio track's playout.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RemoteAudioStats {
    /// Frames played out.
    pub frames: u64,
    /// Frames decoded from their packet.
    pub decoded: u64,
    /// Frames recovered from FEC.
    pub fec: u64,
    /// Frames concealed.
    pub concealed: u64,
    /// Packets dropped by the [`Impairment`].
    pub impaired_drops: u64,
    /// Level of the last frame, dBFS.
    pub level_dbfs: f32,
    /// The jitter buffer's counters.
    pub jitter: JitterStats,
}

type DefaultSource = Arc<dyn Fn() -> Box<dyn PcmSource> + Send + Sync>;

struct Track {
    tx: broadcast::Sender<AudioFrame>,
    jb: Mutex<JitterBuffer>,
    stats: Mutex<RemoteAudioStats>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Track {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

struct Inner {
    config: AudioConfig,
    default_source: Mutex<Option<DefaultSource>>,
    inputs: Mutex<HashMap<CallId, AudioInput>>,
    tracks: Mutex<HashMap<(CallId, StreamId), Arc<Track>>>,
    rng: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decoded audio for every call of an engine: give it to
/// [`crate::WebrtcConfig::with_audio`]. Cheap to clone.
#[derive(Clone)]
pub struct AudioHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AudioHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioHub")
            .field("config", &self.inner.config)
            .field("tracks", &lock(&self.inner.tracks).len())
            .finish_non_exhaustive()
    }
}

/// Decoded frames of one remote audio stream. Ends when the track or the call ends.
#[derive(Debug)]
pub struct RemoteAudio {
    frames: crate::media::frames::Frames<AudioFrame>,
}

impl RemoteAudio {
    /// The next frame; `None` once the track ended. A reader that falls more than 2 s behind
    /// loses the oldest frames (counted by [`RemoteAudio::lagged`]).
    pub async fn next(&mut self) -> Option<AudioFrame> {
        self.frames.next().await
    }

    /// Frames this reader missed by falling behind.
    pub fn lagged(&self) -> u64 {
        self.frames.lagged()
    }
}

/// The same frames as [`RemoteAudio::next`], as a `futures::Stream`.
impl futures_core::Stream for RemoteAudio {
    type Item = AudioFrame;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AudioFrame>> {
        self.frames.poll_frame(cx)
    }
}

impl AudioHub {
    /// A hub with `config`.
    pub fn new(config: AudioConfig) -> Self {
        let seed = config.impairment.map_or(1, |i| i.seed | 1);
        AudioHub {
            inner: Arc::new(Inner {
                config,
                default_source: Mutex::new(None),
                inputs: Mutex::new(HashMap::new()),
                tracks: Mutex::new(HashMap::new()),
                rng: Mutex::new(seed),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AudioConfig {
        &self.inner.config
    }

    /// What a call's input plays when the app has not pushed or set anything (for example a
    /// greeting); made once per call. Without it a new input sends silence.
    pub fn set_default_source(&self, make: impl Fn() -> Box<dyn PcmSource> + Send + Sync + 'static) {
        *lock(&self.inner.default_source) = Some(Arc::new(make));
    }

    /// The audio input of call `call_id` (created on first use, also before the call's track
    /// exists).
    pub fn input(&self, call_id: &CallId) -> AudioInput {
        let mut inputs = lock(&self.inner.inputs);
        inputs
            .entry(call_id.clone())
            .or_insert_with(|| {
                let input = AudioInput::new(self.inner.config.opus.channels);
                if let Some(make) = lock(&self.inner.default_source).clone() {
                    input.replace_boxed(make());
                }
                input
            })
            .clone()
    }

    fn track(&self, call_id: &CallId, stream_id: &StreamId) -> Arc<Track> {
        lock(&self.inner.tracks)
            .entry((call_id.clone(), stream_id.clone()))
            .or_insert_with(|| {
                Arc::new(Track {
                    tx: broadcast::channel(100).0,
                    jb: Mutex::new(JitterBuffer::new(self.inner.config.jitter)),
                    stats: Mutex::new(RemoteAudioStats::default()),
                    task: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Decoded frames of the remote stream `stream_id` of call `call_id`, from now on (also
    /// before its track arrived).
    pub fn remote_audio(&self, call_id: &CallId, stream_id: &StreamId) -> RemoteAudio {
        RemoteAudio {
            frames: crate::media::frames::Frames::new(self.track(call_id, stream_id).tx.subscribe()),
        }
    }

    /// Playout counters of a remote stream (`None` before its first packet).
    pub fn remote_stats(&self, call_id: &CallId, stream_id: &StreamId) -> Option<RemoteAudioStats> {
        let tracks = lock(&self.inner.tracks);
        let t = tracks.get(&(call_id.clone(), stream_id.clone()))?;
        let mut s = *lock(&t.stats);
        s.jitter = lock(&t.jb).stats();
        Some(s)
    }

    /// Remote audio streams of a call that have a playout running.
    pub fn remote_streams(&self, call_id: &CallId) -> Vec<StreamId> {
        lock(&self.inner.tracks)
            .iter()
            .filter(|((c, _), t)| c == call_id && lock(&t.task).is_some())
            .map(|((_, s), _)| s.clone())
            .collect()
    }

    fn random(&self) -> f64 {
        // xorshift64*: deterministic for a seed, good enough for impairment.
        let mut s = lock(&self.inner.rng);
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn start_playout(&self, track: &Arc<Track>) {
        let mut task = lock(&track.task);
        if task.is_some() {
            return;
        }
        let weak = Arc::downgrade(track);
        let channels = self.inner.config.output_channels.clamp(1, 2);
        *task = Some(tokio::spawn(async move {
            let mut decoder = match OpusDecoder::new(channels) {
                Ok(d) => d,
                Err(e) => return tracing::warn!(error = %e, "opus decoder"),
            };
            let mut position = 0u64;
            let mut next = tokio::time::Instant::now();
            loop {
                let Some(track) = weak.upgrade() else { return };
                let playout = lock(&track.jb).pop(Instant::now());
                let decoded = match playout {
                    Playout::Waiting => None,
                    Playout::Packet { rtp_timestamp, payload } => match decoder.decode(&payload) {
                        Ok(s) => Some((s, FrameOrigin::Decoded, Some(rtp_timestamp))),
                        Err(e) => {
                            tracing::debug!(error = %e, "undecodable opus packet concealed");
                            decoder.conceal(960).ok().map(|s| (s, FrameOrigin::Concealed, None))
                        }
                    },
                    Playout::Fec { rtp_timestamp, next_payload, samples } => decoder
                        .decode_fec(&next_payload, samples)
                        .ok()
                        .map(|s| (s, FrameOrigin::Fec, Some(rtp_timestamp))),
                    Playout::Conceal { samples } => {
                        decoder.conceal(samples).ok().map(|s| (s, FrameOrigin::Concealed, None))
                    }
                };
                let mut wait = Duration::from_millis(20);
                if let Some((samples, origin, rtp_timestamp)) = decoded {
                    let per_channel = samples.len() / usize::from(channels);
                    let frame = AudioFrame {
                        samples,
                        sample_rate: SAMPLE_RATE,
                        channels,
                        timestamp: Duration::from_micros(position * 1_000_000 / u64::from(SAMPLE_RATE)),
                        rtp_timestamp,
                        origin,
                    };
                    position += per_channel as u64;
                    wait = frame.duration().max(Duration::from_millis(5));
                    {
                        let mut st = lock(&track.stats);
                        st.frames += 1;
                        match origin {
                            FrameOrigin::Decoded => st.decoded += 1,
                            FrameOrigin::Fec => st.fec += 1,
                            FrameOrigin::Concealed => st.concealed += 1,
                        }
                        st.level_dbfs = level_dbfs(&frame.to_f32());
                    }
                    let _ = track.tx.send(frame);
                }
                drop(track);
                next += wait;
                let now = tokio::time::Instant::now();
                if next + Duration::from_millis(200) < now {
                    next = now;
                }
                tokio::time::sleep_until(next).await;
            }
        }));
    }

    fn remove_where(&self, mut pred: impl FnMut(&CallId, &StreamId) -> bool) {
        let removed: Vec<Arc<Track>> = {
            let mut tracks = lock(&self.inner.tracks);
            let keys: Vec<_> = tracks.keys().filter(|(c, s)| pred(c, s)).cloned().collect();
            keys.iter().filter_map(|k| tracks.remove(k)).collect()
        };
        for t in removed {
            if let Some(task) = lock(&t.task).take() {
                task.abort();
            }
        }
    }
}

impl SourceFactory for AudioHub {
    fn create(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<Box<dyn MediaSource>> {
        match kind {
            MediaKind::Audio => Ok(Box::new(OpusSource::new(self.input(call_id), self.inner.config.opus)?)),
            MediaKind::Video => self.inner.config.video.create(call_id, stream_id, purpose, kind),
        }
    }
}

impl MediaSink for AudioHub {
    fn on_packet(&self, _stream_id: &StreamId, _kind: MediaKind, _packet: &ReceivedPacket) {}

    fn on_call_packet(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        kind: MediaKind,
        packet: &ReceivedPacket,
    ) {
        if kind != MediaKind::Audio || packet.payload.is_empty() {
            return;
        }
        let track = self.track(call_id, stream_id);
        self.start_playout(&track);
        let Some(imp) = self.inner.config.impairment else {
            lock(&track.jb).insert(
                packet.sequence_number,
                packet.timestamp,
                packet.payload.clone(),
                packet.arrived,
            );
            return;
        };
        if self.random() * 100.0 < imp.loss_percent {
            lock(&track.stats).impaired_drops += 1;
            return;
        }
        let delay = imp.jitter.mul_f64(2.0 * self.random());
        let packet = packet.clone();
        let weak = Arc::downgrade(&track);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(track) = weak.upgrade() {
                lock(&track.jb).insert(
                    packet.sequence_number,
                    packet.timestamp,
                    packet.payload,
                    Instant::now(),
                );
            }
        });
    }

    fn on_track_ended(&self, call_id: &CallId, stream_id: &StreamId, kind: MediaKind) {
        if kind == MediaKind::Audio {
            self.remove_where(|c, s| c == call_id && s == stream_id);
        }
    }

    fn on_call_closed(&self, call_id: &CallId) {
        self.remove_where(|c, _| c == call_id);
        lock(&self.inner.inputs).remove(call_id);
    }
}
