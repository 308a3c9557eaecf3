//! Device-free media: sources that send real encoded media and sinks that count what arrives.
//!
//! The bundled clips are generated once by `media/generate.sh` (Debian `opus-tools` and
//! `vpx-tools`) and committed, so building and testing this crate needs no codec library.
//! * `tone.ogg`: 2 s of a 440 Hz then 660 Hz sine, mono 48 kHz Opus, 20 ms packets (100 packets).
//! * `clip.ivf`: 2 s of 160×120 VP8 at 15 fps (a square moving over a gradient), a keyframe
//!   every second.
//! * `black.ivf`: one black 160×120 VP8 keyframe, sent while a video track is disabled.

#[cfg(feature = "codecs")]
pub mod audio;
pub mod container;
pub mod echo;
#[cfg(feature = "codecs")]
mod frames;
pub mod opus;
pub mod sink;
pub mod source;
#[cfg(feature = "codecs")]
pub mod video;
pub mod vp8;

/// The bundled Ogg/Opus tone.
pub const TONE_OGG: &[u8] = include_bytes!("../../media/tone.ogg");
/// The bundled VP8 clip.
pub const CLIP_IVF: &[u8] = include_bytes!("../../media/clip.ivf");
/// The bundled black VP8 keyframe.
pub const BLACK_IVF: &[u8] = include_bytes!("../../media/black.ivf");
