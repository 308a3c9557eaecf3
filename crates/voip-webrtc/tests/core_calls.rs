//! Two `voip_core::VoipMachine` cores, each with a real webrtc-rs engine on loopback, signalling
//! through an in-process room.

mod common;

use std::time::Duration;

use common::cores::Cores;
use voip_core::media::{CallType, MediaCommand, MediaKind, StreamPurpose};
use voip_core::{CallState, Command, Config, Event};
use voip_webrtc::WebrtcConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_call_through_two_cores_carries_opus_both_ways() {
    let mut c = Cores::new(Config::default(), WebrtcConfig::loopback);
    let call = c.call_and_answer(CallType::Voice).await;
    let flowing = c
        .run_until(Duration::from_secs(10), |c| {
            c.remote_packets(0, &call, MediaKind::Audio) >= 50
                && c.remote_packets(1, &call, MediaKind::Audio) >= 50
        })
        .await;
    assert!(flowing, "audio did not flow both ways");
    for d in 0..2 {
        let tracks = c.devs[d].engine.remote_tracks(&call).unwrap();
        let audio = tracks.iter().find(|t| t.kind == MediaKind::Audio).expect("remote audio");
        assert_eq!(audio.stats.invalid_opus, 0);
        assert!(audio.stats.bundled_tone >= 45, "{:?}", audio.stats);
        assert_eq!(audio.purpose, Some(StreamPurpose::Usermedia), "purpose from the core's stream metadata");
        // The stream id the core put in sdp_stream_metadata is the one in the peer's SDP.
        let streams = c.devs[d].events.iter().rev().find_map(|e| match e {
            Event::StreamsChanged { remote, .. } => Some(remote.clone()),
            _ => None,
        });
        let remote = streams.expect("streams changed");
        assert!(remote.iter().any(|s| s.stream_id == audio.stream_id && s.has_audio), "{remote:?}");
    }
    c.hang_up_and_check_no_leaks(0, &call).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_with_hold_and_screenshare_through_two_cores() {
    let mut c = Cores::new(Config::default(), WebrtcConfig::loopback);
    let call = c.call_and_answer(CallType::Video).await;
    let flowing = c
        .run_until(Duration::from_secs(10), |c| {
            (0..2).all(|d| {
                c.devs[d].engine.remote_tracks(&call).is_ok_and(|ts| {
                    ts.iter()
                        .any(|t| t.kind == MediaKind::Video && t.stats.frames >= 10 && t.stats.keyframes >= 1)
                        && ts.iter().any(|t| t.kind == MediaKind::Audio && t.stats.valid_opus >= 25)
                })
            })
        })
        .await;
    assert!(flowing, "video call media did not flow both ways");

    // Alice holds Bob: Bob's media stops reaching Alice; unhold resumes it.
    c.command(0, Command::SetHold { call_id: call.clone(), on_hold: true });
    let held = c
        .run_until(Duration::from_secs(10), |c| {
            c.devs[1]
                .engine
                .local_tracks(&call)
                .is_ok_and(|ts| !ts.is_empty() && ts.iter().all(|t| !t.sending))
        })
        .await;
    assert!(held, "bob still sends while held: {:?}", c.devs[1].engine.local_tracks(&call));
    assert!(c.devs[1].events.iter().any(|e| matches!(e, Event::HoldChanged { remote_hold: true, .. })));
    let frozen = c.remote_packets(0, &call, MediaKind::Audio);
    // Alice's (disabled) tracks keep sending silence, so Bob's side keeps receiving meanwhile.
    let bob_rx = c.remote_packets(1, &call, MediaKind::Audio);
    assert!(
        c.run_until(Duration::from_secs(5), |c| c.remote_packets(1, &call, MediaKind::Audio) >= bob_rx + 25)
            .await
    );
    assert!(c.remote_packets(0, &call, MediaKind::Audio) <= frozen + 10, "held direction kept flowing");

    c.command(0, Command::SetHold { call_id: call.clone(), on_hold: false });
    let resumed = c
        .run_until(Duration::from_secs(10), |c| c.remote_packets(0, &call, MediaKind::Audio) >= frozen + 25)
        .await;
    assert!(resumed, "media did not resume after unhold");

    // Alice shares her screen: Bob sees a second stream with purpose m.screenshare.
    c.command(0, Command::SetScreenshare { call_id: call.clone(), enabled: true });
    let shared = c
        .run_until(Duration::from_secs(10), |c| {
            c.devs[1].engine.remote_tracks(&call).is_ok_and(|ts| {
                ts.iter().any(|t| {
                    t.purpose == Some(StreamPurpose::Screenshare)
                        && t.kind == MediaKind::Video
                        && !t.ended
                        && t.stats.frames >= 10
                })
            })
        })
        .await;
    assert!(shared, "no screenshare stream on bob's side: {:?}", c.devs[1].engine.remote_tracks(&call));
    let streams: Vec<_> = c.devs[1].engine.remote_tracks(&call).unwrap();
    let mut ids: Vec<_> = streams.iter().filter(|t| !t.ended).map(|t| t.stream_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2, "usermedia and screenshare are two streams: {streams:?}");

    c.command(0, Command::SetScreenshare { call_id: call.clone(), enabled: false });
    let stopped = c
        .run_until(Duration::from_secs(10), |c| {
            c.devs[1].engine.remote_tracks(&call).is_ok_and(|ts| {
                ts.iter().filter(|t| t.purpose == Some(StreamPurpose::Screenshare)).all(|t| t.ended)
            })
        })
        .await;
    assert!(stopped, "screenshare track did not end");
    c.hang_up_and_check_no_leaks(1, &call).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_ice_failure_triggers_a_restart_that_recovers() {
    let core = Config::default().with_ice_restart_delay_ms(200);
    let media = || {
        WebrtcConfig::loopback().with_ice_timeouts(
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(200)),
        )
    };
    let mut c = Cores::new(core, media);
    let call = c.call_and_answer(CallType::Voice).await;
    assert!(
        c.run_until(Duration::from_secs(10), |c| c.remote_packets(0, &call, MediaKind::Audio) >= 25).await
    );

    c.devs[0].engine.network().set_blocked(true);
    let restarting = c
        .run_until(Duration::from_secs(15), |c| {
            c.devs.iter().any(|d| {
                d.commands
                    .iter()
                    .any(|(id, cmd)| id == &call && *cmd == MediaCommand::CreateOffer { ice_restart: true })
            })
        })
        .await;
    assert!(restarting, "no ICE restart after the network went away");
    c.devs[0].engine.network().set_blocked(false);
    let before = c.remote_packets(0, &call, MediaKind::Audio);
    let recovered = c
        .run_until(Duration::from_secs(20), |c| {
            c.devs.iter().all(|d| d.voip.call(&call).is_some_and(|i| i.state == CallState::Connected))
                && c.remote_packets(0, &call, MediaKind::Audio) >= before + 25
        })
        .await;
    assert!(recovered, "no recovery: alice {:?} bob {:?}", c.devs[0].states(&call), c.devs[1].states(&call));
    assert!(!c.devs.iter().any(|d| d.ended(&call)), "the call must survive the failure");
    c.hang_up_and_check_no_leaks(0, &call).await;
}
