//! The engine's contract details: mute, rollback, failures, app-initiated renegotiation,
//! answering with less media, commands after close.

mod common;

use std::time::Duration;

use common::Pair;
use voip_core::media::{
    CallType, MediaCommand, MediaEvent, MediaKind, MediaOperation, SessionDescription, StreamPurpose,
};
use voip_core::CallId;
use voip_webrtc::{MdnsMode, WebrtcConfig, WebrtcEngine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_tracks_send_silence_and_black_frames_until_unmuted() {
    let mut p = Pair::loopback();
    p.connect(CallType::Video).await;
    let call = p.call.clone();
    assert!(
        p.pump_until(Duration::from_secs(10), |p| p
            .b
            .remote(&call, "a-user", MediaKind::Video)
            .is_some_and(|t| t.stats.frames >= 5))
            .await
    );
    for kind in [MediaKind::Audio, MediaKind::Video] {
        p.a.exec(&call, MediaCommand::SetTrackEnabled { stream_id: "a-user".into(), kind, enabled: false });
    }
    let silence = p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.opus_silence;
    let keyframes = p.b.remote(&call, "a-user", MediaKind::Video).unwrap().stats.keyframes;
    let muted = p
        .pump_until(Duration::from_secs(5), |p| {
            p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.opus_silence >= silence + 20
                // Black frames are keyframes, one per frame interval.
                && p.b.remote(&call, "a-user", MediaKind::Video).unwrap().stats.keyframes >= keyframes + 8
        })
        .await;
    assert!(muted, "muted tracks did not switch to silence / black frames");
    assert!(p.a.engine.local_tracks(&call).unwrap().iter().all(|t| !t.enabled && t.sending));
    let tone = p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.bundled_tone;
    p.a.exec(
        &call,
        MediaCommand::SetTrackEnabled { stream_id: "a-user".into(), kind: MediaKind::Audio, enabled: true },
    );
    let unmuted = p
        .pump_until(Duration::from_secs(5), |p| {
            p.b.remote(&call, "a-user", MediaKind::Audio).unwrap().stats.bundled_tone >= tone + 20
        })
        .await;
    assert!(unmuted, "audio did not come back after unmute");
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_lets_the_polite_side_answer_the_other_offer() {
    let mut p = Pair::loopback();
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    // Both start a renegotiation; B (polite) rolls its offer back and answers A's.
    p.b.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
    let _b_offer = p.take_description(false).await;
    p.a.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
    let a_offer = p.take_description(true).await;
    p.b.exec(&call, MediaCommand::Rollback);
    p.b.exec(&call, MediaCommand::set_remote_description(a_offer));
    p.b.exec(&call, MediaCommand::CreateAnswer);
    let answer = p.take_description(false).await;
    assert_eq!(answer.sdp_type, voip_core::media::SdpType::Answer);
    p.a.exec(&call, MediaCommand::set_remote_description(answer));
    let before = p.a.remote_packets(&call, "b-user", MediaKind::Audio);
    assert!(
        p.pump_until(Duration::from_secs(5), |p| p.a.remote_packets(&call, "b-user", MediaKind::Audio)
            >= before + 20)
            .await
    );
    p.assert_no_failures();
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_a_video_offer_with_voice_only_receives_video_and_sends_audio() {
    let mut p = Pair::loopback();
    let call = p.call.clone();
    p.a.exec(&call, MediaCommand::CreatePeer { call_type: CallType::Video });
    p.a.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "a-user".into(),
            purpose: StreamPurpose::Usermedia,
            audio: true,
            video: true,
        },
    );
    p.a.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
    let offer = p.take_description(true).await;
    p.b.exec(&call, MediaCommand::CreatePeer { call_type: CallType::Video });
    p.b.exec(&call, MediaCommand::set_remote_description(offer));
    p.b.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "b-user".into(),
            purpose: StreamPurpose::Usermedia,
            audio: true,
            video: false,
        },
    );
    p.b.exec(&call, MediaCommand::CreateAnswer);
    let answer = p.take_description(false).await;
    p.a.exec(&call, MediaCommand::set_remote_description(answer));
    let flowing = p
        .pump_until(Duration::from_secs(10), |p| {
            p.b.remote(&call, "a-user", MediaKind::Video).is_some_and(|t| t.stats.frames >= 5)
                && p.a.remote_packets(&call, "b-user", MediaKind::Audio) >= 20
        })
        .await;
    assert!(flowing);
    assert!(p.a.remote(&call, "b-user", MediaKind::Video).is_none(), "B sends no video");
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_as_failed_events() {
    let (engine, mut rx) = WebrtcEngine::with_channel(WebrtcConfig::loopback());
    let call = CallId::from("c");
    // No peer connection yet. (Executed from a thread outside the runtime: the engine spawns
    // on the runtime it was created in.)
    let (e, c) = (engine.clone(), call.clone());
    std::thread::spawn(move || e.execute(c, MediaCommand::CreateOffer { ice_restart: false }))
        .join()
        .expect("execute from a plain thread");
    engine.execute(call.clone(), MediaCommand::CreatePeer { call_type: CallType::Voice });
    engine.execute(
        call.clone(),
        MediaCommand::set_remote_description(SessionDescription::offer("this is not sdp")),
    );
    // An answer without an offer.
    engine.execute(call.clone(), MediaCommand::CreateAnswer);
    let mut ops = Vec::new();
    while ops.len() < 3 {
        let (id, event) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event").expect("open");
        assert_eq!(id, call);
        if let MediaEvent::Failed { operation, error } = event {
            assert!(!error.is_empty());
            ops.push(operation);
        }
    }
    assert_eq!(
        ops,
        [MediaOperation::CreateOffer, MediaOperation::SetRemoteDescription, MediaOperation::CreateAnswer]
    );
    engine.execute(call.clone(), MediaCommand::Close);
    // Commands after Close start nothing.
    engine.execute(call.clone(), MediaCommand::CreateOffer { ice_restart: false });
    assert!(engine.calls().is_empty());
    engine.wait_closed().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.resources() != Default::default() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.resources(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_added_stream_asks_for_negotiation() {
    // (mDNS stays disabled in tests: query mode would join a multicast group on the real
    // network interfaces.)
    let mut p = Pair::new(WebrtcConfig::loopback().with_mdns(MdnsMode::Disabled), WebrtcConfig::loopback());
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    p.a.engine.add_local_stream(&call, "a-extra".into(), StreamPurpose::Screenshare, false, true).unwrap();
    assert!(
        p.pump_until(Duration::from_secs(5), |p| p.a.events.contains(&MediaEvent::NegotiationNeeded)).await
    );
    p.negotiate(false).await;
    assert!(
        p.pump_until(Duration::from_secs(10), |p| p
            .b
            .remote(&call, "a-extra", MediaKind::Video)
            .is_some_and(|t| t.stats.frames >= 5))
            .await
    );
    p.b.engine.set_remote_purpose(&call, "a-extra".into(), StreamPurpose::Screenshare).unwrap();
    let t = p.b.remote(&call, "a-extra", MediaKind::Video).unwrap();
    assert_eq!(t.purpose, Some(StreamPurpose::Screenshare));
    assert!(matches!(
        p.a.engine.add_local_stream(&CallId::from("nope"), "x".into(), StreamPurpose::Usermedia, true, false),
        Err(voip_webrtc::Error::NoSuchCall(_))
    ));
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_server_from_homeserver_config_is_used_and_its_silence_is_not_fatal() {
    // A fake TURN server on loopback that never answers: the engine must try to allocate
    // there, and still connect over host candidates.
    let fake_turn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = fake_turn.local_addr().unwrap().port();
    let turn: voip_webrtc::TurnServerResponse = serde_json::from_str(&format!(
        r#"{{"uris":["turn:127.0.0.1:{port}?transport=udp"],"username":"1700000000:@a:example.org","password":"secret","ttl":86400}}"#
    ))
    .unwrap();
    let mut p = Pair::loopback();
    p.a.engine.set_ice_servers(vec![turn.into()]);
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    assert!(
        p.pump_until(Duration::from_secs(10), |p| p.b.remote_packets(&call, "a-user", MediaKind::Audio)
            >= 10)
            .await
    );
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), fake_turn.recv_from(&mut buf))
        .await
        .expect("a TURN request reached the configured server")
        .unwrap();
    assert!(n >= 20, "STUN header");
    assert_eq!(&buf[..2], &[0x00, 0x03], "TURN Allocate request");
    assert_eq!(&buf[4..8], &[0x21, 0x12, 0xa4, 0x42], "STUN magic cookie");
    assert!(p.a.failures().is_empty(), "{:?}", p.a.failures());
    p.hang_up_and_check_no_leaks().await;
}

/// An app's own capture: audio is a custom source (Opus silence only), video capture fails.
struct AppDevices;

struct SilenceSource;

impl voip_webrtc::MediaSource for SilenceSource {
    fn next_frame(&mut self, _enabled: bool) -> Option<voip_webrtc::EncodedFrame> {
        Some(voip_webrtc::EncodedFrame {
            data: bytes::Bytes::from_static(&voip_webrtc::media::opus::OPUS_SILENCE),
            duration: Duration::from_millis(20),
        })
    }
}

impl voip_webrtc::SourceFactory for AppDevices {
    fn create(
        &self,
        _call_id: &CallId,
        _stream_id: &voip_core::StreamId,
        _purpose: StreamPurpose,
        kind: MediaKind,
    ) -> voip_webrtc::Result<Box<dyn voip_webrtc::MediaSource>> {
        match kind {
            MediaKind::Audio => Ok(Box::new(SilenceSource)),
            MediaKind::Video => Err(voip_webrtc::Error::LocalMedia("no camera".into())),
        }
    }
}

#[derive(Default)]
struct AppSink(std::sync::Mutex<Vec<(voip_core::StreamId, MediaKind, usize)>>);

impl voip_webrtc::MediaSink for AppSink {
    fn on_packet(
        &self,
        stream_id: &voip_core::StreamId,
        kind: MediaKind,
        packet: &voip_webrtc::ReceivedPacket,
    ) {
        self.0.lock().unwrap().push((stream_id.clone(), kind, packet.payload.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_sources_and_sinks_plug_in_and_capture_failures_are_reported() {
    let sink = std::sync::Arc::new(AppSink::default());
    let a_cfg = WebrtcConfig::loopback().with_sources(std::sync::Arc::new(AppDevices));
    let b_cfg = WebrtcConfig::loopback().with_sink(sink.clone());
    let mut p = Pair::new(a_cfg, b_cfg);
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    let arrived = p
        .pump_until(Duration::from_secs(10), |p| {
            p.b.remote(&call, "a-user", MediaKind::Audio).is_some_and(|t| t.stats.opus_silence >= 20)
        })
        .await;
    assert!(arrived, "the app source's frames did not arrive");
    let seen = sink.0.lock().unwrap().len();
    assert!(seen >= 20, "the app sink saw {seen} packets");
    assert!(sink
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|(s, k, len)| s.as_str() == "a-user" && *k == MediaKind::Audio && *len == 3));
    // Camera capture fails: reported as a LocalMedia failure.
    p.a.exec(
        &call,
        MediaCommand::AddLocalStream {
            stream_id: "a-cam".into(),
            purpose: StreamPurpose::Usermedia,
            audio: false,
            video: true,
        },
    );
    let failed = p
        .pump_until(Duration::from_secs(5), |p| {
            p.a.events.iter().any(|e| {
                matches!(e, MediaEvent::Failed { operation: MediaOperation::LocalMedia, error } if error.contains("no camera"))
            })
        })
        .await;
    assert!(failed, "{:?}", p.a.events);
    p.hang_up_and_check_no_leaks().await;
}
