//! Decoded video through the public API (feature `codecs`), on the in-process homeserver: a
//! one-to-one video call where the caller plays a frame-numbered test pattern as its camera and
//! the callee reads the decoded frames of the caller's stream, numbered and in order; then the
//! caller replaces its camera mid-call (another size, no renegotiation).

use std::time::Duration;

use voip::local::LocalHomeserver;
use voip::webrtc::media::video::{read_frame_number, RemoteVideo, TestPattern, VideoConfig, VideoHub};
use voip::webrtc::WebrtcConfig;
use voip::{CallState, CallType, StreamExt, VoipBuilder};

async fn frames_of(video: &mut RemoteVideo, span: Duration) -> Vec<voip::webrtc::media::video::VideoFrame> {
    let end = tokio::time::Instant::now() + span;
    let mut frames = Vec::new();
    while let Ok(Some(f)) = tokio::time::timeout_at(end, video.next()).await {
        frames.push(f);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_sees_the_callers_numbered_pattern_and_a_replaced_camera() {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@ann:local", "@ben:local"]);
    let c = hs.connect("@ben:local", "BEN");
    let ben = VoipBuilder::new(c.device, c.transport, c.inputs)
        .webrtc(WebrtcConfig::loopback().with_video(VideoHub::new(VideoConfig::default())))
        .build()
        .unwrap();
    let mut incoming = ben.incoming_calls();
    let c = hs.connect("@ann:local", "ANN");
    let ann = VoipBuilder::new(c.device, c.transport, c.inputs)
        .webrtc(WebrtcConfig::loopback().with_video(VideoHub::new(VideoConfig::default())))
        .build()
        .unwrap();
    let call = ann.invite_to_call(&room, CallType::Video, "@ben:local").await.unwrap();
    assert!(call.replace_video_input(TestPattern::new(320, 240, 30)));
    let answered = tokio::time::timeout(Duration::from_secs(10), incoming.next()).await.unwrap().unwrap();
    answered.answer().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), call.wait_for_state(CallState::Connected))
        .await
        .expect("not connected")
        .expect("ended before connecting");

    // Ann's stream as Ben sees it.
    let mut stream = None;
    for _ in 0..100 {
        stream = answered.streams().1.into_iter().next().map(|s| s.stream_id);
        if stream.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = stream.expect("Ben never learned Ann's stream");
    let mut video = answered.remote_video(&stream).expect("decoded video is configured");
    let _ = frames_of(&mut video, Duration::from_millis(500)).await;
    let frames = frames_of(&mut video, Duration::from_secs(2)).await;
    let numbers: Vec<u32> =
        frames.iter().map(|f| read_frame_number(f).expect("a frame without its number")).collect();
    eprintln!(
        "Ben decoded {} frames of Ann's 320×240 pattern in 2 s: numbers {:?}..{:?}",
        frames.len(),
        numbers.first(),
        numbers.last()
    );
    assert!(frames.len() >= 30, "only {} frames", frames.len());
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "out of order: {numbers:?}");
    assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));

    // Ann switches cameras: another size, from the next frame on.
    assert!(call.replace_video_input(TestPattern::new(160, 120, 15)));
    let _ = frames_of(&mut video, Duration::from_millis(500)).await;
    let frames = frames_of(&mut video, Duration::from_secs(1)).await;
    assert!(frames.len() >= 8, "only {} frames after the switch", frames.len());
    assert!(frames.iter().all(|f| (f.width, f.height) == (160, 120) && read_frame_number(f).is_some()));

    // The same frames through `futures::Stream` (what an app's select loop or UI binding uses).
    let streamed: Vec<_> = tokio::time::timeout(
        Duration::from_secs(2),
        voip::StreamExt::take(&mut video, 5).collect::<Vec<_>>(),
    )
    .await
    .expect("five frames within 2 s through the Stream API");
    assert_eq!(streamed.len(), 5);
    assert!(streamed.iter().all(|f| (f.width, f.height) == (160, 120) && read_frame_number(f).is_some()));

    call.hangup().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), answered.ended()).await;
    ann.shutdown().await;
    ben.shutdown().await;
}

/// Mesh: three members each play their own pattern (the frame numbers start at a different
/// offset per member); each sees the other two, each on that member's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_members_see_each_others_patterns() {
    const USERS: [&str; 3] = ["@ann:local", "@ben:local", "@cat:local"];
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&USERS);
    let mut groups = Vec::new();
    let mut voips = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let c = hs.connect(user, &format!("DEV{i}"));
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs)
            .webrtc(WebrtcConfig::loopback().with_video(VideoHub::new(VideoConfig::default())))
            .build()
            .unwrap();
        let group = voip.fetch_or_create_group_call(&room, voip::GroupCallBackend::Mesh).await.unwrap();
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
    // Each member's camera: 160×120 frames pushed at 15 fps, numbered from 10 000 × (index + 1).
    let pushers: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let g = g.clone();
            tokio::spawn(async move {
                let pattern = TestPattern::new(160, 120, 15);
                let mut tick = tokio::time::interval(Duration::from_millis(66));
                let mut n = 10_000 * (i as u32 + 1);
                loop {
                    tick.tick().await;
                    g.push_video_frame(&pattern.frame(n));
                    n += 1;
                }
            })
        })
        .collect();
    for (me, g) in groups.iter().enumerate() {
        let mut found = Vec::new();
        for _ in 0..100 {
            found = g.remote_video();
            if found.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(found.len(), 2, "streams known: {}", found.len());
        for (participant, stream, mut video) in found {
            let from = USERS.iter().position(|u| participant.user_id.to_string() == *u).expect("a member");
            let frames = frames_of(&mut video, Duration::from_millis(1500)).await;
            let numbers: Vec<u32> = frames.iter().filter_map(read_frame_number).collect();
            eprintln!(
                "{} sees {} on {stream}: {} frames, numbers {:?}",
                USERS[me],
                USERS[from],
                frames.len(),
                numbers.first()
            );
            assert!(frames.len() >= 8, "{} sees only {} frames of {}", USERS[me], frames.len(), USERS[from]);
            assert_eq!(numbers.len(), frames.len(), "frames without their number");
            let base = 10_000 * (from as u32 + 1);
            assert!(
                numbers.iter().all(|n| (base..base + 10_000).contains(n)),
                "{} sees the wrong member: {numbers:?}",
                USERS[me]
            );
            assert!(numbers.windows(2).all(|w| w[1] > w[0]));
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
