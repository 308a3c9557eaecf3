//! Video files: YUV4MPEG2 (`.y4m`, raw I420) in and out, and IVF (`.ivf`, encoded VP8) out. The
//! IVF reader is [`crate::media::container::ivf_frames`].

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::frame::{i420_len, VideoFrame};
use super::input::VideoSource;
use crate::error::{Error, Result};

fn file_err(e: impl std::fmt::Display) -> Error {
    Error::MediaFile(e.to_string())
}

/// Opens the file again, past its header (looping).
type Reopen = Box<dyn Fn() -> Result<Box<dyn BufRead + Send>> + Send>;

/// Reads a YUV4MPEG2 stream of 4:2:0 8-bit pictures (`C420`, `C420jpeg`, `C420paldv`,
/// `C420mpeg2` or no colour space tag) as a [`VideoSource`]; optionally loops.
pub struct Y4mSource {
    reader: Box<dyn BufRead + Send>,
    width: u32,
    height: u32,
    fps: u32,
    index: u32,
    looping: Option<Reopen>,
}

impl std::fmt::Debug for Y4mSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Y4mSource")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

fn read_header(reader: &mut dyn BufRead) -> Result<(u32, u32, u32)> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).map_err(file_err)?;
    let text = String::from_utf8_lossy(&line);
    let mut words = text.split_whitespace();
    if words.next() != Some("YUV4MPEG2") {
        return Err(file_err("not a YUV4MPEG2 stream"));
    }
    let (mut w, mut h, mut fps) = (0, 0, 30);
    for word in words {
        let (tag, value) = word.split_at(1);
        match tag {
            "W" => w = value.parse().map_err(file_err)?,
            "H" => h = value.parse().map_err(file_err)?,
            "F" => {
                let (n, d) = value.split_once(':').unwrap_or((value, "1"));
                let (n, d): (u32, u32) = (n.parse().map_err(file_err)?, d.parse().map_err(file_err)?);
                fps = (n + d / 2) / d.max(1);
            }
            "C" if !value.starts_with("420") => {
                return Err(file_err(format!("colour space C{value}: only 4:2:0 8-bit is read")))
            }
            "I" if value != "p" && value != "?" => return Err(file_err("interlaced Y4M is not read")),
            _ => {}
        }
    }
    if w == 0 || h == 0 {
        return Err(file_err("Y4M header without W and H"));
    }
    Ok((w, h, fps.max(1)))
}

impl Y4mSource {
    /// Reads from `reader` (whole stream, once).
    pub fn from_reader(reader: impl Read + Send + 'static) -> Result<Self> {
        let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(reader));
        let (width, height, fps) = read_header(&mut reader)?;
        Ok(Y4mSource { reader, width, height, fps, index: 0, looping: None })
    }

    /// Opens a `.y4m` file; with `looping` it starts again after the last frame.
    pub fn open(path: impl AsRef<Path>, looping: bool) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|e| file_err(format!("{}: {e}", path.display())))?;
        let mut source = Self::from_reader(file)?;
        if looping {
            source.looping = Some(Box::new(move || {
                let mut r: Box<dyn BufRead + Send> =
                    Box::new(BufReader::new(File::open(&path).map_err(file_err)?));
                read_header(&mut r)?;
                Ok(r)
            }));
        }
        Ok(source)
    }

    /// Picture size.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn read_frame(&mut self) -> Result<Option<VideoFrame>> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line).map_err(file_err)? == 0 {
            return Ok(None);
        }
        if !line.starts_with(b"FRAME") {
            return Err(file_err("missing FRAME marker"));
        }
        let mut data = vec![0; i420_len(self.width, self.height)];
        match self.reader.read_exact(&mut data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(file_err(e)),
        }
        let mut f =
            VideoFrame::from_i420(self.width, self.height, data).ok_or_else(|| file_err("frame size"))?;
        f.timestamp =
            std::time::Duration::from_micros(u64::from(self.index) * 1_000_000 / u64::from(self.fps));
        self.index += 1;
        Ok(Some(f))
    }
}

impl VideoSource for Y4mSource {
    fn fps(&self) -> u32 {
        self.fps
    }

    fn next_frame(&mut self) -> Option<VideoFrame> {
        match self.read_frame() {
            Ok(Some(f)) => Some(f),
            Ok(None) => {
                let reopen = self.looping.as_ref()?;
                self.reader = reopen().ok()?;
                self.read_frame().ok().flatten()
            }
            Err(e) => {
                tracing::warn!(error = %e, "Y4M source ended");
                None
            }
        }
    }
}

/// Writes frames to a YUV4MPEG2 (`C420jpeg`) stream; frames of another size than the first are
/// scaled to it.
#[derive(Debug)]
pub struct Y4mWriter<W: Write> {
    out: W,
    size: Option<(u32, u32)>,
    fps: u32,
    frames: u64,
}

impl Y4mWriter<BufWriter<File>> {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>, fps: u32) -> Result<Self> {
        Ok(Self::new(BufWriter::new(File::create(path).map_err(file_err)?), fps))
    }
}

impl<W: Write> Y4mWriter<W> {
    /// A writer to `out`; the header is written with the first frame (its size).
    pub fn new(out: W, fps: u32) -> Self {
        Y4mWriter { out, size: None, fps: fps.max(1), frames: 0 }
    }

    /// Appends a frame.
    pub fn write(&mut self, frame: &VideoFrame) -> Result<()> {
        let (w, h) = match self.size {
            Some(s) => s,
            None => {
                writeln!(
                    self.out,
                    "YUV4MPEG2 W{} H{} F{}:1 Ip A1:1 C420jpeg",
                    frame.width, frame.height, self.fps
                )
                .map_err(file_err)?;
                *self.size.insert((frame.width, frame.height))
            }
        };
        let frame = frame.scaled(w, h);
        self.out.write_all(b"FRAME\n").map_err(file_err)?;
        self.out.write_all(&frame.data).map_err(file_err)?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.out.flush().map_err(file_err)?;
        Ok(self.out)
    }
}

/// Writes encoded VP8 frames to an IVF file (the container `vpxenc`/`vpxdec` use).
#[derive(Debug)]
pub struct IvfWriter<W: Write + Seek> {
    out: W,
    frames: u32,
}

impl IvfWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` for `width`×`height` VP8 at `fps`.
    pub fn create(path: impl AsRef<Path>, width: u16, height: u16, fps: u32) -> Result<Self> {
        Self::new(BufWriter::new(File::create(path).map_err(file_err)?), width, height, fps)
    }
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Writes the 32-byte file header to `out` (timebase `1/fps`, pts in frames).
    pub fn new(mut out: W, width: u16, height: u16, fps: u32) -> Result<Self> {
        let mut header = Vec::with_capacity(32);
        header.extend_from_slice(b"DKIF");
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(&32u16.to_le_bytes());
        header.extend_from_slice(b"VP80");
        header.extend_from_slice(&width.to_le_bytes());
        header.extend_from_slice(&height.to_le_bytes());
        header.extend_from_slice(&fps.max(1).to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&header).map_err(file_err)?;
        Ok(IvfWriter { out, frames: 0 })
    }

    /// Appends one encoded frame with presentation time `pts` (in `1/fps` units).
    pub fn write(&mut self, frame: &[u8], pts: u64) -> Result<()> {
        let len = u32::try_from(frame.len()).map_err(file_err)?;
        self.out.write_all(&len.to_le_bytes()).map_err(file_err)?;
        self.out.write_all(&pts.to_le_bytes()).map_err(file_err)?;
        self.out.write_all(frame).map_err(file_err)?;
        self.frames += 1;
        Ok(())
    }

    /// Writes the frame count into the header, flushes and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.out.seek(SeekFrom::Start(24)).map_err(file_err)?;
        self.out.write_all(&self.frames.to_le_bytes()).map_err(file_err)?;
        self.out.seek(SeekFrom::End(0)).map_err(file_err)?;
        self.out.flush().map_err(file_err)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::media::container::ivf_frames;
    use crate::media::video::codec::{Vp8Decoder, Vp8Encoder, Vp8Settings};
    use crate::media::video::pattern::{read_frame_number, TestPattern};

    #[test]
    fn y4m_and_ivf_round_trips() {
        let pattern = TestPattern::new(160, 120, 15);
        let mut y4m = Y4mWriter::new(Vec::new(), 15);
        for n in 0..5 {
            y4m.write(&pattern.frame(n)).unwrap();
        }
        y4m.write(&TestPattern::new(320, 240, 15).frame(5)).unwrap();
        let bytes = y4m.finish().unwrap();
        assert!(bytes.starts_with(b"YUV4MPEG2 W160 H120 F15:1"));
        let mut src = Y4mSource::from_reader(Cursor::new(bytes)).unwrap();
        assert_eq!((src.size(), src.fps()), ((160, 120), 15));
        let frames: Vec<_> = std::iter::from_fn(|| src.next_frame()).collect();
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[2], {
            let mut f = pattern.frame(2);
            f.timestamp = frames[2].timestamp;
            f
        });
        assert_eq!(read_frame_number(&frames[5]), Some(5), "scaled to the first size");
        assert!(Y4mSource::from_reader(Cursor::new(b"RIFF".to_vec())).is_err());

        let mut enc = Vp8Encoder::new(160, 120, Vp8Settings::default()).unwrap();
        let mut ivf = IvfWriter::new(Cursor::new(Vec::new()), 160, 120, 15).unwrap();
        for (i, f) in frames.iter().enumerate() {
            ivf.write(&enc.encode(f).unwrap().unwrap().data, i as u64).unwrap();
        }
        let ivf = ivf.finish().unwrap().into_inner();
        let parsed = ivf_frames(&ivf).unwrap();
        assert_eq!(parsed.frames.len(), 6);
        let mut dec = Vp8Decoder::new().unwrap();
        let numbers: Vec<_> =
            parsed.frames.iter().map(|f| read_frame_number(&dec.decode(f).unwrap().unwrap())).collect();
        assert_eq!(numbers, (0..6).map(Some).collect::<Vec<_>>());
    }
}
