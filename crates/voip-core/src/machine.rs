//! [`Voip`]: the one machine per local device. It routes inputs to the call sub-machines and
//! collects their outputs; protocol decisions live in `call/`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::call::incoming::{self, Gate};
use crate::call::memory::{EarlyCandidates, EarlyRefused, EndedCalls};
use crate::call::remote::{Disposition, Ignored, Sender};
use crate::call::{glare, Call, CallInfo, GroupLink, Incoming, Outgoing};
use crate::config::{BusySignal, Config, GlareBehaviour};
use crate::ctx::Ctx;
use crate::error::{ApiMisuse, Error};
use crate::group::membership::{self, Device, MembershipStore};
use crate::group::{self, GroupCall, GroupCallInfo, GroupCallState, GroupOp, JoinParams};
use crate::ids::{CallId, DeviceId, GroupCallId, LocalDevice, PartyId, RoomId, Timestamp, UserId};
use crate::input::{
    Command, Input, Membership, RoomEvent, RoomMember, SendOutcome, Signalling, ToDeviceEvent,
};
use crate::media::{CallType, Candidate, MediaEvent};
use crate::output::{CallDirection, CallState, EndReason, Event, Initiator, Output};
use crate::quota::{PerSender, Quota};
use crate::rng::Rng;
use crate::sends::{SendTable, SendVerdict};
use crate::timers::{Deadline, TimerKind};
use crate::wire::call::{self as wire, types, CallEvent, CallVersion, Common};
use crate::wire::member;
use crate::wire::{WireError, WireErrorKind};

/// Delay before a mesh call that ended is set up again, and how often per peer session.
const MESH_RETRY_MS: u64 = 2_000;
const MESH_MAX_ATTEMPTS: u32 = 3;

/// Mesh invites that overtook their sender's membership: per sender and in all.
const PENDING_MESH_QUOTA: Quota = Quota { per_sender: 4, total: 64 };

/// How many received events were applied or refused, by cause. For logs, metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Counters {
    /// Events that changed something.
    pub applied: u64,
    /// Malformed contents (typed [`Error::Remote`]).
    pub malformed: u64,
    /// Our own events coming back.
    pub echoes: u64,
    /// Events from someone who is not the call's peer (spoofed or misdirected).
    pub not_from_peer: u64,
    /// Invites addressed to another user or device, or from a non-member.
    pub not_for_us: u64,
    /// Invites and negotiations past their lifetime.
    pub expired: u64,
    /// Duplicates, replays and late events for ended calls.
    pub duplicates: u64,
    /// Events not valid in the call's state.
    pub wrong_state: u64,
    /// Invites refused because we were busy.
    pub busy: u64,
    /// Call events refused for want of encryption: to-device call events that were not
    /// Olm-encrypted (or whose sending device Olm did not vouch for), and cleartext room call
    /// events in a room with `m.room.encryption`.
    #[serde(default)]
    pub unauthenticated: u64,
    /// Invites from users on our `m.ignored_user_list`.
    #[serde(default)]
    pub ignored_users: u64,
    /// New calls refused because their sender used up its budget of new calls.
    #[serde(default)]
    pub rate_limited: u64,
    /// Membership events written at a state key naming another user (see `docs/security.md`).
    #[serde(default)]
    pub foreign_state_keys: u64,
    /// New membership keys refused because their sender already holds as many as it may in the
    /// room (or, for sticky ones, because as many are held in total).
    #[serde(default)]
    pub memberships_over_limit: u64,
    /// Media keys (and key requests) received for an SFU group call we take part in without
    /// media encryption ([`crate::MediaEncryption::None`]): ignored.
    #[serde(default)]
    pub keys_in_unencrypted_calls: u64,
    /// Delayed leaves of this device that an earlier process left behind, cancelled because a
    /// current join writes the same membership (MSC4140 listing at start-up).
    #[serde(default)]
    pub stale_delayed_leaves_cancelled: u64,
    /// The listing of our delayed events failed (e.g. a server without the endpoint: `404`
    /// `M_UNRECOGNIZED`). It is not asked again in this process.
    #[serde(default)]
    pub delayed_event_listing_failed: u64,
}

impl Counters {
    fn count(&mut self, d: Disposition) {
        match d {
            Disposition::Applied => self.applied += 1,
            Disposition::Ignored(Ignored::Echo) => self.echoes += 1,
            Disposition::Ignored(Ignored::NotFromPeer) => self.not_from_peer += 1,
            Disposition::Ignored(Ignored::Duplicate) => self.duplicates += 1,
            Disposition::Ignored(Ignored::WrongState) => self.wrong_state += 1,
            Disposition::Ignored(Ignored::Expired) => self.expired += 1,
        }
    }
}

/// Most delayed leaves of earlier processes remembered from the listing.
const MAX_STALE_DELAYED: usize = 64;

/// The start-up listing of our delayed events (once per process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DelayedListing {
    /// Not asked yet (waits for the server to announce delayed events).
    NotAsked,
    /// Asked; the request.
    InFlight(crate::ids::RequestId),
    /// Answered or failed: not asked again.
    Done,
}

/// A delayed membership leave at one of our state keys that no join of this process scheduled
/// (an earlier process's, or, for famedly's per-user key, possibly another device's: see
/// `Voip::cancel_stale_delayed`), until it has fired for sure.
#[derive(Clone, Debug)]
struct StaleDelayed {
    event: crate::input::ScheduledDelayedEvent,
    until: Timestamp,
}

/// Where a received call event came from.
struct Source<'a> {
    room_id: RoomId,
    sender: &'a UserId,
    device: Option<&'a DeviceId>,
    age_ms: Option<u64>,
    signalling: Signalling,
}

/// The sans-IO VoIP machine of one device.
///
/// Drive it with one loop, the same for apps, fixtures and the simulator:
///
/// ```
/// use voip_core::{Config, Input, LocalDevice, Output, Timestamp, Voip};
///
/// let mut voip = Voip::new(Config::default(), LocalDevice::new("@alice:example.org", "ALICE"), [7; 32]);
/// let now = Timestamp(1_700_000_000_000);
/// voip.handle(now, Input::Tick).unwrap();
/// // After every `handle`, drain every output before handling the next input.
/// while let Some(output) = voip.poll() {
///     match output {
///         Output::Send(request) => { /* send it, then feed Input::SendResult */ let _ = request; }
///         Output::Media { call_id, command } => { /* media engine */ let _ = (call_id, command); }
///         Output::Event(event) => { /* tell the app */ let _ = event; }
///     }
/// }
/// // Then sleep until `next_deadline()` or the next input, whichever comes first.
/// assert!(voip.next_deadline().is_none());
/// ```
#[derive(Debug)]
pub struct Voip {
    config: Config,
    local: LocalDevice,
    rng: Rng,
    now: Timestamp,
    calls: BTreeMap<CallId, Call>,
    ended: EndedCalls,
    early: EarlyCandidates,
    /// Who may ring us (ignored users, per-sender budgets).
    gate: Gate,
    /// Rooms with `m.room.encryption`: cleartext call events there are refused.
    encrypted_rooms: BTreeSet<RoomId>,
    /// Replacements of our calls that their callee ended with `replaced` (lagging glare).
    awaited: glare::AwaitedReplacements,
    members: BTreeMap<RoomId, BTreeMap<UserId, Membership>>,
    /// While an [`Input::RoomState`] is applied: the membership changes still to look at.
    deferred: Option<membership::Changes>,
    out: VecDeque<Output>,
    sends: SendTable,
    can_handle_override: Option<bool>,
    counters: Counters,
    /// Every membership of every room, all dialects.
    store: MembershipStore,
    /// Group calls we take part in.
    groups: BTreeMap<GroupCallId, GroupCall>,
    /// Participants last reported for group calls we only observe.
    observed: BTreeMap<GroupCallId, BTreeSet<crate::ids::Participant>>,
    /// MSC4140 support, once the server told us.
    delayed_events: Option<bool>,
    /// Memberships expiring up to here have been accounted for.
    expiry_checked: Timestamp,
    /// Counter of group joins (see `GroupCall::generation`).
    group_generation: u64,
    /// The start-up listing of our delayed events.
    delayed_listing: DelayedListing,
    /// Delayed leaves of ours that no current join owns, from the listing.
    stale_delayed: Vec<StaleDelayed>,
    /// Mesh invites that overtook their sender's membership.
    pending_mesh: PerSender<CallId, PendingMeshInvite>,
    /// Groups whose mesh needs another look (a peer call ended), and when.
    mesh_retry: BTreeMap<GroupCallId, Timestamp>,
    /// Calls placed per (group, peer device) to its current session since the last one that
    /// connected: (session, attempts). One entry per member device, so a member changing
    /// sessions cannot grow it.
    mesh_attempts: BTreeMap<(GroupCallId, UserId, DeviceId), (String, u32)>,
}

macro_rules! ctx {
    ($self:ident) => {
        Ctx {
            now: $self.now,
            config: &$self.config,
            local: &$self.local,
            rng: &mut $self.rng,
            out: &mut $self.out,
            sends: &mut $self.sends,
        }
    };
}

impl Voip {
    /// A machine for `local`, with all randomness drawn from `seed` (use OS entropy in
    /// production, a fixed value in tests: see [`crate::seed_from_u64`]).
    pub fn new(config: Config, local: LocalDevice, seed: [u8; 32]) -> Voip {
        Voip {
            config,
            local,
            rng: Rng::from_seed(seed),
            now: Timestamp(0),
            calls: BTreeMap::new(),
            ended: EndedCalls::default(),
            early: EarlyCandidates::default(),
            gate: Gate::default(),
            encrypted_rooms: BTreeSet::new(),
            awaited: glare::AwaitedReplacements::default(),
            members: BTreeMap::new(),
            deferred: None,
            out: VecDeque::new(),
            sends: SendTable::with_session(session_tag(&seed)),
            can_handle_override: None,
            counters: Counters::default(),
            store: MembershipStore::default(),
            groups: BTreeMap::new(),
            observed: BTreeMap::new(),
            delayed_events: None,
            expiry_checked: Timestamp(0),
            group_generation: 0,
            delayed_listing: DelayedListing::NotAsked,
            stale_delayed: Vec::new(),
            pending_mesh: PerSender::new(PENDING_MESH_QUOTA),
            mesh_retry: BTreeMap::new(),
            mesh_attempts: BTreeMap::new(),
        }
    }

    // ===== getters =====

    /// This device.
    pub fn local_device(&self) -> &LocalDevice {
        &self.local
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A snapshot of a live call.
    pub fn call(&self, call_id: &CallId) -> Option<CallInfo> {
        self.calls.get(call_id).map(Call::info)
    }

    /// Snapshots of every live call.
    pub fn calls(&self) -> Vec<CallInfo> {
        self.calls.values().map(Call::info).collect()
    }

    /// Whether a new incoming call would ring (`can_handle_new_call`): false while another call
    /// is being answered, connecting or connected, unless overridden.
    pub fn can_handle_new_call(&self) -> bool {
        self.can_handle_override
            .unwrap_or_else(|| !(self.config.busy_when_in_call && self.calls.values().any(Call::is_engaged)))
    }

    /// Received-event statistics.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How full every map that remote input can grow is, against its bounds (for fuzzing and
    /// property tests: see `docs/security.md`).
    #[cfg(feature = "testing")]
    pub fn footprint(&self) -> Footprint {
        let usage = |(total, max_one, q): (usize, usize, Quota)| Usage {
            total,
            max_one_sender: max_one,
            limit_total: q.total,
            limit_per_sender: q.per_sender,
        };
        let pending =
            (self.pending_mesh.total(), self.pending_mesh.max_per_sender(), self.pending_mesh.quota());
        let mut calls_per_peer: BTreeMap<&UserId, usize> = BTreeMap::new();
        for c in self.calls.values() {
            *calls_per_peer.entry(&c.peer_user).or_default() += 1;
        }
        Footprint {
            ended: usage(self.ended.usage()),
            early_candidates: usage(self.early.usage()),
            pending_mesh: usage(pending),
            calls: self.calls.len(),
            max_calls_one_peer: calls_per_peer.values().copied().max().unwrap_or(0),
        }
    }

    /// Number of sends still waiting for their [`Input::SendResult`].
    pub fn pending_sends(&self) -> usize {
        self.sends.len()
    }

    // ===== the driving surface =====

    /// Feeds one input. `now` never goes backwards: an earlier `now` is treated as the last one.
    /// Due timers fire first. Drain [`Voip::poll`] afterwards.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), Error> {
        self.now = self.now.max(now);
        self.fire_timers();
        let result = match input {
            Input::Command(c) => self.handle_command(c).map(|_| ()),
            Input::RoomEvent(e) => self.handle_room_event(e, &BTreeSet::new()),
            Input::ToDevice(e) => self.handle_to_device(e, &BTreeSet::new()),
            Input::SyncBatch { room_events, to_device } => {
                self.handle_batch(room_events, to_device);
                Ok(())
            }
            Input::RoomMember(m) => {
                self.handle_member(m);
                Ok(())
            }
            Input::RoomState { members, state } => {
                self.handle_room_state(members, state);
                Ok(())
            }
            Input::SendResult { id, result } => {
                let mut errcode = None;
                let mut max_delay = None;
                let verdict = match result {
                    SendOutcome::DelayedEvents { delayed_events } => {
                        self.sends.sent(id, &mut self.out);
                        if self.delayed_listing == DelayedListing::InFlight(id) {
                            self.delayed_listed(delayed_events);
                        }
                        SendVerdict::Nothing
                    }
                    SendOutcome::Sent { delay_id, event_id } => {
                        if self.delayed_listing == DelayedListing::InFlight(id) {
                            // An adapter that answers the listing without a list: nothing known.
                            self.delayed_listing = DelayedListing::Done;
                        }
                        if let Some((group, generation, op)) = self.sends.sent(id, &mut self.out) {
                            self.group_sent(
                                &group,
                                generation,
                                op,
                                group::Sent { event_id: event_id.clone(), delay_id },
                            );
                        }
                        SendVerdict::Nothing
                    }
                    SendOutcome::RateLimited { retry_after_ms } => self.sends.failed(
                        id,
                        self.now,
                        true,
                        retry_after_ms,
                        self.config.max_send_retries,
                        &mut self.out,
                    ),
                    SendOutcome::MaxDelayExceeded { max_delay_ms } => {
                        tracing::warn!(%id, max_delay_ms, "delay above the server's maximum");
                        errcode = Some(group::MAX_DELAY_EXCEEDED.to_owned());
                        max_delay = Some(max_delay_ms);
                        self.sends.failed(id, self.now, false, None, 0, &mut self.out)
                    }
                    SendOutcome::Failed { retryable, error, errcode: code } => {
                        tracing::warn!(%id, %error, retryable, ?code, "send failed");
                        errcode = code;
                        self.sends.failed(
                            id,
                            self.now,
                            retryable,
                            None,
                            self.config.max_send_retries,
                            &mut self.out,
                        )
                    }
                };
                if let SendVerdict::GaveUp { call_id, purpose, group } = verdict {
                    tracing::warn!(%id, ?call_id, ?purpose, "giving up on a send");
                    if self.delayed_listing == DelayedListing::InFlight(id) {
                        // No listing endpoint (404/400 `M_UNRECOGNIZED`) or no luck: counted, and
                        // not asked again (stale delayed leaves are still caught when they fire:
                        // the rejoin path).
                        tracing::info!(?errcode, "delayed events cannot be listed here");
                        self.counters.delayed_event_listing_failed += 1;
                        self.delayed_listing = DelayedListing::Done;
                    }
                    if let Some(call) = call_id.and_then(|c| self.calls.get_mut(&c)) {
                        call.send_gave_up(&mut ctx!(self), purpose);
                    }
                    if let Some((group, generation, op)) = group {
                        self.group_failed(&group, generation, op, errcode.as_deref(), max_delay);
                    }
                }
                Ok(())
            }
            Input::Media { call_id, event } => self.handle_media(call_id, event),
            Input::StateEvent(e) => self.handle_state_event(e),
            Input::ServerSupport { delayed_events } => {
                self.delayed_events = Some(delayed_events);
                if delayed_events && self.delayed_listing == DelayedListing::NotAsked {
                    // Start-up: find delayed leaves an earlier process of this device left behind.
                    let id = self.sends.send(
                        &mut self.out,
                        None,
                        crate::sends::SendPurpose::Other,
                        "voip.group",
                        crate::output::SendKind::ListDelayedEvents,
                    );
                    self.delayed_listing = DelayedListing::InFlight(id);
                }
                Ok(())
            }
            Input::IgnoredUsers { users } => {
                self.gate.set_ignored(users);
                // Mesh: stop calling them.
                let joined: Vec<GroupCallId> = self.groups.keys().cloned().collect();
                for g in joined {
                    self.reconcile_mesh(&g);
                }
                Ok(())
            }
            Input::Tick => Ok(()),
        };
        self.collect_ended();
        result
    }

    /// The next output, or `None` when drained.
    #[must_use]
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the machine next needs [`Input::Tick`] (or any input), and why.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Deadline> {
        let mut best: Option<Deadline> = None;
        let mut offer = |d: Deadline| {
            if best.as_ref().is_none_or(|b| d.at < b.at) {
                best = Some(d);
            }
        };
        for call in self.calls.values() {
            if let Some((at, reason)) = call.next_timer() {
                offer(Deadline {
                    at: at.max(self.now),
                    reason,
                    call_id: Some(call.id.clone()),
                    request_id: None,
                });
            }
        }
        if let Some((at, id)) = self.sends.next_retry() {
            offer(Deadline {
                at: at.max(self.now),
                reason: TimerKind::SendRetry,
                call_id: None,
                request_id: Some(id),
            });
        }
        for g in self.groups.values() {
            if let Some(at) = g.next_timer() {
                offer(Deadline {
                    at: at.max(self.now),
                    reason: TimerKind::GroupMembership,
                    call_id: None,
                    request_id: None,
                });
            }
        }
        if let Some(at) = self.mesh_retry.values().min() {
            offer(Deadline { at: *at, reason: TimerKind::GroupMembership, call_id: None, request_id: None });
        }
        if let Some(at) = self.store.next_expiry(self.now) {
            offer(Deadline { at, reason: TimerKind::MembershipExpiry, call_id: None, request_id: None });
        }
        let housekeeping = [
            self.ended.next_expiry(),
            self.early.next_expiry(),
            self.pending_mesh.next_expiry(),
            self.gate.next_expiry(),
            self.awaited.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = housekeeping {
            offer(Deadline {
                at: at.max(self.now),
                reason: TimerKind::Housekeeping,
                call_id: None,
                request_id: None,
            });
        }
        best
    }

    // ===== thin command wrappers =====

    /// Places a call and returns its id (see [`Command::PlaceCall`]).
    pub fn place_call(
        &mut self,
        now: Timestamp,
        room_id: RoomId,
        invitee: UserId,
        invitee_device: Option<DeviceId>,
        call_type: CallType,
        signalling: Signalling,
    ) -> Result<CallId, Error> {
        self.now = self.now.max(now);
        self.fire_timers();
        let cmd = Command::PlaceCall { room_id, invitee, invitee_device, call_type, signalling };
        let result = self.handle_command(cmd).map(|id| id.expect("PlaceCall returns the new call id"));
        self.collect_ended();
        result
    }

    /// Answers a ringing call (see [`Command::Answer`]).
    pub fn answer(
        &mut self,
        now: Timestamp,
        call_id: CallId,
        call_type: Option<CallType>,
    ) -> Result<(), Error> {
        self.handle(now, Input::Command(Command::Answer { call_id, call_type }))
    }

    /// Hangs up (see [`Command::Hangup`]).
    pub fn hangup(&mut self, now: Timestamp, call_id: CallId) -> Result<(), Error> {
        self.handle(now, Input::Command(Command::Hangup { call_id, reason: None }))
    }

    // ===== internals =====

    fn call_mut(&mut self, call_id: &CallId) -> Result<&mut Call, ApiMisuse> {
        self.calls.get_mut(call_id).ok_or_else(|| ApiMisuse::UnknownCall { call_id: call_id.clone() })
    }

    fn handle_command(&mut self, command: Command) -> Result<Option<CallId>, Error> {
        match command {
            Command::PlaceCall { room_id, invitee, invitee_device, call_type, signalling } => {
                if invitee == self.local.user_id
                    && invitee_device.as_ref().is_none_or(|d| *d == self.local.device_id)
                {
                    return Err(ApiMisuse::CallingSelf.into());
                }
                if signalling == Signalling::ToDevice && invitee_device.is_none() {
                    return Err(ApiMisuse::MissingDevice.into());
                }
                if let Some(c) = self.calls.values().find(|c| c.room_id == room_id && c.peer_user == invitee)
                {
                    return Err(ApiMisuse::AlreadyInCall { call_id: c.id.clone() }.into());
                }
                let id = CallId(format!("{}{}", self.now.0, self.rng.alnum(16)));
                let call = Call::outgoing(
                    &mut ctx!(self),
                    Outgoing {
                        id: id.clone(),
                        room_id,
                        invitee,
                        invitee_device,
                        call_type,
                        signalling,
                        group: None,
                        mutes: (false, false),
                    },
                );
                self.calls.insert(id.clone(), call);
                Ok(Some(id))
            }
            Command::JoinGroupCall {
                room_id,
                call_id,
                application,
                scope,
                dialect,
                focus,
                owned_state_keys,
                notify,
                encryption,
            } => {
                let group = GroupCallId { room_id, call_id };
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| matches!(g.state, GroupCallState::Joining | GroupCallState::Joined))
                {
                    return Err(ApiMisuse::AlreadyInGroupCall { group }.into());
                }
                // Joining again while our leave is still on its way replaces the old join; the
                // old join's late results are told apart by the generation.
                self.group_generation += 1;
                let params = JoinParams {
                    encryption: encryption.unwrap_or_else(|| self.room_encryption(&group.room_id)),
                    encryption_defaulted: encryption.is_none(),
                    group: group.clone(),
                    application,
                    scope,
                    dialect,
                    focus,
                    owned_state_keys,
                    notify,
                };
                let generation = self.group_generation;
                let leave_in_flight =
                    self.groups.get(&group).is_some_and(|g| g.state == GroupCallState::Leaving);
                let mut g =
                    GroupCall::join(&mut ctx!(self), &self.store, params, self.delayed_events, generation);
                g.resend_key_on_join = leave_in_flight;
                // The app already knows who is in the call from observing it.
                g.participants = self.observed.remove(&group).unwrap_or_default();
                self.groups.insert(group.clone(), g);
                self.refresh_group(&group);
                self.cancel_stale_delayed();
                Ok(None)
            }
            Command::LeaveGroupCall { room_id, call_id } => {
                let group = GroupCallId { room_id, call_id };
                let mut ctx = ctx!(self);
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.leave(&mut ctx, &self.store);
                self.reconcile_mesh(&group);
                Ok(None)
            }
            Command::SetGroupMuted { room_id, call_id, audio, video } => {
                let group = GroupCallId { room_id, call_id };
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.mutes = (audio.unwrap_or(g.mutes.0), video.unwrap_or(g.mutes.1));
                let mut ctx = ctx!(self);
                for c in
                    self.calls.values_mut().filter(|c| c.group.as_ref().is_some_and(|l| l.group == group))
                {
                    // A call still being set up takes the state when it attaches its media.
                    if c.cmd_mute(&mut ctx, audio, video).is_err() {
                        c.inherit_mutes(g.mutes);
                    }
                }
                Ok(None)
            }
            Command::SetGroupScreenshare { room_id, call_id, enabled } => {
                let group = GroupCallId { room_id, call_id };
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                g.screenshare = enabled;
                let mut ctx = ctx!(self);
                for c in
                    self.calls.values_mut().filter(|c| c.group.as_ref().is_some_and(|l| l.group == group))
                {
                    // Calls not connected yet get it once they connect (see `handle_media`).
                    let _ = c.cmd_screenshare(&mut ctx, enabled);
                }
                Ok(None)
            }
            Command::RequestEncryptionKeys { room_id, call_id, participants } => {
                let group = GroupCallId { room_id, call_id };
                let mut ctx = ctx!(self);
                let g =
                    self.groups.get_mut(&group).ok_or(ApiMisuse::NotInGroupCall { group: group.clone() })?;
                let from = participants.unwrap_or_else(|| g.participants.iter().cloned().collect());
                if let Some(keys) = g.keys.as_mut() {
                    keys.request_keys(&mut ctx, &from);
                }
                Ok(None)
            }
            Command::SetCanHandleNewCall { value } => {
                self.can_handle_override = value;
                Ok(None)
            }
            Command::Answer { call_id, call_type } => {
                let mut ctx = ctx!(self);
                let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
                call.cmd_answer(&mut ctx, call_type)?;
                Ok(None)
            }
            Command::Reject { call_id, emit } => {
                let mut ctx = ctx!(self);
                let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
                call.cmd_reject(&mut ctx, emit)?;
                Ok(None)
            }
            Command::Hangup { call_id, reason } => {
                self.call_mut(&call_id)?;
                let mut ctx = ctx!(self);
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.hangup(&mut ctx, reason.unwrap_or(EndReason::UserHangup), Initiator::LocalUser);
                }
                Ok(None)
            }
            Command::SetHold { call_id, on_hold } => {
                self.with_call(call_id, |c, ctx| c.cmd_hold(ctx, on_hold))
            }
            Command::SetMuted { call_id, audio, video } => {
                self.with_call(call_id, |c, ctx| c.cmd_mute(ctx, audio, video))
            }
            Command::SetScreenshare { call_id, enabled } => {
                self.with_call(call_id, |c, ctx| c.cmd_screenshare(ctx, enabled))
            }
            Command::RestartIce { call_id } => self.with_call(call_id, |c, ctx| c.cmd_restart_ice(ctx)),
            Command::SendAssertedIdentity { call_id, identity } => self.with_call(call_id, |c, ctx| {
                c.cmd_send(ctx, CallEvent::AssertedIdentity { identity }, "send_asserted_identity")
            }),
            Command::SendReplaces { call_id, replaces } => self.with_call(call_id, |c, ctx| {
                c.cmd_send(ctx, CallEvent::Replaces { replaces }, "send_replaces")
            }),
        }
    }

    fn with_call(
        &mut self,
        call_id: CallId,
        f: impl FnOnce(&mut Call, &mut Ctx<'_>) -> Result<(), ApiMisuse>,
    ) -> Result<Option<CallId>, Error> {
        let mut ctx = ctx!(self);
        let call = self.calls.get_mut(&call_id).ok_or(ApiMisuse::UnknownCall { call_id })?;
        f(call, &mut ctx)?;
        Ok(None)
    }

    fn handle_media(&mut self, call_id: CallId, event: MediaEvent) -> Result<(), Error> {
        let mut ctx = ctx!(self);
        match self.calls.get_mut(&call_id) {
            Some(call) => {
                call.handle_media(&mut ctx, event);
                // Mesh: a peer call that just connected joins the group's screenshare.
                if let Some(g) = call.group.as_ref().and_then(|l| self.groups.get(&l.group)) {
                    if g.screenshare && call.state == CallState::Connected && !call.has_screenshare() {
                        let _ = call.cmd_screenshare(&mut ctx, true);
                    }
                }
                Ok(())
            }
            // Engines report late (candidates, state changes) after Close: not an error.
            None if self.ended.contains(&call_id) => Ok(()),
            None => Err(ApiMisuse::UnknownMediaCall { call_id }.into()),
        }
    }

    fn handle_batch(&mut self, room_events: Vec<RoomEvent>, to_device: Vec<ToDeviceEvent>) {
        // Invites whose call is already answered, rejected or hung up in this same batch never
        // ring (fixes famedly's whole-batch drop: the filter is per call id).
        // Keyed by sender too: only the caller (hangup) or our own user (answered or rejected
        // on another device) can settle a call; a third user's hangup must not silence it.
        let call_id_of = |t: &str, c: &serde_json::Value| {
            matches!(t, types::ANSWER | types::HANGUP | types::REJECT)
                .then(|| c.get("call_id").and_then(|v| v.as_str()).map(str::to_owned))
                .flatten()
        };
        // Only events that may act at all count (cleartext ones where encryption is required
        // do not).
        let settled: BTreeSet<(String, UserId)> = room_events
            .iter()
            .filter(|e| self.room_event_authenticated(e))
            .map(|e| (e.event_type.as_str(), &e.content, &e.sender))
            .chain(
                to_device
                    .iter()
                    .filter(|e| self.to_device_sender(e).is_some())
                    .map(|e| (e.event_type.as_str(), &e.content, &e.sender)),
            )
            .filter_map(|(t, c, sender)| call_id_of(t, c).map(|id| (id, sender.clone())))
            .collect();
        for e in room_events {
            if let Err(err) = self.handle_room_event(e, &settled) {
                tracing::warn!(%err, "call event in sync batch ignored");
            }
        }
        for e in to_device {
            if let Err(err) = self.handle_to_device(e, &settled) {
                tracing::warn!(%err, "to-device call event in sync batch ignored");
            }
        }
    }

    fn handle_room_event(&mut self, e: RoomEvent, settled: &BTreeSet<(String, UserId)>) -> Result<(), Error> {
        let mut e = e;
        e.event_type = wire::normalize_event_type(&e.event_type).into_owned();
        if e.event_type == group::RTC_NOTIFICATION || e.event_type == group::RTC_DECLINE {
            self.handle_rtc_notification(e);
            return Ok(());
        }
        if e.event_type == member::RTC_MEMBER_STICKY {
            // Sticky MatrixRTC membership (MSC4143), keyed by its sticky key; the member it
            // names must be the sender.
            let (Some(key), true) = (
                member::sticky_key(&e.content),
                member::sticky_user(&e.content).is_none_or(|u| u == e.sender.as_str()),
            ) else {
                self.counters.not_from_peer += 1;
                return Ok(());
            };
            let key = format!("{}|{key}", e.sender);
            return self.apply_membership(
                &e.room_id,
                &e.sender,
                &e.event_type,
                &key,
                &e.content,
                e.origin_server_ts,
            );
        }
        if crate::keys::is_key_event_type(&e.event_type) {
            // Element Call's legacy room-event keys are not used; in a call we take part in
            // without media encryption they are counted like to-device ones.
            let call_id = e.content.get("call_id").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
            let group = GroupCallId { room_id: e.room_id.clone(), call_id };
            if self.groups.get(&group).is_some_and(GroupCall::unencrypted_sfu) {
                self.counters.keys_in_unencrypted_calls += 1;
            }
            return Ok(());
        }
        if !wire::is_call_event_type(&e.event_type) {
            return Ok(());
        }
        if !self.room_event_authenticated(&e) {
            self.counters.unauthenticated += 1;
            tracing::warn!(sender = %e.sender, room = %e.room_id, "cleartext call event in an encrypted room refused");
            return Ok(());
        }
        let age = e.age_ms.unwrap_or_else(|| self.now.since(e.origin_server_ts));
        let source = Source {
            room_id: e.room_id,
            sender: &e.sender,
            device: e.sender_device.as_ref(),
            age_ms: Some(age),
            signalling: Signalling::Room,
        };
        Self::dispatch(self, &e.event_type, &e.content, source, settled)
    }

    /// Whether a room call event may be acted on: in a room with `m.room.encryption` it must
    /// have arrived Megolm-encrypted.
    fn room_event_authenticated(&self, e: &RoomEvent) -> bool {
        e.encrypted || !self.encrypted_rooms.contains(&e.room_id)
    }

    /// The sending device of a to-device event as Olm vouches for it: `None` for a cleartext
    /// event (its `device_id` / `sender_device` claims are never believed).
    fn to_device_sender<'e>(&self, e: &'e ToDeviceEvent) -> Option<&'e DeviceId> {
        e.sender_device.as_ref().filter(|_| e.encrypted)
    }

    fn handle_to_device(
        &mut self,
        e: ToDeviceEvent,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        if crate::keys::is_key_event_type(&e.event_type) {
            return self.handle_key_event(e);
        }
        let mut e = e;
        e.event_type = wire::normalize_event_type(&e.event_type).into_owned();
        if !wire::is_call_event_type(&e.event_type) {
            return Ok(());
        }
        // Only Olm proves who sent a to-device message: a cleartext one (or one whose device Olm
        // did not name) never creates, changes or ends a call.
        let Some(device) = self.to_device_sender(&e).cloned() else {
            self.counters.unauthenticated += 1;
            tracing::warn!(sender = %e.sender, r#type = %e.event_type, "unauthenticated to-device call event refused");
            return Ok(());
        };
        let room = e.content.get("room_id").and_then(|r| r.as_str()).filter(|r| !r.is_empty());
        let Some(room) = room else {
            self.counters.malformed += 1;
            return Err(WireError {
                event_type: e.event_type,
                field: "room_id".into(),
                kind: WireErrorKind::Missing,
            }
            .into());
        };
        let source = Source {
            room_id: RoomId::from(room),
            sender: &e.sender,
            device: Some(&device),
            age_ms: None,
            signalling: Signalling::ToDevice,
        };
        Self::dispatch(self, &e.event_type, &e.content, source, settled)
    }

    fn dispatch(
        &mut self,
        event_type: &str,
        content: &serde_json::Value,
        source: Source<'_>,
        settled: &BTreeSet<(String, UserId)>,
    ) -> Result<(), Error> {
        let (common, event) = match wire::parse(event_type, content) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.counters.malformed += 1;
                tracing::warn!(%e, sender = %source.sender, "malformed call event");
                return Err(e.into());
            }
        };
        let call_id = CallId(common.call_id.clone());
        if let Some(call) = self.calls.get_mut(&call_id) {
            if call.room_id != source.room_id || call.signalling != source.signalling {
                self.counters.not_from_peer += 1;
                return Ok(());
            }
            // Mesh: messages for another session of ours are not for this call.
            if let (Some(link), Some(dest)) = (&call.group, &common.to_device.dest_session_id) {
                if *dest != link.local_session {
                    self.counters.not_for_us += 1;
                    return Ok(());
                }
            }
            let sender = Sender { user: source.sender, device: source.device };
            let ready = if source.signalling == Signalling::ToDevice {
                // Only the peer's own messages enter its reordering queue: another sender's
                // `seq` must not move it.
                if !call.is_peer_device(sender) {
                    self.counters.not_from_peer += 1;
                    return Ok(());
                }
                call.reorder.push(common, event)
            } else {
                vec![(common, event)]
            };
            let mut ctx = ctx!(self);
            for (common, event) in ready {
                let d = call.handle_remote(&mut ctx, sender, &common, event, source.age_ms);
                if let Disposition::Ignored(why) = d {
                    tracing::debug!(%call_id, ?why, event_type, "call event ignored");
                }
                self.counters.count(d);
            }
            return Ok(());
        }
        if let Some(peer) = self.ended.peer_of(&call_id) {
            // Late or replayed events of an ended call; an invite is refused only when it
            // comes from the same peer (a spoofed hangup must not block someone else's call).
            if !matches!(event, CallEvent::Invite { .. })
                || peer == source.sender
                || *source.sender == self.local.user_id
            {
                self.counters.duplicates += 1;
                return Ok(());
            }
        }
        match event {
            CallEvent::Invite { offer, lifetime, invitee, invitee_device_id, metadata, capabilities } => {
                let settled_by = |user: &UserId| settled.contains(&(common.call_id.clone(), user.clone()));
                if settled_by(source.sender) || settled_by(&self.local.user_id) {
                    self.counters.duplicates += 1;
                    self.remember_ended(call_id, source.sender.clone());
                    return Ok(());
                }
                let invite =
                    InviteParts { offer, lifetime, invitee, invitee_device_id, metadata, capabilities };
                self.handle_invite(source, common, invite);
            }
            CallEvent::Candidates { candidates } => {
                self.stash_orphan(&source, call_id, common.party_id, candidates);
            }
            CallEvent::Hangup { .. } | CallEvent::Reject { .. } if *source.sender != self.local.user_id => {
                // A hangup for a call we never saw: remember it, so its invite, if it arrives
                // late, does not ring (js-sdk does the same).
                self.counters.duplicates += 1;
                self.remember_ended(call_id, source.sender.clone());
            }
            _ => self.counters.wrong_state += 1,
        }
        Ok(())
    }

    fn remember_ended(&mut self, call_id: CallId, peer: UserId) {
        self.early.forget(&call_id);
        self.ended.remember(call_id, peer, self.now.plus(self.config.ended_call_memory_ms));
    }

    fn stash_orphan(
        &mut self,
        source: &Source<'_>,
        call_id: CallId,
        party: Option<String>,
        cands: Vec<Candidate>,
    ) {
        let expires_at = self.now.plus(self.config.orphan_candidates_ms);
        match self.early.stash(call_id, source.sender, &source.room_id, expires_at, party, cands) {
            Ok(()) => self.counters.applied += 1,
            Err(EarlyRefused::NotFromSender) => self.counters.not_from_peer += 1,
            Err(EarlyRefused::Full) => self.counters.duplicates += 1,
        }
    }

    fn handle_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        if self.gate.is_ignored(source.sender) {
            self.counters.ignored_users += 1;
            return;
        }
        if !self.invite_room_ok(&source) {
            self.counters.not_for_us += 1;
            return;
        }
        if source.signalling == Signalling::ToDevice && common.to_device.conf_id.is_some() {
            self.handle_mesh_invite(source, common, invite);
            return;
        }
        let me = &self.local;
        let sender = source.sender;
        // Addressing: to our user (or everyone), to our device (or all devices).
        let addressed = invite.invitee.as_deref().is_none_or(|i| i == me.user_id.as_str())
            && invite.invitee_device_id.as_deref().is_none_or(|d| d == me.device_id.as_str());
        // Our own user may call us only device-to-device, explicitly addressed, from another device.
        let own_ok = *sender != me.user_id
            || (invite.invitee.as_deref() == Some(me.user_id.as_str())
                && invite.invitee_device_id.as_deref() == Some(me.device_id.as_str())
                && source.device.is_none_or(|d| *d != me.device_id));
        if !addressed || !own_ok {
            self.counters.not_for_us += 1;
            return;
        }
        if source.signalling == Signalling::ToDevice && source.device.is_none() {
            // We could not answer: nobody to address the reply to.
            self.counters.malformed += 1;
            return;
        }
        let lifetime = incoming::lifetime(invite.lifetime, &self.config);
        let remaining = lifetime.saturating_sub(source.age_ms.unwrap_or(0));
        if remaining <= self.config.ring_grace_ms {
            self.counters.expired += 1;
            return;
        }
        let call_id = CallId(common.call_id.clone());
        if !self.gate.admit_new_call(self.now, sender, &call_id, self.config.max_new_calls_per_minute) {
            self.counters.rate_limited += 1;
            return;
        }
        let glare_with = self
            .calls
            .values()
            .find(|c| {
                c.direction == CallDirection::Outgoing
                    && c.room_id == source.room_id
                    && c.peer_user == *sender
                    && c.signalling == source.signalling
                    && matches!(c.state, CallState::CreateOffer | CallState::InviteSent)
            })
            .map(|c| (c.id.clone(), c.state == CallState::InviteSent, c.offered_type, c.mutes()));
        // One live call per pair: a new invite from the same peer in the same room supersedes an
        // older call that is not in glare (the peer must have dropped it; its hangup was lost).
        let superseded: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| {
                c.room_id == source.room_id
                    && c.peer_user == *sender
                    && !matches!(c.state, CallState::CreateOffer | CallState::InviteSent)
            })
            .map(|c| c.id.clone())
            .collect();
        let mut ctx = ctx!(self);
        for id in superseded {
            if let Some(c) = self.calls.get_mut(&id) {
                let missed = c.state == CallState::Ringing;
                c.end(&mut ctx, EndReason::Replaced, Initiator::Remote, missed);
            }
        }
        let mut replaced: Option<(CallId, CallType, (bool, bool))> = None;
        let awaited = if glare_with.is_none() && source.signalling == Signalling::Room {
            self.awaited.take(&source.room_id, sender, ctx.now)
        } else {
            None
        };
        if let Some(a) = awaited {
            // Glare whose other invite lagged behind its hangup of ours: this is the replacement.
            tracing::debug!(ours = %a.old, incoming = %call_id, "the callee's invite replaces our call");
            replaced = Some((a.old, a.call_type, a.mutes));
        } else if let Some((ours, invite_sent, our_type, mutes)) = glare_with {
            match glare::resolve(ours.as_str(), call_id.as_str(), invite_sent) {
                glare::GlareOutcome::OursWins => {
                    tracing::debug!(%ours, incoming = %call_id, "glare: our call wins");
                    Call::refuse(
                        &mut ctx,
                        &call_id,
                        &source.room_id,
                        (sender, source.device),
                        source.signalling,
                        CallEvent::Hangup { reason: Some(EndReason::Replaced.wire_reason().to_owned()) },
                        None,
                    );
                    self.counters.applied += 1;
                    self.remember_ended(call_id, sender.clone());
                    return;
                }
                glare::GlareOutcome::IncomingWins | glare::GlareOutcome::ReplaceOurs => {
                    tracing::debug!(%ours, incoming = %call_id, "glare: the incoming call replaces ours");
                    if let Some(c) = self.calls.get_mut(&ours) {
                        c.hangup(&mut ctx, EndReason::Replaced, Initiator::Library);
                    }
                    replaced = Some((ours, our_type, mutes));
                }
            }
        } else if !self
            .can_handle_override
            .unwrap_or_else(|| !(self.config.busy_when_in_call && self.calls.values().any(Call::is_engaged)))
        {
            // One busy reply (and one missed-call event) per caller per window.
            if self.gate.busy_reply_allowed(ctx.now, sender) {
                let refusal = match (self.config.busy_signal, common.version) {
                    (BusySignal::Reject, CallVersion::V1) => {
                        CallEvent::Reject { reason: Some(EndReason::UserBusy.wire_reason().to_owned()) }
                    }
                    _ => CallEvent::Hangup { reason: Some(EndReason::UserBusy.wire_reason().to_owned()) },
                };
                Call::refuse(
                    &mut ctx,
                    &call_id,
                    &source.room_id,
                    (sender, source.device),
                    source.signalling,
                    refusal,
                    None,
                );
                ctx.emit(Event::MissedCall {
                    call_id: call_id.clone(),
                    room_id: source.room_id.clone(),
                    caller: sender.clone(),
                    reason: EndReason::UserBusy,
                });
            }
            self.counters.busy += 1;
            self.remember_ended(call_id, sender.clone());
            return;
        }
        let incoming = Incoming {
            id: call_id.clone(),
            room_id: source.room_id.clone(),
            caller: sender.clone(),
            caller_device: source.device.cloned(),
            caller_party: common.party_id.map(PartyId),
            version: common.version,
            capabilities: invite.capabilities,
            offer: invite.offer,
            metadata: invite.metadata,
            signalling: source.signalling,
            expires_at: self.now.plus(remaining),
        };
        let mut call = Call::incoming(&mut ctx, incoming);
        if let (Signalling::ToDevice, Some(seq)) = (source.signalling, common.to_device.seq) {
            // The caller's next message is the one after its invite.
            call.reorder.start_after(seq);
        }
        if let Some((old, our_type, mutes)) = replaced {
            // The user's choices move to the surviving call (spec: one seamless call).
            call.inherit_mutes(mutes);
            ctx.emit(Event::CallReplaced { old_call_id: old, new_call_id: call_id.clone() });
            if self.config.glare == GlareBehaviour::AutoAnswer {
                call.auto_answer = Some(our_type);
            }
        }
        // Candidates that arrived before the invite.
        if let Some(early) = self.early.take(&call_id, sender, &source.room_id) {
            for (party, cands) in early.by_party {
                call.candidate_input(&mut ctx, party.as_deref(), cands);
            }
        }
        call.ring_or_auto_answer(&mut ctx);
        self.counters.applied += 1;
        self.calls.insert(call_id, call);
    }

    /// Whether an invite's room allows it to ring: never for a room we have left; for a
    /// to-device invite (which names its room itself) only when we and the sender are both
    /// known to be joined to it. A room invite's sender must not be known to have left.
    fn invite_room_ok(&self, source: &Source<'_>) -> bool {
        let me = self.membership_of(&source.room_id, &self.local.user_id);
        let sender = self.membership_of(&source.room_id, source.sender);
        match source.signalling {
            Signalling::ToDevice => me == Some(Membership::Join) && sender == Some(Membership::Join),
            Signalling::Room => {
                me.is_none_or(|m| m == Membership::Join) && sender.is_none_or(|m| m == Membership::Join)
            }
        }
    }

    /// Mesh: one call per present member device. Calls to devices that left, or whose
    /// `membershipID` changed (a new session: the old call is stale), end at once; the lower
    /// `userId:deviceId` of each pair places any call that is missing.
    fn reconcile_mesh(&mut self, group: &GroupCallId) {
        let (participants, member_id, mesh, mutes) = match self.groups.get(group) {
            Some(g) if g.state == GroupCallState::Joined || g.state == GroupCallState::Joining => (
                g.participants.clone(),
                g.member_id.clone(),
                g.focus == crate::wire::member::Focus::Mesh,
                g.mutes,
            ),
            _ => (BTreeSet::new(), String::new(), true, (false, false)),
        };
        if !mesh {
            return;
        }
        let mut ctx = ctx!(self);
        let mut covered = BTreeSet::new();
        for call in self.calls.values_mut() {
            let Some(link) = call.group.as_ref().filter(|l| l.group == *group) else { continue };
            let peer = participants
                .iter()
                .find(|p| p.user_id == call.peer_user && Some(&p.device_id) == call.peer_device.as_ref());
            match peer {
                Some(p) if p.member_id == link.remote_session => {
                    covered.insert((p.user_id.clone(), p.device_id.clone()));
                }
                Some(_) => call.hangup(&mut ctx, EndReason::Replaced, Initiator::Library),
                None => call.hangup(&mut ctx, EndReason::UserHangup, Initiator::Library),
            }
        }
        // Attempt counts only for the group's current member devices.
        self.mesh_attempts.retain(|(g, user, device), _| {
            g != group || participants.iter().any(|p| p.user_id == *user && p.device_id == *device)
        });
        let mut new_calls = Vec::new();
        for p in &participants {
            if covered.contains(&(p.user_id.clone(), p.device_id.clone()))
                || !group::mesh::we_initiate(ctx.local, p)
                || self.gate.is_ignored(&p.user_id)
            {
                continue;
            }
            let (session, attempts) = self
                .mesh_attempts
                .entry((group.clone(), p.user_id.clone(), p.device_id.clone()))
                .or_insert_with(|| (p.member_id.clone(), 0));
            if *session != p.member_id {
                // A new session of that device: a fresh count.
                *session = p.member_id.clone();
                *attempts = 0;
            }
            if *attempts >= MESH_MAX_ATTEMPTS {
                continue;
            }
            *attempts += 1;
            let id = CallId(format!("{}{}", ctx.now.0, ctx.rng.alnum(16)));
            let params = Outgoing {
                id: id.clone(),
                room_id: group.room_id.clone(),
                invitee: p.user_id.clone(),
                invitee_device: Some(p.device_id.clone()),
                call_type: CallType::Video,
                signalling: Signalling::ToDevice,
                mutes,
                group: Some(GroupLink {
                    group: group.clone(),
                    local_session: member_id.clone(),
                    remote_session: p.member_id.clone(),
                }),
            };
            new_calls.push((id, Call::outgoing(&mut ctx, params)));
        }
        self.calls.extend(new_calls);
        self.collect_ended();
    }

    /// MSC4075 ring/notify and MSC4310 decline: surfaced to the app while valid.
    fn handle_rtc_notification(&mut self, e: RoomEvent) {
        if e.sender == self.local.user_id && e.event_type == group::RTC_NOTIFICATION {
            self.counters.echoes += 1;
            return;
        }
        let c = &e.content;
        if e.event_type == group::RTC_DECLINE {
            let Some(notification) =
                c.get("m.relates_to").and_then(|r| r.get("event_id")).and_then(|v| v.as_str())
            else {
                self.counters.malformed += 1;
                return;
            };
            self.counters.applied += 1;
            self.out.push_back(Output::Event(Event::GroupCallDeclined {
                room_id: e.room_id,
                sender: e.sender,
                notification_event_id: notification.to_owned(),
            }));
            return;
        }
        let ring = match c.get("notification_type").and_then(|v| v.as_str()) {
            Some("ring") => group::NotificationType::Ring,
            Some("notification") => group::NotificationType::Notification,
            _ => {
                self.counters.malformed += 1;
                return;
            }
        };
        // The sender's clock is trusted only within 20 s of the server's (famedly's rule);
        // the lifetime is capped at 90 s (js-sdk).
        let origin = e.origin_server_ts;
        let sent = c
            .get("sender_ts")
            .and_then(|v| v.as_u64())
            .map(Timestamp)
            .filter(|t| t.0.abs_diff(origin.0) <= 20_000)
            .unwrap_or(origin);
        let lifetime = c.get("lifetime").and_then(|v| v.as_u64()).unwrap_or(30_000).min(90_000);
        let expires_at = sent.plus(lifetime);
        if expires_at <= self.now {
            self.counters.expired += 1;
            return;
        }
        let mentioned = c.get("m.mentions").is_some_and(|m| {
            m.get("room").and_then(|r| r.as_bool()) == Some(true)
                || m.get("user_ids")
                    .and_then(|u| u.as_array())
                    .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(self.local.user_id.as_str())))
        });
        if !mentioned {
            self.counters.not_for_us += 1;
            return;
        }
        self.counters.applied += 1;
        self.out.push_back(Output::Event(Event::GroupCallNotification {
            room_id: e.room_id,
            sender: e.sender,
            event_id: e.event_id,
            notification_type: ring,
            expires_at,
        }));
    }

    /// A media-key (or key request) to-device event: to the key manager of its group call.
    fn handle_key_event(&mut self, e: ToDeviceEvent) -> Result<(), Error> {
        let group = crate::keys::key_event_group(&e.event_type, &e.content);
        let mut ctx = ctx!(self);
        let joined = group.and_then(|g| self.groups.get_mut(&g));
        if joined.as_ref().is_some_and(|g| g.unencrypted_sfu()) {
            // A call without media encryption: keys are not used (nor key requests answered).
            tracing::debug!(sender = %e.sender, "media key for an unencrypted call ignored");
            self.counters.keys_in_unencrypted_calls += 1;
            return Ok(());
        }
        let Some(keys) = joined.and_then(|g| g.keys.as_mut()) else {
            self.counters.not_for_us += 1;
            return Ok(());
        };
        match keys.handle_to_device(
            &mut ctx,
            &e.sender,
            e.sender_device.as_ref(),
            e.encrypted,
            &e.event_type,
            &e.content,
        ) {
            Ok(crate::keys::KeyDisposition::Ignored(why)) => {
                tracing::debug!(?why, sender = %e.sender, "media key ignored");
                self.counters.not_from_peer += 1;
                Ok(())
            }
            Ok(_) => {
                self.counters.applied += 1;
                Ok(())
            }
            Err(err) => {
                self.counters.malformed += 1;
                Err(err.into())
            }
        }
    }

    /// Re-evaluates mesh invites that waited for their sender's membership.
    fn retry_pending_mesh(&mut self, group: &GroupCallId) {
        self.pending_mesh.expire(self.now);
        let ready = self.pending_mesh.take_where_until(|_, _, p| p.room_id == group.room_id);
        for (_, sender, mut p, until) in ready {
            // What is left of its lifetime (so that waiting again never extends it).
            p.invite.lifetime = Some(until.since(self.now));
            let source = Source {
                room_id: p.room_id.clone(),
                sender: &sender,
                device: Some(&p.device),
                age_ms: None,
                signalling: Signalling::ToDevice,
            };
            let call_id = CallId(p.common.call_id.clone());
            if !self.calls.contains_key(&call_id) && !self.ended.contains(&call_id) {
                self.handle_mesh_invite(source, p.common, p.invite);
            }
        }
    }

    /// A mesh invite (to-device with `conf_id`): answered automatically when it is for a group
    /// call we are in, addressed to our session, and from the sender's current session.
    fn handle_mesh_invite(&mut self, source: Source<'_>, common: Common, invite: InviteParts) {
        let group = GroupCallId {
            room_id: source.room_id.clone(),
            call_id: common.to_device.conf_id.clone().unwrap_or_default(),
        };
        let Some(device) = source.device else {
            self.counters.malformed += 1;
            return;
        };
        let Some(g) = self
            .groups
            .get(&group)
            .filter(|g| matches!(g.state, GroupCallState::Joined | GroupCallState::Joining))
        else {
            // Not in that group call: refuse, so the caller does not wait (MSC3401).
            let mut ctx = ctx!(self);
            let call_id = CallId(common.call_id.clone());
            Call::refuse(
                &mut ctx,
                &call_id,
                &source.room_id,
                (source.sender, Some(device)),
                Signalling::ToDevice,
                CallEvent::Reject { reason: None }, // The group fields let the caller route the refusal (js-sdk and famedly drop
                // to-device call events without them).
                Some(GroupLink {
                    group: group.clone(),
                    local_session: String::new(),
                    remote_session: common.to_device.sender_session_id.clone().unwrap_or_default(),
                }),
            );
            self.counters.not_for_us += 1;
            return;
        };
        let member =
            g.participants.iter().find(|p| p.user_id == *source.sender && p.device_id == *device).cloned();
        let our_session = g.member_id.clone();
        let sessions_ok = common.to_device.dest_session_id.as_deref().is_none_or(|d| d == our_session)
            && member.as_ref().is_some_and(|m| {
                common.to_device.sender_session_id.as_deref().is_none_or(|s| s == m.member_id)
            });
        let for_us = common.to_device.dest_session_id.as_deref().is_none_or(|d| d == our_session);
        let Some(member) = member.filter(|_| sessions_ok) else {
            if for_us {
                // Addressed to us, but we have not seen the sender's (new) membership yet: the
                // invite may simply have overtaken it. Keep it until the membership arrives
                // (bounded per sender).
                let call_id = CallId(common.call_id.clone());
                let pending = PendingMeshInvite {
                    room_id: source.room_id.clone(),
                    device: device.clone(),
                    common,
                    invite,
                };
                // It waits as long as it may ring: the membership can be late (a partition).
                let until = self.now.plus(incoming::lifetime(pending.invite.lifetime, &self.config));
                self.pending_mesh.insert(call_id, source.sender.clone(), until, pending);
            } else {
                self.counters.not_for_us += 1;
            }
            return;
        };
        let call_id = CallId(common.call_id.clone());
        if !self.gate.admit_new_call(self.now, source.sender, &call_id, self.config.max_new_calls_per_minute)
        {
            self.counters.rate_limited += 1;
            return;
        }
        let mut ctx = ctx!(self);
        // A call with this device already exists (it restarted, or both sides called): the
        // new invite replaces it.
        for c in self.calls.values_mut() {
            if c.group.as_ref().is_some_and(|l| l.group == group)
                && c.peer_user == member.user_id
                && c.peer_device.as_ref() == Some(&member.device_id)
            {
                c.hangup(&mut ctx, EndReason::Replaced, Initiator::Library);
            }
        }
        let incoming = Incoming {
            id: call_id.clone(),
            room_id: source.room_id.clone(),
            caller: source.sender.clone(),
            caller_device: Some(device.clone()),
            caller_party: common.party_id.map(PartyId),
            version: common.version,
            capabilities: invite.capabilities,
            offer: invite.offer,
            metadata: invite.metadata,
            signalling: Signalling::ToDevice,
            expires_at: self.now.plus(incoming::lifetime(invite.lifetime, &self.config)),
        };
        let mut call = Call::incoming(&mut ctx, incoming);
        call.group = Some(GroupLink { group, local_session: our_session, remote_session: member.member_id });
        if let Some(seq) = common.to_device.seq {
            call.reorder.start_after(seq);
        }
        if let Some(early) = self.early.take(&call_id, source.sender, &source.room_id) {
            for (party, cands) in early.by_party {
                call.candidate_input(&mut ctx, party.as_deref(), cands);
            }
        }
        call.auto_answer = Some(CallType::Video);
        if let Some(g) = self.groups.get(&call.group.as_ref().expect("set above").group) {
            call.inherit_mutes(g.mutes);
        }
        call.ring_or_auto_answer(&mut ctx);
        self.counters.applied += 1;
        self.calls.insert(call_id, call);
        self.collect_ended();
    }

    fn handle_member(&mut self, m: RoomMember) {
        let left = !matches!(m.membership, Membership::Join | Membership::Invite);
        let was_joined = self.membership_of(&m.room_id, &m.user_id).is_none_or(|x| x == Membership::Join);
        self.members.entry(m.room_id.clone()).or_default().insert(m.user_id.clone(), m.membership);
        if was_joined != (m.membership == Membership::Join) {
            // Only the user's own memberships can change (a user without any: nothing to do).
            for (g, devices) in self.store.of_user(&m.room_id, &m.user_id) {
                self.memberships_changed(g, devices);
            }
        }
        if !left {
            return;
        }
        let mut ctx = ctx!(self);
        for call in self.calls.values_mut().filter(|c| c.room_id == m.room_id) {
            if m.user_id == self.local.user_id {
                // We left: nothing can be sent to the room any more.
                call.end(&mut ctx, EndReason::UserHangup, Initiator::LocalUser, false);
            } else if call.peer_user == m.user_id {
                let missed = call.direction == CallDirection::Incoming && call.state == CallState::Ringing;
                let reason = if call.state == CallState::InviteSent {
                    EndReason::Rejected
                } else {
                    EndReason::PeerLeftRoom
                };
                call.end(&mut ctx, reason, Initiator::Remote, missed);
            }
        }
    }

    /// A user's `m.room.member` membership of a room, when we have seen it.
    fn membership_of(&self, room: &RoomId, user: &UserId) -> Option<Membership> {
        self.members.get(room).and_then(|m| m.get(user)).copied()
    }

    fn joined_fn(&self, room: &RoomId) -> impl Fn(&UserId) -> bool + '_ {
        let members = self.members.get(room);
        move |u: &UserId| members.and_then(|m| m.get(u)).is_none_or(|m| *m == Membership::Join)
    }

    /// A membership state event.
    fn handle_state_event(&mut self, e: crate::input::StateEvent) -> Result<(), Error> {
        if e.event_type == "m.room.encryption" && e.state_key.is_empty() {
            // Encryption cannot be turned off again; any content with an algorithm counts.
            if e.content.get("algorithm").and_then(|a| a.as_str()).is_some_and(|a| !a.is_empty())
                && self.encrypted_rooms.insert(e.room_id.clone())
            {
                // Calls here that went without media encryption because the room seemed
                // unencrypted get per-participant keys now.
                let upgraded: Vec<GroupCallId> = self
                    .groups
                    .values_mut()
                    .filter(|g| g.id.room_id == e.room_id)
                    .filter_map(|g| g.room_encrypted(&mut ctx!(self)).then(|| g.id.clone()))
                    .collect();
                for g in upgraded {
                    self.refresh_group(&g);
                }
            }
            return Ok(());
        }
        if !matches!(e.event_type.as_str(), member::FAMEDLY_MEMBER | member::RTC_MEMBER) {
            return Ok(());
        }
        self.apply_membership(
            &e.room_id,
            &e.sender,
            &e.event_type,
            &e.state_key,
            &e.content,
            e.origin_server_ts,
        )
    }

    fn apply_membership(
        &mut self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        key: &str,
        content: &serde_json::Value,
        origin_ts: Timestamp,
    ) -> Result<(), Error> {
        // A membership counts only under a state key its sender owns. A write at another user's
        // key (possible in room versions without owned state keys, for senders with enough
        // power, or from a lying homeserver) is counted and announces nothing; the key's
        // previous membership is gone all the same, as it is from the room state every client
        // reads (js-sdk treats such a `{}` as that member leaving; so do we, see
        // docs/security.md). In particular a famedly list written at our own key by someone
        // else is never read back and republished as ours.
        let empty;
        let content = if member::state_key_owned_by(event_type, key, sender.as_str()) {
            content
        } else {
            self.counters.foreign_state_keys += 1;
            tracing::warn!(%sender, key, event_type, "membership at a state key the sender does not own");
            empty = member::empty_content(event_type);
            &empty
        };
        // In an `Input::RoomState`, the changes go straight into the batch's (looked at once, at
        // the end); otherwise into this event's own.
        let batch = self.deferred.is_some();
        let mut changed = self.deferred.take().unwrap_or_default();
        let applied =
            self.store.apply_into(room, sender, event_type, key, content, origin_ts, self.now, &mut changed);
        if batch {
            self.deferred = Some(changed);
        } else {
            for (g, devices) in changed {
                self.refresh_devices(&g, Some(&devices));
            }
        }
        match applied {
            Ok(true) => {
                self.counters.applied += 1;
                Ok(())
            }
            Ok(false) => {
                self.counters.memberships_over_limit += 1;
                tracing::warn!(%sender, "membership refused: its sender holds too many (or too many sticky ones)");
                Ok(())
            }
            Err(e) => {
                self.counters.malformed += 1;
                tracing::warn!(%e, %sender, "malformed membership event");
                Err(e.into())
            }
        }
    }

    /// Many memberships at once: each group's changes looked at once, at the end.
    fn handle_room_state(&mut self, members: Vec<RoomMember>, state: Vec<crate::input::StateEvent>) {
        self.deferred = Some(membership::Changes::new());
        for m in members {
            self.handle_member(m);
        }
        for e in state {
            if let Err(err) = self.handle_state_event(e) {
                tracing::warn!(%err, "state event in a room state batch ignored");
            }
        }
        for (g, devices) in self.deferred.take().unwrap_or_default() {
            self.refresh_devices(&g, Some(&devices));
        }
    }

    /// Some devices' memberships of a group may have changed: look at them now, or at the end
    /// of the [`Input::RoomState`] being applied.
    fn memberships_changed(&mut self, group: GroupCallId, devices: BTreeSet<Device>) {
        match self.deferred.as_mut() {
            Some(d) => d.entry(group).or_default().extend(devices),
            None => self.refresh_devices(&group, Some(&devices)),
        }
    }

    /// Recomputes a group's members and reports changes.
    fn refresh_group(&mut self, group: &GroupCallId) {
        self.refresh_devices(group, None);
    }

    /// Recomputes the memberships of some devices of a group (`None`: all of them) and reports
    /// changes: the work is proportional to the devices, not to the call.
    fn refresh_devices(&mut self, group: &GroupCallId, devices: Option<&BTreeSet<Device>>) {
        let room_members = self.members.get(&group.room_id);
        let joined =
            move |u: &UserId| room_members.and_then(|m| m.get(u)).is_none_or(|m| *m == Membership::Join);
        if let Some(g) = self.groups.get_mut(group) {
            let mut ctx = ctx!(self);
            g.on_members(&mut ctx, &self.store, &joined, devices);
            // `reconcile_mesh` does nothing for a joined or joining SFU call.
            let sfu = g.focus != crate::wire::member::Focus::Mesh
                && matches!(g.state, GroupCallState::Joined | GroupCallState::Joining);
            if !sfu {
                self.reconcile_mesh(group);
            }
            self.retry_pending_mesh(group);
            return;
        }
        let me = (&self.local.user_id, &self.local.device_id);
        let before = self.observed.get(group);
        let all: BTreeSet<Device>;
        let devices = match devices {
            Some(d) => d,
            None => {
                all = self
                    .store
                    .devices(group)
                    .cloned()
                    .chain(before.into_iter().flatten().map(membership::device))
                    .collect();
                &all
            }
        };
        let mut joined_now = BTreeSet::new();
        let mut left_now = BTreeSet::new();
        for d in devices {
            // Observed calls: memberships of call applications only (`m.call`, and famedly's
            // `m.call.audio` / `m.call.video`), not other MatrixRTC applications sharing the slot.
            let new = Some(d)
                .filter(|d| (&d.0, &d.1) != me)
                .and_then(|d| self.store.device_member(group, d, self.now, None, joined))
                .filter(|m| m.application == "m.call" || m.application.starts_with("m.call."))
                .map(|m| m.participant.clone());
            for p in before.into_iter().flat_map(|b| membership::of_device(b, d)) {
                if Some(p) != new.as_ref() {
                    left_now.insert(p.clone());
                }
            }
            if let Some(p) = new.filter(|p| !before.is_some_and(|b| b.contains(p))) {
                joined_now.insert(p);
            }
        }
        if joined_now.is_empty() && left_now.is_empty() {
            return;
        }
        let set = self.observed.entry(group.clone()).or_default();
        for p in &left_now {
            set.remove(p);
        }
        set.extend(joined_now.iter().cloned());
        let count = set.len();
        if set.is_empty() {
            self.observed.remove(group);
        }
        self.out.push_back(Output::Event(Event::ParticipantsChanged {
            group: group.clone(),
            joined: joined_now.into_iter().collect(),
            left: left_now.into_iter().collect(),
            count,
        }));
    }

    fn group_sent(&mut self, group: &GroupCallId, generation: u64, op: GroupOp, sent: group::Sent) {
        let mut ctx = ctx!(self);
        if let Some(g) = self.groups.get_mut(group).filter(|g| g.generation == generation) {
            g.on_sent(&mut ctx, &self.store, op, sent);
        }
        self.collect_left_groups();
        if op == GroupOp::ScheduleLeave {
            self.cancel_stale_delayed();
        }
    }

    fn group_failed(
        &mut self,
        group: &GroupCallId,
        generation: u64,
        op: GroupOp,
        errcode: Option<&str>,
        max_delay_ms: Option<u64>,
    ) {
        let mut ctx = ctx!(self);
        if let Some(g) = self.groups.get_mut(group).filter(|g| g.generation == generation) {
            g.on_failed(&mut ctx, &self.store, op, errcode, max_delay_ms);
        }
        self.collect_left_groups();
        if op == GroupOp::ScheduleLeave {
            self.cancel_stale_delayed();
        }
    }

    /// The media encryption a join gets when the app does not choose (see
    /// [`crate::MediaEncryption`]): per-participant keys in a room with `m.room.encryption` or
    /// one we know nothing about, none in a room whose members we know and that has no
    /// `m.room.encryption`.
    fn room_encryption(&self, room: &RoomId) -> crate::group::MediaEncryption {
        if !self.encrypted_rooms.contains(room) && self.members.contains_key(room) {
            crate::group::MediaEncryption::None
        } else {
            crate::group::MediaEncryption::PerParticipantKeys
        }
    }

    /// The start-up listing of our delayed events arrived: keep the membership leaves at our
    /// own state keys that no join of this process scheduled, until they have fired for sure,
    /// and cancel those that would remove a current join.
    fn delayed_listed(&mut self, listed: Vec<crate::input::ScheduledDelayedEvent>) {
        self.delayed_listing = DelayedListing::Done;
        let user = self.local.user_id.as_str();
        let ours: BTreeSet<&str> = self.groups.values().filter_map(GroupCall::delay_id).collect();
        let mut stale: Vec<StaleDelayed> = listed
            .into_iter()
            .filter(|e| matches!(e.event_type.as_str(), member::FAMEDLY_MEMBER | member::RTC_MEMBER))
            .filter(|e| {
                e.state_key.as_deref().is_some_and(|k| member::state_key_owned_by(&e.event_type, k, user))
            })
            .filter(|e| !ours.contains(e.delay_id.as_str()))
            .map(|e| {
                // It fires at the latest a whole delay after now (it was running already); without
                // a delay, after the longest delay we would use ourselves.
                let delay = e
                    .delay_ms
                    .unwrap_or(self.config.rtc_delayed_leave_ms.max(self.config.famedly_delayed_leave_ms));
                StaleDelayed { until: self.now.plus(delay), event: e }
            })
            .collect();
        stale.truncate(MAX_STALE_DELAYED);
        tracing::info!(count = stale.len(), "delayed leaves left behind by an earlier process");
        self.stale_delayed = stale;
        self.cancel_stale_delayed();
    }

    /// Cancels the remembered stale delayed leaves that would remove a current join: those at
    /// the state key a joining or joined group writes, once that group's own delayed leave is
    /// scheduled (or failed), so that the listing is never mistaken for ours. Never one a current
    /// join scheduled. famedly writes one list per user (its state key is the user id): a delayed
    /// famedly leave is cancelled only if it removes this device (its list has no entry of ours)
    /// and is no other device's (it keeps every other device of ours still in the call; a
    /// device's own leave drops that device's entry).
    fn cancel_stale_delayed(&mut self) {
        if self.stale_delayed.is_empty() {
            return;
        }
        let now = self.now;
        self.stale_delayed.retain(|s| s.until > now);
        let owned: BTreeSet<String> =
            self.groups.values().filter_map(GroupCall::delay_id).map(str::to_owned).collect();
        let mut cancel: Vec<String> = Vec::new();
        for g in self.groups.values() {
            if !matches!(g.state, GroupCallState::Joining | GroupCallState::Joined) {
                continue;
            }
            let key = g.membership_key(&self.local);
            // A delayed leave of ours for this key on its way: the listing may already hold it.
            let in_flight =
                self.groups.values().any(|h| h.scheduling() && h.membership_key(&self.local) == key);
            if in_flight {
                continue;
            }
            for s in &self.stale_delayed {
                let e = &s.event;
                if (&e.room_id, e.event_type.as_str(), e.state_key.as_deref())
                    != (&key.0, key.1, Some(key.2.as_str()))
                    || owned.contains(&e.delay_id)
                    || cancel.contains(&e.delay_id)
                {
                    continue;
                }
                if e.event_type == member::FAMEDLY_MEMBER
                    && !self.famedly_leave_is_ours(&e.room_id, &key.2, &e.content)
                {
                    continue;
                }
                cancel.push(e.delay_id.clone());
            }
        }
        if cancel.is_empty() {
            return;
        }
        self.stale_delayed.retain(|s| !cancel.contains(&s.event.delay_id));
        for delay_id in cancel {
            tracing::info!(%delay_id, "cancelling a delayed leave left behind by an earlier process");
            self.counters.stale_delayed_leaves_cancelled += 1;
            self.sends.send(
                &mut self.out,
                None,
                crate::sends::SendPurpose::Other,
                "voip.group",
                crate::output::SendKind::UpdateDelayedEvent {
                    delay_id,
                    action: crate::output::DelayedAction::Cancel,
                },
            );
        }
    }

    /// Whether a delayed famedly list (at our user's key) is a leave of this device: it has no
    /// entry of ours, and has an entry for every other device of ours that is in a call in the
    /// room now (a leave of one of those would lack that device's entry).
    fn famedly_leave_is_ours(&self, room: &RoomId, key: &str, content: &serde_json::Value) -> bool {
        let devices = |v: &serde_json::Value, live_only: bool| -> BTreeSet<String> {
            v.get("memberships")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter(|e| {
                    !live_only || e.get("expires_ts").and_then(|t| t.as_u64()).is_some_and(|t| t > self.now.0)
                })
                .filter_map(|e| e.get("device_id").and_then(|d| d.as_str()).map(str::to_owned))
                .collect()
        };
        let in_leave = devices(content, false);
        let mut others = devices(&self.store.raw_famedly(room, key), true);
        others.remove(self.local.device_id.as_str());
        !in_leave.contains(self.local.device_id.as_str()) && others.is_subset(&in_leave)
    }

    fn collect_left_groups(&mut self) {
        let left: Vec<GroupCallId> =
            self.groups.values().filter(|g| g.state == GroupCallState::Left).map(|g| g.id.clone()).collect();
        for id in left {
            self.groups.remove(&id);
            // We only observe it now: report who is still in it.
            self.refresh_group(&id);
        }
    }

    /// The media keys of an SFU group call we are in: ours in use, and the latest of every
    /// current member (keys as standard padded base64). `None` if we are not in it or it is a
    /// mesh call.
    pub fn media_keys(&self, group: &GroupCallId) -> Option<MediaKeys> {
        let keys = self.groups.get(group)?.keys.as_ref()?;
        let b64 = |k: &[u8]| crate::wire::keys::encode_key(k);
        Some(MediaKeys {
            local: keys.local_key().map(|(i, k)| (i, b64(&k))),
            remote: keys.current_keys().into_iter().map(|(p, i, k)| (p, i, b64(&k))).collect(),
        })
    }

    /// Our own participant in a group call we have joined (user, device and the membership id
    /// we announced): what a LiveKit JWT request and our own media key are keyed by. `None` if we
    /// are not in it.
    pub fn local_participant(&self, group: &GroupCallId) -> Option<crate::ids::Participant> {
        let g = self.groups.get(group)?;
        Some(crate::ids::Participant {
            user_id: self.local.user_id.clone(),
            device_id: self.local.device_id.clone(),
            member_id: g.member_id.clone(),
        })
    }

    /// The participants of a group call as reported so far by [`Event::ParticipantsChanged`]
    /// (joined or only observed; our own device is never listed), ordered by user, device and
    /// membership id. Empty for a call nobody is in.
    pub fn participants(&self, group: &GroupCallId) -> Vec<crate::ids::Participant> {
        let set = match self.groups.get(group) {
            Some(g) => Some(&g.participants),
            None => self.observed.get(group),
        };
        set.into_iter().flatten().cloned().collect()
    }

    /// A snapshot of a group call (joined or only observed).
    pub fn group_call(&self, group: &GroupCallId) -> GroupCallInfo {
        let me = (&self.local.user_id, &self.local.device_id);
        let joined_group = self.groups.get(group);
        let dialect = joined_group.map(|g| g.dialect);
        let members: Vec<_> = self
            .store
            .members(group, self.now, dialect, self.joined_fn(&group.room_id))
            .into_iter()
            .filter(|m| (&m.participant.user_id, &m.participant.device_id) != me)
            .filter(|m| joined_group.is_none_or(|g| g.accepts(m)))
            .collect();
        let streams = members
            .iter()
            .filter_map(|m| {
                let call = self.calls.values().find(|c| {
                    c.group.as_ref().is_some_and(|l| l.group == *group)
                        && c.peer_user == m.participant.user_id
                        && c.peer_device.as_ref() == Some(&m.participant.device_id)
                })?;
                Some((m.participant.clone(), call.info().remote_streams))
            })
            .collect();
        GroupCallInfo {
            group: group.clone(),
            state: self.groups.get(group).map(|g| g.state),
            transports: group::focus::transports(&members),
            members,
            streams,
            encryption: joined_group
                .filter(|g| g.focus != crate::wire::member::Focus::Mesh)
                .map(|g| g.encryption),
        }
    }

    fn fire_timers(&mut self) {
        self.sends.fire(self.now, &mut self.out);
        let due: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.next_timer().is_some_and(|(at, _)| at <= self.now))
            .map(|c| c.id.clone())
            .collect();
        for id in due {
            let mut ctx = ctx!(self);
            if let Some(call) = self.calls.get_mut(&id) {
                call.handle_timeout(&mut ctx);
            }
        }
        let due_groups: Vec<GroupCallId> = self
            .groups
            .values()
            .filter(|g| g.next_timer().is_some_and(|at| at <= self.now))
            .map(|g| g.id.clone())
            .collect();
        for id in due_groups {
            let mut ctx = ctx!(self);
            if let Some(g) = self.groups.get_mut(&id) {
                g.handle_timeout(&mut ctx, &self.store);
            }
        }
        let retry: Vec<GroupCallId> =
            self.mesh_retry.iter().filter(|(_, at)| **at <= self.now).map(|(g, _)| g.clone()).collect();
        for g in retry {
            self.mesh_retry.remove(&g);
            self.reconcile_mesh(&g);
        }
        if self.now > self.expiry_checked {
            // Expired records are purged now (their timer), and only their devices looked at.
            for (g, devices) in self.store.purge_expired(self.now) {
                self.refresh_devices(&g, Some(&devices));
            }
            self.expiry_checked = self.now;
        }
        let now = self.now;
        self.pending_mesh.expire(now);
        self.ended.expire(now);
        self.early.expire(now);
        self.gate.expire(now);
        self.awaited.expire(now);
        self.collect_ended();
    }

    fn collect_ended(&mut self) {
        let done: Vec<CallId> = self.calls.values().filter(|c| c.is_ended()).map(|c| c.id.clone()).collect();
        for id in done {
            if let Some(call) = self.calls.remove(&id) {
                self.sends.call_ended(&id, &mut self.out);
                if let (Some(link), Some(device)) = (&call.group, &call.peer_device) {
                    // A mesh call ended while the group goes on: set it up again shortly, if
                    // the peer is still there (bounded per peer session; a call that had
                    // connected resets the count).
                    let key = (link.group.clone(), call.peer_user.clone(), device.clone());
                    if call.ever_connected
                        && self.mesh_attempts.get(&key).is_some_and(|(s, _)| *s == link.remote_session)
                    {
                        self.mesh_attempts.remove(&key);
                    }
                    if self.groups.contains_key(&link.group) {
                        self.mesh_retry.entry(link.group.clone()).or_insert(self.now.plus(MESH_RETRY_MS));
                    }
                }
                if call.direction == CallDirection::Outgoing
                    && call.group.is_none()
                    && !call.ever_connected
                    && call.ended_by == Some((EndReason::Replaced, Initiator::Remote))
                {
                    self.awaited.expect(
                        call.room_id.clone(),
                        call.peer_user.clone(),
                        id.clone(),
                        call.offered_type,
                        call.mutes(),
                        self.now.plus(self.config.invite_lifetime_ms),
                    );
                }
                self.remember_ended(id, call.peer_user);
            }
        }
    }
}

/// How full one bounded map is (see [`Voip::footprint`]).
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Entries held.
    pub total: usize,
    /// The most entries held for one sender.
    pub max_one_sender: usize,
    /// The bound on `total`.
    pub limit_total: usize,
    /// The bound on `max_one_sender`.
    pub limit_per_sender: usize,
}

#[cfg(feature = "testing")]
impl Usage {
    /// Within both bounds.
    pub fn within_bounds(&self) -> bool {
        self.total <= self.limit_total && self.max_one_sender <= self.limit_per_sender
    }
}

/// The maps remote input can grow, against their bounds (see [`Voip::footprint`]).
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Remembered ended calls.
    pub ended: Usage,
    /// Early candidates of unknown calls.
    pub early_candidates: Usage,
    /// Mesh invites waiting for a membership.
    pub pending_mesh: Usage,
    /// Live calls.
    pub calls: usize,
    /// Live calls with one peer user.
    pub max_calls_one_peer: usize,
}

/// Media keys of an SFU group call (see [`Voip::media_keys`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MediaKeys {
    /// Our key in use: (index, key).
    pub local: Option<(u32, String)>,
    /// The latest key of each current member: (member, index, key).
    pub remote: Vec<(crate::ids::Participant, u32, String)>,
}

/// A mesh invite waiting for its sender's membership (its sender is the key's owner in
/// `Voip::pending_mesh`).
#[derive(Debug)]
struct PendingMeshInvite {
    room_id: RoomId,
    device: DeviceId,
    common: Common,
    invite: InviteParts,
}

/// The invite-specific fields, handed from dispatch to `handle_invite`.
#[derive(Debug)]
struct InviteParts {
    offer: crate::media::SessionDescription,
    lifetime: Option<u64>,
    invitee: Option<String>,
    invitee_device_id: Option<String>,
    metadata: Option<wire::SdpStreamMetadata>,
    capabilities: wire::Capabilities,
}

/// A short tag of this process, from its seed (without drawing from the random stream, so ids
/// stay as they were): 8 hex digits of SHA-256 of the seed.
fn session_tag(seed: &[u8; 32]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(seed)[..4].iter().map(|b| format!("{b:02x}")).collect()
}
