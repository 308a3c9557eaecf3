//! The public runtime: [`VoipBuilder`] starts the driver task (`crate::driver`) that owns the
//! sans-IO core; [`Voip`] is the app's handle on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::MediaEngine;
use futures_core::Stream;
use voip_core::{
    CallId, CallType, Command, Config, Counters, DeviceId, Event, LocalDevice, RoomId, Signalling, UserId,
};

use crate::call::Call;
use crate::clock::{Clock, SystemClock};
use crate::driver::{self, Handle, InputErrors, KeySink, Parts, StopHook, WeakHandle};
use crate::feed::Subscription;
use crate::group::{GroupCall, GroupCallOptions};
use crate::transport::{Inputs, Transport};
use crate::{StreamExt, VoipError};

pub use crate::driver::MediaEvents;

/// A missed call (famedly's "missed call" notification): an incoming call that was not answered
/// here — it timed out, was cancelled before we answered, or was refused because we were busy.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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

/// Builds a [`Voip`]: a signalling transport with its inputs, a media engine with its events, a
/// [`Config`], optionally a [`Clock`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), voip::VoipError> {
/// use voip::local::LocalHomeserver;
/// use voip::VoipBuilder;
/// # struct NoMedia;
/// # impl voip::MediaEngine for NoMedia {
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
    clock: Arc<dyn Clock>,
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
            clock: Arc::new(SystemClock),
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

    /// Where the driver's time comes from. Default: [`SystemClock`]; tests and simulations use
    /// a [`crate::clock::ManualClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The media engine and the channel it reports [`voip_core::media::MediaEvent`]s on.
    pub fn media_engine(mut self, engine: Arc<dyn MediaEngine>, events: MediaEvents) -> Self {
        self.engine = Some((engine, events));
        self
    }

    /// Calls `sink` with every [`Event::EncryptionKey`], in order, before any subscriber sees
    /// it: where an app's LiveKit key provider plugs in. It runs on the runtime's task with no
    /// lock held: it may read the handles (a command needs a task of its own: `tokio::spawn`).
    pub fn on_encryption_key(mut self, sink: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.key_sinks.push(Arc::new(sink));
        self
    }

    /// Starts the runtime task on the current tokio runtime.
    pub fn build(self) -> Result<Voip, VoipError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| VoipError::NoRuntime)?;
        let (voip, task) = self.build_task()?;
        runtime.spawn(task);
        Ok(voip)
    }

    /// Builds the runtime without starting it: the [`VoipTask`] is the driver that owns the
    /// core, and it is the caller's to run — spawn it on any executor, or poll it by hand (a
    /// deterministic simulator does: with a [`crate::ManualClock`]-like [`Clock`] no timer of
    /// tokio's is involved). The handles work as soon as the task is polled; it ends when every
    /// handle is gone or on [`Voip::shutdown`].
    ///
    /// The driver itself needs no tokio runtime. A builder from `Voip::from_client` (feature
    /// `matrix`) does: its adapter and its TURN refresh run as tokio tasks, so build that one
    /// inside a runtime ([`VoipError::NoRuntime`] otherwise).
    ///
    /// ```
    /// use std::future::Future;
    /// use std::task::Context;
    /// use voip::local::LocalHomeserver;
    /// use voip::{ManualClock, VoipBuilder};
    /// use voip::core::Timestamp;
    ///
    /// let hs = LocalHomeserver::new();
    /// let conn = hs.connect("@alice:local", "ALICE");
    /// let (_media_tx, media_rx) = tokio::sync::mpsc::unbounded_channel();
    /// let engine = |_: voip::core::CallId, _: voip::core::MediaCommand| {};
    /// let (voip, task) = VoipBuilder::new(conn.device, conn.transport, conn.inputs)
    ///     .media_engine(std::sync::Arc::new(engine), media_rx)
    ///     .clock(ManualClock::new(Timestamp(1_700_000_000_000)))
    ///     .seed([7; 32])
    ///     .build_task()?;
    /// // No executor at all: poll the driver by hand until it has nothing to do.
    /// let mut task = Box::pin(task);
    /// let mut cx = Context::from_waker(std::task::Waker::noop());
    /// assert!(task.as_mut().poll(&mut cx).is_pending());
    /// assert!(voip.calls().is_empty());
    /// // Dropping the last handle stops it.
    /// drop(voip);
    /// assert!(task.as_mut().poll(&mut cx).is_ready());
    /// # Ok::<(), voip::VoipError>(())
    /// ```
    pub fn build_task(self) -> Result<(Voip, VoipTask), VoipError> {
        let (engine, media) = self.engine.ok_or(VoipError::NoMediaEngine)?;
        let seed = match self.seed {
            Some(seed) => seed,
            None => os_seed()?,
        };
        #[cfg(feature = "matrix")]
        if self.adapter.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(VoipError::NoRuntime);
        }
        let core = voip_core::VoipMachine::new(self.config, self.local.clone(), seed);
        #[allow(unused_mut)]
        let (mut drain_hooks, mut final_hooks): (Vec<StopHook>, Vec<StopHook>) = (Vec::new(), Vec::new());
        #[cfg(feature = "matrix")]
        if let Some(adapter) = self.adapter.clone() {
            crate::matrix::replay_known_rooms(&adapter);
            // Sends already queued (a hangup, a leave) complete, their results reach the core.
            drain_hooks.push(Box::new(move || Box::pin(async move { adapter.shutdown().await })));
        }
        #[cfg(feature = "webrtc")]
        if let Some(engine) = self.webrtc.clone() {
            final_hooks.push(Box::new(move || Box::pin(async move { engine.shutdown().await })));
        }
        let parts = Parts {
            core,
            clock: self.clock,
            transport: self.transport,
            inputs: self.inputs,
            engine,
            media,
            key_sinks: self.key_sinks,
            drain_hooks,
            final_hooks,
        };
        let local = self.local;
        #[cfg(feature = "matrix")]
        let adapter = self.adapter;
        #[cfg(feature = "webrtc")]
        let webrtc = self.webrtc;
        #[cfg(all(feature = "matrix", feature = "webrtc"))]
        let turn = adapter.clone().zip(webrtc.clone());
        let (handle, task) = driver::new(parts, move |channels| {
            #[allow(unused_mut)]
            let mut ctx = channels.into_ctx(local);
            #[cfg(feature = "codecs")]
            {
                ctx.audio = webrtc.as_ref().and_then(|e| e.audio().cloned());
                ctx.video = webrtc.as_ref().and_then(|e| e.video().cloned());
            }
            #[cfg(feature = "webrtc")]
            {
                ctx.webrtc = webrtc;
            }
            #[cfg(feature = "matrix")]
            {
                ctx.adapter = adapter;
            }
            ctx
        });
        #[cfg(all(feature = "matrix", feature = "webrtc"))]
        if let Some((adapter, engine)) = turn {
            crate::matrix::keep_turn_fresh(&adapter, engine, handle.downgrade());
        }
        Ok((Voip { handle }, VoipTask(Box::pin(task))))
    }
}

/// The runtime's driver as a future, from [`VoipBuilder::build_task`]: it owns the core and
/// runs until every handle is gone or [`Voip::shutdown`]. Spawn it, or poll it yourself.
#[must_use = "the runtime does nothing until its task is polled"]
pub struct VoipTask(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl std::fmt::Debug for VoipTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoipTask").finish_non_exhaustive()
    }
}

impl Future for VoipTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// 32 bytes from the operating system's CSPRNG (`getrandom`): the seed of the core's ChaCha20,
/// from which call ids, party ids and SFU media keys are drawn.
pub(crate) fn os_seed() -> Result<[u8; 32], VoipError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(VoipError::NoRandomness)?;
    Ok(seed)
}

/// Calls for one Matrix device: the handle apps keep. Cheap to clone; clones share the runtime.
///
/// Built with [`VoipBuilder`] (any transport) or `Voip::from_client` (feature `matrix`: an
/// app's matrix-sdk `Client`). The runtime runs until [`Voip::shutdown`] or until every handle
/// ([`Voip`], [`Call`], [`GroupCall`]) is dropped; event streams do not keep it running.
///
/// Getters (`calls`, `counters`, …) read the snapshot the runtime publishes after every turn;
/// commands are `async` and return once the core has handled them.
#[derive(Clone)]
pub struct Voip {
    handle: Handle,
}

impl std::fmt::Debug for Voip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voip").field("device", &self.handle.ctx.local).finish_non_exhaustive()
    }
}

impl Voip {
    /// This device.
    pub fn local_device(&self) -> &LocalDevice {
        &self.handle.ctx.local
    }

    /// Calls `user` in `room`, ringing every device of `user` through the room (the
    /// `invite_to_call` of famedly's SDK). Ids may be `&str`, ruma's `&RoomId`/`&UserId`, or
    /// this crate's.
    pub async fn invite_to_call(
        &self,
        room: impl AsRef<str>,
        call_type: CallType,
        user: impl AsRef<str>,
    ) -> Result<Call, VoipError> {
        self.place(room.as_ref(), call_type, user.as_ref(), None, Signalling::Room).await
    }

    /// Calls one device of `user` (for example another device of our own user) over to-device
    /// messages; `room` is the room the call belongs to.
    pub async fn invite_device_to_call(
        &self,
        room: impl AsRef<str>,
        call_type: CallType,
        user: impl AsRef<str>,
        device: impl AsRef<str>,
    ) -> Result<Call, VoipError> {
        let device = Some(DeviceId::from(device.as_ref()));
        self.place(room.as_ref(), call_type, user.as_ref(), device, Signalling::ToDevice).await
    }

    /// Calls one device of `user` with the invite in `room`'s timeline (naming the device in
    /// `invitee_device_id`) rather than over to-device messages: the other devices of `user`
    /// see the call in the room but do not ring, and the call's history stays in the room.
    pub async fn invite_device_in_room(
        &self,
        room: impl AsRef<str>,
        call_type: CallType,
        user: impl AsRef<str>,
        device: impl AsRef<str>,
    ) -> Result<Call, VoipError> {
        let device = Some(DeviceId::from(device.as_ref()));
        self.place(room.as_ref(), call_type, user.as_ref(), device, Signalling::Room).await
    }

    async fn place(
        &self,
        room: &str,
        call_type: CallType,
        user: &str,
        device: Option<DeviceId>,
        signalling: Signalling,
    ) -> Result<Call, VoipError> {
        let id = self.handle.place_call(room.into(), user.into(), device, call_type, signalling).await?;
        Ok(Call::new(self.handle.clone(), id))
    }

    /// Incoming calls, each as a [`Call`] whose update feed already holds everything reported so
    /// far (famedly registers listeners before the app sees the call; so do we). Subscribe at
    /// start-up: calls that rang before are in [`Voip::calls`].
    pub fn incoming_calls(&self) -> IncomingCalls {
        IncomingCalls { ids: self.handle.incoming(), handle: self.handle.downgrade() }
    }

    /// Missed calls, as they happen.
    pub fn missed_calls(&self) -> MissedCalls {
        MissedCalls(self.handle.missed())
    }

    /// Every event the core reports (calls, group calls, ringtone signals, group-call
    /// notifications, missed calls), as they happen.
    pub fn events(&self) -> Events {
        Events(self.handle.events())
    }

    /// The calls the core knows about (ringing, in progress, just ended).
    pub fn calls(&self) -> Vec<Call> {
        let snapshot = self.handle.snapshot();
        snapshot.calls.keys().map(|id| Call::new(self.handle.clone(), id.clone())).collect()
    }

    /// A handle for a call by id, if the core knows it.
    pub fn call(&self, call_id: impl AsRef<str>) -> Option<Call> {
        let id = CallId::from(call_id.as_ref());
        self.handle.snapshot().calls.contains_key(&id).then(|| Call::new(self.handle.clone(), id))
    }

    /// Whether a new incoming call would ring now (famedly's `can_handle_new_call`).
    pub fn can_handle_new_call(&self) -> bool {
        self.handle.snapshot().can_handle_new_call
    }

    /// Overrides the busy policy: `Some(false)` refuses every new call (busy), `Some(true)`
    /// accepts every new call, `None` returns to the configured policy.
    pub async fn set_can_handle_new_call(&self, value: Option<bool>) -> Result<(), VoipError> {
        self.handle.command(Command::SetCanHandleNewCall { value }).await
    }

    /// The room's group call (`call_id` `""`) with these options (a [`GroupCallOptions`], or
    /// just a [`crate::GroupCallBackend`] for the defaults). Nothing is sent until
    /// [`GroupCall::enter`]; members already in the call are visible at once through
    /// [`GroupCall::participants`].
    pub async fn fetch_or_create_group_call(
        &self,
        room: impl AsRef<str>,
        options: impl Into<GroupCallOptions>,
    ) -> Result<GroupCall, VoipError> {
        let group = GroupCall::new(self.handle.clone(), room.as_ref().into(), options.into());
        self.handle.watch_group(group.id().clone()).await?;
        Ok(group)
    }

    /// Runs any command of the core's vocabulary ([`voip_core::Command`]) through the runtime:
    /// the low-level way in, for what [`Call`] and [`GroupCall`] do not cover (tests, tools
    /// that replay commands). Returns once the core has handled it.
    pub async fn command(&self, command: Command) -> Result<(), VoipError> {
        self.handle.command(command).await
    }

    /// What the core ignored from the network, by cause (malformed, spoofed, stale, …).
    pub fn counters(&self) -> Counters {
        self.handle.snapshot().counters.clone()
    }

    /// Sends the core is still waiting on: submitted to the transport without a final result
    /// yet, or waiting for a retry. `0` once everything it sent has settled (a good moment to
    /// quit an app).
    pub fn pending_sends(&self) -> usize {
        self.handle.snapshot().pending_sends
    }

    /// Inputs the core refused with an error (logged and dropped by the runtime): for
    /// diagnostics and tests.
    pub fn input_errors(&self) -> InputErrors {
        self.handle.snapshot().input_errors.clone()
    }

    /// The webrtc-rs engine, when the runtime was built with `VoipBuilder::webrtc`: per-call
    /// tracks, stats and sources.
    #[cfg(feature = "webrtc")]
    pub fn webrtc(&self) -> Option<&voip_webrtc::WebrtcEngine> {
        self.handle.ctx.webrtc.as_ref()
    }

    /// The matrix-sdk adapter, when built with `Voip::from_client`.
    #[cfg(feature = "matrix")]
    pub fn matrix(&self) -> Option<&voip_matrix::MatrixAdapter> {
        self.handle.ctx.adapter.as_ref()
    }

    /// Stops the runtime and waits until it has stopped. With matrix signalling, sends already
    /// queued (a hangup, a leave) are completed first and their results handled by the core;
    /// then every feed and stream ends and the media engine closes everything. Calls in
    /// progress are not hung up: hang up first. Dropping every handle does the same in the
    /// background.
    pub async fn shutdown(&self) {
        self.handle.stop();
        self.stopped().await;
    }

    /// Resolves once the runtime has stopped ([`Voip::shutdown`], every handle dropped, or the
    /// transport's input channel closed). The future holds no handle.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.handle.stopped()
    }
}

/// The stream of incoming calls of [`Voip::incoming_calls`]; ends when the runtime stops. It
/// does not keep the runtime running.
#[derive(Debug)]
pub struct IncomingCalls {
    ids: Subscription<CallId>,
    handle: WeakHandle,
}

impl Stream for IncomingCalls {
    type Item = Call;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Call>> {
        match self.ids.poll_next_unpin(cx) {
            Poll::Ready(Some(id)) => Poll::Ready(self.handle.upgrade().map(|h| Call::new(h, id))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The stream of [`Voip::missed_calls`]; ends when the runtime stops.
#[derive(Debug)]
pub struct MissedCalls(Subscription<MissedCall>);

impl Stream for MissedCalls {
    type Item = MissedCall;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MissedCall>> {
        self.0.poll_next_unpin(cx)
    }
}

/// The stream of [`Voip::events`]: every event of the core; ends when the runtime stops.
#[derive(Debug)]
pub struct Events(Subscription<Event>);

impl Events {
    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.0.try_next()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.poll_next_unpin(cx)
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
            let mut core = voip_core::VoipMachine::new(voip_core::Config::default(), local.clone(), seed);
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
