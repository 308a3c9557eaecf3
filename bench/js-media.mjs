#!/usr/bin/env node
// The anchor side of `cargo xtask bench --media` (docs/benchmarks.md, issue #17): one 1:1 voice
// call between two libwebrtc peers (@roamhq/wrtc, libwebrtc M106) in one Node process, measured
// the way interop/rust-peer's `media-bench` measures two matrix-voip-rs peers:
//
//   node bench/js-media.mjs [--seconds 20] [--warmup 2] [--video] [--out FILE]
//
// * CPU: user + system time of the whole process (/proc/self/stat) over the call window;
// * memory: VmRSS during the call minus before the first peer connection existed;
// * mouth-to-ear delay: each side sends 500 ms tone bursts once a second through an
//   RTCAudioSource (10 ms frames of 48 kHz PCM, paced by the clock); the instant a burst's first
//   frame is pushed to the instant the other side's RTCAudioSink delivers the first decoded frame
//   above −30 dBFS.
//
// `--video` makes it a video call: both ends also send the frame-number test pattern
// (interop/lib/shim.mjs `patternFrame`, the layout of voip-webrtc's `TestPattern`) from an
// RTCVideoSource at 640×480, 30 fps, capped at 1000 kbit/s by `b=AS` (the Rust side's VP8
// bitrate), and count the other's decoded frames at an RTCVideoSink.
//
// The SDP goes straight from one RTCPeerConnection to the other (no signalling server: the
// signalling is not what is measured). Must run inside the network namespace `cargo xtask bench`
// creates (wrtc ignores `lo` when a real interface exists). Reuses interop/'s pinned install.

import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "interop", "package.json"));
const wrtc = require("@roamhq/wrtc");
const { RTCAudioSource, RTCAudioSink, RTCVideoSource, RTCVideoSink } = wrtc.nonstandard;
const { patternFrame } = await import("../interop/lib/shim.mjs");

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
};
const seconds = Number(opt("--seconds", "20"));
const warmup = Number(opt("--warmup", "2"));
const out = opt("--out");
const video = argv.includes("--video");
const VIDEO = { width: 640, height: 480, fps: 30, maxBitrate: 1_000_000 };

const RATE = 48000;
const FRAME = RATE / 100; // 10 ms, as RTCAudioSource requires
const PERIOD = RATE; // one burst a second
const BURST = RATE / 2; // 500 ms of tone
const AMPLITUDE = 0.3;
const LOUD_DBFS = -30;
const QUIET_DBFS = -50;

const now = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** User + system CPU seconds of this process, all threads (USER_HZ = 100). */
function cpuSeconds() {
    const stat = readFileSync("/proc/self/stat", "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
}

function rssMib() {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"));
    return Number(m[1]) / 1024;
}

/** An RTCAudioSource fed tone bursts at real-time pace; remembers each burst's push instant. */
function burstSource(freq) {
    const source = new RTCAudioSource();
    const onsets = [];
    let n = 0;
    const start = now();
    const timer = setInterval(() => {
        // Catch up with the clock (Node timers drift): one 10 ms frame per elapsed 10 ms.
        const due = Math.floor(((now() - start) * RATE) / 1000);
        while (n + FRAME <= due + FRAME) {
            const samples = new Int16Array(FRAME);
            for (let i = 0; i < FRAME; i++, n++) {
                const pos = n % PERIOD;
                if (pos === 0) onsets.push(now());
                samples[i] = pos < BURST ? Math.round(32767 * AMPLITUDE * Math.sin((2 * Math.PI * freq * n) / RATE)) : 0;
            }
            source.onData({ samples, sampleRate: RATE, bitsPerSample: 16, channelCount: 1, numberOfFrames: FRAME });
        }
    }, 10);
    return { track: source.createTrack(), onsets, stop: () => clearInterval(timer) };
}

/** An RTCVideoSource fed the test pattern at VIDEO.fps (paced by the clock). */
function patternSource() {
    const source = new RTCVideoSource();
    let n = 0;
    const start = now();
    const timer = setInterval(() => {
        const due = Math.floor(((now() - start) * VIDEO.fps) / 1000);
        while (n <= due) source.onFrame({ width: VIDEO.width, height: VIDEO.height, data: patternFrame(n++, VIDEO.width, VIDEO.height) });
    }, 1000 / VIDEO.fps / 2);
    return { track: source.createTrack(), stop: () => clearInterval(timer) };
}

/** Decoded frames at an RTCVideoSink on `track`, while `recording.on`. */
function watchVideo(track, recording) {
    const sink = new RTCVideoSink(track);
    const seen = { frames: 0, width: 0, height: 0 };
    sink.onframe = ({ frame }) => {
        if (!recording.on) return;
        seen.frames++;
        seen.width = frame.width;
        seen.height = frame.height;
    };
    return { seen, stop: () => sink.stop() };
}

/** Video bytes received by `pc` (inbound-rtp). */
async function videoBytes(pc) {
    let bytes = 0;
    (await pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && (s.kind ?? s.mediaType) === "video") bytes += s.bytesReceived ?? 0;
    });
    return bytes;
}

function levelDbfs(samples, channels) {
    let sq = 0;
    let k = 0;
    for (let i = 0; i < samples.length; i += channels, k++) sq += (samples[i] / 32768) ** 2;
    const rms = Math.sqrt(sq / Math.max(k, 1));
    return rms <= 1e-5 ? -100 : 20 * Math.log10(rms);
}

/** Burst arrivals at an RTCAudioSink on `track`, while `recording.on`. */
function listen(track, recording) {
    const sink = new RTCAudioSink(track);
    const heard = [];
    let loud = false;
    let frames = 0;
    sink.ondata = (d) => {
        if (!recording.on) return;
        frames++;
        const level = levelDbfs(d.samples, d.channelCount);
        if (!loud && level > LOUD_DBFS) {
            loud = true;
            heard.push(now());
        } else if (loud && level < QUIET_DBFS) loud = false;
    };
    return { heard, frames: () => frames, stop: () => sink.stop() };
}

function delays(onsets, heard) {
    const out = [];
    for (const h of heard) {
        const o = onsets.filter((x) => x <= h).pop();
        if (o !== undefined && h - o < (PERIOD * 1000) / RATE) out.push(h - o);
    }
    return out;
}

const median = (xs) => {
    const v = [...xs].sort((a, b) => a - b);
    return v.length ? v[Math.floor(v.length / 2)] : NaN;
};

async function main() {
    const rssBefore = rssMib();
    const tCall = now();
    const pcA = new wrtc.RTCPeerConnection({ iceServers: [] });
    const pcB = new wrtc.RTCPeerConnection({ iceServers: [] });
    pcA.onicecandidate = (e) => e.candidate && pcB.addIceCandidate(e.candidate).catch(() => {});
    pcB.onicecandidate = (e) => e.candidate && pcA.addIceCandidate(e.candidate).catch(() => {});
    const srcA = burstSource(1000);
    const srcB = burstSource(440);
    pcA.addTrack(srcA.track, new wrtc.MediaStream([srcA.track]));
    pcB.addTrack(srcB.track, new wrtc.MediaStream([srcB.track]));
    const cams = [];
    if (video) {
        for (const pc of [pcA, pcB]) {
            const cam = patternSource();
            pc.addTrack(cam.track, new wrtc.MediaStream([cam.track]));
            cams.push({ cam });
        }
    }
    const recording = { on: false };
    const remoteVideo = [];
    const remote = (pc) =>
        new Promise((resolve) => {
            pc.ontrack = (e) => {
                if (e.track.kind === "audio") resolve(e.track);
                else remoteVideo.push(e.track);
            };
        });
    const trackAtA = remote(pcA);
    const trackAtB = remote(pcB);
    // Video: cap each sender at the Rust side's VP8 bitrate with `b=AS` in the description it
    // receives (libwebrtc would ramp up to ~2.5 Mbit/s; wrtc's setParameters refuses maxBitrate).
    const capped = (d) => {
        if (!video) return d;
        const sdp = d.sdp.replace(/(m=video[^\r\n]*\r\n(?:[^m][^\r\n]*\r\n)*?c=[^\r\n]*\r\n)/, `$1b=AS:${VIDEO.maxBitrate / 1000}\r\n`);
        return { type: d.type, sdp };
    };
    await pcA.setLocalDescription(await pcA.createOffer());
    await pcB.setRemoteDescription(capped(pcA.localDescription));
    await pcB.setLocalDescription(await pcB.createAnswer());
    await pcA.setRemoteDescription(capped(pcB.localDescription));
    const connected = (pc) =>
        new Promise((resolve, reject) => {
            const check = () => {
                if (pc.connectionState === "connected" || pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") resolve();
                if (pc.connectionState === "failed") reject(new Error("connection failed"));
            };
            pc.onconnectionstatechange = check;
            pc.oniceconnectionstatechange = check;
            check();
        });
    await Promise.race([Promise.all([connected(pcA), connected(pcB)]), sleep(20000).then(() => Promise.reject(new Error("not connected in 20 s")))]);
    const connectedMs = now() - tCall;

    const atB = listen(await trackAtB, recording);
    const atA = listen(await trackAtA, recording);
    const watchers = remoteVideo.map((t) => watchVideo(t, recording));
    await sleep(warmup * 1000);

    const bytes0 = video ? (await videoBytes(pcA)) + (await videoBytes(pcB)) : 0;
    const cpu0 = cpuSeconds();
    const wall0 = now();
    recording.on = true;
    await sleep(seconds * 1000);
    recording.on = false;
    const cpu = cpuSeconds() - cpu0;
    const wall = (now() - wall0) / 1000;
    const bytes = video ? (await videoBytes(pcA)) + (await videoBytes(pcB)) - bytes0 : 0;
    const rssCall = rssMib();
    const all = [...delays(srcA.onsets, atB.heard), ...delays(srcB.onsets, atA.heard)];
    const result = {
        impl: "libwebrtc M106 (@roamhq/wrtc 0.10.0, Node)",
        video,
        video_decoded: watchers.map((w) => ({ ...w.seen })),
        video_kbps_each_way: video ? (bytes * 8) / 1000 / wall / 2 : undefined,
        seconds: wall,
        connected_ms: connectedMs,
        cpu_s: cpu,
        cpu_s_per_20s_call: (cpu * 20) / wall,
        cpu_percent_of_one_core: (100 * cpu) / wall,
        rss_before_mib: rssBefore,
        rss_call_mib: rssCall,
        rss_per_call_mib: rssCall - rssBefore,
        decoded_frames: [atA.frames(), atB.frames()],
        bursts_heard: all.length,
        delays_ms: all,
        delay_median_ms: median(all),
    };
    for (const x of [srcA, srcB, atA, atB, ...watchers, ...cams.map((c) => c.cam)]) x.stop();
    pcA.close();
    pcB.close();
    process.stdout.write(JSON.stringify(result) + "\n");
    if (out) writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
    if (all.length < seconds) {
        console.error(`only ${all.length} bursts heard in ${seconds} s both ways`);
        process.exit(1);
    }
    setTimeout(() => process.exit(0), 100);
}

main().catch((e) => {
    console.error(e?.stack ?? e);
    process.exit(1);
});
