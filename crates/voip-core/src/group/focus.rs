//! Focus selection: on which LiveKit transport each member of a group call publishes.
//!
//! The one implementation of the rule (`voip-livekit` builds its SFU plan on it), following the
//! js-sdk's `CallMembership.getTransport`:
//!
//! * MatrixRTC state events: each member's own `focus_active.focus_selection` decides.
//!   `multi_sfu`: its own first LiveKit focus. `oldest_membership`: the first LiveKit focus of the
//!   call's oldest member. A missing or unknown selection: no transport.
//! * MSC4143 sticky members always publish on their first `rtc_transports` entry.
//! * famedly (`com.famedly.call.member`): a call has one backend, the one of its oldest
//!   membership; every member uses it.
//!
//! "First LiveKit focus" is the first `Focus::Livekit` that names a (non-empty) service URL; "oldest" is the
//! smallest `created` (ties: the smaller participant), whatever order the members come in.

use super::membership::MemberInfo;
use crate::ids::Participant;
use crate::wire::member::{Focus, FocusSelection, MembershipDialect};

/// A member's first LiveKit focus with a service URL.
pub fn first_livekit_focus(member: &MemberInfo) -> Option<&Focus> {
    member
        .foci
        .iter()
        .find(|f| matches!(f, Focus::Livekit { livekit_service_url: Some(url), .. } if !url.is_empty()))
}

/// The call's oldest member (smallest `created`, then the smaller participant).
pub fn oldest_member(members: &[MemberInfo]) -> Option<&MemberInfo> {
    members.iter().min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.participant.cmp(&b.participant)))
}

/// The focus `member` publishes on, given the call's oldest member.
pub fn publishing_focus<'a>(member: &'a MemberInfo, oldest: Option<&'a MemberInfo>) -> Option<&'a Focus> {
    match member.dialect {
        MembershipDialect::Sticky => first_livekit_focus(member),
        MembershipDialect::Famedly => oldest.and_then(first_livekit_focus),
        MembershipDialect::MatrixRtc => match member.focus_selection {
            Some(FocusSelection::MultiSfu) => first_livekit_focus(member),
            Some(FocusSelection::OldestMembership) => oldest.and_then(first_livekit_focus),
            None => None,
        },
    }
}

/// Where each of `members` (one call, any order) publishes, in the order given.
pub fn member_foci(members: &[MemberInfo]) -> Vec<(Participant, Option<Focus>)> {
    let oldest = oldest_member(members);
    members.iter().map(|m| (m.participant.clone(), publishing_focus(m, oldest).cloned())).collect()
}

/// As [`member_foci`], the service URL only (for `GroupCallInfo::transports`).
pub(crate) fn transports(members: &[MemberInfo]) -> Vec<(Participant, Option<String>)> {
    member_foci(members)
        .into_iter()
        .map(|(p, f)| {
            let url = match f {
                Some(Focus::Livekit { livekit_service_url, .. }) => livekit_service_url,
                _ => None,
            };
            (p, url)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, Timestamp, UserId};

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
            foci: vec![
                Focus::Mesh,
                Focus::Livekit { livekit_service_url: Some(url.into()), livekit_alias: None },
            ],
            focus_selection: sel,
            created: Timestamp(created),
            expires_at: Timestamp(u64::MAX),
            feeds: Vec::new(),
        }
    }

    fn urls(members: &[MemberInfo]) -> Vec<Option<String>> {
        transports(members).into_iter().map(|(_, u)| u).collect()
    }

    /// The cases where the two former implementations disagreed: members given newest first, a
    /// MatrixRTC member without `focus_selection`, famedly members (no selection at all).
    #[test]
    fn selection_is_per_member_and_oldest_is_by_creation_not_order() {
        use FocusSelection::*;
        let d = MembershipDialect::MatrixRtc;
        let members = [
            m("@new:x", 30, Some(OldestMembership), "https://c", d),
            m("@old:x", 10, Some(MultiSfu), "https://a", d),
            m("@mid:x", 20, Some(MultiSfu), "https://b", d),
            m("@odd:x", 25, None, "https://d", d),
        ];
        let a = Some("https://a".to_owned());
        assert_eq!(urls(&members), [a.clone(), a, Some("https://b".into()), None]);
    }

    #[test]
    fn famedly_members_share_the_oldest_backend() {
        let f = MembershipDialect::Famedly;
        let members = [m("@b:x", 20, None, "https://b", f), m("@a:x", 10, None, "https://a", f)];
        assert_eq!(urls(&members), [Some("https://a".into()), Some("https://a".into())]);
    }

    #[test]
    fn sticky_members_use_their_own_transport() {
        let s = MembershipDialect::Sticky;
        let members = [m("@b:x", 20, None, "https://b", s), m("@a:x", 10, None, "https://a", s)];
        assert_eq!(urls(&members), [Some("https://b".into()), Some("https://a".into())]);
        assert!(transports(&[]).is_empty());
    }

    #[test]
    fn a_focus_without_service_url_is_skipped() {
        let mut x = m("@a:x", 1, Some(FocusSelection::MultiSfu), "https://a", MembershipDialect::MatrixRtc);
        x.foci.insert(0, Focus::Livekit { livekit_service_url: None, livekit_alias: Some("r".into()) });
        assert_eq!(urls(&[x.clone()]), [Some("https://a".into())]);
        x.foci.retain(|f| matches!(f, Focus::Mesh));
        assert_eq!(urls(&[x]), [None]);
    }
}
