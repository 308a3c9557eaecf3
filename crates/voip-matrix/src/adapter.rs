//! [`MatrixAdapter`]: event handlers in, sends out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::RequestConfig;
use matrix_sdk::deserialized_responses::{EncryptionInfo, ProcessedToDeviceEvent};
use matrix_sdk::encryption::identities::Device;
use matrix_sdk::event_handler::EventHandlerHandle;
use matrix_sdk::ruma::api::client::to_device::send_event_to_device;
use matrix_sdk::ruma::events::ignored_user_list::{IgnoredUserListEvent, IgnoredUserListEventContent};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnyToDeviceEvent, AnyToDeviceEventContent,
};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::to_device::DeviceIdOrAllDevices;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedRoomId, OwnedTransactionId, OwnedUserId};
use matrix_sdk::{Client, Room};
use matrix_sdk_base::crypto::CollectStrategy;
use serde_json::Value;
use tokio::sync::mpsc;
use voip_core::{Input, SendKind, SendOutcome, SendRequest, ToDeviceEncryption, ToDeviceMessage};

use crate::extras::{DelayedEvent, DelayedEventRequest, Retries, StateEventRequest};
use crate::inbound::{self, CallMemberState};
use crate::retry::{self, classify, Counters, Failure, RetryPolicy, SendStats};
use crate::turn::TurnState;

/// Options of a [`MatrixAdapter`].
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Capacity of the input channel. Handlers wait when it is full (back-pressure on the sync
    /// loop), so no event is dropped.
    pub channel_capacity: usize,
    /// Retries of the requests the app makes through the adapter itself (`send_state`, the
    /// delayed-event calls). The core's sends ([`MatrixAdapter::execute`]) get one attempt:
    /// the core retries them.
    pub retry: RetryPolicy,
    /// Retries of the app's own requests that must not be lost (a state send flagged
    /// `critical`, scheduling a delayed state event, a delayed `Send`).
    pub critical_retry: RetryPolicy,
    /// Which devices may receive Olm-encrypted to-device messages.
    pub collect_strategy: CollectStrategy,
    /// How call events reach the core.
    pub delivery: Delivery,
    /// After our `m.call.invite` is out, long-poll the room's timeline for the answer ourselves
    /// (from the client's sync token, so nothing of the client's sync is consumed) instead of
    /// waiting for the app's sync, which under matrix-sdk's `Client::sync` often sleeps a second
    /// at that moment. On by default; redundant but harmless under `voip::sync`'s loops. See
    /// `answer_watch.rs`.
    pub watch_answers: bool,
}

/// How call room events and to-device events reach the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Event handlers send one [`Input::RoomEvent`] / [`Input::ToDevice`] per event, as the
    /// client's sync loop processes them.
    #[default]
    PerEvent,
    /// No call/to-device handlers: the app drives sync itself (`sync_once`,
    /// `sync_with_result_callback`) and feeds [`MatrixAdapter::sync_batch`] of each response,
    /// so the core sees a whole response at once (an invite already hung up in the same response
    /// never rings). Membership still comes through the handlers.
    Manual,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        Self {
            channel_capacity: 1024,
            retry: RetryPolicy::DEFAULT,
            critical_retry: RetryPolicy::CRITICAL,
            collect_strategy: CollectStrategy::AllDevices,
            delivery: Delivery::PerEvent,
            watch_answers: true,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) options: AdapterOptions,
    inputs: mpsc::Sender<Input>,
    call_members: Mutex<Option<mpsc::Sender<CallMemberState>>>,
    handlers: Mutex<Vec<EventHandlerHandle>>,
    pub(crate) turn: tokio::sync::Mutex<TurnState>,
    pub(crate) delayed_events_supported: tokio::sync::OnceCell<bool>,
    pub(crate) counters: Counters,
    /// Olm to-device sends of the core that reached only some devices: who has it, by
    /// transaction id, so the core's retry (same transaction id) reaches only the rest.
    olm_delivered: Mutex<OlmDelivered>,
    /// Our invites whose answer [`crate::answer_watch`] is watching for.
    watched: Mutex<HashSet<String>>,
    /// Call events forwarded ahead of the app's sync by the answer watch.
    ahead_of_sync: std::sync::atomic::AtomicU64,
}

impl Inner {
    pub(crate) fn is_watched(&self, call_id: &str) -> bool {
        self.watched.lock().is_ok_and(|w| w.contains(call_id))
    }

    pub(crate) fn unwatch(&self, call_id: &str) {
        if let Ok(mut w) = self.watched.lock() {
            w.remove(call_id);
        }
    }

    /// Forwards a call event the answer watch found; `false` once the core is gone.
    pub(crate) async fn forward_ahead(&self, input: Input) -> bool {
        self.ahead_of_sync.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inputs.send(input).await.is_ok()
    }
}

/// Bounded memory of partly delivered Olm to-device sends ([`Inner::olm_delivered`]).
#[derive(Default)]
struct OlmDelivered {
    /// Transaction id → devices (user id, device id) that got the message.
    by_txn: HashMap<String, HashSet<(String, String)>>,
    /// Insertion order, to drop the oldest entry beyond [`OlmDelivered::MAX`].
    order: VecDeque<String>,
}

impl OlmDelivered {
    /// Partly delivered sends remembered at most (the core gives up on a send long before 256
    /// newer ones have partly failed).
    const MAX: usize = 256;

    fn delivered(&self, txn_id: &str) -> Option<&HashSet<(String, String)>> {
        self.by_txn.get(txn_id)
    }

    fn record(&mut self, txn_id: &str, devices: impl IntoIterator<Item = (String, String)>) {
        if !self.by_txn.contains_key(txn_id) {
            self.order.push_back(txn_id.to_owned());
            while self.order.len() > Self::MAX {
                if let Some(old) = self.order.pop_front() {
                    self.by_txn.remove(&old);
                }
            }
        }
        self.by_txn.entry(txn_id.to_owned()).or_default().extend(devices);
    }

    fn forget(&mut self, txn_id: &str) {
        if self.by_txn.remove(txn_id).is_some() {
            self.order.retain(|t| t != txn_id);
        }
    }
}

/// The matrix-sdk adapter of a [`voip_core::VoipMachine`]: feeds it inputs and executes its sends.
///
/// Created from the app's [`Client`]; registers event handlers on it, so the app keeps running
/// its own sync loop. Cheap to clone.
#[derive(Clone)]
pub struct MatrixAdapter {
    pub(crate) inner: Arc<Inner>,
    /// Owned by the app's handles only (lane workers hold `inner`, not this), so dropping the
    /// last handle closes the lanes: the workers then finish every queued request and exit.
    lanes: Arc<Lanes>,
}

/// The background send queues of [`MatrixAdapter::submit`].
#[derive(Default)]
struct Lanes {
    senders: Mutex<HashMap<String, mpsc::UnboundedSender<SendRequest>>>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for MatrixAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixAdapter").field("user_id", &self.inner.client.user_id()).finish_non_exhaustive()
    }
}

impl MatrixAdapter {
    /// An adapter with default options. See [`MatrixAdapter::with_options`].
    pub fn new(client: Client) -> (Self, mpsc::Receiver<Input>) {
        Self::with_options(client, AdapterOptions::default())
    }

    /// Registers the event handlers on `client` and returns the adapter and the stream of core
    /// inputs: `m.call.*` room events (decrypted in encrypted rooms), forwarded to-device events
    /// (with the Olm sender device when encrypted), `m.room.member` changes and initial state,
    /// and the results of [`MatrixAdapter::submit`]. Register before the first sync to see the
    /// initial state; otherwise use [`MatrixAdapter::room_state_inputs`].
    pub fn with_options(client: Client, options: AdapterOptions) -> (Self, mpsc::Receiver<Input>) {
        let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
        let inner = Arc::new(Inner {
            client: client.clone(),
            options,
            inputs: tx,
            call_members: Mutex::new(None),
            handlers: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(TurnState::default()),
            delayed_events_supported: tokio::sync::OnceCell::new(),
            counters: Counters::default(),
            olm_delivered: Mutex::default(),
            watched: Mutex::default(),
            ahead_of_sync: Default::default(),
        });
        let adapter = Self { inner, lanes: Arc::new(Lanes::default()) };
        adapter.register_handlers();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let a = adapter.clone();
            rt.spawn(async move {
                a.announce_server_support().await;
                a.announce_ignored_users().await;
            });
        }
        (adapter, rx)
    }

    fn register_handlers(&self) {
        let client = &self.inner.client;
        let mut handles = Vec::new();
        if self.inner.options.delivery == Delivery::PerEvent {
            handles.extend(self.register_call_handlers());
        }
        let weak = Arc::downgrade(&self.inner);
        let weak_ignored = Arc::downgrade(&self.inner);
        handles.push(client.add_event_handler(move |ev: IgnoredUserListEvent| {
            let weak = weak_ignored.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                let _ = inner.inputs.send(ignored_users_input(&ev.content)).await;
            }
        }));
        handles.push(client.add_event_handler(move |raw: Raw<AnySyncStateEvent>, room: Room| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                let Ok(ev) = raw.deserialize_as_unchecked::<Value>() else { return };
                inner.dispatch_state(room.room_id().as_str(), &ev).await;
            }
        }));
        self.inner.handlers.lock().expect("handlers lock").extend(handles);
    }

    fn register_call_handlers(&self) -> [EventHandlerHandle; 2] {
        let client = &self.inner.client;
        let weak = Arc::downgrade(&self.inner);
        let h1 = client.add_event_handler(
            move |raw: Raw<AnySyncMessageLikeEvent>, room: Room, info: Option<EncryptionInfo>| {
                let weak = weak.clone();
                async move {
                    let Some(inner) = weak.upgrade() else { return };
                    let Ok(ev) = raw.deserialize_as_unchecked::<Value>() else { return };
                    let megolm = info.as_ref().map(|i| i.sender_device.as_deref().map(|d| d.as_str()));
                    if let Some(ev) = inbound::room_event_from_json(room.room_id().as_str(), &ev, megolm) {
                        tracing::debug!(room = %ev.room_id, r#type = %ev.event_type, "room call event");
                        if crate::answer_watch::settles(&ev.event_type) {
                            if let Some(call_id) = ev.content.get("call_id").and_then(Value::as_str) {
                                inner.unwatch(call_id);
                            }
                        }
                        let _ = inner.inputs.send(Input::RoomEvent(ev)).await;
                    }
                }
            },
        );
        let weak = Arc::downgrade(&self.inner);
        let h2 = client.add_event_handler(move |raw: Raw<AnyToDeviceEvent>, info: Option<EncryptionInfo>| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                let Ok(ev) = raw.deserialize_as_unchecked::<Value>() else { return };
                let olm_device = info.as_ref().map(|i| i.sender_device.as_deref().map(|d| d.as_str()));
                if let Some(ev) = inbound::to_device_from_json(&ev, olm_device) {
                    tracing::debug!(sender = %ev.sender, r#type = %ev.event_type, encrypted = ev.encrypted, "to-device call event");
                    if ev.encrypted && inbound::is_invite_type(&ev.event_type) {
                        // The core rings a to-device invite only when it knows that we and the
                        // sender are joined to the room it names: tell it first (members may be
                        // lazy-loaded, so ask the client, which asks the server if it must).
                        for m in inner.memberships_for(&ev).await {
                            let _ = inner.inputs.send(Input::RoomMember(m)).await;
                        }
                    }
                    let _ = inner.inputs.send(Input::ToDevice(ev)).await;
                }
            }
        });
        [h1, h2]
    }

    /// The call events of one sync response as a single [`Input::SyncBatch`] (room timeline
    /// events of joined and left rooms in timeline order, Megolm-decrypted; forwarded to-device
    /// events with their Olm sender device), or `None` when it has none. For
    /// [`Delivery::Manual`].
    pub fn sync_batch(response: &matrix_sdk::sync::SyncResponse) -> Option<Input> {
        let mut room_events = Vec::new();
        let timelines = response
            .rooms
            .joined
            .iter()
            .map(|(id, r)| (id, &r.timeline))
            .chain(response.rooms.left.iter().map(|(id, r)| (id, &r.timeline)));
        for (room_id, timeline) in timelines {
            for ev in &timeline.events {
                if let Ok(json) = ev.raw().deserialize_as_unchecked::<Value>() {
                    let info = ev.encryption_info();
                    let megolm = info.map(|i| i.sender_device.as_deref().map(|d| d.as_str()));
                    room_events.extend(inbound::room_event_from_json(room_id.as_str(), &json, megolm));
                }
            }
        }
        let mut to_device = Vec::new();
        for ev in &response.to_device {
            let (raw, olm_device) = match ev {
                ProcessedToDeviceEvent::Decrypted { raw, encryption_info } => {
                    (raw.clone(), Some(encryption_info.sender_device.as_ref().map(|d| d.to_string())))
                }
                other => (other.to_raw(), None),
            };
            if let Ok(json) = raw.deserialize_as_unchecked::<Value>() {
                to_device
                    .extend(inbound::to_device_from_json(&json, olm_device.as_ref().map(|d| d.as_deref())));
            }
        }
        (!room_events.is_empty() || !to_device.is_empty())
            .then_some(Input::SyncBatch { room_events, to_device })
    }

    /// Asks `/versions` (once; cached) and queues [`Input::ServerSupport`]. Done automatically
    /// when the adapter is created inside a tokio runtime; call it again after a failure (it
    /// logs and sends nothing when `/versions` cannot be read).
    pub async fn announce_server_support(&self) {
        match self.supports_delayed_events().await {
            Ok(delayed_events) => {
                let _ = self.inner.inputs.send(Input::ServerSupport { delayed_events }).await;
            }
            Err(e) => tracing::warn!("cannot read /versions: {e}"),
        }
    }

    /// Reads our `m.ignored_user_list` account data (as stored by the client) and queues
    /// [`Input::IgnoredUsers`]; later changes arrive through sync. Done automatically when the
    /// adapter is created inside a tokio runtime.
    pub async fn announce_ignored_users(&self) {
        match self.inner.client.account().account_data::<IgnoredUserListEventContent>().await {
            Ok(Some(raw)) => match raw.deserialize() {
                Ok(content) => {
                    let _ = self.inner.inputs.send(ignored_users_input(&content)).await;
                }
                Err(e) => tracing::warn!("malformed m.ignored_user_list: {e}"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read m.ignored_user_list: {e}"),
        }
    }

    /// Counters of this adapter's send attempts so far (429s, transient failures, retries,
    /// requests given up), shared by all its clones.
    pub fn send_stats(&self) -> SendStats {
        self.inner.counters.snapshot()
    }

    /// Call events the answer watch ([`AdapterOptions::watch_answers`]) forwarded before the
    /// app's sync delivered them.
    pub fn events_ahead_of_sync(&self) -> u64 {
        self.inner.ahead_of_sync.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The client this adapter drives.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Subscribes to group-call membership state events (both dialects), from sync and from
    /// [`MatrixAdapter::room_state_inputs`]. A new subscription replaces the previous one. Events
    /// that arrive while nobody is subscribed are not kept.
    pub fn call_member_events(&self) -> mpsc::Receiver<CallMemberState> {
        let (tx, rx) = mpsc::channel(self.inner.options.channel_capacity.max(1));
        *self.inner.call_members.lock().expect("call_members lock") = Some(tx);
        rx
    }

    /// Replays a room's stored membership (`m.room.member`), encryption and call-membership
    /// state into the input channel as ONE [`Input::RoomState`] (the core takes a large room in
    /// at once and reports each group call's participants once), and the call memberships to the
    /// call-member subscription: for rooms the client knew before the adapter was created.
    pub async fn room_state_inputs(&self, room: &Room) -> Result<(), crate::AdapterError> {
        let room_id = room.room_id().as_str();
        let mut types: Vec<&str> = vec!["m.room.member", "m.room.encryption"];
        types.extend_from_slice(inbound::CALL_MEMBER_TYPES);
        let (mut members, mut state) = (Vec::new(), Vec::new());
        for t in types {
            for raw in room.get_state_events(t.into()).await? {
                let json = match raw {
                    matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(r) => {
                        r.deserialize_as_unchecked::<Value>()
                    }
                    matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Stripped(r) => {
                        r.deserialize_as_unchecked::<Value>()
                    }
                };
                let Ok(ev) = json else { continue };
                if let Some(m) = inbound::member_from_json(room_id, &ev) {
                    members.push(m);
                } else if let Some(e) = inbound::room_encryption_from_json(room_id, &ev) {
                    state.push(e);
                } else if let Some(cm) = inbound::call_member_from_json(room_id, &ev) {
                    let tx = self.inner.call_members.lock().expect("call_members lock").clone();
                    if let Some(tx) = tx {
                        let _ = tx.send(cm.clone()).await;
                    }
                    state.push(cm.into());
                }
            }
        }
        if !members.is_empty() || !state.is_empty() {
            let _ = self.inner.inputs.send(Input::RoomState { members, state }).await;
        }
        Ok(())
    }

    /// Queues `req` for execution in the background and reports its outcome as
    /// [`Input::SendResult`] on the input channel. Requests for the same room (or all to-device
    /// requests) run one at a time in submission order, so signalling keeps its order.
    pub fn submit(&self, req: SendRequest) {
        let lane = match &req.kind {
            SendKind::RoomEvent { room_id, .. }
            | SendKind::StateEvent { room_id, .. }
            | SendKind::DelayedStateEvent { room_id, .. } => format!("room:{room_id}"),
            SendKind::UpdateDelayedEvent { .. } | SendKind::ListDelayedEvents => "delayed-updates".to_owned(),
            SendKind::ToDevice { .. } => "to-device".to_owned(),
            _ => "other".to_owned(),
        };
        let mut lanes = self.lanes.senders.lock().expect("lanes lock");
        let tx = lanes.entry(lane).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<SendRequest>();
            // A handle without lanes of its own: no reference cycle through the queues.
            let worker = MatrixAdapter { inner: self.inner.clone(), lanes: Arc::new(Lanes::default()) };
            let handle = tokio::spawn(async move {
                while let Some(req) = rx.recv().await {
                    let id = req.id;
                    let result = worker.execute(req).await;
                    if worker.inner.inputs.send(Input::SendResult { id, result: result.clone() }).await.is_err() {
                        tracing::error!(%id, ?result, "input channel closed: send result not delivered to the core");
                    }
                }
            });
            self.lanes.workers.lock().expect("workers lock").push(handle);
            tx
        });
        if let Err(mpsc::error::SendError(req)) = tx.send(req) {
            tracing::error!(id = %req.id, "send lane closed: request dropped");
        }
    }

    /// Stops accepting submissions, waits until every submitted request has been executed and
    /// its result queued on the input channel, and unregisters the event handlers. (Dropping
    /// every handle of the adapter also lets queued requests finish, in the background.)
    pub async fn shutdown(&self) {
        self.lanes.senders.lock().expect("lanes lock").clear();
        let workers: Vec<_> = std::mem::take(&mut *self.lanes.workers.lock().expect("workers lock"));
        for w in workers {
            let _ = w.await;
        }
        for h in std::mem::take(&mut *self.inner.handlers.lock().expect("handlers lock")) {
            self.inner.client.remove_event_handler(h);
        }
    }

    /// Executes one core send with ONE attempt and returns the outcome for
    /// [`Input::SendResult`]: the core owns the retries of what it sends (back-off, the server's
    /// `retry_after_ms`, how hard to try a hangup or a leave, room order while one waits), so
    /// retries live in one layer. The request's `txn_id` is the Matrix transaction id, so a
    /// retry is idempotent; an Olm to-device send that reached only some devices is retried
    /// (same `txn_id`) to the others only. The adapter's [`RetryPolicy`]s apply to the requests
    /// the app makes itself ([`MatrixAdapter::send_state`], the delayed-event calls, TURN).
    pub async fn execute(&self, req: SendRequest) -> SendOutcome {
        let SendRequest { id, txn_id, kind } = req;
        let outcome = match kind {
            SendKind::RoomEvent { room_id, event_type, content } => {
                self.send_room_event(RetryPolicy::NONE, room_id.as_str(), &event_type, &txn_id, content).await
            }
            SendKind::ToDevice { event_type, room_id, messages, encryption } => {
                self.send_to_device(
                    RetryPolicy::NONE,
                    &event_type,
                    room_id.as_ref().map(|r| r.as_str()),
                    &txn_id,
                    messages,
                    encryption,
                )
                .await
            }
            SendKind::StateEvent { room_id, event_type, state_key, content } => {
                // An empty content is a leave: never given up quietly.
                let critical = content.as_object().is_some_and(|o| o.is_empty());
                let req = StateEventRequest { room_id, event_type, state_key, content, critical };
                self.send_state_with(Retries::Core, req).await
            }
            SendKind::DelayedStateEvent { room_id, event_type, state_key, content, delay_ms } => {
                let req = DelayedEventRequest {
                    room_id,
                    event: DelayedEvent::State { event_type, state_key, content },
                    delay: Duration::from_millis(delay_ms),
                };
                match self.schedule_delayed_with(Retries::Core, req).await {
                    Ok(delay_id) => SendOutcome::Sent { event_id: None, delay_id: Some(delay_id) },
                    Err(f) => f.into_outcome(),
                }
            }
            SendKind::ListDelayedEvents => self.list_delayed_events_with(Retries::Core).await,
            SendKind::UpdateDelayedEvent { delay_id, action } => {
                match self.update_delayed_with(Retries::Core, &delay_id, action).await {
                    Ok(()) => SendOutcome::Sent { event_id: None, delay_id: Some(delay_id) },
                    Err(f) => f.into_outcome(),
                }
            }
            other => SendOutcome::Failed {
                retryable: false,
                error: format!("this adapter cannot send {other:?}"),
                errcode: None,
            },
        };
        match &outcome {
            SendOutcome::Sent { .. } | SendOutcome::DelayedEvents { .. } => tracing::debug!(%id, "sent"),
            other => tracing::warn!(%id, ?other, "send failed"),
        }
        outcome
    }

    async fn send_room_event(
        &self,
        policy: RetryPolicy,
        room_id: &str,
        event_type: &str,
        txn_id: &str,
        content: Value,
    ) -> SendOutcome {
        let room = match self.joined_room(room_id) {
            Ok(r) => r,
            Err(f) => return f.into_outcome(),
        };
        let txn: OwnedTransactionId = txn_id.into();
        let result = retry::retry_counted(policy, event_type, Some(&self.inner.counters), |_| {
            let room = room.clone();
            let content = content.clone();
            let txn = txn.clone();
            async move {
                room.send_raw(event_type, content)
                    .with_transaction_id(&txn)
                    .with_request_config(RequestConfig::new().disable_retry())
                    .await
                    .map_err(|e| classify(&e))
            }
        })
        .await;
        match result {
            Ok(r) => {
                if event_type == "m.call.invite" {
                    self.watch_answer(&room, &content);
                }
                SendOutcome::Sent { event_id: Some(r.response.event_id.to_string()), delay_id: None }
            }
            Err(f) => f.into_outcome(),
        }
    }

    /// Starts [`crate::answer_watch`] for an invite of ours that just went out.
    fn watch_answer(&self, room: &Room, content: &Value) {
        let inner = &self.inner;
        if !inner.options.watch_answers || inner.options.delivery != Delivery::PerEvent {
            return;
        }
        let Some(call_id) = content.get("call_id").and_then(Value::as_str) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let Ok(mut watched) = inner.watched.lock() else { return };
        if !watched.insert(call_id.to_owned()) {
            return;
        }
        drop(watched);
        let (weak, room, call_id) = (Arc::downgrade(inner), room.clone(), call_id.to_owned());
        rt.spawn(async move {
            let n = crate::answer_watch::watch(weak, room, call_id).await;
            tracing::debug!(forwarded = n, "answer watch ended");
        });
    }

    pub(crate) fn joined_room(&self, room_id: &str) -> Result<Room, Failure> {
        let id = OwnedRoomId::try_from(room_id)
            .map_err(|e| Failure::refused(false, format!("invalid room id {room_id}: {e}")))?;
        // Retryable: the room may not have come down sync yet.
        self.inner
            .client
            .get_room(&id)
            .ok_or_else(|| Failure::refused(true, format!("room {room_id} is not known to the client")))
    }

    async fn send_to_device(
        &self,
        policy: RetryPolicy,
        event_type: &str,
        room_id: Option<&str>,
        txn_id: &str,
        messages: Vec<ToDeviceMessage>,
        encryption: ToDeviceEncryption,
    ) -> SendOutcome {
        if messages.is_empty() {
            return SendOutcome::Sent { event_id: None, delay_id: None };
        }
        // Media keys are never sent in clear, whatever the request says.
        let required = encryption == ToDeviceEncryption::Required || inbound::is_media_key_type(event_type);
        let mut encrypt = required;
        if !required {
            if let Some(room) = room_id.and_then(|r| self.joined_room(r).ok()) {
                encrypt = room.latest_encryption_state().await.map(|s| s.is_encrypted()).unwrap_or(false);
            }
        }
        let mut clear = Vec::new();
        let mut olm: Vec<(ToDeviceMessage, Device)> = Vec::new();
        if encrypt {
            for m in messages {
                match self.find_device(&m).await {
                    Ok(Some(dev)) => olm.push((m, dev)),
                    Ok(None) if required => {
                        return SendOutcome::Failed {
                            retryable: true,
                            errcode: None,
                            error: format!(
                                "no Olm keys for {} {}: refusing to send {event_type} in clear",
                                m.user_id, m.device_id
                            ),
                        }
                    }
                    Ok(None) => clear.push(m),
                    Err(f) => return f.into_outcome(),
                }
            }
        } else {
            clear = messages;
        }
        if !clear.is_empty() {
            if let Err(f) = self.send_clear_to_device(policy, event_type, txn_id, &clear).await {
                return f.into_outcome();
            }
        }
        if !olm.is_empty() {
            if let Err(f) = self.send_olm_to_device(policy, event_type, txn_id, olm).await {
                return f.into_outcome();
            }
        }
        SendOutcome::Sent { event_id: None, delay_id: None }
    }

    async fn find_device(&self, m: &ToDeviceMessage) -> Result<Option<Device>, Failure> {
        let user = user_id(&m.user_id)?;
        let device: OwnedDeviceId = m.device_id.as_str().into();
        let enc = self.inner.client.encryption();
        if let Some(d) =
            enc.get_device(&user, &device).await.map_err(|e| Failure::Transient(e.to_string()))?
        {
            return Ok(Some(d));
        }
        // Unknown so far: ask the server for the user's keys once.
        enc.request_user_identity(&user).await.map_err(|e| classify(&e))?;
        enc.get_device(&user, &device).await.map_err(|e| Failure::Transient(e.to_string()))
    }

    async fn send_clear_to_device(
        &self,
        policy: RetryPolicy,
        event_type: &str,
        txn_id: &str,
        clear: &[ToDeviceMessage],
    ) -> Result<(), Failure> {
        type Messages = BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>>;
        let mut map: Messages = BTreeMap::new();
        // The messages of one content share it: serialize it once.
        let mut last: Option<(&Arc<Value>, Raw<AnyToDeviceEventContent>)> = None;
        for m in clear {
            let user = user_id(&m.user_id)?;
            let raw = match &last {
                Some((content, raw)) if Arc::ptr_eq(content, &m.content) => raw.clone(),
                _ => {
                    let raw: Raw<AnyToDeviceEventContent> = Raw::new(&*m.content)
                        .map_err(|e| Failure::refused(false, e.to_string()))?
                        .cast_unchecked();
                    last = Some((&m.content, raw.clone()));
                    raw
                }
            };
            let device: OwnedDeviceId = m.device_id.as_str().into();
            map.entry(user).or_default().insert(DeviceIdOrAllDevices::DeviceId(device), raw);
        }
        let client = self.inner.client.clone();
        retry::retry_counted(policy, event_type, Some(&self.inner.counters), |_| {
            let request =
                send_event_to_device::v3::Request::new_raw(event_type.into(), txn_id.into(), map.clone());
            let client = client.clone();
            async move {
                client
                    .send(request)
                    .with_request_config(RequestConfig::new().disable_retry())
                    .await
                    .map(|_| ())
                    .map_err(|e| retry::classify_http(&e))
            }
        })
        .await
    }

    async fn send_olm_to_device(
        &self,
        policy: RetryPolicy,
        event_type: &str,
        txn_id: &str,
        mut pending: Vec<(ToDeviceMessage, Device)>,
    ) -> Result<(), Failure> {
        let key = |m: &ToDeviceMessage| (m.user_id.to_string(), m.device_id.to_string());
        // A retry of a send that reached some devices already goes to the others only.
        if let Some(done) = self.inner.olm_delivered.lock().ok().as_ref().and_then(|d| d.delivered(txn_id)) {
            pending.retain(|(m, _)| !done.contains(&key(m)));
        }
        let all: Vec<(String, String)> = pending.iter().map(|(m, _)| key(m)).collect();
        let enc = self.inner.client.encryption();
        let strategy = self.inner.options.collect_strategy.clone();
        // Devices still to reach; a retry only targets the ones that failed.
        let pending = Arc::new(Mutex::new(pending));
        let result = retry::retry_counted(policy, event_type, Some(&self.inner.counters), |_| {
            let pending = pending.clone();
            let enc = enc.clone();
            let strategy = strategy.clone();
            async move {
                let batch = std::mem::take(&mut *pending.lock().expect("pending lock"));
                // One call per distinct content (the SDK encrypts one content for many devices).
                // The messages of one content share it (one `Arc`), so a media key to 10 000
                // members is grouped by pointer without serializing it 10 000 times.
                type Group<'b> = (&'b Arc<Value>, Vec<&'b (ToDeviceMessage, Device)>);
                let mut groups: Vec<Group<'_>> = Vec::new();
                for item in &batch {
                    let content = &item.0.content;
                    match groups.iter_mut().find(|(c, _)| Arc::ptr_eq(c, content) || **c == *content) {
                        Some((_, v)) => v.push(item),
                        None => groups.push((content, vec![item])),
                    }
                }
                let mut failed: Vec<(ToDeviceMessage, Device)> = Vec::new();
                let mut last_err = None;
                for (content, items) in groups {
                    let raw: Raw<AnyToDeviceEventContent> = match Raw::new(&**content) {
                        Ok(r) => r.cast_unchecked(),
                        Err(e) => return Err(Failure::refused(false, e.to_string())),
                    };
                    let devices: Vec<&Device> = items.iter().map(|(_, d)| d).collect();
                    match enc.encrypt_and_send_raw_to_device(devices, event_type, raw, strategy.clone()).await
                    {
                        Ok(failures) => {
                            for (m, d) in items {
                                if failures.iter().any(|(u, dev)| u == d.user_id() && dev == d.device_id()) {
                                    failed.push((m.clone(), d.clone()));
                                }
                            }
                        }
                        Err(e) => {
                            last_err = Some(classify(&e));
                            failed.extend(items.into_iter().cloned());
                        }
                    }
                }
                if failed.is_empty() {
                    return Ok(());
                }
                let names: Vec<String> =
                    failed.iter().map(|(m, _)| format!("{} {}", m.user_id, m.device_id)).collect();
                let failure = last_err.unwrap_or_else(|| {
                    Failure::Transient(format!(
                        "Olm-encrypted {event_type} not delivered to {}",
                        names.join(", ")
                    ))
                });
                *pending.lock().expect("pending lock") = failed;
                Err(failure)
            }
        })
        .await;
        if let Ok(mut memory) = self.inner.olm_delivered.lock() {
            match &result {
                Ok(()) => memory.forget(txn_id),
                Err(_) => {
                    let failed: HashSet<(String, String)> =
                        pending.lock().map(|p| p.iter().map(|(m, _)| key(m)).collect()).unwrap_or_default();
                    let reached: Vec<(String, String)> =
                        all.into_iter().filter(|k| !failed.contains(k)).collect();
                    if !reached.is_empty() {
                        memory.record(txn_id, reached);
                    }
                }
            }
        }
        result
    }
}

fn user_id(u: &voip_core::UserId) -> Result<OwnedUserId, Failure> {
    OwnedUserId::try_from(u.as_str())
        .map_err(|e| Failure::refused(false, format!("invalid user id {u}: {e}")))
}

fn ignored_users_input(content: &IgnoredUserListEventContent) -> Input {
    Input::IgnoredUsers {
        users: content.ignored_users.keys().map(|u| voip_core::UserId::from(u.as_str())).collect(),
    }
}

impl Inner {
    /// Our and the sender's membership of the room a to-device invite names, as far as the
    /// client knows them (fetching the member list when it is not loaded).
    async fn memberships_for(&self, ev: &voip_core::ToDeviceEvent) -> Vec<voip_core::RoomMember> {
        let Some(room_id) = ev.content.get("room_id").and_then(Value::as_str) else { return Vec::new() };
        let Ok(room_id) = OwnedRoomId::try_from(room_id) else { return Vec::new() };
        let Some(room) = self.client.get_room(&room_id) else { return Vec::new() };
        let mut out = Vec::new();
        if let Some(me) = self.client.user_id() {
            let membership = match room.state() {
                matrix_sdk::RoomState::Joined => Some(voip_core::RoomMembership::Join),
                matrix_sdk::RoomState::Invited => Some(voip_core::RoomMembership::Invite),
                matrix_sdk::RoomState::Left => Some(voip_core::RoomMembership::Leave),
                matrix_sdk::RoomState::Banned => Some(voip_core::RoomMembership::Ban),
                matrix_sdk::RoomState::Knocked => Some(voip_core::RoomMembership::Knock),
            };
            if let Some(membership) = membership {
                out.push(voip_core::RoomMember {
                    room_id: voip_core::RoomId::from(room_id.as_str()),
                    user_id: voip_core::UserId::from(me.as_str()),
                    membership,
                });
            }
        }
        let Ok(sender) = OwnedUserId::try_from(ev.sender.as_str()) else { return out };
        match room.get_member(&sender).await {
            Ok(Some(member)) => {
                let json = serde_json::json!({
                    "type": "m.room.member",
                    "state_key": sender.as_str(),
                    "content": {"membership": member.membership().as_str()},
                });
                out.extend(inbound::member_from_json(room_id.as_str(), &json));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%sender, "cannot read the caller's room membership: {e}"),
        }
        out
    }

    async fn dispatch_state(&self, room_id: &str, ev: &Value) {
        if let Some(m) = inbound::member_from_json(room_id, ev) {
            let _ = self.inputs.send(Input::RoomMember(m)).await;
        } else if let Some(e) = inbound::room_encryption_from_json(room_id, ev) {
            let _ = self.inputs.send(Input::StateEvent(e)).await;
        } else if let Some(cm) = inbound::call_member_from_json(room_id, ev) {
            let tx = self.call_members.lock().expect("call_members lock").clone();
            if let Some(tx) = tx {
                let _ = tx.send(cm.clone()).await;
            }
            let _ = self.inputs.send(Input::StateEvent(cm.into())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OlmDelivered;

    fn dev(n: usize) -> (String, String) {
        (format!("@u{n}:hs"), format!("D{n}"))
    }

    #[test]
    fn partly_delivered_olm_sends_are_remembered_per_txn_and_bounded() {
        let mut m = OlmDelivered::default();
        m.record("t1", [dev(1), dev(2)]);
        m.record("t1", [dev(3)]);
        assert_eq!(m.delivered("t1").map(|d| d.len()), Some(3));
        assert!(m.delivered("t2").is_none());
        m.forget("t1");
        assert!(m.delivered("t1").is_none());
        assert!(m.order.is_empty());
        for n in 0..OlmDelivered::MAX + 44 {
            m.record(&format!("t{n}"), [dev(n)]);
        }
        assert_eq!(m.by_txn.len(), OlmDelivered::MAX);
        assert_eq!(m.order.len(), OlmDelivered::MAX);
        assert!(m.delivered("t0").is_none(), "the oldest entry is dropped first");
        assert!(m.delivered(&format!("t{}", OlmDelivered::MAX + 43)).is_some());
    }
}
