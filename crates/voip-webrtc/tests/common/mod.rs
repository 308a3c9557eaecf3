//! Two engines on loopback, signalled directly (the test plays the core's role).
#![allow(dead_code)]

use std::time::Duration;

use tokio::time::Instant;
use voip_core::media::{
    CallType, Candidate, ConnectionState, MediaCommand, MediaEvent, MediaKind, SessionDescription,
    StreamPurpose,
};
use voip_core::{CallId, StreamId};
use voip_webrtc::{MediaEventReceiver, RemoteTrackInfo, WebrtcConfig, WebrtcEngine};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc_dtls=error".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Side {
    pub name: &'static str,
    pub engine: WebrtcEngine,
    pub rx: MediaEventReceiver,
    /// Every event received, in order.
    pub events: Vec<MediaEvent>,
    /// Index into `events` of the last LocalDescription not yet consumed by the test.
    pub last_description: Option<SessionDescription>,
}

impl Side {
    pub fn new(name: &'static str, config: WebrtcConfig) -> Self {
        let (engine, rx) = WebrtcEngine::with_channel(config);
        Side { name, engine, rx, events: Vec::new(), last_description: None }
    }

    pub fn exec(&self, call: &CallId, cmd: MediaCommand) {
        self.engine.execute(call.clone(), cmd);
    }

    pub fn remote(&self, call: &CallId, stream: &str, kind: MediaKind) -> Option<RemoteTrackInfo> {
        self.engine
            .remote_tracks(call)
            .ok()?
            .into_iter()
            .rfind(|t| t.stream_id.as_str() == stream && t.kind == kind && !t.ended)
    }

    pub fn remote_packets(&self, call: &CallId, stream: &str, kind: MediaKind) -> u64 {
        self.remote(call, stream, kind).map_or(0, |t| t.stats.packets)
    }

    pub fn states(&self) -> Vec<ConnectionState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::ConnectionState { state } => Some(*state),
                _ => None,
            })
            .collect()
    }

    pub fn failures(&self) -> Vec<&MediaEvent> {
        self.events.iter().filter(|e| matches!(e, MediaEvent::Failed { .. })).collect()
    }
}

/// A call between two engines with the same call id.
pub struct Pair {
    pub call: CallId,
    pub a: Side,
    pub b: Side,
    /// Forward local candidates to the other side as they come (trickle).
    pub trickle: bool,
}

impl Pair {
    pub fn new(config_a: WebrtcConfig, config_b: WebrtcConfig) -> Self {
        init_tracing();
        Pair {
            call: CallId::from("call-1"),
            a: Side::new("a", config_a),
            b: Side::new("b", config_b),
            trickle: true,
        }
    }

    pub fn loopback() -> Self {
        Self::new(WebrtcConfig::loopback(), WebrtcConfig::loopback())
    }

    fn route(&mut self, from_a: bool, event: MediaEvent) {
        let (from, to) = if from_a { (&mut self.a, &self.b) } else { (&mut self.b, &self.a) };
        match &event {
            MediaEvent::LocalCandidate { candidate } if self.trickle => {
                to.engine.execute(
                    self.call.clone(),
                    MediaCommand::AddRemoteCandidates { candidates: vec![candidate.clone()] },
                );
            }
            MediaEvent::GatheringComplete if self.trickle => {
                to.engine.execute(
                    self.call.clone(),
                    MediaCommand::AddRemoteCandidates { candidates: vec![Candidate::end_of_candidates()] },
                );
            }
            MediaEvent::LocalDescription { description } => from.last_description = Some(description.clone()),
            _ => {}
        }
        from.events.push(event);
    }

    /// Pumps events (routing candidates) until `cond` holds or `limit` passes.
    pub async fn pump_until(&mut self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                Some((_, ev)) = self.a.rx.recv() => self.route(true, ev),
                Some((_, ev)) = self.b.rx.recv() => self.route(false, ev),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// Waits for a LocalDescription on one side and takes it.
    pub async fn take_description(&mut self, of_a: bool) -> SessionDescription {
        let ok = self
            .pump_until(Duration::from_secs(10), |p| {
                if of_a {
                    p.a.last_description.is_some()
                } else {
                    p.b.last_description.is_some()
                }
            })
            .await;
        let side = if of_a { &self.a } else { &self.b };
        assert!(ok, "no local description from {}; failures {:?}", side.name, side.failures());
        let side = if of_a { &mut self.a } else { &mut self.b };
        side.last_description.take().expect("checked above")
    }

    /// Offer from A, answer from B, both applied.
    pub async fn negotiate(&mut self, ice_restart: bool) {
        self.negotiate_from(true, ice_restart).await;
    }

    /// Offer from A (`a_offers`) or B, answer from the other, both applied; returns both.
    pub async fn negotiate_from(
        &mut self,
        a_offers: bool,
        ice_restart: bool,
    ) -> (SessionDescription, SessionDescription) {
        let call = self.call.clone();
        let offerer = if a_offers { &self.a } else { &self.b };
        offerer.exec(&call, MediaCommand::CreateOffer { ice_restart });
        let offer = self.take_description(a_offers).await;
        if std::env::var("DUMP_SDP").is_ok() {
            eprintln!("OFFER\n{}", offer.sdp);
        }
        let answerer = if a_offers { &self.b } else { &self.a };
        answerer.exec(&call, MediaCommand::set_remote_description(offer.clone()));
        answerer.exec(&call, MediaCommand::CreateAnswer);
        let answer = self.take_description(!a_offers).await;
        if std::env::var("DUMP_SDP").is_ok() {
            eprintln!("ANSWER\n{}", answer.sdp);
        }
        let offerer = if a_offers { &self.a } else { &self.b };
        offerer.exec(&call, MediaCommand::set_remote_description(answer.clone()));
        (offer, answer)
    }

    /// A calls B with usermedia streams `a-user` / `b-user` and waits for both to connect.
    pub async fn connect(&mut self, call_type: CallType) {
        let video = call_type == CallType::Video;
        let call = self.call.clone();
        self.a.exec(&call, MediaCommand::CreatePeer { call_type });
        self.a.exec(
            &call,
            MediaCommand::AddLocalStream {
                stream_id: StreamId::from("a-user"),
                purpose: StreamPurpose::Usermedia,
                audio: true,
                video,
            },
        );
        self.b.exec(&call, MediaCommand::CreatePeer { call_type });
        self.a.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
        let offer = self.take_description(true).await;
        self.b.exec(&call, MediaCommand::set_remote_description(offer));
        self.b.exec(
            &call,
            MediaCommand::AddLocalStream {
                stream_id: StreamId::from("b-user"),
                purpose: StreamPurpose::Usermedia,
                audio: true,
                video,
            },
        );
        self.b.exec(&call, MediaCommand::CreateAnswer);
        let answer = self.take_description(false).await;
        self.a.exec(&call, MediaCommand::set_remote_description(answer));
        let connected = self
            .pump_until(Duration::from_secs(10), |p| {
                p.a.states().contains(&ConnectionState::Connected)
                    && p.b.states().contains(&ConnectionState::Connected)
            })
            .await;
        assert!(connected, "not connected: a {:?} b {:?}", self.a.states(), self.b.states());
    }

    /// Neither engine reported a failed media operation.
    pub fn assert_no_failures(&self) {
        assert!(
            self.a.failures().is_empty() && self.b.failures().is_empty(),
            "a: {:?}, b: {:?}",
            self.a.failures(),
            self.b.failures()
        );
    }

    /// Closes both sides and checks that every task and socket is gone.
    pub async fn hang_up_and_check_no_leaks(&mut self) {
        assert!(self.a.engine.resources().udp_sockets > 0, "sockets were open during the call");
        self.a.exec(&self.call, MediaCommand::Close);
        self.b.exec(&self.call, MediaCommand::Close);
        for side in [&self.a, &self.b] {
            side.engine.wait_closed().await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while side.engine.resources() != Default::default() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(side.engine.resources(), Default::default(), "{} leaked tasks or sockets", side.name);
            assert!(side.engine.calls().is_empty());
        }
    }
}
