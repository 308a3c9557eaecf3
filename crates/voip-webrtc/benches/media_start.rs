//! Issue #5: time from "both descriptions set" to media flowing, on real webrtc-rs over
//! loopback (`WebrtcConfig::loopback()`, the bundled Opus tone and VP8 clip, trickle ICE).
//!
//! One iteration: two fresh engines; A creates the peer and its usermedia stream and offers, B
//! sets the offer, adds its stream and answers. The clock starts when A is told to set the
//! answer (the last description of the call to be set) and stops at the arrival of the first
//! RTP packet on the *last* remote track of the call to receive one (both directions: audio for
//! a voice call, audio and video for a video call; the arrival instant is the one the engine's
//! `TrackSink` stamps, so event polling does not add to it). It therefore covers ICE
//! connectivity checks, DTLS handshake, SRTP setup and the first paced frame on both sides.
//!
//! Run: `cargo bench -p voip-webrtc --bench media_start` (numbers in `docs/benchmarks.md`).
//! Under `cargo test --all-targets` criterion runs each benchmark once as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Pair;
use criterion::{criterion_group, criterion_main, Criterion};
use voip_core::media::{CallType, MediaCommand, MediaKind, StreamPurpose};
use voip_core::StreamId;

/// The remote tracks each side must receive media on.
fn expected(call_type: CallType) -> Vec<MediaKind> {
    match call_type {
        CallType::Voice => vec![MediaKind::Audio],
        CallType::Video => vec![MediaKind::Audio, MediaKind::Video],
    }
}

/// First-packet arrival of every expected remote track, once all have one.
fn first_packets(p: &Pair, call_type: CallType) -> Option<Vec<Instant>> {
    let call = &p.call;
    let mut firsts = Vec::new();
    for (side, stream) in [(&p.a, "b-user"), (&p.b, "a-user")] {
        for kind in expected(call_type) {
            firsts.push(side.remote(call, stream, kind)?.stats.first_at?);
        }
    }
    Some(firsts)
}

/// One call set up on two fresh loopback engines; returns the time from "answer set on A" to
/// "the last remote track received its first packet", then closes the call.
async fn time_to_media(call_type: CallType) -> Duration {
    let mut p = Pair::loopback();
    let call = p.call.clone();
    let video = call_type == CallType::Video;
    let stream = |id: &str| MediaCommand::AddLocalStream {
        stream_id: StreamId::from(id),
        purpose: StreamPurpose::Usermedia,
        audio: true,
        video,
    };
    p.a.exec(&call, MediaCommand::CreatePeer { call_type });
    p.a.exec(&call, stream("a-user"));
    p.b.exec(&call, MediaCommand::CreatePeer { call_type });
    p.a.exec(&call, MediaCommand::CreateOffer { ice_restart: false });
    let offer = p.take_description(true).await;
    p.b.exec(&call, MediaCommand::set_remote_description(offer));
    p.b.exec(&call, stream("b-user"));
    p.b.exec(&call, MediaCommand::CreateAnswer);
    let answer = p.take_description(false).await;
    let start = Instant::now();
    p.a.exec(&call, MediaCommand::set_remote_description(answer));
    let flowing = p.pump_until(Duration::from_secs(20), |p| first_packets(p, call_type).is_some()).await;
    assert!(flowing, "media did not flow: a {:?} b {:?}", p.a.events, p.b.events);
    p.assert_no_failures();
    let last = first_packets(&p, call_type).and_then(|f| f.into_iter().max()).expect("checked above");
    p.a.exec(&call, MediaCommand::Close);
    p.b.exec(&call, MediaCommand::Close);
    p.a.engine.wait_closed().await;
    p.b.engine.wait_closed().await;
    last.saturating_duration_since(start)
}

fn media_start(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("descriptions_set_to_media_flowing");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(15));
    for (name, call_type) in [("voice", CallType::Voice), ("video", CallType::Video)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(time_to_media(call_type))).sum::<Duration>())
        });
    }
    g.finish();
}

criterion_group!(benches, media_start);
criterion_main!(benches);
