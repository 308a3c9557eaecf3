//! The DTLS role (`a=setup:`) stays what the first exchange established when the call is
//! renegotiated from either side (RFC 8842 §5.5, RFC 9429 §5.3.2). libwebrtc rejects an answer
//! that flips it ("Failed to set SSL role for the transport"), which is what webrtc-rs 0.21.1
//! did when the original answerer re-offered: it always answers with its configured role.

mod common;

use std::time::Duration;

use common::{Pair, Side};
use voip_core::media::{CallType, MediaCommand, MediaEvent, MediaKind, SdpType, SessionDescription};

/// The `a=setup:` value of every m-section (and the session level) of an SDP.
fn setups(sdp: &str) -> Vec<String> {
    sdp.lines().filter_map(|l| l.trim_end().strip_prefix("a=setup:")).map(str::to_owned).collect()
}

/// The single `a=setup:` value an SDP uses everywhere.
fn setup(sdp: &str) -> String {
    let all = setups(sdp);
    assert!(!all.is_empty(), "no a=setup in\n{sdp}");
    assert!(all.iter().all(|s| *s == all[0]), "mixed a=setup values {all:?}");
    all[0].clone()
}

/// The role the other side of an answer takes: the offerer of `active` is `passive`.
fn opposite(role: &str) -> &'static str {
    match role {
        "active" => "passive",
        "passive" => "active",
        other => panic!("an answer must say active or passive, not {other}"),
    }
}

/// The local descriptions a side produced, in order.
fn local_descriptions(side: &Side) -> Vec<SessionDescription> {
    side.events
        .iter()
        .filter_map(|e| match e {
            MediaEvent::LocalDescription { description } => Some(description.clone()),
            _ => None,
        })
        .collect()
}

/// Both directions carry at least `more` packets beyond what they had.
async fn flows_both_ways(p: &mut Pair, more: u64) -> bool {
    let call = p.call.clone();
    let a0 = p.a.remote_packets(&call, "b-user", MediaKind::Audio);
    let b0 = p.b.remote_packets(&call, "a-user", MediaKind::Audio);
    p.pump_until(Duration::from_secs(10), |p| {
        p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= a0 + more
            && p.b.remote_packets(&call, "a-user", MediaKind::Audio) >= b0 + more
    })
    .await
}

/// A placed the call (offered, B answered); B then re-offers (hold, resume) and A answers. A's
/// re-answers keep the role B's first answer gave A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offerer_keeps_its_dtls_role_when_answering_a_re_offer() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let call = p.call.clone();

    let a_first = local_descriptions(&p.a);
    let b_first = local_descriptions(&p.b);
    assert_eq!((a_first.len(), b_first.len()), (1, 1));
    assert_eq!(a_first[0].sdp_type, SdpType::Offer);
    assert_eq!(setup(&a_first[0].sdp), "actpass", "an initial offer says actpass");
    assert_eq!(b_first[0].sdp_type, SdpType::Answer);
    let a_role = opposite(&setup(&b_first[0].sdp));
    assert!(flows_both_ways(&mut p, 25).await, "no media after the first exchange");

    for on_hold in [true, false] {
        p.b.exec(&call, MediaCommand::SetHold { on_hold });
        let (offer, answer) = p.negotiate_from(false, false).await;
        assert_eq!(offer.sdp_type, SdpType::Offer);
        assert_eq!(answer.sdp_type, SdpType::Answer);
        assert_eq!(
            setup(&answer.sdp),
            a_role,
            "A's answer to B's re-offer (hold {on_hold}, offer said {}) flips the DTLS role",
            setup(&offer.sdp)
        );
    }
    assert!(flows_both_ways(&mut p, 25).await, "media did not flow after the renegotiations");
    p.assert_no_failures();
    p.hang_up_and_check_no_leaks().await;
}

/// The mirror case: B answered first; A re-offers and B answers again, then B re-offers and A
/// answers. Each side's role stays what the first exchange made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answerer_keeps_its_dtls_role_in_later_exchanges_either_way() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let b_role = setup(&local_descriptions(&p.b)[0].sdp);
    let a_role = opposite(&b_role);

    // A re-offers (an ICE restart too, which keeps the DTLS association): B answers again.
    for ice_restart in [false, true] {
        let (_, answer) = p.negotiate_from(true, ice_restart).await;
        assert_eq!(setup(&answer.sdp), b_role, "B's re-answer (ice restart {ice_restart})");
    }
    // B re-offers: A answers.
    let (_, answer) = p.negotiate_from(false, false).await;
    assert_eq!(setup(&answer.sdp), a_role, "A's answer to B's re-offer");
    // And A again.
    let (_, answer) = p.negotiate_from(true, false).await;
    assert_eq!(setup(&answer.sdp), b_role, "B's answer after roles alternated");

    assert!(flows_both_ways(&mut p, 25).await, "media did not flow after the renegotiations");
    p.assert_no_failures();
    p.hang_up_and_check_no_leaks().await;
}
