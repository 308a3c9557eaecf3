//! A device's app process: the `voip` runtime's driver — the task every app runs — polled on the
//! simulator's deterministic executor.
//!
//! The driver owns the device's core. The simulator only talks to it the way an app and its
//! adapters do: inputs (homeserver deliveries, send results, media reports) on its input
//! channel; commands through the [`voip::Voip`] handle; sends and media commands out through a
//! [`voip::Transport`] and a [`voip::MediaEngine`] that queue them, in the core's order, for the
//! simulator to execute (the homeserver, the [`crate::FakeMedia`] engine); app events from
//! [`voip::Voip::events`]; state from the handle's snapshot. Time comes from a [`SimClock`]: the
//! simulation's virtual time plus the device's skew, with sleeps that resolve once the
//! simulator has moved time past them.
//!
//! The executor is a loop, not a runtime: [`Process::run`] polls the driver until it parks
//! (polling again only if it woke itself, as a yield does), so the same seed gives the same run.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::mpsc;
use voip::clock::Sleep;
use voip::{Clock, GroupCall, Voip, VoipBuilder, VoipTask};
use voip_core::media::{MediaCommand, MediaEvent};
use voip_core::{CallId, Config, Event, GroupCallId, Input, LocalDevice, SendRequest, Timestamp};

/// Polls of one [`Process::run`] before the simulator calls the driver stuck (it parks after a
/// handful: one per input, plus a yield after every `voip`'s per-turn budget).
const MAX_POLLS: usize = 10_000;

/// A send or a media command, in the order the core emitted them.
#[derive(Debug)]
pub(super) enum Out {
    Send(SendRequest),
    Media(CallId, MediaCommand),
}

/// The transport and the media engine of a process: both queue into one outbox, so the
/// simulator executes sends and media commands in the core's order.
#[derive(Clone, Debug, Default)]
struct Outbox(Arc<Mutex<VecDeque<Out>>>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Out>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl voip::Transport for Outbox {
    fn submit(&self, request: SendRequest) {
        self.lock().push_back(Out::Send(request));
    }
}

impl voip::MediaEngine for Outbox {
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        self.lock().push_back(Out::Media(call_id, command));
    }
}

/// A device's clock: virtual time plus the device's skew, set by the simulator. A sleep resolves
/// when polled at or after its time (the simulator polls the driver whenever the time it armed
/// comes); the earliest live sleep is the device's next deadline.
#[derive(Clone, Debug, Default)]
pub(super) struct SimClock(Arc<ClockState>);

#[derive(Debug, Default)]
struct ClockState {
    now: AtomicU64,
    next_sleep: AtomicU64,
    /// Live sleeps: id → due time.
    sleeps: Mutex<BTreeMap<u64, Timestamp>>,
}

impl ClockState {
    fn sleeps(&self) -> MutexGuard<'_, BTreeMap<u64, Timestamp>> {
        self.sleeps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SimClock {
    pub(super) fn set(&self, now: Timestamp) {
        self.0.now.store(now.0, Ordering::Relaxed);
    }

    /// The earliest time a live sleep waits for.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.0.sleeps().values().min().copied()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.now.load(Ordering::Relaxed))
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let id = self.0.next_sleep.fetch_add(1, Ordering::Relaxed);
        self.0.sleeps().insert(id, at);
        Box::pin(SimSleep { id, at, clock: self.0.clone() })
    }
}

struct SimSleep {
    id: u64,
    at: Timestamp,
    clock: Arc<ClockState>,
}

impl Future for SimSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        // No waker: the simulator polls the driver when this time comes.
        if self.clock.now.load(Ordering::Relaxed) >= self.at.0 {
            self.clock.sleeps().remove(&self.id);
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for SimSleep {
    fn drop(&mut self) {
        self.clock.sleeps().remove(&self.id);
    }
}

/// Set when the driver wakes itself while being polled (a yield): poll again.
#[derive(Debug, Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One app process of a device: its runtime handle, its driver task and their plumbing.
pub(super) struct Process {
    /// The app's handle.
    pub(super) voip: Voip,
    task: Option<VoipTask>,
    inputs: mpsc::UnboundedSender<Input>,
    /// Kept open: media reports come through the input channel (with the simulated delay).
    _media: mpsc::UnboundedSender<(CallId, MediaEvent)>,
    outbox: Outbox,
    events: voip::Events,
    pub(super) clock: SimClock,
    woken: Arc<Woken>,
    /// Group calls the app shows (their state is in the runtime's snapshots).
    groups: BTreeMap<GroupCallId, GroupCall>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("voip", &self.voip)
            .field("running", &self.task.is_some())
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Process {
    /// A fresh process for `local`: the runtime built as an app builds it, its driver not yet
    /// polled.
    pub(super) fn start(local: LocalDevice, config: Config, seed: [u8; 32], now: Timestamp) -> Process {
        let outbox = Outbox::default();
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let (media, media_rx) = mpsc::unbounded_channel();
        let clock = SimClock::default();
        clock.set(now);
        let (voip, task) = VoipBuilder::new(local, outbox.clone(), inputs_rx)
            .config(config)
            .seed(seed)
            .clock(clock.clone())
            .media_engine(Arc::new(outbox.clone()), media_rx)
            .build_task()
            .expect("a runtime with a media engine and a seed builds");
        let events = voip.events();
        let mut process = Process {
            voip,
            task: Some(task),
            inputs,
            _media: media,
            outbox,
            events,
            clock,
            woken: Arc::default(),
            groups: BTreeMap::new(),
        };
        process.run();
        process
    }

    /// Hands `input` to the driver (it runs at the next [`Process::run`]).
    pub(super) fn push(&self, input: Input) {
        // The driver lives as long as the process: the channel is open.
        let _ = self.inputs.send(input);
    }

    /// Polls the driver until it parks.
    pub(super) fn run(&mut self) {
        let Some(task) = self.task.as_mut() else { return };
        let waker = Waker::from(self.woken.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..MAX_POLLS {
            self.woken.0.store(false, Ordering::Relaxed);
            if Pin::new(&mut *task).poll(&mut cx).is_ready() {
                self.task = None;
                return;
            }
            if !self.woken.0.load(Ordering::Relaxed) {
                return;
            }
        }
        panic!("the voip driver of {:?} never parks", self.voip.local_device());
    }

    /// Runs `fut` (a request through the handle) to completion, polling the driver between its
    /// polls.
    pub(super) fn block_on<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..4 {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            self.run();
        }
        panic!("the voip driver of {:?} did not answer a request", self.voip.local_device());
    }

    /// Sends and media commands since the last call, in the core's order.
    pub(super) fn take_outputs(&self) -> VecDeque<Out> {
        std::mem::take(&mut *self.outbox.lock())
    }

    /// App events since the last call, in order.
    pub(super) fn take_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.events.try_next()).collect()
    }

    /// Shows the room call of `room` in the app (its state joins the runtime's snapshots).
    pub(super) fn watch(&mut self, room: &voip_core::RoomId) {
        let group = GroupCallId::room_call(room.clone());
        if self.groups.contains_key(&group) {
            return;
        }
        let voip = self.voip.clone();
        let backend = voip::GroupCallBackend::Mesh;
        let call = self.block_on(voip.fetch_or_create_group_call(room, backend)).expect("the runtime runs");
        self.groups.insert(group, call);
    }

    /// The rooms whose room call the app shows.
    pub(super) fn shown_rooms(&self) -> Vec<voip_core::RoomId> {
        self.groups.keys().map(|g| g.room_id.clone()).collect()
    }

    /// A group call the app shows.
    pub(super) fn group(&self, group: &GroupCallId) -> Option<&GroupCall> {
        self.groups.get(group)
    }
}
