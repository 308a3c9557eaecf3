//! Every timer and limit of the core, with documented defaults.

use serde::{Deserialize, Serialize};

/// What the core does when an invite arrives while our own invite to the same peer in the same
/// room is already out (glare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum GlareBehaviour {
    /// Spec behaviour (MSC2746): the call with the lower `call_id` survives and is answered
    /// automatically with the media the user already chose for the call it replaces.
    AutoAnswer,
    /// famedly's behaviour: the surviving incoming call rings and the user must answer it.
    LetItRing,
}

/// How a busy device refuses a new call (see [`Config::busy_signal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum BusySignal {
    /// Send `m.call.hangup` with reason `user_busy` (the reason is visible to the caller).
    HangupUserBusy,
    /// Send `m.call.reject` with reason `user_busy` (stops every device of the callee; js-sdk
    /// callers stop ringing on it and end with its reason). The default.
    Reject,
}

/// Configuration of a [`crate::VoipMachine`]. Build with [`Config::default`] and the `with_*` setters
/// (one per field); new fields may be added in minor releases.
///
/// All durations are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// `lifetime` written on our `m.call.invite`, and how long an unanswered outgoing call rings
    /// before it is hung up with `invite_timeout`. Default 90 000 (the spec's recommended minimum).
    pub invite_lifetime_ms: u64,
    /// An incoming invite rings only if at least this much of its lifetime is left. Default 3 000
    /// (matrix-js-sdk's `RING_GRACE_PERIOD`).
    pub ring_grace_ms: u64,
    /// Used when a received invite carries no usable `lifetime`. Default 60 000.
    pub default_remote_lifetime_ms: u64,
    /// `lifetime` written on our `m.call.negotiate`; an unanswered renegotiation is abandoned after
    /// it. Default 10 000.
    pub negotiate_lifetime_ms: u64,
    /// Local candidates gathered after the first batch of a gathering round are batched for
    /// this long before one `m.call.candidates` is sent. Gathering completion flushes at once.
    /// Default 100.
    pub candidate_batch_ms: u64,
    /// The first batch of a gathering round (the host candidates, usually gathered within a few
    /// milliseconds of the offer or answer) waits only this long, counted from the invite or
    /// answer going out or from its first candidate, whichever is later: it queues behind the
    /// invite or answer on the room's send lane anyway, and the peer's ICE cannot start without
    /// it. Default 20.
    pub candidate_first_batch_ms: u64,
    /// After ICE reports `disconnected`, wait this long before restarting ICE. Default 2 000.
    pub ice_restart_delay_ms: u64,
    /// How many ICE restarts a call may make (counter reset when ICE connects) before it is hung
    /// up with `ice_failed`. Default 3.
    pub max_ice_restarts: u32,
    /// A call that stays disconnected (or never connects after the answer) this long is hung up
    /// with `ice_failed`. Default 30 000.
    pub ice_failed_timeout_ms: u64,
    /// A failed or rate-limited send is retried this many times (backoff `500 * 2^n` ms, or the
    /// server's `retry_after`) before the core gives up. Default 5.
    pub max_send_retries: u32,
    /// Glare resolution. Default [`GlareBehaviour::AutoAnswer`].
    pub glare: GlareBehaviour,
    /// Refuse new incoming calls while another call is connecting or connected. Default true.
    pub busy_when_in_call: bool,
    /// How a busy device refuses. Default [`BusySignal::Reject`] (`m.call.reject` with reason
    /// `user_busy`): matrix-js-sdk callers ignore a hangup from a callee they have not selected
    /// yet and would ring on until the invite expires (found by `cargo xtask interop`).
    pub busy_signal: BusySignal,
    /// Advertise `m.call.transferee` in `capabilities`. Default false.
    pub transferee: bool,
    /// Remote candidates for a `call_id` we have not seen an invite for are kept this long, in
    /// case the invite arrives late (to-device messages are not ordered). Default 60 000.
    pub orphan_candidates_ms: u64,
    /// famedly memberships: `expires_ts` is set this far ahead. Default 360 000 (6 min).
    pub famedly_expires_ms: u64,
    /// famedly memberships are re-sent this often. Default 120 000 (2 min).
    pub famedly_refresh_ms: u64,
    /// famedly delayed leave: delay. Default 18 000.
    pub famedly_delayed_leave_ms: u64,
    /// famedly delayed leave: heartbeat. Default 4 000.
    pub famedly_delayed_restart_ms: u64,
    /// MatrixRTC memberships: `expires` (from `created_ts`). Default 14 400 000 (4 h).
    pub rtc_expires_ms: u64,
    /// MatrixRTC memberships are re-sent this often, with `expires` moved on. Default 3 595 000.
    pub rtc_refresh_ms: u64,
    /// MatrixRTC delayed leave: delay (Element Call's value). Default 10 000.
    pub rtc_delayed_leave_ms: u64,
    /// MatrixRTC delayed leave: heartbeat. Default 5 000.
    pub rtc_delayed_restart_ms: u64,
    /// `lifetime` of the MSC4075 notifications we send. Default 30 000.
    pub notification_lifetime_ms: u64,
    /// Ended calls are remembered this long so late or replayed events for them are ignored.
    /// Default 600 000.
    pub ended_call_memory_ms: u64,
    /// A remote invite rings at most this long, whatever `lifetime` it claims. Default 90 000.
    pub max_remote_lifetime_ms: u64,
    /// New incoming calls one user may start per minute (each is a peer connection); more
    /// invites are refused and counted (`Counters::rate_limited`). Default 30.
    pub max_new_calls_per_minute: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            invite_lifetime_ms: 90_000,
            ring_grace_ms: 3_000,
            default_remote_lifetime_ms: 60_000,
            negotiate_lifetime_ms: 10_000,
            candidate_batch_ms: 100,
            candidate_first_batch_ms: 20,
            ice_restart_delay_ms: 2_000,
            max_ice_restarts: 3,
            ice_failed_timeout_ms: 30_000,
            max_send_retries: 5,
            glare: GlareBehaviour::AutoAnswer,
            busy_when_in_call: true,
            busy_signal: BusySignal::Reject,
            transferee: false,
            orphan_candidates_ms: 60_000,
            ended_call_memory_ms: 600_000,
            notification_lifetime_ms: 30_000,
            famedly_expires_ms: 360_000,
            famedly_refresh_ms: 120_000,
            famedly_delayed_leave_ms: 18_000,
            famedly_delayed_restart_ms: 4_000,
            rtc_expires_ms: 14_400_000,
            rtc_refresh_ms: 3_595_000,
            rtc_delayed_leave_ms: 10_000,
            rtc_delayed_restart_ms: 5_000,
            max_remote_lifetime_ms: 90_000,
            max_new_calls_per_minute: 30,
        }
    }
}

/// `with_<field>` setters, one per field, for building a [`Config`] outside this crate
/// (`Config` is `#[non_exhaustive]`: `Config::default().with_ring_grace_ms(1_000)`).
macro_rules! setters {
    ($($setter:ident, $field:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                #[doc = concat!("Sets [`Config::", stringify!($field), "`].")]
                #[must_use]
                pub fn $setter(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    with_invite_lifetime_ms, invite_lifetime_ms: u64,
    with_ring_grace_ms, ring_grace_ms: u64,
    with_default_remote_lifetime_ms, default_remote_lifetime_ms: u64,
    with_negotiate_lifetime_ms, negotiate_lifetime_ms: u64,
    with_candidate_batch_ms, candidate_batch_ms: u64,
    with_candidate_first_batch_ms, candidate_first_batch_ms: u64,
    with_ice_restart_delay_ms, ice_restart_delay_ms: u64,
    with_max_ice_restarts, max_ice_restarts: u32,
    with_ice_failed_timeout_ms, ice_failed_timeout_ms: u64,
    with_max_send_retries, max_send_retries: u32,
    with_glare, glare: GlareBehaviour,
    with_busy_when_in_call, busy_when_in_call: bool,
    with_busy_signal, busy_signal: BusySignal,
    with_transferee, transferee: bool,
    with_orphan_candidates_ms, orphan_candidates_ms: u64,
    with_famedly_expires_ms, famedly_expires_ms: u64,
    with_famedly_refresh_ms, famedly_refresh_ms: u64,
    with_famedly_delayed_leave_ms, famedly_delayed_leave_ms: u64,
    with_famedly_delayed_restart_ms, famedly_delayed_restart_ms: u64,
    with_rtc_expires_ms, rtc_expires_ms: u64,
    with_rtc_refresh_ms, rtc_refresh_ms: u64,
    with_rtc_delayed_leave_ms, rtc_delayed_leave_ms: u64,
    with_rtc_delayed_restart_ms, rtc_delayed_restart_ms: u64,
    with_notification_lifetime_ms, notification_lifetime_ms: u64,
    with_ended_call_memory_ms, ended_call_memory_ms: u64,
    with_max_remote_lifetime_ms, max_remote_lifetime_ms: u64,
    with_max_new_calls_per_minute, max_new_calls_per_minute: usize,
}
