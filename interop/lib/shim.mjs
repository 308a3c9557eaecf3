// Browser globals matrix-js-sdk needs for VoIP, on @roamhq/wrtc (libwebrtc M106) in Node.
//
// js-sdk decides VoIP support in createClient() (supportsMatrixCall() reads window, document and
// RTCPeerConnection), so this must run before the SDK creates a client.
//
// `trickle: true` makes wrtc behave like a browser does on the wire: the offer/answer SDP carries
// no candidates and every candidate goes out in m.call.candidates (with wrtc, js-sdk's 200 ms wait
// otherwise catches all loopback candidates in the SDP and sends no m.call.candidates at all).

import { createRequire } from "node:module";

import { polyfillPromiseWithResolvers } from "./node-compat.mjs";
import { patternFrame, patternSummary, readFrameNumber, toneReport } from "./pattern.mjs";

export { goertzel, patternFrame, readFrameNumber, toneReport } from "./pattern.mjs";

const require = createRequire(import.meta.url);
const wrtc = require("@roamhq/wrtc");

const SAMPLE_RATE = 48000;
const FRAME = SAMPLE_RATE / 100; // 10 ms frames, as RTCAudioSource requires
const VIDEO_W = 640;
const VIDEO_H = 480;
const VIDEO_FPS = 15;

export function setupShim({ trickle = false, toneHz = 440 } = {}) {
    polyfillPromiseWithResolvers();

    const sources = [];
    const timers = [];

    /** A fake microphone: a `toneHz` tone (440 Hz by default), 10 ms frames from a timer. */
    function micTrack() {
        const source = new wrtc.nonstandard.RTCAudioSource();
        const samples = new Int16Array(FRAME);
        let phase = 0;
        const timer = setInterval(() => {
            for (let i = 0; i < FRAME; i++) {
                samples[i] = Math.round(6000 * Math.sin(phase));
                phase += (2 * Math.PI * toneHz) / SAMPLE_RATE;
            }
            source.onData({ samples, sampleRate: SAMPLE_RATE, bitsPerSample: 16, channelCount: 1, numberOfFrames: FRAME });
        }, 10);
        sources.push(source);
        timers.push(timer);
        return source.createTrack();
    }

    if (!wrtc.MediaStreamTrack.prototype.getSettings) {
        wrtc.MediaStreamTrack.prototype.getSettings = function () {
            return { deviceId: "interop-mic", groupId: "interop" };
        };
    }

    /** A fake camera: the frame-number test pattern (`patternFrame`), 640×480 at 15 fps. */
    function cameraTrack() {
        const source = new wrtc.nonstandard.RTCVideoSource();
        let n = 0;
        const timer = setInterval(() => {
            source.onFrame({ width: VIDEO_W, height: VIDEO_H, data: patternFrame(n++, VIDEO_W, VIDEO_H) });
        }, 1000 / VIDEO_FPS);
        sources.push(source);
        timers.push(timer);
        return source.createTrack();
    }

    const mediaDevices = {
        async getUserMedia(constraints) {
            const tracks = [];
            if (constraints?.audio) tracks.push(micTrack());
            if (constraints?.video) tracks.push(cameraTrack());
            return new wrtc.MediaStream(tracks.length ? tracks : [micTrack()]);
        },
        async enumerateDevices() {
            return [
                { kind: "audioinput", deviceId: "interop-mic", label: "interop tone", groupId: "interop" },
                { kind: "videoinput", deviceId: "interop-cam", label: "interop pattern", groupId: "interop" },
            ];
        },
        async getDisplayMedia() {
            throw new Error("no screen in the interop peer");
        },
        addEventListener() {},
        removeEventListener() {},
    };

    const PeerConnection = trickle ? tricklePeerConnection(wrtc.RTCPeerConnection) : wrtc.RTCPeerConnection;

    class AudioContext {
        createAnalyser() {
            return { fftSize: 512, smoothingTimeConstant: 0.1, frequencyBinCount: 256, getFloatFrequencyData() {} };
        }
        createMediaStreamSource() {
            return { connect() {}, disconnect() {} };
        }
        close() {
            return Promise.resolve();
        }
    }

    const g = globalThis;
    g.window = g;
    g.document = g.document ?? { createElement: () => ({ play() {}, pause() {} }), addEventListener() {} };
    Object.defineProperty(g, "navigator", {
        value: { mediaDevices, userAgent: "matrix-voip-rs-interop", onLine: true },
        configurable: true,
        writable: true,
    });
    g.RTCPeerConnection = PeerConnection;
    g.RTCSessionDescription = wrtc.RTCSessionDescription;
    g.RTCIceCandidate = wrtc.RTCIceCandidate;
    g.RTCRtpReceiver = wrtc.RTCRtpReceiver ?? class RTCRtpReceiver {};
    g.RTCRtpSender = wrtc.RTCRtpSender ?? class RTCRtpSender {};
    g.RTCRtpTransceiver = wrtc.RTCRtpTransceiver ?? class RTCRtpTransceiver {};
    g.MediaStream = wrtc.MediaStream;
    g.MediaStreamTrack = wrtc.MediaStreamTrack;
    g.AudioContext = AudioContext;
    g.webkitAudioContext = AudioContext;

    return {
        stop() {
            for (const t of timers) clearInterval(t);
        },
        measureAudio,
        measureVideo,
    };
}

/**
 * Decoded video of the peer connection's first remote video track, through wrtc's
 * `RTCVideoSink`: `ms` of frames; how many carried a frame number, whether the numbers rise,
 * the size, and how much the mean luma below the number rows moves.
 */
async function measureVideo(peerConn, { ms = 3000 } = {}) {
    const receiver = peerConn?.getReceivers?.().find((r) => r.track?.kind === "video");
    if (!receiver) throw new Error("no remote video track");
    const sink = new wrtc.nonstandard.RTCVideoSink(receiver.track);
    const numbers = [];
    const lumas = [];
    let frames = 0;
    let width = 0;
    let height = 0;
    await new Promise((resolve) => {
        setTimeout(resolve, ms);
        sink.onframe = ({ frame }) => {
            frames++;
            width = frame.width;
            height = frame.height;
            const n = readFrameNumber(frame.data, frame.width, frame.height);
            if (n !== null) numbers.push(n);
            let sum = 0;
            const from = Math.floor(frame.height / 5) * frame.width;
            const to = frame.width * frame.height;
            for (let i = from; i < to; i += 7) sum += frame.data[i];
            lumas.push(sum / Math.ceil((to - from) / 7));
        };
    });
    sink.stop();
    return patternSummary({ ms, frames, width, height, numbers, lumas });
}

/**
 * Decoded audio of the peer connection's first remote audio track, through wrtc's
 * `RTCAudioSink`: skips `skipMs`, collects `ms` of PCM (first channel) and analyses it.
 */
async function measureAudio(peerConn, { ms = 2000, skipMs = 200, target = 440, freqs = [] } = {}) {
    const receiver = peerConn?.getReceivers?.().find((r) => r.track?.kind === "audio");
    if (!receiver) throw new Error("no remote audio track");
    const sink = new wrtc.nonstandard.RTCAudioSink(receiver.track);
    const chunks = [];
    let rate = 0;
    let channels = 0;
    let seen = 0;
    let kept = 0;
    await new Promise((resolve) => {
        const deadline = setTimeout(resolve, ms + skipMs + 5000);
        sink.ondata = (d) => {
            rate = d.sampleRate;
            channels = d.channelCount;
            const frames = d.numberOfFrames ?? d.samples.length / d.channelCount;
            seen += frames;
            if (seen <= (skipMs * rate) / 1000) return;
            const mono = new Float32Array(frames);
            for (let i = 0; i < frames; i++) mono[i] = d.samples[i * d.channelCount] / 32768;
            chunks.push(mono);
            kept += frames;
            if (kept >= (ms * rate) / 1000) {
                clearTimeout(deadline);
                resolve();
            }
        };
    });
    sink.stop();
    const mono = new Float32Array(kept);
    let off = 0;
    for (const c of chunks) {
        mono.set(c, off);
        off += c.length;
    }
    if (!rate || !kept) throw new Error("RTCAudioSink delivered no audio");
    return { ms: Math.round((kept * 1000) / rate), sample_rate: rate, channels, ...toneReport(mono, rate, target, freqs) };
}

/**
 * wrtc's RTCPeerConnection defines its properties on the instance, so wrap instances: strip
 * candidates from the local description and deliver candidate/gathering events only after js-sdk
 * has sent its invite or answer (it waits 200 ms and then drops queued candidates).
 */
function tricklePeerConnection(Base) {
    const DELAY_MS = 400;
    return function TricklePeerConnection(config) {
        const pc = new Base(config);
        const strip = (d) => {
            if (!d) return d;
            const sdp = d.sdp
                .split("\r\n")
                .filter((l) => !l.startsWith("a=candidate:") && l !== "a=end-of-candidates")
                .join("\r\n");
            return { type: d.type, sdp, toJSON: () => ({ type: d.type, sdp }) };
        };
        const add = pc.addEventListener.bind(pc);
        const addEventListener = (type, listener, o) => {
            if (type === "icecandidate" || type === "icegatheringstatechange") {
                const delay = type === "icecandidate" ? DELAY_MS : DELAY_MS + 50;
                return add(type, (e) => setTimeout(() => listener(e), delay), o);
            }
            return add(type, listener, o);
        };
        // The instance's properties are not configurable: wrap it instead.
        return new Proxy(pc, {
            get(target, prop) {
                if (prop === "localDescription") return strip(target.localDescription);
                if (prop === "addEventListener") return addEventListener;
                return target[prop];
            },
        });
    };
}
