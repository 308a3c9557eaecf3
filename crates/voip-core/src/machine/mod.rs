//! [`VoipMachine`]: the one machine per local device. It routes inputs to the call sub-machines and
//! collects their outputs; protocol decisions live in the modules named for them (`call/`,
//! `group/`, `keys/`), and the files here apply what those decide.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::call::incoming::{self, Gate, InviteParts};
use crate::call::memory::CallMemory;
use crate::call::remote::{Disposition, Ignored, Sender};
use crate::call::{glare, Call, CallInfo, GroupLink, Incoming, Outgoing};
use crate::config::{Config, GlareBehaviour};
use crate::ctx::Ctx;
use crate::error::{ApiMisuse, Error};
use crate::group::membership::{self, Device, MembershipStore};
use crate::group::mesh::{Mesh, PeerCall};
use crate::group::{self, GroupCall, GroupCallInfo, GroupCallState, GroupOp, JoinParams};
use crate::ids::{CallId, DeviceId, GroupCallId, LocalDevice, PartyId, RoomId, Timestamp, UserId};
use crate::input::{Command, Input, RoomEvent, RoomMember, RoomMembership, Signalling, ToDeviceEvent};
use crate::media::{CallType, MediaEvent};
use crate::output::{CallDirection, CallState, EndReason, Event, Initiator, Output};
use crate::rng::{HashKeys, Lookup, Rng};
use crate::sends::{SendTable, Settled};
use crate::timers::{Deadline, TimerKind};
use crate::wire::call::{self as wire, types, CallEvent, Common};
use crate::wire::member;
use crate::wire::{WireError, WireErrorKind};

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
/// `VoipMachine::cancel_stale_delayed`), until it has fired for sure.
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
/// use voip_core::{Config, Input, LocalDevice, Output, Timestamp, VoipMachine};
///
/// let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@alice:example.org", "ALICE"), [7; 32]);
/// let now = Timestamp(1_700_000_000_000);
/// voip.handle(now, Input::Tick).unwrap();
/// // After every `handle`, drain every output before handling the next input.
/// while let Some(output) = voip.poll() {
///     match output {
///         Output::Send(request) => { /* send it, then feed Input::SendResult */ let _ = request; }
///         Output::Media { call_id, command } => { /* media engine */ let _ = (call_id, command); }
///         Output::Event(event) => { /* tell the app */ let _ = event; }
///         _ => { /* `Output` is #[non_exhaustive]: outputs added later */ }
///     }
/// }
/// // Then sleep until `next_deadline()` or the next input, whichever comes first.
/// assert!(voip.next_deadline().is_none());
/// ```
#[derive(Debug)]
pub struct VoipMachine {
    config: Config,
    local: LocalDevice,
    rng: Rng,
    now: Timestamp,
    calls: BTreeMap<CallId, Call>,
    /// Ended call ids and early candidates of calls not (or no longer) held.
    memory: CallMemory,
    /// Who may ring us (ignored users, per-sender budgets).
    gate: Gate,
    /// Rooms with `m.room.encryption`: cleartext call events there are refused.
    encrypted_rooms: BTreeSet<RoomId>,
    /// Replacements of our calls that their callee ended with `replaced` (lagging glare).
    awaited: glare::AwaitedReplacements,
    /// Per room, per user: its `m.room.member` membership (only looked up, never iterated).
    members: BTreeMap<RoomId, Lookup<UserId, RoomMembership>>,
    /// The keys of the [`Lookup`] maps' hashes (from the seed).
    hash_keys: HashKeys,
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
    /// Mesh calls: pending invites, attempts, retries.
    mesh: Mesh,
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

mod commands;
mod delayed;
mod groups;
mod inbound;
mod invite;
mod members;
mod mesh;
mod notifications;
mod sends;
mod timers;

impl VoipMachine {
    /// A machine for `local`, with all randomness drawn from `seed` (use OS entropy in
    /// production, a fixed value in tests: see [`crate::seed_from_u64`]).
    pub fn new(config: Config, local: LocalDevice, seed: [u8; 32]) -> VoipMachine {
        VoipMachine {
            config,
            local,
            rng: Rng::from_seed(seed),
            now: Timestamp(0),
            calls: BTreeMap::new(),
            memory: CallMemory::default(),
            gate: Gate::default(),
            encrypted_rooms: BTreeSet::new(),
            awaited: glare::AwaitedReplacements::default(),
            members: BTreeMap::new(),
            hash_keys: HashKeys::from_seed(seed),
            deferred: None,
            out: VecDeque::new(),
            sends: SendTable::with_session(session_tag(&seed)),
            can_handle_override: None,
            counters: Counters::default(),
            store: MembershipStore::new(HashKeys::from_seed(seed)),
            groups: BTreeMap::new(),
            observed: BTreeMap::new(),
            delayed_events: None,
            expiry_checked: Timestamp(0),
            group_generation: 0,
            delayed_listing: DelayedListing::NotAsked,
            stale_delayed: Vec::new(),
            mesh: Mesh::default(),
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
        incoming::can_ring(self.can_handle_override, &self.config, || {
            self.calls.values().any(Call::is_engaged)
        })
    }

    /// Received-event statistics.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How full every map that remote input can grow is, against its bounds (for fuzzing and
    /// property tests: see `docs/security.md`).
    #[cfg(feature = "testing")]
    pub fn footprint(&self) -> Footprint {
        let usage = |(total, max_one, q): (usize, usize, crate::quota::Quota)| Usage {
            total,
            max_one_sender: max_one,
            limit_total: q.total,
            limit_per_sender: q.per_sender,
        };
        let pending = self.mesh.pending_usage();
        let mut calls_per_peer: BTreeMap<&UserId, usize> = BTreeMap::new();
        for c in self.calls.values() {
            *calls_per_peer.entry(&c.peer_user).or_default() += 1;
        }
        Footprint {
            ended: usage(self.memory.ended_usage()),
            early_candidates: usage(self.memory.early_usage()),
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
    /// Due timers fire first. Drain [`VoipMachine::poll`] afterwards.
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
                let settled =
                    self.sends.settle(id, result, self.now, self.config.max_send_retries, &mut self.out);
                self.route_settled(id, settled);
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
        if let Some(at) = self.mesh.next_retry() {
            offer(Deadline { at, reason: TimerKind::GroupMembership, call_id: None, request_id: None });
        }
        if let Some(at) = self.store.next_expiry(self.now) {
            offer(Deadline { at, reason: TimerKind::MembershipExpiry, call_id: None, request_id: None });
        }
        let housekeeping = [
            self.memory.next_expiry(),
            self.mesh.next_expiry(),
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
}

/// How full one bounded map is (see [`VoipMachine::footprint`]).
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

/// The maps remote input can grow, against their bounds (see [`VoipMachine::footprint`]).
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

/// Media keys of an SFU group call (see [`VoipMachine::media_keys`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MediaKeys {
    /// Our key in use: (index, key).
    pub local: Option<(u32, String)>,
    /// The latest key of each current member: (member, index, key).
    pub remote: Vec<(crate::ids::Participant, u32, String)>,
}

/// A short tag of this process, from its seed (without drawing from the random stream, so ids
/// stay as they were): 8 hex digits of SHA-256 of the seed.
fn session_tag(seed: &[u8; 32]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(seed)[..4].iter().map(|b| format!("{b:02x}")).collect()
}
