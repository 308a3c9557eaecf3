//! Sinks: what happens to RTP that arrives on a remote track.
//!
//! Every remote track has a [`TrackSink`] that counts and timestamps packets and checks their
//! payloads (valid Opus per RFC 6716, VP8 keyframes). An app that renders or plays media adds
//! its own [`MediaSink`] through [`crate::WebrtcConfig::with_sink`] and gets every packet too.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use voip_core::media::MediaKind;
use voip_core::{CallId, StreamId};

use super::opus::{self, OPUS_SILENCE};
use super::source::is_bundled_tone_packet;
use super::vp8;

/// One received RTP packet, as handed to a [`MediaSink`].
#[derive(Clone, Debug)]
pub struct ReceivedPacket {
    /// RTP sequence number.
    pub sequence_number: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit (last packet of a video frame).
    pub marker: bool,
    /// SSRC.
    pub ssrc: u32,
    /// Payload (one Opus packet, or a VP8 payload with its descriptor).
    pub payload: Bytes,
    /// When the engine received it.
    pub arrived: Instant,
}

/// An app-provided consumer of remote media (a decoder, a recorder, a jitter buffer, an echo:
/// [`crate::media::echo::Echo`]).
///
/// Called from the track's receive task for every RTP packet; must not block. The engine calls
/// [`MediaSink::on_call_packet`], whose default forwards to [`MediaSink::on_packet`]: a sink
/// that serves several calls implements `on_call_packet` (and `on_packet` as a no-op).
pub trait MediaSink: Send + Sync + 'static {
    /// A packet arrived on the remote track `kind` of stream `stream_id`.
    fn on_packet(&self, stream_id: &StreamId, kind: MediaKind, packet: &ReceivedPacket);

    /// A packet arrived on the remote track `kind` of stream `stream_id` of call `call_id`.
    /// The payload is the raw RTP payload: one Opus packet for audio, a VP8 payload (with its
    /// descriptor) for video.
    fn on_call_packet(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        kind: MediaKind,
        packet: &ReceivedPacket,
    ) {
        let _ = call_id;
        self.on_packet(stream_id, kind, packet);
    }

    /// The remote track `kind` of stream `stream_id` of call `call_id` started: `feedback`
    /// sends RTCP about it to its sender (keyframe requests). Called once per track, before its
    /// first packet. Default: dropped.
    fn on_track_feedback(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        kind: MediaKind,
        feedback: TrackFeedback,
    ) {
        let _ = (call_id, stream_id, kind, feedback);
    }

    /// The remote track `kind` of stream `stream_id` of call `call_id` ended (removed by a
    /// renegotiation, or its RTP stream closed). Default: nothing.
    fn on_track_ended(&self, call_id: &CallId, stream_id: &StreamId, kind: MediaKind) {
        let _ = (call_id, stream_id, kind);
    }

    /// Call `call_id`'s media was closed: no more packets for it. Default: nothing.
    fn on_call_closed(&self, call_id: &CallId) {
        let _ = call_id;
    }
}

/// Sends RTCP feedback about one remote track to its sender (see
/// [`MediaSink::on_track_feedback`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct TrackFeedback {
    tx: tokio::sync::mpsc::UnboundedSender<FeedbackRequest>,
}

/// What a [`TrackFeedback`] asks the track's receive task to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FeedbackRequest {
    /// An RTCP Picture Loss Indication (RFC 4585 §6.3.1).
    Keyframe,
}

impl TrackFeedback {
    /// A handle and the receiver the track's task reads.
    pub(crate) fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<FeedbackRequest>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (TrackFeedback { tx }, rx)
    }

    /// Asks the sender for a keyframe (RTCP PLI); `false` once the track has ended.
    pub fn request_keyframe(&self) -> bool {
        self.tx.send(FeedbackRequest::Keyframe).is_ok()
    }
}

/// Counters of one remote track.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Arrival of the first packet.
    pub first_at: Option<Instant>,
    /// Arrival of the latest packet.
    pub last_at: Option<Instant>,
    /// Audio: payloads that are valid Opus packets.
    pub valid_opus: u64,
    /// Audio: payloads that are not valid Opus.
    pub invalid_opus: u64,
    /// Audio: Opus silence packets (the sender's track is disabled).
    pub opus_silence: u64,
    /// Audio: payloads identical to a packet of the bundled tone.
    pub bundled_tone: u64,
    /// Video: frames started (first packet of a frame).
    pub frames: u64,
    /// Video: keyframes started (with a valid VP8 keyframe header).
    pub keyframes: u64,
    /// Video: payloads whose VP8 descriptor is malformed.
    pub malformed_vp8: u64,
}

/// The engine's sink for one remote track: counts, timestamps and validates.
#[derive(Debug)]
pub struct TrackSink {
    kind: MediaKind,
    stats: Mutex<SinkStats>,
}

impl TrackSink {
    /// A sink for a track of `kind`.
    pub fn new(kind: MediaKind) -> Arc<Self> {
        Arc::new(Self { kind, stats: Mutex::new(SinkStats::default()) })
    }

    /// The media kind.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SinkStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Count one packet.
    pub fn record(&self, packet: &ReceivedPacket) {
        let Ok(mut s) = self.stats.lock() else { return };
        s.packets += 1;
        s.bytes += packet.payload.len() as u64;
        s.first_at.get_or_insert(packet.arrived);
        s.last_at = Some(packet.arrived);
        match self.kind {
            MediaKind::Audio => {
                if opus::parse_packet(&packet.payload).is_ok() {
                    s.valid_opus += 1;
                } else {
                    s.invalid_opus += 1;
                }
                if packet.payload[..] == OPUS_SILENCE {
                    s.opus_silence += 1;
                } else if is_bundled_tone_packet(&packet.payload) {
                    s.bundled_tone += 1;
                }
            }
            MediaKind::Video => match vp8::parse_rtp_payload(&packet.payload) {
                Some(info) => {
                    if info.starts_frame {
                        s.frames += 1;
                    }
                    if info.keyframe {
                        s.keyframes += 1;
                    }
                }
                None => s.malformed_vp8 += 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload: &'static [u8]) -> ReceivedPacket {
        ReceivedPacket {
            sequence_number: 1,
            timestamp: 0,
            payload_type: 111,
            marker: false,
            ssrc: 1,
            payload: Bytes::from_static(payload),
            arrived: Instant::now(),
        }
    }

    #[test]
    fn audio_sink_classifies_payloads() {
        let sink = TrackSink::new(MediaKind::Audio);
        sink.record(&packet(&OPUS_SILENCE));
        sink.record(&packet(&[0x01, 1, 2, 3]));
        let s = sink.stats();
        assert_eq!((s.packets, s.valid_opus, s.invalid_opus, s.opus_silence), (2, 1, 1, 1));
        assert_eq!(s.bytes, 7);
        assert!(s.first_at.is_some() && s.first_at <= s.last_at);
    }
}
