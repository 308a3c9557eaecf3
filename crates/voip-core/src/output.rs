//! Everything that comes out of the core: [`Output`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{CallId, DeviceId, GroupCallId, Participant, PartyId, RequestId, RoomId, StreamId, UserId};
use crate::input::Signalling;
use crate::media::{CallType, MediaCommand, StreamPurpose};
use crate::wire::call::{AssertedIdentity, CallReplaces};

/// One output of [`crate::VoipMachine::poll`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "output", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Output {
    /// Send something through the homeserver; answer with [`crate::Input::SendResult`].
    Send(SendRequest),
    /// A command for the media engine.
    Media {
        /// The call it concerns.
        call_id: CallId,
        /// What to do.
        command: MediaCommand,
    },
    /// Something the app should know.
    Event(Event),
}

/// A request to send; the adapter executes it and reports the outcome with the same `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SendRequest {
    /// Correlation id for [`crate::Input::SendResult`].
    pub id: RequestId,
    /// Transaction id to use: stable across the core's own retries, so a retried send is
    /// idempotent at the homeserver.
    pub txn_id: String,
    /// What to send.
    pub kind: SendKind,
}

/// What to send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SendKind {
    /// A room event (the adapter encrypts it with Megolm when the room is encrypted).
    RoomEvent {
        /// The room.
        room_id: RoomId,
        /// Event type, e.g. `m.call.invite`.
        #[serde(rename = "type")]
        event_type: String,
        /// The content.
        content: Value,
    },
    /// A state event with an explicit state key (group-call membership).
    StateEvent {
        /// The room.
        room_id: RoomId,
        /// Event type, e.g. `org.matrix.msc3401.call.member`.
        #[serde(rename = "type")]
        event_type: String,
        /// State key.
        state_key: String,
        /// The content.
        content: Value,
    },
    /// Schedule a delayed state event (MSC4140). The result carries the `delay_id`.
    DelayedStateEvent {
        /// The room.
        room_id: RoomId,
        /// Event type.
        #[serde(rename = "type")]
        event_type: String,
        /// State key.
        state_key: String,
        /// The content the server sends when the delay expires.
        content: Value,
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// Restart, send or cancel a scheduled delayed event (MSC4140).
    UpdateDelayedEvent {
        /// The `delay_id` the server returned.
        delay_id: String,
        /// What to do.
        action: DelayedAction,
    },
    /// List our user's scheduled delayed events (MSC4140:
    /// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`). Answer with
    /// [`crate::SendOutcome::DelayedEvents`]; a server without the endpoint answers `404`/`400`
    /// `M_UNRECOGNIZED` ([`crate::SendOutcome::Failed`], not retryable). Sent once per process,
    /// when the server announces delayed events, so that delayed leaves left behind by an
    /// earlier process of this device can be cancelled before they remove a current join.
    ListDelayedEvents,
    /// To-device messages of one type.
    ToDevice {
        /// Event type.
        #[serde(rename = "type")]
        event_type: String,
        /// The room the messages are about (call signalling carries it in the content too).
        room_id: Option<RoomId>,
        /// One message per target device.
        messages: Vec<ToDeviceMessage>,
        /// Whether the messages must be Olm-encrypted.
        encryption: ToDeviceEncryption,
    },
}

/// What to do with a scheduled delayed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DelayedAction {
    /// Restart its timer (heartbeat).
    Restart,
    /// Send it now.
    Send,
    /// Cancel it.
    Cancel,
}

/// One to-device message.
///
/// The messages of one send that carry the same content share it: a media key sent to every
/// member of a call is one [`Arc`] for all of them, not one copy per recipient (10 000 members:
/// one content). Compare with [`Arc::ptr_eq`] to find the messages of one content cheaply; the
/// serialized form is the plain content, as before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(description = "One to-device message."))]
pub struct ToDeviceMessage {
    /// Target user.
    pub user_id: UserId,
    /// Target device.
    pub device_id: DeviceId,
    /// Content (shared by the messages of one send that carry the same content).
    #[serde(with = "shared_value")]
    #[cfg_attr(feature = "schema", schemars(with = "Value", description = "Content."))]
    pub content: Arc<Value>,
}

/// (De)serializes an `Arc<Value>` as the value itself (no serde `rc` feature needed).
mod shared_value {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(super) fn serialize<S: Serializer>(v: &Arc<Value>, s: S) -> Result<S::Ok, S::Error> {
        Value::serialize(v, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Value>, D::Error> {
        Value::deserialize(d).map(Arc::new)
    }
}

/// Encryption requirement of a to-device send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ToDeviceEncryption {
    /// Must be Olm-encrypted; if it cannot be, fail the send instead of sending in clear.
    Required,
    /// Encrypt when the room is encrypted and the target device is known; clear otherwise.
    IfRoomEncrypted,
}

/// Public state of a 1:1 call (the spec / js-sdk state names).
///
/// ```text
///  outgoing: CreateOffer ─invite sent─▶ InviteSent ─answer─▶ Connecting ─ICE─▶ Connected
///  incoming: Ringing ─answer()─▶ CreateAnswer ─answer sent─▶ Connecting ─ICE─▶ Connected
///  any ──hangup / reject / timeout / answered elsewhere / failure──▶ Ended
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallState {
    /// Outgoing: waiting for the engine's offer.
    CreateOffer,
    /// Outgoing: invite sent, waiting for an answer.
    InviteSent,
    /// Incoming: ringing.
    Ringing,
    /// Incoming: answering, waiting for the engine's answer.
    CreateAnswer,
    /// Descriptions exchanged, ICE not connected yet (also after a disconnect).
    Connecting,
    /// Media flowing.
    Connected,
    /// Over.
    Ended,
}

/// Direction of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    /// We placed it.
    Outgoing,
    /// We were invited.
    Incoming,
}

/// Why a call ended. Values that exist on the wire as `m.call.hangup` reasons use their wire
/// names; unknown remote reasons are kept verbatim in [`EndReason::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// `user_hangup`.
    UserHangup,
    /// `user_busy`.
    UserBusy,
    /// `invite_timeout`: nobody answered within the invite's lifetime.
    InviteTimeout,
    /// `ice_failed`: media could not (re)connect.
    IceFailed,
    /// `ice_timeout`.
    IceTimeout,
    /// `user_media_failed`: local capture failed.
    UserMediaFailed,
    /// `unknown_error`.
    UnknownError,
    /// `replaced`: glare or transfer replaced this call.
    Replaced,
    /// `signalling_timeout`: signalling could not be delivered.
    SignallingTimeout,
    /// The callee rejected (`m.call.reject`), or another of our devices did.
    Rejected,
    /// Another device answered (`select_answer` for another party, or our own user's answer).
    AnsweredElsewhere,
    /// The peer left the room.
    PeerLeftRoom,
    /// A remote hangup reason we do not know, verbatim.
    Other(String),
}

impl EndReason {
    /// The `reason` string for `m.call.hangup`.
    pub fn wire_reason(&self) -> &str {
        match self {
            EndReason::UserHangup | EndReason::Rejected | EndReason::PeerLeftRoom => "user_hangup",
            EndReason::UserBusy => "user_busy",
            EndReason::InviteTimeout => "invite_timeout",
            EndReason::IceFailed => "ice_failed",
            EndReason::IceTimeout => "ice_timeout",
            EndReason::UserMediaFailed => "user_media_failed",
            EndReason::UnknownError => "unknown_error",
            EndReason::Replaced => "replaced",
            EndReason::SignallingTimeout => "signalling_timeout",
            EndReason::AnsweredElsewhere => "answered_elsewhere",
            EndReason::Other(s) => s,
        }
    }

    /// Reads a received `reason` (absent means `user_hangup`).
    pub fn from_wire(reason: Option<&str>) -> EndReason {
        match reason.unwrap_or("user_hangup") {
            "user_hangup" | "" => EndReason::UserHangup,
            "user_busy" => EndReason::UserBusy,
            "invite_timeout" => EndReason::InviteTimeout,
            "ice_failed" => EndReason::IceFailed,
            "ice_timeout" => EndReason::IceTimeout,
            "user_media_failed" | "no_user_media" => EndReason::UserMediaFailed,
            "unknown_error" => EndReason::UnknownError,
            "replaced" => EndReason::Replaced,
            "signalling_timeout" => EndReason::SignallingTimeout,
            "answered_elsewhere" => EndReason::AnsweredElsewhere,
            other => EndReason::Other(other.to_owned()),
        }
    }
}

/// Who ended a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// Our user, by a command.
    LocalUser,
    /// This library: a timer, a policy, a failure.
    Library,
    /// The other side (or another of our devices).
    Remote,
}

/// A remote stream the app can render, with what its metadata says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemoteStream {
    /// Stream id.
    pub stream_id: StreamId,
    /// Usermedia or screenshare.
    pub purpose: StreamPurpose,
    /// The sender says its microphone is muted (do not silence audio locally for this).
    pub audio_muted: bool,
    /// The sender says its camera is off: hide video.
    pub video_muted: bool,
    /// An audio track arrived.
    pub has_audio: bool,
    /// A video track arrived.
    pub has_video: bool,
}

/// A local stream of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LocalStream {
    /// Stream id (as in our SDP).
    pub stream_id: StreamId,
    /// Usermedia or screenshare.
    pub purpose: StreamPurpose,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera muted (or no camera).
    pub video_muted: bool,
}

/// Something the app should know. Flat and `#[non_exhaustive]`: match what you need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A valid invite for us arrived and rings. Never fires for our own echo, for expired
    /// invites, for invites addressed to another user or device, or while busy.
    IncomingCall {
        /// The call.
        call_id: CallId,
        /// The room.
        room_id: RoomId,
        /// The caller.
        caller: UserId,
        /// The caller's device, when known (to-device signalling, `device_id` field).
        caller_device: Option<DeviceId>,
        /// Voice or video (from the stream metadata, else the SDP).
        call_type: CallType,
        /// How the call signals.
        signalling: Signalling,
    },
    /// Start ringing for this call (incoming call that should ring).
    RingtoneStarted {
        /// The call.
        call_id: CallId,
    },
    /// Stop ringing for this call (answered, rejected, ended, answered elsewhere).
    RingtoneStopped {
        /// The call.
        call_id: CallId,
    },
    /// The call's state changed.
    StateChanged {
        /// The call.
        call_id: CallId,
        /// The new state.
        state: CallState,
    },
    /// The set of streams changed (tracks arrived, metadata, mute, screenshare). Remote streams
    /// are ordered screenshare first (famedly's priority), then usermedia.
    StreamsChanged {
        /// The call.
        call_id: CallId,
        /// Our streams.
        local: Vec<LocalStream>,
        /// The peer's streams.
        remote: Vec<RemoteStream>,
    },
    /// Hold state changed. `local_hold`: we hold the peer; `remote_hold`: the peer holds us.
    HoldChanged {
        /// The call.
        call_id: CallId,
        /// We put the peer on hold.
        local_hold: bool,
        /// The peer put us on hold.
        remote_hold: bool,
    },
    /// The peer's asserted identity changed (MSC3086). Informational, untrusted.
    AssertedIdentityChanged {
        /// The call.
        call_id: CallId,
        /// The identity, or `None` when reverted.
        identity: Option<AssertedIdentity>,
    },
    /// The peer asked us to transfer (MSC2747 `m.call.replaces`). The app decides.
    ReplacesReceived {
        /// The call.
        call_id: CallId,
        /// The request.
        replaces: CallReplaces,
    },
    /// Glare replaced our outgoing call by the peer's incoming one.
    CallReplaced {
        /// Our call, now ended with reason `replaced`.
        old_call_id: CallId,
        /// The surviving call.
        new_call_id: CallId,
    },
    /// The caller selected an answer (outgoing calls: which party answered).
    AnswerSelected {
        /// The call.
        call_id: CallId,
        /// The answering party.
        party_id: PartyId,
        /// The answering user.
        user_id: UserId,
    },
    /// The call ended. Fires exactly once per call.
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
        /// Who ended it.
        initiator: Initiator,
    },
    /// Our state in a group call changed.
    GroupCallStateChanged {
        /// The group call.
        group: GroupCallId,
        /// The new state.
        state: crate::group::GroupCallState,
    },
    /// The media encryption of an SFU group call we join, when it is not the usual
    /// per-participant keys: fires when a join starts without media encryption
    /// ([`crate::MediaEncryption::None`]), and when that changes (a call that defaulted to `None`
    /// because its room had no `m.room.encryption` gets per-participant keys when that state
    /// arrives). With `None` no media keys are sent or accepted: the app must not enable frame
    /// encryption, and should show the call as unencrypted. [`crate::GroupCallInfo`]`::encryption`
    /// always has the mode in force.
    GroupCallEncryption {
        /// The group call.
        group: GroupCallId,
        /// The mode in force.
        encryption: crate::group::MediaEncryption,
    },
    /// The members of a group call changed: fires for every group call seen in a joined room
    /// (so apps can show "call in progress"), and for calls we are in. Our own device is never
    /// listed. Expiry is a timer: an expired member leaves at its expiry time.
    ///
    /// A diff, so that its size follows the change, not the call (one member leaving a call of
    /// 10 000 reports one participant): apply `left`, then `joined`, to the participants known so
    /// far (none before the first event of a group). A member whose session changed (a new
    /// membership id) is in both. The whole list at any time: [`crate::VoipMachine::participants`].
    ParticipantsChanged {
        /// The group call.
        group: GroupCallId,
        /// Who joined.
        joined: Vec<Participant>,
        /// Who left (or expired).
        left: Vec<Participant>,
        /// How many participants there are now.
        count: usize,
    },
    /// Someone started a group call in a room and rings or notifies us (MSC4075). Fires only
    /// while the notification is valid (lifetime at most 90 s) and when it mentions us or the
    /// room. The app decides whether to ring.
    GroupCallNotification {
        /// The room.
        room_id: RoomId,
        /// Who started the call.
        sender: UserId,
        /// The notification event (a decline relates to it).
        event_id: Option<String>,
        /// Ring or notification.
        notification_type: crate::group::NotificationType,
        /// When ringing should stop.
        expires_at: crate::ids::Timestamp,
    },
    /// Someone declined a group-call notification (MSC4310).
    GroupCallDeclined {
        /// The room.
        room_id: RoomId,
        /// Who declined.
        sender: UserId,
        /// The notification declined.
        notification_event_id: String,
    },
    /// A media encryption key for a participant of an SFU group call, for the app's LiveKit key
    /// provider (`set_key(identity, index, key)`). Fires for our own keys (when they are to be
    /// used) and for keys received from current members.
    EncryptionKey {
        /// The group call.
        group: GroupCallId,
        /// Whose key.
        participant: Participant,
        /// Whether it is our own key.
        local: bool,
        /// Key index (ring slot).
        index: u32,
        /// The raw key, standard padded base64.
        key: String,
    },
    /// An incoming call was not answered here: it timed out, was cancelled before we answered,
    /// or was refused because we were busy. Never for "answered elsewhere".
    MissedCall {
        /// The call.
        call_id: CallId,
        /// The room.
        room_id: RoomId,
        /// The caller.
        caller: UserId,
        /// Why it ended.
        reason: EndReason,
    },
}
