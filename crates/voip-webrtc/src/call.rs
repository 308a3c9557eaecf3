//! One call: a task that owns the call's peer connection and executes its commands in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};
use voip_core::media::{
    CallType, Candidate, ConnectionState, MediaCommand, MediaEvent, MediaKind, MediaOperation, SdpType,
    SessionDescription, StreamPurpose,
};
use voip_core::{CallId, StreamId};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine as RtcMediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidate, RTCIceCandidateInit,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::config::{MdnsMode, WebrtcConfig};
use crate::engine::MediaEventSender;
use crate::media::sink::{MediaSink, ReceivedPacket, TrackSink};
use crate::media::source::{EncodedFrame, MediaSource};
use crate::runtime::{Counters, EngineRuntime, Guard};
use crate::sdp;

/// Spawns a tokio task that counts toward the engine's [`crate::Resources`].
pub(crate) fn spawn_counted<F>(counters: &Arc<Counters>, fut: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let guard = Guard::task(counters);
    tokio::spawn(
        async move {
            let _guard = guard;
            fut.await;
        }
        .in_current_span(),
    )
}

/// Shared between a local track's sending task, the call task and the app API.
#[derive(Debug, Default)]
pub(crate) struct SendGate {
    /// The user's mute state (`SetTrackEnabled`).
    pub(crate) user_enabled: AtomicBool,
    /// The call holds the peer (`SetHold`).
    pub(crate) held: AtomicBool,
    /// The negotiated direction of the track's transceiver includes sending.
    pub(crate) may_send: AtomicBool,
    /// Negotiated payload type + 1 (0: not negotiated yet).
    pub(crate) payload_type: AtomicU16,
    /// Frames handed to webrtc-rs.
    pub(crate) frames_sent: AtomicU64,
    /// The peer's format parameters for the track's codec (Opus `a=fmtp:`), with a generation
    /// counter the sending task watches.
    pub(crate) codec_parameters: Mutex<String>,
    pub(crate) codec_generation: AtomicU64,
}

impl SendGate {
    pub(crate) fn enabled(&self) -> bool {
        self.user_enabled.load(Ordering::SeqCst) && !self.held.load(Ordering::SeqCst)
    }

    fn set_codec_parameters(&self, params: &str) {
        if let Ok(mut p) = self.codec_parameters.lock() {
            if *p != params || self.codec_generation.load(Ordering::SeqCst) == 0 {
                params.clone_into(&mut p);
                self.codec_generation.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn payload_type(&self) -> Option<u8> {
        self.payload_type.load(Ordering::SeqCst).checked_sub(1).and_then(|v| u8::try_from(v).ok())
    }
}

/// A local track as the app API sees it.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    pub(crate) stream_id: StreamId,
    pub(crate) purpose: StreamPurpose,
    pub(crate) kind: MediaKind,
    pub(crate) gate: Arc<SendGate>,
}

/// A remote track as the app API sees it.
#[derive(Debug)]
pub(crate) struct RemoteEntry {
    pub(crate) stream_id: StreamId,
    pub(crate) kind: MediaKind,
    pub(crate) track_id: String,
    pub(crate) sink: Arc<TrackSink>,
    pub(crate) ended: bool,
}

/// State of a call shared with [`crate::WebrtcEngine`]'s app API.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) pc: Option<Arc<dyn PeerConnection>>,
    pub(crate) local: Vec<LocalEntry>,
    pub(crate) remote: Vec<RemoteEntry>,
    pub(crate) remote_purposes: HashMap<StreamId, StreamPurpose>,
    pub(crate) connection_state: Option<ConnectionState>,
    pub(crate) on_hold: bool,
}

pub(crate) type SharedRef = Arc<Mutex<Shared>>;

/// What the engine sends to a call task.
pub(crate) enum CallInput {
    /// A command from the core.
    Media(MediaCommand),
    /// The app adds a stream directly; negotiation is needed afterwards.
    AppAddStream { stream_id: StreamId, purpose: StreamPurpose, audio: bool, video: bool },
    /// The app removes a stream directly; negotiation is needed afterwards.
    AppRemoveStream { stream_id: StreamId },
}

/// What the peer connection's event handler forwards to the call task.
enum PcEvent {
    Candidate(RTCIceCandidate),
    GatheringComplete,
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    TrackEnded { stream_id: StreamId, kind: MediaKind, track_id: String },
}

/// Runs on the webrtc-rs driver: must not call back into the peer connection, so it only
/// forwards to the call task.
struct Handler {
    tx: mpsc::UnboundedSender<PcEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let _ = self.tx.send(PcEvent::Candidate(event.candidate));
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send(PcEvent::GatheringComplete);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        debug!(%state, "ICE connection state");
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PcEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PcEvent::Track(track));
    }
}

struct LocalTrack {
    stream_id: StreamId,
    kind: MediaKind,
    sender: Arc<dyn RtpSender>,
    gate: Arc<SendGate>,
    task: tokio::task::JoinHandle<()>,
}

/// After a local candidate, how long the first description waits for another one of the same
/// gathering burst before it is reported.
const CANDIDATE_LULL: Duration = Duration::from_millis(2);

/// The call's first local description, applied but not yet reported: it waits for the
/// candidates gathered at once, so that its SDP carries them.
struct PendingReport {
    pc: Arc<dyn PeerConnection>,
    fallback: RTCSessionDescription,
    setup: Option<sdp::DtlsSetup>,
    /// When to report: `latest`, or sooner after a lull in a candidate burst.
    report_at: tokio::time::Instant,
    latest: tokio::time::Instant,
}

/// Sleeps until `at` (forever without one; the `select!` branch is disabled then anyway).
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The call task's state.
pub(crate) struct CallTask {
    call_id: CallId,
    config: Arc<WebrtcConfig>,
    /// The engine's current ICE servers, read when the peer connection is built.
    ice_servers: Arc<Mutex<Vec<crate::config::IceServer>>>,
    events: MediaEventSender,
    shared: SharedRef,
    counters: Arc<Counters>,
    runtime: Arc<EngineRuntime>,
    pc: Option<Arc<dyn PeerConnection>>,
    pc_tx: mpsc::UnboundedSender<PcEvent>,
    pc_rx: Option<mpsc::UnboundedReceiver<PcEvent>>,
    local_tracks: Vec<LocalTrack>,
    track_counter: u32,
    /// Set once a LocalDescription was reported; candidates wait for it.
    local_description_reported: bool,
    held_candidates: Vec<Candidate>,
    gathering_complete_held: bool,
    /// The first description, waiting for the candidates gathered at once.
    pending_report: Option<PendingReport>,
    local_mid: Option<(String, u32)>,
    local_ufrag: Option<String>,
    remote_description_set: bool,
    /// The last remote offer, to compute the answer's directions.
    remote_offer: Option<String>,
    /// Our DTLS role (`a=setup:`) once an exchange settled it; later answers keep it.
    dtls_setup: Option<sdp::DtlsSetup>,
    pending_remote_candidates: Vec<Candidate>,
    /// The peer's Opus format parameters from its last description.
    remote_opus_fmtp: Option<String>,
    reported_remote: BTreeSet<(StreamId, MediaKind)>,
    sink_tasks: Vec<tokio::task::JoinHandle<()>>,
    last_state: Option<ConnectionState>,
    held: bool,
}

impl CallTask {
    pub(crate) fn new(
        call_id: CallId,
        config: Arc<WebrtcConfig>,
        ice_servers: Arc<Mutex<Vec<crate::config::IceServer>>>,
        events: MediaEventSender,
        shared: SharedRef,
        counters: Arc<Counters>,
        runtime: Arc<EngineRuntime>,
    ) -> Self {
        let (pc_tx, pc_rx) = mpsc::unbounded_channel();
        CallTask {
            call_id,
            config,
            ice_servers,
            events,
            shared,
            counters,
            runtime,
            pc: None,
            pc_tx,
            pc_rx: Some(pc_rx),
            local_tracks: Vec::new(),
            track_counter: 0,
            local_description_reported: false,
            held_candidates: Vec::new(),
            gathering_complete_held: false,
            pending_report: None,
            local_mid: None,
            local_ufrag: None,
            remote_description_set: false,
            remote_offer: None,
            dtls_setup: None,
            pending_remote_candidates: Vec::new(),
            remote_opus_fmtp: None,
            reported_remote: BTreeSet::new(),
            sink_tasks: Vec::new(),
            last_state: None,
            held: false,
        }
    }

    /// Executes commands until `Close` (or until the engine drops the command channel).
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<CallInput>) {
        let Some(mut pc_rx) = self.pc_rx.take() else { return };
        loop {
            let report_at = self.pending_report.as_ref().map(|p| p.report_at);
            tokio::select! {
                biased;
                () = sleep_until_opt(report_at), if report_at.is_some() => self.finish_pending_report().await,
                input = commands.recv() => match input {
                    Some(CallInput::Media(MediaCommand::Close)) | None => break,
                    Some(CallInput::Media(cmd)) => self.execute(cmd).await,
                    Some(CallInput::AppAddStream { stream_id, purpose, audio, video }) => {
                        self.execute(MediaCommand::AddLocalStream { stream_id, purpose, audio, video }).await;
                        self.emit(MediaEvent::NegotiationNeeded);
                    }
                    Some(CallInput::AppRemoveStream { stream_id }) => {
                        self.remove_local_stream(&stream_id).await;
                        self.emit(MediaEvent::NegotiationNeeded);
                    }
                },
                Some(ev) = pc_rx.recv() => self.on_pc_event(ev).await,
            }
        }
        self.close().await;
    }

    fn emit(&self, event: MediaEvent) {
        debug!(?event, "media event");
        let _ = self.events.send((self.call_id.clone(), event));
    }

    fn fail(&self, operation: MediaOperation, error: impl std::fmt::Display) {
        warn!(?operation, %error, "media operation failed");
        self.emit(MediaEvent::Failed { operation, error: error.to_string() });
    }

    async fn execute(&mut self, command: MediaCommand) {
        debug!(?command, "media command");
        match command {
            MediaCommand::CreatePeer { call_type } => self.create_peer(call_type).await,
            MediaCommand::AddLocalStream { stream_id, purpose, audio, video } => {
                for (wanted, kind) in [(audio, MediaKind::Audio), (video, MediaKind::Video)] {
                    if wanted {
                        if let Err(e) = self.add_local_track(&stream_id, purpose, kind).await {
                            self.fail(MediaOperation::LocalMedia, e);
                            return;
                        }
                    }
                }
            }
            MediaCommand::RemoveLocalStream { stream_id } => self.remove_local_stream(&stream_id).await,
            MediaCommand::CreateOffer { ice_restart } => self.create_offer(ice_restart).await,
            MediaCommand::CreateAnswer => self.create_answer().await,
            MediaCommand::Rollback => self.rollback().await,
            MediaCommand::SetRemoteDescription { description } => self.set_remote(description).await,
            MediaCommand::AddRemoteCandidates { candidates } => {
                if self.remote_description_set {
                    self.add_remote_candidates(candidates).await;
                } else {
                    debug!(
                        count = candidates.len(),
                        "buffering remote candidates until the remote description"
                    );
                    self.pending_remote_candidates.extend(candidates);
                }
            }
            MediaCommand::SetTrackEnabled { stream_id, kind, enabled } => {
                for t in self.local_tracks.iter().filter(|t| t.stream_id == stream_id && t.kind == kind) {
                    t.gate.user_enabled.store(enabled, Ordering::SeqCst);
                    t.sender.track().set_enabled(enabled).await;
                }
            }
            MediaCommand::SetHold { on_hold } => self.set_hold(on_hold).await,
            MediaCommand::Close => {}
        }
    }

    fn rtc_ice_servers(&self) -> Vec<RTCIceServer> {
        let servers = self.ice_servers.lock().map(|s| s.clone()).unwrap_or_default();
        servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect()
    }

    async fn build_pc(&self, mdns: MulticastDnsMode) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
        let c = &self.config;
        let mut media = RtcMediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            .with_prflx_acceptance_min_wait(Some(c.prflx_wait))
            .with_ice_connection_attempts(Some(c.ice_check_interval), None)
            .with_ice_timeouts(c.ice_disconnected_timeout, c.ice_failed_timeout, c.ice_keepalive_interval)
            .with_include_loopback_candidate(c.include_loopback)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(self.rtc_ice_servers())
                    .with_ice_transport_policy(match c.ice_transport_policy {
                        crate::config::IceTransportPolicy::All => RTCIceTransportPolicy::All,
                        crate::config::IceTransportPolicy::Relay => RTCIceTransportPolicy::Relay,
                    })
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler { tx: self.pc_tx.clone() }))
            .with_runtime(self.runtime.clone())
            .with_udp_addrs(c.udp_addrs.clone())
            .build()
            .await?;
        Ok(Arc::new(pc))
    }

    async fn create_peer(&mut self, call_type: CallType) {
        if self.pc.is_some() {
            warn!("CreatePeer for a call that already has a peer connection; ignored");
            return;
        }
        info!(?call_type, "creating peer connection");
        let mode = match self.config.mdns {
            MdnsMode::Disabled => MulticastDnsMode::Disabled,
            MdnsMode::QueryOnly => MulticastDnsMode::QueryOnly,
        };
        let mut result = self.build_pc(mode).await;
        if let (Err(e), MulticastDnsMode::QueryOnly) = (&result, mode) {
            warn!(error = %e, "peer connection with mDNS failed; retrying with mDNS disabled");
            result = self.build_pc(MulticastDnsMode::Disabled).await;
        }
        match result {
            Ok(pc) => {
                self.pc = Some(pc.clone());
                if let Ok(mut s) = self.shared.lock() {
                    s.pc = Some(pc);
                }
            }
            Err(e) => self.fail(MediaOperation::CreatePeer, e),
        }
    }

    fn pc_or_fail(&self, operation: MediaOperation) -> Option<Arc<dyn PeerConnection>> {
        let pc = self.pc.clone();
        if pc.is_none() {
            self.fail(operation, "no peer connection (CreatePeer missing or failed)");
        }
        pc
    }

    async fn add_local_track(
        &mut self,
        stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<(), String> {
        let pc = self.pc.clone().ok_or("no peer connection (CreatePeer missing or failed)")?;
        let source = self
            .config
            .source_factory()
            .create(&self.call_id, stream_id, purpose, kind)
            .map_err(|e| e.to_string())?;
        self.track_counter += 1;
        let kind_str = match kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        let track_id = format!("{}-{kind_str}-{}", self.call_id, self.track_counter);
        let (codec_kind, codec) = match kind {
            MediaKind::Audio => (
                RtpCodecKind::Audio,
                RTCRtpCodec {
                    mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
            ),
            MediaKind::Video => (
                RtpCodecKind::Video,
                RTCRtpCodec {
                    mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
            ),
        };
        let ssrc = random_ssrc(&track_id);
        let media_track = MediaStreamTrack::new(
            stream_id.as_str().to_owned(),
            track_id.clone(),
            format!("{purpose:?} {kind_str}"),
            codec_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        let track =
            Arc::new(TrackLocalStaticSample::new(Instant::now(), media_track).map_err(|e| e.to_string())?);
        let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(|e| e.to_string())?;
        let gate = Arc::new(SendGate::default());
        gate.user_enabled.store(true, Ordering::SeqCst);
        gate.held.store(self.held, Ordering::SeqCst);
        if let (MediaKind::Audio, Some(fmtp)) = (kind, &self.remote_opus_fmtp) {
            gate.set_codec_parameters(fmtp);
        }
        let task = spawn_counted(&self.counters, run_source(track, ssrc, gate.clone(), source));
        info!(%stream_id, ?purpose, ?kind, %track_id, "local track added");
        if let Ok(mut s) = self.shared.lock() {
            s.local.push(LocalEntry { stream_id: stream_id.clone(), purpose, kind, gate: gate.clone() });
        }
        self.local_tracks.push(LocalTrack { stream_id: stream_id.clone(), kind, sender, gate, task });
        if self.remote_description_set {
            self.refresh_send_state().await;
        }
        Ok(())
    }

    async fn remove_local_stream(&mut self, stream_id: &StreamId) {
        let (removed, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.local_tracks).into_iter().partition(|t| &t.stream_id == stream_id);
        self.local_tracks = kept;
        for t in removed {
            t.task.abort();
            if let Some(pc) = &self.pc {
                if let Err(e) = pc.remove_track(&t.sender).await {
                    warn!(error = %e, "remove_track failed");
                }
            }
        }
        if let Ok(mut s) = self.shared.lock() {
            s.local.retain(|l| &l.stream_id != stream_id);
        }
        info!(%stream_id, "local stream removed");
    }

    /// Reports the applied local description, with its `a=setup:` lines set to `setup` if given.
    async fn report_local_description_with(
        &mut self,
        pc: &Arc<dyn PeerConnection>,
        fallback: RTCSessionDescription,
        setup: Option<sdp::DtlsSetup>,
    ) {
        let mut applied = pc.local_description().await.unwrap_or(fallback);
        if let Some(sdp) = setup.and_then(|role| sdp::with_setup(&applied.sdp, role)) {
            debug!(role = ?setup, "answer keeps the established DTLS role");
            applied.sdp = sdp;
        }
        self.local_mid = sdp::first_mid(&applied.sdp);
        self.local_ufrag =
            applied.sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:").map(str::to_owned));
        let sdp_type = match applied.sdp_type {
            webrtc::peer_connection::RTCSdpType::Answer => SdpType::Answer,
            _ => SdpType::Offer,
        };
        // Held candidates the description already carries (`a=candidate:`) are not trickled.
        let fresh: Vec<Candidate> = {
            let in_sdp = sdp::candidates(&applied.sdp);
            if !in_sdp.is_empty() {
                debug!(candidates = in_sdp.len(), "local description carries candidates");
            }
            std::mem::take(&mut self.held_candidates)
                .into_iter()
                .filter(|c| !in_sdp.contains(c.candidate.trim()))
                .collect()
        };
        self.emit(MediaEvent::LocalDescription {
            description: SessionDescription { sdp_type, sdp: applied.sdp },
        });
        self.local_description_reported = true;
        for candidate in fresh {
            self.emit(MediaEvent::LocalCandidate { candidate });
        }
        if std::mem::take(&mut self.gathering_complete_held) {
            self.emit(MediaEvent::GatheringComplete);
        }
    }

    async fn create_offer(&mut self, ice_restart: bool) {
        let Some(pc) = self.pc_or_fail(MediaOperation::CreateOffer) else { return };
        if ice_restart {
            info!("restarting ICE");
            if let Err(e) = pc.restart_ice().await {
                self.fail(MediaOperation::CreateOffer, e);
                return;
            }
        }
        let offer = match pc.create_offer(Some(RTCOfferOptions { ice_restart })).await {
            Ok(o) => o,
            Err(e) => return self.fail(MediaOperation::CreateOffer, e),
        };
        if let Err(e) = pc.set_local_description(offer.clone()).await {
            return self.fail(MediaOperation::CreateOffer, e);
        }
        self.report_or_wait(pc, offer, None).await;
    }

    /// Reports a local description now, or, for the call's first one, once the candidates
    /// gathered at once are in it (`WebrtcConfig::with_sdp_candidates_wait`).
    async fn report_or_wait(
        &mut self,
        pc: Arc<dyn PeerConnection>,
        fallback: RTCSessionDescription,
        setup: Option<sdp::DtlsSetup>,
    ) {
        let wait = self.config.sdp_candidates_wait;
        if self.local_description_reported || wait.is_zero() || self.gathering_complete_held {
            return self.report_local_description_with(&pc, fallback, setup).await;
        }
        let latest = tokio::time::Instant::now() + wait;
        self.pending_report = Some(PendingReport { pc, fallback, setup, report_at: latest, latest });
    }

    async fn finish_pending_report(&mut self) {
        if let Some(p) = self.pending_report.take() {
            self.report_local_description_with(&p.pc, p.fallback, p.setup).await;
        }
    }

    async fn create_answer(&mut self) {
        let Some(pc) = self.pc_or_fail(MediaOperation::CreateAnswer) else { return };
        self.set_answer_directions(&pc).await;
        let answer = match pc.create_answer(None).await {
            Ok(a) => a,
            Err(e) => return self.fail(MediaOperation::CreateAnswer, e),
        };
        if let Err(e) = pc.set_local_description(answer.clone()).await {
            return self.fail(MediaOperation::CreateAnswer, e);
        }
        if self.dtls_setup.is_none() {
            self.dtls_setup = sdp::answer_setup(&answer.sdp);
        }
        // webrtc-rs 0.21.1 answers every offer with its configured answering role (`active`),
        // also a re-offer when we were the original offerer and so the DTLS server. The
        // association keeps its roles (RFC 8842 §5.5, RFC 9429 §5.3.2) and libwebrtc rejects a
        // flipped answer ("Failed to set SSL role for the transport"). webrtc-rs only reads the
        // roles of the first exchange (it starts its DTLS transport once) and refuses a local
        // answer other than the one it created, so the settled role is written into the answer
        // we send, not into the one we apply.
        let keep = self.dtls_setup;
        self.report_or_wait(pc, answer, keep).await;
        self.refresh_send_state().await;
    }

    async fn rollback(&mut self) {
        let Some(pc) = self.pc.clone() else { return };
        match RTCSessionDescription::rollback(None) {
            Ok(rb) => {
                if let Err(e) = pc.set_local_description(rb).await {
                    warn!(error = %e, "rollback failed");
                }
            }
            Err(e) => warn!(error = %e, "rollback description"),
        }
    }

    async fn set_remote(&mut self, description: SessionDescription) {
        let Some(pc) = self.pc_or_fail(MediaOperation::SetRemoteDescription) else { return };
        let announced = sdp::announced_tracks(&description.sdp);
        if let Some(fmtp) = sdp::opus_fmtp(&description.sdp) {
            for t in self.local_tracks.iter().filter(|t| t.kind == MediaKind::Audio) {
                t.gate.set_codec_parameters(&fmtp);
            }
            self.remote_opus_fmtp = Some(fmtp);
        }
        if description.sdp_type == SdpType::Offer {
            self.remote_offer = Some(description.sdp.clone());
        }
        let description_type = description.sdp_type;
        let remote_setup = sdp::answer_setup(&description.sdp);
        let parsed = match description.sdp_type {
            SdpType::Offer => RTCSessionDescription::offer(description.sdp),
            SdpType::Answer => RTCSessionDescription::answer(description.sdp),
        };
        let desc = match parsed {
            Ok(d) => d,
            Err(e) => return self.fail(MediaOperation::SetRemoteDescription, e),
        };
        if let Err(e) = pc.set_remote_description(desc).await {
            return self.fail(MediaOperation::SetRemoteDescription, e);
        }
        self.remote_description_set = true;
        if description_type == SdpType::Answer && self.dtls_setup.is_none() {
            // The remote answered our offer: we take the other end of its role.
            self.dtls_setup = remote_setup.map(sdp::DtlsSetup::opposite);
        }
        let pending = std::mem::take(&mut self.pending_remote_candidates);
        if !pending.is_empty() {
            self.add_remote_candidates(pending).await;
        }
        // Tracks the remote no longer announces have ended (screenshare off, track removed).
        let gone: Vec<_> = self.reported_remote.iter().filter(|t| !announced.contains(t)).cloned().collect();
        for (stream_id, kind) in gone {
            self.remote_track_ended(&stream_id, kind, None);
        }
        if description.sdp_type == SdpType::Answer {
            self.refresh_send_state().await;
        }
    }

    async fn add_remote_candidates(&mut self, candidates: Vec<Candidate>) {
        let Some(pc) = self.pc.clone() else { return };
        for c in candidates {
            if c.is_end_of_candidates() {
                debug!("remote end-of-candidates");
                continue;
            }
            let init = RTCIceCandidateInit {
                candidate: c.candidate.clone(),
                sdp_mid: c.sdp_mid.clone(),
                sdp_mline_index: c.sdp_m_line_index.and_then(|i| u16::try_from(i).ok()),
                username_fragment: c.username_fragment.clone(),
                url: None,
            };
            // One unusable candidate (mDNS with mDNS off, TCP, a stale generation) must not end
            // the call: log it, as libwebrtc-based clients do.
            if let Err(e) = pc.add_ice_candidate(init).await {
                warn!(candidate = %c.candidate, error = %e, "remote candidate rejected");
            }
        }
    }

    async fn set_hold(&mut self, on_hold: bool) {
        self.held = on_hold;
        for t in &self.local_tracks {
            t.gate.held.store(on_hold, Ordering::SeqCst);
        }
        if let Ok(mut s) = self.shared.lock() {
            s.on_hold = on_hold;
        }
        let Some(pc) = self.pc.clone() else { return };
        for tr in pc.get_transceivers().await {
            let has_track = tr
                .sender()
                .await
                .ok()
                .flatten()
                .is_some_and(|s| self.local_tracks.iter().any(|t| t.sender.id() == s.id()));
            let direction = match (on_hold, has_track) {
                (true, true) => RTCRtpTransceiverDirection::Sendonly,
                (true, false) => RTCRtpTransceiverDirection::Inactive,
                (false, true) => RTCRtpTransceiverDirection::Sendrecv,
                (false, false) => RTCRtpTransceiverDirection::Recvonly,
            };
            if let Err(e) = tr.set_direction(direction).await {
                warn!(error = %e, ?direction, "set_direction failed");
            }
        }
        info!(on_hold, "hold changed");
    }

    /// webrtc-rs 0.21.1 answers a `sendonly` offer with `sendrecv` (it copies the transceiver's
    /// direction instead of intersecting it with the offer, RFC 9429 §5.3.1). Before answering,
    /// set every transceiver to what JSEP would answer: what we want (send if we have a track and
    /// do not hold; always receive) intersected with the reverse of the offered direction.
    async fn set_answer_directions(&self, pc: &Arc<dyn PeerConnection>) {
        let Some(offer) = self.remote_offer.as_deref() else { return };
        let offered: HashMap<String, String> = sdp::media_sections(offer)
            .into_iter()
            .filter_map(|s| Some((s.mid?, s.direction.unwrap_or_else(|| "sendrecv".to_owned()))))
            .collect();
        for tr in pc.get_transceivers().await {
            let Ok(Some(mid)) = tr.mid().await else { continue };
            let Some(remote) = offered.get(&mid) else { continue };
            let has_track = match tr.sender().await {
                Ok(Some(s)) => self.local_tracks.iter().any(|t| t.sender.id() == s.id()),
                _ => false,
            };
            let (remote_sends, remote_receives) = match remote.as_str() {
                "sendonly" => (true, false),
                "recvonly" => (false, true),
                "inactive" => (false, false),
                _ => (true, true),
            };
            let send = has_track && remote_receives;
            let direction = match (send, remote_sends) {
                (true, true) if self.held => RTCRtpTransceiverDirection::Sendonly,
                (true, true) => RTCRtpTransceiverDirection::Sendrecv,
                (true, false) => RTCRtpTransceiverDirection::Sendonly,
                (false, true) => RTCRtpTransceiverDirection::Recvonly,
                (false, false) => RTCRtpTransceiverDirection::Inactive,
            };
            if tr.direction().await.ok() != Some(direction) {
                debug!(%mid, ?direction, offered = %remote, "answer direction");
                if let Err(e) = tr.set_direction(direction).await {
                    warn!(error = %e, %mid, "set_direction before answer failed");
                }
            }
        }
    }

    /// After a negotiation completes: which local tracks may send, with which payload type.
    async fn refresh_send_state(&mut self) {
        let Some(pc) = self.pc.clone() else { return };
        let mut directions = HashMap::new();
        for tr in pc.get_transceivers().await {
            if let Ok(Some(sender)) = tr.sender().await {
                if let Ok(dir) = tr.current_direction().await {
                    directions.insert(sender.id(), dir);
                }
            }
        }
        for t in &self.local_tracks {
            let may_send = matches!(
                directions.get(&t.sender.id()),
                Some(RTCRtpTransceiverDirection::Sendrecv | RTCRtpTransceiverDirection::Sendonly)
            );
            let wanted = match t.kind {
                MediaKind::Audio => rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS,
                MediaKind::Video => rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8,
            };
            if let Ok(params) = t.sender.get_parameters().await {
                if let Some(codec) = params
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(wanted))
                {
                    t.gate.payload_type.store(u16::from(codec.payload_type) + 1, Ordering::SeqCst);
                }
            }
            if t.gate.may_send.swap(may_send, Ordering::SeqCst) != may_send {
                debug!(stream_id = %t.stream_id, kind = ?t.kind, may_send, "send state");
            }
        }
    }

    async fn on_pc_event(&mut self, event: PcEvent) {
        match event {
            PcEvent::Candidate(c) => {
                let init = match c.to_json() {
                    Ok(i) => i,
                    Err(e) => return warn!(error = %e, "local candidate not serialisable"),
                };
                let (mid, index) = self.local_mid.clone().map_or((None, None), |(m, i)| (Some(m), Some(i)));
                let candidate = Candidate {
                    candidate: init.candidate,
                    sdp_mid: mid.or(Some("0".to_owned())),
                    sdp_m_line_index: index.or(Some(0)),
                    username_fragment: self.local_ufrag.clone(),
                };
                if self.local_description_reported {
                    self.emit(MediaEvent::LocalCandidate { candidate });
                } else {
                    self.held_candidates.push(candidate);
                    if let Some(p) = &mut self.pending_report {
                        // Candidates gathered at once come in a burst: report after a short lull.
                        p.report_at = p.latest.min(tokio::time::Instant::now() + CANDIDATE_LULL);
                    }
                }
            }
            PcEvent::GatheringComplete => {
                if self.local_description_reported {
                    self.emit(MediaEvent::GatheringComplete);
                } else {
                    self.gathering_complete_held = true;
                    if self.pending_report.is_some() {
                        self.finish_pending_report().await;
                    }
                }
            }
            PcEvent::State(state) => {
                let mapped = match state {
                    RTCPeerConnectionState::New => ConnectionState::New,
                    RTCPeerConnectionState::Connecting => ConnectionState::Checking,
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => return,
                };
                info!(%state, "peer connection state");
                if self.last_state != Some(mapped) {
                    self.last_state = Some(mapped);
                    if let Ok(mut s) = self.shared.lock() {
                        s.connection_state = Some(mapped);
                    }
                    self.emit(MediaEvent::ConnectionState { state: mapped });
                }
            }
            PcEvent::Track(track) => self.on_remote_track(track).await,
            PcEvent::TrackEnded { stream_id, kind, track_id } => {
                self.remote_track_ended(&stream_id, kind, Some(&track_id));
            }
        }
    }

    async fn on_remote_track(&mut self, track: Arc<dyn TrackRemote>) {
        let stream_id = StreamId(track.stream_id().await);
        let track_id = track.track_id().await;
        let kind = match track.kind().await {
            RtpCodecKind::Audio => MediaKind::Audio,
            RtpCodecKind::Video => MediaKind::Video,
            _ => return warn!("remote track of unknown kind ignored"),
        };
        info!(%stream_id, ?kind, %track_id, "remote track");
        let sink = TrackSink::new(kind);
        if let Ok(mut s) = self.shared.lock() {
            s.remote.push(RemoteEntry {
                stream_id: stream_id.clone(),
                kind,
                track_id: track_id.clone(),
                sink: sink.clone(),
                ended: false,
            });
        }
        let task = spawn_counted(
            &self.counters,
            run_sink(
                track,
                stream_id.clone(),
                kind,
                track_id,
                sink,
                (self.call_id.clone(), self.config.app_sinks()),
                self.pc_tx.clone(),
            ),
        );
        self.sink_tasks.retain(|t| !t.is_finished());
        self.sink_tasks.push(task);
        if self.reported_remote.insert((stream_id.clone(), kind)) {
            self.emit(MediaEvent::RemoteTrack { stream_id, kind });
        }
    }

    fn remote_track_ended(&mut self, stream_id: &StreamId, kind: MediaKind, track_id: Option<&str>) {
        if let Ok(mut s) = self.shared.lock() {
            for r in s.remote.iter_mut().filter(|r| &r.stream_id == stream_id && r.kind == kind) {
                if track_id.is_none_or(|id| id == r.track_id) {
                    r.ended = true;
                }
            }
        }
        if self.reported_remote.remove(&(stream_id.clone(), kind)) {
            info!(%stream_id, ?kind, "remote track ended");
            self.emit(MediaEvent::RemoteTrackEnded { stream_id: stream_id.clone(), kind });
        }
    }

    async fn close(&mut self) {
        info!("closing call media");
        for t in self.local_tracks.drain(..) {
            t.task.abort();
        }
        if let Some(pc) = self.pc.take() {
            if let Err(e) = pc.close().await {
                warn!(error = %e, "peer connection close");
            }
        }
        for t in self.sink_tasks.drain(..) {
            t.abort();
        }
        for app in self.config.app_sinks() {
            app.on_call_closed(&self.call_id);
        }
        if let Ok(mut s) = self.shared.lock() {
            s.pc = None;
            s.local.clear();
            for r in &mut s.remote {
                r.ended = true;
            }
            s.connection_state = Some(ConnectionState::Closed);
        }
    }
}

/// A per-track SSRC: random enough to avoid collisions between the tracks of a call and
/// between calls, without an RNG dependency.
fn random_ssrc(seed: &str) -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let h = RandomState::new().hash_one(seed);
    (h as u32) ^ ((h >> 32) as u32)
}

/// How long a local track waits after its source had no frame.
const NO_FRAME_RETRY: Duration = Duration::from_millis(10);

/// Hands one frame to webrtc-rs if the negotiated direction lets the track send.
async fn send_frame(track: &TrackLocalStaticSample, ssrc: u32, gate: &SendGate, frame: EncodedFrame) {
    if frame.data.is_empty() || !gate.may_send.load(Ordering::SeqCst) {
        return;
    }
    let Some(pt) = gate.payload_type() else { return };
    let sample = Sample {
        data: frame.data,
        timestamp: Instant::now(),
        duration: frame.duration,
        packet_timestamp: 0,
        prev_dropped_packets: 0,
        prev_padding_packets: 0,
    };
    match track.sample_writer(ssrc, pt).write_sample(&sample).await {
        Ok(()) => {
            gate.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => debug!(error = %e, "write_sample"),
    }
}

/// Paces a source into a local track.
async fn run_source(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    gate: Arc<SendGate>,
    mut source: Box<dyn MediaSource>,
) {
    let mut next = tokio::time::Instant::now();
    let mut generation = 0;
    loop {
        let current = gate.codec_generation.load(Ordering::SeqCst);
        if current != generation {
            generation = current;
            let params = gate.codec_parameters.lock().map(|p| p.clone()).unwrap_or_default();
            source.negotiated(&params);
        }
        // `None` means nothing to send this tick (the `MediaSource` contract): ask again later.
        let wait = match source.next_frame(gate.enabled()) {
            Some(frame) => {
                let duration = frame.duration;
                send_frame(&track, ssrc, &gate, frame).await;
                duration.max(Duration::from_millis(1))
            }
            None => NO_FRAME_RETRY,
        };
        next += wait;
        let now = tokio::time::Instant::now();
        if next + Duration::from_millis(200) < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Reads a remote track into its sink (and the app's, with the call id) until it ends.
async fn run_sink(
    track: Arc<dyn TrackRemote>,
    stream_id: StreamId,
    kind: MediaKind,
    track_id: String,
    sink: Arc<TrackSink>,
    (call_id, app_sinks): (CallId, Vec<Arc<dyn MediaSink>>),
    pc_tx: mpsc::UnboundedSender<PcEvent>,
) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(p) => {
                let packet = ReceivedPacket {
                    sequence_number: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    payload_type: p.header.payload_type,
                    marker: p.header.marker,
                    ssrc: p.header.ssrc,
                    payload: p.payload,
                    arrived: Instant::now(),
                };
                sink.record(&packet);
                for app in &app_sinks {
                    app.on_call_packet(&call_id, &stream_id, kind, &packet);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    for app in &app_sinks {
        app.on_track_ended(&call_id, &stream_id, kind);
    }
    let _ = pc_tx.send(PcEvent::TrackEnded { stream_id, kind, track_id });
}
