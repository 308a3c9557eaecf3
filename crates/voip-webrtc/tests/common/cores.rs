//! Two real `voip_core::VoipMachine` cores, each driving its own webrtc-rs engine, with a tiny
//! in-process homeserver routing room events between them (wall-clock time, loopback media).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use voip_core::media::{CallType, MediaCommand};
use voip_core::{
    CallId, CallState, Config, Event, Input, LocalDevice, Output, RoomEvent, RoomId, RoomMember,
    RoomMembership, SendKind, SendOutcome, Timestamp, UserId, VoipMachine,
};
use voip_webrtc::{MediaEventReceiver, WebrtcConfig, WebrtcEngine};

pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// `SendOutcome::Sent` for a room event, built through serde so that fields the core adds
/// later (with serde defaults) do not break this harness.
fn sent(event_id: Option<String>) -> SendOutcome {
    serde_json::from_value(serde_json::json!({ "outcome": "sent", "event_id": event_id }))
        .expect("SendOutcome::Sent deserialises from its wire form")
}

pub struct Device {
    pub name: &'static str,
    pub voip: VoipMachine,
    pub engine: WebrtcEngine,
    pub rx: MediaEventReceiver,
    pub events: Vec<Event>,
    pub commands: Vec<(CallId, MediaCommand)>,
    pub errors: Vec<String>,
}

impl Device {
    pub fn states(&self, call: &CallId) -> Vec<CallState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::StateChanged { call_id, state } if call_id == call => Some(*state),
                _ => None,
            })
            .collect()
    }

    pub fn ended(&self, call: &CallId) -> bool {
        self.events.iter().any(|e| matches!(e, Event::CallEnded { call_id, .. } if call_id == call))
    }
}

pub struct Cores {
    pub room: RoomId,
    pub devs: Vec<Device>,
    queue: VecDeque<(usize, Input)>,
    next_event: u64,
}

impl Cores {
    pub fn new(core: Config, media: impl Fn() -> WebrtcConfig) -> Self {
        super::init_tracing();
        let room = RoomId::from("!room:example.org");
        let mut devs = Vec::new();
        for (i, (name, user, device)) in
            [("alice", "@alice:example.org", "ALICE"), ("bob", "@bob:example.org", "BOB")]
                .into_iter()
                .enumerate()
        {
            let (engine, rx) = WebrtcEngine::with_channel(media());
            let voip = VoipMachine::new(
                core.clone(),
                LocalDevice::new(user, device),
                voip_core::seed_from_u64(i as u64 + 1),
            );
            devs.push(Device {
                name,
                voip,
                engine,
                rx,
                events: Vec::new(),
                commands: Vec::new(),
                errors: Vec::new(),
            });
        }
        let mut cores = Cores { room, devs, queue: VecDeque::new(), next_event: 0 };
        for user in ["@alice:example.org", "@bob:example.org"] {
            for d in 0..2 {
                let m = RoomMember {
                    room_id: cores.room.clone(),
                    user_id: UserId::from(user),
                    membership: RoomMembership::Join,
                };
                cores.queue.push_back((d, Input::RoomMember(m)));
            }
        }
        cores
    }

    pub fn user(&self, d: usize) -> UserId {
        self.devs[d].voip.local_device().user_id.clone()
    }

    /// Handles queued inputs and drains every output (the runtime loop of both devices).
    pub fn settle(&mut self) {
        loop {
            for d in 0..self.devs.len() {
                self.drain(d);
            }
            let Some((d, input)) = self.queue.pop_front() else { break };
            if let Err(e) = self.devs[d].voip.handle(now(), input) {
                self.devs[d].errors.push(e.to_string());
            }
        }
    }

    fn drain(&mut self, d: usize) {
        while let Some(out) = self.devs[d].voip.poll() {
            match out {
                Output::Send(req) => {
                    let event_id = match req.kind {
                        SendKind::RoomEvent { room_id, event_type, content } => {
                            self.next_event += 1;
                            let event_id = format!("$ev{}", self.next_event);
                            let ev = RoomEvent {
                                room_id,
                                event_id: Some(event_id.clone()),
                                sender: self.user(d),
                                event_type,
                                content,
                                origin_server_ts: now(),
                                age_ms: Some(0),
                                encrypted: false,
                                sender_device: None,
                            };
                            // Every member device sees it, the sender included (timeline echo).
                            for to in 0..self.devs.len() {
                                self.queue.push_back((to, Input::RoomEvent(ev.clone())));
                            }
                            Some(event_id)
                        }
                        other => panic!("unexpected send in a room call: {other:?}"),
                    };
                    self.queue.push_back((d, Input::SendResult { id: req.id, result: sent(event_id) }));
                }
                Output::Media { call_id, command } => {
                    self.devs[d].commands.push((call_id.clone(), command.clone()));
                    self.devs[d].engine.execute(call_id, command);
                }
                Output::Event(event) => {
                    self.devs[d].events.push(event);
                }
                other => panic!("unexpected output: {other:?}"),
            }
        }
    }

    /// Runs both devices (media events, timers) until `cond` holds or `limit` passes.
    pub async fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Cores) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.settle();
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let (left, right) = self.devs.split_at_mut(1);
            tokio::select! {
                Some((call_id, event)) = left[0].rx.recv() => self.queue.push_back((0, Input::Media { call_id, event })),
                Some((call_id, event)) = right[0].rx.recv() => self.queue.push_back((1, Input::Media { call_id, event })),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let t = now();
            for d in 0..self.devs.len() {
                if self.devs[d].voip.next_deadline().is_some_and(|dl| dl.at <= t) {
                    self.queue.push_back((d, Input::Tick));
                }
            }
        }
    }

    /// Alice calls Bob, Bob answers; waits until both cores say Connected.
    pub async fn call_and_answer(&mut self, call_type: CallType) -> CallId {
        self.settle();
        let (room, bob) = (self.room.clone(), self.user(1));
        let call = self.devs[0]
            .voip
            .place_call(now(), room, bob, None, call_type, Default::default())
            .expect("place call");
        let rang = self
            .run_until(Duration::from_secs(10), |c| {
                c.devs[1]
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::IncomingCall { call_id, .. } if *call_id == call))
            })
            .await;
        assert!(rang, "bob's device did not ring");
        self.devs[1].voip.answer(now(), call.clone(), None).expect("answer");
        let connected = self
            .run_until(Duration::from_secs(15), |c| {
                c.devs.iter().all(|d| d.states(&call).contains(&CallState::Connected))
            })
            .await;
        assert!(
            connected,
            "not connected: alice {:?} bob {:?} errors {:?} {:?}",
            self.devs[0].states(&call),
            self.devs[1].states(&call),
            self.devs[0].errors,
            self.devs[1].errors
        );
        call
    }

    pub fn command(&mut self, d: usize, command: voip_core::Command) {
        self.queue.push_back((d, Input::Command(command)));
        self.settle();
    }

    pub fn remote_packets(&self, d: usize, call: &CallId, kind: voip_core::media::MediaKind) -> u64 {
        self.devs[d]
            .engine
            .remote_tracks(call)
            .map(|ts| ts.iter().filter(|t| t.kind == kind && !t.ended).map(|t| t.stats.packets).sum())
            .unwrap_or(0)
    }

    /// Hangs up from `d`, waits for both cores to end the call and both engines to release
    /// every task and socket.
    pub async fn hang_up_and_check_no_leaks(&mut self, d: usize, call: &CallId) {
        for dev in &self.devs {
            assert!(
                dev.engine.resources().udp_sockets > 0,
                "{}: sockets were open during the call",
                dev.name
            );
        }
        self.devs[d].voip.hangup(now(), call.clone()).expect("hangup");
        let ended =
            self.run_until(Duration::from_secs(10), |c| c.devs.iter().all(|dev| dev.ended(call))).await;
        assert!(ended, "call did not end on both sides");
        for dev in &self.devs {
            assert!(
                dev.commands.iter().any(|(c, cmd)| c == call && *cmd == MediaCommand::Close),
                "{}: core never closed the media",
                dev.name
            );
            dev.engine.wait_closed().await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while dev.engine.resources() != Default::default() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(dev.engine.resources(), Default::default(), "{} leaked tasks or sockets", dev.name);
        }
    }
}
