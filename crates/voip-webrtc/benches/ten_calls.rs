//! Issue #5: memory and CPU per call with 10 simultaneous calls in one process.
//!
//! Two loopback engines in this process (`WebrtcConfig::loopback()`, bundled Opus tone and VP8
//! clip): engine A places `N` calls to engine B, so every call is two real webrtc-rs peer
//! connections (both ends of the call) with media flowing both ways. Measured:
//!
//! * live heap bytes, with a counting global allocator (`cap`): after the calls are set up and
//!   media flows, and again at the end of the CPU window, minus the heap before the first call;
//! * resident set size (`VmRSS` of `/proc/self/status`), same points;
//! * CPU time (user + system, `/proc/self/stat`, 10 ms ticks) over a fixed window of media
//!   flowing on all calls, divided by calls and by the window: the share of one core per call;
//! * tasks and UDP sockets per call (`WebrtcEngine::resources`), and what is left after hangup.
//!
//! Run: `cargo bench -p voip-webrtc --bench ten_calls` (10 voice calls, then 10 video calls, a
//! 10 s window each; `-- voice` or `-- video` for one kind per process, which keeps the RSS
//! numbers of the second kind from reusing pages the first one freed). Under `cargo test --all-targets` (no `--bench` argument) it runs a 2-call,
//! 1 s smoke version with the same checks.

use std::collections::HashMap;
use std::time::Duration;

use cap::Cap;
use tokio::time::Instant;
use voip_core::media::{
    CallType, Candidate, MediaCommand, MediaEvent, MediaKind, SessionDescription, StreamPurpose,
};
use voip_core::{CallId, StreamId};
use voip_webrtc::{MediaEventReceiver, WebrtcConfig, WebrtcEngine};

#[global_allocator]
static HEAP: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// Linux `USER_HZ`: the unit of `utime`/`stime` in `/proc/self/stat` (100 on every Linux ABI).
const TICK: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    heap: usize,
    rss_kib: u64,
    cpu_ticks: u64,
}

fn snapshot() -> Snapshot {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<u64>().expect("tick count");
    Snapshot { heap: HEAP.allocated(), rss_kib, cpu_ticks: ticks(14) + ticks(15) }
}

/// A and B, with candidates of every call trickled to the other side as they come.
struct Rig {
    a: WebrtcEngine,
    b: WebrtcEngine,
    rx_a: MediaEventReceiver,
    rx_b: MediaEventReceiver,
    descriptions: HashMap<(bool, CallId), SessionDescription>,
    failures: Vec<(CallId, MediaEvent)>,
}

impl Rig {
    fn new() -> Self {
        let (a, rx_a) = WebrtcEngine::with_channel(WebrtcConfig::loopback());
        let (b, rx_b) = WebrtcEngine::with_channel(WebrtcConfig::loopback());
        Rig { a, b, rx_a, rx_b, descriptions: HashMap::new(), failures: Vec::new() }
    }

    fn route(&mut self, from_a: bool, call: CallId, event: MediaEvent) {
        let to = if from_a { &self.b } else { &self.a };
        match event {
            MediaEvent::LocalCandidate { candidate } => {
                to.execute(call, MediaCommand::AddRemoteCandidates { candidates: vec![candidate] });
            }
            MediaEvent::GatheringComplete => to.execute(
                call,
                MediaCommand::AddRemoteCandidates { candidates: vec![Candidate::end_of_candidates()] },
            ),
            MediaEvent::LocalDescription { description } => {
                self.descriptions.insert((from_a, call), description);
            }
            e @ MediaEvent::Failed { .. } => self.failures.push((call, e)),
            _ => {}
        }
    }

    async fn pump_until(&mut self, limit: Duration, mut cond: impl FnMut(&Rig) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                Some((c, ev)) = self.rx_a.recv() => self.route(true, c, ev),
                Some((c, ev)) = self.rx_b.recv() => self.route(false, c, ev),
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn description(&mut self, of_a: bool, call: &CallId) -> SessionDescription {
        let key = (of_a, call.clone());
        let ok = self.pump_until(Duration::from_secs(20), |r| r.descriptions.contains_key(&key)).await;
        assert!(ok, "no local description for {call}");
        self.descriptions.remove(&key).expect("checked above")
    }

    /// A calls B on `call` with usermedia streams both ways; returns once both descriptions are
    /// set (media starts by itself).
    async fn start_call(&mut self, call: &CallId, call_type: CallType) {
        let stream = |id: &str| MediaCommand::AddLocalStream {
            stream_id: StreamId::from(id),
            purpose: StreamPurpose::Usermedia,
            audio: true,
            video: call_type == CallType::Video,
        };
        self.a.execute(call.clone(), MediaCommand::CreatePeer { call_type });
        self.a.execute(call.clone(), stream("a-user"));
        self.b.execute(call.clone(), MediaCommand::CreatePeer { call_type });
        self.a.execute(call.clone(), MediaCommand::CreateOffer { ice_restart: false });
        let offer = self.description(true, call).await;
        self.b.execute(call.clone(), MediaCommand::set_remote_description(offer));
        self.b.execute(call.clone(), stream("b-user"));
        self.b.execute(call.clone(), MediaCommand::CreateAnswer);
        let answer = self.description(false, call).await;
        self.a.execute(call.clone(), MediaCommand::set_remote_description(answer));
    }

    /// Packets received on the live remote tracks of `kind` of `call`, per side (A, B).
    fn received(&self, call: &CallId, kind: MediaKind) -> [u64; 2] {
        [&self.a, &self.b].map(|e| {
            e.remote_tracks(call)
                .map(|ts| ts.iter().filter(|t| t.kind == kind && !t.ended).map(|t| t.stats.packets).sum())
                .unwrap_or(0)
        })
    }

    fn total_received(&self, calls: &[CallId]) -> u64 {
        calls
            .iter()
            .flat_map(|c| [MediaKind::Audio, MediaKind::Video].map(|k| self.received(c, k)))
            .flatten()
            .sum()
    }
}

struct Report {
    heap_flowing: f64,
    heap_after_window: f64,
    rss_kib: f64,
    cpu_percent: f64,
    packets_per_s: f64,
    tasks: f64,
    sockets: f64,
    heap_left_after_hangup: i64,
}

async fn run(call_type: CallType, n: usize, window: Duration) -> Report {
    let mut rig = Rig::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = snapshot();
    let calls: Vec<CallId> = (0..n).map(|i| CallId::from(format!("call-{i}").as_str())).collect();
    for call in &calls {
        rig.start_call(call, call_type).await;
    }
    let kinds: &[MediaKind] = match call_type {
        CallType::Voice => &[MediaKind::Audio],
        CallType::Video => &[MediaKind::Audio, MediaKind::Video],
    };
    // Flowing: every remote track of every call has received at least 25 packets.
    let flowing = rig
        .pump_until(Duration::from_secs(60), |r| {
            calls.iter().all(|c| kinds.iter().all(|k| r.received(c, *k).iter().all(|p| *p >= 25)))
        })
        .await;
    assert!(flowing, "media did not flow on all {n} calls; failures {:?}", rig.failures);
    let resources = [rig.a.resources(), rig.b.resources()];
    let setup = snapshot();
    let packets_before = rig.total_received(&calls);
    let started = Instant::now();
    rig.pump_until(window, |_| false).await;
    let elapsed = started.elapsed();
    let after = snapshot();
    let packets = rig.total_received(&calls) - packets_before;
    assert!(rig.failures.is_empty(), "{:?}", rig.failures);
    assert!(packets > 0, "no media during the window");

    rig.a.shutdown().await;
    rig.b.shutdown().await;
    for e in [&rig.a, &rig.b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.resources() != Default::default() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(e.resources(), Default::default(), "tasks or sockets left after hangup");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = snapshot();

    let per_call = |bytes: usize| (bytes.saturating_sub(base.heap)) as f64 / n as f64;
    Report {
        heap_flowing: per_call(setup.heap),
        heap_after_window: per_call(after.heap),
        rss_kib: after.rss_kib.saturating_sub(base.rss_kib) as f64 / n as f64,
        cpu_percent: (after.cpu_ticks - setup.cpu_ticks) as f64 * TICK.as_secs_f64() * 100.0
            / elapsed.as_secs_f64()
            / n as f64,
        packets_per_s: packets as f64 / elapsed.as_secs_f64() / n as f64,
        tasks: (resources[0].tasks + resources[1].tasks) as f64 / n as f64,
        sockets: (resources[0].udp_sockets + resources[1].udp_sockets) as f64 / n as f64,
        heap_left_after_hangup: end.heap as i64 - base.heap as i64,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, window) = if bench { (10, Duration::from_secs(10)) } else { (2, Duration::from_secs(1)) };
    // Load the bundled clips now, so that their one-time decode is not counted as per-call heap.
    voip_webrtc::ToneSource::new().expect("bundled tone");
    voip_webrtc::ClipSource::new().expect("bundled clip");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "{n} simultaneous calls in one process (both ends of each call here: 2 peer connections), \
         loopback, {}s CPU window; per call:",
        window.as_secs()
    );
    println!(
        "| call | heap, media flowing | heap, after window | RSS | CPU (% of one core) | RTP packets received/s | tasks | UDP sockets | heap left after hangup (all calls) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // `-- voice` / `-- video` runs one kind only (a fresh process per kind gives clean RSS).
    let only: Vec<String> = std::env::args().filter(|a| a == "voice" || a == "video").collect();
    for (name, call_type) in [("voice", CallType::Voice), ("video", CallType::Video)] {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let r = rt.block_on(run(call_type, n, window));
        println!(
            "| {name} | {:.0} KiB | {:.0} KiB | {:.0} KiB | {:.2} % | {:.0} | {:.0} | {:.0} | {} KiB |",
            r.heap_flowing / 1024.0,
            r.heap_after_window / 1024.0,
            r.rss_kib,
            r.cpu_percent,
            r.packets_per_s,
            r.tasks,
            r.sockets,
            r.heap_left_after_hangup / 1024
        );
        assert!(r.heap_flowing > 0.0 && r.tasks >= 2.0 && r.sockets >= 2.0);
    }
}
