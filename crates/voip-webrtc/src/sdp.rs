//! The little SDP reading the adapter needs: mids for local candidates, the stream ids of
//! remote tracks and the DTLS role (`a=setup:`). Lenient: lines it does not understand are
//! skipped.

use std::collections::{BTreeSet, HashMap};

use voip_core::media::MediaKind;
use voip_core::StreamId;

/// One `m=` section, as far as the adapter cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MediaSection {
    /// `audio`, `video`, `application`, …
    pub(crate) media: String,
    /// `a=mid:` value.
    pub(crate) mid: Option<String>,
    /// `sendrecv` / `sendonly` / `recvonly` / `inactive` as written (default `sendrecv`).
    pub(crate) direction: Option<String>,
    /// Stream ids from `a=msid:` (or `a=ssrc:… msid:`) lines.
    pub(crate) stream_ids: BTreeSet<String>,
    /// Port 0: the section is rejected / stopped.
    pub(crate) rejected: bool,
}

impl MediaSection {
    pub(crate) fn kind(&self) -> Option<MediaKind> {
        match self.media.as_str() {
            "audio" => Some(MediaKind::Audio),
            "video" => Some(MediaKind::Video),
            _ => None,
        }
    }
}

/// The format parameters (`a=fmtp:`) of Opus in the first audio section that has Opus
/// (`useinbandfec=1;usedtx=1;…`); empty when Opus has no fmtp line.
pub(crate) fn opus_fmtp(sdp: &str) -> Option<String> {
    let mut in_audio = false;
    let mut pt: Option<String> = None;
    let mut fmtp: HashMap<String, String> = HashMap::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if pt.is_some() {
                break;
            }
            in_audio = m.starts_with("audio");
            fmtp.clear();
            continue;
        }
        if !in_audio {
            continue;
        }
        if let Some((p, codec)) = line.strip_prefix("a=rtpmap:").and_then(|v| v.split_once(' ')) {
            if pt.is_none() && codec.to_ascii_lowercase().starts_with("opus/") {
                pt = Some(p.to_owned());
            }
        } else if let Some((p, params)) = line.strip_prefix("a=fmtp:").and_then(|v| v.split_once(' ')) {
            fmtp.insert(p.to_owned(), params.to_owned());
        }
    }
    let pt = pt?;
    Some(fmtp.remove(&pt).unwrap_or_default())
}

pub(crate) fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut out: Vec<MediaSection> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let media = parts.next().unwrap_or_default().to_owned();
            let rejected = parts.next() == Some("0");
            out.push(MediaSection { media, rejected, ..Default::default() });
            continue;
        }
        let Some(section) = out.last_mut() else { continue };
        let Some(attr) = line.strip_prefix("a=") else { continue };
        if matches!(attr, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
            section.direction = Some(attr.to_owned());
        } else if let Some(mid) = attr.strip_prefix("mid:") {
            section.mid = Some(mid.to_owned());
        } else if let Some(msid) = attr.strip_prefix("msid:") {
            if let Some(stream) = msid.split_whitespace().next().filter(|s| *s != "-") {
                section.stream_ids.insert(stream.to_owned());
            }
        } else if let Some(msid) =
            attr.strip_prefix("ssrc:").and_then(|v| v.split_once(" msid:")).map(|(_, v)| v)
        {
            if let Some(stream) = msid.split_whitespace().next().filter(|s| *s != "-") {
                section.stream_ids.insert(stream.to_owned());
            }
        }
    }
    out
}

/// The mid and index of the first m-section (the BUNDLE transport every candidate belongs to).
pub(crate) fn first_mid(sdp: &str) -> Option<(String, u32)> {
    media_sections(sdp).into_iter().next().and_then(|s| s.mid).map(|mid| (mid, 0))
}

/// The `(stream id, kind)` of every track that has an msid in the SDP, whatever its direction.
pub(crate) fn announced_tracks(sdp: &str) -> BTreeSet<(StreamId, MediaKind)> {
    media_sections(sdp)
        .into_iter()
        .filter(|s| !s.rejected)
        .filter_map(|s| s.kind().map(|k| (s, k)))
        .flat_map(|(s, k)| s.stream_ids.into_iter().map(move |id| (StreamId(id), k)))
        .collect()
}

/// The candidates an SDP carries (`a=candidate:` lines), as `candidate:…` strings.
pub(crate) fn candidates(sdp: &str) -> BTreeSet<&str> {
    sdp.lines().filter_map(|l| l.trim().strip_prefix("a=")).filter(|l| l.starts_with("candidate:")).collect()
}

/// A DTLS role settled by an answer (RFC 8842 §5.1): `a=setup:active` is the DTLS client,
/// `a=setup:passive` the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DtlsSetup {
    /// `a=setup:active`.
    Active,
    /// `a=setup:passive`.
    Passive,
}

impl DtlsSetup {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DtlsSetup::Active => "active",
            DtlsSetup::Passive => "passive",
        }
    }

    /// The role of the other end of the association.
    pub(crate) fn opposite(self) -> Self {
        match self {
            DtlsSetup::Active => DtlsSetup::Passive,
            DtlsSetup::Passive => DtlsSetup::Active,
        }
    }
}

/// The role an answer's first `a=setup:` line gives its author; `None` for `actpass`,
/// `holdconn` or no line (not a settled role).
pub(crate) fn answer_setup(sdp: &str) -> Option<DtlsSetup> {
    let value = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=setup:"))?;
    match value.trim() {
        "active" => Some(DtlsSetup::Active),
        "passive" => Some(DtlsSetup::Passive),
        _ => None,
    }
}

/// The SDP with every `a=setup:` line set to `role`, line endings kept; `None` if nothing
/// had to change.
pub(crate) fn with_setup(sdp: &str, role: DtlsSetup) -> Option<String> {
    let wanted = role.as_str();
    let mut changed = false;
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        match body.strip_prefix("a=setup:") {
            Some(value) if value.trim() != wanted => {
                changed = true;
                out.push_str("a=setup:");
                out.push_str(wanted);
                out.push_str(&line[body.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_fmtp_of_the_audio_section() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=fmtp:96 x=1\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n";
        assert_eq!(opus_fmtp(sdp).as_deref(), Some("minptime=10;useinbandfec=1;usedtx=1"));
        assert_eq!(opus_fmtp("m=audio 9 RTP/AVP 111\r\na=rtpmap:111 OPUS/48000/2\r\n").as_deref(), Some(""));
        assert_eq!(opus_fmtp("m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"), None);
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:user1 a1\r\na=sendrecv\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ssrc:5 msid:user1 v1\r\na=sendonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:screen1 v2\r\na=recvonly\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=msid:gone v3\r\n";

    #[test]
    fn reads_sections_mids_and_streams() {
        let s = media_sections(OFFER);
        assert_eq!(s.len(), 4);
        assert_eq!(first_mid(OFFER), Some(("0".to_owned(), 0)));
        assert!(s[3].rejected);
        assert_eq!(s[1].direction.as_deref(), Some("sendonly"));
        assert_eq!(s[3].direction, None);
        let announced = announced_tracks(OFFER);
        assert!(announced.contains(&(StreamId::from("user1"), MediaKind::Audio)));
        assert!(announced.contains(&(StreamId::from("user1"), MediaKind::Video)));
        assert!(announced.contains(&(StreamId::from("screen1"), MediaKind::Video)));
        assert_eq!(announced.len(), 3, "the rejected section announces nothing");
    }

    #[test]
    fn reads_the_candidates_of_an_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=candidate:2 1 udp 1 192.0.2.1 6000 typ srflx raddr 0.0.0.0 rport 0\r\n\
a=end-of-candidates\r\n";
        let found = candidates(sdp);
        assert_eq!(found.len(), 2);
        assert!(found.contains("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"));
        assert!(candidates("v=0\r\na=mid:0\r\n").is_empty());
    }

    #[test]
    fn reads_and_rewrites_the_dtls_setup() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:active\r\na=mid:0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\na=mid:1\r\n";
        assert_eq!(answer_setup(answer), Some(DtlsSetup::Active));
        assert_eq!(answer_setup("v=0\r\na=setup:actpass\r\n"), None);
        assert_eq!(answer_setup("v=0\r\n"), None);
        assert_eq!(DtlsSetup::Active.opposite(), DtlsSetup::Passive);
        assert_eq!(with_setup(answer, DtlsSetup::Active), None, "nothing to change");
        let passive = with_setup(answer, DtlsSetup::Passive).unwrap();
        assert_eq!(passive, answer.replace("a=setup:active", "a=setup:passive"));
        assert_eq!(answer_setup(&passive), Some(DtlsSetup::Passive));
        // Bare `\n` line endings and a last line without one survive.
        assert_eq!(
            with_setup("v=0\na=setup:active", DtlsSetup::Passive).as_deref(),
            Some("v=0\na=setup:passive")
        );
    }
}
