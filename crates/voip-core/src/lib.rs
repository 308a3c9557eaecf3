#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod call;
mod config;
mod ctx;
mod error;
mod group;
mod ids;
mod input;
mod keys;
mod machine;
pub mod media;
mod output;
mod quota;
mod rng;
mod sends;
mod timers;
pub mod wire;

pub use call::CallInfo;
pub use config::{BusySignal, Config, GlareBehaviour};
pub use error::{ApiMisuse, Error};
pub use group::focus;
pub use group::membership::MemberInfo;
pub use group::{
    GroupCallInfo, GroupCallState, MediaEncryption, NotificationType, RTC_DECLINE, RTC_NOTIFICATION,
};
pub use ids::{
    CallId, DeviceId, GroupCallId, LocalDevice, Participant, PartyId, RequestId, RoomId, StreamId, Timestamp,
    UserId,
};
pub use input::{
    Command, Input, RoomEvent, RoomMember, RoomMembership, ScheduledDelayedEvent, SendOutcome, Signalling,
    StateEvent, ToDeviceEvent,
};
pub use machine::{Counters, MediaKeys, VoipMachine};
#[cfg(feature = "testing")]
pub use machine::{Footprint, Usage};
pub use media::{CallType, MediaCommand, MediaEvent};
pub use output::{
    CallDirection, CallState, DelayedAction, EndReason, Event, Initiator, LocalStream, Output, RemoteStream,
    SendKind, SendRequest, ToDeviceEncryption, ToDeviceMessage,
};
pub use rng::seed_from_u64;
pub use timers::{Deadline, TimerKind};
pub use wire::call::{AssertedIdentity, CallReplaces, TargetUser};
pub use wire::member::{Focus, FocusSelection, MembershipDialect};
