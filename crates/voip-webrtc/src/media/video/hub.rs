//! [`VideoHub`]: the decoded-video side of an engine. It makes the VP8 source of every local
//! video track (from the call's [`VideoInput`]) and, per remote video track, reorders and
//! reassembles frames with webrtc-rs's `SampleBuilder` and VP8 depacketizer, asks for keyframes
//! (RTCP PLI) when the track starts and after loss, decodes and hands out [`VideoFrame`]s.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rtc::media::io::sample_builder::SampleBuilder;
use rtc::media::Sample;
use rtc::rtp::codec::vp8::Vp8Packet;
use tokio::sync::broadcast;
use voip_core::media::{MediaKind, StreamPurpose};
use voip_core::{CallId, StreamId};

use super::codec::{Vp8Decoder, Vp8Settings};
use super::frame::VideoFrame;
use super::input::{SendStats, VideoInput, VideoSource, Vp8Source};
use crate::error::Result;
use crate::media::sink::{MediaSink, ReceivedPacket, TrackFeedback};
use crate::media::source::{MediaSource, SourceFactory, ToneSource};
use crate::media::vp8;

/// Settings of decoded video.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoConfig {
    /// Encoder settings of local video tracks (the frame rate comes from the input).
    pub vp8: Vp8Settings,
    /// Keyframe requests (PLI) of a remote track are at least this far apart.
    pub pli_interval: Duration,
    /// A missing packet not filled by a late or retransmitted one within this time counts as
    /// lost (the frames that depend on it are dropped until a keyframe).
    pub loss_wait: Duration,
    /// Received video packets dropped at random, in percent (loss tests on loopback).
    pub loss_percent: f64,
    /// Seed of that random drop.
    pub seed: u64,
}

impl Default for VideoConfig {
    /// Default VP8 settings, PLIs ≥ 300 ms apart, 150 ms loss wait (a NACKed packet usually
    /// comes back sooner), no impairment.
    fn default() -> Self {
        VideoConfig {
            vp8: Vp8Settings::default(),
            pli_interval: Duration::from_millis(300),
            loss_wait: Duration::from_millis(150),
            loss_percent: 0.0,
            seed: 1,
        }
    }
}

/// Counters of one remote video track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteVideoStats {
    /// RTP packets received (after the impairment).
    pub packets: u64,
    /// Frames reassembled from RTP.
    pub frames_received: u64,
    /// Frames decoded and handed out.
    pub frames_decoded: u64,
    /// Keyframes among them.
    pub keyframes: u64,
    /// Frames dropped: they depended on a lost frame, or did not decode.
    pub frames_dropped: u64,
    /// Losses detected (a packet still missing after the loss wait, or a gap between frames).
    pub losses: u64,
    /// Keyframe requests (RTCP PLI) sent to the sender.
    pub plis_sent: u64,
    /// Frames that libvpx refused.
    pub decode_errors: u64,
    /// Packets ignored as duplicates or as too late (their frame was given up on).
    pub stale: u64,
    /// Packets dropped by the impairment (loss tests).
    pub impaired_drops: u64,
    /// Size of the last decoded frame.
    pub width: u32,
    /// Size of the last decoded frame.
    pub height: u32,
}

/// Counters of a call's local video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalVideoStats {
    /// Frames encoded.
    pub frames_encoded: u64,
    /// Keyframes among them.
    pub keyframes: u64,
    /// Keyframe requests (PLI/FIR) received from the peer.
    pub keyframe_requests: u64,
}

/// Packets reassembled per frame at most; also how far the builder looks back.
const MAX_LATE_PACKETS: u16 = 128;
/// Missing packets remembered at most (a longer gap is a loss at once).
const MAX_MISSING: usize = 512;

fn new_builder() -> SampleBuilder<Vp8Packet> {
    SampleBuilder::new(MAX_LATE_PACKETS, Vp8Packet::default(), 90_000)
        .with_max_time_delay(Duration::from_millis(500))
}

struct Receive {
    builder: SampleBuilder<Vp8Packet>,
    decoder: Option<Vp8Decoder>,
    /// Highest sequence number received, and its RTP timestamp.
    highest: Option<u16>,
    highest_ts: u32,
    /// Sequence numbers skipped over, with when the gap was seen.
    missing: VecDeque<(u16, Instant)>,
    /// First and last sequence number seen per RTP timestamp (frame).
    ranges: HashMap<u32, (u16, u16)>,
    /// Last sequence number of the last frame taken out of the builder.
    last_seq: Option<u16>,
    need_keyframe: bool,
    last_pli: Option<Instant>,
    first_ts: Option<u32>,
    last_ts: u32,
    last_ext: i64,
}

struct Track {
    tx: broadcast::Sender<VideoFrame>,
    rx: Mutex<Receive>,
    stats: Mutex<RemoteVideoStats>,
    feedback: Mutex<Option<TrackFeedback>>,
}

struct Inner {
    config: VideoConfig,
    inputs: Mutex<HashMap<(CallId, bool), VideoInput>>,
    senders: Mutex<HashMap<CallId, Arc<SendStats>>>,
    default_source: Mutex<Option<DefaultSource>>,
    tracks: Mutex<HashMap<(CallId, StreamId), Arc<Track>>>,
    burst_until: Mutex<Option<Instant>>,
    rng: Mutex<u64>,
}

type DefaultSource = Arc<dyn Fn() -> Box<dyn VideoSource> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decoded video for every call of an engine: give it to [`crate::WebrtcConfig::with_video`].
/// Cheap to clone.
#[derive(Clone)]
pub struct VideoHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VideoHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoHub")
            .field("config", &self.inner.config)
            .field("tracks", &lock(&self.inner.tracks).len())
            .finish_non_exhaustive()
    }
}

/// Decoded frames of one remote video stream. Ends when the track or the call ends.
#[derive(Debug)]
pub struct RemoteVideo {
    frames: crate::media::frames::Frames<VideoFrame>,
}

impl RemoteVideo {
    /// The next frame; `None` once the track ended. A reader more than 16 frames behind loses
    /// the oldest ones (counted by [`RemoteVideo::lagged`]).
    pub async fn next(&mut self) -> Option<VideoFrame> {
        self.frames.next().await
    }

    /// Frames this reader missed by falling behind.
    pub fn lagged(&self) -> u64 {
        self.frames.lagged()
    }
}

/// The same frames as [`RemoteVideo::next`], as a `futures::Stream`.
impl futures_core::Stream for RemoteVideo {
    type Item = VideoFrame;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<VideoFrame>> {
        self.frames.poll_frame(cx)
    }
}

impl VideoHub {
    /// A hub with `config`.
    pub fn new(config: VideoConfig) -> Self {
        VideoHub {
            inner: Arc::new(Inner {
                config,
                inputs: Mutex::new(HashMap::new()),
                senders: Mutex::new(HashMap::new()),
                default_source: Mutex::new(None),
                tracks: Mutex::new(HashMap::new()),
                burst_until: Mutex::new(None),
                rng: Mutex::new(config.seed | 1),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &VideoConfig {
        &self.inner.config
    }

    /// What a call's camera input plays when the app has not pushed or set anything (for
    /// example a [`super::TestPattern`]); made once per input. Without it a new input sends
    /// nothing until frames are pushed.
    pub fn set_default_source(&self, make: impl Fn() -> Box<dyn VideoSource> + Send + Sync + 'static) {
        *lock(&self.inner.default_source) = Some(Arc::new(make));
    }

    /// The camera (usermedia) video input of call `call_id`, created on first use.
    pub fn input(&self, call_id: &CallId) -> VideoInput {
        self.input_for(call_id, StreamPurpose::Usermedia)
    }

    /// The video input of call `call_id` for a local stream of `purpose` (screenshare has its
    /// own input).
    pub fn input_for(&self, call_id: &CallId, purpose: StreamPurpose) -> VideoInput {
        let screen = purpose == StreamPurpose::Screenshare;
        lock(&self.inner.inputs)
            .entry((call_id.clone(), screen))
            .or_insert_with(|| {
                let input = VideoInput::new();
                if let Some(make) = lock(&self.inner.default_source).clone() {
                    input.replace_boxed(make());
                }
                input
            })
            .clone()
    }

    /// Counters of call `call_id`'s local video (`None` before its first video track).
    pub fn local_stats(&self, call_id: &CallId) -> Option<LocalVideoStats> {
        let senders = lock(&self.inner.senders);
        let s = senders.get(call_id)?;
        Some(LocalVideoStats {
            frames_encoded: s.frames.load(Ordering::Relaxed),
            keyframes: s.keyframes.load(Ordering::Relaxed),
            keyframe_requests: s.keyframe_requests.load(Ordering::Relaxed),
        })
    }

    fn track(&self, call_id: &CallId, stream_id: &StreamId) -> Arc<Track> {
        lock(&self.inner.tracks)
            .entry((call_id.clone(), stream_id.clone()))
            .or_insert_with(|| {
                Arc::new(Track {
                    tx: broadcast::channel(16).0,
                    rx: Mutex::new(Receive {
                        builder: new_builder(),
                        decoder: None,
                        highest: None,
                        highest_ts: 0,
                        missing: VecDeque::new(),
                        ranges: HashMap::new(),
                        last_seq: None,
                        need_keyframe: true,
                        last_pli: None,
                        first_ts: None,
                        last_ts: 0,
                        last_ext: 0,
                    }),
                    stats: Mutex::new(RemoteVideoStats::default()),
                    feedback: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Decoded frames of the remote video stream `stream_id` of call `call_id`, from now on
    /// (also before its track arrived).
    pub fn remote_video(&self, call_id: &CallId, stream_id: &StreamId) -> RemoteVideo {
        RemoteVideo {
            frames: crate::media::frames::Frames::new(self.track(call_id, stream_id).tx.subscribe()),
        }
    }

    /// Counters of a remote video stream (`None` before anything was known of it).
    pub fn remote_stats(&self, call_id: &CallId, stream_id: &StreamId) -> Option<RemoteVideoStats> {
        let tracks = lock(&self.inner.tracks);
        let t = tracks.get(&(call_id.clone(), stream_id.clone()))?;
        let s = *lock(&t.stats);
        Some(s)
    }

    /// Drops every received video packet (of every call of this hub) for `duration` from now:
    /// a loss burst for tests and demos of keyframe recovery.
    pub fn start_loss_burst(&self, duration: Duration) {
        *lock(&self.inner.burst_until) = Some(Instant::now() + duration);
    }

    fn random(&self) -> f64 {
        let mut s = lock(&self.inner.rng);
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn impaired(&self) -> bool {
        if lock(&self.inner.burst_until).is_some_and(|until| Instant::now() < until) {
            return true;
        }
        self.inner.config.loss_percent > 0.0 && self.random() * 100.0 < self.inner.config.loss_percent
    }

    fn request_keyframe(&self, track: &Track, rx: &mut Receive, now: Instant) {
        if rx.last_pli.is_some_and(|at| now.duration_since(at) < self.inner.config.pli_interval) {
            return;
        }
        let sent = lock(&track.feedback).as_ref().is_some_and(TrackFeedback::request_keyframe);
        if sent {
            rx.last_pli = Some(now);
            lock(&track.stats).plis_sent += 1;
        }
    }

    fn receive(&self, track: &Track, packet: &ReceivedPacket) {
        let now = packet.arrived;
        let mut rx = lock(&track.rx);
        let rx = &mut *rx;
        lock(&track.stats).packets += 1;
        let seq = packet.sequence_number;
        let mut lost = false;
        match rx.highest {
            None => {
                rx.highest = Some(seq);
                rx.highest_ts = packet.timestamp;
            }
            Some(h) => {
                let d = seq.wrapping_sub(h) as i16;
                if d > 0 {
                    // A jump over many packets or over more than the loss wait of media time is
                    // a loss burst, not reordering: give up on the gap at once.
                    let media_jump = packet.timestamp.wrapping_sub(rx.highest_ts) as i32;
                    let wait_ticks = self.inner.config.loss_wait.as_millis() as i32 * 90;
                    if d as usize > MAX_MISSING || (d > 1 && media_jump > wait_ticks) {
                        lost = true;
                    } else {
                        let mut s = h.wrapping_add(1);
                        while s != seq {
                            rx.missing.push_back((s, now));
                            s = s.wrapping_add(1);
                        }
                    }
                    rx.highest = Some(seq);
                    rx.highest_ts = packet.timestamp;
                } else if let Some(i) = rx.missing.iter().position(|&(s, _)| s == seq) {
                    rx.missing.remove(i);
                } else {
                    // A duplicate, or a retransmission of a packet already given up on: an old
                    // frame built from it would play back in time.
                    lock(&track.stats).stale += 1;
                    return;
                }
            }
        }
        let wait = self.inner.config.loss_wait;
        if lost
            || rx.missing.len() > MAX_MISSING
            || rx.missing.front().is_some_and(|&(_, at)| now.saturating_duration_since(at) >= wait)
        {
            // A packet is lost for good: whatever the builder holds depends on it or waits
            // behind it. Start over; the frames until the next keyframe are dropped.
            tracing::debug!(seq, missing = ?rx.missing.front(), gap = lost, "video packet lost");
            rx.missing.clear();
            rx.builder = new_builder();
            rx.ranges.clear();
            rx.last_seq = None;
            rx.need_keyframe = true;
            lock(&track.stats).losses += 1;
        }
        let range = rx.ranges.entry(packet.timestamp).or_insert((seq, seq));
        if (seq.wrapping_sub(range.0) as i16) < 0 {
            range.0 = seq;
        }
        if (seq.wrapping_sub(range.1) as i16) > 0 {
            range.1 = seq;
        }
        if rx.ranges.len() > 256 {
            rx.ranges.clear();
        }
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: packet.marker,
                payload_type: packet.payload_type,
                sequence_number: seq,
                timestamp: packet.timestamp,
                ssrc: packet.ssrc,
                ..Default::default()
            },
            payload: packet.payload.clone(),
        };
        rx.builder.push(now, rtp);
        while let Some(sample) = rx.builder.pop(now) {
            self.frame(track, rx, sample);
        }
        if rx.need_keyframe {
            self.request_keyframe(track, rx, now);
        }
    }

    fn frame(&self, track: &Track, rx: &mut Receive, sample: Sample) {
        let ts = sample.packet_timestamp;
        let range = rx.ranges.remove(&ts);
        rx.ranges.retain(|&t, _| (t.wrapping_sub(ts) as i32) > 0);
        let contiguous = sample.prev_dropped_packets == 0
            && match (rx.last_seq, range) {
                (Some(last), Some((first, _))) => first == last.wrapping_add(1),
                (None, _) => true,
                (Some(_), None) => false,
            };
        if let Some((_, last)) = range {
            rx.last_seq = Some(last);
        }
        let keyframe = vp8::frame_is_keyframe(&sample.data);
        let mut stats = lock(&track.stats);
        stats.frames_received += 1;
        if !contiguous && !keyframe {
            tracing::debug!(
                ts,
                ?range,
                last = ?rx.last_seq,
                dropped = sample.prev_dropped_packets,
                "video frame after a gap"
            );
            if !rx.need_keyframe {
                stats.losses += 1;
            }
            rx.need_keyframe = true;
        }
        if rx.need_keyframe && !keyframe {
            stats.frames_dropped += 1;
            return;
        }
        let decoder = match &mut rx.decoder {
            Some(d) => d,
            None => match Vp8Decoder::new() {
                Ok(d) => rx.decoder.insert(d),
                Err(e) => return tracing::warn!(error = %e, "VP8 decoder"),
            },
        };
        match decoder.decode(&sample.data) {
            Ok(Some(mut frame)) => {
                rx.need_keyframe = false;
                // Extended RTP time since the first decoded frame (wrap-safe).
                let ext = match rx.first_ts {
                    None => {
                        rx.first_ts = Some(ts);
                        0
                    }
                    Some(_) => rx.last_ext + i64::from(ts.wrapping_sub(rx.last_ts) as i32),
                };
                rx.last_ts = ts;
                rx.last_ext = ext;
                frame.timestamp = Duration::from_micros(ext.max(0) as u64 * 1000 / 90);
                frame.rtp_timestamp = Some(ts);
                stats.frames_decoded += 1;
                if keyframe {
                    stats.keyframes += 1;
                }
                stats.width = frame.width;
                stats.height = frame.height;
                drop(stats);
                let _ = track.tx.send(frame);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "undecodable VP8 frame dropped");
                stats.decode_errors += 1;
                stats.frames_dropped += 1;
                rx.need_keyframe = true;
            }
        }
    }

    fn remove_where(&self, mut pred: impl FnMut(&CallId, &StreamId) -> bool) {
        lock(&self.inner.tracks).retain(|(c, s), _| !pred(c, s));
    }
}

impl SourceFactory for VideoHub {
    fn create(
        &self,
        call_id: &CallId,
        _stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<Box<dyn MediaSource>> {
        match kind {
            MediaKind::Video => {
                let stats = lock(&self.inner.senders).entry(call_id.clone()).or_default().clone();
                Ok(Box::new(Vp8Source::with_stats(
                    self.input_for(call_id, purpose),
                    self.inner.config.vp8,
                    stats,
                )))
            }
            MediaKind::Audio => Ok(Box::new(ToneSource::new()?)),
        }
    }
}

impl MediaSink for VideoHub {
    fn on_packet(&self, _stream_id: &StreamId, _kind: MediaKind, _packet: &ReceivedPacket) {}

    fn on_call_packet(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        kind: MediaKind,
        packet: &ReceivedPacket,
    ) {
        if kind != MediaKind::Video {
            return;
        }
        let track = self.track(call_id, stream_id);
        if self.impaired() {
            lock(&track.stats).impaired_drops += 1;
            return;
        }
        self.receive(&track, packet);
    }

    fn on_track_feedback(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        kind: MediaKind,
        feedback: TrackFeedback,
    ) {
        if kind != MediaKind::Video {
            return;
        }
        let track = self.track(call_id, stream_id);
        *lock(&track.feedback) = Some(feedback);
        // Ask for a keyframe at once: the track may start in the middle of the sender's stream.
        let mut rx = lock(&track.rx);
        self.request_keyframe(&track, &mut rx, Instant::now());
    }

    fn on_track_ended(&self, call_id: &CallId, stream_id: &StreamId, kind: MediaKind) {
        if kind == MediaKind::Video {
            self.remove_where(|c, s| c == call_id && s == stream_id);
        }
    }

    fn on_call_closed(&self, call_id: &CallId) {
        self.remove_where(|c, _| c == call_id);
        lock(&self.inner.inputs).retain(|(c, _), _| c != call_id);
        lock(&self.inner.senders).remove(call_id);
    }
}
