//! Opus packet validation (RFC 6716 §3), used by sinks to check that what arrived is Opus.
//!
//! There is no Opus decoder in webrtc-rs and none in this crate (it would need libopus). A
//! packet is accepted when its TOC byte and framing obey every rule R1–R7 of RFC 6716 §3.4.

/// The Opus "silence" packet libwebrtc and browsers send for a muted track: CELT fullband 20 ms,
/// mono, one frame of two bytes.
pub const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// What the TOC byte and framing of a valid Opus packet say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusPacketInfo {
    /// TOC configuration number (0–31): mode, bandwidth and frame size.
    pub config: u8,
    /// Stereo flag.
    pub stereo: bool,
    /// Number of frames in the packet.
    pub frames: u8,
}

impl OpusPacketInfo {
    /// Duration of one frame in microseconds.
    pub fn frame_duration_us(&self) -> u32 {
        frame_duration_us(self.config)
    }

    /// Duration of the whole packet in microseconds.
    pub fn duration_us(&self) -> u32 {
        self.frame_duration_us() * u32::from(self.frames)
    }
}

fn frame_duration_us(config: u8) -> u32 {
    match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    }
}

/// Why a packet is not valid Opus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpusPacketError {
    /// R1: a packet has at least one byte.
    #[error("empty packet")]
    Empty,
    /// R2: no frame is longer than 1275 bytes.
    #[error("frame longer than 1275 bytes")]
    FrameTooLong,
    /// R3: code 1 packets have an odd number of payload bytes.
    #[error("code 1 packet with an odd payload length")]
    OddCbrPair,
    /// R4: code 2 length field does not fit.
    #[error("code 2 frame length exceeds the packet")]
    BadVbrPair,
    /// R5: code 3 needs a frame count of 1..=48 and at most 120 ms of audio.
    #[error("code 3 frame count invalid")]
    BadFrameCount,
    /// R6/R7: code 3 padding or frame lengths do not fit the packet.
    #[error("code 3 padding or lengths exceed the packet")]
    BadCode3Layout,
}

/// Reads a frame-length field (1 or 2 bytes, RFC 6716 §3.2.1).
fn frame_len(data: &[u8]) -> Option<(usize, usize)> {
    let b0 = usize::from(*data.first()?);
    if b0 < 252 {
        Some((b0, 1))
    } else {
        Some((b0 + 4 * usize::from(*data.get(1)?), 2))
    }
}

/// Validates one Opus packet and reports its TOC information.
pub fn parse_packet(packet: &[u8]) -> Result<OpusPacketInfo, OpusPacketError> {
    let toc = *packet.first().ok_or(OpusPacketError::Empty)?;
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let rest = &packet[1..];
    let frames = match toc & 0x03 {
        0 => {
            if rest.len() > 1275 {
                return Err(OpusPacketError::FrameTooLong);
            }
            1
        }
        1 => {
            if !rest.len().is_multiple_of(2) {
                return Err(OpusPacketError::OddCbrPair);
            }
            if rest.len() / 2 > 1275 {
                return Err(OpusPacketError::FrameTooLong);
            }
            2
        }
        2 => {
            let (first, used) = frame_len(rest).ok_or(OpusPacketError::BadVbrPair)?;
            let remaining = rest.len() - used;
            if first > remaining {
                return Err(OpusPacketError::BadVbrPair);
            }
            if first > 1275 || remaining - first > 1275 {
                return Err(OpusPacketError::FrameTooLong);
            }
            2
        }
        _ => {
            let fc = *rest.first().ok_or(OpusPacketError::BadFrameCount)?;
            let count = fc & 0x3f;
            let vbr = fc & 0x80 != 0;
            let padded = fc & 0x40 != 0;
            if count == 0 || u32::from(count) * frame_duration_us(config) > 120_000 {
                return Err(OpusPacketError::BadFrameCount);
            }
            let mut pos = 1usize;
            let mut padding = 0usize;
            if padded {
                loop {
                    let b = *rest.get(pos).ok_or(OpusPacketError::BadCode3Layout)?;
                    pos += 1;
                    if b == 255 {
                        padding += 254;
                    } else {
                        padding += usize::from(b);
                        break;
                    }
                }
            }
            let available = rest.len().checked_sub(pos + padding).ok_or(OpusPacketError::BadCode3Layout)?;
            if vbr {
                let mut total = 0usize;
                let mut header = 0usize;
                for _ in 1..count {
                    let (len, used) =
                        frame_len(&rest[pos + header..]).ok_or(OpusPacketError::BadCode3Layout)?;
                    if len > 1275 {
                        return Err(OpusPacketError::FrameTooLong);
                    }
                    total += len;
                    header += used;
                }
                let last = available.checked_sub(header + total).ok_or(OpusPacketError::BadCode3Layout)?;
                if last > 1275 {
                    return Err(OpusPacketError::FrameTooLong);
                }
            } else {
                if !available.is_multiple_of(usize::from(count)) {
                    return Err(OpusPacketError::BadCode3Layout);
                }
                if available / usize::from(count) > 1275 {
                    return Err(OpusPacketError::FrameTooLong);
                }
            }
            count
        }
    };
    Ok(OpusPacketInfo { config, stereo, frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_packet_is_celt_fullband_20ms() {
        let info = parse_packet(&OPUS_SILENCE).unwrap();
        assert_eq!(info, OpusPacketInfo { config: 31, stereo: false, frames: 1 });
        assert_eq!(info.duration_us(), 20_000);
    }

    #[test]
    fn rules_r1_to_r7_reject_bad_framing() {
        assert_eq!(parse_packet(&[]), Err(OpusPacketError::Empty));
        assert_eq!(parse_packet(&[0x01, 1, 2, 3]), Err(OpusPacketError::OddCbrPair));
        assert_eq!(parse_packet(&[0x02, 10, 1, 2]), Err(OpusPacketError::BadVbrPair));
        assert_eq!(parse_packet(&[0x03, 0x00]), Err(OpusPacketError::BadFrameCount));
        // 20 ms SILK frames: 7 of them is 140 ms > 120 ms.
        assert_eq!(parse_packet(&[0x0b, 0x07]), Err(OpusPacketError::BadFrameCount));
        // CBR code 3 with 2 frames and 3 payload bytes.
        assert_eq!(parse_packet(&[0x0b, 0x02, 1, 2, 3]), Err(OpusPacketError::BadCode3Layout));
        // Padding longer than the packet.
        assert_eq!(parse_packet(&[0x0b, 0x41, 200]), Err(OpusPacketError::BadCode3Layout));
        let mut long = vec![0x00];
        long.resize(1300, 0);
        assert_eq!(parse_packet(&long), Err(OpusPacketError::FrameTooLong));
    }

    #[test]
    fn valid_code_2_and_3_packets() {
        assert_eq!(parse_packet(&[0x0a, 2, 9, 9, 8]).unwrap().frames, 2);
        // VBR code 3, 3 frames of 20 ms: lengths 1, 2, then 1 remaining.
        let info = parse_packet(&[0x0b, 0x83, 1, 2, 7, 8, 8, 9]).unwrap();
        assert_eq!(info.frames, 3);
        assert_eq!(info.duration_us(), 60_000);
    }
}
