#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod config;
mod error;
mod ids;
mod input;
pub mod media;
mod output;
mod rng;
pub mod wire;

pub use config::{BusySignal, Config, GlareBehaviour};
pub use error::{ApiMisuse, Error};
pub use ids::{CallId, DeviceId, LocalDevice, PartyId, RequestId, RoomId, StreamId, Timestamp, UserId};
pub use input::{Command, Input, Membership, RoomEvent, RoomMember, SendOutcome, Signalling, ToDeviceEvent};
pub use media::{CallType, MediaCommand, MediaEvent};
pub use output::{
    CallDirection, CallState, EndReason, Event, Initiator, LocalStream, Output, RemoteStream, SendKind,
    SendRequest, ToDeviceEncryption, ToDeviceMessage,
};
pub use rng::seed_from_u64;
