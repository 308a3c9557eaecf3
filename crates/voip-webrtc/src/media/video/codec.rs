//! VP8 through the reference libvpx: a safe wrapper over `env-libvpx-sys`.
//!
//! # Why these bindings
//! * `env-libvpx-sys` 5.x links the system libvpx through pkg-config and ships bindings
//!   generated for every libvpx release from 1.3 to 1.13, so Debian 12's `libvpx-dev` (1.12)
//!   builds with no bindgen and no libclang (`cargo xtask test` installs `libvpx-dev` when
//!   `pkg-config --exists vpx` fails). It is the binding layer the other Rust libvpx wrappers
//!   use.
//! * `vpx-rs` (safe encoder and decoder on the same bindings) forces bindgen and needs libvpx
//!   ≥ 1.13 (it references `VP9E_SET_QUANTIZER_ONE_PASS`): it does not build on Debian 12.
//! * `vpx-encode` wraps the encoder only.
//!
//! So the unsafe FFI of this crate lives in this one module (the crate otherwise denies
//! `unsafe_code`): each libvpx context is owned by one Rust value, created and destroyed with
//! it, used through `&mut self` only, and every pointer handed to libvpx outlives the call.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_int, c_long, c_uint};
use std::ptr;

use vpx_sys as vpx;

use super::frame::{chroma_size, VideoFrame};
use crate::error::{Error, Result};

/// How the VP8 encoder of a local video track is set up (realtime, one pass, CBR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Settings {
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Frames per second the track sends (the encoder's rate control assumes it).
    pub fps: u32,
    /// libvpx speed (`VP8E_SET_CPUUSED`, −16…16; a larger magnitude is faster and blurrier).
    /// At 8 the unit test's 640×480 pattern stays above 37 dB PSNR at 1 Mbit/s.
    pub cpu_used: i32,
    /// A keyframe at least every this many frames (besides those forced by PLI/FIR).
    pub keyframe_interval: u32,
    /// Encoder threads.
    pub threads: u32,
}

impl Default for Vp8Settings {
    /// 1 Mbit/s, 30 fps, speed 8, a keyframe every 10 s, one thread.
    fn default() -> Self {
        Vp8Settings { bitrate_kbps: 1000, fps: 30, cpu_used: 8, keyframe_interval: 300, threads: 1 }
    }
}

fn check(ctx: Option<&mut vpx::vpx_codec_ctx_t>, err: vpx::vpx_codec_err_t, what: &str) -> Result<()> {
    if err == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: libvpx returns static NUL-terminated strings (or NULL).
    let describe = |p: *const std::os::raw::c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let mut msg = describe(unsafe { vpx::vpx_codec_err_to_string(err) });
    if let Some(ctx) = ctx {
        let detail = describe(unsafe { vpx::vpx_codec_error_detail(ctx) });
        if !detail.is_empty() {
            msg = format!("{msg}: {detail}");
        }
    }
    Err(Error::Codec(format!("libvpx {what}: {msg}")))
}

/// One encoded VP8 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedVp8 {
    /// The frame (RFC 6386 bitstream, what an IVF file and the VP8 RTP payloader carry).
    pub data: Vec<u8>,
    /// It is a keyframe.
    pub keyframe: bool,
}

/// A VP8 encoder (libvpx, realtime deadline, error resilient, CBR at the configured bitrate).
/// Frames of another size than the last re-create the encoder (the next frame is a keyframe).
pub struct Vp8Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    settings: Vp8Settings,
    width: u32,
    height: u32,
    pts: i64,
    force_keyframe: bool,
}

// SAFETY: the context is only touched through `&mut self`; libvpx keeps no thread-local state
// for it, so moving it to another thread between calls is fine.
unsafe impl Send for Vp8Encoder {}

impl std::fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("settings", &self.settings)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

fn init_encoder(
    width: u32,
    height: u32,
    settings: &Vp8Settings,
) -> Result<(Box<vpx::vpx_codec_ctx_t>, Box<vpx::vpx_codec_enc_cfg_t>)> {
    if width == 0 || height == 0 || width > 16_383 || height > 16_383 {
        return Err(Error::Codec(format!("VP8 cannot encode {width}×{height}")));
    }
    // SAFETY: libvpx fills the configuration before it is read; an all-zero context is the
    // documented input of `vpx_codec_enc_init_ver` (its error field is then VPX_CODEC_OK).
    unsafe {
        let iface = vpx::vpx_codec_vp8_cx();
        // Bindgen enums in the configuration have no zero value: let libvpx write all of it.
        let mut cfg = Box::new(std::mem::MaybeUninit::<vpx::vpx_codec_enc_cfg_t>::zeroed());
        check(None, vpx::vpx_codec_enc_config_default(iface, cfg.as_mut_ptr(), 0), "config")?;
        let mut cfg = cfg.assume_init();
        cfg.g_w = width;
        cfg.g_h = height;
        cfg.g_timebase = vpx::vpx_rational { num: 1, den: 90_000 };
        cfg.g_threads = settings.threads.max(1);
        cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.g_lag_in_frames = 0;
        cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = settings.bitrate_kbps.max(30);
        // libwebrtc's realtime settings: quantizer range, buffer model, no frame dropping here
        // (a dropped frame would look like a lost one to the frame-numbered test pattern).
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_sz = 1000;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_dropframe_thresh = 0;
        cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_min_dist = 0;
        cfg.kf_max_dist = settings.keyframe_interval.max(1);
        let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(std::mem::zeroed());
        check(
            None,
            vpx::vpx_codec_enc_init_ver(&mut *ctx, iface, &*cfg, 0, vpx::VPX_ENCODER_ABI_VERSION as c_int),
            "encoder init",
        )?;
        let mut enc = (ctx, cfg);
        let controls = [
            (vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED, settings.cpu_used.clamp(-16, 16)),
            (vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY, 0),
            (vpx::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD, 1),
            (vpx::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT, 300),
        ];
        for (id, value) in controls {
            let err = vpx::vpx_codec_control_(&mut *enc.0, id as c_int, value as c_int);
            if let Err(e) = check(Some(&mut enc.0), err, "control") {
                vpx::vpx_codec_destroy(&mut *enc.0);
                return Err(e);
            }
        }
        Ok(enc)
    }
}

impl Vp8Encoder {
    /// An encoder for `width`×`height` frames.
    pub fn new(width: u32, height: u32, settings: Vp8Settings) -> Result<Self> {
        let (ctx, cfg) = init_encoder(width, height, &settings)?;
        Ok(Vp8Encoder { ctx, cfg, settings, width, height, pts: 0, force_keyframe: false })
    }

    /// The settings.
    pub fn settings(&self) -> Vp8Settings {
        self.settings
    }

    /// The size it encodes now.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The next encoded frame is a keyframe (the answer to a PLI or FIR).
    pub fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Changes the target bitrate (kbit/s) from the next frame on.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<()> {
        self.cfg.rc_target_bitrate = kbps.max(30);
        // SAFETY: the context was initialised by `init_encoder`; cfg outlives the call.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(Some(&mut self.ctx), err, "bitrate")?;
        self.settings.bitrate_kbps = kbps;
        Ok(())
    }

    /// Encodes one frame; `None` if the encoder produced nothing for it. A frame of another size
    /// re-creates the encoder (its first frame is a keyframe).
    pub fn encode(&mut self, frame: &VideoFrame) -> Result<Option<EncodedVp8>> {
        if (frame.width, frame.height) != (self.width, self.height) {
            let (ctx, cfg) = init_encoder(frame.width, frame.height, &self.settings)?;
            // SAFETY: the old context is initialised and not used after this.
            unsafe { vpx::vpx_codec_destroy(&mut *self.ctx) };
            self.ctx = ctx;
            self.cfg = cfg;
            self.width = frame.width;
            self.height = frame.height;
        }
        let (cw, ch) = chroma_size(frame.width, frame.height);
        let luma = frame.width as usize * frame.height as usize;
        let chroma = cw as usize * ch as usize;
        if frame.data.len() < luma + 2 * chroma {
            return Err(Error::Codec("short I420 frame".to_owned()));
        }
        let duration = 90_000 / u64::from(self.settings.fps.max(1));
        let flags: c_long =
            if std::mem::take(&mut self.force_keyframe) { vpx::VPX_EFLAG_FORCE_KF as c_long } else { 0 };
        // SAFETY: `img` describes `frame.data` (checked long enough above) with its packed
        // strides; libvpx reads the planes during `vpx_codec_encode` only (lag 0), and copies the
        // output packets out before the next call on the context.
        unsafe {
            let mut img = std::mem::MaybeUninit::<vpx::vpx_image_t>::zeroed();
            let base = frame.data.as_ptr().cast_mut();
            if vpx::vpx_img_wrap(
                img.as_mut_ptr(),
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                frame.width,
                frame.height,
                1,
                base,
            )
            .is_null()
            {
                return Err(Error::Codec("vpx_img_wrap failed".to_owned()));
            }
            // `vpx_img_wrap` filled every field.
            let mut img = img.assume_init();
            img.planes[0] = base;
            img.planes[1] = base.add(luma);
            img.planes[2] = base.add(luma + chroma);
            img.stride[0] = frame.width as c_int;
            img.stride[1] = cw as c_int;
            img.stride[2] = cw as c_int;
            let err = vpx::vpx_codec_encode(
                &mut *self.ctx,
                &img,
                self.pts,
                duration as _,
                flags,
                vpx::VPX_DL_REALTIME as _,
            );
            self.pts += duration as i64;
            check(Some(&mut self.ctx), err, "encode")?;
            let mut iter: vpx::vpx_codec_iter_t = ptr::null();
            let mut out = None;
            loop {
                let pkt = vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind == vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    let f = (*pkt).data.frame;
                    let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize).to_vec();
                    out = Some(EncodedVp8 { data, keyframe: f.flags & vpx::VPX_FRAME_IS_KEY != 0 });
                }
            }
            Ok(out)
        }
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (or by the last re-init), destroyed once.
        unsafe { vpx::vpx_codec_destroy(&mut *self.ctx) };
    }
}

/// A VP8 decoder (libvpx) producing I420 [`VideoFrame`]s.
pub struct Vp8Decoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
}

// SAFETY: as for the encoder: one owner, `&mut self` only.
unsafe impl Send for Vp8Decoder {}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Decoder").finish_non_exhaustive()
    }
}

impl Vp8Decoder {
    /// A decoder (one thread).
    pub fn new() -> Result<Self> {
        // SAFETY: zeroed context and config are valid inputs to `vpx_codec_dec_init_ver`.
        unsafe {
            let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(std::mem::zeroed());
            let cfg = vpx::vpx_codec_dec_cfg_t { threads: 1, w: 0, h: 0 };
            check(
                None,
                vpx::vpx_codec_dec_init_ver(
                    &mut *ctx,
                    vpx::vpx_codec_vp8_dx(),
                    &cfg,
                    0,
                    vpx::VPX_DECODER_ABI_VERSION as c_int,
                ),
                "decoder init",
            )?;
            Ok(Vp8Decoder { ctx })
        }
    }

    /// Decodes one VP8 frame; `Ok(None)` if it produced no picture (an invisible frame).
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<VideoFrame>> {
        if data.is_empty() {
            return Ok(None);
        }
        // SAFETY: `data` outlives the call; the returned image belongs to the decoder and is
        // copied into a `VideoFrame` before the next call on the context.
        unsafe {
            let err = vpx::vpx_codec_decode(
                &mut *self.ctx,
                data.as_ptr(),
                data.len() as c_uint,
                ptr::null_mut(),
                0,
            );
            check(Some(&mut self.ctx), err, "decode")?;
            let mut iter: vpx::vpx_codec_iter_t = ptr::null();
            let mut out = None;
            loop {
                let img = vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter);
                if img.is_null() {
                    break;
                }
                let img = &*img;
                if img.fmt != vpx::vpx_img_fmt::VPX_IMG_FMT_I420 {
                    return Err(Error::Codec(format!("decoded image format {:?}", img.fmt)));
                }
                let (w, h) = (img.d_w, img.d_h);
                let (cw, ch) = chroma_size(w, h);
                let plane = |i: usize, rows: u32, cols: u32| {
                    let stride = img.stride[i].max(0) as usize;
                    let len = stride * (rows as usize - 1) + cols as usize;
                    (std::slice::from_raw_parts(img.planes[i] as *const u8, len), stride)
                };
                out = VideoFrame::from_planes(w, h, plane(0, h, w), plane(1, ch, cw), plane(2, ch, cw));
            }
            Ok(out)
        }
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { vpx::vpx_codec_destroy(&mut *self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::video::pattern::{read_frame_number, TestPattern};
    use crate::media::vp8::frame_is_keyframe;

    #[test]
    fn round_trip_640x480_psnr_and_forced_keyframe() {
        let pattern = TestPattern::new(640, 480, 30);
        let mut enc = Vp8Encoder::new(640, 480, Vp8Settings::default()).unwrap();
        let mut dec = Vp8Decoder::new().unwrap();
        let mut psnrs = Vec::new();
        let mut bytes = 0;
        for n in 0..60u32 {
            let src = pattern.frame(n);
            if n == 45 {
                enc.force_keyframe();
            }
            let out = enc.encode(&src).unwrap().expect("a frame per input (no frame dropping)");
            bytes += out.data.len();
            assert_eq!(out.keyframe, n == 0 || n == 45, "frame {n} keyframe {}", out.keyframe);
            assert_eq!(frame_is_keyframe(&out.data), out.keyframe);
            let decoded = dec.decode(&out.data).unwrap().unwrap();
            assert_eq!((decoded.width, decoded.height), (640, 480));
            assert_eq!(read_frame_number(&decoded), Some(n));
            psnrs.push(decoded.psnr(&src).unwrap());
        }
        let min = psnrs.iter().copied().fold(f64::MAX, f64::min);
        let mean = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
        eprintln!(
            "VP8 640×480 @1 Mbit/s speed 8: PSNR min {min:.1} dB mean {mean:.1} dB, {bytes} bytes in 2 s"
        );
        assert!(min >= 30.0, "PSNR {min:.1} dB");
        // A new size re-creates the encoder: the next frame is a keyframe of that size.
        let small = TestPattern::new(320, 240, 30).frame(7);
        let out = enc.encode(&small).unwrap().unwrap();
        assert!(out.keyframe && frame_is_keyframe(&out.data));
        let decoded = dec.decode(&out.data).unwrap().unwrap();
        assert_eq!((decoded.width, decoded.height), (320, 240));
        assert_eq!(read_frame_number(&decoded), Some(7));
        assert!(dec.decode(&[0x12, 0x34, 0x56]).is_err(), "garbage is an error, not a crash");
    }
}
