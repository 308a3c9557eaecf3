//! What an app (or the umbrella crate) does with a running engine: refresh ICE servers between
//! calls, and echo each caller's audio back (an echo bot), by call id.

mod common;

use std::time::Duration;

use common::Pair;
use voip_core::media::{CallType, Candidate, ConnectionState, MediaCommand, MediaKind, StreamPurpose};
use voip_core::CallId;
use voip_webrtc::{Echo, EncodedFrame, IceServer, MediaSource, SourceFactory, WebrtcConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_set_at_runtime_apply_to_peers_built_afterwards() {
    let mut p = Pair::loopback();
    assert!(p.a.engine.ice_servers().is_empty());
    p.connect(CallType::Voice).await;
    let call = p.call.clone();

    // A second call's task exists (an early candidate for it is buffered) before the TURN
    // credentials arrive; its peer connection is built afterwards and must use them.
    let second = CallId::from("call-2");
    p.a.exec(&second, MediaCommand::AddRemoteCandidates { candidates: vec![Candidate::end_of_candidates()] });
    let fake_turn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("turn:127.0.0.1:{}?transport=udp", fake_turn.local_addr().unwrap().port());
    let servers = vec![IceServer::turn(vec![uri.clone()], "1700000000:@a:example.org", "secret")];
    p.a.engine.set_ice_servers(servers.clone());
    assert_eq!(p.a.engine.ice_servers(), servers);
    p.a.exec(&second, MediaCommand::CreatePeer { call_type: CallType::Voice });
    p.a.exec(
        &second,
        MediaCommand::AddLocalStream {
            stream_id: "a-user-2".into(),
            purpose: StreamPurpose::Usermedia,
            audio: true,
            video: false,
        },
    );
    p.a.exec(&second, MediaCommand::CreateOffer { ice_restart: false });
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), fake_turn.recv_from(&mut buf))
        .await
        .expect("the second call allocated on the TURN server set at runtime")
        .unwrap();
    assert!(n >= 20 && buf[..2] == [0x00, 0x03], "TURN Allocate request");
    assert_eq!(&buf[4..8], &[0x21, 0x12, 0xa4, 0x42], "STUN magic cookie");

    // The first call, built before, is untouched and still carries media. (No event pumping
    // here: the Pair would route the second call's candidates into the first.)
    let before = p.b.remote_packets(&call, "a-user", MediaKind::Audio);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.b.remote_packets(&call, "a-user", MediaKind::Audio) <= before + 10 {
        assert!(tokio::time::Instant::now() < deadline, "the first call stopped carrying media");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.a.engine.connection_state(&call), Some(ConnectionState::Connected));
    p.a.exec(&second, MediaCommand::Close);
    p.hang_up_and_check_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_engine_sends_each_caller_its_own_audio_back() {
    let echo = Echo::new();
    let bot = WebrtcConfig::loopback().with_sources(echo.clone()).with_sink(echo.clone());
    let mut p = Pair::new(WebrtcConfig::loopback(), bot);
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    assert_eq!(echo.calls(), vec![call.clone()]);
    // A sends the bundled tone; what A receives from the bot is that tone, packet for packet.
    let echoed = p
        .pump_until(Duration::from_secs(10), |p| {
            p.a.remote(&call, "b-user", MediaKind::Audio).is_some_and(|t| t.stats.bundled_tone >= 25)
        })
        .await;
    let t = p.a.remote(&call, "b-user", MediaKind::Audio).expect("remote audio from the bot");
    assert!(echoed, "{:?}", t.stats);
    assert_eq!(t.stats.invalid_opus, 0);
    let bot_sent = p.b.engine.local_tracks(&call).unwrap();
    assert!(bot_sent.iter().all(|l| l.kind == MediaKind::Audio && l.frames_sent > 0));
    p.hang_up_and_check_no_leaks().await;
    assert!(echo.calls().is_empty(), "the call's echo buffer went with the call");
}

/// A capture that has a frame only every other time it is asked.
struct Gappy(bool);

impl MediaSource for Gappy {
    fn next_frame(&mut self, _enabled: bool) -> Option<EncodedFrame> {
        self.0 = !self.0;
        self.0.then(|| EncodedFrame {
            data: bytes::Bytes::from_static(&voip_webrtc::media::opus::OPUS_SILENCE),
            duration: Duration::from_millis(20),
        })
    }
}

struct GappyDevices;

impl SourceFactory for GappyDevices {
    fn create(
        &self,
        _call_id: &CallId,
        _stream_id: &voip_core::StreamId,
        _purpose: StreamPurpose,
        _kind: MediaKind,
    ) -> voip_webrtc::Result<Box<dyn MediaSource>> {
        Ok(Box::new(Gappy(false)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_a_frame_this_tick_keeps_its_track_going() {
    let a_cfg = WebrtcConfig::loopback().with_sources(std::sync::Arc::new(GappyDevices));
    let mut p = Pair::new(a_cfg, WebrtcConfig::loopback());
    p.connect(CallType::Voice).await;
    let call = p.call.clone();
    let arrived = p
        .pump_until(Duration::from_secs(10), |p| {
            p.b.remote(&call, "a-user", MediaKind::Audio).is_some_and(|t| t.stats.opus_silence >= 20)
        })
        .await;
    assert!(arrived, "{:?}", p.b.remote(&call, "a-user", MediaKind::Audio));
    p.hang_up_and_check_no_leaks().await;
}
