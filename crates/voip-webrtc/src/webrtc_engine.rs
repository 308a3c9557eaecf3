//! [`WebrtcEngine`]: the [`MediaEngine`] on webrtc-rs, plus the media API for apps.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, info_span, warn, Instrument};
use voip_core::media::{ConnectionState, MediaCommand, MediaKind, StreamPurpose};
use voip_core::{CallId, StreamId};
use webrtc::peer_connection::StatsSelector;

use crate::call::{spawn_counted, CallInput, CallTask, Shared, SharedRef};
use crate::config::{IceServer, WebrtcConfig};
use crate::engine::{media_event_channel, MediaEventReceiver, MediaEventSender};
use crate::error::{Error, Result};
use crate::media::sink::SinkStats;
use crate::runtime::{Counters, EngineRuntime, NetworkSwitch, Resources};
use crate::stats::CallStats;

/// A local track of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTrackInfo {
    /// Stream id (msid in our SDP).
    pub stream_id: StreamId,
    /// Usermedia or screenshare.
    pub purpose: StreamPurpose,
    /// Audio or video.
    pub kind: MediaKind,
    /// Not muted and not on hold.
    pub enabled: bool,
    /// The negotiated direction lets this track send.
    pub sending: bool,
    /// Frames handed to webrtc-rs so far.
    pub frames_sent: u64,
}

/// A remote track of a call and what arrived on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTrackInfo {
    /// Stream id (msid in the remote SDP).
    pub stream_id: StreamId,
    /// The stream's purpose, once known from the stream metadata that came with the remote
    /// description (`MediaCommand::SetRemoteDescription`'s `stream_purposes`, or
    /// [`WebrtcEngine::set_remote_purpose`]).
    pub purpose: Option<StreamPurpose>,
    /// Audio or video.
    pub kind: MediaKind,
    /// Track id (msid in the remote SDP).
    pub track_id: String,
    /// The track ended (removed by the remote, or the call closed).
    pub ended: bool,
    /// Packets received and their validation.
    pub stats: SinkStats,
}

struct CallHandle {
    tx: mpsc::UnboundedSender<CallInput>,
    shared: SharedRef,
}

struct Inner {
    config: Arc<WebrtcConfig>,
    /// Shared with every call task; read when a call builds its peer connection.
    ice_servers: Arc<Mutex<Vec<IceServer>>>,
    events: MediaEventSender,
    calls: Mutex<HashMap<CallId, CallHandle>>,
    /// Calls that were closed: late commands for them are dropped instead of starting a new
    /// call task.
    closed: Mutex<HashSet<CallId>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    counters: Arc<Counters>,
    runtime: Arc<EngineRuntime>,
    /// The tokio runtime the engine was created in; call tasks are spawned on it, so
    /// `execute` may be called from any thread.
    handle: tokio::runtime::Handle,
}

/// The webrtc-rs media engine. A cheap `Clone` handle; all clones drive the same calls.
///
/// Executes [`MediaCommand`]s (see `voip::MediaEngine` for the contract) with one task per call,
/// and offers the app media API: local and remote tracks, stats, ICE servers. Calls run on the
/// tokio runtime the engine was created in.
#[derive(Clone)]
pub struct WebrtcEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebrtcEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcEngine")
            .field("config", &self.inner.config)
            .field("calls", &self.calls())
            .field("resources", &self.resources())
            .finish()
    }
}

impl WebrtcEngine {
    /// An engine reporting to `events`.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (the engine spawns its tasks on the current one).
    pub fn new(config: WebrtcConfig, events: MediaEventSender) -> Self {
        let counters = Arc::new(Counters::default());
        let runtime = Arc::new(EngineRuntime::new(counters.clone(), config.network.clone()));
        WebrtcEngine {
            inner: Arc::new(Inner {
                ice_servers: Arc::new(Mutex::new(config.ice_servers.clone())),
                config: Arc::new(config),
                events,
                calls: Mutex::new(HashMap::new()),
                closed: Mutex::new(HashSet::new()),
                tasks: Mutex::new(Vec::new()),
                counters,
                runtime,
                handle: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// The decoded-audio hub given to [`WebrtcConfig::with_audio`] (feature `codecs`).
    #[cfg(feature = "codecs")]
    pub fn audio(&self) -> Option<&crate::media::audio::AudioHub> {
        self.inner.config.audio()
    }

    /// The decoded-video hub given to [`WebrtcConfig::with_video`] (feature `codecs`).
    #[cfg(feature = "codecs")]
    pub fn video(&self) -> Option<&crate::media::video::VideoHub> {
        self.inner.config.video()
    }

    /// An engine and the receiver of its events.
    pub fn with_channel(config: WebrtcConfig) -> (Self, MediaEventReceiver) {
        let (tx, rx) = media_event_channel();
        (Self::new(config, tx), rx)
    }

    /// Replaces the ICE servers used by peer connections built from now on (at the next
    /// `CreatePeer` of any call, also of a call whose task already exists), e.g. after refreshing
    /// the homeserver's TURN credentials before their TTL ends. Peer connections that already
    /// exist get them too (`RTCPeerConnection::set_configuration`; unless
    /// [`WebrtcConfig::with_live_ice_server_updates`] is off): they use them from their next ICE
    /// restart on, which allocates a new relay with them (sockets rebound: a TURN server
    /// refuses to refresh an allocation under another REST username). A relayed call keeps its
    /// allocation meanwhile: coturn refreshes it under the expired username. With
    /// [`WebrtcConfig::with_restart_on_turn_refresh`] `voip` asks the core to restart ICE on the
    /// relayed calls ([`WebrtcEngine::relayed_calls`]) at each refresh.
    ///
    /// From the homeserver's `/voip/turnServer` response: [`TurnServerResponse`] converts with
    /// `into()`; from separate fields (voip-matrix's `TurnServers`) use [`IceServer::turn`].
    ///
    /// [`TurnServerResponse`]: crate::TurnServerResponse
    pub fn set_ice_servers(&self, servers: Vec<IceServer>) {
        if let Ok(mut s) = self.inner.ice_servers.lock() {
            *s = servers;
        }
        if !self.inner.config.refresh_live_calls {
            return;
        }
        if let Ok(calls) = self.inner.calls.lock() {
            for handle in calls.values() {
                let _ = handle.tx.send(CallInput::IceServersChanged);
            }
        }
    }

    /// Calls whose media goes through a TURN relay: every call with a peer connection under
    /// [`crate::IceTransportPolicy::Relay`], otherwise those whose selected candidate pair has a
    /// local `relay` candidate. These are the calls `voip` restarts at a TURN refresh under
    /// [`WebrtcConfig::with_restart_on_turn_refresh`], for a TURN server that would end their
    /// allocation once its credentials expired.
    pub async fn relayed_calls(&self) -> Vec<CallId> {
        let pcs: Vec<(CallId, Arc<dyn webrtc::peer_connection::PeerConnection>)> =
            match self.inner.calls.lock() {
                Ok(calls) => calls
                    .iter()
                    .filter_map(|(id, h)| Some((id.clone(), h.shared.lock().ok()?.pc.clone()?)))
                    .collect(),
                Err(_) => return Vec::new(),
            };
        let relay_only = self.inner.config.ice_transport_policy == crate::config::IceTransportPolicy::Relay;
        let mut relayed = Vec::new();
        for (id, pc) in pcs {
            let through_relay = relay_only || {
                let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
                CallStats::from_report(&report)
                    .selected_pair
                    .and_then(|p| p.local)
                    .is_some_and(|l| l.candidate_type == "relay")
            };
            if through_relay {
                relayed.push(id);
            }
        }
        relayed.sort();
        relayed
    }

    /// Sets the homeserver's TURN servers: peer connections built from now on use the app's
    /// servers from [`WebrtcConfig::with_ice_servers`] followed by `turn` (merged, not
    /// replaced; a later call replaces the previous `turn` list).
    pub fn set_turn_servers(&self, turn: Vec<IceServer>) {
        let mut all = self.inner.config.ice_servers.clone();
        all.extend(turn.into_iter().filter(|t| !t.urls.is_empty()));
        self.set_ice_servers(all);
    }

    /// Whether live calls get new ICE servers ([`WebrtcConfig::with_live_ice_server_updates`]).
    pub fn live_ice_server_updates(&self) -> bool {
        self.inner.config.refresh_live_calls
    }

    /// Whether relayed calls should restart ICE at each TURN refresh: live updates on and
    /// [`WebrtcConfig::with_restart_on_turn_refresh`].
    pub fn restart_on_turn_refresh(&self) -> bool {
        self.inner.config.refresh_live_calls && self.inner.config.restart_on_turn_refresh
    }

    /// The ICE servers the next peer connection will be built with.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        self.inner.ice_servers.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The switch that black-holes this engine's UDP traffic.
    pub fn network(&self) -> NetworkSwitch {
        self.inner.config.network.clone()
    }

    /// Live tasks and sockets of this engine (all calls).
    pub fn resources(&self) -> Resources {
        self.inner.counters.snapshot()
    }

    /// Calls with a running task.
    pub fn calls(&self) -> Vec<CallId> {
        self.inner.calls.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default()
    }

    fn shared(&self, call_id: &CallId) -> Result<SharedRef> {
        self.inner
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(call_id).map(|h| h.shared.clone()))
            .ok_or_else(|| Error::NoSuchCall(call_id.clone()))
    }

    /// The call's local tracks.
    pub fn local_tracks(&self, call_id: &CallId) -> Result<Vec<LocalTrackInfo>> {
        let shared = self.shared(call_id)?;
        let s = shared.lock().map_err(|_| Error::CallClosed(call_id.clone()))?;
        Ok(s.local
            .iter()
            .map(|l| LocalTrackInfo {
                stream_id: l.stream_id.clone(),
                purpose: l.purpose,
                kind: l.kind,
                enabled: l.gate.enabled(),
                sending: l.gate.may_send.load(Ordering::SeqCst),
                frames_sent: l.gate.frames_sent.load(Ordering::Relaxed),
            })
            .collect())
    }

    /// The call's remote tracks (including ended ones), with what arrived on each.
    pub fn remote_tracks(&self, call_id: &CallId) -> Result<Vec<RemoteTrackInfo>> {
        let shared = self.shared(call_id)?;
        let s = shared.lock().map_err(|_| Error::CallClosed(call_id.clone()))?;
        Ok(s.remote
            .iter()
            .map(|r| RemoteTrackInfo {
                stream_id: r.stream_id.clone(),
                purpose: s.remote_purposes.get(&r.stream_id).copied(),
                kind: r.kind,
                track_id: r.track_id.clone(),
                ended: r.ended,
                stats: r.sink.stats(),
            })
            .collect())
    }

    /// Records the purpose of a remote stream (from `sdp_stream_metadata`).
    pub fn set_remote_purpose(
        &self,
        call_id: &CallId,
        stream_id: StreamId,
        purpose: StreamPurpose,
    ) -> Result<()> {
        let shared = self.shared(call_id)?;
        let mut s = shared.lock().map_err(|_| Error::CallClosed(call_id.clone()))?;
        s.remote_purposes.insert(stream_id, purpose);
        Ok(())
    }

    /// The last connection state the call reported.
    pub fn connection_state(&self, call_id: &CallId) -> Option<ConnectionState> {
        self.shared(call_id).ok()?.lock().ok()?.connection_state
    }

    /// Whether the call holds the remote.
    pub fn is_on_hold(&self, call_id: &CallId) -> Result<bool> {
        let shared = self.shared(call_id)?;
        let s = shared.lock().map_err(|_| Error::CallClosed(call_id.clone()))?;
        Ok(s.on_hold)
    }

    /// A statistics summary of the call: packets and bytes each way, loss, jitter, RTT and the
    /// selected candidate pair.
    pub async fn stats(&self, call_id: &CallId) -> Result<CallStats> {
        let pc = {
            let shared = self.shared(call_id)?;
            let s = shared.lock().map_err(|_| Error::CallClosed(call_id.clone()))?;
            s.pc.clone().ok_or_else(|| Error::NoPeerConnection(call_id.clone()))?
        };
        let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
        Ok(CallStats::from_report(&report))
    }

    /// Adds a local stream on the app's initiative (not through the core) and reports
    /// [`voip_core::media::MediaEvent::NegotiationNeeded`] once the tracks are attached.
    pub fn add_local_stream(
        &self,
        call_id: &CallId,
        stream_id: StreamId,
        purpose: StreamPurpose,
        audio: bool,
        video: bool,
    ) -> Result<()> {
        self.send_app(call_id, CallInput::AppAddStream { stream_id, purpose, audio, video })
    }

    /// Removes a local stream on the app's initiative and reports `NegotiationNeeded`.
    pub fn remove_local_stream(&self, call_id: &CallId, stream_id: StreamId) -> Result<()> {
        self.send_app(call_id, CallInput::AppRemoveStream { stream_id })
    }

    fn send_app(&self, call_id: &CallId, input: CallInput) -> Result<()> {
        let calls = self.inner.calls.lock().map_err(|_| Error::NoSuchCall(call_id.clone()))?;
        let handle = calls.get(call_id).ok_or_else(|| Error::NoSuchCall(call_id.clone()))?;
        handle.tx.send(input).map_err(|_| Error::CallClosed(call_id.clone()))
    }

    /// Waits until every call task that has been closed has finished (its peer connection is
    /// closed and its tasks aborted). Running calls are not affected.
    pub async fn wait_closed(&self) {
        loop {
            let finished: Vec<_> = match self.inner.tasks.lock() {
                Ok(mut t) => {
                    let (done, running): (Vec<_>, Vec<_>) = t.drain(..).partition(|h| h.is_finished());
                    *t = running;
                    if t.is_empty() {
                        return;
                    }
                    done
                }
                Err(_) => return,
            };
            drop(finished);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Closes every call (as if `Close` was executed for each) and waits for them.
    pub async fn shutdown(&self) {
        let calls: Vec<CallId> = self.calls();
        for c in calls {
            self.execute(c, MediaCommand::Close);
        }
        self.wait_closed().await;
    }
}

impl WebrtcEngine {
    /// Queues `command` for `call_id` (the core's `Output::Media`). Never blocks and never
    /// fails: commands of one call run in order on that call's task; results come back as
    /// [`MediaEvent`](voip_core::media::MediaEvent)s on the engine's event channel. After `Close`, later commands for the
    /// same call are dropped. (`voip` implements its `MediaEngine` trait with this.)
    pub fn execute(&self, call_id: CallId, command: MediaCommand) {
        let Ok(mut calls) = self.inner.calls.lock() else { return };
        let is_close = matches!(command, MediaCommand::Close);
        if is_close {
            if let Some(handle) = calls.remove(&call_id) {
                let _ = handle.tx.send(CallInput::Media(command));
            }
            if let Ok(mut closed) = self.inner.closed.lock() {
                closed.insert(call_id);
            }
            return;
        }
        if !calls.contains_key(&call_id) && self.inner.closed.lock().is_ok_and(|c| c.contains(&call_id)) {
            debug!(%call_id, ?command, "command for a closed call dropped");
            return;
        }
        let handle = calls.entry(call_id.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared: SharedRef = Arc::new(Mutex::new(Shared::default()));
            let ice_servers = self.inner.ice_servers.clone();
            let task = CallTask::new(
                call_id.clone(),
                self.inner.config.clone(),
                ice_servers,
                self.inner.events.clone(),
                shared.clone(),
                self.inner.counters.clone(),
                self.inner.runtime.clone(),
            );
            let span = info_span!("call", call_id = %call_id);
            let _entered = self.inner.handle.enter();
            let join = spawn_counted(&self.inner.counters, task.run(rx).instrument(span));
            if let Ok(mut tasks) = self.inner.tasks.lock() {
                tasks.retain(|t| !t.is_finished());
                tasks.push(join);
            }
            CallHandle { tx, shared }
        });
        if let MediaCommand::SetRemoteDescription { stream_purposes, .. }
        | MediaCommand::SetStreamPurposes { stream_purposes } = &command
        {
            if let Ok(mut s) = handle.shared.lock() {
                s.remote_purposes.extend(stream_purposes.iter().map(|(id, p)| (id.clone(), *p)));
            }
        }
        if handle.tx.send(CallInput::Media(command)).is_err() {
            warn!(%call_id, "call task is gone; command dropped");
        }
    }
}
