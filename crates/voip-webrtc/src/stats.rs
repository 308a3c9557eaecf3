//! A per-call statistics summary built from webrtc-rs's `getStats()` report.

use std::time::Duration;

use voip_core::media::MediaKind;
use webrtc::peer_connection::{RTCStatsReport, RTCStatsReportEntry};

/// One side of a candidate pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CandidateSummary {
    /// IP address (or hostname).
    pub address: String,
    /// Port.
    pub port: u16,
    /// `host`, `srflx`, `prflx` or `relay`.
    pub candidate_type: String,
    /// `udp` or `tcp`.
    pub protocol: String,
}

/// The candidate pair media flows over.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectedPair {
    /// Our candidate, when the report lets us find it.
    pub local: Option<CandidateSummary>,
    /// The remote candidate, when the report lets us find it (webrtc-rs does not always keep
    /// the remote candidate of a nominated pair in the report).
    pub remote: Option<CandidateSummary>,
    /// Whether the pair is nominated.
    pub nominated: bool,
    /// Latest STUN round-trip time on the pair.
    pub current_round_trip_time: Option<Duration>,
}

/// One RTP stream (an SSRC) of the call.
#[derive(Clone, Debug, PartialEq)]
pub struct RtpStreamSummary {
    /// Audio or video.
    pub kind: MediaKind,
    /// SSRC.
    pub ssrc: u32,
    /// `true` for what we send, `false` for what we receive.
    pub outbound: bool,
    /// Packets sent or received.
    pub packets: u64,
    /// Payload bytes sent or received.
    pub bytes: u64,
}

/// Media statistics of one call, summed over its RTP streams.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallStats {
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTP payload bytes sent.
    pub bytes_sent: u64,
    /// RTP packets received.
    pub packets_received: u64,
    /// RTP payload bytes received.
    pub bytes_received: u64,
    /// Packets lost as computed from received sequence numbers (sum over inbound streams).
    pub packets_lost: i64,
    /// Largest interarrival jitter of the inbound streams.
    pub jitter: Option<Duration>,
    /// Round-trip time: the selected pair's STUN RTT, else the RTCP-based one.
    pub round_trip_time: Option<Duration>,
    /// The selected candidate pair.
    pub selected_pair: Option<SelectedPair>,
    /// Every RTP stream.
    pub streams: Vec<RtpStreamSummary>,
}

fn kind(k: rtc::rtp_transceiver::rtp_sender::RtpCodecKind) -> Option<MediaKind> {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    match k {
        RtpCodecKind::Audio => Some(MediaKind::Audio),
        RtpCodecKind::Video => Some(MediaKind::Video),
        _ => None,
    }
}

fn seconds(s: f64) -> Option<Duration> {
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

/// Finds a candidate entry: pairs reference `candidate:<id>`, the entries are stored as
/// `RTCLocalIceCandidate_candidate:<id>` / `RTCRemoteIceCandidate_candidate:<id>`.
fn candidate(report: &RTCStatsReport, id: &str) -> Option<CandidateSummary> {
    if id.is_empty() {
        return None;
    }
    let entry = report.get(id).or_else(|| {
        report.iter().find(|e| {
            matches!(e, RTCStatsReportEntry::LocalCandidate(_) | RTCStatsReportEntry::RemoteCandidate(_))
                && e.id().strip_suffix(id).is_some_and(|prefix| prefix.ends_with('_'))
        })
    })?;
    match entry {
        RTCStatsReportEntry::LocalCandidate(c) | RTCStatsReportEntry::RemoteCandidate(c) => {
            Some(CandidateSummary {
                address: c.address.clone().unwrap_or_default(),
                port: c.port,
                candidate_type: c.candidate_type.to_string(),
                protocol: c.protocol.clone(),
            })
        }
        _ => None,
    }
}

impl CallStats {
    /// Summarises a full (`StatsSelector::None`) report.
    pub fn from_report(report: &RTCStatsReport) -> CallStats {
        let mut stats = CallStats::default();
        let mut selected_id = None;
        let mut rtcp_rtt = None;
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::InboundRtp(s) => {
                    let r = &s.received_rtp_stream_stats;
                    stats.packets_received += r.packets_received;
                    stats.bytes_received += s.bytes_received;
                    stats.packets_lost += r.packets_lost;
                    // rtc 0.21.1 stores the RTCP receiver-report jitter as is, in RTP timestamp
                    // units (its doc says seconds): divide by the codec's clock rate.
                    let clock_rate = match report.get(&r.rtp_stream_stats.codec_id) {
                        Some(RTCStatsReportEntry::Codec(c)) if c.clock_rate > 0 => f64::from(c.clock_rate),
                        _ => match r.rtp_stream_stats.kind {
                            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video => 90_000.0,
                            _ => 48_000.0,
                        },
                    };
                    if let Some(j) = seconds(r.jitter / clock_rate) {
                        stats.jitter = Some(stats.jitter.map_or(j, |cur| cur.max(j)));
                    }
                    if let Some(k) = kind(r.rtp_stream_stats.kind) {
                        stats.streams.push(RtpStreamSummary {
                            kind: k,
                            ssrc: r.rtp_stream_stats.ssrc,
                            outbound: false,
                            packets: r.packets_received,
                            bytes: s.bytes_received,
                        });
                    }
                }
                RTCStatsReportEntry::OutboundRtp(s) => {
                    let r = &s.sent_rtp_stream_stats;
                    stats.packets_sent += r.packets_sent;
                    stats.bytes_sent += r.bytes_sent;
                    if let Some(k) = kind(r.rtp_stream_stats.kind) {
                        stats.streams.push(RtpStreamSummary {
                            kind: k,
                            ssrc: r.rtp_stream_stats.ssrc,
                            outbound: true,
                            packets: r.packets_sent,
                            bytes: r.bytes_sent,
                        });
                    }
                }
                RTCStatsReportEntry::RemoteInboundRtp(s) => {
                    if let Some(rtt) = seconds(s.round_trip_time) {
                        rtcp_rtt = Some(rtt);
                    }
                }
                RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
                    selected_id = Some(t.selected_candidate_pair_id.clone());
                }
                _ => {}
            }
        }
        let pair = selected_id
            .as_deref()
            .and_then(|id| match report.get(id) {
                Some(RTCStatsReportEntry::IceCandidatePair(p)) => Some(p),
                _ => None,
            })
            .or_else(|| {
                report.iter().find_map(|e| match e {
                    RTCStatsReportEntry::IceCandidatePair(p) if p.nominated => Some(p),
                    _ => None,
                })
            });
        if let Some(p) = pair {
            let current_round_trip_time = seconds(p.current_round_trip_time);
            stats.selected_pair = Some(SelectedPair {
                local: candidate(report, &p.local_candidate_id),
                remote: candidate(report, &p.remote_candidate_id),
                nominated: p.nominated,
                current_round_trip_time,
            });
        }
        stats.round_trip_time =
            stats.selected_pair.as_ref().and_then(|p| p.current_round_trip_time).or(rtcp_rtt);
        stats.streams.sort_by_key(|s| (s.outbound, s.kind, s.ssrc));
        stats
    }
}
