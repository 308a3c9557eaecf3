//! Channel remixing and sample-rate conversion to the 48 kHz of Opus (streaming windowed-sinc,
//! 32 taps, Blackman window, cut-off below the lower Nyquist frequency).

/// Half the filter length in input samples.
const HALF_TAPS: usize = 16;

/// Remixes interleaved `input` with `from` channels into `to` channels: down to mono averages,
/// mono to more duplicates, otherwise the first channels are kept (missing ones copy the last).
pub fn remix(input: &[f32], from: u16, to: u16) -> Vec<f32> {
    let (from, to) = (usize::from(from.max(1)), usize::from(to.max(1)));
    if from == to {
        return input.to_vec();
    }
    let frames = input.len() / from;
    let mut out = Vec::with_capacity(frames * to);
    for f in input.chunks_exact(from) {
        if to == 1 {
            out.push(f.iter().sum::<f32>() / from as f32);
        } else {
            for c in 0..to {
                out.push(f[c.min(from - 1)]);
            }
        }
    }
    out
}

/// i16 samples to f32 in [-1, 1).
pub fn i16_to_f32(input: &[i16]) -> Vec<f32> {
    input.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// f32 samples to i16, clipped.
pub fn f32_to_i16(input: &[f32]) -> Vec<i16> {
    input.iter().map(|&s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).collect()
}

/// A streaming resampler for interleaved f32 audio with a fixed channel count.
#[derive(Debug, Clone)]
pub struct Resampler {
    in_rate: u32,
    out_rate: u32,
    channels: usize,
    step: f64,
    cutoff: f64,
    /// Read position in `buf`, in input samples.
    pos: f64,
    /// Per channel: input not yet fully consumed (with `HALF_TAPS` of history).
    buf: Vec<Vec<f32>>,
}

fn blackman(x: f64) -> f64 {
    // x in [-1, 1]
    let a = std::f64::consts::PI * (x + 1.0);
    0.42 - 0.5 * a.cos() + 0.08 * (2.0 * a).cos()
}

impl Resampler {
    /// Converts `in_rate` to `out_rate` for `channels` interleaved channels.
    pub fn new(in_rate: u32, out_rate: u32, channels: u16) -> Self {
        let channels = usize::from(channels.max(1));
        let step = f64::from(in_rate.max(1)) / f64::from(out_rate.max(1));
        Resampler {
            in_rate,
            out_rate,
            channels,
            step,
            // Pass band ends a little below the lower Nyquist frequency.
            cutoff: 0.95 * (1.0 / step).min(1.0),
            pos: HALF_TAPS as f64,
            buf: vec![vec![0.0; HALF_TAPS]; channels],
        }
    }

    /// Input rate.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Output rate.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Feeds interleaved input, returns the interleaved output available so far (the filter
    /// holds back `HALF_TAPS` input samples).
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        if self.in_rate == self.out_rate {
            return input.to_vec();
        }
        for frame in input.chunks_exact(self.channels) {
            for (c, &s) in frame.iter().enumerate() {
                self.buf[c].push(s);
            }
        }
        let len = self.buf[0].len();
        let mut out = Vec::new();
        while (self.pos.floor() as usize) + HALF_TAPS < len {
            let centre = self.pos.floor() as isize;
            let frac = self.pos - centre as f64;
            for c in 0..self.channels {
                let x = &self.buf[c];
                let mut acc = 0.0f64;
                let mut norm = 0.0f64;
                for k in -(HALF_TAPS as isize) + 1..=HALF_TAPS as isize {
                    let d = k as f64 - frac;
                    let w = blackman((d / HALF_TAPS as f64).clamp(-1.0, 1.0));
                    let arg = std::f64::consts::PI * self.cutoff * d;
                    let sinc = if arg.abs() < 1e-9 { 1.0 } else { arg.sin() / arg };
                    let h = sinc * w;
                    norm += h;
                    acc += f64::from(x[(centre + k) as usize]) * h;
                }
                out.push((acc / norm) as f32);
            }
            self.pos += self.step;
        }
        let drop = (self.pos.floor() as usize).saturating_sub(HALF_TAPS);
        if drop > 0 {
            for b in &mut self.buf {
                b.drain(..drop);
            }
            self.pos -= drop as f64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::goertzel_power;

    #[test]
    fn upsamples_16k_tone_to_48k_keeping_its_frequency() {
        let input: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let mut r = Resampler::new(16_000, 48_000, 1);
        let mut out = Vec::new();
        // Odd chunk sizes: streaming must not depend on them.
        for chunk in input.chunks(137) {
            out.extend(r.process(chunk));
        }
        assert!((47_900..=48_000).contains(&out.len()), "{}", out.len());
        let seg = &out[4800..43_200];
        let at = goertzel_power(seg, 48_000, 1000.0);
        let off = goertzel_power(seg, 48_000, 1500.0);
        assert!(10.0 * (at / off).log10() > 40.0, "1 kHz {at} vs 1.5 kHz {off}");
        let rms = (seg.iter().map(|s| s * s).sum::<f32>() / seg.len() as f32).sqrt();
        assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.01, "rms {rms}");
    }

    #[test]
    fn downsampling_removes_content_above_nyquist() {
        // 30 kHz at 96 kHz cannot exist at 48 kHz: it must be filtered, not aliased to 18 kHz.
        let input: Vec<f32> = (0..96_000)
            .map(|i| (2.0 * std::f32::consts::PI * 30_000.0 * i as f32 / 96_000.0).sin() * 0.5)
            .collect();
        let out = Resampler::new(96_000, 48_000, 1).process(&input);
        let rms = (out[1000..].iter().map(|s| s * s).sum::<f32>() / (out.len() - 1000) as f32).sqrt();
        assert!(rms < 0.01, "aliased energy rms {rms}");
    }

    #[test]
    fn remix_and_conversions() {
        assert_eq!(remix(&[1.0, 0.0, 0.5, 0.5], 2, 1), vec![0.5, 0.5]);
        assert_eq!(remix(&[0.25], 1, 2), vec![0.25, 0.25]);
        assert_eq!(f32_to_i16(&i16_to_f32(&[-32768, 0, 1000, 32767])), vec![-32768, 0, 1000, 32767]);
        assert_eq!(f32_to_i16(&[2.0, -2.0]), vec![32767, -32768]);
    }
}
