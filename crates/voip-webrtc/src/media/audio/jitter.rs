//! An adaptive jitter buffer for one audio RTP stream: reorders by sequence number, holds
//! packets for a target delay that follows the measured jitter (bounded), and tells the
//! playout clock what to play each frame: a packet, the FEC copy of a lost packet carried by
//! its successor, or concealment.
//!
//! Sans-IO: arrival and playout times are passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::packet_samples;
use super::SAMPLE_RATE;

/// Bounds of the adaptive target delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitterConfig {
    /// Lowest target delay.
    pub min_delay: Duration,
    /// Highest target delay (packets later than this are concealed and dropped).
    pub max_delay: Duration,
    /// Target before any jitter was measured.
    pub initial_delay: Duration,
}

impl Default for JitterConfig {
    /// 20 ms to 300 ms, starting at 60 ms.
    fn default() -> Self {
        JitterConfig {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(300),
            initial_delay: Duration::from_millis(60),
        }
    }
}

/// What to play for the next frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playout {
    /// Nothing received yet (or the buffer is still filling to its target): play nothing.
    Waiting,
    /// Decode this packet.
    Packet {
        /// RTP timestamp of the packet.
        rtp_timestamp: u32,
        /// Opus packet.
        payload: Bytes,
    },
    /// The packet for this frame was lost; its successor arrived: decode the successor's FEC
    /// data for `samples` samples per channel.
    Fec {
        /// RTP timestamp of the lost frame.
        rtp_timestamp: u32,
        /// The successor packet.
        next_payload: Bytes,
        /// Samples per channel to recover.
        samples: usize,
    },
    /// Nothing to decode for this frame: conceal `samples` samples per channel.
    Conceal {
        /// Samples per channel.
        samples: usize,
    },
}

/// Counters of a jitter buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets inserted.
    pub received: u64,
    /// Packets that arrived after their frame was played (dropped).
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets played.
    pub played: u64,
    /// Frames recovered from FEC.
    pub fec_recovered: u64,
    /// Frames concealed (loss, or an empty buffer).
    pub concealed: u64,
    /// Packets skipped to shrink the delay back to the target.
    pub skipped: u64,
    /// Jitter estimate (RFC 3550 §6.4.1 interarrival jitter), microseconds.
    pub jitter_us: u64,
    /// Current target delay, milliseconds.
    pub target_ms: u64,
}

struct Entry {
    rtp_timestamp: u32,
    payload: Bytes,
}

/// How many recent transit times the target follows.
const WINDOW: usize = 200;
/// A gap longer than this many frames resynchronises instead of concealing frame by frame.
const MAX_GAP_FRAMES: u64 = 25;

/// The jitter buffer of one remote audio track.
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<u64, Entry>,
    /// Highest extended sequence number seen.
    highest: Option<u64>,
    /// Next extended sequence number to play; `None` until playout starts.
    next: Option<u64>,
    /// First arrival while waiting to start.
    first_arrival: Option<Instant>,
    frame_samples: usize,
    /// Recent transit times (arrival − RTP time), microseconds, with the window's minimum.
    transits: VecDeque<i64>,
    last_transit: Option<i64>,
    jitter_us: f64,
    origin: Option<Instant>,
    target: Duration,
    stats: JitterStats,
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("buffered", &self.packets.len())
            .field("target", &self.target)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        JitterBuffer {
            config,
            packets: BTreeMap::new(),
            highest: None,
            next: None,
            first_arrival: None,
            frame_samples: 960,
            transits: VecDeque::new(),
            last_transit: None,
            jitter_us: 0.0,
            origin: None,
            target: config.initial_delay.clamp(config.min_delay, config.max_delay),
            stats: JitterStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_us: self.jitter_us as u64,
            target_ms: self.target.as_millis() as u64,
            ..self.stats
        }
    }

    /// The current target delay.
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Audio buffered ahead of the playout point.
    pub fn buffered(&self) -> Duration {
        let frames = match (self.next, self.packets.keys().next_back()) {
            (Some(next), Some(&last)) if last >= next => last - next + 1,
            (None, _) => self.packets.len() as u64,
            _ => 0,
        };
        frame_duration(self.frame_samples) * frames as u32
    }

    fn extend(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else { return u64::from(seq) + (1 << 16) };
        let cycle = highest & !0xffff;
        let candidates = [cycle.wrapping_sub(1 << 16), cycle, cycle + (1 << 16)];
        candidates
            .into_iter()
            .map(|c| c.wrapping_add(u64::from(seq)))
            .min_by_key(|&c| c.abs_diff(highest))
            .unwrap_or(u64::from(seq))
    }

    /// A packet arrived at `arrival`.
    pub fn insert(&mut self, sequence_number: u16, rtp_timestamp: u32, payload: Bytes, arrival: Instant) {
        self.stats.received += 1;
        let seq = self.extend(sequence_number);
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        if let Some(samples) = packet_samples(&payload).filter(|&s| s > 0) {
            self.frame_samples = samples;
        }
        self.measure(rtp_timestamp, arrival);
        if self.next.is_some_and(|next| seq < next) {
            self.stats.late += 1;
            return;
        }
        if self.packets.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.first_arrival.get_or_insert(arrival);
        self.packets.insert(seq, Entry { rtp_timestamp, payload });
    }

    /// Jitter (RFC 3550) and the target delay from the spread of recent transit times.
    fn measure(&mut self, rtp_timestamp: u32, arrival: Instant) {
        let origin = *self.origin.get_or_insert(arrival);
        let arrival_us = arrival.saturating_duration_since(origin).as_micros() as i64;
        let media_us = i64::from(rtp_timestamp) * 1_000_000 / i64::from(SAMPLE_RATE);
        let transit = arrival_us - media_us;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            if d < 1_000_000.0 {
                self.jitter_us += (d - self.jitter_us) / 16.0;
            }
        }
        self.last_transit = Some(transit);
        self.transits.push_back(transit);
        if self.transits.len() > WINDOW {
            self.transits.pop_front();
        }
        // Target: the 95th percentile of how much later than the fastest packet a packet is,
        // plus one frame of playout granularity.
        let min = self.transits.iter().copied().min().unwrap_or(transit);
        let mut late: Vec<i64> = self.transits.iter().map(|t| t - min).collect();
        late.sort_unstable();
        let p95 = late[(late.len() * 95 / 100).min(late.len() - 1)];
        if self.transits.len() >= 10 {
            let wanted = Duration::from_micros(p95.max(0) as u64) + frame_duration(self.frame_samples);
            self.target = wanted.clamp(self.config.min_delay, self.config.max_delay);
        }
    }

    /// What to play for the frame due at `now` (called once per frame by the playout clock).
    pub fn pop(&mut self, now: Instant) -> Playout {
        let Some(next) = self.next else {
            // Start once the first packet has waited for the target delay.
            let Some(first) = self.first_arrival else { return Playout::Waiting };
            if now.saturating_duration_since(first) < self.target {
                return Playout::Waiting;
            }
            let Some(&start) = self.packets.keys().next() else { return Playout::Waiting };
            self.next = Some(start);
            return self.pop(now);
        };
        let samples = self.frame_samples;
        if let Some(e) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            self.stats.played += 1;
            // Too much queued (the jitter went down): skip a packet to come back to the target.
            if self.buffered() > self.target + 2 * frame_duration(samples) {
                if let Some(&after) = self.packets.keys().next() {
                    if after == next + 1 {
                        self.packets.remove(&after);
                        self.next = Some(after + 1);
                        self.stats.skipped += 1;
                    }
                }
            }
            return Playout::Packet { rtp_timestamp: e.rtp_timestamp, payload: e.payload };
        }
        self.stats.concealed += 1;
        let Some((&first, e)) = self.packets.iter().next() else {
            // Empty: the next packet is late (or the sender paused). Conceal without advancing,
            // so a late packet still plays: the delay grows by one frame.
            return Playout::Conceal { samples };
        };
        if first == next + 1 {
            self.stats.concealed -= 1;
            self.stats.fec_recovered += 1;
            self.next = Some(next + 1);
            let lost_ts = e.rtp_timestamp.wrapping_sub(samples as u32);
            return Playout::Fec { rtp_timestamp: lost_ts, next_payload: e.payload.clone(), samples };
        }
        if first - next > MAX_GAP_FRAMES {
            self.next = Some(first);
        } else {
            self.next = Some(next + 1);
        }
        Playout::Conceal { samples }
    }
}

/// Duration of `samples` samples at 48 kHz.
fn frame_duration(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A CELT 20 ms mono packet TOC (config 31) plus payload bytes.
    fn pkt(n: u8) -> Bytes {
        Bytes::from(vec![0xf8, n, n])
    }

    #[test]
    fn reorders_and_waits_for_the_target() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.pop(t0), Playout::Waiting);
        // 2, 1, 3 arrive out of order.
        jb.insert(2, 1920, pkt(2), t0);
        jb.insert(1, 960, pkt(1), t0 + Duration::from_millis(1));
        jb.insert(3, 2880, pkt(3), t0 + Duration::from_millis(2));
        assert_eq!(jb.pop(t0 + Duration::from_millis(30)), Playout::Waiting, "before the 60 ms target");
        let played: Vec<Playout> = (0..3).map(|i| jb.pop(t0 + Duration::from_millis(60 + 20 * i))).collect();
        assert_eq!(
            played,
            vec![
                Playout::Packet { rtp_timestamp: 960, payload: pkt(1) },
                Playout::Packet { rtp_timestamp: 1920, payload: pkt(2) },
                Playout::Packet { rtp_timestamp: 2880, payload: pkt(3) },
            ]
        );
        jb.insert(2, 1920, pkt(2), t0 + Duration::from_millis(120));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn loss_uses_fec_of_the_successor_then_conceals() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for s in [10u16, 12, 15] {
            jb.insert(s, u32::from(s) * 960, pkt(s as u8), t0);
        }
        let t = t0 + Duration::from_millis(100);
        assert!(matches!(jb.pop(t), Playout::Packet { rtp_timestamp: 9600, .. }));
        assert_eq!(
            jb.pop(t),
            Playout::Fec { rtp_timestamp: 11 * 960, next_payload: pkt(12), samples: 960 },
            "11 lost, 12 has its FEC"
        );
        assert!(matches!(jb.pop(t), Playout::Packet { rtp_timestamp: 11_520, .. }));
        assert_eq!(jb.pop(t), Playout::Conceal { samples: 960 }, "13 lost, 14 missing too");
        assert!(matches!(jb.pop(t), Playout::Fec { .. }), "14 from 15's FEC");
        assert!(matches!(jb.pop(t), Playout::Packet { rtp_timestamp: 14_400, .. }));
        // Empty: conceal without advancing, so a late 16 still plays.
        assert_eq!(jb.pop(t), Playout::Conceal { samples: 960 });
        jb.insert(16, 16 * 960, pkt(16), t);
        assert!(matches!(jb.pop(t), Playout::Packet { rtp_timestamp: 15_360, .. }));
        let s = jb.stats();
        assert_eq!((s.played, s.fec_recovered, s.concealed), (4, 2, 2));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for (i, s) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            jb.insert(s, i as u32 * 960, pkt(i as u8), t0);
        }
        let out: Vec<_> = (0..4).map(|_| jb.pop(t0 + Duration::from_millis(100))).collect();
        for (i, p) in out.iter().enumerate() {
            assert_eq!(p, &Playout::Packet { rtp_timestamp: i as u32 * 960, payload: pkt(i as u8) });
        }
    }

    #[test]
    fn target_follows_jitter_within_bounds() {
        let t0 = Instant::now();
        let config = JitterConfig::default();
        let mut steady = JitterBuffer::new(config);
        let mut jittery = JitterBuffer::new(config);
        let mut wild = JitterBuffer::new(config);
        for i in 0..300u32 {
            let send = Duration::from_millis(20 * u64::from(i));
            // Deterministic pseudo-random delay in [0, 60) ms and [0, 900) ms.
            let r = (i.wrapping_mul(2_654_435_761) >> 16) % 1000;
            steady.insert(i as u16, i * 960, pkt(0), t0 + send);
            jittery.insert(i as u16, i * 960, pkt(0), t0 + send + Duration::from_micros(u64::from(r) * 60));
            wild.insert(i as u16, i * 960, pkt(0), t0 + send + Duration::from_micros(u64::from(r) * 900));
        }
        assert!(steady.target_delay() <= Duration::from_millis(25), "{:?}", steady.target_delay());
        let j = jittery.target_delay();
        assert!(j >= Duration::from_millis(60) && j <= Duration::from_millis(85), "{j:?}");
        assert_eq!(wild.target_delay(), config.max_delay);
        assert!(jittery.stats().jitter_us > 10_000);
    }
}
