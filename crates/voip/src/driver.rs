//! The driver: the one task that owns the sans-IO core (in the manner of quinn's endpoint
//! driver). [`crate::VoipBuilder::build`] spawns it on tokio; [`crate::VoipBuilder::build_task`]
//! hands it to the caller as a future (voip-sim polls it on its deterministic executor).
//!
//! ```text
//!  Voip / Call / GroupCall ──Request (mpsc)──┐          ┌── reply (oneshot), after the snapshot
//!  transport inputs ─────────Input (mpsc)────┤          │
//!  media engine ─────────────MediaEvent──────┼─▶ Driver ─┼── Output::Send ─▶ Transport::submit
//!  Clock::sleep_until(next_deadline) ─Tick───┘  (core)  ├── Output::Media ▶ MediaEngine::execute
//!                                                       ├── Snapshot (watch) ▶ handles' getters
//!                                                       └── Event ▶ key callbacks, feeds, streams
//! ```
//!
//! Nothing else touches the core: handles send [`Request`]s and read the [`Snapshot`] the driver
//! publishes after every turn. A turn takes up to [`MAX_PER_TURN`] inputs, drains the core's
//! outputs after each (transport and engine calls queue and never block), then publishes the
//! snapshot, then delivers the turn's app events (key callbacks first, then feeds and streams),
//! then sends the replies — no lock is held while the core runs or while app code runs, so a key
//! callback may use the handles freely. The timer is re-armed only when
//! [`voip_core::VoipMachine::next_deadline`] changes (or after it fired).
//!
//! The transport, the media engine and the clock are trait objects (`Arc<dyn …>`), not type
//! parameters: the handles then have one type whatever the app plugs in (an app stores a `Voip`,
//! not a `Voip<MatrixAdapter, WebrtcEngine, SystemClock>`), and one dynamic call per output is
//! nothing next to the network and media work behind it.
//!
//! The driver stops when every strong handle ([`crate::Voip`], [`crate::Call`],
//! [`crate::GroupCall`]) is gone or on [`crate::Voip::shutdown`]: it lets the transport finish
//! its queued sends (their results still reach the core), closes every feed and stream, shuts
//! the media engine down and ends. Streams hold only weak references.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use voip_core::media::MediaEvent;

use crate::MediaEngine;
use voip_core::{
    CallId, CallInfo, CallType, Command, Counters, DeviceId, Event, GroupCallId, GroupCallInfo, Input,
    LocalDevice, MediaKeys, Output, Participant, RoomId, Signalling, Timestamp, UserId,
};

use crate::call::CallUpdate;
use crate::clock::{Clock, Sleep};
use crate::feed::{Feed, Subscription};
use crate::group::GroupCallUpdate;
use crate::runtime::MissedCall;
use crate::transport::Inputs;
use crate::VoipError;

/// Inputs, requests and media events handled in one turn before the driver publishes, delivers
/// and yields to the scheduler.
pub(crate) const MAX_PER_TURN: usize = 64;

/// Ended calls whose event history is kept for late subscribers.
const KEEP_ENDED: usize = 64;

/// An app callback for encryption keys (a LiveKit key provider).
pub(crate) type KeySink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Receives media events from an engine, for [`crate::VoipBuilder::media_engine`].
pub type MediaEvents = mpsc::UnboundedReceiver<(CallId, MediaEvent)>;

/// Work the driver runs when it stops.
pub(crate) type StopHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What handles ask of the driver.
pub(crate) enum Request {
    /// A core command; the reply carries the core's verdict.
    Command { command: Command, reply: oneshot::Sender<Result<(), VoipError>> },
    /// `place_call`; the reply carries the new call's id.
    PlaceCall {
        room: RoomId,
        user: UserId,
        device: Option<DeviceId>,
        call_type: CallType,
        signalling: Signalling,
        reply: oneshot::Sender<Result<CallId, VoipError>>,
    },
    /// Include this group call in the snapshots from now on.
    WatchGroup { group: GroupCallId, reply: oneshot::Sender<()> },
    /// Stop (from [`crate::Voip::shutdown`]).
    Stop,
}

/// A group call as the handles see it.
#[derive(Clone, Debug)]
pub(crate) struct GroupView {
    pub(crate) info: GroupCallInfo,
    pub(crate) media_keys: Option<MediaKeys>,
    pub(crate) local: Option<Participant>,
}

/// What the handles read: the core's state after the driver's last turn.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) calls: HashMap<CallId, CallInfo>,
    pub(crate) groups: HashMap<GroupCallId, GroupView>,
    pub(crate) counters: Counters,
    pub(crate) can_handle_new_call: bool,
    pub(crate) pending_sends: usize,
    pub(crate) input_errors: InputErrors,
}

/// Inputs the core refused with an error (an event too malformed to route, a media event for
/// a call it never held, or — a bug — an internal error). The runtime logs each and goes on;
/// [`crate::Voip::input_errors`] reads them for diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InputErrors {
    /// How many inputs were refused.
    pub count: u64,
    /// The first refusal: the runtime clock's time and the error.
    pub first: Option<(Timestamp, String)>,
    /// The latest refusal.
    pub last: Option<(Timestamp, String)>,
}

impl InputErrors {
    fn record(&mut self, at: Timestamp, error: &voip_core::Error) {
        self.count += 1;
        let entry = Some((at, error.to_string()));
        if self.first.is_none() {
            self.first = entry.clone();
        }
        self.last = entry;
    }
}

/// An event of a call's feed as stored: a replacement call travels by id (a stored handle would
/// keep the runtime alive), the feed's reader turns it into a [`crate::Call`].
#[derive(Clone, Debug)]
pub(crate) enum StoredUpdate {
    Update(CallUpdate),
    Replaced(CallId),
}

/// The per-call and per-group feeds, shared by the driver (which pushes) and the handles
/// (which subscribe). Its lock is held only for a push or a subscribe.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    calls: HashMap<CallId, Feed<StoredUpdate>>,
    ended: VecDeque<CallId>,
    groups: HashMap<GroupCallId, Feed<GroupCallUpdate>>,
    closed: bool,
}

impl Feeds {
    fn call(&mut self, id: &CallId) -> &mut Feed<StoredUpdate> {
        let closed = self.closed;
        self.calls.entry(id.clone()).or_insert_with(|| new_feed(closed))
    }

    fn group(&mut self, id: &GroupCallId) -> &mut Feed<GroupCallUpdate> {
        let closed = self.closed;
        self.groups.entry(id.clone()).or_insert_with(|| new_feed(closed))
    }

    fn close(&mut self) {
        self.closed = true;
        self.calls.values_mut().for_each(Feed::close);
        self.groups.values_mut().for_each(Feed::close);
    }
}

fn new_feed<T: Clone + Send + 'static>(closed: bool) -> Feed<T> {
    let mut feed = Feed::default();
    if closed {
        feed.close();
    }
    feed
}

/// What every handle shares with the driver, none of it the core.
pub(crate) struct Ctx {
    pub(crate) local: LocalDevice,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    feeds: Arc<Mutex<Feeds>>,
    incoming: broadcast::WeakSender<CallId>,
    missed: broadcast::WeakSender<MissedCall>,
    events: broadcast::WeakSender<Event>,
    stopped: watch::Receiver<bool>,
    #[cfg(feature = "matrix")]
    pub(crate) adapter: Option<voip_matrix::MatrixAdapter>,
    #[cfg(feature = "webrtc")]
    pub(crate) webrtc: Option<voip_webrtc::WebrtcEngine>,
    /// Decoded audio of the webrtc engine (`WebrtcConfig::with_audio`).
    #[cfg(feature = "codecs")]
    pub(crate) audio: Option<voip_webrtc::media::audio::AudioHub>,
    /// Decoded video of the webrtc engine (`WebrtcConfig::with_video`).
    #[cfg(feature = "codecs")]
    pub(crate) video: Option<voip_webrtc::media::video::VideoHub>,
}

/// A strong handle: keeps the driver running.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::UnboundedSender<Request>,
    pub(crate) ctx: Arc<Ctx>,
}

/// A weak handle, for streams: never keeps the driver running.
#[derive(Clone)]
pub(crate) struct WeakHandle {
    tx: mpsc::WeakUnboundedSender<Request>,
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for WeakHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakHandle").field("device", &self.ctx.local).finish_non_exhaustive()
    }
}

impl WeakHandle {
    pub(crate) fn upgrade(&self) -> Option<Handle> {
        Some(Handle { tx: self.tx.upgrade()?, ctx: self.ctx.clone() })
    }
}

impl Handle {
    pub(crate) fn downgrade(&self) -> WeakHandle {
        WeakHandle { tx: self.tx.downgrade(), ctx: self.ctx.clone() }
    }

    fn lock_feeds(&self) -> MutexGuard<'_, Feeds> {
        lock(&self.ctx.feeds)
    }

    /// The driver's last snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.ctx.snapshot.borrow().clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, VoipError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| VoipError::Stopped)?;
        rx.await.map_err(|_| VoipError::Stopped)
    }

    /// Runs a command in the driver; errors are the caller's (API misuse), not the network's.
    pub(crate) async fn command(&self, command: Command) -> Result<(), VoipError> {
        self.ask(|reply| Request::Command { command, reply }).await?
    }

    pub(crate) async fn place_call(
        &self,
        room: RoomId,
        user: UserId,
        device: Option<DeviceId>,
        call_type: CallType,
        signalling: Signalling,
    ) -> Result<CallId, VoipError> {
        self.ask(|reply| Request::PlaceCall { room, user, device, call_type, signalling, reply }).await?
    }

    pub(crate) async fn watch_group(&self, group: GroupCallId) -> Result<(), VoipError> {
        self.ask(|reply| Request::WatchGroup { group, reply }).await
    }

    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Request::Stop);
    }

    /// Resolves once the driver task has ended.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.ctx.stopped.clone();
        async move {
            // An error means the driver (and its sender) is gone: stopped too.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    pub(crate) fn call_feed(&self, id: &CallId) -> Subscription<StoredUpdate> {
        self.lock_feeds().call(id).subscribe()
    }

    pub(crate) fn group_feed(&self, id: &GroupCallId) -> Subscription<GroupCallUpdate> {
        self.lock_feeds().group(id).subscribe()
    }

    pub(crate) fn incoming(&self) -> Subscription<CallId> {
        Subscription::live(self.ctx.incoming.upgrade().map(|tx| tx.subscribe()))
    }

    pub(crate) fn missed(&self) -> Subscription<MissedCall> {
        Subscription::live(self.ctx.missed.upgrade().map(|tx| tx.subscribe()))
    }

    pub(crate) fn events(&self) -> Subscription<Event> {
        Subscription::live(self.ctx.events.upgrade().map(|tx| tx.subscribe()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the builder hands over to start a driver.
pub(crate) struct Parts {
    pub(crate) core: voip_core::VoipMachine,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) transport: Arc<dyn crate::Transport>,
    pub(crate) inputs: Inputs,
    pub(crate) engine: Arc<dyn MediaEngine>,
    pub(crate) media: MediaEvents,
    pub(crate) key_sinks: Vec<KeySink>,
    /// Run when the driver stops while it still handles inputs (the transport finishing its
    /// queued sends).
    pub(crate) drain_hooks: Vec<StopHook>,
    /// Run last (the media engine closing everything).
    pub(crate) final_hooks: Vec<StopHook>,
}

/// Builds the driver and returns the first strong handle and the driver's task, which the
/// caller runs (spawns on tokio, or polls itself).
pub(crate) fn new(
    parts: Parts,
    make_ctx: impl FnOnce(CtxChannels) -> Ctx,
) -> (Handle, impl Future<Output = ()> + Send + 'static) {
    let (tx, requests) = mpsc::unbounded_channel();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let feeds = Arc::new(Mutex::new(Feeds::default()));
    let incoming = broadcast::channel(64).0;
    let missed = broadcast::channel(64).0;
    let events = broadcast::channel(1024).0;
    let ctx = Arc::new(make_ctx(CtxChannels {
        snapshot: snapshot_rx,
        feeds: feeds.clone(),
        incoming: incoming.downgrade(),
        missed: missed.downgrade(),
        events: events.downgrade(),
        stopped: stopped_rx,
    }));
    let mut driver = Driver {
        core: parts.core,
        clock: parts.clock,
        transport: parts.transport,
        engine: parts.engine,
        key_sinks: parts.key_sinks,
        requests,
        inputs: parts.inputs,
        media: parts.media,
        media_open: true,
        feeds,
        incoming,
        missed,
        events,
        snapshot: snapshot_tx,
        watched: HashSet::new(),
        timer: None,
        input_errors: InputErrors::default(),
        app_events: Vec::new(),
        replies: Vec::new(),
        drain_hooks: parts.drain_hooks,
        final_hooks: parts.final_hooks,
        stopped: Some(StoppedGuard(stopped_tx)),
    };
    driver.publish();
    (Handle { tx, ctx }, driver.run())
}

/// The driver's channels that go into [`Ctx`].
pub(crate) struct CtxChannels {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    feeds: Arc<Mutex<Feeds>>,
    incoming: broadcast::WeakSender<CallId>,
    missed: broadcast::WeakSender<MissedCall>,
    events: broadcast::WeakSender<Event>,
    stopped: watch::Receiver<bool>,
}

impl CtxChannels {
    /// The context for `local`, with no adapter or engine attached.
    pub(crate) fn into_ctx(self, local: LocalDevice) -> Ctx {
        Ctx {
            local,
            snapshot: self.snapshot,
            feeds: self.feeds,
            incoming: self.incoming,
            missed: self.missed,
            events: self.events,
            stopped: self.stopped,
            #[cfg(feature = "matrix")]
            adapter: None,
            #[cfg(feature = "webrtc")]
            webrtc: None,
            #[cfg(feature = "codecs")]
            audio: None,
            #[cfg(feature = "codecs")]
            video: None,
        }
    }
}

/// Tells `Voip::stopped` waiters when the driver is gone, however it ends (a panic included).
struct StoppedGuard(watch::Sender<bool>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A reply waiting for the end of the turn (after the snapshot is published).
enum Reply {
    Command(oneshot::Sender<Result<(), VoipError>>, Result<(), VoipError>),
    PlaceCall(oneshot::Sender<Result<CallId, VoipError>>, Result<CallId, VoipError>),
    Watch(oneshot::Sender<()>),
}

enum Work {
    Request(Request),
    Input(Input),
    /// The request channel closed: every strong handle is gone.
    HandlesGone,
    /// The transport's input channel closed.
    InputsGone,
}

struct Driver {
    core: voip_core::VoipMachine,
    clock: Arc<dyn Clock>,
    transport: Arc<dyn crate::Transport>,
    engine: Arc<dyn MediaEngine>,
    key_sinks: Vec<KeySink>,
    requests: mpsc::UnboundedReceiver<Request>,
    inputs: Inputs,
    media: MediaEvents,
    media_open: bool,
    feeds: Arc<Mutex<Feeds>>,
    incoming: broadcast::Sender<CallId>,
    missed: broadcast::Sender<MissedCall>,
    events: broadcast::Sender<Event>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    watched: HashSet<GroupCallId>,
    /// The armed timer and the deadline it is for.
    timer: Option<(Timestamp, Sleep)>,
    /// Inputs the core refused, published with the snapshot.
    input_errors: InputErrors,
    /// App events of this turn, delivered after the snapshot.
    app_events: Vec<Event>,
    replies: Vec<Reply>,
    drain_hooks: Vec<StopHook>,
    final_hooks: Vec<StopHook>,
    /// Taken by [`Driver::stop`] so waiters are told only after the final hooks.
    stopped: Option<StoppedGuard>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.arm_timer();
            let first = self.next_work().await;
            let mut done = 0;
            let mut stop = self.apply(first);
            while !stop && done < MAX_PER_TURN {
                let Some(work) = self.try_work() else { break };
                stop = self.apply(work);
                done += 1;
            }
            self.end_turn();
            if stop {
                break;
            }
            if done == MAX_PER_TURN {
                // More is waiting: let the app's tasks (and the transport) run first.
                tokio::task::yield_now().await;
            }
        }
        self.stop().await;
    }

    /// Re-arms the timer when the core's next deadline moved (or the timer fired).
    fn arm_timer(&mut self) {
        let deadline = self.core.next_deadline().map(|d| d.at);
        if deadline != self.timer.as_ref().map(|(at, _)| *at) {
            self.timer = deadline.map(|at| (at, self.clock.sleep_until(at)));
        }
    }

    async fn next_work(&mut self) -> Work {
        let slot = &mut self.timer;
        let timer = async move {
            match slot.as_mut() {
                Some((_, sleep)) => sleep.await,
                None => std::future::pending().await,
            }
        };
        let work = tokio::select! {
            biased;
            r = self.requests.recv() => r.map_or(Work::HandlesGone, Work::Request),
            m = self.media.recv(), if self.media_open => match m {
                Some((call_id, event)) => Work::Input(Input::Media { call_id, event }),
                None => {
                    self.media_open = false;
                    Work::Input(Input::Tick)
                }
            },
            i = self.inputs.recv() => i.map_or(Work::InputsGone, Work::Input),
            () = timer => Work::Input(Input::Tick),
        };
        if matches!(work, Work::Input(Input::Tick)) {
            // Fired (or the media channel closed): ask the core again before sleeping.
            self.timer = None;
        }
        work
    }

    /// More work that is ready now, if any (requests first, then media, then the network).
    fn try_work(&mut self) -> Option<Work> {
        if let Ok(r) = self.requests.try_recv() {
            return Some(Work::Request(r));
        }
        if self.media_open {
            if let Ok((call_id, event)) = self.media.try_recv() {
                return Some(Work::Input(Input::Media { call_id, event }));
            }
        }
        self.inputs.try_recv().map(Work::Input)
    }

    /// Runs one piece of work through the core; `true` when the driver must stop.
    fn apply(&mut self, work: Work) -> bool {
        let now = self.clock.now();
        match work {
            Work::Input(input) => {
                let is_tick = matches!(input, Input::Tick);
                if let Err(e) = self.core.handle(now, input) {
                    // Input from the network that the core refuses is logged, counted and dropped.
                    tracing::debug!(error = %e, tick = is_tick, "input not applied");
                    self.input_errors.record(now, &e);
                }
            }
            Work::Request(Request::Command { command, reply }) => {
                let result = self.core.handle(now, Input::Command(command)).map_err(VoipError::from);
                self.replies.push(Reply::Command(reply, result));
            }
            Work::Request(Request::PlaceCall { room, user, device, call_type, signalling, reply }) => {
                let result = self
                    .core
                    .place_call(now, room, user, device, call_type, signalling)
                    .map_err(VoipError::from);
                if let Ok(id) = &result {
                    // The call's feed exists before its first event.
                    lock(&self.feeds).call(id);
                }
                self.replies.push(Reply::PlaceCall(reply, result));
            }
            Work::Request(Request::WatchGroup { group, reply }) => {
                self.watched.insert(group);
                self.replies.push(Reply::Watch(reply));
            }
            Work::Request(Request::Stop) | Work::HandlesGone => return true,
            Work::InputsGone => {
                tracing::warn!("the transport's input channel closed: the runtime stops");
                return true;
            }
        }
        self.drain();
        false
    }

    /// Executes the core's outputs; app events wait for the end of the turn.
    fn drain(&mut self) {
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
                    self.app_events.push(event);
                }
                other => tracing::warn!(?other, "an output this driver does not know: dropped"),
            }
        }
    }

    /// Publishes the snapshot, delivers the turn's events, then answers the turn's requests.
    fn end_turn(&mut self) {
        self.publish();
        for event in std::mem::take(&mut self.app_events) {
            self.dispatch(event);
        }
        for reply in self.replies.drain(..) {
            // A caller that stopped waiting is fine.
            match reply {
                Reply::Command(tx, r) => drop(tx.send(r)),
                Reply::PlaceCall(tx, r) => drop(tx.send(r)),
                Reply::Watch(tx) => drop(tx.send(())),
            }
        }
    }

    fn publish(&mut self) {
        let core = &self.core;
        let snapshot = Snapshot {
            calls: core.calls().into_iter().map(|c| (c.call_id.clone(), c)).collect(),
            groups: self
                .watched
                .iter()
                .map(|g| {
                    let view = GroupView {
                        info: core.group_call(g),
                        media_keys: core.media_keys(g),
                        local: core.local_participant(g),
                    };
                    (g.clone(), view)
                })
                .collect(),
            counters: core.counters().clone(),
            can_handle_new_call: core.can_handle_new_call(),
            pending_sends: core.pending_sends(),
            input_errors: self.input_errors.clone(),
        };
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    /// One app event: key callbacks first (no lock held: they may use the handles), then the
    /// feeds and streams.
    fn dispatch(&mut self, event: Event) {
        if matches!(event, Event::EncryptionKey { .. }) {
            for sink in &self.key_sinks {
                sink(&event);
            }
        }
        let _ = self.events.send(event.clone());
        let mut feeds = lock(&self.feeds);
        let mut to_call = |id: &CallId, update: CallUpdate| feeds.call(id).push(StoredUpdate::Update(update));
        match event {
            Event::IncomingCall { call_id, caller, call_type, .. } => {
                let _span = tracing::info_span!("call", %call_id).entered();
                tracing::info!(%caller, ?call_type, "incoming call");
                // The call's feed exists before the app sees the handle: nothing is missed.
                feeds.call(&call_id);
                drop(feeds);
                let _ = self.incoming.send(call_id);
            }
            Event::RingtoneStarted { call_id } => to_call(&call_id, CallUpdate::RingtoneStarted),
            Event::RingtoneStopped { call_id } => to_call(&call_id, CallUpdate::RingtoneStopped),
            Event::StateChanged { call_id, state } => {
                tracing::info!(%call_id, ?state, "call state");
                to_call(&call_id, CallUpdate::StateChanged(state));
            }
            Event::StreamsChanged { call_id, local, remote } => {
                to_call(&call_id, CallUpdate::StreamsChanged { local, remote })
            }
            Event::HoldChanged { call_id, local_hold, remote_hold } => {
                to_call(&call_id, CallUpdate::HoldChanged { local_hold, remote_hold })
            }
            Event::AssertedIdentityChanged { call_id, identity } => {
                to_call(&call_id, CallUpdate::AssertedIdentityChanged(identity))
            }
            Event::ReplacesReceived { call_id, replaces } => {
                to_call(&call_id, CallUpdate::ReplacesReceived(replaces))
            }
            Event::CallReplaced { old_call_id, new_call_id } => {
                feeds.call(&new_call_id);
                feeds.call(&old_call_id).push(StoredUpdate::Replaced(new_call_id));
            }
            Event::AnswerSelected { call_id, party_id, user_id } => {
                to_call(&call_id, CallUpdate::AnswerSelected { party_id, user_id })
            }
            Event::CallEnded { call_id, reason, initiator } => {
                tracing::info!(%call_id, ?reason, ?initiator, "call ended");
                to_call(&call_id, CallUpdate::Ended { reason, initiator });
                feeds.ended.push_back(call_id);
                while feeds.ended.len() > KEEP_ENDED {
                    if let Some(old) = feeds.ended.pop_front() {
                        feeds.calls.remove(&old);
                    }
                }
            }
            Event::MissedCall { call_id, room_id, caller, reason } => {
                drop(feeds);
                let _ = self.missed.send(MissedCall { call_id, room_id, caller, reason });
            }
            Event::GroupCallStateChanged { group, state } => {
                tracing::info!(%group, ?state, "group call state");
                feeds.group(&group).push(GroupCallUpdate::StateChanged(state));
            }
            Event::ParticipantsChanged { group, joined, left, count } => {
                feeds.group(&group).push(GroupCallUpdate::ParticipantsChanged { joined, left, count });
            }
            Event::EncryptionKey { group, participant, local, index, key } => {
                feeds.group(&group).push(GroupCallUpdate::EncryptionKey { participant, local, index, key });
            }
            // Group notifications, declines and future events: on `Voip::events` only.
            _ => {}
        }
    }

    /// Lets the transport finish (its results still reach the core), closes the feeds and
    /// streams, then runs the final hooks (the media engine).
    async fn stop(mut self) {
        for hook in std::mem::take(&mut self.drain_hooks) {
            let mut finished = hook();
            loop {
                tokio::select! {
                    () = &mut finished => break,
                    Some(input) = self.inputs.recv() => {
                        let _ = self.apply(Work::Input(input));
                    }
                }
            }
        }
        while let Some(input) = self.inputs.try_recv() {
            let _ = self.apply(Work::Input(input));
        }
        self.end_turn();
        lock(&self.feeds).close();
        let stopped = self.stopped.take();
        let final_hooks = std::mem::take(&mut self.final_hooks);
        // Closes the broadcast streams (and, through the feeds, every subscription).
        drop(self);
        for hook in final_hooks {
            hook().await;
        }
        drop(stopped);
    }
}
