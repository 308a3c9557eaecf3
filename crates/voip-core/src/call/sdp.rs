//! The little the core needs to read from SDP text: is there video, and is the sender holding us.

use crate::media::CallType;

/// `Video` when the SDP has a video m-line with a non-zero port, else `Voice`.
pub(crate) fn call_type(sdp: &str) -> CallType {
    let has_video = sdp.lines().any(|l| {
        let mut parts = l.split_whitespace();
        parts.next() == Some("m=video") && parts.next().is_some_and(|port| port != "0")
    });
    if has_video {
        CallType::Video
    } else {
        CallType::Voice
    }
}

/// Whether the sender of `sdp` is holding us: every active media section is `sendonly` or
/// `inactive` from its point of view (RFC 3264 hold). A description without media sections is
/// not a hold.
pub(crate) fn is_hold(sdp: &str) -> bool {
    let mut session_dir: Option<&str> = None;
    // One entry per active (port != 0) media section: its direction attribute, if any.
    let mut sections: Vec<Option<&str>> = Vec::new();
    let mut in_active_section = false;
    let mut seen_media = false;
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            seen_media = true;
            in_active_section = line.split_whitespace().nth(1) != Some("0");
            if in_active_section {
                sections.push(None);
            }
            continue;
        }
        let dir = match line {
            "a=sendonly" => "sendonly",
            "a=inactive" => "inactive",
            "a=recvonly" => "recvonly",
            "a=sendrecv" => "sendrecv",
            _ => continue,
        };
        if !seen_media {
            session_dir = Some(dir);
        } else if in_active_section {
            if let Some(last) = sections.last_mut() {
                *last = Some(dir);
            }
        }
    }
    !sections.is_empty()
        && sections.iter().all(|d| matches!(d.or(session_dir), Some("sendonly" | "inactive")))
}

/// The first `a=ice-ufrag:` value, used to notice a remote ICE restart.
pub(crate) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:")).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_video_and_hold() {
        let audio = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n";
        let av_hold = "v=0\r\nm=audio 9 X 111\r\na=sendonly\r\nm=video 9 X 96\r\na=inactive\r\n";
        let rejected_video = "v=0\r\nm=audio 9 X 111\r\na=sendonly\r\nm=video 0 X 96\r\na=sendrecv\r\n";
        let half = "v=0\r\nm=audio 9 X 111\r\na=sendonly\r\nm=video 9 X 96\r\na=sendrecv\r\n";
        let session_level = "v=0\r\na=inactive\r\nm=audio 9 X 111\r\n";
        assert_eq!(call_type(audio), CallType::Voice);
        assert_eq!(call_type(av_hold), CallType::Video);
        assert_eq!(call_type(rejected_video), CallType::Voice);
        assert!(!is_hold(audio));
        assert!(is_hold(av_hold));
        assert!(is_hold(rejected_video));
        assert!(!is_hold(half));
        assert!(is_hold(session_level));
        assert!(!is_hold("v=0\r\n"));
    }
}
