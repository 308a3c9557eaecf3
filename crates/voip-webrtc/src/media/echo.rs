//! An echo: what a call receives on its remote audio track is sent back on its local audio
//! track, per call. For echo bots ("call me and hear yourself") and loopback tests.
//!
//! [`Echo`] is both the engine's app sink (it sees the raw Opus packets of every call, by call
//! id) and its source factory (it creates each call's local tracks): plug one handle into both.
//!
//! ```no_run
//! use voip_webrtc::media::echo::Echo;
//! use voip_webrtc::{WebrtcConfig, WebrtcEngine};
//!
//! # async fn bot() {
//! let echo = Echo::new();
//! let config = WebrtcConfig::default().with_sources(echo.clone()).with_sink(echo.clone());
//! let (engine, events) = WebrtcEngine::with_channel(config);
//! // Drive a voip_core::VoipMachine with it that answers every incoming call: callers hear
//! // themselves about one packet late; video is the fallback source (the bundled clip).
//! # let _ = (engine, events);
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use voip_core::media::{MediaKind, StreamPurpose};
use voip_core::{CallId, StreamId};

use super::opus::{self, OPUS_SILENCE};
use super::sink::{MediaSink, ReceivedPacket};
use super::source::{bundled_media, EncodedFrame, MediaSource, SourceFactory};
use crate::error::Result;

/// Most packets buffered per call (one second of 20 ms Opus); older ones are dropped.
pub const ECHO_BUFFER_PACKETS: usize = 50;

#[derive(Debug, Default)]
struct CallBuffer {
    /// Live echo sources of the call (the buffer is dropped with the last one).
    sources: usize,
    packets: VecDeque<Bytes>,
}

type Buffers = Arc<Mutex<HashMap<CallId, CallBuffer>>>;

/// Plays each call's received audio back into the same call. See the [module docs](self).
///
/// Audio tracks get an [`EchoSource`]; video tracks come from the fallback factory (the bundled
/// VP8 clip unless [`Echo::with_fallback`] says otherwise). Received packets are buffered per
/// call only while the call has an echo source (from its `AddLocalStream` until the call
/// closes), at most [`ECHO_BUFFER_PACKETS`]; payloads that are not valid Opus are dropped.
pub struct Echo {
    buffers: Buffers,
    fallback: Arc<dyn SourceFactory>,
}

impl fmt::Debug for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let calls = self.buffers.lock().map(|b| b.len()).unwrap_or(0);
        f.debug_struct("Echo").field("calls", &calls).finish_non_exhaustive()
    }
}

impl Echo {
    /// An echo with the bundled media as the video fallback.
    pub fn new() -> Arc<Self> {
        Self::with_fallback(bundled_media())
    }

    /// An echo whose video tracks come from `fallback`.
    pub fn with_fallback(fallback: Arc<dyn SourceFactory>) -> Arc<Self> {
        Arc::new(Echo { buffers: Arc::default(), fallback })
    }

    /// Packets received on `call_id` and not yet sent back.
    pub fn buffered(&self, call_id: &CallId) -> usize {
        self.buffers.lock().ok().and_then(|b| b.get(call_id).map(|c| c.packets.len())).unwrap_or(0)
    }

    /// Calls that have a live echo source.
    pub fn calls(&self) -> Vec<CallId> {
        self.buffers.lock().map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }
}

impl MediaSink for Echo {
    /// Without a call id there is nothing to echo into.
    fn on_packet(&self, _stream_id: &StreamId, _kind: MediaKind, _packet: &ReceivedPacket) {}

    fn on_call_packet(
        &self,
        call_id: &CallId,
        _stream_id: &StreamId,
        kind: MediaKind,
        packet: &ReceivedPacket,
    ) {
        if kind != MediaKind::Audio || opus::parse_packet(&packet.payload).is_err() {
            return;
        }
        let Ok(mut buffers) = self.buffers.lock() else { return };
        if let Some(call) = buffers.get_mut(call_id) {
            if call.packets.len() >= ECHO_BUFFER_PACKETS {
                call.packets.pop_front();
            }
            call.packets.push_back(packet.payload.clone());
        }
    }
}

impl SourceFactory for Echo {
    fn create(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<Box<dyn MediaSource>> {
        match kind {
            MediaKind::Audio => Ok(Box::new(EchoSource::new(self.buffers.clone(), call_id.clone()))),
            MediaKind::Video => self.fallback.create(call_id, stream_id, purpose, kind),
        }
    }
}

/// The local audio source of one call of an [`Echo`]: the call's received Opus packets in
/// order, paced by their own duration; Opus silence while nothing is buffered or the track is
/// muted / held.
pub struct EchoSource {
    buffers: Buffers,
    call_id: CallId,
}

impl fmt::Debug for EchoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoSource").field("call_id", &self.call_id).finish_non_exhaustive()
    }
}

impl EchoSource {
    fn new(buffers: Buffers, call_id: CallId) -> Self {
        if let Ok(mut b) = buffers.lock() {
            b.entry(call_id.clone()).or_default().sources += 1;
        }
        EchoSource { buffers, call_id }
    }
}

impl MediaSource for EchoSource {
    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame> {
        let received =
            self.buffers.lock().ok().and_then(|mut b| b.get_mut(&self.call_id)?.packets.pop_front());
        let data = match received {
            Some(p) if enabled => p,
            _ => Bytes::from_static(&OPUS_SILENCE),
        };
        let duration = opus::parse_packet(&data)
            .ok()
            .map(|i| Duration::from_micros(u64::from(i.duration_us())))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(20));
        Some(EncodedFrame { data, duration })
    }
}

impl Drop for EchoSource {
    fn drop(&mut self) {
        if let Ok(mut b) = self.buffers.lock() {
            if let Some(call) = b.get_mut(&self.call_id) {
                call.sources -= 1;
                if call.sources == 0 {
                    b.remove(&self.call_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::media::source::ToneSource;

    fn packet(payload: Bytes) -> ReceivedPacket {
        ReceivedPacket {
            sequence_number: 1,
            timestamp: 0,
            payload_type: 111,
            marker: false,
            ssrc: 1,
            payload,
            arrived: Instant::now(),
        }
    }

    fn audio(echo: &Echo, call: &CallId) -> Box<dyn MediaSource> {
        echo.create(call, &"s".into(), StreamPurpose::Usermedia, MediaKind::Audio).unwrap()
    }

    #[test]
    fn each_call_hears_its_own_audio_in_order_and_silence_otherwise() {
        let echo = Echo::new();
        let (c1, c2) = (CallId::from("c1"), CallId::from("c2"));
        let mut tone = ToneSource::new().unwrap();
        let sent: Vec<Bytes> = (0..3).map(|_| tone.next_frame(true).unwrap().data).collect();
        // Nothing is buffered for a call without an echo source.
        echo.on_call_packet(&c1, &"r".into(), MediaKind::Audio, &packet(sent[0].clone()));
        assert_eq!(echo.buffered(&c1), 0);

        let mut s1 = audio(&echo, &c1);
        let mut s2 = audio(&echo, &c2);
        for p in &sent {
            echo.on_call_packet(&c1, &"r".into(), MediaKind::Audio, &packet(p.clone()));
        }
        // Invalid Opus, video and the no-call-id entry point are not echoed.
        echo.on_call_packet(&c1, &"r".into(), MediaKind::Audio, &packet(Bytes::new()));
        echo.on_call_packet(&c1, &"r".into(), MediaKind::Video, &packet(sent[0].clone()));
        echo.on_packet(&"r".into(), MediaKind::Audio, &packet(sent[0].clone()));
        assert_eq!(echo.buffered(&c1), 3);

        assert_eq!(&s2.next_frame(true).unwrap().data[..], &OPUS_SILENCE, "c2 received nothing");
        let first = s1.next_frame(true).unwrap();
        assert_eq!(first.data, sent[0]);
        assert_eq!(first.duration, Duration::from_millis(20));
        assert_eq!(&s1.next_frame(false).unwrap().data[..], &OPUS_SILENCE, "muted: silence");
        assert_eq!(s1.next_frame(true).unwrap().data, sent[2]);
        assert_eq!(&s1.next_frame(true).unwrap().data[..], &OPUS_SILENCE, "drained: silence");

        drop(s1);
        assert_eq!(echo.calls(), vec![c2.clone()], "the buffer goes with the call's source");
        drop(s2);
        assert!(echo.calls().is_empty());
    }

    #[test]
    fn the_buffer_is_bounded_and_keeps_the_newest() {
        let echo = Echo::new();
        let call = CallId::from("c");
        let mut source = audio(&echo, &call);
        let mut tone = ToneSource::new().unwrap();
        let sent: Vec<Bytes> =
            (0..ECHO_BUFFER_PACKETS + 7).map(|_| tone.next_frame(true).unwrap().data).collect();
        for p in &sent {
            echo.on_call_packet(&call, &"r".into(), MediaKind::Audio, &packet(p.clone()));
        }
        assert_eq!(echo.buffered(&call), ECHO_BUFFER_PACKETS);
        assert_eq!(source.next_frame(true).unwrap().data, sent[7]);
    }

    #[test]
    fn video_comes_from_the_fallback() {
        let echo = Echo::new();
        let mut v =
            echo.create(&"c".into(), &"s".into(), StreamPurpose::Screenshare, MediaKind::Video).unwrap();
        assert!(crate::media::vp8::frame_is_keyframe(&v.next_frame(true).unwrap().data));
        assert!(echo.calls().is_empty(), "no audio buffer for a video-only source");
    }
}
