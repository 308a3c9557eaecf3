//! Identifiers minted by the core or carried through it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch, the unit of every Matrix timestamp.
///
/// The core never reads a clock: every `now` is handed in by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + ms`, saturating.
    #[must_use]
    pub fn plus(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - other` in milliseconds, zero when `other` is later.
    #[must_use]
    pub fn since(self, other: Timestamp) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// `call_id` of a 1:1 call (Matrix opaque identifier).
    CallId
);
string_id!(
    /// `party_id`: one side's identity within a call (MSC2746).
    PartyId
);
string_id!(
    /// A Matrix user id such as `@alice:example.org`.
    UserId
);
string_id!(
    /// A Matrix device id.
    DeviceId
);
string_id!(
    /// A Matrix room id such as `!room:example.org`.
    RoomId
);
string_id!(
    /// A media stream id (the `msid` stream identifier in SDP), key of `sdp_stream_metadata`.
    StreamId
);

/// Correlates one [`crate::Output::Send`] with the [`crate::Input::SendResult`] that answers it.
///
/// Minted by the core; the adapter only carries it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The numeric value, for logs and transaction ids.
    pub fn value(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from its value: for fixtures and simulators that replay transcripts.
    #[cfg(feature = "testing")]
    pub fn from_value(v: u64) -> Self {
        RequestId(v)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req{}", self.0)
    }
}

/// This device: who the core speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LocalDevice {
    /// Our Matrix user id.
    pub user_id: UserId,
    /// Our device id.
    pub device_id: DeviceId,
}

impl LocalDevice {
    /// Builds a local device from anything string-like.
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self { user_id: UserId(user_id.into()), device_id: DeviceId(device_id.into()) }
    }
}

/// A group call: a room plus the call id within it (`""` is the room's own call, MatrixRTC slot
/// `m.call#ROOM`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupCallId {
    /// The room.
    pub room_id: RoomId,
    /// `call_id` of the memberships (`""` for the room call).
    pub call_id: String,
}

impl GroupCallId {
    /// The room's own call (`call_id` `""`).
    pub fn room_call(room_id: RoomId) -> Self {
        Self { room_id, call_id: String::new() }
    }
}

impl fmt::Display for GroupCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.room_id, if self.call_id.is_empty() { "ROOM" } else { &self.call_id })
    }
}

/// One member device of a group call, as its membership announces it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Participant {
    /// The member's user (the sender of its membership event).
    pub user_id: UserId,
    /// The member's device.
    pub device_id: DeviceId,
    /// `membershipID` (famedly: the session id; Element Call: `@user:server:DEVICE` or a random
    /// id per join).
    pub member_id: String,
}

impl Participant {
    /// LiveKit participant identity in state-event mode: `@user:server:DEVICE`.
    pub fn livekit_identity(&self) -> String {
        format!("{}:{}", self.user_id, self.device_id)
    }

    /// LiveKit participant identity in MatrixRTC sticky-event mode and lk-jwt-service
    /// `/get_token`: unpadded base64 of SHA-256 over the JSON `[user_id, device_id, member_id]`.
    pub fn livekit_hashed_identity(&self) -> String {
        crate::wire::keys::hashed_livekit_identity(
            self.user_id.as_str(),
            self.device_id.as_str(),
            &self.member_id,
        )
    }
}
