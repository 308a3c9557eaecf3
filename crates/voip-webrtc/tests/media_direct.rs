//! Two webrtc-rs engines on loopback, signalled directly by the test.

mod common;

use std::time::Duration;

use common::Pair;
use voip_core::media::{CallType, MediaCommand, MediaEvent, MediaKind};
use voip_webrtc::WebrtcConfig;

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
        // The first description carries the host candidate gathered at once
        // (`WebrtcConfig::with_sdp_candidates_wait`); anything trickled came after it, with the
        // real mid, and is not one the description already had.
        let descriptions: Vec<&str> = side
            .events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::LocalDescription { description } => Some(description.sdp.as_str()),
                _ => None,
            })
            .collect();
        let in_sdp: Vec<&str> = descriptions[0]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a="))
            .filter(|l| l.starts_with("candidate:"))
            .collect();
        assert!(
            in_sdp.iter().any(|c| c.contains("127.0.0.1") && c.contains("typ host")),
            "{}: no host candidate in the first description:\n{}",
            side.name,
            descriptions[0]
        );
        let first_desc = side.events.iter().position(|e| matches!(e, MediaEvent::LocalDescription { .. }));
        for (i, e) in side.events.iter().enumerate() {
            if let MediaEvent::LocalCandidate { candidate } = e {
                assert!(Some(i) > first_desc, "{}: candidate before the description", side.name);
                assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
                assert!(candidate.candidate.contains("127.0.0.1"), "{}", candidate.candidate);
                assert!(!in_sdp.contains(&candidate.candidate.as_str()), "{}: trickled twice", side.name);
            }
        }
        assert!(side.failures().is_empty(), "{}: {:?}", side.name, side.failures());

        let stats = side.engine.stats(&call).await.expect("stats");
        eprintln!(
            "{}: sent {} pkts / {} B, received {} pkts / {} B, lost {}, jitter {:?}, rtt {:?}, tone packets {}",
            side.name,
            stats.packets_sent,
            stats.bytes_sent,
            stats.packets_received,
            stats.bytes_received,
            stats.packets_lost,
            stats.jitter,
            stats.round_trip_time,
            t.stats.bundled_tone
        );
        assert!(stats.round_trip_time.is_some(), "{stats:?}");
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
    // Pure trickle (no candidates in the descriptions), so that B really gets A's candidates
    // only as candidates, before A's offer.
    let trickle_only = || WebrtcConfig::loopback().with_sdp_candidates_wait(Duration::ZERO);
    let mut p = Pair::new(trickle_only(), trickle_only());
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
    assert!(!candidates.is_empty(), "A trickled no candidate");
    assert!(
        !offer.sdp.contains("a=candidate:"),
        "trickle only, yet the offer has candidates:\n{}",
        offer.sdp
    );
    p.b.exec(&call, MediaCommand::CreatePeer { call_type: CallType::Voice });
    p.b.exec(&call, MediaCommand::AddRemoteCandidates { candidates });
    p.b.exec(&call, MediaCommand::set_remote_description(offer));
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
    p.a.exec(&call, MediaCommand::set_remote_description(answer));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_carries_vp8_and_opus_both_ways() {
    let mut p = Pair::loopback();
    p.connect(CallType::Video).await;
    let call = p.call.clone();
    let flowing = p
        .pump_until(Duration::from_secs(10), |p| {
            [(&p.a, "b-user"), (&p.b, "a-user")].iter().all(|(side, stream)| {
                side.remote(&call, stream, MediaKind::Video).is_some_and(|t| t.stats.frames >= 15)
                    && side.remote_packets(&call, stream, MediaKind::Audio) >= 25
            })
        })
        .await;
    assert!(flowing, "video did not flow both ways");
    for (side, stream) in [(&p.a, "b-user"), (&p.b, "a-user")] {
        let v = side.remote(&call, stream, MediaKind::Video).expect("remote video");
        assert!(v.stats.keyframes >= 1, "{}: no keyframe", side.name);
        assert_eq!(v.stats.malformed_vp8, 0);
        let a = side.remote(&call, stream, MediaKind::Audio).expect("remote audio");
        assert_eq!(a.stats.invalid_opus, 0);
        let stats = side.engine.stats(&call).await.expect("stats");
        let kinds: Vec<_> = stats.streams.iter().map(|s| (s.outbound, s.kind)).collect();
        for k in [
            (false, MediaKind::Audio),
            (false, MediaKind::Video),
            (true, MediaKind::Audio),
            (true, MediaKind::Video),
        ] {
            assert!(kinds.contains(&k), "{}: missing stream {k:?} in {kinds:?}", side.name);
        }
    }
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_stops_media_in_the_held_direction_and_unhold_resumes_it() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    assert!(
        p.pump_until(Duration::from_secs(10), |p| p.a.remote_packets(&call, "b-user", MediaKind::Audio)
            >= 10)
            .await
    );

    // A puts B on hold: A's transceivers go sendonly with A's tracks disabled; B answers recvonly.
    p.a.exec(&call, MediaCommand::SetHold { on_hold: true });
    p.negotiate(false).await;
    let held = p
        .pump_until(Duration::from_secs(5), |p| {
            p.b.engine.local_tracks(&call).is_ok_and(|t| t.iter().all(|t| !t.sending))
        })
        .await;
    assert!(held, "B still sends while held: {:?}", p.b.engine.local_tracks(&call));
    assert!(p.a.engine.is_on_hold(&call).unwrap());
    let a_local = p.a.engine.local_tracks(&call).unwrap();
    assert!(a_local.iter().all(|t| !t.enabled), "holder's tracks are disabled: {a_local:?}");
    // B's media no longer reaches A (allow packets in flight), A only sends silence to B.
    let before_b_to_a = p.a.remote_packets(&call, "b-user", MediaKind::Audio);
    let silence_before = p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.opus_silence;
    let b_got_silence = p
        .pump_until(Duration::from_secs(5), |p| {
            p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.opus_silence >= silence_before + 25
        })
        .await;
    assert!(b_got_silence, "held side receives silence frames from the holder");
    let after_b_to_a = p.a.remote_packets(&call, "b-user", MediaKind::Audio);
    assert!(
        after_b_to_a <= before_b_to_a + 10,
        "B→A kept flowing during hold: {before_b_to_a} → {after_b_to_a}"
    );
    let tone_during_hold = p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.bundled_tone;

    // Resume.
    p.a.exec(&call, MediaCommand::SetHold { on_hold: false });
    p.negotiate(false).await;
    let resumed = p
        .pump_until(Duration::from_secs(5), |p| {
            p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= after_b_to_a + 25
                && p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.bundled_tone
                    >= tone_during_hold + 25
        })
        .await;
    assert!(resumed, "media did not resume both ways after unhold");
    p.assert_no_failures();
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshare_arrives_as_a_second_video_stream_and_ends_when_removed() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    p.a.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "a-screen".into(),
            purpose: voip_core::media::StreamPurpose::Screenshare,
            audio: false,
            video: true,
        },
    );
    p.negotiate(false).await;
    let arrived = p
        .pump_until(Duration::from_secs(10), |p| {
            p.b.remote(&call, "a-screen", MediaKind::Video)
                .is_some_and(|t| t.stats.frames >= 10 && t.stats.keyframes >= 1)
        })
        .await;
    assert!(arrived, "screenshare video did not arrive: {:?}", p.b.engine.remote_tracks(&call));
    assert!(p
        .b
        .events
        .contains(&MediaEvent::RemoteTrack { stream_id: "a-screen".into(), kind: MediaKind::Video }));
    let local = p.a.engine.local_tracks(&call).unwrap();
    assert!(local.iter().any(|t| t.stream_id.as_str() == "a-screen"
        && t.purpose == voip_core::media::StreamPurpose::Screenshare
        && t.sending));
    // Usermedia audio keeps flowing next to it.
    let audio = p.b.remote_packets(&call, "a-user", MediaKind::Audio);
    assert!(
        p.pump_until(Duration::from_secs(5), |p| p.b.remote_packets(&call, "a-user", MediaKind::Audio)
            > audio + 10)
            .await
    );

    p.a.exec(&call, MediaCommand::RemoveLocalStream { stream_id: "a-screen".into() });
    p.negotiate(false).await;
    let ended = p
        .pump_until(Duration::from_secs(5), |p| {
            p.b.events.contains(&MediaEvent::RemoteTrackEnded {
                stream_id: "a-screen".into(),
                kind: MediaKind::Video,
            })
        })
        .await;
    assert!(ended, "screenshare end not reported: {:?}", p.b.events);
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_ice_failure_recovers_with_an_ice_restart() {
    use voip_core::media::ConnectionState;
    use voip_webrtc::WebrtcConfig;
    let fast = || {
        WebrtcConfig::loopback().with_ice_timeouts(
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(200)),
        )
    };
    let mut p = Pair::new(fast(), fast());
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    assert!(
        p.pump_until(Duration::from_secs(5), |p| p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= 10)
            .await
    );

    // The network of A goes away: both sides lose consent and fail.
    p.a.engine.network().set_blocked(true);
    let failed = p
        .pump_until(Duration::from_secs(10), |p| {
            p.a.states().contains(&ConnectionState::Failed) && p.b.states().contains(&ConnectionState::Failed)
        })
        .await;
    assert!(failed, "ICE did not fail: a {:?} b {:?}", p.a.states(), p.b.states());

    // Network back, then an ICE restart (what the core does on failure).
    p.a.engine.network().set_blocked(false);
    let a_states = p.a.states().len();
    let before = p.a.remote_packets(&call, "b-user", MediaKind::Audio);
    p.negotiate(true).await;
    let recovered = p
        .pump_until(Duration::from_secs(10), |p| {
            p.a.states()[a_states..].contains(&ConnectionState::Connected)
                && p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= before + 25
        })
        .await;
    assert!(recovered, "no recovery: a {:?} b {:?}", p.a.states(), p.b.states());
    p.hang_up_and_check_no_leaks().await;
}
