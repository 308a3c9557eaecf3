//! Issue #10: memory held by a `voip_core::VoipMachine` per idle call session and per group member.
//!
//! A counting global allocator (`cap`) gives the live heap. The bytes a machine holds are
//! measured exactly, as the heap it frees when it is dropped (its pending outputs drained
//! first); per-session numbers are that minus the bytes of a machine in the same situation
//! without the session. Measured:
//!
//! * an empty `VoipMachine` (constructed, nothing handled);
//! * 1:1 calls in a DM (the js-sdk capture's 2.6 kB offer SDP as offer and answer, trickled
//!   candidates, `Connected` from a scripted media engine): ringing (caller: invite sent; callee:
//!   ringing), connected (invite, answer, select_answer, candidates), and ended but still
//!   remembered. Each once on fresh machines ("first call ever": includes buffers such as the
//!   output queue growing for the first time) and once on warm machines that already had one
//!   call and forgot it, which is the marginal cost of one more call session;
//! * a MatrixRTC (Element Call, LiveKit) group call joined by this device with 500 and 5000
//!   other members, against the same call with no other member.
//!
//! This lives in voip-webrtc (not in voip-sim's `core` bench) only because a counting global
//! allocator needs a crate dependency and the workspace forbids `unsafe`.
//!
//! Run: `cargo bench -p voip-webrtc --bench core_memory`. Under `cargo test --all-targets` it
//! runs the same measurements with 50 instead of 5000 members as a smoke test.

use std::collections::VecDeque;

use cap::Cap;
use serde_json::{json, Value};
use voip_core::media::{Candidate, ConnectionState, MediaCommand, MediaEvent, SessionDescription};
use voip_core::{
    CallId, CallState, CallType, Command, Config, Event, GroupCallId, Input, LocalDevice, Output, RoomEvent,
    RoomId, SendKind, SendOutcome, Signalling, StateEvent, Timestamp, UserId, VoipMachine,
};

#[global_allocator]
static HEAP: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// The offer SDP matrix-js-sdk 43 sent (the same capture `voip-sim`'s `core` bench uses).
const SDP: &str = "v=0\r\no=- 2678620394632191422 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS 093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9\r\nm=audio 39878 UDP/TLS/RTP/SAVPF 111 63 103 104 9 102 0 8 106 105 13 110 112 113 126\r\nc=IN IP4 127.0.0.2\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1220512899 1 udp 2122260223 127.0.0.2 39878 typ host generation 0 network-id 1 network-cost 50\r\na=candidate:559267639 1 udp 2122202367 ::1 53540 typ host generation 0 network-id 3\r\na=candidate:1510613869 1 udp 2122129151 127.0.0.1 49595 typ host generation 0 network-id 2\r\na=candidate:104624243 1 tcp 1518280447 127.0.0.2 53461 typ host tcptype passive generation 0 network-id 1 network-cost 50\r\na=candidate:1876313031 1 tcp 1518222591 ::1 58865 typ host tcptype passive generation 0 network-id 3\r\na=candidate:344579997 1 tcp 1518149375 127.0.0.1 55279 typ host tcptype passive generation 0 network-id 2\r\na=ice-ufrag:jcW5\r\na=ice-pwd:BcIBnZvVitBK5xtRMUTlj+/l\r\na=ice-options:trickle\r\na=fingerprint:sha-256 56:B3:37:A8:DD:12:36:03:8B:47:C3:78:FA:58:17:9C:F7:2B:26:86:51:0B:90:17:45:12:6C:01:CF:36:96:4F\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9 e0625f74-7264-4179-a305-13c135d796a9\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;usedtx=1;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:103 ISAC/16000\r\na=rtpmap:104 ISAC/32000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:102 ILBC/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:106 CN/32000\r\na=rtpmap:105 CN/16000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:112 telephone-event/32000\r\na=rtpmap:113 telephone-event/16000\r\na=rtpmap:126 telephone-event/8000\r\na=ssrc:521535046 cname:Bao4LYTWE05btMqR\r\na=ssrc:521535046 msid:093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9 e0625f74-7264-4179-a305-13c135d796a9\r\n";

const ROOM: &str = "!dm:example.org";
const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Bytes `voip` holds: the heap freed by dropping it.
fn held(voip: VoipMachine) -> usize {
    let before = HEAP.allocated();
    drop(voip);
    before - HEAP.allocated()
}

fn drain(voip: &mut VoipMachine) -> Vec<Output> {
    std::iter::from_fn(|| voip.poll()).collect()
}

fn alice(seed: u8) -> VoipMachine {
    VoipMachine::new(Config::default(), LocalDevice::new("@alice:example.org", "ALICE"), [seed; 32])
}

fn bob(seed: u8) -> VoipMachine {
    VoipMachine::new(Config::default(), LocalDevice::new("@bob:example.org", "BOB"), [seed ^ 0xff; 32])
}

fn candidate(n: u32) -> Candidate {
    Candidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 ufrag jcW5",
            40000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("jcW5".into()),
    }
}

/// What a media engine would answer (the captured SDP, trickled candidates), plus `Connected`
/// once both descriptions are set.
fn engine(command: &MediaCommand) -> Vec<MediaEvent> {
    let connected = MediaEvent::ConnectionState { state: ConnectionState::Connected };
    match command {
        MediaCommand::CreateOffer { .. } => vec![
            MediaEvent::LocalDescription { description: SessionDescription::offer(SDP) },
            MediaEvent::LocalCandidate { candidate: candidate(1) },
            MediaEvent::LocalCandidate { candidate: candidate(2) },
            MediaEvent::GatheringComplete,
        ],
        MediaCommand::CreateAnswer => vec![
            MediaEvent::LocalDescription { description: SessionDescription::answer(SDP) },
            MediaEvent::LocalCandidate { candidate: candidate(3) },
            MediaEvent::GatheringComplete,
            connected,
        ],
        MediaCommand::SetRemoteDescription { description, .. }
            if description.sdp_type == voip_core::media::SdpType::Answer =>
        {
            vec![connected]
        }
        _ => Vec::new(),
    }
}

/// Two devices in a DM room; room events go to both (the sender's own echo included).
struct Pair {
    nodes: [VoipMachine; 2],
    inbox: [VecDeque<Input>; 2],
    now: Timestamp,
    answer: bool,
}

impl Pair {
    fn new(seed: u8, answer: bool) -> Self {
        Pair { nodes: [alice(seed), bob(seed)], inbox: Default::default(), now: T0, answer }
    }

    /// Delivers everything until both machines are quiet (one millisecond per round).
    fn settle(&mut self) {
        for _ in 0..64 {
            self.now = self.now.plus(1);
            let mut progressed = false;
            for i in 0..2 {
                while let Some(input) = self.inbox[i].pop_front() {
                    self.nodes[i].handle(self.now, input).expect("input");
                    progressed = true;
                }
                for out in drain(&mut self.nodes[i]) {
                    progressed = true;
                    self.output(i, out);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("the two machines did not settle");
    }

    fn output(&mut self, i: usize, out: Output) {
        match out {
            Output::Send(req) => {
                let SendKind::RoomEvent { room_id, event_type, content } = req.kind else { return };
                let text = serde_json::to_string(&content).expect("serialize");
                let ev = RoomEvent {
                    room_id,
                    event_id: None,
                    sender: self.nodes[i].local_device().user_id.clone(),
                    event_type,
                    content: serde_json::from_str::<Value>(&text).expect("parse"),
                    origin_server_ts: self.now,
                    age_ms: Some(0),
                    encrypted: false,
                    sender_device: None,
                };
                self.inbox[i].push_back(Input::SendResult {
                    id: req.id,
                    result: SendOutcome::Sent { event_id: None, delay_id: None },
                });
                self.inbox[i].push_back(Input::RoomEvent(ev.clone()));
                self.inbox[1 - i].push_back(Input::RoomEvent(ev));
            }
            Output::Media { call_id, command } => {
                for event in engine(&command) {
                    self.inbox[i].push_back(Input::Media { call_id: call_id.clone(), event });
                }
            }
            Output::Event(Event::IncomingCall { call_id, .. }) if self.answer => {
                self.inbox[1].push_back(Input::Command(Command::Answer { call_id, call_type: None }));
            }
            _ => {}
        }
    }

    fn place(&mut self) -> CallId {
        let call = self.nodes[0]
            .place_call(
                self.now,
                RoomId::from(ROOM),
                UserId::from("@bob:example.org"),
                None,
                CallType::Voice,
                Signalling::Room,
            )
            .expect("place");
        self.settle();
        call
    }

    fn state(&self, i: usize, call: &CallId) -> Option<CallState> {
        self.nodes[i].call(call).map(|c| c.state)
    }

    /// Alice calls, Bob's device rings (not answered).
    fn ring(&mut self) -> CallId {
        let call = self.place();
        assert_eq!(self.state(1, &call), Some(CallState::Ringing), "bob rings");
        call
    }

    /// Alice calls, Bob answers, both connected.
    fn connect(&mut self) -> CallId {
        let call = self.place();
        for i in 0..2 {
            assert_eq!(self.state(i, &call), Some(CallState::Connected), "connected on {i}");
        }
        call
    }

    fn hang_up(&mut self, call: &CallId) {
        self.nodes[0].hangup(self.now, call.clone()).expect("hangup");
        self.settle();
        assert!(self.nodes.iter().all(|n| n.calls().is_empty()), "ended on both sides");
    }

    /// Two machines that had one connected call, hung up, and forgot it.
    fn warm(seed: u8) -> Self {
        let mut p = Pair::new(seed, true);
        let call = p.connect();
        p.hang_up(&call);
        p.now = p.now.plus(Config::default().ended_call_memory_ms + 1);
        for i in 0..2 {
            p.inbox[i].push_back(Input::Tick);
        }
        p.settle();
        p
    }
}

/// Average of `f(seed)` over `runs` seeds.
fn average(runs: u8, f: impl Fn(u8) -> (usize, usize)) -> (f64, f64) {
    let (a, b) = (1..=runs).map(f).fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
    (a as f64 / f64::from(runs), b as f64 / f64::from(runs))
}

fn member_state(i: usize, ts: u64) -> StateEvent {
    let user = format!("@m{i}:example.org");
    StateEvent {
        room_id: RoomId::from("!big:example.org"),
        event_id: None,
        sender: UserId::from(user.as_str()),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: format!("_{user}_D{i}_m.call"),
        content: json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": format!("D{i}"),
                        "membershipID": format!("{user}:D{i}"), "expires": 14_400_000u64,
                        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
                        "foci_preferred": [{"type": "livekit", "livekit_service_url": "https://sfu.example.org"}]}),
        origin_server_ts: Timestamp(ts),
    }
}

/// This device joined to a MatrixRTC LiveKit call with `n` other members, one minute later.
fn group_call(n: usize) -> VoipMachine {
    let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@me:example.org", "ME"), [9; 32]);
    let room = RoomId::from("!big:example.org");
    voip.handle(
        T0,
        Input::Command(Command::JoinGroupCall {
            room_id: room.clone(),
            call_id: String::new(),
            application: "m.call".into(),
            scope: "m.room".into(),
            dialect: voip_core::MembershipDialect::MatrixRtc,
            focus: voip_core::Focus::Livekit {
                livekit_service_url: Some("https://sfu.example.org".into()),
                livekit_alias: None,
            },
            owned_state_keys: false,
            notify: None,
            encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
        }),
    )
    .expect("join");
    for i in 0..n {
        voip.handle(T0, Input::StateEvent(member_state(i, T0.0))).expect("member");
    }
    let later = T0.plus(60_000);
    voip.handle(later, Input::Tick).expect("tick");
    // Complete every send (membership, delayed leave, media keys), as a homeserver would: what
    // is left is what the machine keeps, not requests in flight.
    for _ in 0..16 {
        let sends: Vec<_> = drain(&mut voip)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(req) => Some(req),
                _ => None,
            })
            .collect();
        if sends.is_empty() {
            break;
        }
        for req in sends {
            let (event_id, delay_id) = match req.kind {
                SendKind::RoomEvent { .. } | SendKind::StateEvent { .. } => (Some("$e".into()), None),
                SendKind::DelayedStateEvent { .. } => (None, Some("d".into())),
                _ => (None, None),
            };
            let result = SendOutcome::Sent { event_id, delay_id };
            voip.handle(later, Input::SendResult { id: req.id, result }).expect("send result");
        }
    }
    assert_eq!(voip.pending_sends(), 0, "no request in flight");
    assert_eq!(voip.group_call(&GroupCallId::room_call(room)).members.len(), n, "members seen");
    voip
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runs = if bench { 20 } else { 3 };
    let sizes: &[usize] = if bench { &[500, 5000] } else { &[50] };

    let empty = average(runs, |s| (held(alice(s)), held(bob(s))));
    println!(
        "bytes held by a voip_core::VoipMachine: heap freed on drop (averaged over {runs} machines), plus \
         {} B inline (size_of::<VoipMachine>())",
        std::mem::size_of::<VoipMachine>()
    );
    println!("| situation | caller (alice) | callee (bob) |");
    println!("|---|---|---|");
    println!("| empty machine | {:.0} B | {:.0} B |", empty.0, empty.1);
    let row = |what: &str, x: (f64, f64), base: (f64, f64)| {
        println!("| {what} | {:.0} B | {:.0} B |", x.0 - base.0, x.1 - base.1);
    };

    // Cold: the first call of a fresh machine (includes buffers growing for the first time).
    let ringing = average(runs, |s| {
        let mut p = Pair::new(s, false);
        p.ring();
        let Pair { nodes: [a, b], .. } = p;
        (held(a), held(b))
    });
    row("first call ever, ringing (minus empty)", ringing, empty);
    let connected = average(runs, |s| {
        let mut p = Pair::new(s, true);
        p.connect();
        let Pair { nodes: [a, b], .. } = p;
        (held(a), held(b))
    });
    row("first call ever, connected (minus empty)", connected, empty);

    // Warm: machines that already had a call and forgot it (ended_call_memory_ms passed).
    let warm = average(runs, |s| {
        let Pair { nodes: [a, b], .. } = Pair::warm(s);
        (held(a), held(b))
    });
    row("idle after one call, forgotten (minus empty)", warm, empty);
    let ringing = average(runs, |s| {
        let mut p = Pair::warm(s);
        p.answer = false;
        p.ring();
        let Pair { nodes: [a, b], .. } = p;
        (held(a), held(b))
    });
    row("**per ringing call** (minus idle after one call)", ringing, warm);
    let connected = average(runs, |s| {
        let mut p = Pair::warm(s);
        p.connect();
        let Pair { nodes: [a, b], .. } = p;
        (held(a), held(b))
    });
    row("**per connected call** (minus idle after one call)", connected, warm);
    let ended = average(runs, |s| {
        let mut p = Pair::warm(s);
        let call = p.connect();
        p.hang_up(&call);
        let Pair { nodes: [a, b], .. } = p;
        (held(a), held(b))
    });
    row("per ended call, still remembered (minus idle after one call)", ended, warm);
    assert!(ringing.1 > warm.1 && connected.0 > warm.0);

    let alone = held(group_call(0));
    println!();
    println!("MatrixRTC (Element Call, LiveKit) group call joined by this device:");
    println!("| other members | bytes held | minus the call with no other member | per member |");
    println!("|---|---|---|---|");
    println!("| 0 | {alone} B | – | – |");
    for &n in sizes {
        let total = held(group_call(n));
        let extra = total - alone;
        println!("| {n} | {total} B | {extra} B | {:.0} B |", extra as f64 / n as f64);
        assert!(extra > 0);
    }
}
