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
    PeerConnectionEventHandler, RTCConfiguration, RTCConfigurationBuilder, RTCIceCandidate,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::config::{MdnsMode, WebrtcConfig};
use crate::engine::MediaEventSender;
use crate::media::sink::{MediaSink, ReceivedPacket, TrackSink};
use crate::media::source::{EncodedFrame, MediaSource};
use crate::runtime::{Counters, EngineRuntime, Guard};
use crate::sdp;

mod negotiation;
mod tracks;

use negotiation::{PendingReport, CANDIDATE_LULL};
use tracks::LocalTrack;
pub(crate) use tracks::{LocalEntry, RemoteEntry};

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
    /// The engine's ICE servers changed (TURN credentials refreshed): the peer connection takes
    /// them for its next ICE restart.
    IceServersChanged,
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
                    Some(CallInput::IceServersChanged) => self.update_ice_servers().await,
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
            MediaCommand::SetRemoteDescription { description, .. } => self.set_remote(description).await,
            // Recorded in the shared state when queued (`WebrtcEngine::execute`).
            MediaCommand::SetStreamPurposes { .. } => {}
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
            other => debug!(?other, "media command this engine does not implement: ignored"),
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
