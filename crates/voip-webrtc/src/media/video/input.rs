//! The send side: [`VideoSource`]s, the per-call [`VideoInput`] apps push frames into, and the
//! [`Vp8Source`] that encodes it for a local track.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::codec::{Vp8Encoder, Vp8Settings};
use super::frame::VideoFrame;
use crate::media::source::{EncodedFrame, MediaSource};

/// Raw frames pulled by the sender at the source's frame rate (a generator, a file, a capture
/// buffer).
pub trait VideoSource: Send + 'static {
    /// Frames per second; the track asks for a frame every `1 / fps`.
    fn fps(&self) -> u32;
    /// The next frame (any size); `None` once the source has ended.
    fn next_frame(&mut self) -> Option<VideoFrame>;
}

struct InputState {
    source: Option<Box<dyn VideoSource>>,
    /// The latest pushed frame not yet taken by the sender.
    pushed: Option<VideoFrame>,
    /// Frame rate the sender paces at in push mode.
    push_fps: u32,
    pushed_frames: u64,
    replaced_unsent: u64,
    /// Bumped by `replace`/`clear`: the sender forces a keyframe for the new content.
    generation: u64,
}

/// The video a call sends: frames pushed by the app (I420 or RGBA, any size; the sender takes
/// the latest at its frame rate), or a [`VideoSource`] it plays. Cheap to clone; clones share
/// the input. Replacing the source mid-call changes what the peer sees from the next frame on,
/// without renegotiation.
#[derive(Clone)]
pub struct VideoInput {
    state: Arc<Mutex<InputState>>,
}

impl std::fmt::Debug for VideoInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("VideoInput")
            .field("source", &st.source.is_some())
            .field("push_fps", &st.push_fps)
            .field("pushed_frames", &st.pushed_frames)
            .finish()
    }
}

impl Default for VideoInput {
    fn default() -> Self {
        Self::new()
    }
}

impl VideoInput {
    /// An input in push mode (30 fps) with nothing pushed: the track sends nothing until a
    /// frame is pushed or a source is set.
    pub fn new() -> Self {
        VideoInput {
            state: Arc::new(Mutex::new(InputState {
                source: None,
                pushed: None,
                push_fps: 30,
                pushed_frames: 0,
                replaced_unsent: 0,
                generation: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plays `source` from now on.
    pub fn replace(&self, source: impl VideoSource) {
        self.replace_boxed(Box::new(source));
    }

    /// [`VideoInput::replace`] with a boxed source.
    pub fn replace_boxed(&self, source: Box<dyn VideoSource>) {
        let mut st = self.lock();
        st.source = Some(source);
        st.pushed = None;
        st.generation += 1;
    }

    /// Back to push mode at `fps` (the rate the sender takes pushed frames at).
    pub fn clear(&self, fps: u32) {
        let mut st = self.lock();
        st.source = None;
        st.pushed = None;
        st.push_fps = fps.max(1);
        st.generation += 1;
    }

    /// Pushes a frame; the sender encodes the latest one at its next tick (a frame pushed
    /// before the previous one was sent replaces it).
    pub fn push(&self, frame: VideoFrame) {
        let mut st = self.lock();
        if st.pushed.replace(frame).is_some() {
            st.replaced_unsent += 1;
        }
        st.pushed_frames += 1;
    }

    /// Pushes packed I420; `false` if `data` does not fit `width`×`height`.
    pub fn push_i420(&self, width: u32, height: u32, data: Vec<u8>) -> bool {
        VideoFrame::from_i420(width, height, data).map(|f| self.push(f)).is_some()
    }

    /// Pushes RGBA (4 bytes per pixel); `false` if `rgba` does not fit `width`×`height`.
    pub fn push_rgba(&self, width: u32, height: u32, rgba: &[u8]) -> bool {
        VideoFrame::from_rgba(width, height, rgba).map(|f| self.push(f)).is_some()
    }

    /// Pushed frames, and how many of them were replaced by a newer one before being sent.
    pub fn pushed(&self) -> (u64, u64) {
        let st = self.lock();
        (st.pushed_frames, st.replaced_unsent)
    }

    /// The current frame rate (the source's, or the push rate).
    pub fn fps(&self) -> u32 {
        let st = self.lock();
        st.source.as_ref().map_or(st.push_fps, |s| s.fps()).max(1)
    }

    /// The sender's pull: the next frame (a source that ended falls back to push mode), and
    /// the input's generation.
    pub(crate) fn take(&self) -> (Option<VideoFrame>, u64) {
        let mut st = self.lock();
        let frame = match st.source.as_mut() {
            Some(s) => {
                let f = s.next_frame();
                if f.is_none() {
                    st.source = None;
                }
                f
            }
            None => st.pushed.take(),
        };
        (frame, st.generation)
    }
}

/// Counters of a [`Vp8Source`], shared with whoever asked for it.
#[derive(Debug, Default)]
pub(crate) struct SendStats {
    pub(crate) frames: std::sync::atomic::AtomicU64,
    pub(crate) keyframes: std::sync::atomic::AtomicU64,
    pub(crate) keyframe_requests: std::sync::atomic::AtomicU64,
}

/// Encodes a call's [`VideoInput`] with libvpx for a local video track: one frame per
/// `1 / fps`, a keyframe when the peer asks (PLI/FIR), when the content is replaced and after
/// a mute. Muted or on hold: nothing is sent (the peer sees the mute in the call's metadata).
pub struct Vp8Source {
    input: VideoInput,
    settings: Vp8Settings,
    encoder: Option<Vp8Encoder>,
    generation: u64,
    keyframe_pending: bool,
    was_enabled: bool,
    stats: Arc<SendStats>,
}

impl std::fmt::Debug for Vp8Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Source").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Vp8Source {
    /// A source encoding `input` with `settings` (the encoder is made at the first frame's size).
    pub fn new(input: VideoInput, settings: Vp8Settings) -> Self {
        Self::with_stats(input, settings, Arc::default())
    }

    pub(crate) fn with_stats(input: VideoInput, settings: Vp8Settings, stats: Arc<SendStats>) -> Self {
        Vp8Source {
            input,
            settings,
            encoder: None,
            generation: 0,
            keyframe_pending: false,
            was_enabled: true,
            stats,
        }
    }
}

impl MediaSource for Vp8Source {
    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame> {
        let duration = Duration::from_micros(1_000_000 / u64::from(self.input.fps()));
        let (frame, generation) = self.input.take();
        if !enabled {
            self.was_enabled = false;
            return Some(EncodedFrame::skip(duration));
        }
        if !self.was_enabled || generation != self.generation {
            self.keyframe_pending = true;
        }
        self.was_enabled = true;
        self.generation = generation;
        let Some(frame) = frame else { return Some(EncodedFrame::skip(duration)) };
        let settings = Vp8Settings { fps: self.input.fps(), ..self.settings };
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => match Vp8Encoder::new(frame.width, frame.height, settings) {
                Ok(e) => self.encoder.insert(e),
                Err(e) => {
                    tracing::warn!(error = %e, "VP8 encoder");
                    return Some(EncodedFrame::skip(duration));
                }
            },
        };
        if std::mem::take(&mut self.keyframe_pending) {
            encoder.force_keyframe();
        }
        match encoder.encode(&frame) {
            Ok(Some(out)) => {
                use std::sync::atomic::Ordering::Relaxed;
                self.stats.frames.fetch_add(1, Relaxed);
                if out.keyframe {
                    self.stats.keyframes.fetch_add(1, Relaxed);
                }
                Some(EncodedFrame { data: Bytes::from(out.data), duration })
            }
            Ok(None) => Some(EncodedFrame::skip(duration)),
            Err(e) => {
                tracing::warn!(error = %e, "VP8 encode");
                Some(EncodedFrame::skip(duration))
            }
        }
    }

    fn keyframe_requested(&mut self) {
        self.stats.keyframe_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keyframe_pending = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::video::pattern::TestPattern;
    use crate::media::vp8::frame_is_keyframe;

    #[test]
    fn encodes_the_input_answers_keyframe_requests_and_mutes() {
        let input = VideoInput::new();
        let mut s = Vp8Source::new(input.clone(), Vp8Settings::default());
        assert!(s.next_frame(true).unwrap().data.is_empty(), "nothing pushed: nothing sent");
        input.push_rgba(64, 48, &[200u8; 64 * 48 * 4]);
        let first = s.next_frame(true).unwrap();
        assert!(frame_is_keyframe(&first.data));
        assert_eq!(first.duration, Duration::from_micros(33_333));
        input.replace(TestPattern::new(320, 240, 15));
        let replaced = s.next_frame(true).unwrap();
        assert!(frame_is_keyframe(&replaced.data), "new content starts with a keyframe");
        assert_eq!(replaced.duration, Duration::from_micros(66_666));
        assert!(!frame_is_keyframe(&s.next_frame(true).unwrap().data));
        s.keyframe_requested();
        assert!(frame_is_keyframe(&s.next_frame(true).unwrap().data), "PLI answered");
        assert!(!frame_is_keyframe(&s.next_frame(true).unwrap().data));
        assert!(s.next_frame(false).unwrap().data.is_empty(), "muted: nothing");
        assert!(frame_is_keyframe(&s.next_frame(true).unwrap().data), "unmuted: a keyframe");
        assert!(!input.push_i420(4, 4, vec![0; 5]));
    }
}
