// What both js peers share for decoded-content checks, free of Node and browser APIs (the
// browser bundle imports it too): the frame-number test pattern (write and read) and the
// Goertzel tone analysis.

// The frame-number test pattern, the same layout as voip-webrtc's `TestPattern` (so either side
// reads the other's numbers): two rows of 20 blocks at the top, each a twentieth of the width and
// a tenth of the height: the 20 bits of the frame number (most significant first; white = 1),
// then their complement; below, a luma ramp that scrolls 4 px a frame.
const BITS = 20;
const WHITE = 235;
const BLACK = 16;

/** Frame `n` of the pattern as I420 (BT.601 limited range). */
export function patternFrame(n, w, h) {
    const data = new Uint8ClampedArray((w * h * 3) / 2);
    const bw = Math.max(Math.floor(w / BITS), 1);
    const bh = Math.max(Math.floor(h / 10), 2);
    for (let row = 0; row < h; row++) {
        const line = row * w;
        if (row < 2 * bh) {
            for (let bit = 0; bit < BITS; bit++) {
                const set = ((n >>> (BITS - 1 - bit)) & 1) === 1;
                data.fill((row < bh) === set ? WHITE : BLACK, line + bit * bw, line + (bit + 1) * bw);
            }
            data.fill(BLACK, line + BITS * bw, line + w);
        } else {
            const offset = (Math.floor(row / 2) + 4 * n) % 256;
            for (let x = 0; x < w; x++) data[line + x] = 40 + Math.floor((((offset + x) % 256) * 150) / 256);
        }
    }
    data.fill(128, w * h);
    return data;
}

/** The frame number the pattern drew into an I420 picture, or null (not clean). */
export function readFrameNumber(data, w, h) {
    if (w < BITS || h < 8) return null;
    const bw = Math.max(Math.floor(w / BITS), 1);
    const bh = Math.max(Math.floor(h / 10), 2);
    const mean = (bit, row) => {
        const x0 = bit * bw + Math.floor(bw / 4);
        const y0 = row * bh + Math.floor(bh / 4);
        const x1 = x0 + Math.max(Math.floor(bw / 2), 1);
        const y1 = y0 + Math.max(Math.floor(bh / 2), 1);
        let sum = 0;
        for (let r = y0; r < y1; r++) for (let c = x0; c < x1; c++) sum += data[r * w + c];
        return sum / ((x1 - x0) * (y1 - y0));
    };
    const mid = (WHITE + BLACK) / 2;
    let n = 0;
    for (let bit = 0; bit < BITS; bit++) {
        const a = mean(bit, 0);
        const b = mean(bit, 1);
        const one = a > mid && b < mid;
        const zero = a < mid && b > mid;
        if (!(one || zero) || Math.abs(a - b) < 100) return null;
        n = n * 2 + (one ? 1 : 0);
    }
    return n;
}

/** Power of `samples` (f32, [-1, 1)) at `freq` Hz, Goertzel, normalised by the length: a
 * full-scale sine gives about 0.25 (the same as voip-webrtc's `goertzel_power`). */
export function goertzel(samples, sampleRate, freq) {
    const w = (2 * Math.PI * freq) / sampleRate;
    const coeff = 2 * Math.cos(w);
    let s1 = 0;
    let s2 = 0;
    for (let i = 0; i < samples.length; i++) {
        const s0 = samples[i] + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    const n = Math.max(samples.length, 1);
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n);
}

/** Tone analysis of decoded PCM: level, power at each frequency, and how far `target` stands
 * above the strongest of the others (dB). */
export function toneReport(mono, sampleRate, target, freqs) {
    const power = {};
    for (const f of [target, ...freqs]) power[f] = goertzel(mono, sampleRate, f);
    const others = freqs.filter((f) => f !== target).map((f) => power[f]);
    const off = Math.max(...others, 1e-20);
    let sq = 0;
    for (let i = 0; i < mono.length; i++) sq += mono[i] * mono[i];
    const rms = Math.sqrt(sq / Math.max(mono.length, 1));
    return {
        target,
        margin_db: 10 * Math.log10(Math.max(power[target], 1e-20) / off),
        level_dbfs: rms <= 1e-5 ? -100 : 20 * Math.log10(rms),
        power_db: Object.fromEntries(Object.entries(power).map(([f, p]) => [f, 10 * Math.log10(Math.max(p, 1e-20))])),
    };
}

/**
 * What a js peer reports of the decoded pattern it watched for `ms`: frame count and size, the
 * frame numbers it could read (how many, whether in order, first and last) and the mean and
 * spread of the frames' luma.
 */
export function patternSummary({ ms, frames, width, height, numbers, lumas }) {
    let rising = 0;
    for (let i = 1; i < numbers.length; i++) if (numbers[i] > numbers[i - 1]) rising++;
    const m = lumas.reduce((a, b) => a + b, 0) / Math.max(lumas.length, 1);
    const luma_sd = Math.sqrt(lumas.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(lumas.length, 1));
    return {
        ms,
        frames,
        width,
        height,
        numbered: numbers.length,
        in_order: numbers.length > 1 && rising === numbers.length - 1,
        first: numbers[0] ?? null,
        last: numbers[numbers.length - 1] ?? null,
        luma_mean: m,
        luma_sd,
    };
}
