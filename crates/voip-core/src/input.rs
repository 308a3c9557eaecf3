//! Everything that goes into the core: [`Input`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{CallId, DeviceId, RequestId, RoomId, Timestamp, UserId};
use crate::media::{CallType, MediaEvent};
use crate::output::EndReason;
use crate::wire::call::{AssertedIdentity, CallReplaces};
use crate::wire::member::{Focus, MembershipDialect};

/// One input to [`crate::VoipMachine::handle`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "input", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Input {
    /// A request from the app.
    Command(Command),
    /// A timeline event from a room (decrypted when the room is encrypted).
    RoomEvent(RoomEvent),
    /// A to-device event (decrypted when it was Olm-encrypted).
    ToDevice(ToDeviceEvent),
    /// A whole sync response's call events. Invites whose call is already answered, rejected or
    /// hung up in the same batch are dropped before they can ring (spec, "Invite lifetime").
    SyncBatch {
        /// Room timeline events, in timeline order.
        #[serde(default)]
        room_events: Vec<RoomEvent>,
        /// To-device events, in arrival order.
        #[serde(default)]
        to_device: Vec<ToDeviceEvent>,
    },
    /// A group-call membership state event (`com.famedly.call.member`,
    /// `org.matrix.msc3401.call.member`), from the room's initial state or a change; also the
    /// room's `m.room.encryption` (an encrypted room stays encrypted).
    StateEvent(StateEvent),
    /// What the homeserver supports (from `/versions`).
    ServerSupport {
        /// MSC4140 delayed events (`org.matrix.msc4140` in `unstable_features`).
        delayed_events: bool,
    },
    /// A user's room membership (`m.room.member`), from initial state or a change.
    RoomMember(RoomMember),
    /// Many `m.room.member` memberships and membership state events at once (a room's initial
    /// state, or what a gappy sync brings): the same as feeding them one by one
    /// ([`Input::RoomMember`] each, then [`Input::StateEvent`] each), except that each group
    /// call's changes are worked out and reported once, at the end (one `participants_changed`
    /// per group instead of one per event). Malformed state events are skipped and counted.
    RoomState {
        /// `m.room.member` memberships.
        #[serde(default)]
        members: Vec<RoomMember>,
        /// State events (`com.famedly.call.member`, `org.matrix.msc3401.call.member`, …).
        #[serde(default)]
        state: Vec<StateEvent>,
    },
    /// The outcome of an earlier [`crate::Output::Send`].
    SendResult {
        /// The request this answers.
        id: RequestId,
        /// What happened.
        result: SendOutcome,
    },
    /// A media-engine report about one call.
    Media {
        /// The call.
        call_id: CallId,
        /// The report.
        event: MediaEvent,
    },
    /// Our `m.ignored_user_list` (account data), whole: these users never ring us and are not
    /// called in mesh group calls.
    IgnoredUsers {
        /// The ignored users.
        #[serde(default)]
        users: Vec<UserId>,
    },
    /// Time passed; fire due timers. Equivalent to any other input with the same `now`.
    Tick,
}

/// How signalling for a 1:1 call travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Signalling {
    /// `m.call.*` room events (the spec's 1:1 calls).
    #[default]
    Room,
    /// `m.call.*` to-device messages to one device, each carrying `room_id` (as mesh group calls
    /// do). Needs the invitee's device.
    ToDevice,
}

/// A request from the app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "command", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Call `invitee` in `room_id`. The new call id is minted by the core and returned by
    /// [`crate::VoipMachine::place_call`].
    PlaceCall {
        /// The room the call belongs to.
        room_id: RoomId,
        /// Who to call. May be our own user (with `invitee_device`) to call another own device.
        invitee: UserId,
        /// Ring only this device (`invitee_device_id`).
        #[serde(default)]
        invitee_device: Option<DeviceId>,
        /// Voice or video.
        call_type: CallType,
        /// Room events or to-device messages.
        #[serde(default)]
        signalling: Signalling,
    },
    /// Answer a ringing call, optionally with less media than offered (`Voice` for a video call).
    Answer {
        /// The call.
        call_id: CallId,
        /// Media to answer with; `None` answers with what was offered.
        #[serde(default)]
        call_type: Option<CallType>,
    },
    /// Decline a ringing call. With `emit` the caller and our other devices are told
    /// (`m.call.reject`, or `m.call.hangup` for a version-0 caller); without it the call ends
    /// here only and the others keep ringing.
    Reject {
        /// The call.
        call_id: CallId,
        /// Tell the others.
        #[serde(default = "yes")]
        emit: bool,
    },
    /// End a call (any state). The reason defaults to `user_hangup`.
    Hangup {
        /// The call.
        call_id: CallId,
        /// Reason sent in `m.call.hangup`.
        #[serde(default)]
        reason: Option<EndReason>,
    },
    /// Put the remote on hold or resume it (renegotiates).
    SetHold {
        /// The call.
        call_id: CallId,
        /// Hold or resume.
        on_hold: bool,
    },
    /// Mute or unmute our microphone and/or camera (tracks disabled + stream metadata update).
    SetMuted {
        /// The call.
        call_id: CallId,
        /// New microphone mute state, if changing.
        #[serde(default)]
        audio: Option<bool>,
        /// New camera mute state, if changing.
        #[serde(default)]
        video: Option<bool>,
    },
    /// Start or stop sharing the screen as a second `m.screenshare` stream (renegotiates).
    SetScreenshare {
        /// The call.
        call_id: CallId,
        /// On or off.
        enabled: bool,
    },
    /// Restart ICE now (renegotiates with new credentials).
    RestartIce {
        /// The call.
        call_id: CallId,
    },
    /// Tell the peer who they are really talking to (MSC3086), e.g. after a PBX transfer.
    SendAssertedIdentity {
        /// The call.
        call_id: CallId,
        /// The identity, or `None` to revert to the room member's.
        identity: Option<AssertedIdentity>,
    },
    /// Ask the peer to transfer (MSC2747 `m.call.replaces`).
    SendReplaces {
        /// The call.
        call_id: CallId,
        /// The transfer request.
        replaces: CallReplaces,
    },
    /// Join a group call (send our membership; schedule the delayed leave).
    JoinGroupCall {
        /// The room.
        room_id: RoomId,
        /// `call_id` (`""`: the room's call).
        #[serde(default)]
        call_id: String,
        /// `application`, default `m.call`.
        #[serde(default = "m_call")]
        application: String,
        /// `scope`, default `m.room`.
        #[serde(default = "m_room")]
        scope: String,
        /// Membership format to write.
        dialect: MembershipDialect,
        /// Our backend: mesh, or a LiveKit SFU.
        focus: Focus,
        /// The room version allows owned per-device state keys (MSC3757/MSC3779): no `_` prefix.
        #[serde(default)]
        owned_state_keys: bool,
        /// If we are the first member, ring or notify the room (MSC4075) once joined.
        #[serde(default)]
        notify: Option<crate::group::NotificationType>,
        /// Media encryption of an SFU call; `None` (absent): from the room's encryption (see
        /// [`crate::MediaEncryption`]). Mesh calls are encrypted by DTLS-SRTP whatever this
        /// says.
        #[serde(default)]
        encryption: Option<crate::group::MediaEncryption>,
    },
    /// Leave a group call.
    LeaveGroupCall {
        /// The room.
        room_id: RoomId,
        /// `call_id`.
        #[serde(default)]
        call_id: String,
    },
    /// Mute or unmute our microphone and/or camera in a mesh group call: applied to every peer
    /// call, and to peer calls set up later.
    SetGroupMuted {
        /// The room.
        room_id: RoomId,
        /// `call_id`.
        #[serde(default)]
        call_id: String,
        /// New microphone mute state, if changing.
        #[serde(default)]
        audio: Option<bool>,
        /// New camera mute state, if changing.
        #[serde(default)]
        video: Option<bool>,
    },
    /// Share our screen with every member of a mesh group call (or stop).
    SetGroupScreenshare {
        /// The room.
        room_id: RoomId,
        /// `call_id`.
        #[serde(default)]
        call_id: String,
        /// On or off.
        enabled: bool,
    },
    /// Ask members of an SFU group call for their media keys (famedly key request; Element Call
    /// has no request event, its members re-send keys on their own).
    RequestEncryptionKeys {
        /// The room.
        room_id: RoomId,
        /// `call_id`.
        #[serde(default)]
        call_id: String,
        /// Whom to ask; `None` asks every current member.
        #[serde(default)]
        participants: Option<Vec<crate::ids::Participant>>,
    },
    /// Override the busy policy: `Some(false)` refuses every new call, `Some(true)` accepts every
    /// new call, `None` returns to [`crate::Config::busy_when_in_call`].
    SetCanHandleNewCall {
        /// The override.
        value: Option<bool>,
    },
}

fn yes() -> bool {
    true
}

fn m_call() -> String {
    "m.call".to_owned()
}

fn m_room() -> String {
    "m.room".to_owned()
}

/// A room timeline event, as the adapter received it (decrypted where needed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RoomEvent {
    /// The room.
    pub room_id: RoomId,
    /// The event id, when known.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The sender (authenticated by the homeserver).
    pub sender: UserId,
    /// The event type, e.g. `m.call.invite`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The content, unparsed: the core validates it.
    pub content: Value,
    /// `origin_server_ts`.
    pub origin_server_ts: Timestamp,
    /// `unsigned.age` at the time the event was received, if the server sent it.
    #[serde(default)]
    pub age_ms: Option<u64>,
    /// Whether it arrived Megolm-encrypted. In a room with `m.room.encryption` (see
    /// [`Input::StateEvent`]) cleartext call events are refused.
    #[serde(default)]
    pub encrypted: bool,
    /// The sending device, as the Megolm session vouches for it, when known.
    #[serde(default)]
    pub sender_device: Option<DeviceId>,
}

/// A state event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StateEvent {
    /// The room.
    pub room_id: RoomId,
    /// The event id, when known.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The sender (authenticated by the homeserver).
    pub sender: UserId,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The state key.
    pub state_key: String,
    /// The content, unparsed.
    pub content: Value,
    /// `origin_server_ts`: the clock expiry is measured from.
    pub origin_server_ts: Timestamp,
}

/// A to-device event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ToDeviceEvent {
    /// The sender (authenticated by the homeserver).
    pub sender: UserId,
    /// The sending device as authenticated by Olm, when the event was encrypted. Preferred over
    /// the self-asserted `device_id` in the content.
    #[serde(default)]
    pub sender_device: Option<DeviceId>,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The content, unparsed.
    pub content: Value,
    /// Whether it arrived Olm-encrypted.
    #[serde(default)]
    pub encrypted: bool,
}

/// `m.room.member` membership of one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RoomMember {
    /// The room.
    pub room_id: RoomId,
    /// The user.
    pub user_id: UserId,
    /// The membership.
    pub membership: RoomMembership,
}

/// A room membership state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RoomMembership {
    /// Joined.
    Join,
    /// Invited.
    Invite,
    /// Left or was kicked.
    Leave,
    /// Banned.
    Ban,
    /// Knocking.
    Knock,
}

/// Outcome of a send, reported by the adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SendOutcome {
    /// Sent; the event id when it was a room or state event.
    Sent {
        /// Event id of the sent room event.
        #[serde(default)]
        event_id: Option<String>,
        /// `delay_id` of a scheduled delayed event.
        #[serde(default)]
        delay_id: Option<String>,
    },
    /// The homeserver answered 429 (after the adapter's own retries, if any).
    RateLimited {
        /// The server's `retry_after_ms`, if given.
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// Failed. `retryable` for network errors and 5xx, not for 4xx.
    Failed {
        /// Whether a retry may succeed.
        retryable: bool,
        /// Detail for logs.
        error: String,
        /// The Matrix `errcode` (e.g. `M_NOT_FOUND` for a delayed event that already fired).
        #[serde(default)]
        errcode: Option<String>,
    },
    /// The answer to [`crate::SendKind::ListDelayedEvents`]: our user's scheduled delayed
    /// events (Synapse: `{"delayed_events": [...]}`).
    DelayedEvents {
        /// The scheduled delayed events, as the server listed them.
        #[serde(default)]
        delayed_events: Vec<ScheduledDelayedEvent>,
    },
    /// A delayed event's delay is above the homeserver's maximum (MSC4140: `400` with
    /// `org.matrix.msc4140.errcode: M_MAX_DELAY_EXCEEDED` and `org.matrix.msc4140.max_delay`).
    /// Not retried as is; the core schedules again with `max_delay_ms`.
    MaxDelayExceeded {
        /// The server's `org.matrix.msc4140.max_delay`, in milliseconds.
        max_delay_ms: u64,
    },
}

/// One scheduled delayed event, as MSC4140's listing endpoint returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScheduledDelayedEvent {
    /// Its `delay_id`.
    pub delay_id: String,
    /// The room.
    pub room_id: RoomId,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The state key (`None` for a delayed room event).
    #[serde(default)]
    pub state_key: Option<String>,
    /// The delay in milliseconds (`delay_ms`; older revisions of MSC4140 call it `delay`, which
    /// adapters map here).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The content the server will send.
    #[serde(default)]
    pub content: Value,
}
