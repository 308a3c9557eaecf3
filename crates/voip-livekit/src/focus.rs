//! Focus selection: on which LiveKit transport each member of a call publishes, and so which
//! services this device needs tokens from.
//!
//! The rule itself lives in the core ([`voip_core::focus`]: `multi_sfu`, `oldest_membership`,
//! famedly's shared backend, sticky members); this module turns it into [`LivekitFocus`]es and
//! the [`SfuPlan`] of this device.

use std::collections::BTreeMap;

use voip_core::{Focus, FocusSelection, MemberInfo, MembershipDialect, Participant, Timestamp};

use crate::discovery::LivekitFocus;

/// Where one member publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberTransport {
    /// The member.
    pub participant: Participant,
    /// Its transport, `None` when its membership names none that can be used.
    pub focus: Option<LivekitFocus>,
}

/// Where each of `members` (one call, any order) publishes: the rule of
/// [`voip_core::focus::publishing_focus`] (the only implementation), as [`LivekitFocus`]es.
pub fn member_transports(members: &[MemberInfo]) -> Vec<MemberTransport> {
    voip_core::focus::member_foci(members)
        .into_iter()
        .map(|(participant, focus)| MemberTransport {
            participant,
            focus: focus.as_ref().and_then(LivekitFocus::from_focus),
        })
        .collect()
}

/// Our own membership, as far as focus selection needs it (the core writes it with
/// `multi_sfu` and our one focus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnMembership {
    /// Us.
    pub participant: Participant,
    /// The focus we joined with.
    pub focus: LivekitFocus,
    /// When we joined; `None` if not known yet (then we count as the newest member).
    pub created: Option<Timestamp>,
}

/// What this device connects to: the SFU it publishes on and the SFUs it subscribes on (with
/// the members publishing there). Each distinct service needs its own token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SfuPlan {
    /// Where we publish.
    pub publish: Option<LivekitFocus>,
    /// Every transport in use, with who publishes there (ours included when others are there).
    pub subscribe: BTreeMap<LivekitFocus, Vec<Participant>>,
    /// Members with no usable transport (unknown focus selection, no LiveKit focus).
    pub unreachable: Vec<Participant>,
}

impl SfuPlan {
    /// Every service this device needs a token from (publish first).
    pub fn services(&self) -> Vec<&LivekitFocus> {
        let mut v: Vec<&LivekitFocus> = self.publish.iter().collect();
        v.extend(self.subscribe.keys().filter(|f| Some(*f) != self.publish.as_ref()));
        v
    }
}

/// The plan for `own` in a call whose other members are `others` (as `Voip::group_call` lists
/// them). We publish where our own focus selection (`multi_sfu`) says: our own focus.
pub fn sfu_plan(own: &OwnMembership, others: &[MemberInfo]) -> SfuPlan {
    let dialect = others.first().map_or(MembershipDialect::MatrixRtc, |m| m.dialect);
    let mut all: Vec<MemberInfo> = others.to_vec();
    // Our membership as the core writes it; without a known join time we are the newest.
    let newest = others.iter().map(|m| m.created).max().unwrap_or_default().plus(1);
    all.push(MemberInfo {
        participant: own.participant.clone(),
        dialect,
        application: "m.call".into(),
        scope: "m.room".into(),
        foci: vec![Focus::Livekit {
            livekit_service_url: Some(own.focus.service_url.clone()),
            livekit_alias: own.focus.alias.clone(),
        }],
        focus_selection: Some(FocusSelection::MultiSfu),
        created: own.created.unwrap_or(newest),
        expires_at: Timestamp(u64::MAX),
        feeds: Vec::new(),
    });
    let mut plan = SfuPlan::default();
    for t in member_transports(&all) {
        if t.participant == own.participant {
            plan.publish = t.focus;
            continue;
        }
        match t.focus {
            Some(f) => plan.subscribe.entry(f).or_default().push(t.participant),
            None => plan.unreachable.push(t.participant),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use voip_core::{DeviceId, UserId};

    fn m(
        user: &str,
        created: u64,
        sel: Option<FocusSelection>,
        url: &str,
        d: MembershipDialect,
    ) -> MemberInfo {
        MemberInfo {
            participant: Participant {
                user_id: UserId::from(user),
                device_id: DeviceId::from("D"),
                member_id: format!("{user}:D"),
            },
            dialect: d,
            application: "m.call".into(),
            scope: "m.room".into(),
            foci: vec![Focus::Livekit { livekit_service_url: Some(url.into()), livekit_alias: None }],
            focus_selection: sel,
            created: Timestamp(created),
            expires_at: Timestamp(u64::MAX),
            feeds: Vec::new(),
        }
    }

    fn urls(ts: &[MemberTransport]) -> Vec<Option<&str>> {
        ts.iter().map(|t| t.focus.as_ref().map(|f| f.service_url.as_str())).collect()
    }

    #[test]
    fn oldest_membership_and_multi_sfu_mix_per_member() {
        use FocusSelection::*;
        let d = MembershipDialect::MatrixRtc;
        let members = [
            m("@new:x", 30, Some(OldestMembership), "https://c", d),
            m("@old:x", 10, Some(MultiSfu), "https://a", d),
            m("@mid:x", 20, Some(MultiSfu), "https://b", d),
            m("@odd:x", 25, None, "https://d", d),
        ];
        assert_eq!(
            urls(&member_transports(&members)),
            [Some("https://a"), Some("https://a"), Some("https://b"), None]
        );
        // The oldest asks for oldest_membership: it uses its own.
        let members = [
            m("@o:x", 1, Some(OldestMembership), "https://o", d),
            m("@n:x", 2, Some(MultiSfu), "https://n", d),
        ];
        assert_eq!(urls(&member_transports(&members)), [Some("https://o"), Some("https://n")]);
    }

    #[test]
    fn famedly_shares_the_oldest_backend_and_sticky_uses_its_own() {
        let f = MembershipDialect::Famedly;
        let members = [m("@b:x", 20, None, "https://b", f), m("@a:x", 10, None, "https://a", f)];
        assert_eq!(urls(&member_transports(&members)), [Some("https://a"), Some("https://a")]);
        let s = MembershipDialect::Sticky;
        let members = [
            m("@b:x", 20, Some(FocusSelection::MultiSfu), "https://b", s),
            m("@a:x", 10, None, "https://a", s),
        ];
        assert_eq!(urls(&member_transports(&members)), [Some("https://b"), Some("https://a")]);
        assert!(member_transports(&[]).is_empty());
    }

    #[test]
    fn plan_groups_subscriptions_per_service() {
        use FocusSelection::*;
        let d = MembershipDialect::MatrixRtc;
        let own = OwnMembership {
            participant: Participant {
                user_id: UserId::from("@me:x"),
                device_id: DeviceId::from("D"),
                member_id: "@me:x:D".into(),
            },
            focus: LivekitFocus { service_url: "https://mine".into(), alias: None },
            created: None,
        };
        let others = [
            m("@a:x", 10, Some(MultiSfu), "https://a", d),
            m("@b:x", 20, Some(OldestMembership), "https://b", d),
            m("@c:x", 30, Some(MultiSfu), "https://mine", d),
            m("@e:x", 40, None, "https://e", d),
        ];
        let plan = sfu_plan(&own, &others);
        assert_eq!(plan.publish.as_ref().map(|f| f.service_url.as_str()), Some("https://mine"));
        let a = LivekitFocus { service_url: "https://a".into(), alias: None };
        assert_eq!(plan.subscribe[&a].len(), 2);
        assert_eq!(plan.unreachable.len(), 1);
        assert_eq!(plan.services().len(), 2);
        // We are the oldest and someone follows oldest_membership: it publishes on our SFU.
        let own_old = OwnMembership { created: Some(Timestamp(1)), ..own };
        let plan = sfu_plan(&own_old, &others[1..2]);
        assert_eq!(
            plan.subscribe.keys().map(|f| f.service_url.as_str()).collect::<Vec<_>>(),
            ["https://mine"]
        );
        assert_eq!(plan.services().len(), 1);
    }
}
