//! Decoded video (feature `codecs`): apps push raw frames and get decoded frames back, the
//! library does VP8 (libvpx), reassembly and keyframe requests.
//!
//! * Send: a [`VideoInput`] per call (and one for screenshare) takes I420 or RGBA frames of
//!   any size, or plays a built-in [`VideoSource`] ([`TestPattern`], [`Y4mSource`]); a
//!   [`Vp8Source`] encodes it with libvpx ([`codec`]: realtime, error resilient, CBR at the
//!   configured bitrate) at the source's frame rate and answers a PLI/FIR from the peer with a
//!   keyframe. Muted or on hold: nothing is sent, and the first frame after is a keyframe.
//! * Receive: every remote video track is reordered and reassembled with webrtc-rs's
//!   `SampleBuilder` and VP8 depacketizer, decoded, and emitted as [`VideoFrame`]s. A PLI goes
//!   to the sender when the track starts and after a loss (a packet missing for
//!   [`VideoConfig::loss_wait`]), repeated at most every [`VideoConfig::pli_interval`] until a
//!   keyframe arrives; the frames in between are dropped, not shown broken.
//! * [`VideoHub`] ties both to a [`crate::WebrtcEngine`]: give it to
//!   [`crate::WebrtcConfig::with_video`], then `hub.remote_video(call, stream)` is a stream of
//!   decoded frames and `hub.input(call)` the call's input.
//! * Files: [`Y4mSource`]/[`Y4mWriter`] (raw I420), [`IvfWriter`] (encoded VP8; the reader is
//!   [`crate::media::container::ivf_frames`]).

pub mod codec;
mod files;
mod frame;
mod hub;
mod input;
mod pattern;

pub use codec::{EncodedVp8, Vp8Decoder, Vp8Encoder, Vp8Settings};
pub use files::{IvfWriter, Y4mSource, Y4mWriter};
pub use frame::{chroma_size, i420_len, VideoFrame};
pub use hub::{LocalVideoStats, RemoteVideo, RemoteVideoStats, VideoConfig, VideoHub};
pub use input::{VideoInput, VideoSource, Vp8Source};
pub use pattern::{read_frame_number, TestPattern, FRAME_NUMBER_BITS};
