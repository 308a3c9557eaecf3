//! Group calls (MatrixRTC): our membership in one group call, in either dialect, with expiry
//! refresh and MSC4140 delayed leave; the participant list derived from everyone's memberships.
//!
//! ```text
//!  JoinGroupCall ─▶ Joining ──join state sent──▶ Joined ──LeaveGroupCall──▶ Leaving ──▶ (gone)
//!                                                  │ ▲
//!                     our membership vanished ─────┘ └──── re-sent (rejoin)
//! ```
//!
//! Delayed leave: before our membership is sent, a delayed `leave` state event is scheduled
//! (as js-sdk's `MembershipManager` and famedly do), so a client that dies between the two
//! writes leaves no ghost membership behind; it is restarted on a heartbeat, and leaving sends
//! it at once. The same order holds for every re-join (our membership vanished, or the
//! heartbeat learnt with `M_NOT_FOUND` that the server applied the leave). A server that caps
//! delays (`M_MAX_DELAY_EXCEEDED` with `max_delay`) gets the delay again at its maximum, with the
//! heartbeat shortened to fit. Servers without delayed events (any other scheduling failure)
//! fall back to expiry alone: the membership is sent without a delayed leave.

pub mod focus;
pub(crate) mod membership;
pub(crate) mod mesh;
pub(crate) mod notification;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::ids::{GroupCallId, LocalDevice, Participant, RequestId, RoomId, Timestamp, UserId};
use crate::keys::{KeyConfig, KeyManager, KeyTransport};
use crate::output::{DelayedAction, Event, SendKind};
use crate::sends::SendPurpose;
use crate::wire::member::{self, Focus, FocusSelection, MemberEntry, MembershipDialect};
use membership::{Device, MemberInfo, MembershipStore};

/// What a group send was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupOp {
    /// Our membership (join or refresh).
    Join,
    /// Scheduling the delayed leave.
    ScheduleLeave,
    /// Restarting the delayed leave.
    Heartbeat,
    /// Sending the delayed leave now (leaving).
    SendDelayedLeave,
    /// The leave state event itself.
    Leave,
    /// Cancelling a delayed leave we no longer want (its result does not matter).
    Cancel,
}

/// A join whose membership is confirmed this long after it started resends our key in use.
const LATE_MEMBERSHIP_MS: u64 = 2_000;

/// Our state in a group call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum GroupCallState {
    /// Our membership is being sent.
    Joining,
    /// We are a member.
    Joined,
    /// Our leave is being sent.
    Leaving,
    /// We left.
    Left,
}

/// Parameters of `JoinGroupCall`.
#[derive(Clone, Debug)]
pub(crate) struct JoinParams {
    pub(crate) group: GroupCallId,
    pub(crate) application: String,
    pub(crate) scope: String,
    pub(crate) dialect: MembershipDialect,
    pub(crate) focus: Focus,
    pub(crate) owned_state_keys: bool,
    pub(crate) notify: Option<NotificationType>,
    /// The media encryption of an SFU call.
    pub(crate) encryption: MediaEncryption,
    /// `encryption` was not chosen by the app but taken from the room (it becomes
    /// [`MediaEncryption::PerParticipantKeys`] if the room turns out to be encrypted).
    pub(crate) encryption_defaulted: bool,
}

/// A snapshot of a group call for the app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupCallInfo {
    /// The group call.
    pub group: GroupCallId,
    /// Our state, if we take part.
    pub state: Option<GroupCallState>,
    /// Current members other than this device, oldest first.
    pub members: Vec<MemberInfo>,
    /// The LiveKit service each member publishes on, per each member's focus selection
    /// ([`crate::focus`]: `multi_sfu` its own, `oldest_membership` the oldest member's, famedly
    /// the oldest member's, none without a selection).
    pub transports: Vec<(Participant, Option<String>)>,
    /// Mesh: each member's remote streams (screenshare first), from its peer call.
    pub streams: Vec<(Participant, Vec<crate::output::RemoteStream>)>,
    /// The media encryption of an SFU call we take part in (`None` for a mesh call or one we
    /// only observe).
    #[serde(default)]
    pub encryption: Option<MediaEncryption>,
}

#[derive(Debug)]
pub(crate) struct GroupCall {
    pub(crate) id: GroupCallId,
    application: String,
    scope: String,
    pub(crate) dialect: MembershipDialect,
    pub(crate) focus: Focus,
    owned_state_keys: bool,
    pub(crate) member_id: String,
    /// Distinguishes this join from earlier ones of the same group call, so that results of an
    /// earlier join's sends are not applied to this one.
    pub(crate) generation: u64,
    pub(crate) state: GroupCallState,
    /// This join replaced one whose leave was still on its way: the others will see that leave
    /// and drop our key, possibly after a key we sent for this join reached them (sim sfu seed
    /// 534). Once our membership is out again, our key in use goes to every member once more.
    pub(crate) resend_key_on_join: bool,
    /// When this join started: keys go out at once, before the membership is confirmed.
    join_started: Timestamp,
    created_ts: Option<Timestamp>,
    pub(crate) participants: BTreeSet<Participant>,
    /// When each MatrixRTC participant joined: a newer `created` for the same participant is a
    /// rejoin (an app restart keeps Element Call's `@user:server:DEVICE` member id).
    rtc_created: BTreeMap<Participant, Timestamp>,
    own_present: bool,
    delayed_supported: Option<bool>,
    delay_id: Option<String>,
    scheduling: bool,
    /// Send our membership once the delayed leave in flight is scheduled (or has failed).
    membership_after_schedule: bool,
    /// The server's maximum delay (MSC4140 `max_delay`), once it refused ours as too long.
    max_delay_ms: Option<u64>,
    refresh_at: Option<Timestamp>,
    heartbeat_at: Option<Timestamp>,
    /// The heartbeat in flight or waiting for a retry: the next one takes over from it.
    heartbeat_req: Option<RequestId>,
    /// Media keys, for SFU (LiveKit) calls with [`MediaEncryption::PerParticipantKeys`].
    pub(crate) keys: Option<KeyManager>,
    /// The media encryption of an SFU call (mesh calls have no media keys either way).
    pub(crate) encryption: MediaEncryption,
    /// `encryption` came from the room, not from the app.
    encryption_defaulted: bool,
    /// Ring or notify the room once our join is through, if we are the first.
    notify: Option<NotificationType>,
    /// Mesh: our microphone and camera mute state, applied to every peer call.
    pub(crate) mutes: (bool, bool),
    /// Mesh: we share our screen with every peer call.
    pub(crate) screenshare: bool,
}

/// The outcome of a sent request, as far as groups care.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sent {
    pub(crate) event_id: Option<String>,
    pub(crate) delay_id: Option<String>,
}

/// MSC4140's `org.matrix.msc4140.errcode` for a delay above the server's maximum (which it names
/// in `org.matrix.msc4140.max_delay`).
pub(crate) const MAX_DELAY_EXCEEDED: &str = "M_MAX_DELAY_EXCEEDED";

/// `org.matrix.msc4075.rtc.notification`
pub const RTC_NOTIFICATION: &str = "org.matrix.msc4075.rtc.notification";
/// `org.matrix.msc4310.rtc.decline`
pub const RTC_DECLINE: &str = "org.matrix.msc4310.rtc.decline";

/// Media encryption of an SFU (LiveKit) group call, chosen per join
/// ([`crate::Command::JoinGroupCall`]`::encryption`).
///
/// Without a choice by the app it follows the room, as Element Call does: a room with
/// `m.room.encryption` gets [`MediaEncryption::PerParticipantKeys`]; a room whose members the core
/// knows (it was given the room's `m.room.member` state) but that has no `m.room.encryption` gets
/// [`MediaEncryption::None`]; a room the core knows nothing about gets
/// [`MediaEncryption::PerParticipantKeys`] (the safe side). A call that defaulted to `None`
/// becomes `PerParticipantKeys` when the room's `m.room.encryption` arrives (encryption cannot be
/// turned off in Matrix, so the change only goes that way); [`crate::Event::GroupCallEncryption`]
/// tells the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MediaEncryption {
    /// Per-participant media keys (today's MatrixRTC E2EE): each member makes its own key and
    /// sends it Olm-encrypted to every other member device (`io.element.call.encryption_keys` or
    /// famedly's `com.famedly.call.member.encryption_keys`), rotating on joins and leaves.
    PerParticipantKeys,
    /// No media encryption (js-sdk's `MatrixRTCSession` joined with `manageMediaKeys: false`):
    /// no key is made or sent, received keys are ignored and counted
    /// ([`crate::Counters::keys_in_unencrypted_calls`]).
    None,
}

/// How the first member of a call alerts the room (MSC4075 `notification_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationType {
    /// Ring the other members' devices.
    Ring,
    /// A silent notification.
    Notification,
}

impl GroupCall {
    /// `JoinGroupCall`: send our membership.
    pub(crate) fn join(
        ctx: &mut Ctx<'_>,
        store: &MembershipStore,
        p: JoinParams,
        delayed_supported: Option<bool>,
        generation: u64,
    ) -> GroupCall {
        let member_id = match p.dialect {
            // Element Call's state-mode membership id, which is also the LiveKit identity.
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => {
                format!("{}:{}", ctx.local.user_id, ctx.local.device_id)
            }
            // famedly: a random session id per join (the mesh session id).
            MembershipDialect::Famedly => ctx.rng.alnum(22),
        };
        let mut g = GroupCall {
            id: p.group,
            application: p.application,
            scope: p.scope,
            dialect: if p.dialect == MembershipDialect::Sticky {
                MembershipDialect::MatrixRtc
            } else {
                p.dialect
            },
            focus: p.focus,
            owned_state_keys: p.owned_state_keys,
            member_id,
            generation,
            state: GroupCallState::Joining,
            created_ts: None,
            participants: BTreeSet::new(),
            rtc_created: BTreeMap::new(),
            own_present: false,
            delayed_supported,
            delay_id: None,
            scheduling: false,
            membership_after_schedule: false,
            resend_key_on_join: false,
            join_started: ctx.now,
            max_delay_ms: None,
            refresh_at: None,
            heartbeat_at: None,
            heartbeat_req: None,
            keys: None,
            encryption: p.encryption,
            encryption_defaulted: p.encryption_defaulted,
            notify: p.notify,
            mutes: (false, false),
            screenshare: false,
        };
        g.start_keys(ctx);
        let _span = tracing::debug_span!("group", group = %g.id).entered();
        ctx.emit(Event::GroupCallStateChanged { group: g.id.clone(), state: GroupCallState::Joining });
        if g.unencrypted_sfu() {
            // Per-participant keys are the norm (and show in the keys that follow): an
            // unencrypted call is announced.
            ctx.emit(Event::GroupCallEncryption { group: g.id.clone(), encryption: g.encryption });
        }
        g.schedule_leave_then_join(ctx, store);
        g
    }

    fn is_sfu(&self) -> bool {
        matches!(self.focus, Focus::Livekit { .. })
    }

    /// An SFU call we take part in without media encryption.
    pub(crate) fn unencrypted_sfu(&self) -> bool {
        self.is_sfu() && self.encryption == MediaEncryption::None
    }

    /// An SFU call with per-participant keys gets its key manager (the keys start with the
    /// next `on_members`).
    fn start_keys(&mut self, ctx: &Ctx<'_>) {
        if !self.is_sfu() || self.encryption != MediaEncryption::PerParticipantKeys || self.keys.is_some() {
            return;
        }
        let transport = match self.dialect {
            MembershipDialect::Famedly => KeyTransport::Famedly,
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => KeyTransport::ElementCall,
        };
        let local = self.local_participant(ctx);
        self.keys =
            Some(KeyManager::new(self.id.clone(), transport, KeyConfig::for_transport(transport), local));
    }

    /// The room turned out to be encrypted: a call whose `None` encryption came from the room
    /// (not from the app) switches to per-participant keys. Returns whether it did (the caller
    /// then recomputes the members, which sends our first key).
    pub(crate) fn room_encrypted(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if !self.encryption_defaulted
            || self.encryption != MediaEncryption::None
            || !self.is_sfu()
            || !matches!(self.state, GroupCallState::Joining | GroupCallState::Joined)
        {
            return false;
        }
        tracing::info!(group = %self.id, "room is encrypted: the call switches to per-participant keys");
        self.encryption = MediaEncryption::PerParticipantKeys;
        self.start_keys(ctx);
        ctx.emit(Event::GroupCallEncryption { group: self.id.clone(), encryption: self.encryption });
        true
    }

    /// Whether a membership of this group's call counts as a member of our call: the same
    /// `scope`, and (MatrixRTC, as Element Call does) the same `application`. famedly lets the
    /// application change mid-call, so there it is not compared.
    pub(crate) fn accepts(&self, m: &MemberInfo) -> bool {
        m.scope == self.scope
            && (self.dialect == MembershipDialect::Famedly || m.application == self.application)
    }

    pub(crate) fn local_participant(&self, ctx: &Ctx<'_>) -> Participant {
        Participant {
            user_id: ctx.local.user_id.clone(),
            device_id: ctx.local.device_id.clone(),
            member_id: self.member_id.clone(),
        }
    }

    fn event_type(&self) -> &'static str {
        match self.dialect {
            MembershipDialect::Famedly => member::FAMEDLY_MEMBER,
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => member::RTC_MEMBER,
        }
    }

    fn state_key(&self, ctx: &Ctx<'_>) -> String {
        self.state_key_of(ctx.local)
    }

    /// Where our membership of this call lives: room, event type, state key.
    pub(crate) fn membership_key(&self, local: &LocalDevice) -> (RoomId, &'static str, String) {
        (self.id.room_id.clone(), self.event_type(), self.state_key_of(local))
    }

    /// The `delay_id` of our delayed leave, once scheduled.
    pub(crate) fn delay_id(&self) -> Option<&str> {
        self.delay_id.as_deref()
    }

    /// Our delayed leave is being scheduled.
    pub(crate) fn scheduling(&self) -> bool {
        self.scheduling
    }

    fn state_key_of(&self, local: &LocalDevice) -> String {
        match self.dialect {
            MembershipDialect::Famedly => local.user_id.0.clone(),
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => member::rtc_state_key(
                local.user_id.as_str(),
                local.device_id.as_str(),
                &self.application,
                &self.id.call_id,
                self.owned_state_keys,
            ),
        }
    }

    fn our_entry(&self, ctx: &Ctx<'_>) -> MemberEntry {
        let (expires_ts, expires, created_ts) = match self.dialect {
            MembershipDialect::Famedly => (Some(ctx.now.plus(ctx.config.famedly_expires_ms).0), None, None),
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => {
                // `expires` counts from the first join (`created_ts`), kept across refreshes.
                let age = self.created_ts.map_or(0, |c| ctx.now.since(c));
                (None, Some(age + ctx.config.rtc_expires_ms), self.created_ts.map(|t| t.0))
            }
        };
        MemberEntry {
            call_id: self.id.call_id.clone(),
            application: self.application.clone(),
            scope: self.scope.clone(),
            device_id: ctx.local.device_id.0.clone(),
            member_id: Some(self.member_id.clone()),
            created_ts,
            expires_ts,
            expires,
            foci: vec![self.focus.clone()],
            focus_selection: match self.focus {
                Focus::Livekit { .. } => Some(FocusSelection::MultiSfu),
                _ => None,
            },
            feeds: if self.focus == Focus::Mesh { vec!["m.usermedia".into()] } else { Vec::new() },
        }
    }

    /// famedly lists hold every device of the user: keep the others' entries, replace ours.
    fn famedly_content(&self, ctx: &Ctx<'_>, store: &MembershipStore, with_ours: bool) -> Value {
        let raw = store.raw_famedly(&self.id.room_id, &self.state_key(ctx));
        let mut list: Vec<Value> = raw
            .get("memberships")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| {
                        e.get("device_id").and_then(Value::as_str) != Some(ctx.local.device_id.as_str())
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if with_ours {
            list.push(member::famedly_entry_json(&self.our_entry(ctx)));
        }
        json!({ "memberships": list })
    }

    fn membership_content(&self, ctx: &Ctx<'_>, store: &MembershipStore) -> Value {
        match self.dialect {
            MembershipDialect::Famedly => self.famedly_content(ctx, store, true),
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => {
                member::rtc_content(&self.our_entry(ctx))
            }
        }
    }

    fn leave_content(&self, ctx: &Ctx<'_>, store: &MembershipStore) -> Value {
        match self.dialect {
            MembershipDialect::Famedly => self.famedly_content(ctx, store, false),
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => json!({}),
        }
    }

    fn send(&self, ctx: &mut Ctx<'_>, kind: SendKind, op: GroupOp) {
        self.send_tracked(ctx, kind, op);
    }

    /// [`Self::send`], returning the send's id.
    fn send_tracked(&self, ctx: &mut Ctx<'_>, kind: SendKind, op: GroupOp) -> RequestId {
        let purpose = if matches!(op, GroupOp::Leave | GroupOp::SendDelayedLeave) {
            SendPurpose::Ending
        } else {
            SendPurpose::Other
        };
        let id = ctx.sends.send(ctx.out, None, purpose, "voip.group", kind);
        ctx.sends.tag_group(id, self.id.clone(), self.generation, op);
        id
    }

    /// Our state event at our state key, with this content.
    fn state_send(&self, ctx: &Ctx<'_>, content: Value) -> SendKind {
        SendKind::StateEvent {
            room_id: self.id.room_id.clone(),
            event_type: self.event_type().to_owned(),
            state_key: self.state_key(ctx),
            content,
        }
    }

    fn send_membership(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        let kind = self.state_send(ctx, self.membership_content(ctx, store));
        self.send(ctx, kind, GroupOp::Join);
        let every = match self.dialect {
            MembershipDialect::Famedly => ctx.config.famedly_refresh_ms,
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => ctx.config.rtc_refresh_ms,
        };
        self.refresh_at = Some(ctx.now.plus(every));
    }

    /// (Re-)joins: schedules the delayed leave first and sends our membership once it is
    /// scheduled, or at once when the server has no delayed events (or one is already running).
    fn schedule_leave_then_join(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        if self.delayed_supported == Some(false) || self.delay_id.is_some() {
            self.membership_after_schedule = false;
            self.send_membership(ctx, store);
            return;
        }
        self.membership_after_schedule = true;
        self.schedule_leave(ctx, store);
    }

    fn schedule_leave(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        if self.delayed_supported == Some(false) || self.scheduling || self.delay_id.is_some() {
            return;
        }
        self.scheduling = true;
        let kind = SendKind::DelayedStateEvent {
            room_id: self.id.room_id.clone(),
            event_type: self.event_type().to_owned(),
            state_key: self.state_key(ctx),
            content: self.leave_content(ctx, store),
            delay_ms: self.leave_delay(ctx),
        };
        self.send(ctx, kind, GroupOp::ScheduleLeave);
    }

    /// The delayed leave's delay: the dialect's, capped by the server's maximum.
    fn leave_delay(&self, ctx: &Ctx<'_>) -> u64 {
        let configured = match self.dialect {
            MembershipDialect::Famedly => ctx.config.famedly_delayed_leave_ms,
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => ctx.config.rtc_delayed_leave_ms,
        };
        self.max_delay_ms.map_or(configured, |max| configured.min(max))
    }

    /// The heartbeat: the dialect's, or half the delay when the server's cap made the delay
    /// shorter than twice that (a restart must land well before the leave fires).
    fn restart_interval(&self, ctx: &Ctx<'_>) -> u64 {
        let configured = match self.dialect {
            MembershipDialect::Famedly => ctx.config.famedly_delayed_restart_ms,
            MembershipDialect::MatrixRtc | MembershipDialect::Sticky => ctx.config.rtc_delayed_restart_ms,
        };
        configured.min((self.leave_delay(ctx) / 2).max(1))
    }

    /// The delayed leave is scheduled or cannot be: send the membership that waited for it.
    fn join_after_schedule(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        if std::mem::take(&mut self.membership_after_schedule)
            && matches!(self.state, GroupCallState::Joining | GroupCallState::Joined)
        {
            self.send_membership(ctx, store);
        }
    }

    fn set_state(&mut self, ctx: &mut Ctx<'_>, state: GroupCallState) {
        if self.state != state {
            self.state = state;
            ctx.emit(Event::GroupCallStateChanged { group: self.id.clone(), state });
            if state == GroupCallState::Left {
                // However we got here (a join that failed for good, too), the participants we
                // reported go with the group: the observer that takes over reports them afresh
                // (sim mesh seed 3752: reported as joined twice after a failed join).
                self.report_all_left(ctx);
            }
        }
    }

    /// Reports every participant as left (the diffs must add up) and forgets them.
    fn report_all_left(&mut self, ctx: &mut Ctx<'_>) {
        if !self.participants.is_empty() {
            let left: Vec<Participant> = std::mem::take(&mut self.participants).into_iter().collect();
            ctx.emit(Event::ParticipantsChanged {
                group: self.id.clone(),
                joined: Vec::new(),
                left,
                count: 0,
            });
        }
    }

    fn send_notification(&self, ctx: &mut Ctx<'_>, kind: NotificationType, membership_event_id: &str) {
        let content = json!({
            "m.mentions": {"user_ids": [], "room": true},
            "notification_type": match kind { NotificationType::Ring => "ring", NotificationType::Notification => "notification" },
            "m.relates_to": {"rel_type": "m.reference", "event_id": membership_event_id},
            "sender_ts": ctx.now.0,
            "lifetime": ctx.config.notification_lifetime_ms,
        });
        let kind = SendKind::RoomEvent {
            room_id: self.id.room_id.clone(),
            event_type: RTC_NOTIFICATION.to_owned(),
            content,
        };
        ctx.sends.send(ctx.out, None, SendPurpose::Other, "voip.group", kind);
    }

    /// A send of ours went through.
    pub(crate) fn on_sent(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore, op: GroupOp, sent: Sent) {
        let _span = tracing::debug_span!("group", group = %self.id).entered();
        let delay_id = sent.delay_id;
        match op {
            GroupOp::Join => {
                // Our key went out when the join started. If our membership took long to land
                // (a partition, retries), a leave of this device published meanwhile (our
                // earlier leave, or a delayed leave of an earlier process firing) made the
                // others drop that key after it arrived (sim sfu seeds 534, 840): send it again.
                let late = self.state == GroupCallState::Joining
                    && ctx.now.since(self.join_started) >= LATE_MEMBERSHIP_MS;
                if std::mem::take(&mut self.resend_key_on_join) || late {
                    let all: Vec<Participant> = self.participants.iter().cloned().collect();
                    if let Some(keys) = self.keys.as_mut().filter(|k| k.is_joined()) {
                        keys.resend_current(ctx, &all);
                    }
                }
                if self.state == GroupCallState::Joining {
                    self.set_state(ctx, GroupCallState::Joined);
                    // MSC4075: the first member of a call lets the room know, related to its
                    // membership event.
                    if let (Some(kind), Some(event_id), true) =
                        (self.notify.take(), sent.event_id, self.participants.is_empty())
                    {
                        self.send_notification(ctx, kind, &event_id);
                    }
                }
                // A delayed leave normally runs already (scheduled before the membership); one
                // that was not (e.g. cancelled meanwhile) is scheduled now.
                if self.state == GroupCallState::Joined && !self.membership_after_schedule {
                    self.schedule_leave(ctx, store);
                }
            }
            GroupOp::ScheduleLeave => {
                self.scheduling = false;
                match (delay_id, self.state) {
                    (Some(id), GroupCallState::Joined | GroupCallState::Joining) => {
                        self.delayed_supported = Some(true);
                        self.delay_id = Some(id);
                        self.heartbeat_at = Some(ctx.now.plus(self.restart_interval(ctx)));
                        self.join_after_schedule(ctx, store);
                    }
                    // Scheduled while we were leaving: cancel it, we leave anyway.
                    (Some(id), _) => self.send(
                        ctx,
                        SendKind::UpdateDelayedEvent { delay_id: id, action: DelayedAction::Cancel },
                        GroupOp::Cancel,
                    ),
                    (None, _) => {
                        tracing::warn!("delayed event scheduled without a delay_id");
                        self.join_after_schedule(ctx, store);
                    }
                }
            }
            GroupOp::Heartbeat => {
                if self.delay_id.is_some() && self.state == GroupCallState::Joined {
                    self.heartbeat_at = Some(ctx.now.plus(self.restart_interval(ctx)));
                }
            }
            GroupOp::SendDelayedLeave | GroupOp::Leave => self.set_state(ctx, GroupCallState::Left),
            GroupOp::Cancel => {}
        }
    }

    /// A send of ours failed for good (after the core's retries).
    pub(crate) fn on_failed(
        &mut self,
        ctx: &mut Ctx<'_>,
        store: &MembershipStore,
        op: GroupOp,
        errcode: Option<&str>,
        max_delay_ms: Option<u64>,
    ) {
        let _span = tracing::debug_span!("group", group = %self.id).entered();
        tracing::warn!(?op, ?errcode, ?max_delay_ms, "group send failed");
        match op {
            GroupOp::Join => {
                if self.state == GroupCallState::Joining {
                    // Not a member: nobody sees us. Report the call as left, and cancel the
                    // delayed leave scheduled for the membership that never got through.
                    self.heartbeat_at = None;
                    self.refresh_at = None;
                    if let Some(delay_id) = self.delay_id.take() {
                        self.send(
                            ctx,
                            SendKind::UpdateDelayedEvent { delay_id, action: DelayedAction::Cancel },
                            GroupOp::Cancel,
                        );
                    }
                    self.set_state(ctx, GroupCallState::Left);
                }
            }
            GroupOp::ScheduleLeave => {
                self.scheduling = false;
                let shorter = max_delay_ms.filter(|&max| max > 0 && max < self.leave_delay(ctx));
                if let (Some(max), true) = (shorter, errcode == Some(MAX_DELAY_EXCEEDED)) {
                    // The server caps delays: schedule again with its maximum (the heartbeat
                    // follows from the delay).
                    tracing::info!(max, "delayed leave too long for the server; rescheduling");
                    self.max_delay_ms = Some(max);
                    if matches!(self.state, GroupCallState::Joining | GroupCallState::Joined) {
                        self.schedule_leave(ctx, store);
                    }
                    return;
                }
                // No delayed events here: membership expiry alone will clean up after a crash.
                self.delayed_supported = Some(false);
                self.join_after_schedule(ctx, store);
            }
            GroupOp::Heartbeat => {
                if errcode == Some("M_NOT_FOUND") && self.state == GroupCallState::Joined {
                    self.delay_id = None;
                    self.heartbeat_at = None;
                    if self.own_present {
                        // Cancelled (e.g. by our own refresh), not applied: schedule anew.
                        self.schedule_leave(ctx, store);
                    } else {
                        // The server applied our leave: schedule a new one, then join again.
                        self.schedule_leave_then_join(ctx, store);
                    }
                } else if self.state == GroupCallState::Joined {
                    self.heartbeat_at = Some(ctx.now.plus(self.restart_interval(ctx)));
                }
            }
            GroupOp::SendDelayedLeave => {
                // The delayed leave is gone or the server refused: send the leave ourselves.
                let kind = self.state_send(ctx, self.leave_content(ctx, store));
                self.send(ctx, kind, GroupOp::Leave);
            }
            GroupOp::Leave => self.set_state(ctx, GroupCallState::Left),
            GroupOp::Cancel => {}
        }
    }

    /// `LeaveGroupCall`.
    pub(crate) fn leave(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        if matches!(self.state, GroupCallState::Leaving | GroupCallState::Left) {
            return;
        }
        let _span = tracing::debug_span!("group", group = %self.id).entered();
        self.set_state(ctx, GroupCallState::Leaving);
        self.refresh_at = None;
        self.heartbeat_at = None;
        if let Some(keys) = self.keys.as_mut() {
            keys.leave(ctx);
        }
        match self.delay_id.take() {
            Some(delay_id) => self.send(
                ctx,
                SendKind::UpdateDelayedEvent { delay_id, action: DelayedAction::Send },
                GroupOp::SendDelayedLeave,
            ),
            None => {
                let kind = self.state_send(ctx, self.leave_content(ctx, store));
                self.send(ctx, kind, GroupOp::Leave);
            }
        }
        self.report_all_left(ctx);
    }

    /// One device's membership of this call, as this call counts it (its dialect family, an
    /// accepted application and scope, its user joined to the room).
    fn member<'s>(
        &self,
        store: &'s MembershipStore,
        now: Timestamp,
        joined: &dyn Fn(&UserId) -> bool,
        d: &Device,
    ) -> Option<&'s MemberInfo> {
        store.device_member(&self.id, d, now, Some(self.dialect), joined).filter(|m| self.accepts(m))
    }

    /// Memberships of this group changed (or expired): recompute participants, notice our own
    /// membership vanishing. `devices`: the devices whose memberships may have changed (`None`:
    /// all of them).
    pub(crate) fn on_members(
        &mut self,
        ctx: &mut Ctx<'_>,
        store: &MembershipStore,
        joined: &dyn Fn(&UserId) -> bool,
        devices: Option<&BTreeSet<Device>>,
    ) {
        if matches!(self.state, GroupCallState::Leaving | GroupCallState::Left) {
            return;
        }
        // Only the devices that may have changed (all of them when not told which): the work is
        // proportional to the change, not to the call.
        let us: Device = (ctx.local.user_id.clone(), ctx.local.device_id.clone());
        let all: BTreeSet<Device>;
        let devices = match devices {
            Some(d) => d,
            None => {
                all = store
                    .devices(&self.id)
                    .cloned()
                    .chain(self.participants.iter().map(membership::device))
                    .chain(self.rtc_created.keys().map(membership::device))
                    .chain([us.clone()])
                    .collect();
                &all
            }
        };
        let was_present = self.own_present;
        if devices.contains(&us) {
            let ours = self.member(store, ctx.now, joined, &us);
            self.own_present = ours.is_some();
            // Our first membership's time becomes `created_ts` of later refreshes — but only
            // once our join is confirmed: while joining, the membership at our state key may be
            // an earlier process's (an app restart), and claiming its time would make our rejoin
            // look like no change to the others, who then never send this process their keys
            // (sim sfu seed 164, once that earlier process's delayed leave is cancelled).
            if let (Some(m), None, GroupCallState::Joined) = (&ours, self.created_ts, self.state) {
                self.created_ts = Some(m.created);
            }
        }
        if was_present && !self.own_present && self.state == GroupCallState::Joined {
            // Our membership vanished while we are in the call (the server fired our delayed
            // leave, or it expired): join again at once.
            tracing::info!("our membership vanished; rejoining");
            self.heartbeat_at = None;
            // The leave that fired may not have been ours (an earlier process of this device
            // left one behind); ours would fire later and kick us out again: cancel it.
            if let Some(old) = self.delay_id.take() {
                self.send(
                    ctx,
                    SendKind::UpdateDelayedEvent { delay_id: old, action: DelayedAction::Cancel },
                    GroupOp::Cancel,
                );
            }
            self.schedule_leave_then_join(ctx, store);
            // The others saw us leave and dropped our key: start keys afresh, like a new join
            // (the next `update_members` below sends a fresh key to everyone).
            if let Some(keys) = self.keys.as_mut() {
                keys.leave(ctx);
            }
        }
        // Per device that may have changed: who it was, who it is now. The devices come in
        // order and participants order by device first, so both lists come out sorted and
        // without duplicates (no sets to build).
        // At most one participant per device joins (sized at once: a take-in of 10 000 devices
        // would otherwise grow and copy these lists a dozen times each).
        let mut joined_now: Vec<Participant> = Vec::with_capacity(devices.len());
        let mut left_now: Vec<Participant> = Vec::new();
        let mut rejoined: Vec<Participant> = Vec::new();
        // New `rtc_created` entries, in order: inserted after the loop (in one go into an empty
        // map, as on a take-in).
        let mut created: Vec<(Participant, Timestamp)> =
            Vec::with_capacity(if self.dialect == MembershipDialect::Famedly { 0 } else { devices.len() });
        for d in devices {
            let new = if *d == us { None } else { self.member(store, ctx.now, joined, d) };
            let new_p = new.map(|m| &m.participant);
            for p in membership::of_device(&self.participants, d) {
                if Some(p) != new_p {
                    left_now.push(p.clone());
                }
            }
            if let Some(p) = new_p.filter(|p| !self.participants.contains(*p)) {
                joined_now.push(p.clone());
            }
            // When each MatrixRTC participant joined: a newer `created` is a rejoin.
            let old: Vec<(Participant, Timestamp)> =
                membership::of_device_in(&self.rtc_created, d).map(|(p, t)| (p.clone(), *t)).collect();
            for (p, _) in &old {
                self.rtc_created.remove(p);
            }
            if let Some(m) = new.filter(|m| m.dialect != MembershipDialect::Famedly) {
                if old.iter().any(|(p, t)| *p == m.participant && *t < m.created) {
                    rejoined.push(m.participant.clone());
                }
                created.push((m.participant.clone(), m.created));
            }
        }
        debug_assert!(joined_now.is_sorted() && left_now.is_sorted() && created.is_sorted());
        if self.rtc_created.is_empty() {
            self.rtc_created = created.into_iter().collect();
        } else {
            self.rtc_created.extend(created);
        }
        if !rejoined.is_empty() {
            // A member that restarted lost our key (found by the simulator, sfu seed 17).
            if let Some(keys) = self.keys.as_mut().filter(|k| k.is_joined()) {
                keys.resend_current(ctx, &rejoined);
            }
        }
        // Keys start with our join, before our membership is confirmed (famedly pre-shares
        // keys the same way; receivers buffer keys from devices whose membership is on its way).
        let first = self.keys.as_ref().is_some_and(|k| !k.is_joined());
        if joined_now.is_empty() && left_now.is_empty() && !first {
            return;
        }
        for p in &left_now {
            self.participants.remove(p);
        }
        if self.participants.is_empty() {
            // Built in one go from the sorted list (a take-in of 10 000 members).
            self.participants = joined_now.iter().cloned().collect();
        } else {
            self.participants.extend(joined_now.iter().cloned());
        }
        // The report comes before what the key manager sends for it (its place is kept, so that
        // the lists need not be copied for the key manager).
        let report_at = ctx.out.len();
        if let Some(keys) = self.keys.as_mut() {
            if first {
                // Our join: everyone is new to the key manager.
                keys.update_members(ctx, &self.participants, &[]);
            } else {
                keys.update_members(ctx, &joined_now, &left_now);
            }
        }
        if !joined_now.is_empty() || !left_now.is_empty() {
            let report = Event::ParticipantsChanged {
                group: self.id.clone(),
                joined: joined_now,
                left: left_now,
                count: self.participants.len(),
            };
            ctx.out.insert(report_at, crate::output::Output::Event(report));
        }
    }

    pub(crate) fn next_timer(&self) -> Option<Timestamp> {
        let keys = self.keys.as_ref().and_then(KeyManager::next_timer);
        [self.refresh_at, self.heartbeat_at, keys].into_iter().flatten().min()
    }

    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>, store: &MembershipStore) {
        if let Some(keys) = self.keys.as_mut().filter(|k| k.next_timer().is_some_and(|t| t <= ctx.now)) {
            keys.handle_timeout(ctx);
        }
        if self.refresh_at.is_some_and(|t| t <= ctx.now) {
            self.refresh_at = None;
            if self.state == GroupCallState::Joined {
                self.send_membership(ctx, store);
            }
        }
        if self.heartbeat_at.is_some_and(|t| t <= ctx.now) {
            self.heartbeat_at = None;
            if let (Some(delay_id), GroupCallState::Joined) = (self.delay_id.clone(), self.state) {
                // The heartbeats keep their pace while one is retrying: the send table's back-off
                // (0.5, 1, 2, 4, 8 s) outlasts the delay, so a heartbeat failing a few times in
                // a row let our delayed leave fire while we were there (sim sfu seed 1113). The
                // new one takes over from the one still retrying.
                if let Some(old) = self.heartbeat_req.take() {
                    ctx.sends.abandon(old, ctx.out);
                }
                let id = self.send_tracked(
                    ctx,
                    SendKind::UpdateDelayedEvent { delay_id, action: DelayedAction::Restart },
                    GroupOp::Heartbeat,
                );
                self.heartbeat_req = Some(id);
                self.heartbeat_at = Some(ctx.now.plus(self.restart_interval(ctx)));
            }
        }
    }
}
