// The browser peer's media for decoded-content checks (issue #17), the counterpart of what
// lib/shim.mjs does on wrtc in Node:
//
// - sending: `navigator.mediaDevices.getUserMedia` hands js-sdk a WebAudio OscillatorNode
//   (`toneHz`, through a MediaStreamAudioDestinationNode) as the microphone and, for a video
//   call, a canvas.captureStream() drawing the frame-number test pattern (lib/pattern.mjs
//   `patternFrame`, 640×480 at 15 fps) as the camera;
// - receiving: `measureAudio` analyses the remote track's decoded audio through WebAudio (a
//   ScriptProcessorNode collecting PCM; Chromium pulls remote WebRTC audio only for a stream that
//   also plays in a media element, so it plays muted in an <audio> element), `measureVideo`
//   reads the remote track's decoded frames through MediaStreamTrackProcessor (VideoFrame.copyTo
//   gives the luma plane) and their frame numbers.
//
// The reports have the fields of the Node peer's (lib/shim.mjs), so the harness checks both alike.

import { patternFrame, patternSummary, readFrameNumber, toneReport } from "../lib/pattern.mjs";

const VIDEO_W = 640;
const VIDEO_H = 480;
const VIDEO_FPS = 15;
/** The tone's amplitude, as the Node peer's (6000 / 32768). */
const TONE_GAIN = 6000 / 32768;

export async function installMedia({ toneHz = 440 } = {}) {
    const md = navigator.mediaDevices;
    const realGetUserMedia = md.getUserMedia.bind(md);
    // One real capture of the (fake) microphone, kept open: with media access in use Chromium
    // shows host candidates instead of mDNS names, as it did before the synthetic sources.
    const real = await realGetUserMedia({ audio: true });
    let ctx = null;
    const audioContext = async () => {
        if (!ctx) ctx = new AudioContext();
        if (ctx.state !== "running") await ctx.resume();
        return ctx;
    };

    /** A microphone: an OscillatorNode at `toneHz`. */
    async function micTrack() {
        const c = await audioContext();
        const osc = c.createOscillator();
        osc.frequency.value = toneHz;
        const gain = c.createGain();
        gain.gain.value = TONE_GAIN;
        const dest = c.createMediaStreamDestination();
        osc.connect(gain).connect(dest);
        osc.start();
        const track = dest.stream.getAudioTracks()[0];
        const watch = setInterval(() => {
            if (track.readyState === "ended") {
                clearInterval(watch);
                osc.stop();
                osc.disconnect();
            }
        }, 1000);
        return track;
    }

    /** A camera: the frame-number test pattern drawn on a canvas, 640×480 at 15 fps. */
    function cameraTrack() {
        const canvas = document.createElement("canvas");
        canvas.width = VIDEO_W;
        canvas.height = VIDEO_H;
        const g = canvas.getContext("2d");
        const image = g.createImageData(VIDEO_W, VIDEO_H);
        let n = 0;
        const draw = () => {
            // The pattern's luma (BT.601 limited range) as grey RGB, which the capture converts
            // back to the same luma.
            const y = patternFrame(n++, VIDEO_W, VIDEO_H);
            const px = image.data;
            for (let i = 0; i < VIDEO_W * VIDEO_H; i++) {
                const v = ((y[i] - 16) * 255) / 219;
                px[4 * i] = v;
                px[4 * i + 1] = v;
                px[4 * i + 2] = v;
                px[4 * i + 3] = 255;
            }
            g.putImageData(image, 0, 0);
        };
        draw();
        const track = canvas.captureStream(VIDEO_FPS).getVideoTracks()[0];
        const timer = setInterval(() => {
            if (track.readyState === "ended") clearInterval(timer);
            else draw();
        }, 1000 / VIDEO_FPS);
        return track;
    }

    md.getUserMedia = async (constraints) => {
        const tracks = [];
        if (constraints?.audio || !constraints?.video) tracks.push(await micTrack());
        if (constraints?.video) tracks.push(cameraTrack());
        return new MediaStream(tracks);
    };

    /**
     * Decoded audio of the peer connection's first remote audio track: skips `skipMs`, collects
     * `ms` of PCM (WebAudio's mono mix-down, at the context's rate) and analyses it.
     */
    async function measureAudio(peerConn, { ms = 2000, skipMs = 200, target = 440, freqs = [] } = {}) {
        const receiver = peerConn.getReceivers().find((r) => r.track?.kind === "audio");
        if (!receiver) throw new Error("no remote audio track");
        const stream = new MediaStream([receiver.track]);
        const el = document.createElement("audio");
        el.muted = true;
        el.srcObject = stream;
        document.body.appendChild(el);
        el.play().catch(() => {}); // not awaited: it settles only once the element plays
        const c = await audioContext();
        const rate = c.sampleRate;
        const src = c.createMediaStreamSource(stream);
        const proc = c.createScriptProcessor(4096, 1, 1);
        const mute = c.createGain();
        mute.gain.value = 0;
        src.connect(proc);
        proc.connect(mute).connect(c.destination);
        const chunks = [];
        let seen = 0;
        let kept = 0;
        await new Promise((resolve) => {
            const deadline = setTimeout(resolve, ms + skipMs + 5000);
            proc.onaudioprocess = (e) => {
                const data = e.inputBuffer.getChannelData(0);
                seen += data.length;
                if (seen <= (skipMs * rate) / 1000) return;
                chunks.push(Float32Array.from(data));
                kept += data.length;
                if (kept >= (ms * rate) / 1000) {
                    clearTimeout(deadline);
                    resolve();
                }
            };
        });
        proc.onaudioprocess = null;
        src.disconnect();
        proc.disconnect();
        el.srcObject = null;
        el.remove();
        if (!kept) throw new Error("WebAudio delivered no audio");
        const mono = new Float32Array(kept);
        let off = 0;
        for (const chunk of chunks) {
            mono.set(chunk, off);
            off += chunk.length;
        }
        return { ms: Math.round((kept * 1000) / rate), sample_rate: rate, channels: 1, ...toneReport(mono, rate, target, freqs) };
    }

    /**
     * Decoded video of the peer connection's first remote video track through
     * MediaStreamTrackProcessor: `ms` of frames; how many carried a frame number, whether the
     * numbers rise, the size, and how much the mean luma below the number rows moves.
     */
    async function measureVideo(peerConn, { ms = 3000 } = {}) {
        const receiver = peerConn.getReceivers().find((r) => r.track?.kind === "video");
        if (!receiver) throw new Error("no remote video track");
        if (typeof MediaStreamTrackProcessor !== "function") throw new Error("no MediaStreamTrackProcessor");
        const track = receiver.track.clone();
        const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
        const numbers = [];
        const lumas = [];
        const formats = new Set();
        let frames = 0;
        let width = 0;
        let height = 0;
        const end = performance.now() + ms;
        let timer;
        const timeout = new Promise((r) => {
            timer = setTimeout(() => r({ done: true }), ms);
        });
        while (performance.now() < end) {
            const { value: frame, done } = await Promise.race([reader.read(), timeout]);
            if (done) break;
            try {
                frames++;
                width = frame.displayWidth;
                height = frame.displayHeight;
                formats.add(frame.format);
                const y = await lumaPlane(frame);
                const n = readFrameNumber(y, width, height);
                if (n !== null) numbers.push(n);
                let sum = 0;
                const from = Math.floor(height / 5) * width;
                const to = width * height;
                for (let i = from; i < to; i += 7) sum += y[i];
                lumas.push(sum / Math.ceil((to - from) / 7));
            } finally {
                frame.close();
            }
        }
        clearTimeout(timer);
        await reader.cancel().catch(() => {});
        track.stop();
        return { ...patternSummary({ ms, frames, width, height, numbers, lumas }), formats: [...formats] };
    }

    return {
        real,
        measureAudio,
        measureVideo,
        stop() {
            for (const t of real.getTracks()) t.stop();
            ctx?.close();
        },
    };
}

/** The visible luma plane of a VideoFrame, `displayWidth × displayHeight` bytes (BT.601
 * limited range, as lib/pattern.mjs `readFrameNumber` expects). */
async function lumaPlane(frame) {
    const w = frame.displayWidth;
    const h = frame.displayHeight;
    const rect = { x: 0, y: 0, width: w, height: h };
    const out = new Uint8Array(w * h);
    const format = frame.format;
    if (format === "I420" || format === "I420A" || format === "NV12" || format === "I422" || format === "I444") {
        const buf = new Uint8Array(frame.allocationSize({ rect }));
        const [plane] = await frame.copyTo(buf, { rect });
        for (let r = 0; r < h; r++) out.set(buf.subarray(plane.offset + r * plane.stride, plane.offset + r * plane.stride + w), r * w);
        return out;
    }
    if (format === "RGBA" || format === "RGBX" || format === "BGRA" || format === "BGRX") {
        const buf = new Uint8Array(frame.allocationSize({ rect }));
        const [plane] = await frame.copyTo(buf, { rect });
        const [ri, bi] = format.startsWith("RGB") ? [0, 2] : [2, 0];
        for (let r = 0; r < h; r++) {
            for (let x = 0; x < w; x++) {
                const p = plane.offset + r * plane.stride + 4 * x;
                out[r * w + x] = 16 + (65.481 * buf[p + ri] + 128.553 * buf[p + 1] + 24.966 * buf[p + bi]) / 255;
            }
        }
        return out;
    }
    // Other formats (or none: a GPU-backed frame): draw it and read the pixels back.
    const canvas = new OffscreenCanvas(w, h);
    const g = canvas.getContext("2d", { willReadFrequently: true });
    g.drawImage(frame, 0, 0, w, h);
    const px = g.getImageData(0, 0, w, h).data;
    for (let i = 0; i < w * h; i++) out[i] = 16 + (65.481 * px[4 * i] + 128.553 * px[4 * i + 1] + 24.966 * px[4 * i + 2]) / 255;
    return out;
}
