//! Criterion benchmarks of the core:
//! - `call_flow`: one complete 1:1 call (invite → answer → select_answer → candidates →
//!   connected → hangup) between two `VoipMachine` machines, every room event serialized to a JSON
//!   string and parsed back as a homeserver would, with real captured js-sdk SDPs (~2.6 kB);
//! - `candidates_event`: the cost of handling one received `m.call.candidates` event (parse +
//!   route + apply) on a connecting call.
//!
//! Run: `cargo bench -p voip-sim --bench core`.

use std::collections::VecDeque;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use voip_core::media::{Candidate, ConnectionState, MediaCommand, MediaEvent, SessionDescription};
use voip_core::{
    CallId, CallType, Command, Config, Input, LocalDevice, Output, RoomEvent, RoomId, SendKind, SendOutcome,
    Signalling, Timestamp, UserId, VoipMachine,
};

/// The offer SDP matrix-js-sdk 43 sent in `shared/captures/matrix-js-sdk/node/sent/m.call.invite.json`.
const SDP: &str = "v=0\r\no=- 2678620394632191422 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS 093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9\r\nm=audio 39878 UDP/TLS/RTP/SAVPF 111 63 103 104 9 102 0 8 106 105 13 110 112 113 126\r\nc=IN IP4 127.0.0.2\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1220512899 1 udp 2122260223 127.0.0.2 39878 typ host generation 0 network-id 1 network-cost 50\r\na=candidate:559267639 1 udp 2122202367 ::1 53540 typ host generation 0 network-id 3\r\na=candidate:1510613869 1 udp 2122129151 127.0.0.1 49595 typ host generation 0 network-id 2\r\na=candidate:104624243 1 tcp 1518280447 127.0.0.2 53461 typ host tcptype passive generation 0 network-id 1 network-cost 50\r\na=candidate:1876313031 1 tcp 1518222591 ::1 58865 typ host tcptype passive generation 0 network-id 3\r\na=candidate:344579997 1 tcp 1518149375 127.0.0.1 55279 typ host tcptype passive generation 0 network-id 2\r\na=ice-ufrag:jcW5\r\na=ice-pwd:BcIBnZvVitBK5xtRMUTlj+/l\r\na=ice-options:trickle\r\na=fingerprint:sha-256 56:B3:37:A8:DD:12:36:03:8B:47:C3:78:FA:58:17:9C:F7:2B:26:86:51:0B:90:17:45:12:6C:01:CF:36:96:4F\r\na=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendrecv\r\na=msid:093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9 e0625f74-7264-4179-a305-13c135d796a9\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;usedtx=1;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:103 ISAC/16000\r\na=rtpmap:104 ISAC/32000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:102 ILBC/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:106 CN/32000\r\na=rtpmap:105 CN/16000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:112 telephone-event/32000\r\na=rtpmap:113 telephone-event/16000\r\na=rtpmap:126 telephone-event/8000\r\na=ssrc:521535046 cname:Bao4LYTWE05btMqR\r\na=ssrc:521535046 msid:093bddd0-07e4-4a4b-b7b4-ce5c61ba21b9 e0625f74-7264-4179-a305-13c135d796a9\r\n";

const ROOM: &str = "!dm:example.org";

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

/// Answers media commands like an engine would, with the captured SDP and two candidates.
fn engine(command: &MediaCommand) -> Vec<MediaEvent> {
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
        ],
        _ => Vec::new(),
    }
}

struct Node {
    voip: VoipMachine,
    inbox: VecDeque<Input>,
}

/// One complete call; returns the number of room events that crossed the "wire".
fn one_call(seed: u8) -> usize {
    let mut now = Timestamp(1_700_000_000_000);
    let mut nodes = [
        Node {
            voip: VoipMachine::new(
                Config::default(),
                LocalDevice::new("@alice:example.org", "A"),
                [seed; 32],
            ),
            inbox: VecDeque::new(),
        },
        Node {
            voip: VoipMachine::new(
                Config::default(),
                LocalDevice::new("@bob:example.org", "B"),
                [seed ^ 0xff; 32],
            ),
            inbox: VecDeque::new(),
        },
    ];
    let call = nodes[0]
        .voip
        .place_call(
            now,
            RoomId::from(ROOM),
            UserId::from("@bob:example.org"),
            None,
            CallType::Voice,
            Signalling::Room,
        )
        .expect("place");
    let mut wire = 0usize;
    let mut answered = false;
    let mut hung_up = false;
    for _round in 0..64 {
        now = now.plus(1);
        let mut progressed = false;
        for i in 0..2 {
            while let Some(input) = nodes[i].inbox.pop_front() {
                let _ = nodes[i].voip.handle(now, input);
                progressed = true;
            }
            while let Some(out) = nodes[i].voip.poll() {
                progressed = true;
                match out {
                    Output::Send(req) => {
                        let SendKind::RoomEvent { room_id, event_type, content } = req.kind else { continue };
                        // Over the wire and back: serialize, parse.
                        let text = serde_json::to_string(&content).expect("serialize");
                        let parsed: Value = serde_json::from_str(&text).expect("parse");
                        wire += 1;
                        let ev = RoomEvent {
                            room_id,
                            event_id: None,
                            sender: nodes[i].voip.local_device().user_id.clone(),
                            event_type,
                            content: parsed,
                            origin_server_ts: now,
                            age_ms: Some(0),
                            encrypted: false,
                            sender_device: None,
                        };
                        nodes[i].inbox.push_back(Input::SendResult {
                            id: req.id,
                            result: SendOutcome::Sent { event_id: None, delay_id: None },
                        });
                        nodes[i].inbox.push_back(Input::RoomEvent(ev.clone()));
                        nodes[1 - i].inbox.push_back(Input::RoomEvent(ev));
                    }
                    Output::Media { call_id, command } => {
                        for event in engine(&command) {
                            nodes[i].inbox.push_back(Input::Media { call_id: call_id.clone(), event });
                        }
                        let connects = match &command {
                            MediaCommand::SetRemoteDescription { description, .. } => {
                                description.sdp_type == voip_core::media::SdpType::Answer
                            }
                            MediaCommand::CreateAnswer => true,
                            _ => false,
                        };
                        if connects {
                            let event = MediaEvent::ConnectionState { state: ConnectionState::Connected };
                            nodes[i].inbox.push_back(Input::Media { call_id: call_id.clone(), event });
                        }
                    }
                    Output::Event(voip_core::Event::IncomingCall { call_id, .. }) if !answered => {
                        answered = true;
                        nodes[1]
                            .inbox
                            .push_back(Input::Command(Command::Answer { call_id, call_type: None }));
                    }
                    _ => {}
                }
            }
        }
        let connected = nodes
            .iter()
            .all(|n| n.voip.call(&call).is_some_and(|c| c.state == voip_core::CallState::Connected));
        if connected && !hung_up {
            hung_up = true;
            nodes[0].inbox.push_back(Input::Command(Command::Hangup { call_id: call.clone(), reason: None }));
        }
        if !progressed && hung_up {
            break;
        }
    }
    assert!(hung_up, "the call connected");
    assert!(nodes.iter().all(|n| n.voip.calls().is_empty()), "the call ended on both sides");
    wire
}

fn call_flow(c: &mut Criterion) {
    let wire = one_call(1);
    let mut g = c.benchmark_group("call_flow");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("complete_1to1_call_{wire}_events"), |b| {
        let mut seed = 0u8;
        b.iter(|| {
            seed = seed.wrapping_add(1);
            black_box(one_call(seed))
        })
    });
    g.finish();
}

fn candidates_event(c: &mut Criterion) {
    let now = Timestamp(1_700_000_000_000);
    let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@bob:example.org", "B"), [3; 32]);
    let call_id = CallId::from("1700000000000benchmarkcallid");
    let invite = RoomEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: UserId::from("@alice:example.org"),
        event_type: "m.call.invite".into(),
        content: json!({"call_id": call_id, "party_id": "ALICEPARTY", "version": "1", "lifetime": 90000,
                        "offer": {"type": "offer", "sdp": SDP}}),
        origin_server_ts: now,
        age_ms: Some(0),
        encrypted: false,
        sender_device: None,
    };
    voip.handle(now, Input::RoomEvent(invite)).expect("invite");
    while voip.poll().is_some() {}
    let content = json!({"call_id": call_id, "party_id": "ALICEPARTY", "version": "1",
                         "candidates": [candidate(1), candidate(2), candidate(3), Candidate::end_of_candidates()]});
    let text = serde_json::to_string(&content).expect("serialize");
    let mut g = c.benchmark_group("candidates_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_and_apply_4_candidates", |b| {
        b.iter(|| {
            let content: Value = serde_json::from_str(&text).expect("parse");
            let ev = RoomEvent {
                room_id: RoomId::from(ROOM),
                event_id: None,
                sender: UserId::from("@alice:example.org"),
                event_type: "m.call.candidates".into(),
                content,
                origin_server_ts: now,
                age_ms: Some(0),
                encrypted: false,
                sender_device: None,
            };
            voip.handle(now, Input::RoomEvent(ev)).expect("candidates");
            while let Some(o) = voip.poll() {
                black_box(o);
            }
        })
    });
    g.finish();
}

fn member_state(i: usize, ts: u64) -> voip_core::StateEvent {
    let user = format!("@m{i}:example.org");
    voip_core::StateEvent {
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

/// A machine in an Element Call (MatrixRTC, LiveKit) group call with `n` other members.
fn big_call(n: usize) -> (VoipMachine, Timestamp) {
    let now = Timestamp(1_700_000_000_000);
    let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@me:example.org", "ME"), [9; 32]);
    voip.handle(
        now,
        Input::Command(Command::JoinGroupCall {
            room_id: RoomId::from("!big:example.org"),
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
        voip.handle(now, Input::StateEvent(member_state(i, now.0))).expect("member");
    }
    let later = now.plus(60_000);
    voip.handle(later, Input::Tick).expect("tick");
    while voip.poll().is_some() {}
    (voip, later)
}

fn group_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("group");
    g.sample_size(20);
    for n in [500usize, 5000] {
        let (mut voip, now) = big_call(n);
        let join = member_state(n + 1, now.0);
        let leave = voip_core::StateEvent { content: json!({}), ..member_state(n + 1, now.0) };
        let mut outputs = 0usize;
        // One iteration = one member joins and leaves again: two membership changes.
        g.bench_function(format!("member_join_and_leave_in_{n}_member_call"), |b| {
            b.iter(|| {
                voip.handle(now, Input::StateEvent(join.clone())).expect("join");
                voip.handle(now, Input::StateEvent(leave.clone())).expect("leave");
                while let Some(o) = voip.poll() {
                    outputs += 1;
                    black_box(o);
                }
            })
        });
        black_box(outputs);
    }
    let (mut voip, now) = big_call(100);
    let leave = voip_core::StateEvent { content: json!({}), ..member_state(0, now.0) };
    voip.handle(now, Input::StateEvent(leave)).expect("leave");
    voip.handle(now.plus(1), Input::Tick).expect("tick");
    let sends: Vec<_> = std::iter::from_fn(|| voip.poll())
        .filter_map(|o| match o {
            Output::Send(r) => Some(r),
            _ => None,
        })
        .collect();
    let batches = sends.iter().filter(|r| matches!(&r.kind, SendKind::ToDevice { event_type, .. } if event_type.contains("encryption_keys"))).count();
    let messages: usize = sends
        .iter()
        .map(|r| match &r.kind {
            SendKind::ToDevice { messages, .. } => messages.len(),
            _ => 0,
        })
        .sum();
    println!(
        "key rotation after a leave in a 100-member call: {batches} to-device send(s), {messages} messages"
    );
    assert_eq!(batches, 1, "one to-device batch per rotation");
    g.bench_function("key_rotation_after_leave_100_members", |b| {
        b.iter_batched(
            || big_call(100),
            |(mut voip, now)| {
                let leave = voip_core::StateEvent { content: json!({}), ..member_state(0, now.0) };
                voip.handle(now, Input::StateEvent(leave)).expect("leave");
                voip.handle(now.plus(1), Input::Tick).expect("tick");
                while let Some(o) = voip.poll() {
                    black_box(o);
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, call_flow, candidates_event, group_scale);
criterion_main!(benches);
