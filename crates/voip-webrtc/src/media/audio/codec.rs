//! Opus through libopus (the `opus` crate on `opusic-sys`, libopus 1.5 built statically):
//! encoder settings (bitrate, in-band FEC, DTX, expected loss), decode, FEC recovery and packet
//! loss concealment.

use crate::error::{Error, Result};

use super::{SAMPLES_PER_MS, SAMPLE_RATE};

/// How the Opus encoder of a local audio track is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusSettings {
    /// Target bitrate in bits per second (libwebrtc's default for voice: 32 kbit/s).
    pub bitrate: u32,
    /// Encoded channels: 1 or 2 (input with other channel counts is remixed).
    pub channels: u16,
    /// In-band forward error correction (`useinbandfec=1`): each packet carries a low-bitrate
    /// copy of the previous frame, which the receiver decodes when that frame was lost.
    pub fec: bool,
    /// Discontinuous transmission (`usedtx=1`): during silence the encoder emits a packet only
    /// every 400 ms; the receiver conceals in between.
    pub dtx: bool,
    /// Loss the encoder plans FEC for, in percent (0–100).
    pub expected_loss_percent: u8,
    /// Frame duration in milliseconds: 10 or 20.
    pub frame_ms: u32,
}

impl Default for OpusSettings {
    /// Mono, 32 kbit/s, FEC on (planned for 10 % loss), DTX off, 20 ms frames.
    fn default() -> Self {
        OpusSettings {
            bitrate: 32_000,
            channels: 1,
            fec: true,
            dtx: false,
            expected_loss_percent: 10,
            frame_ms: 20,
        }
    }
}

impl OpusSettings {
    /// Samples per channel in one frame.
    pub fn frame_samples(&self) -> usize {
        SAMPLES_PER_MS * self.frame_ms as usize
    }

    fn validate(&self) -> Result<()> {
        if !(1..=2).contains(&self.channels) {
            return Err(Error::Codec(format!("{} channels: Opus tracks carry 1 or 2", self.channels)));
        }
        if self.frame_ms != 10 && self.frame_ms != 20 {
            return Err(Error::Codec(format!("{} ms frames: use 10 or 20", self.frame_ms)));
        }
        Ok(())
    }
}

fn channels(n: u16) -> opus::Channels {
    if n == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    }
}

fn codec_err(e: opus::Error) -> Error {
    Error::Codec(e.to_string())
}

/// An Opus encoder for 48 kHz PCM.
pub struct OpusEncoder {
    inner: opus::Encoder,
    settings: OpusSettings,
    out: Vec<u8>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// A VoIP-mode encoder with `settings`.
    pub fn new(settings: OpusSettings) -> Result<Self> {
        settings.validate()?;
        let mut inner = opus::Encoder::new(SAMPLE_RATE, channels(settings.channels), opus::Application::Voip)
            .map_err(codec_err)?;
        inner.set_bitrate(opus::Bitrate::Bits(settings.bitrate as i32)).map_err(codec_err)?;
        let mut enc = OpusEncoder { inner, settings, out: vec![0; 1500] };
        enc.set_fec(settings.fec, settings.expected_loss_percent)?;
        enc.set_dtx(settings.dtx)?;
        Ok(enc)
    }

    /// The settings in force.
    pub fn settings(&self) -> OpusSettings {
        self.settings
    }

    /// Turns in-band FEC on or off (what the peer negotiated with `useinbandfec`) and sets the
    /// loss it is planned for.
    pub fn set_fec(&mut self, fec: bool, expected_loss_percent: u8) -> Result<()> {
        self.inner.set_inband_fec(fec).map_err(codec_err)?;
        self.inner.set_packet_loss_perc(i32::from(expected_loss_percent.min(100))).map_err(codec_err)?;
        self.settings.fec = fec;
        self.settings.expected_loss_percent = expected_loss_percent.min(100);
        Ok(())
    }

    /// Turns DTX on or off (`usedtx`).
    pub fn set_dtx(&mut self, dtx: bool) -> Result<()> {
        self.inner.set_dtx(dtx).map_err(codec_err)?;
        self.settings.dtx = dtx;
        Ok(())
    }

    /// Whether the last encoded frame was a DTX frame (silence, nothing worth sending).
    pub fn in_dtx(&mut self) -> bool {
        self.inner.get_in_dtx().unwrap_or(false)
    }

    /// Encodes one frame: exactly `frame_samples() * channels` interleaved samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>> {
        let expected = self.settings.frame_samples() * usize::from(self.settings.channels);
        if pcm.len() != expected {
            return Err(Error::Codec(format!("frame of {} samples, expected {expected}", pcm.len())));
        }
        let n = self.inner.encode(pcm, &mut self.out).map_err(codec_err)?;
        Ok(self.out[..n].to_vec())
    }
}

/// An Opus decoder producing 48 kHz PCM.
pub struct OpusDecoder {
    inner: opus::Decoder,
    channels: u16,
    buf: Vec<i16>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").field("channels", &self.channels).finish_non_exhaustive()
    }
}

/// 120 ms at 48 kHz: the longest Opus packet.
const MAX_FRAME: usize = 5760;

impl OpusDecoder {
    /// A decoder with `channels` output channels (1 or 2; Opus decodes either into either).
    pub fn new(channels: u16) -> Result<Self> {
        if !(1..=2).contains(&channels) {
            return Err(Error::Codec(format!("{channels} output channels: use 1 or 2")));
        }
        let inner = opus::Decoder::new(SAMPLE_RATE, self::channels(channels)).map_err(codec_err)?;
        Ok(OpusDecoder { inner, channels, buf: vec![0; MAX_FRAME * 2] })
    }

    /// Output channels.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    fn run(&mut self, packet: &[u8], samples: usize, fec: bool) -> Result<Vec<i16>> {
        let ch = usize::from(self.channels);
        let len = if packet.is_empty() || fec { samples.min(MAX_FRAME) * ch } else { self.buf.len() };
        let n = self.inner.decode(packet, &mut self.buf[..len], fec).map_err(codec_err)?;
        Ok(self.buf[..n * ch].to_vec())
    }

    /// Decodes one packet (interleaved samples).
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>> {
        if packet.is_empty() {
            return Err(Error::Codec("empty packet".into()));
        }
        self.run(packet, MAX_FRAME, false)
    }

    /// Recovers a lost frame of `samples` samples per channel from the FEC data in the packet
    /// that followed it (libopus conceals if that packet carries no FEC).
    pub fn decode_fec(&mut self, next_packet: &[u8], samples: usize) -> Result<Vec<i16>> {
        self.run(next_packet, samples, true)
    }

    /// Packet loss concealment: `samples` samples per channel extrapolated from what came before
    /// (fades to silence over longer gaps).
    pub fn conceal(&mut self, samples: usize) -> Result<Vec<i16>> {
        self.run(&[], samples, false)
    }
}

/// Samples per channel in an Opus packet at 48 kHz, from its TOC (`None` if malformed).
pub fn packet_samples(packet: &[u8]) -> Option<usize> {
    opus::packet::get_nb_samples(packet, SAMPLE_RATE).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, samples: usize, offset: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| {
                let t = (i + offset) as f64 / f64::from(SAMPLE_RATE);
                (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn encode_decode_round_trip_keeps_energy() {
        let mut enc = OpusEncoder::new(OpusSettings::default()).unwrap();
        let mut dec = OpusDecoder::new(1).unwrap();
        let mut energy_in = 0.0;
        let mut energy_out = 0.0;
        for f in 0..25 {
            let pcm = sine(440.0, 960, f * 960);
            let packet = enc.encode(&pcm).unwrap();
            assert!(crate::media::opus::parse_packet(&packet).is_ok());
            assert_eq!(packet_samples(&packet), Some(960));
            let out = dec.decode(&packet).unwrap();
            assert_eq!(out.len(), 960);
            if f >= 5 {
                energy_in += pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
                energy_out += out.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            }
        }
        let ratio_db = 10.0 * (energy_out / energy_in).log10();
        assert!(ratio_db.abs() < 1.5, "energy changed by {ratio_db:.2} dB");
    }

    #[test]
    fn conceal_and_fec_fill_a_lost_frame() {
        let mut enc =
            OpusEncoder::new(OpusSettings { expected_loss_percent: 20, ..OpusSettings::default() }).unwrap();
        let mut dec = OpusDecoder::new(1).unwrap();
        let packets: Vec<Vec<u8>> =
            (0..20).map(|f| enc.encode(&sine(300.0, 960, f * 960)).unwrap()).collect();
        for p in &packets[..10] {
            dec.decode(p).unwrap();
        }
        // Frame 10 is lost: recover it from frame 11's FEC, then decode 11.
        let fec = dec.decode_fec(&packets[11], 960).unwrap();
        assert_eq!(fec.len(), 960);
        let rms = (fec.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 960.0).sqrt();
        assert!(rms > 1000.0, "FEC frame almost silent: rms {rms}");
        dec.decode(&packets[11]).unwrap();
        let plc = dec.conceal(960).unwrap();
        assert_eq!(plc.len(), 960);
        assert!(plc.iter().any(|&s| s != 0), "concealment is not silence after a tone");
    }

    #[test]
    fn dtx_and_bad_settings() {
        let mut enc = OpusEncoder::new(OpusSettings { dtx: true, ..OpusSettings::default() }).unwrap();
        let silent: Vec<usize> = (0..30).map(|_| enc.encode(&[0; 960]).unwrap().len()).collect();
        assert!(silent[20..].iter().all(|&n| n <= 3), "DTX packets: {silent:?}");
        assert!(OpusEncoder::new(OpusSettings { channels: 3, ..OpusSettings::default() }).is_err());
        assert!(OpusEncoder::new(OpusSettings { frame_ms: 15, ..OpusSettings::default() }).is_err());
        assert!(enc.encode(&[0; 100]).is_err());
    }
}
