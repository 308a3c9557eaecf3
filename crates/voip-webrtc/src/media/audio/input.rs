//! The send side: PCM sources, the per-call [`AudioInput`] apps push into, and the
//! [`OpusSource`] that encodes it for a local track.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::codec::{OpusEncoder, OpusSettings};
use super::resample::{f32_to_i16, i16_to_f32, remix, Resampler};
use super::SAMPLE_RATE;
use crate::error::Result;
use crate::media::source::{EncodedFrame, MediaSource};

/// A source of PCM pulled by the sender at its own pace (a generator, a file, a capture buffer).
pub trait PcmSource: Send + 'static {
    /// Its sample rate.
    fn sample_rate(&self) -> u32;
    /// Its channel count.
    fn channels(&self) -> u16;
    /// Fills `out` with interleaved samples in [-1, 1]; returns how many it wrote (a whole
    /// number of sample instants). Fewer than `out.len()`: the source has ended.
    fn read(&mut self, out: &mut [f32]) -> usize;
}

/// A sine tone, endless.
#[derive(Clone, Debug)]
pub struct Tone {
    freq: f64,
    amplitude: f32,
    sample_rate: u32,
    n: u64,
}

impl Tone {
    /// `freq` Hz at `amplitude` (0–1), mono 48 kHz.
    pub fn new(freq: f64, amplitude: f32) -> Self {
        Tone { freq, amplitude, sample_rate: SAMPLE_RATE, n: 0 }
    }

    /// The same tone generated at another sample rate (resampled by the input).
    #[must_use]
    pub fn at_rate(mut self, sample_rate: u32) -> Self {
        self.sample_rate = sample_rate;
        self
    }
}

impl PcmSource for Tone {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
    fn channels(&self) -> u16 {
        1
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        for s in out.iter_mut() {
            let t = self.n as f64 / f64::from(self.sample_rate);
            *s = self.amplitude * (2.0 * std::f64::consts::PI * self.freq * t).sin() as f32;
            self.n += 1;
        }
        out.len()
    }
}

/// Several sine tones summed (equal amplitude each), endless: a test signal whose frequencies
/// can be found again in the decoded output.
#[derive(Clone, Debug)]
pub struct MultiTone {
    tones: Vec<Tone>,
}

impl MultiTone {
    /// `freqs` Hz, with a total peak amplitude of `amplitude`.
    pub fn new(freqs: &[f64], amplitude: f32) -> Self {
        let each = amplitude / freqs.len().max(1) as f32;
        MultiTone { tones: freqs.iter().map(|&f| Tone::new(f, each)).collect() }
    }
}

impl PcmSource for MultiTone {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }
    fn channels(&self) -> u16 {
        1
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        out.fill(0.0);
        let mut buf = vec![0.0; out.len()];
        for t in &mut self.tones {
            t.read(&mut buf);
            for (o, b) in out.iter_mut().zip(&buf) {
                *o += b;
            }
        }
        out.len()
    }
}

/// Digital silence, endless.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silence;

impl PcmSource for Silence {
    fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }
    fn channels(&self) -> u16 {
        1
    }
    fn read(&mut self, out: &mut [f32]) -> usize {
        out.fill(0.0);
        out.len()
    }
}

/// Pushed audio beyond this is dropped, oldest first (10 s at 48 kHz stereo).
const MAX_QUEUE: usize = 48_000 * 2 * 10;

struct Generator {
    source: Box<dyn PcmSource>,
    resampler: Resampler,
    ended: bool,
}

struct InputState {
    /// Encoder channels.
    channels: u16,
    generator: Option<Generator>,
    /// 48 kHz samples in `channels`, pushed or generated, not yet encoded.
    queue: VecDeque<f32>,
    /// Resampler of pushed PCM, with the rate and channels it was made for.
    push_resampler: Option<(u32, u16, Resampler)>,
    pushed_dropped: u64,
    /// Push mode: enough is queued to play (at start and after an underrun the input waits for
    /// [`PUSH_PREBUFFER`] so that late pushes do not cut the audio into pieces).
    primed: bool,
}

/// How much pushed audio is queued before it plays (absorbs the jitter of an app's capture
/// callback), per channel at 48 kHz: 40 ms.
const PUSH_PREBUFFER: usize = 48 * 40;

/// The audio a call sends: PCM pushed by the app (any rate, any channels, i16 or f32), or a
/// [`PcmSource`] it plays. Cheap to clone; clones share the input. Replacing the source
/// mid-call changes what the peer hears from the next frame on, without renegotiation.
#[derive(Clone)]
pub struct AudioInput {
    state: Arc<Mutex<InputState>>,
}

impl std::fmt::Debug for AudioInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("AudioInput")
            .field("channels", &st.channels)
            .field("generator", &st.generator.is_some())
            .field("queued", &st.queue.len())
            .finish()
    }
}

impl AudioInput {
    /// An input encoded with `channels` channels (1 or 2), in push mode with nothing queued.
    pub fn new(channels: u16) -> Self {
        AudioInput {
            state: Arc::new(Mutex::new(InputState {
                channels: channels.clamp(1, 2),
                generator: None,
                queue: VecDeque::new(),
                push_resampler: None,
                pushed_dropped: 0,
                primed: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plays `source` from now on (replacing what was playing or queued).
    pub fn replace(&self, source: impl PcmSource) {
        self.replace_boxed(Box::new(source));
    }

    /// [`AudioInput::replace`] with a boxed source.
    pub fn replace_boxed(&self, source: Box<dyn PcmSource>) {
        let mut st = self.lock();
        let resampler = Resampler::new(source.sample_rate(), SAMPLE_RATE, st.channels);
        st.generator = Some(Generator { source, resampler, ended: false });
        st.queue.clear();
    }

    /// Back to push mode: stops the playing source, drops what is queued.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.generator = None;
        st.queue.clear();
    }

    /// Whether a played source has ended (a WAV file played to its end).
    pub fn source_ended(&self) -> bool {
        self.lock().generator.as_ref().is_some_and(|g| g.ended)
    }

    /// Pushes interleaved i16 PCM at `sample_rate` with `channels` channels (push mode: stops a
    /// playing source). Queued audio is sent in real time; beyond 10 s the oldest is dropped.
    pub fn push_i16(&self, sample_rate: u32, channels: u16, samples: &[i16]) {
        self.push_f32(sample_rate, channels, &i16_to_f32(samples));
    }

    /// Pushes interleaved f32 PCM (see [`AudioInput::push_i16`]).
    pub fn push_f32(&self, sample_rate: u32, channels: u16, samples: &[f32]) {
        let mut st = self.lock();
        st.generator = None;
        let out_channels = st.channels;
        let mixed = remix(samples, channels, out_channels);
        let stale = st.push_resampler.as_ref().is_none_or(|(r, c, _)| *r != sample_rate || *c != channels);
        if stale {
            st.push_resampler =
                Some((sample_rate, channels, Resampler::new(sample_rate, SAMPLE_RATE, out_channels)));
        }
        let resampled = match &mut st.push_resampler {
            Some((_, _, r)) => r.process(&mixed),
            None => mixed,
        };
        st.queue.extend(resampled);
        let excess = st.queue.len().saturating_sub(MAX_QUEUE);
        if excess > 0 {
            st.queue.drain(..excess);
            st.pushed_dropped += excess as u64;
        }
    }

    /// Samples per channel queued (pushed and not yet sent).
    pub fn queued(&self) -> usize {
        let st = self.lock();
        st.queue.len() / usize::from(st.channels)
    }

    /// Encoder channels.
    pub fn channels(&self) -> u16 {
        self.lock().channels
    }

    /// The next `samples` samples per channel at 48 kHz, interleaved i16: from the playing
    /// source, else from what was pushed (once 40 ms are queued), padded with silence when
    /// there is not enough.
    pub fn pull(&self, samples: usize) -> Vec<i16> {
        let mut st = self.lock();
        let want = samples * usize::from(st.channels);
        let channels = st.channels;
        if let Some(g) = &mut st.generator {
            let mut generated = Vec::new();
            // Resampling holds back a little input: read in blocks until the frame is full.
            let mut guard = 0;
            while !g.ended && generated.len() < want && guard < 100_000 {
                guard += 1;
                let src_ch = g.source.channels().max(1);
                let block = (g.source.sample_rate() as usize / 100).max(1) * usize::from(src_ch);
                let mut buf = vec![0.0; block];
                let n = g.source.read(&mut buf);
                if n < block {
                    g.ended = true;
                }
                let mixed = remix(&buf[..n], src_ch, channels);
                generated.extend(g.resampler.process(&mixed));
            }
            st.queue.extend(generated);
        } else {
            if !st.primed && st.queue.len() >= PUSH_PREBUFFER * usize::from(channels) {
                st.primed = true;
            }
            if !st.primed {
                return vec![0; want];
            }
            if st.queue.len() < want {
                st.primed = false;
            }
        }
        let take = want.min(st.queue.len());
        let mut out: Vec<f32> = st.queue.drain(..take).collect();
        out.resize(want, 0.0);
        f32_to_i16(&out)
    }
}

/// A [`MediaSource`] that encodes an [`AudioInput`] with libopus, 20 ms (or 10 ms) per frame.
/// While the track is disabled (muted, on hold) the input is consumed in real time but nothing
/// is sent; with DTX, silent frames the encoder marks as DTX are not sent either.
#[derive(Debug)]
pub struct OpusSource {
    input: AudioInput,
    /// What the app allows; the peer's parameters can only turn FEC and DTX off.
    local: OpusSettings,
    encoder: OpusEncoder,
    frames_encoded: u64,
}

impl OpusSource {
    /// Encodes `input` with `settings` (its channel count is the input's).
    pub fn new(input: AudioInput, settings: OpusSettings) -> Result<Self> {
        let local = OpusSettings { channels: input.channels(), ..settings };
        let encoder = OpusEncoder::new(local)?;
        Ok(OpusSource { input, local, encoder, frames_encoded: 0 })
    }

    /// Frames encoded so far.
    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded
    }

    /// The encoder's settings in force (FEC and DTX as negotiated).
    pub fn settings(&self) -> OpusSettings {
        self.encoder.settings()
    }
}

/// Whether the Opus format parameter `name` is `1` (RFC 7587 §6.1: absent means 0).
fn fmtp_flag(params: &str, name: &str) -> bool {
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .any(|(k, v)| k.trim() == name && v.trim() == "1")
}

impl MediaSource for OpusSource {
    /// In-band FEC is used when allowed locally and the peer's decoder asks for it
    /// (`useinbandfec=1`), DTX when allowed locally and the peer prefers it (`usedtx=1`).
    fn negotiated(&mut self, codec_parameters: &str) {
        let fec = self.local.fec && fmtp_flag(codec_parameters, "useinbandfec");
        let dtx = self.local.dtx && fmtp_flag(codec_parameters, "usedtx");
        let loss = self.local.expected_loss_percent;
        if let Err(e) = self.encoder.set_fec(fec, loss).and_then(|()| self.encoder.set_dtx(dtx)) {
            tracing::warn!(error = %e, "opus settings");
        }
        tracing::debug!(fec, dtx, codec_parameters, "opus encoder negotiated");
    }

    fn next_frame(&mut self, enabled: bool) -> Option<EncodedFrame> {
        let settings = self.encoder.settings();
        let duration = Duration::from_millis(u64::from(settings.frame_ms));
        let pcm = self.input.pull(settings.frame_samples());
        if !enabled {
            // Mute is metadata plus no media: keep the input's clock, send nothing.
            return Some(EncodedFrame::skip(duration));
        }
        match self.encoder.encode(&pcm) {
            Ok(packet) => {
                self.frames_encoded += 1;
                let dtx = settings.dtx && packet.len() <= 2;
                let data = if dtx { Bytes::new() } else { Bytes::from(packet) };
                Some(EncodedFrame { data, duration })
            }
            Err(e) => {
                tracing::warn!(error = %e, "opus encode");
                Some(EncodedFrame::skip(duration))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::codec::OpusDecoder;
    use crate::media::audio::goertzel_power;

    #[test]
    fn fec_and_dtx_follow_the_peers_fmtp() {
        let settings = OpusSettings { dtx: true, ..OpusSettings::default() };
        let mut src = OpusSource::new(AudioInput::new(1), settings).unwrap();
        src.negotiated("minptime=10;useinbandfec=1");
        assert!(src.settings().fec && !src.settings().dtx);
        src.negotiated("minptime=10; useinbandfec=0; usedtx=1");
        assert!(!src.settings().fec && src.settings().dtx);
        // The local settings bound what the peer can turn on.
        let mut plain = OpusSource::new(AudioInput::new(1), OpusSettings { fec: false, ..settings }).unwrap();
        plain.negotiated("useinbandfec=1;usedtx=1");
        assert!(!plain.settings().fec && plain.settings().dtx);
        // DTX on: silence is not sent.
        let skipped = (0..30).filter(|_| plain.next_frame(true).unwrap().data.is_empty()).count();
        assert!(skipped >= 20, "{skipped} of 30 silent frames skipped");
    }

    #[test]
    fn pushed_audio_waits_for_40ms_before_playing_and_after_an_underrun() {
        let input = AudioInput::new(1);
        input.push_i16(48_000, 1, &[1000; 960]);
        assert!(input.pull(480).iter().all(|&s| s == 0), "20 ms queued: still waiting");
        input.push_i16(48_000, 1, &[1000; 960]);
        assert!(input.pull(480).iter().all(|&s| s == 1000), "40 ms queued: plays");
        let rest = input.pull(1920);
        assert!(rest[..1440].iter().all(|&s| s == 1000) && rest[1440..].iter().all(|&s| s == 0));
        input.push_i16(48_000, 1, &[1000; 960]);
        assert!(input.pull(480).iter().all(|&s| s == 0), "after the underrun it waits again");
    }

    #[test]
    fn pushed_44k1_stereo_comes_out_48k_mono() {
        let input = AudioInput::new(1);
        let stereo: Vec<i16> = (0..44_100)
            .flat_map(|i| {
                let s =
                    (8000.0 * (2.0 * std::f64::consts::PI * 500.0 * f64::from(i) / 44_100.0).sin()) as i16;
                [s, s]
            })
            .collect();
        input.push_i16(44_100, 2, &stereo);
        let queued = input.queued();
        assert!((47_900..=48_000).contains(&queued), "{queued}");
        let pcm = input.pull(9600);
        let f: Vec<f32> = i16_to_f32(&pcm[2400..]);
        let ratio = goertzel_power(&f, 48_000, 500.0) / goertzel_power(&f, 48_000, 700.0);
        assert!(ratio > 1e4, "{ratio}");
        // Underrun: what is left, then silence.
        let rest = input.pull(48_000);
        assert!(rest[..30_000].iter().any(|&s| s != 0));
        assert!(rest[47_000..].iter().all(|&s| s == 0));
    }

    #[test]
    fn replace_switches_the_source_and_mute_sends_nothing() {
        let input = AudioInput::new(1);
        input.replace(Tone::new(1000.0, 0.5).at_rate(16_000));
        let mut src = OpusSource::new(input.clone(), OpusSettings::default()).unwrap();
        let mut dec = OpusDecoder::new(1).unwrap();
        let mut decoded = Vec::new();
        for _ in 0..10 {
            let f = src.next_frame(true).unwrap();
            assert_eq!(f.duration, Duration::from_millis(20));
            decoded.extend(dec.decode(&f.data).unwrap());
        }
        let f = i16_to_f32(&decoded[4800..]);
        assert!(goertzel_power(&f, 48_000, 1000.0) > 100.0 * goertzel_power(&f, 48_000, 1500.0));
        let muted = src.next_frame(false).unwrap();
        assert!(muted.data.is_empty());
        input.replace(Silence);
        let after: Vec<Vec<i16>> =
            (0..5).map(|_| dec.decode(&src.next_frame(true).unwrap().data).unwrap()).collect();
        let peak = |f: &[i16]| f.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak(&after[0]) > 1000, "the first frame still carries the tone's tail");
        assert!(
            after[2..].iter().all(|f| peak(f) < 100),
            "silence after replace: {:?}",
            after.iter().map(|f| peak(f)).collect::<Vec<_>>()
        );
        assert_eq!(src.frames_encoded(), 15);
    }
}
