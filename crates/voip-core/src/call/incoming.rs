//! Who may ring us: the admission of a received 1:1 invite ([`Admission::admit`]), the one place
//! that decides whether it rings, is refused (ignored sender, not addressed to us, room,
//! expired, over budget), is answered busy, supersedes an older call, or meets one of ours in
//! glare ([`super::glare`]: which call survives; a surviving incoming call replaces ours). The
//! busy rule is [`can_ring`], also behind `VoipMachine::can_handle_new_call`. Mesh invites are
//! judged by [`crate::group::mesh`].
//!
//! The admission rules beyond addressing (see `docs/security.md`):
//!
//! - Users on our `m.ignored_user_list` never ring and are never called in mesh.
//! - One sender creates at most [`crate::Config::max_new_calls_per_minute`] incoming calls per
//!   [`NEW_CALL_WINDOW_MS`] (each is a peer connection the engine sets up); more are refused and
//!   counted, so 10 000 invites from one stranger do not become 10 000 calls.
//! - A caller we are busy for gets one busy reply (and the app one missed-call event) per
//!   [`BUSY_REPLY_WINDOW_MS`], not one per invite.
//! - A remote invite lifetime is capped by [`crate::Config::max_remote_lifetime_ms`].

use std::collections::BTreeSet;

use super::glare::{self, AwaitedReplacements};
use super::Call;
use crate::config::{BusySignal, Config};
use crate::ids::{CallId, DeviceId, LocalDevice, RoomId, Timestamp, UserId};
use crate::input::{RoomMembership, Signalling};
use crate::media::CallType;
use crate::output::{CallDirection, CallState, EndReason};
use crate::quota::{PerSender, Quota};
use crate::wire::call::{CallEvent, CallVersion};

/// Window of the per-sender new-call budget.
pub(crate) const NEW_CALL_WINDOW_MS: u64 = 60_000;
/// The most the new-call budget tracks per sender, whatever the configuration says.
const MAX_NEW_CALLS: usize = 1024;
/// One busy reply per caller per this many milliseconds.
pub(crate) const BUSY_REPLY_WINDOW_MS: u64 = 30_000;
/// Most senders tracked at once for either budget.
const TRACKED: usize = 4096;

/// The admission state (see the module docs).
#[derive(Debug)]
pub(crate) struct Gate {
    ignored: BTreeSet<UserId>,
    new_calls: PerSender<CallId, ()>,
    busy_replies: PerSender<UserId, ()>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            ignored: BTreeSet::new(),
            new_calls: PerSender::new(Quota { per_sender: MAX_NEW_CALLS, total: TRACKED }),
            busy_replies: PerSender::new(Quota { per_sender: 1, total: TRACKED }),
        }
    }
}

impl Gate {
    /// Replaces the ignored users (`m.ignored_user_list`).
    pub(crate) fn set_ignored(&mut self, users: impl IntoIterator<Item = UserId>) {
        self.ignored = users.into_iter().collect();
    }

    /// Whether `user` is ignored.
    pub(crate) fn is_ignored(&self, user: &UserId) -> bool {
        self.ignored.contains(user)
    }

    /// Whether `sender` may create the incoming call `call_id` now (at most `per_minute` a
    /// minute); if so it is counted.
    pub(crate) fn admit_new_call(
        &mut self,
        now: Timestamp,
        sender: &UserId,
        call_id: &CallId,
        per_minute: usize,
    ) -> bool {
        if self.new_calls.count_of(sender) >= per_minute.min(MAX_NEW_CALLS) {
            return false;
        }
        self.new_calls.insert(call_id.clone(), sender.clone(), now.plus(NEW_CALL_WINDOW_MS), ());
        true
    }

    /// Whether a busy reply to `caller` may go out now; if so it is counted.
    pub(crate) fn busy_reply_allowed(&mut self, now: Timestamp, caller: &UserId) -> bool {
        if self.busy_replies.contains_key(caller) {
            return false;
        }
        self.busy_replies.insert(caller.clone(), caller.clone(), now.plus(BUSY_REPLY_WINDOW_MS), ());
        true
    }

    /// Drop what is due.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.new_calls.expire(now);
        self.busy_replies.expire(now);
    }

    /// The next expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        [self.new_calls.next_expiry(), self.busy_replies.next_expiry()].into_iter().flatten().min()
    }
}

/// The invite-specific fields of a received `m.call.invite`, handed from dispatch to admission.
#[derive(Debug)]
pub(crate) struct InviteParts {
    /// The offer.
    pub(crate) offer: crate::media::SessionDescription,
    /// `lifetime` in ms, if given.
    pub(crate) lifetime: Option<u64>,
    /// `invitee` user.
    pub(crate) invitee: Option<String>,
    /// `invitee_device_id`.
    pub(crate) invitee_device_id: Option<String>,
    /// `sdp_stream_metadata`.
    pub(crate) metadata: Option<crate::wire::call::SdpStreamMetadata>,
    /// `capabilities`.
    pub(crate) capabilities: crate::wire::call::Capabilities,
}

/// How long a remote invite may ring: its claimed lifetime (or the default), capped.
pub(crate) fn lifetime(claimed: Option<u64>, config: &Config) -> u64 {
    claimed.unwrap_or(config.default_remote_lifetime_ms).min(config.max_remote_lifetime_ms)
}

/// Whether an invite's room allows it to ring, from our and the sender's `m.room.member`
/// membership (`None`: not known). Never for a room we have left; a to-device invite (which
/// names its room itself) only when we and the sender are both known to be joined to it; a room
/// invite's sender must not be known to have left.
pub(crate) fn room_allows(
    signalling: Signalling,
    me: Option<RoomMembership>,
    sender: Option<RoomMembership>,
) -> bool {
    match signalling {
        Signalling::ToDevice => me == Some(RoomMembership::Join) && sender == Some(RoomMembership::Join),
        Signalling::Room => {
            me.is_none_or(|m| m == RoomMembership::Join) && sender.is_none_or(|m| m == RoomMembership::Join)
        }
    }
}

/// The one busy rule (`can_handle_new_call`): a new call may ring unless the app overrode it,
/// or we are busy while in a call and one of ours is being answered, connecting or connected
/// (`any_engaged`, only asked when it matters).
pub(crate) fn can_ring(
    can_handle_override: Option<bool>,
    config: &Config,
    any_engaged: impl FnOnce() -> bool,
) -> bool {
    can_handle_override.unwrap_or_else(|| !(config.busy_when_in_call && any_engaged()))
}

/// A received 1:1 `m.call.invite`, as admission sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Invite<'a> {
    /// Its call.
    pub(crate) call_id: &'a CallId,
    /// Its room.
    pub(crate) room_id: &'a RoomId,
    /// Its sender.
    pub(crate) sender: &'a UserId,
    /// The sending device, if known.
    pub(crate) device: Option<&'a DeviceId>,
    /// How it came.
    pub(crate) signalling: Signalling,
    /// How old it was on arrival, if known.
    pub(crate) age_ms: Option<u64>,
    /// Its `version`.
    pub(crate) version: CallVersion,
    /// A to-device invite with a `conf_id`: a mesh call of a group call.
    pub(crate) mesh: bool,
    /// The invite's own fields.
    pub(crate) parts: &'a InviteParts,
}

/// One of our live calls, as admission sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveCall<'a> {
    /// The call.
    pub(crate) id: &'a CallId,
    /// Its room.
    pub(crate) room_id: &'a RoomId,
    /// The peer's user.
    pub(crate) peer: &'a UserId,
    /// Placed or received.
    pub(crate) direction: CallDirection,
    /// How it is signalled.
    pub(crate) signalling: Signalling,
    /// Its state.
    pub(crate) state: CallState,
    /// The media we called with (outgoing calls).
    pub(crate) offered_type: CallType,
    /// Our mute state.
    pub(crate) mutes: (bool, bool),
}

impl<'a> LiveCall<'a> {
    /// The admission view of `call`.
    pub(crate) fn of(call: &'a Call) -> LiveCall<'a> {
        LiveCall {
            id: &call.id,
            room_id: &call.room_id,
            peer: &call.peer_user,
            direction: call.direction,
            signalling: call.signalling,
            state: call.state,
            offered_type: call.offered_type,
            mutes: call.mutes(),
        }
    }

    /// Being answered, connecting or connected (see [`can_ring`]).
    fn is_engaged(&self) -> bool {
        matches!(self.state, CallState::CreateAnswer | CallState::Connecting | CallState::Connected)
    }

    /// Our own invite is being created or is out (glare is possible).
    fn is_inviting(&self) -> bool {
        matches!(self.state, CallState::CreateOffer | CallState::InviteSent)
    }
}

/// Why an invite does not ring (each has its counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// From a user on our ignore list.
    Ignored,
    /// Not addressed to us, or its room does not allow it.
    NotForUs,
    /// A to-device invite without a sending device: nobody to answer.
    Malformed,
    /// Too little of its lifetime left to ring.
    Expired,
    /// Its sender used up its new-call budget.
    RateLimited,
}

/// Our call that an incoming call replaces (glare, or the callee's replacement of our call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replacement {
    /// Our call.
    pub(crate) old: CallId,
    /// The media we called with.
    pub(crate) call_type: CallType,
    /// Our mute state, for the new call.
    pub(crate) mutes: (bool, bool),
    /// Our call is still live: hang it up (`replaced`). False when its callee already ended it.
    pub(crate) hang_up_old: bool,
}

/// What happens to an admitted invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It becomes a ringing call with `remaining_ms` of its lifetime left, replacing ours if said.
    Ring { remaining_ms: u64, replaces: Option<Replacement> },
    /// Glare, and our call `ours` wins: refuse the invite with a hangup `replaced`.
    OursWins { ours: CallId },
    /// We are busy: refuse it with `reply` (none when the caller had its busy reply this window).
    Busy { reply: Option<CallEvent> },
}

/// What [`Admission::admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It does not ring.
    Refused(Refused),
    /// A mesh invite: [`crate::group::mesh::judge_invite`] decides.
    Mesh,
    /// First end `supersede` (older calls with the same peer in the same room, not in glare: the
    /// peer must have dropped them and its hangup was lost), then the outcome.
    Admitted { supersede: Vec<CallId>, outcome: Outcome },
}

/// The admission of one invite: ring, busy, refuse, replace or glare. Everything it needs is
/// borrowed from the machine; the budgets and awaited replacements it uses are updated.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    /// The configuration.
    pub(crate) config: &'a Config,
    /// This device.
    pub(crate) local: &'a LocalDevice,
    /// The time.
    pub(crate) now: Timestamp,
    /// The app's `can_handle_new_call` override.
    pub(crate) can_handle_override: Option<bool>,
    /// Ignored users and per-sender budgets.
    pub(crate) gate: &'a mut Gate,
    /// Replacements of our calls that their callee ended with `replaced`.
    pub(crate) awaited: &'a mut AwaitedReplacements,
}

impl Admission<'_> {
    /// Decides `invite`. `room_ok` is [`room_allows`] for its room; `calls` are every call we hold.
    pub(crate) fn admit(&mut self, invite: &Invite<'_>, room_ok: bool, calls: &[LiveCall<'_>]) -> Decision {
        if self.gate.is_ignored(invite.sender) {
            return Decision::Refused(Refused::Ignored);
        }
        if !room_ok {
            return Decision::Refused(Refused::NotForUs);
        }
        if invite.signalling == Signalling::ToDevice && invite.mesh {
            return Decision::Mesh;
        }
        let me = self.local;
        let parts = invite.parts;
        // Addressing: to our user (or everyone), to our device (or all devices).
        let addressed = parts.invitee.as_deref().is_none_or(|i| i == me.user_id.as_str())
            && parts.invitee_device_id.as_deref().is_none_or(|d| d == me.device_id.as_str());
        // Our own user may call us only device-to-device, explicitly addressed, from another device.
        let own_ok = *invite.sender != me.user_id
            || (parts.invitee.as_deref() == Some(me.user_id.as_str())
                && parts.invitee_device_id.as_deref() == Some(me.device_id.as_str())
                && invite.device.is_none_or(|d| *d != me.device_id));
        if !addressed || !own_ok {
            return Decision::Refused(Refused::NotForUs);
        }
        if invite.signalling == Signalling::ToDevice && invite.device.is_none() {
            // We could not answer: nobody to address the reply to.
            return Decision::Refused(Refused::Malformed);
        }
        let remaining_ms = lifetime(parts.lifetime, self.config).saturating_sub(invite.age_ms.unwrap_or(0));
        if remaining_ms <= self.config.ring_grace_ms {
            return Decision::Refused(Refused::Expired);
        }
        let (sender, call_id) = (invite.sender, invite.call_id);
        if !self.gate.admit_new_call(self.now, sender, call_id, self.config.max_new_calls_per_minute) {
            return Decision::Refused(Refused::RateLimited);
        }
        let with_sender = |c: &&LiveCall<'_>| *c.room_id == *invite.room_id && *c.peer == *sender;
        let glare_with = calls.iter().filter(with_sender).find(|c| {
            c.direction == CallDirection::Outgoing && c.signalling == invite.signalling && c.is_inviting()
        });
        // One live call per pair: a new invite from the same peer in the same room supersedes an
        // older call that is not in glare.
        let supersede: Vec<CallId> =
            calls.iter().filter(with_sender).filter(|c| !c.is_inviting()).map(|c| c.id.clone()).collect();
        let awaited = if glare_with.is_none() && invite.signalling == Signalling::Room {
            self.awaited.take(invite.room_id, sender, self.now)
        } else {
            None
        };
        let outcome = if let Some(a) = awaited {
            // Glare whose other invite lagged behind its hangup of ours: this is the replacement.
            tracing::debug!(ours = %a.old, incoming = %call_id, "the callee's invite replaces our call");
            let replaces =
                Replacement { old: a.old, call_type: a.call_type, mutes: a.mutes, hang_up_old: false };
            Outcome::Ring { remaining_ms, replaces: Some(replaces) }
        } else if let Some(ours) = glare_with {
            match glare::resolve(ours.id.as_str(), call_id.as_str(), ours.state == CallState::InviteSent) {
                glare::GlareOutcome::OursWins => {
                    tracing::debug!(ours = %ours.id, incoming = %call_id, "glare: our call wins");
                    Outcome::OursWins { ours: ours.id.clone() }
                }
                glare::GlareOutcome::IncomingWins | glare::GlareOutcome::ReplaceOurs => {
                    tracing::debug!(ours = %ours.id, incoming = %call_id, "glare: the incoming call replaces ours");
                    let replaces = Replacement {
                        old: ours.id.clone(),
                        call_type: ours.offered_type,
                        mutes: ours.mutes,
                        hang_up_old: true,
                    };
                    Outcome::Ring { remaining_ms, replaces: Some(replaces) }
                }
            }
        } else if !can_ring(self.can_handle_override, self.config, || {
            // The superseded calls are ended first, so they do not make us busy.
            calls.iter().any(|c| c.is_engaged() && !supersede.contains(c.id))
        }) {
            // One busy reply (and one missed-call event) per caller per window.
            let reply = self.gate.busy_reply_allowed(self.now, sender).then(|| {
                let reason = Some(EndReason::UserBusy.wire_reason().to_owned());
                match (self.config.busy_signal, invite.version) {
                    (BusySignal::Reject, CallVersion::V1) => CallEvent::Reject { reason },
                    _ => CallEvent::Hangup { reason },
                }
            });
            Outcome::Busy { reply }
        } else {
            Outcome::Ring { remaining_ms, replaces: None }
        };
        Decision::Admitted { supersede, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_calls_are_budgeted_per_sender() {
        let mut g = Gate::default();
        let (m, a) = (UserId::from("@m:x"), UserId::from("@a:x"));
        let admitted = (0..10_000)
            .filter(|n| g.admit_new_call(Timestamp(0), &m, &CallId::from(format!("c{n}").as_str()), 30))
            .count();
        assert_eq!(admitted, 30);
        assert!(g.admit_new_call(Timestamp(0), &a, &CallId::from("a1"), 30), "another sender is unaffected");
        g.expire(Timestamp(NEW_CALL_WINDOW_MS));
        assert!(g.admit_new_call(Timestamp(NEW_CALL_WINDOW_MS), &m, &CallId::from("later"), 30));
    }

    #[test]
    fn one_busy_reply_per_window() {
        let mut g = Gate::default();
        let m = UserId::from("@m:x");
        assert!(g.busy_reply_allowed(Timestamp(0), &m));
        assert!(!g.busy_reply_allowed(Timestamp(1), &m));
        g.expire(Timestamp(BUSY_REPLY_WINDOW_MS));
        assert!(g.busy_reply_allowed(Timestamp(BUSY_REPLY_WINDOW_MS), &m));
    }

    #[test]
    fn lifetimes_are_capped() {
        let c = Config::default();
        assert_eq!(lifetime(Some(u64::MAX), &c), 90_000);
        assert_eq!(lifetime(Some(10_000), &c), 10_000);
        assert_eq!(lifetime(None, &c), c.default_remote_lifetime_ms);
    }
    /// The admission of 1:1 invites, without a machine.
    mod admission {
        use super::super::*;
        use crate::call::glare::AwaitedReplacements;
        use crate::media::SessionDescription;

        struct World {
            config: Config,
            local: LocalDevice,
            gate: Gate,
            awaited: AwaitedReplacements,
            can_handle_override: Option<bool>,
        }

        impl World {
            fn new() -> World {
                World {
                    config: Config::default(),
                    local: LocalDevice::new("@me:x", "ME"),
                    gate: Gate::default(),
                    awaited: AwaitedReplacements::default(),
                    can_handle_override: None,
                }
            }

            fn admit(&mut self, invite: &Invite<'_>, calls: &[LiveCall<'_>]) -> Decision {
                Admission {
                    config: &self.config,
                    local: &self.local,
                    now: Timestamp(1_000),
                    can_handle_override: self.can_handle_override,
                    gate: &mut self.gate,
                    awaited: &mut self.awaited,
                }
                .admit(invite, true, calls)
            }
        }

        fn parts(invitee: Option<&str>, device: Option<&str>) -> InviteParts {
            InviteParts {
                offer: SessionDescription::offer("v=0"),
                lifetime: Some(60_000),
                invitee: invitee.map(str::to_owned),
                invitee_device_id: device.map(str::to_owned),
                metadata: None,
                capabilities: Default::default(),
            }
        }

        struct Ids {
            call: CallId,
            room: RoomId,
            bob: UserId,
            bob_device: DeviceId,
        }

        fn ids(call: &str) -> Ids {
            Ids {
                call: CallId::from(call),
                room: RoomId::from("!r:x"),
                bob: UserId::from("@bob:x"),
                bob_device: DeviceId::from("BOB"),
            }
        }

        fn invite<'a>(ids: &'a Ids, parts: &'a InviteParts) -> Invite<'a> {
            Invite {
                call_id: &ids.call,
                room_id: &ids.room,
                sender: &ids.bob,
                device: Some(&ids.bob_device),
                signalling: Signalling::Room,
                age_ms: None,
                version: CallVersion::V1,
                mesh: false,
                parts,
            }
        }

        fn live<'a>(ids: &'a Ids, direction: CallDirection, state: CallState) -> LiveCall<'a> {
            LiveCall {
                id: &ids.call,
                room_id: &ids.room,
                peer: &ids.bob,
                direction,
                signalling: Signalling::Room,
                state,
                offered_type: CallType::Voice,
                mutes: (true, false),
            }
        }

        fn ring(replaces: Option<Replacement>) -> Decision {
            Decision::Admitted {
                supersede: vec![],
                outcome: Outcome::Ring { remaining_ms: 60_000, replaces },
            }
        }

        #[test]
        fn screening_refuses_before_anything_is_counted() {
            let mut w = World::new();
            let id = ids("c1");
            let to_me = parts(None, None);
            assert_eq!(w.admit(&invite(&id, &to_me), &[]), ring(None));
            let to_other = parts(Some("@other:x"), None);
            assert_eq!(w.admit(&invite(&id, &to_other), &[]), Decision::Refused(Refused::NotForUs));
            let to_other_device = parts(None, Some("OTHER"));
            assert_eq!(w.admit(&invite(&id, &to_other_device), &[]), Decision::Refused(Refused::NotForUs));
            let old = Invite { age_ms: Some(60_000 - w.config.ring_grace_ms), ..invite(&id, &to_me) };
            assert_eq!(w.admit(&old, &[]), Decision::Refused(Refused::Expired));
            let no_device = Invite { signalling: Signalling::ToDevice, device: None, ..invite(&id, &to_me) };
            assert_eq!(w.admit(&no_device, &[]), Decision::Refused(Refused::Malformed));
            let mesh = Invite { signalling: Signalling::ToDevice, mesh: true, ..invite(&id, &to_me) };
            assert_eq!(w.admit(&mesh, &[]), Decision::Mesh);
            w.gate.set_ignored([id.bob.clone()]);
            assert_eq!(w.admit(&invite(&id, &to_me), &[]), Decision::Refused(Refused::Ignored));
        }

        #[test]
        fn our_own_user_rings_only_device_to_device_from_another_device() {
            let mut w = World::new();
            let mut id = ids("c1");
            id.bob = w.local.user_id.clone();
            let everyone = parts(None, None);
            assert_eq!(w.admit(&invite(&id, &everyone), &[]), Decision::Refused(Refused::NotForUs));
            let explicit = parts(Some("@me:x"), Some("ME"));
            assert_eq!(w.admit(&invite(&id, &explicit), &[]), ring(None));
            id.bob_device = w.local.device_id.clone();
            assert_eq!(w.admit(&invite(&id, &explicit), &[]), Decision::Refused(Refused::NotForUs));
        }

        #[test]
        fn busy_replies_once_per_window_and_the_override_wins() {
            let mut w = World::new();
            let (id, other) = (ids("c1"), Ids { bob: UserId::from("@carol:x"), ..ids("c0") });
            let p = parts(None, None);
            let engaged = [live(&other, CallDirection::Incoming, CallState::Connected)];
            let reply = Some(CallEvent::Reject { reason: Some("user_busy".into()) });
            let busy = |reply| Decision::Admitted { supersede: vec![], outcome: Outcome::Busy { reply } };
            assert_eq!(w.admit(&invite(&id, &p), &engaged), busy(reply));
            assert_eq!(w.admit(&invite(&ids("c2"), &p), &engaged), busy(None), "one reply per window");
            let id3 = ids("c3");
            let v0 = Invite { version: CallVersion::V0, ..invite(&id3, &p) };
            w.gate = Gate::default();
            let hangup = Some(CallEvent::Hangup { reason: Some("user_busy".into()) });
            assert_eq!(w.admit(&v0, &engaged), busy(hangup), "version 0 callers get a hangup");
            w.can_handle_override = Some(true);
            assert_eq!(w.admit(&invite(&ids("c4"), &p), &engaged), ring(None));
            w.can_handle_override = None;
            w.config.busy_when_in_call = false;
            assert_eq!(w.admit(&invite(&ids("c5"), &p), &engaged), ring(None));
        }

        #[test]
        fn a_new_invite_supersedes_the_peers_older_call_which_does_not_make_us_busy() {
            let mut w = World::new();
            let (id, old) = (ids("c2"), ids("c1"));
            let p = parts(None, None);
            let calls = [live(&old, CallDirection::Incoming, CallState::Connected)];
            let outcome = Outcome::Ring { remaining_ms: 60_000, replaces: None };
            assert_eq!(
                w.admit(&invite(&id, &p), &calls),
                Decision::Admitted { supersede: vec![old.call.clone()], outcome }
            );
        }

        #[test]
        fn glare_keeps_the_lower_call_id() {
            let mut w = World::new();
            let p = parts(None, None);
            let ours = ids("m");
            let calls = [live(&ours, CallDirection::Outgoing, CallState::InviteSent)];
            let replaced = Replacement {
                old: ours.call.clone(),
                call_type: CallType::Voice,
                mutes: (true, false),
                hang_up_old: true,
            };
            assert_eq!(w.admit(&invite(&ids("a"), &p), &calls), ring(Some(replaced.clone())));
            let lost = Decision::Admitted {
                supersede: vec![],
                outcome: Outcome::OursWins { ours: ours.call.clone() },
            };
            assert_eq!(w.admit(&invite(&ids("z"), &p), &calls), lost);
            // Our invite is not out yet: ours yields whatever the ids.
            let preparing = [live(&ours, CallDirection::Outgoing, CallState::CreateOffer)];
            assert_eq!(w.admit(&invite(&ids("z2"), &p), &preparing), ring(Some(replaced)));
        }

        #[test]
        fn the_callees_late_invite_replaces_the_call_it_ended() {
            let mut w = World::new();
            let p = parts(None, None);
            let id = ids("c2");
            w.awaited.expect(
                id.room.clone(),
                id.bob.clone(),
                CallId::from("c1"),
                CallType::Video,
                (false, true),
                Timestamp(5_000),
            );
            let replaced = Replacement {
                old: CallId::from("c1"),
                call_type: CallType::Video,
                mutes: (false, true),
                hang_up_old: false,
            };
            assert_eq!(w.admit(&invite(&id, &p), &[]), ring(Some(replaced)));
            assert_eq!(w.admit(&invite(&ids("c3"), &p), &[]), ring(None), "taken once");
        }
    }
}
