//! Errors by blame: the remote's fault, the app's misuse, or our own bug.

use serde::{Deserialize, Serialize};

use crate::ids::{CallId, GroupCallId};
use crate::wire::WireError;

/// Error returned by [`crate::VoipMachine::handle`]. The core's state is consistent after any error:
/// the input was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[non_exhaustive]
pub enum Error {
    /// Remote input was malformed. Logged and otherwise ignored; never caused by the app.
    #[error("malformed remote event: {0}")]
    Remote(#[from] WireError),
    /// The app asked for something impossible. Never caused by the values of untrusted data.
    #[error("api misuse: {0}")]
    ApiMisuse(#[from] ApiMisuse),
    /// A broken internal invariant: a bug in this library, please report it.
    #[error("internal error (a bug): {0}")]
    Unreachable(String),
}

/// The app asked for something impossible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "misuse", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiMisuse {
    /// No call with this id (or it already ended).
    #[error("unknown or ended call {call_id}")]
    UnknownCall {
        /// The call.
        call_id: CallId,
    },
    /// The command does not apply in the call's current state.
    #[error("{command} is not possible on call {call_id} in state {state}")]
    WrongState {
        /// The call.
        call_id: CallId,
        /// The command.
        command: String,
        /// The call's state.
        state: String,
    },
    /// To-device signalling needs a target device.
    #[error("to-device signalling needs the invitee's device id")]
    MissingDevice,
    /// Calling our own device.
    #[error("cannot call our own device")]
    CallingSelf,
    /// The peer does not support what was asked (e.g. renegotiation with a version-0 peer).
    #[error("the peer of call {call_id} does not support {feature}")]
    Unsupported {
        /// The call.
        call_id: CallId,
        /// What is not supported.
        feature: String,
    },
    /// There is already a live call with this user in this room (one call per pair).
    #[error("already in call {call_id} with this user in this room")]
    AlreadyInCall {
        /// The live call.
        call_id: CallId,
    },
    /// We already take part in this group call.
    #[error("already in group call {group}")]
    AlreadyInGroupCall {
        /// The group call.
        group: GroupCallId,
    },
    /// We do not take part in this group call.
    #[error("not in group call {group}")]
    NotInGroupCall {
        /// The group call.
        group: GroupCallId,
    },
    /// A media-engine event for a call that does not exist.
    #[error("media event for unknown call {call_id}")]
    UnknownMediaCall {
        /// The call.
        call_id: CallId,
    },
}
