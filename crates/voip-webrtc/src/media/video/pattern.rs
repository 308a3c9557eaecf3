//! [`TestPattern`]: a moving picture that carries its frame number, and
//! [`read_frame_number`], which finds the number again in a decoded picture.
//!
//! The number is drawn as two rows of 20 large blocks at the top of the picture: the 20 bits of
//! the frame number (most significant first; white is 1), then their complement. A block is a
//! twentieth of the width and a tenth of the height (64×48 at 640×480), so coding artefacts
//! cannot flip a bit, and the complement row tells a clean picture from a broken one.

use std::time::Duration;

use super::frame::{chroma_size, VideoFrame};
use super::input::VideoSource;

/// Bits of the frame number (it wraps after 2^20 frames, 9.7 hours at 30 fps).
pub const FRAME_NUMBER_BITS: u32 = 20;
const WHITE: u8 = 235;
const BLACK: u8 = 16;

/// A moving test pattern at `width`×`height` and `fps` frames per second, endless: a diagonal
/// luma gradient and colour bands that scroll, a square that moves, and the frame number.
#[derive(Clone, Debug)]
pub struct TestPattern {
    width: u32,
    height: u32,
    fps: u32,
    next: u32,
}

fn block_size(width: u32, height: u32) -> (u32, u32) {
    ((width / FRAME_NUMBER_BITS).max(1), (height / 10).max(2))
}

impl TestPattern {
    /// A pattern starting at frame 0.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        TestPattern { width: width.max(FRAME_NUMBER_BITS), height: height.max(8), fps: fps.max(1), next: 0 }
    }

    /// Frame `n` of the pattern (its timestamp is `n / fps`).
    pub fn frame(&self, n: u32) -> VideoFrame {
        let (w, h) = (self.width, self.height);
        let mut f = VideoFrame::black(w, h);
        f.timestamp = Duration::from_micros(u64::from(n) * 1_000_000 / u64::from(self.fps));
        let (bw, bh) = block_size(w, h);
        let shift = n.wrapping_mul(4);
        let sq = h / 5;
        let (sx, sy) = (n.wrapping_mul(6) % w, h / 2 + (n % 40) * (h / 200).max(1));
        // A scrolling luma ramp: row r is the ramp shifted by r / 2 + 4n.
        let ramp: Vec<u8> = (0..512u32).map(|i| (40 + (i % 256) * 150 / 256) as u8).collect();
        let w_us = w as usize;
        let y = &mut f.data[..(w * h) as usize];
        for (row, line) in y.chunks_exact_mut(w_us).enumerate() {
            let row = row as u32;
            let offset = ((row / 2 + shift) % 256) as usize;
            for (chunk, out) in line.chunks_mut(256).enumerate() {
                let from = (offset + chunk * 256) % 256;
                out.copy_from_slice(&ramp[from..from + out.len()]);
            }
            if row < 2 * bh {
                for bit in 0..FRAME_NUMBER_BITS {
                    let set = (n >> (FRAME_NUMBER_BITS - 1 - bit)) & 1 == 1;
                    let value = if (row < bh) == set { WHITE } else { BLACK };
                    line[(bit * bw) as usize..((bit + 1) * bw) as usize].fill(value);
                }
            } else if row >= sy && row < sy + sq {
                for i in 0..sq {
                    line[((sx + i) % w) as usize] = 200;
                }
            }
        }
        let (cw, ch) = chroma_size(w, h);
        let luma = (w * h) as usize;
        let chroma = (cw * ch) as usize;
        for row in 0..ch {
            for col in 0..cw {
                let i = (row * cw + col) as usize;
                let top = row * 2 < 2 * bh;
                f.data[luma + i] = if top { 128 } else { (64 + ((col + shift / 2) % 128)) as u8 };
                f.data[luma + chroma + i] =
                    if top { 128 } else { (64 + ((row * 2 + shift / 3) % 128)) as u8 };
            }
        }
        f
    }
}

impl VideoSource for TestPattern {
    fn fps(&self) -> u32 {
        self.fps
    }

    fn next_frame(&mut self) -> Option<VideoFrame> {
        let f = self.frame(self.next);
        self.next = self.next.wrapping_add(1);
        Some(f)
    }
}

/// The frame number a [`TestPattern`] drew into `frame` (at any size it was scaled to), or
/// `None` when the picture does not carry one cleanly (not a pattern, or broken by loss).
pub fn read_frame_number(frame: &VideoFrame) -> Option<u32> {
    let (w, h) = (frame.width, frame.height);
    if w < FRAME_NUMBER_BITS || h < 8 {
        return None;
    }
    let (bw, bh) = block_size(w, h);
    let y = frame.y();
    // Mean luma of the inner half of a block.
    let mean = |bit: u32, row: u32| -> u32 {
        let (x0, y0) = (bit * bw + bw / 4, row * bh + bh / 4);
        let (x1, y1) = (x0 + (bw / 2).max(1), y0 + (bh / 2).max(1));
        let mut sum = 0u32;
        for r in y0..y1 {
            for c in x0..x1 {
                sum += u32::from(y[(r * w + c) as usize]);
            }
        }
        sum / ((x1 - x0) * (y1 - y0))
    };
    let mid = u32::from(WHITE + BLACK) / 2;
    let mut n = 0;
    for bit in 0..FRAME_NUMBER_BITS {
        let (a, b) = (mean(bit, 0), mean(bit, 1));
        let one = a > mid && b < mid;
        let zero = a < mid && b > mid;
        if !(one || zero) || a.abs_diff(b) < 100 {
            return None;
        }
        n = (n << 1) | u32::from(one);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_survive_scaling_and_noise_and_garbage_reads_none() {
        let p = TestPattern::new(640, 480, 30);
        for n in [0, 1, 2, 77, 1000, (1 << 20) - 1] {
            let f = p.frame(n);
            assert_eq!(read_frame_number(&f), Some(n));
            assert_eq!(read_frame_number(&f.scaled(320, 240)), Some(n));
            assert_eq!(read_frame_number(&f.scaled(160, 120)), Some(n));
            let mut noisy = f.clone();
            for (i, px) in noisy.data.iter_mut().enumerate() {
                *px = px.saturating_add((i * 7919 % 31) as u8).saturating_sub(15);
            }
            assert_eq!(read_frame_number(&noisy), Some(n));
        }
        assert_ne!(p.frame(1).y(), p.frame(2).y(), "the picture moves");
        assert_eq!(read_frame_number(&VideoFrame::black(640, 480)), None);
        assert_eq!(read_frame_number(&VideoFrame::filled(640, 480, (235, 128, 128))), None);
        assert_eq!(p.frame(30).timestamp, Duration::from_secs(1));
    }
}
