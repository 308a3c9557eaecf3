//! Media sources: where the encoded frames a local track sends come from.
//!
//! An app with real devices implements [`MediaSource`] (encoded Opus / VP8 frames from its
//! capture pipeline) and a [`SourceFactory`] that the engine calls for every local track. The
//! default factory, [`BundledMedia`], plays the bundled clips in a loop: no device, no codec
//! library.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use voip_core::media::{MediaKind, StreamPurpose};
use voip_core::{CallId, StreamId};

use super::container::{ivf_frames, ogg_opus_packets};
use super::opus::OPUS_SILENCE;
use crate::error::Result;

/// One encoded frame and how long it lasts (the pacing of the track).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// Encoded bitstream: one Opus packet, or one VP8 frame.
    pub data: Bytes,
    /// Playback duration; the engine sends the next frame this much later.
    pub duration: Duration,
}

impl EncodedFrame {
    /// Nothing to send for `duration` (a muted track, a DTX frame): the engine sends no packet
    /// and asks again after `duration`.
    pub fn skip(duration: Duration) -> Self {
        EncodedFrame { data: Bytes::new(), duration }
    }
}

/// A source of encoded frames for one local track (Opus for audio, VP8 for video).
///
/// Called from the track's sending task, once per frame duration, while the track is
/// negotiated to send.
pub trait MediaSource: Send + 'static {
    /// The next frame. `enabled == false` means the track is muted or the call is on hold:
    /// return silence / a black frame (as libwebrtc does), [`EncodedFrame::skip`] to send
    /// nothing for a frame's duration, or `None` to send nothing this tick (the engine asks
    /// again 10 ms later; the track keeps going).
    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame>;

    /// The peer's format parameters for the track's codec, from its description (Opus:
    /// `minptime=10;useinbandfec=1;usedtx=1`), when first known and whenever they change.
    /// Default: ignored.
    fn negotiated(&mut self, codec_parameters: &str) {
        let _ = codec_parameters;
    }

    /// The peer asked for a keyframe (RTCP PLI or FIR on a video track). Default: ignored (a
    /// source of pre-encoded frames cannot make one).
    fn keyframe_requested(&mut self) {}
}

/// Creates the sources for local tracks (the app's microphone, camera and screen capture).
///
/// Called by the call's task for every local track of an `AddLocalStream`. An error becomes
/// `MediaEvent::Failed { operation: LocalMedia }` (the core ends the call with
/// `user_media_failed`); return [`crate::Error::LocalMedia`] for capture failures.
pub trait SourceFactory: Send + Sync + 'static {
    /// A source for a track of `kind` in local stream `stream_id` of call `call_id`.
    fn create(
        &self,
        call_id: &CallId,
        stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<Box<dyn MediaSource>>;
}

struct Clips {
    tone: Vec<Bytes>,
    tone_set: HashSet<Bytes>,
    video: Vec<Bytes>,
    video_frame: Duration,
    black: Bytes,
}

fn clips() -> Result<&'static Clips> {
    static CLIPS: OnceLock<Clips> = OnceLock::new();
    if let Some(c) = CLIPS.get() {
        return Ok(c);
    }
    let tone = ogg_opus_packets(super::TONE_OGG)?;
    let video = ivf_frames(super::CLIP_IVF)?;
    let mut black = ivf_frames(super::BLACK_IVF)?;
    let clips = Clips {
        tone_set: tone.iter().cloned().collect(),
        tone,
        video: video.frames,
        video_frame: video.frame_duration,
        black: black.frames.swap_remove(0),
    };
    Ok(CLIPS.get_or_init(|| clips))
}

/// Whether `payload` is byte-for-byte one of the Opus packets of the bundled tone (what a
/// [`BundledMedia`] audio source sends while enabled).
pub fn is_bundled_tone_packet(payload: &[u8]) -> bool {
    clips().map(|c| c.tone_set.contains(payload)).unwrap_or(false)
}

/// Loops the bundled Opus tone; sends [`OPUS_SILENCE`] while disabled.
#[derive(Debug)]
pub struct ToneSource {
    packets: Vec<Bytes>,
    next: usize,
}

impl ToneSource {
    /// A source at the start of the bundled tone.
    pub fn new() -> Result<Self> {
        Ok(Self { packets: clips()?.tone.clone(), next: 0 })
    }
}

impl MediaSource for ToneSource {
    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame> {
        let data = if enabled {
            let p = self.packets[self.next].clone();
            self.next = (self.next + 1) % self.packets.len();
            p
        } else {
            Bytes::from_static(&OPUS_SILENCE)
        };
        Some(EncodedFrame { data, duration: Duration::from_millis(20) })
    }
}

/// Loops the bundled VP8 clip; sends the black keyframe while disabled.
#[derive(Debug)]
pub struct ClipSource {
    frames: Vec<Bytes>,
    black: Bytes,
    duration: Duration,
    next: usize,
    was_enabled: bool,
}

impl ClipSource {
    /// A source at the start of the bundled clip.
    pub fn new() -> Result<Self> {
        let c = clips()?;
        Ok(Self {
            frames: c.video.clone(),
            black: c.black.clone(),
            duration: c.video_frame,
            next: 0,
            was_enabled: true,
        })
    }
}

impl MediaSource for ClipSource {
    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame> {
        let data = if enabled {
            if !self.was_enabled {
                // Restart at the clip's first frame, a keyframe, after black frames.
                self.next = 0;
            }
            let f = self.frames[self.next].clone();
            self.next = (self.next + 1) % self.frames.len();
            f
        } else {
            self.black.clone()
        };
        self.was_enabled = enabled;
        Some(EncodedFrame { data, duration: self.duration })
    }
}

/// The default [`SourceFactory`]: [`ToneSource`] for audio, [`ClipSource`] for video (also for
/// screenshare).
#[derive(Clone, Copy, Debug, Default)]
pub struct BundledMedia;

impl SourceFactory for BundledMedia {
    fn create(
        &self,
        _call_id: &CallId,
        _stream_id: &StreamId,
        _purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<Box<dyn MediaSource>> {
        Ok(match kind {
            MediaKind::Audio => Box::new(ToneSource::new()?),
            MediaKind::Video => Box::new(ClipSource::new()?),
        })
    }
}

/// The default factory as a shareable handle.
pub fn bundled_media() -> Arc<dyn SourceFactory> {
    Arc::new(BundledMedia)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{opus, vp8};

    #[test]
    fn tone_loops_and_mutes_to_silence() {
        let mut s = ToneSource::new().unwrap();
        let first = s.next_frame(true).unwrap();
        assert!(is_bundled_tone_packet(&first.data));
        assert!(opus::parse_packet(&first.data).is_ok());
        for _ in 1..s.packets.len() {
            s.next_frame(true).unwrap();
        }
        assert_eq!(s.next_frame(true).unwrap(), first, "loops after the last packet");
        let muted = s.next_frame(false).unwrap();
        assert_eq!(&muted.data[..], &OPUS_SILENCE);
        assert!(!is_bundled_tone_packet(&muted.data));
    }

    #[test]
    fn clip_sends_black_keyframes_when_disabled_and_restarts_on_keyframe() {
        let mut s = ClipSource::new().unwrap();
        let ms = s.duration.as_secs_f64() * 1000.0;
        assert!((66.0..67.5).contains(&ms), "15 fps, got {ms} ms");
        s.next_frame(true);
        s.next_frame(true);
        let black = s.next_frame(false).unwrap();
        assert!(vp8::frame_is_keyframe(&black.data));
        assert!(black.data.len() < 200);
        let resumed = s.next_frame(true).unwrap();
        assert!(vp8::frame_is_keyframe(&resumed.data));
    }
}
