//! Two webrtc-rs engines on loopback, signalled directly by the test.

mod common;

use std::time::Duration;

use common::Pair;
use voip_core::media::{CallType, MediaCommand, MediaEvent, MediaKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_call_carries_valid_opus_both_ways() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let call = p.call.clone();

    let flowing = p
        .pump_until(Duration::from_secs(10), |p| {
            p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= 50
                && p.b.remote_packets(&call, "a-user", MediaKind::Audio) >= 50
        })
        .await;
    assert!(flowing, "media did not flow both ways");

    for (side, stream) in [(&p.a, "b-user"), (&p.b, "a-user")] {
        let t = side.remote(&call, stream, MediaKind::Audio).expect("remote audio track");
        assert_eq!(t.stats.invalid_opus, 0, "{}: invalid Opus received", side.name);
        assert_eq!(t.stats.valid_opus, t.stats.packets);
        assert!(t.stats.bundled_tone >= 45, "{}: tone packets {}", side.name, t.stats.bundled_tone);
        assert!(side
            .events
            .contains(&MediaEvent::RemoteTrack { stream_id: stream.into(), kind: MediaKind::Audio }));
        // Candidates came after the description, with the real mid.
        let first_desc = side.events.iter().position(|e| matches!(e, MediaEvent::LocalDescription { .. }));
        let first_cand = side.events.iter().position(|e| matches!(e, MediaEvent::LocalCandidate { .. }));
        assert!(first_desc < first_cand, "{}: candidate before description", side.name);
        for e in &side.events {
            if let MediaEvent::LocalCandidate { candidate } = e {
                assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
                assert!(candidate.candidate.contains("127.0.0.1"), "{}", candidate.candidate);
            }
        }
        assert!(side.failures().is_empty(), "{}: {:?}", side.name, side.failures());

        let stats = side.engine.stats(&call).await.expect("stats");
        assert!(stats.packets_sent >= 40 && stats.bytes_sent > 0, "{stats:?}");
        assert!(stats.packets_received >= 40 && stats.bytes_received > 0, "{stats:?}");
        let pair = stats.selected_pair.as_ref().expect("selected pair");
        assert_eq!(pair.local.as_ref().map(|c| c.address.as_str()), Some("127.0.0.1"), "{pair:?}");
        let local = side.engine.local_tracks(&call).expect("local tracks");
        assert_eq!(local.len(), 1);
        assert!(local[0].sending && local[0].enabled && local[0].frames_sent > 0);
    }
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_carries_the_stream_id_as_msid_and_remote_candidates_may_come_first() {
    let mut p = Pair::loopback();
    // No trickle: B gets A's candidates before its remote description (the engine buffers).
    p.trickle = false;
    let call = p.call.clone();
    p.a.exec(&call, MediaCommand::CreatePeer { call_type: CallType::Voice });
    p.a.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "stream-xyz".into(),
            purpose: voip_core::media::StreamPurpose::Usermedia,
            audio: true,
            video: false,
        },
    );
    p.a.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
    let offer = p.take_description(true).await;
    assert!(offer.sdp.contains("a=msid:stream-xyz "), "{}", offer.sdp);
    let gathered =
        p.pump_until(Duration::from_secs(5), |p| p.a.events.contains(&MediaEvent::GatheringComplete)).await;
    assert!(gathered);
    let candidates: Vec<_> =
        p.a.events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::LocalCandidate { candidate } => Some(candidate.clone()),
                _ => None,
            })
            .collect();
    p.b.exec(&call, MediaCommand::CreatePeer { call_type: CallType::Voice });
    p.b.exec(&call, MediaCommand::AddRemoteCandidates { candidates });
    p.b.exec(&call, MediaCommand::SetRemoteDescription { description: offer });
    p.b.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "stream-abc".into(),
            purpose: voip_core::media::StreamPurpose::Usermedia,
            audio: true,
            video: false,
        },
    );
    p.b.exec(&call, MediaCommand::CreateAnswer);
    let answer = p.take_description(false).await;
    assert!(answer.sdp.contains("a=msid:stream-abc "), "{}", answer.sdp);
    p.a.exec(&call, MediaCommand::SetRemoteDescription { description: answer });
    p.trickle = true;
    let flowing = p
        .pump_until(Duration::from_secs(10), |p| {
            p.a.remote_packets(&call, "stream-abc", MediaKind::Audio) >= 10
                && p.b.remote_packets(&call, "stream-xyz", MediaKind::Audio) >= 10
        })
        .await;
    assert!(flowing, "a {:?} b {:?}", p.a.states(), p.b.states());
    p.hang_up_and_check_no_leaks().await;
}
