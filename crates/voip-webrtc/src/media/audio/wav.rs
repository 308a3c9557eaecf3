//! WAV files (through `hound`): a [`WavSource`] to play into a call, a [`WavRecorder`] to
//! record decoded frames.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::input::PcmSource;
use super::{AudioFrame, SAMPLE_RATE};
use crate::error::{Error, Result};

fn file_err(e: hound::Error) -> Error {
    Error::MediaFile(e.to_string())
}

/// Reads a whole WAV file (8/16/24/32-bit integer or 32-bit float PCM): interleaved f32
/// samples, sample rate, channels.
pub fn read_wav(path: impl AsRef<Path>) -> Result<(Vec<f32>, u32, u16)> {
    let mut reader = hound::WavReader::open(path).map_err(file_err)?;
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<std::result::Result<Vec<_>, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect()
        }
    }
    .map_err(file_err)?;
    Ok((samples, spec.sample_rate, spec.channels))
}

/// Plays a WAV file (any rate and channel count: the input resamples), once or looped.
#[derive(Clone, Debug)]
pub struct WavSource {
    samples: Vec<f32>,
    sample_rate: u32,
    channels: u16,
    pos: usize,
    looped: bool,
}

impl WavSource {
    /// Loads `path`; plays it once.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let (samples, sample_rate, channels) = read_wav(path)?;
        Ok(WavSource { samples, sample_rate, channels: channels.max(1), pos: 0, looped: false })
    }

    /// Plays it in a loop instead.
    #[must_use]
    pub fn looped(mut self) -> Self {
        self.looped = true;
        self
    }

    /// Duration of the file.
    pub fn duration(&self) -> std::time::Duration {
        let frames = self.samples.len() / usize::from(self.channels);
        std::time::Duration::from_secs_f64(frames as f64 / f64::from(self.sample_rate.max(1)))
    }
}

impl PcmSource for WavSource {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
    fn channels(&self) -> u16 {
        self.channels
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        let mut written = 0;
        while written < out.len() {
            if self.pos >= self.samples.len() {
                if self.looped && !self.samples.is_empty() {
                    self.pos = 0;
                } else {
                    break;
                }
            }
            let n = (out.len() - written).min(self.samples.len() - self.pos);
            out[written..written + n].copy_from_slice(&self.samples[self.pos..self.pos + n]);
            written += n;
            self.pos += n;
        }
        written - written % usize::from(self.channels)
    }
}

/// Writes decoded frames to a 16-bit PCM WAV file at 48 kHz.
pub struct WavRecorder {
    writer: hound::WavWriter<BufWriter<File>>,
    channels: u16,
    frames: u64,
}

impl std::fmt::Debug for WavRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavRecorder").field("channels", &self.channels).field("frames", &self.frames).finish()
    }
}

impl WavRecorder {
    /// Creates `path` for `channels` channels at 48 kHz.
    pub fn create(path: impl AsRef<Path>, channels: u16) -> Result<Self> {
        let spec = hound::WavSpec {
            channels: channels.max(1),
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(file_err)?;
        Ok(WavRecorder { writer, channels: channels.max(1), frames: 0 })
    }

    /// Appends interleaved 48 kHz samples with the recorder's channel count.
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<()> {
        for &s in samples {
            self.writer.write_sample(s).map_err(file_err)?;
        }
        Ok(())
    }

    /// Appends a decoded frame (remixed to the recorder's channels if needed).
    pub fn write_frame(&mut self, frame: &AudioFrame) -> Result<()> {
        self.frames += 1;
        if frame.channels == self.channels {
            return self.write_samples(&frame.samples);
        }
        let mixed = super::resample::remix(&frame.to_f32(), frame.channels, self.channels);
        self.write_samples(&super::resample::f32_to_i16(&mixed))
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the header and closes the file.
    pub fn finish(self) -> Result<()> {
        self.writer.finalize().map_err(file_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::{AudioInput, FrameOrigin};

    #[test]
    fn record_then_play_back_through_an_input() {
        let dir = std::env::temp_dir().join(format!("voip-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        let mut rec = WavRecorder::create(&path, 1).unwrap();
        for i in 0..50 {
            let samples: Vec<i16> =
                (0..960).map(|n| if (i * 960 + n) % 48 < 24 { 4000 } else { -4000 }).collect();
            let frame = AudioFrame {
                samples,
                sample_rate: SAMPLE_RATE,
                channels: 1,
                timestamp: std::time::Duration::from_millis(20 * i as u64),
                rtp_timestamp: None,
                origin: FrameOrigin::Decoded,
            };
            rec.write_frame(&frame).unwrap();
        }
        assert_eq!(rec.frames(), 50);
        rec.finish().unwrap();
        let (samples, rate, channels) = read_wav(&path).unwrap();
        assert_eq!((samples.len(), rate, channels), (48_000, 48_000, 1));
        assert!((samples[0] - 4000.0 / 32768.0).abs() < 1e-6);
        let src = WavSource::open(&path).unwrap();
        assert_eq!(src.duration(), std::time::Duration::from_secs(1));
        let input = AudioInput::new(1);
        input.replace(src);
        let first = input.pull(48_000);
        assert_eq!(&first[..48], &[[4000i16; 24], [-4000; 24]].concat()[..]);
        assert!(input.pull(960).iter().all(|&s| s == 0), "silence after the end");
        assert!(input.source_ended());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
