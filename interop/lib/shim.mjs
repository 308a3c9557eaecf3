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

const require = createRequire(import.meta.url);
const wrtc = require("@roamhq/wrtc");

const SAMPLE_RATE = 48000;
const FRAME = SAMPLE_RATE / 100; // 10 ms frames, as RTCAudioSource requires

export function setupShim({ trickle = false } = {}) {
    polyfillPromiseWithResolvers();

    const sources = [];
    const timers = [];

    /** A fake microphone: a 440 Hz tone, 10 ms frames from a timer. */
    function micTrack() {
        const source = new wrtc.nonstandard.RTCAudioSource();
        const samples = new Int16Array(FRAME);
        let phase = 0;
        const timer = setInterval(() => {
            for (let i = 0; i < FRAME; i++) {
                samples[i] = Math.round(6000 * Math.sin(phase));
                phase += (2 * Math.PI * 440) / SAMPLE_RATE;
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

    const mediaDevices = {
        async getUserMedia(constraints) {
            if (constraints?.video) {
                const e = new Error("no camera in the interop peer");
                e.name = "NotFoundError";
                throw e;
            }
            return new wrtc.MediaStream([micTrack()]);
        },
        async enumerateDevices() {
            return [{ kind: "audioinput", deviceId: "interop-mic", label: "interop tone", groupId: "interop" }];
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
    };
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
