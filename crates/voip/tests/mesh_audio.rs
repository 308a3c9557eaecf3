//! Decoded audio in a mesh group call of three on the in-process homeserver (feature
//! `codecs`): each member pushes its own tone into the group, and each hears the other two,
//! each on that member's stream.

use std::time::Duration;

use voip::local::LocalHomeserver;
use voip::webrtc::media::audio::{goertzel_power, AudioConfig, AudioHub, RemoteAudio};
use voip::webrtc::WebrtcConfig;
use voip::{CallState, GroupCallBackend, VoipBuilder};

const USERS: [&str; 3] = ["@ann:local", "@ben:local", "@cat:local"];
const TONES: [f64; 3] = [500.0, 1100.0, 1900.0];

async fn pcm_of(audio: &mut RemoteAudio, span: Duration) -> Vec<f32> {
    let end = tokio::time::Instant::now() + span;
    let mut pcm = Vec::new();
    while let Ok(Some(f)) = tokio::time::timeout_at(end, audio.next()).await {
        pcm.extend(f.mono_f32());
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_hears_the_others_tones_on_their_streams() {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&USERS);
    let mut groups = Vec::new();
    let mut voips = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let c = hs.connect(user, &format!("DEV{i}"));
        let hub = AudioHub::new(AudioConfig::default());
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs)
            .webrtc(WebrtcConfig::loopback().with_audio(hub))
            .build()
            .unwrap();
        let group = voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh).await.unwrap();
        group.enter().await.unwrap();
        groups.push(group);
        voips.push(voip);
    }
    let connected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ready = groups.iter().all(|g| {
                let calls = g.peer_calls();
                calls.len() == 2 && calls.iter().all(|(_, c)| c.state() == CallState::Connected)
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(connected.is_ok(), "the mesh did not connect");

    // Each member's microphone: its tone, 10 ms of 48 kHz mono every 10 ms, into the group.
    let pushers: Vec<_> = groups
        .iter()
        .zip(TONES)
        .map(|(g, freq)| {
            let g = g.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    let block: Vec<f32> = (0..480)
                        .map(|_| {
                            n += 1;
                            0.4 * (2.0 * std::f64::consts::PI * freq * n as f64 / 48_000.0).sin() as f32
                        })
                        .collect();
                    g.push_audio_f32(48_000, 1, &block);
                }
            })
        })
        .collect();

    // Wait until every member knows both others' streams.
    let mut streams = Vec::new();
    for g in &groups {
        let mut found = Vec::new();
        for _ in 0..100 {
            found = g.remote_audio();
            if found.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(found.len(), 2, "streams known: {}", found.len());
        streams.push(found);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (me, found) in streams.iter_mut().enumerate() {
        for (participant, stream, audio) in found.iter_mut() {
            let _ = pcm_of(audio, Duration::from_millis(300)).await;
            let pcm = pcm_of(audio, Duration::from_millis(1000)).await;
            let from = USERS.iter().position(|u| participant.user_id.to_string() == *u).expect("a member");
            let own = goertzel_power(&pcm, 48_000, TONES[from]);
            let others = TONES
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != from)
                .map(|(_, &f)| goertzel_power(&pcm, 48_000, f))
                .fold(0.0, f64::max);
            let margin = 10.0 * (own / others.max(1e-20)).log10();
            eprintln!(
                "{} hears {} on {stream}: its tone {margin:.1} dB above the other tones",
                USERS[me], USERS[from]
            );
            assert!(pcm.len() >= 40_000, "{} samples", pcm.len());
            assert!(margin >= 20.0, "{} hears {} with only {margin:.1} dB", USERS[me], USERS[from]);
        }
    }
    for p in pushers {
        p.abort();
    }
    for g in &groups {
        g.leave().await.unwrap();
    }
    for v in &voips {
        v.shutdown().await;
    }
}
