//! Decoded video end to end (feature `codecs`): a frame-numbered test pattern in on one engine,
//! libvpx VP8, real webrtc-rs RTP/SRTP over loopback, reassembly, keyframe requests (RTCP PLI)
//! and decoding on the other engine, frames out.

mod common;

use std::time::{Duration, Instant};

use common::Pair;
use voip_core::media::{CallType, MediaCommand, MediaKind};
use voip_core::StreamId;
use voip_webrtc::media::video::{
    read_frame_number, RemoteVideo, TestPattern, VideoConfig, VideoFrame, VideoHub,
};
use voip_webrtc::WebrtcConfig;

/// Real-time video on a two-core machine: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Frames of `video` received during `span`, with when each arrived.
async fn collect(video: &mut RemoteVideo, span: Duration) -> Vec<(Instant, VideoFrame)> {
    let end = tokio::time::Instant::now() + span;
    let mut frames = Vec::new();
    while let Ok(Some(f)) = tokio::time::timeout_at(end, video.next()).await {
        frames.push((Instant::now(), f));
    }
    frames
}

struct Setup {
    pair: Pair,
    hub_a: VideoHub,
    hub_b: VideoHub,
    video_b: RemoteVideo,
    video_a: RemoteVideo,
}

async fn setup() -> Setup {
    let hub_a = VideoHub::new(VideoConfig::default());
    let hub_b = VideoHub::new(VideoConfig::default());
    let mut pair = Pair::new(
        WebrtcConfig::loopback().with_video(hub_a.clone()),
        WebrtcConfig::loopback().with_video(hub_b.clone()),
    );
    hub_a.input(&pair.call).replace(TestPattern::new(640, 480, 30));
    // Video both ways (b sends a small pattern back): each side's keyframe requests must reach
    // the other's sender although both have a remote and a local video track.
    hub_b.input(&pair.call).replace(TestPattern::new(160, 120, 15));
    let video_b = hub_b.remote_video(&pair.call, &StreamId::from("a-user"));
    let video_a = hub_a.remote_video(&pair.call, &StreamId::from("b-user"));
    pair.connect(CallType::Video).await;
    let call = pair.call.clone();
    let flowing = pair
        .pump_until(Duration::from_secs(10), |p| p.b.remote_packets(&call, "a-user", MediaKind::Video) >= 30)
        .await;
    assert!(flowing, "no video packets at b");
    Setup { pair, hub_a, hub_b, video_b, video_a }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_640x480_arrives_numbered_in_order_and_a_loss_burst_recovers_by_keyframe() {
    let _serial = SERIAL.lock().await;
    let Setup { mut pair, hub_a, hub_b, mut video_b, mut video_a } = setup().await;
    let call = pair.call.clone();
    let stream = StreamId::from("a-user");
    let pattern = TestPattern::new(640, 480, 30);

    // Steady state: every decoded frame carries its number, in order, close to the source.
    let _ = collect(&mut video_b, Duration::from_millis(500)).await;
    let frames = collect(&mut video_b, Duration::from_secs(3)).await;
    assert!(
        frames.len() >= 60,
        "only {} frames in 3 s; receiver {:?}, sender {:?}",
        frames.len(),
        hub_b.remote_stats(&call, &stream),
        hub_a.local_stats(&call)
    );
    let numbers: Vec<u32> = frames
        .iter()
        .map(|(_, f)| read_frame_number(f).expect("a decoded frame without its number"))
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "frame numbers out of order: {numbers:?}");
    let skipped = (numbers[numbers.len() - 1] - numbers[0] + 1) as usize - numbers.len();
    let psnr: Vec<f64> = frames
        .iter()
        .zip(&numbers)
        .map(|((_, f), &n)| f.psnr(&pattern.frame(n)).expect("640×480 decoded"))
        .collect();
    let min = psnr.iter().copied().fold(f64::MAX, f64::min);
    let mean = psnr.iter().sum::<f64>() / psnr.len() as f64;
    let fps = frames.len() as f64 / frames[frames.len() - 1].0.duration_since(frames[0].0).as_secs_f64();
    let b_stats = hub_b.remote_stats(&call, &stream).unwrap();
    let a_stats = hub_a.local_stats(&call).unwrap();
    eprintln!(
        "640×480 test pattern: {} frames in 3 s ({fps:.1} fps), numbers {}..={} in order, {skipped} skipped; \
         PSNR min {min:.1} dB mean {mean:.1} dB; receiver {b_stats:?}; sender {a_stats:?}",
        frames.len(),
        numbers[0],
        numbers[numbers.len() - 1],
    );
    assert!(min >= 30.0, "PSNR {min:.1} dB");
    assert!(frames.iter().all(|(_, f)| (f.width, f.height) == (640, 480)));
    assert!(frames.windows(2).all(|w| w[1].1.timestamp > w[0].1.timestamp));
    assert!(b_stats.plis_sent >= 1, "no PLI when the track started");
    assert!(a_stats.keyframe_requests >= 1, "the sender never got the receiver's PLI");

    // A 300 ms loss burst: the receiver notices, sends a PLI, the sender answers with a
    // keyframe, and correctly numbered frames come back within 1 s.
    let before_b = hub_b.remote_stats(&call, &stream).unwrap();
    let before_a = hub_a.local_stats(&call).unwrap();
    let burst = Duration::from_millis(300);
    let start = Instant::now();
    hub_b.start_loss_burst(burst);
    let frames = collect(&mut video_b, Duration::from_secs(2)).await;
    let burst_end = start + burst;
    let after: Vec<(Instant, u32)> = frames
        .iter()
        .filter(|(at, _)| *at > burst_end)
        .map(|(at, f)| (*at, read_frame_number(f).expect("a broken frame was shown after the loss")))
        .collect();
    let (first_at, first_n) = *after.first().expect("no frame after the loss burst");
    let recovery = first_at.duration_since(burst_end);
    let after_b = hub_b.remote_stats(&call, &stream).unwrap();
    let after_a = hub_a.local_stats(&call).unwrap();
    eprintln!(
        "300 ms loss burst: first correct frame (#{first_n}) {recovery:?} after the burst ended; \
         PLIs sent {} → {}, keyframe requests at the sender {} → {}, keyframes decoded {} → {}, \
         losses {}, frames dropped {} → {}, packets dropped by the burst {}",
        before_b.plis_sent,
        after_b.plis_sent,
        before_a.keyframe_requests,
        after_a.keyframe_requests,
        before_b.keyframes,
        after_b.keyframes,
        after_b.losses,
        before_b.frames_dropped,
        after_b.frames_dropped,
        after_b.impaired_drops - before_b.impaired_drops,
    );
    assert!(recovery < Duration::from_secs(1), "recovery took {recovery:?}");
    assert!(after_b.impaired_drops > before_b.impaired_drops, "the burst dropped nothing");
    assert!(after_b.losses > before_b.losses, "the loss went unnoticed");
    assert!(after_b.plis_sent > before_b.plis_sent, "no PLI after the loss");
    assert!(after_a.keyframe_requests > before_a.keyframe_requests, "the PLI did not reach the sender");
    assert!(after_b.keyframes > before_b.keyframes, "no keyframe after the loss");
    assert!(after.windows(2).all(|w| w[1].1 > w[0].1), "numbers out of order after recovery");
    assert!(after.len() >= 30, "only {} frames after recovery", after.len());

    // The way back: a decodes b's pattern, and b's sender heard a's keyframe requests too.
    let back = collect(&mut video_a, Duration::from_secs(1)).await;
    assert!(back.len() >= 8, "a decoded only {} of b's frames in 1 s", back.len());
    assert!(back.iter().all(|(_, f)| (f.width, f.height) == (160, 120) && read_frame_number(f).is_some()));
    let b_sender = hub_b.local_stats(&call).unwrap();
    assert!(b_sender.keyframe_requests >= 1, "b's sender never got a's PLI: {b_sender:?}");

    // Mute: nothing arrives.
    pair.a.exec(
        &call,
        MediaCommand::SetTrackEnabled { stream_id: stream.clone(), kind: MediaKind::Video, enabled: false },
    );
    let _ = collect(&mut video_b, Duration::from_millis(300)).await;
    let muted = collect(&mut video_b, Duration::from_millis(500)).await;
    assert!(muted.is_empty(), "{} frames while muted", muted.len());
    pair.a.exec(
        &call,
        MediaCommand::SetTrackEnabled { stream_id: stream.clone(), kind: MediaKind::Video, enabled: true },
    );
    let unmuted = collect(&mut video_b, Duration::from_millis(700)).await;
    assert!(unmuted.len() >= 10, "only {} frames after unmute", unmuted.len());
    assert!(unmuted.iter().all(|(_, f)| read_frame_number(f).is_some()));

    pair.assert_no_failures();
    pair.hang_up_and_check_no_leaks().await;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        let mut queued = 0;
        while video_b.next().await.is_some() {
            queued += 1;
        }
        queued
    })
    .await;
    assert!(matches!(ended, Ok(q) if q <= 16), "the stream does not end with the call: {ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_rgba_frames_of_any_size_and_a_replaced_input() {
    let _serial = SERIAL.lock().await;
    let hub_a = VideoHub::new(VideoConfig::default());
    let hub_b = VideoHub::new(VideoConfig::default());
    let mut pair = Pair::new(
        WebrtcConfig::loopback().with_video(hub_a.clone()),
        WebrtcConfig::loopback().with_video(hub_b.clone()),
    );
    let call = pair.call.clone();
    let mut video_b = hub_b.remote_video(&call, &StreamId::from("a-user"));
    pair.connect(CallType::Video).await;
    // The app's capture callback: 320×240 RGBA, a red picture, every 40 ms.
    let input = hub_a.input(&call);
    let pusher = tokio::spawn({
        let input = input.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            let rgba: Vec<u8> = [220u8, 30, 30, 255].repeat(320 * 240);
            loop {
                tick.tick().await;
                input.push_rgba(320, 240, &rgba);
            }
        }
    });
    let _ = collect(&mut video_b, Duration::from_millis(700)).await;
    let frames = collect(&mut video_b, Duration::from_millis(1000)).await;
    pusher.abort();
    assert!(frames.len() >= 15, "frames {}", frames.len());
    let (_, last) = frames.last().unwrap();
    assert_eq!((last.width, last.height), (320, 240));
    let px = &last.to_rgba()[(120 * 320 + 160) * 4..][..3];
    eprintln!("pushed 320×240 red RGBA: {} frames in 1 s, centre pixel {px:?}", frames.len());
    assert!(px[0] > 180 && px[1] < 70 && px[2] < 70, "not red: {px:?}");

    // Replace the input mid-call with a 160×120 pattern: the size changes, frames carry numbers.
    input.replace(TestPattern::new(160, 120, 15));
    let _ = collect(&mut video_b, Duration::from_millis(500)).await;
    let frames = collect(&mut video_b, Duration::from_millis(1000)).await;
    assert!(frames.len() >= 10, "frames {}", frames.len());
    assert!(frames.iter().all(|(_, f)| (f.width, f.height) == (160, 120) && read_frame_number(f).is_some()));
    pair.assert_no_failures();
    pair.hang_up_and_check_no_leaks().await;
}
