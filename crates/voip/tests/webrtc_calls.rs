//! One-to-one calls through the runtime's driver with real webrtc-rs engines on loopback and the
//! in-process homeserver: the same driver apps run, no hand-driven core. Opus both ways with the
//! core's stream metadata, a video call with hold and screenshare, and an ICE failure that the
//! core repairs with an ICE restart; every engine releases its tasks and sockets afterwards.
//!
//! The engine is wrapped only to record the media commands the driver hands it (what the core
//! decided), so the tests can assert on them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use voip::core::media::{MediaCommand, MediaKind, StreamPurpose};
use voip::core::{CallId, Config};
use voip::local::LocalHomeserver;
use voip::webrtc::{WebrtcConfig, WebrtcEngine};
use voip::{Call, CallState, CallType, CallUpdate, MediaEngine, StreamExt, Voip, VoipBuilder};

/// The real engine, recording every command it is given.
struct Recording {
    engine: WebrtcEngine,
    commands: Arc<Mutex<Vec<(CallId, MediaCommand)>>>,
}

impl MediaEngine for Recording {
    fn execute(&self, call_id: CallId, command: MediaCommand) {
        self.commands.lock().unwrap().push((call_id.clone(), command.clone()));
        self.engine.execute(call_id, command);
    }
}

struct Phone {
    voip: Voip,
    engine: WebrtcEngine,
    commands: Arc<Mutex<Vec<(CallId, MediaCommand)>>>,
}

impl Phone {
    fn commanded(&self, call: &CallId, command: &MediaCommand) -> bool {
        self.commands.lock().unwrap().iter().any(|(c, m)| c == call && m == command)
    }

    fn remote_packets(&self, call: &CallId, kind: MediaKind) -> u64 {
        self.engine
            .remote_tracks(call)
            .map(|ts| ts.iter().filter(|t| t.kind == kind && !t.ended).map(|t| t.stats.packets).sum())
            .unwrap_or(0)
    }
}

/// Alice (0) calls Bob (1), Bob answers; both connected.
struct Pair {
    phones: [Phone; 2],
    calls: [Call; 2],
}

impl Pair {
    async fn connected(core: Config, media: impl Fn() -> WebrtcConfig, call_type: CallType) -> Pair {
        let hs = LocalHomeserver::new();
        let room = hs.create_room(&["@alice:local", "@bob:local"]);
        let phone = |user: &str, device: &str| {
            let c = hs.connect(user, device);
            let (engine, events) = WebrtcEngine::with_channel(media());
            let commands = Arc::new(Mutex::new(Vec::new()));
            let recording = Recording { engine: engine.clone(), commands: commands.clone() };
            let voip = VoipBuilder::new(c.device, c.transport, c.inputs)
                .config(core.clone())
                .media_engine(Arc::new(recording), events)
                .build()
                .expect("runtime");
            Phone { voip, engine, commands }
        };
        let alice = phone("@alice:local", "ALICE");
        let bob = phone("@bob:local", "BOB");
        let mut incoming = bob.voip.incoming_calls();
        let outgoing = alice.voip.invite_to_call(&room, call_type, "@bob:local").await.expect("invite");
        let answered = tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .expect("no incoming call")
            .expect("feed ended");
        answered.answer().await.expect("answer");
        for call in [&outgoing, &answered] {
            let state =
                tokio::time::timeout(Duration::from_secs(20), call.wait_for_state(CallState::Connected))
                    .await
                    .expect("not connected in 20 s");
            assert_eq!(state, Some(CallState::Connected), "ended before connecting: {:?}", call.info());
        }
        Pair { phones: [alice, bob], calls: [outgoing, answered] }
    }

    fn id(&self) -> CallId {
        self.calls[0].id().clone()
    }

    async fn until(&self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond(self)
    }

    /// Hangs up from `d`; both calls end, both cores closed the media, both engines release
    /// every task and socket.
    async fn hang_up_and_check_no_leaks(self, d: usize) {
        let id = self.id();
        for p in &self.phones {
            assert!(p.engine.resources().udp_sockets > 0, "sockets were open during the call");
        }
        self.calls[d].hangup().await.expect("hangup");
        for call in &self.calls {
            let ended = tokio::time::timeout(Duration::from_secs(10), call.ended()).await;
            assert!(matches!(ended, Ok(Some(_))), "call did not end: {:?}", call.info());
        }
        for p in &self.phones {
            assert!(p.commanded(&id, &MediaCommand::Close), "the core never closed the media");
            p.engine.wait_closed().await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.engine.resources() != Default::default() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(p.engine.resources(), Default::default(), "leaked tasks or sockets");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_call_carries_opus_both_ways_with_the_cores_stream_metadata() {
    let pair = Pair::connected(Config::default(), WebrtcConfig::loopback, CallType::Voice).await;
    let id = pair.id();
    let flowing = pair
        .until(Duration::from_secs(10), |p| {
            p.phones.iter().all(|ph| ph.remote_packets(&id, MediaKind::Audio) >= 50)
        })
        .await;
    assert!(flowing, "audio did not flow both ways");
    for (phone, call) in pair.phones.iter().zip(&pair.calls) {
        let tracks = phone.engine.remote_tracks(&id).unwrap();
        let audio = tracks.iter().find(|t| t.kind == MediaKind::Audio).expect("remote audio");
        assert_eq!(audio.stats.invalid_opus, 0);
        assert!(audio.stats.bundled_tone >= 45, "{:?}", audio.stats);
        assert_eq!(audio.purpose, Some(StreamPurpose::Usermedia), "purpose from the core's stream metadata");
        // The stream id the core put in sdp_stream_metadata is the one in the peer's SDP.
        let (_, remote) = call.streams();
        assert!(remote.iter().any(|s| s.stream_id == audio.stream_id && s.has_audio), "{remote:?}");
    }
    pair.hang_up_and_check_no_leaks(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_with_hold_and_screenshare() {
    let pair = Pair::connected(Config::default(), WebrtcConfig::loopback, CallType::Video).await;
    let id = pair.id();
    let [alice, bob] = &pair.phones;
    let flowing = pair
        .until(Duration::from_secs(10), |p| {
            p.phones.iter().all(|ph| {
                ph.engine.remote_tracks(&id).is_ok_and(|ts| {
                    ts.iter()
                        .any(|t| t.kind == MediaKind::Video && t.stats.frames >= 10 && t.stats.keyframes >= 1)
                        && ts.iter().any(|t| t.kind == MediaKind::Audio && t.stats.valid_opus >= 25)
                })
            })
        })
        .await;
    assert!(flowing, "video call media did not flow both ways");

    // Alice holds Bob: Bob's media stops reaching Alice; unhold resumes it.
    let mut bob_updates = pair.calls[1].updates();
    pair.calls[0].set_hold(true).await.expect("hold");
    let held = pair
        .until(Duration::from_secs(10), |_| {
            bob.engine.local_tracks(&id).is_ok_and(|ts| !ts.is_empty() && ts.iter().all(|t| !t.sending))
        })
        .await;
    assert!(held, "bob still sends while held: {:?}", bob.engine.local_tracks(&id));
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(u) = bob_updates.next().await {
            if matches!(u, CallUpdate::HoldChanged { remote_hold: true, .. }) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(told, Ok(true), "bob was not told he is held");
    let frozen = alice.remote_packets(&id, MediaKind::Audio);
    // Alice's (disabled) tracks keep sending silence, so Bob's side keeps receiving meanwhile.
    let bob_rx = bob.remote_packets(&id, MediaKind::Audio);
    assert!(
        pair.until(Duration::from_secs(5), |_| bob.remote_packets(&id, MediaKind::Audio) >= bob_rx + 25)
            .await
    );
    assert!(alice.remote_packets(&id, MediaKind::Audio) <= frozen + 10, "held direction kept flowing");

    pair.calls[0].set_hold(false).await.expect("unhold");
    let resumed = pair
        .until(Duration::from_secs(10), |_| alice.remote_packets(&id, MediaKind::Audio) >= frozen + 25)
        .await;
    assert!(resumed, "media did not resume after unhold");

    // Alice shares her screen: Bob sees a second stream with purpose m.screenshare.
    pair.calls[0].set_screensharing(true).await.expect("screenshare");
    let shared = pair
        .until(Duration::from_secs(10), |_| {
            bob.engine.remote_tracks(&id).is_ok_and(|ts| {
                ts.iter().any(|t| {
                    t.purpose == Some(StreamPurpose::Screenshare)
                        && t.kind == MediaKind::Video
                        && !t.ended
                        && t.stats.frames >= 10
                })
            })
        })
        .await;
    assert!(shared, "no screenshare stream on bob's side: {:?}", bob.engine.remote_tracks(&id));
    let streams = bob.engine.remote_tracks(&id).unwrap();
    let mut ids: Vec<_> = streams.iter().filter(|t| !t.ended).map(|t| t.stream_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2, "usermedia and screenshare are two streams: {streams:?}");

    pair.calls[0].set_screensharing(false).await.expect("stop screenshare");
    let stopped = pair
        .until(Duration::from_secs(10), |_| {
            bob.engine.remote_tracks(&id).is_ok_and(|ts| {
                ts.iter().filter(|t| t.purpose == Some(StreamPurpose::Screenshare)).all(|t| t.ended)
            })
        })
        .await;
    assert!(stopped, "screenshare track did not end");
    pair.hang_up_and_check_no_leaks(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_failure_triggers_a_restart_that_recovers() {
    let core = Config::default().with_ice_restart_delay_ms(200);
    let media = || {
        WebrtcConfig::loopback().with_ice_timeouts(
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(800)),
            Some(Duration::from_millis(200)),
        )
    };
    let pair = Pair::connected(core, media, CallType::Voice).await;
    let id = pair.id();
    let [alice, _] = &pair.phones;
    assert!(pair.until(Duration::from_secs(10), |_| alice.remote_packets(&id, MediaKind::Audio) >= 25).await);

    alice.engine.network().set_blocked(true);
    let restart = MediaCommand::CreateOffer { ice_restart: true };
    let restarting =
        pair.until(Duration::from_secs(15), |p| p.phones.iter().any(|ph| ph.commanded(&id, &restart))).await;
    assert!(restarting, "no ICE restart after the network went away");
    alice.engine.network().set_blocked(false);
    let before = alice.remote_packets(&id, MediaKind::Audio);
    let recovered = pair
        .until(Duration::from_secs(20), |p| {
            p.calls.iter().all(|c| c.state() == CallState::Connected)
                && alice.remote_packets(&id, MediaKind::Audio) >= before + 25
        })
        .await;
    assert!(recovered, "no recovery: alice {:?} bob {:?}", pair.calls[0].info(), pair.calls[1].info());
    pair.hang_up_and_check_no_leaks(0).await;
}
