//! Minimal readers for the two containers the bundled clips use: Ogg (Opus) and IVF (VP8).
//!
//! They split a whole in-memory file into codec packets. rtc's own `OggReader` hands out whole
//! Ogg *pages*, but `opusenc` puts many Opus packets in one page, so the lacing values are
//! walked here to recover packet boundaries.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};

fn malformed(container: &'static str, detail: impl Into<String>) -> Error {
    Error::MalformedMedia { container, detail: detail.into() }
}

/// The Opus packets of an Ogg/Opus file (RFC 7845), without the `OpusHead` and `OpusTags`
/// header packets. Only the first logical stream is read.
pub fn ogg_opus_packets(data: &[u8]) -> Result<Vec<Bytes>> {
    let mut packets = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut serial = None;
    while pos < data.len() {
        let header = data.get(pos..pos + 27).ok_or_else(|| malformed("ogg", "truncated page header"))?;
        if &header[..4] != b"OggS" {
            return Err(malformed("ogg", format!("no capture pattern at byte {pos}")));
        }
        let page_serial = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
        let segments = usize::from(header[26]);
        let table = data
            .get(pos + 27..pos + 27 + segments)
            .ok_or_else(|| malformed("ogg", "truncated segment table"))?;
        let mut body = pos + 27 + segments;
        let first_stream = *serial.get_or_insert(page_serial) == page_serial;
        for &lacing in table {
            let len = usize::from(lacing);
            let seg = data.get(body..body + len).ok_or_else(|| malformed("ogg", "truncated page body"))?;
            body += len;
            if !first_stream {
                continue;
            }
            partial.extend_from_slice(seg);
            if lacing < 255 {
                packets.push(Bytes::from(std::mem::take(&mut partial)));
            }
        }
        pos = body;
    }
    let mut packets = packets.into_iter();
    let head = packets.next().ok_or_else(|| malformed("ogg", "no OpusHead packet"))?;
    if !head.starts_with(b"OpusHead") {
        return Err(malformed("ogg", "first packet is not OpusHead"));
    }
    let tags = packets.next().ok_or_else(|| malformed("ogg", "no OpusTags packet"))?;
    if !tags.starts_with(b"OpusTags") {
        return Err(malformed("ogg", "second packet is not OpusTags"));
    }
    Ok(packets.collect())
}

/// An IVF file: its frames and the duration of one frame.
#[derive(Clone, Debug)]
pub struct IvfClip {
    /// FourCC of the codec, e.g. `VP80`.
    pub fourcc: [u8; 4],
    /// Frame width in pixels.
    pub width: u16,
    /// Frame height in pixels.
    pub height: u16,
    /// Duration of one frame (time base of the file).
    pub frame_duration: Duration,
    /// The encoded frames, in order.
    pub frames: Vec<Bytes>,
}

/// Reads an IVF file (32-byte header, then 12-byte frame headers).
pub fn ivf_frames(data: &[u8]) -> Result<IvfClip> {
    let header = data.get(..32).ok_or_else(|| malformed("ivf", "truncated file header"))?;
    if &header[..4] != b"DKIF" {
        return Err(malformed("ivf", "no DKIF signature"));
    }
    let header_len = usize::from(u16::from_le_bytes([header[6], header[7]]));
    let fourcc = [header[8], header[9], header[10], header[11]];
    let width = u16::from_le_bytes([header[12], header[13]]);
    let height = u16::from_le_bytes([header[14], header[15]]);
    let rate = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    let scale = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
    if rate == 0 || scale == 0 {
        return Err(malformed("ivf", "zero time base"));
    }
    let timebase = f64::from(scale) / f64::from(rate);
    let mut frames = Vec::new();
    let mut pts = Vec::new();
    let mut pos = header_len.max(32);
    while pos < data.len() {
        let fh = data.get(pos..pos + 12).ok_or_else(|| malformed("ivf", "truncated frame header"))?;
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        pts.push(u64::from_le_bytes([fh[4], fh[5], fh[6], fh[7], fh[8], fh[9], fh[10], fh[11]]));
        let frame = data.get(pos + 12..pos + 12 + len).ok_or_else(|| malformed("ivf", "truncated frame"))?;
        frames.push(Bytes::copy_from_slice(frame));
        pos += 12 + len;
    }
    if frames.is_empty() {
        return Err(malformed("ivf", "no frames"));
    }
    // Frame duration: the average pts step (vpxenc writes a 1/1000 time base), or one tick.
    let ticks = match (pts.first(), pts.last()) {
        (Some(first), Some(last)) if pts.len() > 1 && last > first => {
            (last - first) as f64 / (pts.len() - 1) as f64
        }
        _ => 1.0,
    };
    let frame_duration = Duration::from_secs_f64(ticks * timebase);
    Ok(IvfClip { fourcc, width, height, frame_duration, frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_ogg_has_two_seconds_of_20ms_packets() {
        let packets = ogg_opus_packets(crate::media::TONE_OGG).expect("bundled clip parses");
        // 2 s plus the encoder's pre-skip: 101 packets of 20 ms.
        assert_eq!(packets.len(), 101);
        for p in &packets {
            let info = crate::media::opus::parse_packet(p).expect("valid opus");
            assert_eq!(info.duration_us(), 20_000);
        }
    }

    #[test]
    fn bundled_ivf_is_vp8_with_keyframes() {
        let clip = ivf_frames(crate::media::CLIP_IVF).expect("bundled clip parses");
        assert_eq!(&clip.fourcc, b"VP80");
        assert_eq!((clip.width, clip.height), (160, 120));
        assert_eq!(clip.frames.len(), 30);
        let keyframes = clip.frames.iter().filter(|f| crate::media::vp8::frame_is_keyframe(f)).count();
        assert!(keyframes >= 2, "one keyframe per second expected, got {keyframes}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(ogg_opus_packets(b"not an ogg file at all, definitely not").is_err());
        assert!(ivf_frames(&[0u8; 40]).is_err());
    }
}
