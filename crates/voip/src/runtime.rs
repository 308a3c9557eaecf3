//! The runtime: one tokio task per [`Voip`] that owns the sans-IO core, feeds it inputs (homeserver
//! events, send results, media events, timers) and executes its outputs through the transport and
//! the media engine.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use voip_core::media::{MediaEngine, MediaEvent};
use voip_core::{
    CallId, CallInfo, CallType, Command, Config, Counters, DeviceId, Event, GroupCallId, Input, LocalDevice,
    Output, RoomId, Signalling, UserId,
};

use crate::call::{Call, CallEvent};
use crate::feed::{Feed, Subscription};
use crate::group::{GroupCall, GroupCallBackend, GroupCallEvent};
use crate::transport::{Inputs, Transport};
use crate::{now, VoipError};

/// Ended calls whose event history is kept for late subscribers.
const KEEP_ENDED: usize = 64;

/// A missed call (famedly's "missed call" notification): an incoming call that was not answered
/// here — it timed out, was cancelled before we answered, or was refused because we were busy.
#[derive(Clone, Debug, PartialEq)]
pub struct MissedCall {
    /// The call.
    pub call_id: CallId,
    /// The room.
    pub room_id: RoomId,
    /// The caller.
    pub caller: UserId,
    /// Why it ended.
    pub reason: voip_core::EndReason,
}

/// An app callback for encryption keys (a LiveKit key provider).
type KeySink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Receives media events from an engine, for [`VoipBuilder::media_engine`].
pub type MediaEvents = mpsc::UnboundedReceiver<(CallId, MediaEvent)>;

pub(crate) struct State {
    pub(crate) core: voip_core::Voip,
    transport: Arc<dyn Transport>,
    engine: Arc<dyn MediaEngine>,
    calls: HashMap<CallId, Feed<CallEvent>>,
    ended: VecDeque<CallId>,
    groups: HashMap<GroupCallId, Feed<GroupCallEvent>>,
    incoming: broadcast::Sender<Call>,
    missed: broadcast::Sender<MissedCall>,
    events: broadcast::Sender<Event>,
    key_sinks: Vec<KeySink>,
    stopped: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
    local: LocalDevice,
    #[cfg(feature = "matrix")]
    pub(crate) adapter: Option<voip_matrix::MatrixAdapter>,
    /// Decoded audio of the webrtc engine (`WebrtcConfig::with_audio`).
    #[cfg(feature = "codecs")]
    pub(crate) audio: Option<voip_webrtc::media::audio::AudioHub>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one input through the core and executes what comes out.
    pub(crate) fn handle(self: &Arc<Self>, input: Input) -> Result<(), VoipError> {
        let mut st = self.lock();
        if st.stopped {
            return Err(VoipError::Stopped);
        }
        let result = st.core.handle(now(), input);
        st.drain(self);
        drop(st);
        // The deadline may have moved.
        self.wake.notify_one();
        result.map_err(VoipError::from)
    }

    /// Runs a command; errors are the caller's (API misuse), not the network's.
    pub(crate) fn command(self: &Arc<Self>, command: Command) -> Result<(), VoipError> {
        self.handle(Input::Command(command))
    }

    pub(crate) fn call_info(&self, call_id: &CallId) -> Option<CallInfo> {
        self.lock().core.call(call_id)
    }

    pub(crate) fn call_events(self: &Arc<Self>, call_id: &CallId) -> Subscription<CallEvent> {
        self.lock().calls.entry(call_id.clone()).or_default().subscribe()
    }

    pub(crate) fn group_events(&self, group: &GroupCallId) -> Subscription<GroupCallEvent> {
        self.lock().groups.entry(group.clone()).or_default().subscribe()
    }

    pub(crate) fn local(&self) -> &LocalDevice {
        &self.local
    }
}

impl State {
    fn drain(&mut self, shared: &Arc<Shared>) {
        while let Some(out) = self.core.poll() {
            match out {
                Output::Send(req) => {
                    tracing::trace!(id = %req.id, "send");
                    self.transport.submit(req);
                }
                Output::Media { call_id, command } => {
                    tracing::trace!(%call_id, ?command, "media command");
                    self.engine.execute(call_id, command);
                }
                Output::Event(event) => {
                    self.engine.observe(&event);
                    self.dispatch(shared, event);
                }
            }
        }
    }

    fn call_feed(&mut self, call_id: &CallId) -> &mut Feed<CallEvent> {
        self.calls.entry(call_id.clone()).or_default()
    }

    fn dispatch(&mut self, shared: &Arc<Shared>, event: Event) {
        let _ = self.events.send(event.clone());
        let to_call = |st: &mut State, call_id: &CallId, ev: CallEvent| st.call_feed(call_id).push(ev);
        match &event {
            Event::IncomingCall { call_id, caller, call_type, .. } => {
                let _span = tracing::info_span!("call", %call_id).entered();
                tracing::info!(%caller, ?call_type, "incoming call");
                // The call's feed exists before the app sees the handle: nothing is missed.
                self.call_feed(call_id);
                let _ = self.incoming.send(Call::new(shared.clone(), call_id.clone()));
            }
            Event::RingtoneStarted { call_id } => to_call(self, call_id, CallEvent::RingtoneStarted),
            Event::RingtoneStopped { call_id } => to_call(self, call_id, CallEvent::RingtoneStopped),
            Event::StateChanged { call_id, state } => {
                tracing::info!(%call_id, ?state, "call state");
                to_call(self, call_id, CallEvent::StateChanged(*state));
            }
            Event::StreamsChanged { call_id, local, remote } => to_call(
                self,
                call_id,
                CallEvent::StreamsChanged { local: local.clone(), remote: remote.clone() },
            ),
            Event::HoldChanged { call_id, local_hold, remote_hold } => to_call(
                self,
                call_id,
                CallEvent::HoldChanged { local_hold: *local_hold, remote_hold: *remote_hold },
            ),
            Event::AssertedIdentityChanged { call_id, identity } => {
                to_call(self, call_id, CallEvent::AssertedIdentityChanged(identity.clone()))
            }
            Event::ReplacesReceived { call_id, replaces } => {
                to_call(self, call_id, CallEvent::ReplacesReceived(replaces.clone()))
            }
            Event::CallReplaced { old_call_id, new_call_id } => {
                self.call_feed(new_call_id);
                let new_call = Call::new(shared.clone(), new_call_id.clone());
                to_call(self, old_call_id, CallEvent::Replaced { new_call });
            }
            Event::AnswerSelected { call_id, party_id, user_id } => to_call(
                self,
                call_id,
                CallEvent::AnswerSelected { party_id: party_id.clone(), user_id: user_id.clone() },
            ),
            Event::CallEnded { call_id, reason, initiator } => {
                tracing::info!(%call_id, ?reason, ?initiator, "call ended");
                to_call(self, call_id, CallEvent::Ended { reason: reason.clone(), initiator: *initiator });
                self.ended.push_back(call_id.clone());
                while self.ended.len() > KEEP_ENDED {
                    if let Some(old) = self.ended.pop_front() {
                        self.calls.remove(&old);
                    }
                }
            }
            Event::MissedCall { call_id, room_id, caller, reason } => {
                let _ = self.missed.send(MissedCall {
                    call_id: call_id.clone(),
                    room_id: room_id.clone(),
                    caller: caller.clone(),
                    reason: reason.clone(),
                });
            }
            Event::GroupCallStateChanged { group, state } => {
                tracing::info!(%group, ?state, "group call state");
                self.groups.entry(group.clone()).or_default().push(GroupCallEvent::StateChanged(*state));
            }
            Event::ParticipantsChanged { group, joined, left, participants } => {
                self.groups.entry(group.clone()).or_default().push(GroupCallEvent::ParticipantsChanged {
                    joined: joined.clone(),
                    left: left.clone(),
                    participants: participants.clone(),
                });
            }
            Event::EncryptionKey { group, participant, local, index, key } => {
                for sink in &self.key_sinks {
                    sink(&event);
                }
                self.groups.entry(group.clone()).or_default().push(GroupCallEvent::EncryptionKey {
                    participant: participant.clone(),
                    local: *local,
                    index: *index,
                    key: key.clone(),
                });
            }
            // Group notifications, declines and future events: on `Voip::events` only.
            _ => {}
        }
    }
}

/// Builds a [`Voip`]: a signalling transport with its inputs, a media engine with its events, a
/// [`Config`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), voip::VoipError> {
/// use voip::local::LocalHomeserver;
/// use voip::VoipBuilder;
/// # struct NoMedia;
/// # impl voip::core::media::MediaEngine for NoMedia {
/// #     fn execute(&self, _: voip::core::CallId, _: voip::core::MediaCommand) {}
/// # }
/// let hs = LocalHomeserver::new();
/// let conn = hs.connect("@alice:local", "ALICE");
/// let (_media_tx, media_rx) = tokio::sync::mpsc::unbounded_channel();
/// let voip = VoipBuilder::new(conn.device, conn.transport, conn.inputs)
///     .media_engine(std::sync::Arc::new(NoMedia), media_rx)
///     .build()?;
/// assert!(voip.calls().is_empty());
/// voip.shutdown().await;
/// # Ok(()) }
/// ```
pub struct VoipBuilder {
    local: LocalDevice,
    transport: Arc<dyn Transport>,
    inputs: Inputs,
    config: Config,
    seed: Option<[u8; 32]>,
    engine: Option<(Arc<dyn MediaEngine>, MediaEvents)>,
    key_sinks: Vec<KeySink>,
    #[cfg(feature = "webrtc")]
    pub(crate) webrtc: Option<voip_webrtc::WebrtcEngine>,
    #[cfg(feature = "matrix")]
    pub(crate) adapter: Option<voip_matrix::MatrixAdapter>,
}

impl std::fmt::Debug for VoipBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoipBuilder").field("local", &self.local).finish_non_exhaustive()
    }
}

impl VoipBuilder {
    /// A builder for `local` (this device), executing sends through `transport`, whose results
    /// and the homeserver's events arrive on `inputs`.
    pub fn new(local: LocalDevice, transport: impl Transport, inputs: impl Into<Inputs>) -> Self {
        Self {
            local,
            transport: Arc::new(transport),
            inputs: inputs.into(),
            config: Config::default(),
            seed: None,
            engine: None,
            key_sinks: Vec::new(),
            #[cfg(feature = "webrtc")]
            webrtc: None,
            #[cfg(feature = "matrix")]
            adapter: None,
        }
    }

    /// The core's configuration (lifetimes, busy policy, glare, group-call timings).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The seed of the core's CSPRNG (party ids, call ids, media keys). Default: from the OS.
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The media engine and the channel it reports [`MediaEvent`]s on.
    pub fn media_engine(mut self, engine: Arc<dyn MediaEngine>, events: MediaEvents) -> Self {
        self.engine = Some((engine, events));
        self
    }

    /// Calls `sink` with every [`Event::EncryptionKey`], in order, before any subscriber sees
    /// it: where an app's LiveKit key provider plugs in.
    pub fn on_encryption_key(mut self, sink: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.key_sinks.push(Arc::new(sink));
        self
    }

    /// Starts the runtime task on the current tokio runtime.
    pub fn build(self) -> Result<Voip, VoipError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| VoipError::NoRuntime)?;
        let (engine, media_events) = self.engine.ok_or(VoipError::NoMediaEngine)?;
        let seed = match self.seed {
            Some(seed) => seed,
            None => os_seed()?,
        };
        let core = voip_core::Voip::new(self.config, self.local.clone(), seed);
        let state = State {
            core,
            transport: self.transport,
            engine,
            calls: HashMap::new(),
            ended: VecDeque::new(),
            groups: HashMap::new(),
            incoming: broadcast::channel(64).0,
            missed: broadcast::channel(64).0,
            events: broadcast::channel(1024).0,
            key_sinks: self.key_sinks,
            stopped: false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            local: self.local,
            #[cfg(feature = "matrix")]
            adapter: self.adapter,
            #[cfg(feature = "codecs")]
            audio: self.webrtc.as_ref().and_then(|e| e.audio().cloned()),
        });
        #[cfg(feature = "matrix")]
        if let Some(adapter) = &shared.adapter {
            crate::matrix::replay_known_rooms(adapter);
            #[cfg(feature = "webrtc")]
            if let Some(engine) = &self.webrtc {
                crate::matrix::keep_turn_fresh(adapter, engine.clone());
            }
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = handle.spawn(run(shared.clone(), self.inputs, media_events, stop_rx));
        Ok(Voip {
            inner: Arc::new(VoipInner {
                shared,
                stop: Mutex::new(Some((stop_tx, task))),
                #[cfg(feature = "webrtc")]
                webrtc: self.webrtc,
            }),
        })
    }
}

/// 32 bytes from the operating system's CSPRNG (`getrandom`): the seed of the core's ChaCha20,
/// from which call ids, party ids and SFU media keys are drawn.
pub(crate) fn os_seed() -> Result<[u8; 32], VoipError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(VoipError::NoRandomness)?;
    Ok(seed)
}

async fn run(
    shared: Arc<Shared>,
    mut inputs: Inputs,
    mut media: MediaEvents,
    mut stop: oneshot::Receiver<()>,
) {
    let mut media_open = true;
    loop {
        let deadline = shared.lock().core.next_deadline().map(|d| d.at);
        let sleep = deadline.map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.since(now())));
        let input = tokio::select! {
            biased;
            _ = &mut stop => {
                // Results of sends completed during shutdown still reach the core.
                while let Some(input) = inputs.try_recv() {
                    let _ = shared.handle(input);
                }
                break;
            }
            i = inputs.recv() => match i {
                Some(i) => i,
                None => {
                    tracing::warn!("the transport's input channel closed: the runtime stops");
                    break;
                }
            },
            m = media.recv(), if media_open => match m {
                Some((call_id, event)) => Input::Media { call_id, event },
                None => { media_open = false; continue; }
            },
            _ = tokio::time::sleep(sleep) => Input::Tick,
            _ = shared.wake.notified() => continue,
        };
        let is_tick = matches!(input, Input::Tick);
        if let Err(e) = shared.handle(input) {
            // Input from the network that the core refuses is logged and dropped, never fatal.
            if matches!(e, VoipError::Stopped) {
                break;
            }
            tracing::debug!(error = %e, tick = is_tick, "input not applied");
        }
    }
    shared.lock().stopped = true;
}

struct VoipInner {
    shared: Arc<Shared>,
    stop: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    #[cfg(feature = "webrtc")]
    webrtc: Option<voip_webrtc::WebrtcEngine>,
}

/// Calls for one Matrix device: the handle apps keep. Cheap to clone; clones share the runtime.
///
/// Built with [`VoipBuilder`] (any transport) or `Voip::from_client` (feature `matrix`: an
/// app's matrix-sdk `Client`). Dropping every clone does not stop the runtime task; call
/// [`Voip::shutdown`].
#[derive(Clone)]
pub struct Voip {
    inner: Arc<VoipInner>,
}

impl std::fmt::Debug for Voip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voip").field("device", self.inner.shared.local()).finish_non_exhaustive()
    }
}

impl Voip {
    /// This device.
    pub fn local_device(&self) -> &LocalDevice {
        self.inner.shared.local()
    }

    /// Calls `user` in `room` (the `invite_to_call` of famedly's SDK). With `device`, the call
    /// goes to that one device over to-device messages (for example another device of our own
    /// user); without, it rings every device of `user` through the room.
    pub fn invite_to_call(
        &self,
        room: &RoomId,
        call_type: CallType,
        user: &UserId,
        device: Option<&DeviceId>,
    ) -> Result<Call, VoipError> {
        let shared = &self.inner.shared;
        let signalling = if device.is_some() { Signalling::ToDevice } else { Signalling::Room };
        let call_id = {
            let mut st = shared.lock();
            if st.stopped {
                return Err(VoipError::Stopped);
            }
            let call_id = st.core.place_call(
                now(),
                room.clone(),
                user.clone(),
                device.cloned(),
                call_type,
                signalling,
            )?;
            // Register the call's feed before its first events are dispatched.
            st.calls.entry(call_id.clone()).or_default();
            st.drain(shared);
            call_id
        };
        shared.wake.notify_one();
        Ok(Call::new(shared.clone(), call_id))
    }

    /// Incoming calls, each as a [`Call`] whose event feed already holds everything reported so
    /// far (famedly registers listeners before the app sees the call; so do we). Subscribe at
    /// start-up: calls that rang before are in [`Voip::calls`].
    pub fn incoming_calls(&self) -> IncomingCalls {
        IncomingCalls(self.inner.shared.lock().incoming.subscribe())
    }

    /// Missed calls, as they happen.
    pub fn missed_calls(&self) -> broadcast::Receiver<MissedCall> {
        self.inner.shared.lock().missed.subscribe()
    }

    /// Every event the core reports (calls, group calls, ringtone signals, group-call
    /// notifications, missed calls), as they happen.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.shared.lock().events.subscribe()
    }

    /// The calls the core knows about (ringing, in progress, just ended).
    pub fn calls(&self) -> Vec<Call> {
        let shared = &self.inner.shared;
        let infos = shared.lock().core.calls();
        infos.into_iter().map(|i| Call::new(shared.clone(), i.call_id)).collect()
    }

    /// A handle for a call by id, if the core knows it.
    pub fn call(&self, call_id: &CallId) -> Option<Call> {
        let shared = &self.inner.shared;
        shared.call_info(call_id).map(|_| Call::new(shared.clone(), call_id.clone()))
    }

    /// Whether a new incoming call would ring now (famedly's `can_handle_new_call`).
    pub fn can_handle_new_call(&self) -> bool {
        self.inner.shared.lock().core.can_handle_new_call()
    }

    /// Overrides the busy policy: `Some(false)` refuses every new call (busy), `Some(true)`
    /// accepts every new call, `None` returns to the configured policy.
    pub fn set_can_handle_new_call(&self, value: Option<bool>) -> Result<(), VoipError> {
        self.inner.shared.command(Command::SetCanHandleNewCall { value })
    }

    /// The room's group call (`call_id` `""`) for this `application` and `scope`, with this
    /// backend. Nothing is sent until [`GroupCall::enter`]; members already in the call are
    /// visible at once through [`GroupCall::participants`].
    pub fn fetch_or_create_group_call(
        &self,
        room: &RoomId,
        backend: GroupCallBackend,
        application: &str,
        scope: &str,
    ) -> GroupCall {
        GroupCall::new(self.inner.shared.clone(), room.clone(), backend, application, scope)
    }

    /// What the core ignored from the network, by cause (malformed, spoofed, stale, …).
    pub fn counters(&self) -> Counters {
        self.inner.shared.lock().core.counters().clone()
    }

    /// The webrtc-rs engine, when the runtime was built with `VoipBuilder::webrtc`: per-call
    /// tracks, stats and sources.
    #[cfg(feature = "webrtc")]
    pub fn webrtc(&self) -> Option<&voip_webrtc::WebrtcEngine> {
        self.inner.webrtc.as_ref()
    }

    /// The matrix-sdk adapter, when built with `Voip::from_client`.
    #[cfg(feature = "matrix")]
    pub fn matrix(&self) -> Option<&voip_matrix::MatrixAdapter> {
        self.inner.shared.adapter.as_ref()
    }

    /// Stops the runtime. With matrix signalling, sends already queued (a hangup, a leave) are
    /// completed first and their results handled by the core; then the task stops and the media
    /// engine closes everything. Calls in progress are not hung up: hang up first.
    pub async fn shutdown(&self) {
        #[cfg(feature = "matrix")]
        if let Some(adapter) = &self.inner.shared.adapter {
            adapter.shutdown().await;
        }
        let stop = self.inner.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, task)) = stop {
            let _ = tx.send(());
            let _ = task.await;
        }
        #[cfg(feature = "webrtc")]
        if let Some(engine) = &self.inner.webrtc {
            engine.shutdown().await;
        }
    }
}

/// The stream of incoming calls of [`Voip::incoming_calls`].
#[derive(Debug)]
pub struct IncomingCalls(broadcast::Receiver<Call>);

impl IncomingCalls {
    /// The next incoming call; `None` once the runtime is gone.
    pub async fn next(&mut self) -> Option<Call> {
        loop {
            match self.0.recv().await {
                Ok(call) => return Some(call),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "incoming-call subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod seed_tests {
    /// Two runtimes never share a seed: each comes from the OS CSPRNG.
    #[test]
    fn two_instances_get_different_seeds() {
        let (a, b) = (super::os_seed().unwrap(), super::os_seed().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
        // And so different cores: their first call ids differ.
        let local = voip_core::LocalDevice::new("@a:x", "A");
        let ids = [a, b].map(|seed| {
            let mut core = voip_core::Voip::new(voip_core::Config::default(), local.clone(), seed);
            core.place_call(
                voip_core::Timestamp(1),
                "!r:x".into(),
                "@b:x".into(),
                None,
                voip_core::CallType::Voice,
                voip_core::Signalling::Room,
            )
            .unwrap()
        });
        assert_ne!(ids[0], ids[1]);
    }
}
