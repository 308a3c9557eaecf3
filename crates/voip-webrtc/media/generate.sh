#!/usr/bin/env bash
# Regenerates the bundled test clips. Not needed to build or test the crate: the outputs are
# committed. Needs python3 and Debian's `opus-tools` and `vpx-tools`
# (`apt-get install -y opus-tools vpx-tools`).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp" <<'PY'
import math, struct, sys, wave
out = sys.argv[1]
# 2 s of mono 48 kHz audio: 440 Hz for 1 s, then 660 Hz for 1 s, amplitude 0.3.
rate = 48000
with wave.open(f"{out}/tone.wav", "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
    frames = bytearray()
    for i in range(2 * rate):
        f = 440.0 if i < rate else 660.0
        frames += struct.pack("<h", int(0.3 * 32767 * math.sin(2 * math.pi * f * i / rate)))
    w.writeframes(bytes(frames))
# 2 s of 160x120 I420 video at 15 fps: a white square moving over a gradient.
wd, ht, n = 160, 120, 30
with open(f"{out}/clip.yuv", "wb") as f:
    for k in range(n):
        y = bytearray((x + k * 4) % 256 for _ in range(ht) for x in range(wd))
        bx, by = (k * 4) % (wd - 32), (k * 3) % (ht - 32)
        for r in range(by, by + 32):
            for c in range(bx, bx + 32):
                y[r * wd + c] = 235
        f.write(bytes(y)); f.write(bytes([128]) * (wd * ht // 2))
with open(f"{out}/black.yuv", "wb") as f:
    f.write(bytes([16]) * (wd * ht)); f.write(bytes([128]) * (wd * ht // 2))
PY

opusenc --quiet --bitrate 32 --framesize 20 --max-delay 0 --comp 10 "$tmp/tone.wav" tone.ogg
vpxenc --quiet --codec=vp8 --ivf --i420 -w 160 -h 120 --fps=15/1 --target-bitrate=150 \
  --kf-max-dist=15 --kf-min-dist=15 -o clip.ivf "$tmp/clip.yuv"
vpxenc --quiet --codec=vp8 --ivf --i420 -w 160 -h 120 --fps=15/1 --target-bitrate=50 \
  -o black.ivf "$tmp/black.yuv"
