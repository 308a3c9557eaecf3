//! Decoded audio (feature `codecs`): apps push PCM and get PCM back, the library does Opus.
//!
//! * Send: an [`AudioInput`] per call takes PCM at any rate and channel count (i16 or f32),
//!   or plays a built-in [`PcmSource`] ([`Tone`], [`MultiTone`], [`Silence`], [`WavSource`]);
//!   it is remixed, resampled to 48 kHz ([`resample`]) and encoded by libopus ([`codec`]) in
//!   20 ms frames (in-band FEC on, DTX optional), paced by the track's sending task. Muted or on
//!   hold: nothing is sent (the peer sees the mute in the call's metadata).
//! * Receive: every remote audio track gets an adaptive [`jitter::JitterBuffer`] (reordering,
//!   target delay from the measured jitter, 20–300 ms) and an Opus decoder that recovers lost
//!   frames from the next packet's FEC data and conceals (PLC) the rest. A playout clock per
//!   track emits [`AudioFrame`]s: 48 kHz PCM, 20 ms (10 ms for 10 ms packets).
//! * [`AudioHub`] ties both to a [`crate::WebrtcEngine`]: give it to
//!   [`crate::WebrtcConfig::with_audio`], then `hub.remote_audio(call, stream)` is a stream of
//!   decoded frames and `hub.input(call)` the call's input.

pub mod codec;
#[cfg(feature = "devices")]
pub mod devices;
mod hub;
mod input;
pub mod jitter;
pub mod resample;
mod wav;

use std::time::Duration;

pub use hub::{AudioConfig, AudioHub, Impairment, RemoteAudio, RemoteAudioStats};
pub use input::{AudioInput, MultiTone, OpusSource, PcmSource, Silence, Tone};
pub use wav::{read_wav, WavRecorder, WavSource};

/// The sample rate of decoded and encoded audio (Opus's native rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per channel per millisecond at [`SAMPLE_RATE`].
pub const SAMPLES_PER_MS: usize = 48;

/// How a frame of decoded audio came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOrigin {
    /// Decoded from the packet that carried it.
    Decoded,
    /// Recovered from the in-band FEC data of the next packet (the packet was lost).
    Fec,
    /// Concealed by the decoder (lost or late, no FEC available).
    Concealed,
}

/// Decoded PCM: 48 kHz, interleaved i16.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioFrame {
    /// Interleaved samples (`channels` per sample instant).
    pub samples: Vec<i16>,
    /// Sample rate: always [`SAMPLE_RATE`].
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Position of the frame's first sample in the track's playout, from the first frame.
    pub timestamp: Duration,
    /// RTP timestamp of the packet it came from (`None` for concealment).
    pub rtp_timestamp: Option<u32>,
    /// How the frame came about.
    pub origin: FrameOrigin,
}

impl AudioFrame {
    /// Samples per channel.
    pub fn samples_per_channel(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// How long the frame plays.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(
            self.samples_per_channel() as u64 * 1_000_000 / u64::from(self.sample_rate.max(1)),
        )
    }

    /// The samples as f32 in [-1, 1).
    pub fn to_f32(&self) -> Vec<f32> {
        resample::i16_to_f32(&self.samples)
    }

    /// The first channel (or the only one) as f32.
    pub fn mono_f32(&self) -> Vec<f32> {
        let ch = usize::from(self.channels.max(1));
        self.samples.iter().step_by(ch).map(|&s| f32::from(s) / 32768.0).collect()
    }

    /// RMS level in dBFS (−100 for digital silence).
    pub fn level_dbfs(&self) -> f32 {
        level_dbfs(&self.to_f32())
    }
}

/// RMS level of f32 samples in dBFS (−100 for digital silence).
pub fn level_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return -100.0;
    }
    let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
    if rms <= 1e-5 {
        -100.0
    } else {
        20.0 * rms.log10()
    }
}

/// Power of `samples` at `freq` Hz (Goertzel algorithm), normalised by the length: a full-scale
/// sine at `freq` gives about 0.25.
pub fn goertzel_power(samples: &[f32], sample_rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(sample_rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = samples.len().max(1) as f64;
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_and_level() {
        let sine: Vec<f32> =
            (0..4800).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48_000.0).sin()).collect();
        let at = goertzel_power(&sine, 48_000, 1000.0);
        assert!((at - 0.25).abs() < 0.01, "{at}");
        assert!(goertzel_power(&sine, 48_000, 1300.0) < at / 1000.0);
        assert!((level_dbfs(&sine) + 3.01).abs() < 0.05);
        assert_eq!(level_dbfs(&[0.0; 10]), -100.0);
        let frame = AudioFrame {
            samples: vec![0; 1920],
            sample_rate: SAMPLE_RATE,
            channels: 2,
            timestamp: Duration::ZERO,
            rtp_timestamp: None,
            origin: FrameOrigin::Concealed,
        };
        assert_eq!(frame.duration(), Duration::from_millis(20));
        assert_eq!(frame.mono_f32().len(), 960);
    }
}
