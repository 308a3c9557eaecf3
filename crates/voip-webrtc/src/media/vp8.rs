//! VP8 helpers: keyframe detection on frames and on RTP payloads (RFC 7741).

/// Whether an encoded VP8 frame is a valid keyframe: the inverse-keyframe bit is clear, the
/// start code `9d 01 2a` follows the 3-byte frame tag, and the dimensions are non-zero.
pub fn frame_is_keyframe(frame: &[u8]) -> bool {
    if frame.len() < 10 || frame[0] & 0x01 != 0 {
        return false;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    frame[3..6] == [0x9d, 0x01, 0x2a] && width > 0 && height > 0
}

/// Length of the VP8 RTP payload descriptor, or `None` if it is truncated.
fn descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    let mut len = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(1)?;
        len += 1;
        if x & 0x80 != 0 {
            let pic = *payload.get(len)?;
            len += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            len += 1;
        }
        if x & 0x30 != 0 {
            len += 1;
        }
    }
    (payload.len() > len).then_some(len)
}

/// What one VP8 RTP payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8PayloadInfo {
    /// The payload starts a frame (S bit set, partition 0).
    pub starts_frame: bool,
    /// It starts a frame and that frame is a valid keyframe.
    pub keyframe: bool,
}

/// Parses the payload descriptor of a VP8 RTP payload; `None` if it is malformed.
pub fn parse_rtp_payload(payload: &[u8]) -> Option<Vp8PayloadInfo> {
    let len = descriptor_len(payload)?;
    let b0 = payload[0];
    let starts_frame = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let keyframe = starts_frame && frame_is_keyframe(&payload[len..]);
    Some(Vp8PayloadInfo { starts_frame, keyframe })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_variants() {
        let key = [0x10u8, 0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0xa0, 0x00, 0x78, 0x00, 0x00];
        assert_eq!(parse_rtp_payload(&key), Some(Vp8PayloadInfo { starts_frame: true, keyframe: true }));
        // Extended descriptor with a 2-byte picture id.
        let mut ext = vec![0x90u8, 0x80, 0x81, 0x23];
        ext.extend_from_slice(&key[1..]);
        assert_eq!(parse_rtp_payload(&ext), Some(Vp8PayloadInfo { starts_frame: true, keyframe: true }));
        // Continuation packet.
        assert_eq!(
            parse_rtp_payload(&[0x00, 1, 2]),
            Some(Vp8PayloadInfo { starts_frame: false, keyframe: false })
        );
        assert_eq!(parse_rtp_payload(&[0x80]), None);
    }
}
