//! [`VideoFrame`]: a decoded or raw picture in I420 (planar YUV 4:2:0, BT.601 limited range).

use std::time::Duration;

/// A picture in I420: a full-resolution Y plane and quarter-resolution U and V planes, packed
/// without padding (`width` bytes per Y row, `(width + 1) / 2` per chroma row).
#[derive(Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Y, then U, then V, packed.
    pub data: Vec<u8>,
    /// Capture time (send side) or position in the remote track from its first decoded frame
    /// (receive side, from the RTP timestamps).
    pub timestamp: Duration,
    /// RTP timestamp of the frame it was decoded from (`None` for local frames).
    pub rtp_timestamp: Option<u32>,
}

impl std::fmt::Debug for VideoFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("timestamp", &self.timestamp)
            .field("rtp_timestamp", &self.rtp_timestamp)
            .finish_non_exhaustive()
    }
}

/// Width and height of the chroma planes of a `width`×`height` I420 picture.
pub fn chroma_size(width: u32, height: u32) -> (u32, u32) {
    (width.div_ceil(2), height.div_ceil(2))
}

/// Bytes of a packed `width`×`height` I420 picture.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (cw, ch) = chroma_size(width, height);
    (width as usize * height as usize) + 2 * (cw as usize * ch as usize)
}

fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

impl VideoFrame {
    /// A frame of one colour (`y`, `u`, `v`).
    pub fn filled(width: u32, height: u32, (y, u, v): (u8, u8, u8)) -> Self {
        let luma = width as usize * height as usize;
        let (cw, ch) = chroma_size(width, height);
        let chroma = cw as usize * ch as usize;
        let mut data = vec![y; luma + 2 * chroma];
        data[luma..luma + chroma].fill(u);
        data[luma + chroma..].fill(v);
        VideoFrame { width, height, data, timestamp: Duration::ZERO, rtp_timestamp: None }
    }

    /// A black frame.
    pub fn black(width: u32, height: u32) -> Self {
        Self::filled(width, height, (16, 128, 128))
    }

    /// A frame from packed I420 data; `None` if `data` has the wrong length or a side is 0.
    pub fn from_i420(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        (width > 0 && height > 0 && data.len() == i420_len(width, height)).then_some(VideoFrame {
            width,
            height,
            data,
            timestamp: Duration::ZERO,
            rtp_timestamp: None,
        })
    }

    /// A frame from three planes with row strides (as decoders and capture APIs hand them out);
    /// `None` if a plane is too short for its stride.
    pub fn from_planes(
        width: u32,
        height: u32,
        (y, y_stride): (&[u8], usize),
        (u, u_stride): (&[u8], usize),
        (v, v_stride): (&[u8], usize),
    ) -> Option<Self> {
        let (cw, ch) = chroma_size(width, height);
        let mut data = Vec::with_capacity(i420_len(width, height));
        for (plane, stride, w, h) in
            [(y, y_stride, width, height), (u, u_stride, cw, ch), (v, v_stride, cw, ch)]
        {
            let (w, h) = (w as usize, h as usize);
            if stride < w || (h > 0 && plane.len() < stride * (h - 1) + w) {
                return None;
            }
            for row in 0..h {
                data.extend_from_slice(&plane[row * stride..row * stride + w]);
            }
        }
        Self::from_i420(width, height, data)
    }

    /// The Y plane (`width` bytes per row).
    pub fn y(&self) -> &[u8] {
        &self.data[..self.width as usize * self.height as usize]
    }

    /// The U plane (`(width + 1) / 2` bytes per row).
    pub fn u(&self) -> &[u8] {
        let luma = self.width as usize * self.height as usize;
        let (cw, ch) = chroma_size(self.width, self.height);
        &self.data[luma..luma + cw as usize * ch as usize]
    }

    /// The V plane (`(width + 1) / 2` bytes per row).
    pub fn v(&self) -> &[u8] {
        let luma = self.width as usize * self.height as usize;
        let (cw, ch) = chroma_size(self.width, self.height);
        &self.data[luma + cw as usize * ch as usize..]
    }

    /// Converts RGBA (4 bytes per pixel, `width * 4` per row, alpha ignored) to I420 with the
    /// BT.601 limited-range matrix; `None` if `rgba` has the wrong length.
    pub fn from_rgba(width: u32, height: u32, rgba: &[u8]) -> Option<Self> {
        let (w, h) = (width as usize, height as usize);
        if width == 0 || height == 0 || rgba.len() != w * h * 4 {
            return None;
        }
        let (cw, ch) = chroma_size(width, height);
        let (cw, ch) = (cw as usize, ch as usize);
        let mut data = vec![0u8; i420_len(width, height)];
        let (yp, chroma) = data.split_at_mut(w * h);
        let (up, vp) = chroma.split_at_mut(cw * ch);
        for row in 0..h {
            for col in 0..w {
                let p = &rgba[(row * w + col) * 4..][..3];
                let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
                yp[row * w + col] = clamp_u8(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16);
            }
        }
        for crow in 0..ch {
            for ccol in 0..cw {
                let (mut r, mut g, mut b, mut n) = (0, 0, 0, 0);
                for row in crow * 2..(crow * 2 + 2).min(h) {
                    for col in ccol * 2..(ccol * 2 + 2).min(w) {
                        let p = &rgba[(row * w + col) * 4..][..3];
                        r += i32::from(p[0]);
                        g += i32::from(p[1]);
                        b += i32::from(p[2]);
                        n += 1;
                    }
                }
                let (r, g, b) = (r / n, g / n, b / n);
                up[crow * cw + ccol] = clamp_u8(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128);
                vp[crow * cw + ccol] = clamp_u8(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128);
            }
        }
        Self::from_i420(width, height, data)
    }

    /// The picture as RGBA (alpha 255), BT.601 limited range.
    pub fn to_rgba(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let cw = chroma_size(self.width, self.height).0 as usize;
        let (yp, up, vp) = (self.y(), self.u(), self.v());
        let mut out = Vec::with_capacity(w * h * 4);
        for row in 0..h {
            for col in 0..w {
                let c = 298 * (i32::from(yp[row * w + col]) - 16);
                let d = i32::from(up[(row / 2) * cw + col / 2]) - 128;
                let e = i32::from(vp[(row / 2) * cw + col / 2]) - 128;
                out.push(clamp_u8((c + 409 * e + 128) >> 8));
                out.push(clamp_u8((c - 100 * d - 208 * e + 128) >> 8));
                out.push(clamp_u8((c + 516 * d + 128) >> 8));
                out.push(255);
            }
        }
        out
    }

    /// Peak signal-to-noise ratio of this picture against `reference` over all three planes, in
    /// dB (`f64::INFINITY` when identical); `None` if the sizes differ.
    pub fn psnr(&self, reference: &VideoFrame) -> Option<f64> {
        if self.width != reference.width || self.height != reference.height {
            return None;
        }
        let sse: u64 = self
            .data
            .iter()
            .zip(&reference.data)
            .map(|(&a, &b)| {
                let d = i64::from(a) - i64::from(b);
                (d * d) as u64
            })
            .sum();
        if sse == 0 {
            return Some(f64::INFINITY);
        }
        let mse = sse as f64 / self.data.len() as f64;
        Some(10.0 * (255.0 * 255.0 / mse).log10())
    }

    /// This picture scaled to `width`×`height` (nearest neighbour; the same frame if the size
    /// already matches).
    pub fn scaled(&self, width: u32, height: u32) -> VideoFrame {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let (scw, sch) = chroma_size(self.width, self.height);
        let (dcw, dch) = chroma_size(width, height);
        let mut data = Vec::with_capacity(i420_len(width, height));
        for (plane, sw, sh, dw, dh) in [
            (self.y(), self.width, self.height, width, height),
            (self.u(), scw, sch, dcw, dch),
            (self.v(), scw, sch, dcw, dch),
        ] {
            for row in 0..dh as usize {
                let sr = row * sh as usize / dh as usize;
                for col in 0..dw as usize {
                    data.push(plane[sr * sw as usize + col * sw as usize / dw as usize]);
                }
            }
        }
        VideoFrame { width, height, data, timestamp: self.timestamp, rtp_timestamp: self.rtp_timestamp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_rgba_round_trip_and_psnr() {
        let (w, h) = (33u32, 17u32);
        let rgba: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [(x * 7) as u8, (y * 13) as u8, 128, 255]
            })
            .collect();
        let f = VideoFrame::from_rgba(w, h, &rgba).unwrap();
        assert_eq!(f.data.len(), i420_len(w, h));
        assert_eq!((f.u().len(), f.v().len()), (17 * 9, 17 * 9));
        let back = f.to_rgba();
        // Chroma subsampling smooths colour edges; luma-driven content survives.
        let again = VideoFrame::from_rgba(w, h, &back).unwrap();
        assert!(again.psnr(&f).unwrap() > 35.0, "{:?}", again.psnr(&f));
        let black = VideoFrame::black(w, h);
        assert_eq!(&black.to_rgba()[..4], &[0, 0, 0, 255]);
        assert!(black.psnr(&f).unwrap() < 20.0);
        assert_eq!(f.psnr(&f), Some(f64::INFINITY));
        // Strided planes.
        let y: Vec<u8> = (0..40 * h).map(|i| (i % 40) as u8).collect();
        let c = vec![128u8; 20 * 9];
        let s = VideoFrame::from_planes(w, h, (&y, 40), (&c, 20), (&c, 20)).unwrap();
        assert_eq!(&s.y()[..3], &[0, 1, 2]);
        assert_eq!(s.y()[w as usize], 0, "second row starts at the stride");
        assert!(VideoFrame::from_planes(w, h, (&y, 20), (&c, 20), (&c, 20)).is_none());
        assert_eq!(f.scaled(66, 34).scaled(33, 17).y(), f.y());
    }
}
