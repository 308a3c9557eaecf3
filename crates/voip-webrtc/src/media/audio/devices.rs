//! Audio devices (feature `devices`): microphones and speakers through [`cpal`].
//!
//! * [`list`] (or [`input_devices`] / [`output_devices`]): every device of the platform's
//!   default host with its default flag and supported configurations.
//! * [`Microphone`]: a capture stream into a bounded ring buffer; it is a [`PcmSource`], so
//!   `AudioInput::replace(mic)` (or `Call::replace_audio_input`) sends it. Any device rate,
//!   channel count and sample format: samples are handed on as f32 at the device's rate and
//!   channels, the input remixes and resamples them to what it encodes.
//! * [`Speaker`]: a playback stream fed through a bounded buffer from decoded
//!   [`AudioFrame`]s ([`Speaker::play`] a [`RemoteAudio`], or [`Speaker::push`] frames),
//!   remixed and resampled to the device's configuration. An underrun plays silence and is
//!   counted.
//!
//! A cpal stream is not `Send` on every platform, so each runs on a thread of its own that
//! owns it; the handles talk to it through shared buffers and stop it when dropped. No
//! device (a machine without a sound card) is an error ([`DeviceError`]), never a panic.
//!
//! Unclocked devices: a PCM that is not driven by a clock (ALSA's `null` plugin, which a
//! machine without a sound card can still open) takes and gives samples as fast as the CPU
//! allows. A stream that gets more than [`UNCLOCKED_LEAD`] ahead of the wall clock within its
//! first seconds is treated as such and held to real time by its own thread (reported by
//! [`DeviceStats::paced`]); a real device never runs that far ahead, so it is never paced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};

use super::input::PcmSource;
use super::resample::{remix, Resampler};
use super::{AudioFrame, RemoteAudio};

/// A stream that runs this far ahead of the wall clock during its first
/// [`UNCLOCKED_WINDOW`] is taken for an unclocked device and paced to real time.
pub const UNCLOCKED_LEAD: Duration = Duration::from_millis(1500);
/// How long after its start a stream is watched for running ahead of the wall clock.
pub const UNCLOCKED_WINDOW: Duration = Duration::from_secs(5);

/// What can go wrong with a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The host has no default device of this direction (no sound card).
    #[error("no default {0} device")]
    NoDefault(Direction),
    /// No device of this direction has that name.
    #[error("no {direction} device named {name:?} (available: {available:?})")]
    NotFound {
        /// Input or output.
        direction: Direction,
        /// The name asked for.
        name: String,
        /// The names there are.
        available: Vec<String>,
    },
    /// The host could not enumerate its devices.
    #[error("listing {direction} devices: {message}")]
    Enumerate {
        /// Input or output.
        direction: Direction,
        /// The host's error.
        message: String,
    },
    /// The device has no usable configuration.
    #[error("device {name:?}: no configuration: {message}")]
    Config {
        /// The device.
        name: String,
        /// The host's error.
        message: String,
    },
    /// The device's sample format is not one this module converts.
    #[error("device {name:?}: unsupported sample format {format}")]
    UnsupportedFormat {
        /// The device.
        name: String,
        /// The format.
        format: String,
    },
    /// The stream could not be built or started.
    #[error("device {name:?}: stream: {message}")]
    Stream {
        /// The device.
        name: String,
        /// The host's error.
        message: String,
    },
    /// The stream's thread could not be started or died while opening the device.
    #[error("device thread: {0}")]
    Thread(String),
}

/// Capture or playback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A microphone (capture).
    Input,
    /// A speaker (playback).
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// One configuration range a device supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRange {
    /// Channels.
    pub channels: u16,
    /// Lowest sample rate, Hz.
    pub min_rate: u32,
    /// Highest sample rate, Hz.
    pub max_rate: u32,
    /// Sample format (`i16`, `f32`, …).
    pub format: String,
}

/// The configuration a stream runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Sample format (`i16`, `f32`, …).
    pub format: String,
}

/// A device as the host lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its name (what [`Microphone::open`] and [`Speaker::open`] take).
    pub name: String,
    /// Capture or playback.
    pub direction: Direction,
    /// Whether it is the host's default device of its direction.
    pub is_default: bool,
    /// The configuration it opens with by default (`None` when it reports none).
    pub default_format: Option<StreamFormat>,
    /// Every configuration range it supports.
    pub configs: Vec<ConfigRange>,
}

/// The name of the host (audio API) devices come from, e.g. `ALSA`.
pub fn host_name() -> &'static str {
    cpal::default_host().id().name()
}

/// Input and output devices of the default host (inputs first).
pub fn list() -> Result<Vec<DeviceInfo>, DeviceError> {
    let mut all = input_devices()?;
    all.extend(output_devices()?);
    Ok(all)
}

/// Capture devices of the default host.
pub fn input_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    devices(Direction::Input)
}

/// Playback devices of the default host.
pub fn output_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    devices(Direction::Output)
}

fn format_name(f: cpal::SampleFormat) -> String {
    f.to_string()
}

fn default_name(host: &cpal::Host, direction: Direction) -> Option<String> {
    let d = match direction {
        Direction::Input => host.default_input_device(),
        Direction::Output => host.default_output_device(),
    };
    d.and_then(|d| d.name().ok())
}

fn host_devices(host: &cpal::Host, direction: Direction) -> Result<Vec<cpal::Device>, DeviceError> {
    let enumerate = |e: cpal::DevicesError| DeviceError::Enumerate { direction, message: e.to_string() };
    Ok(match direction {
        Direction::Input => host.input_devices().map_err(enumerate)?.collect(),
        Direction::Output => host.output_devices().map_err(enumerate)?.collect(),
    })
}

fn devices(direction: Direction) -> Result<Vec<DeviceInfo>, DeviceError> {
    let host = cpal::default_host();
    let default = default_name(&host, direction);
    let mut out = Vec::new();
    for device in host_devices(&host, direction)? {
        let Ok(name) = device.name() else { continue };
        let (default_format, configs) = match direction {
            Direction::Input => (
                device.default_input_config().ok(),
                device.supported_input_configs().map(|c| c.collect::<Vec<_>>()).unwrap_or_default(),
            ),
            Direction::Output => (
                device.default_output_config().ok(),
                device.supported_output_configs().map(|c| c.collect::<Vec<_>>()).unwrap_or_default(),
            ),
        };
        out.push(DeviceInfo {
            is_default: default.as_deref() == Some(name.as_str()),
            name,
            direction,
            default_format: default_format.map(|c| StreamFormat {
                sample_rate: c.sample_rate().0,
                channels: c.channels(),
                format: format_name(c.sample_format()),
            }),
            configs: configs
                .into_iter()
                .map(|c| ConfigRange {
                    channels: c.channels(),
                    min_rate: c.min_sample_rate().0,
                    max_rate: c.max_sample_rate().0,
                    format: format_name(c.sample_format()),
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The device `name` of `direction` (the default device for `None`).
fn find(direction: Direction, name: Option<&str>) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    let Some(name) = name else {
        let d = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return d.ok_or(DeviceError::NoDefault(direction));
    };
    let mut available = Vec::new();
    for d in host_devices(&host, direction)? {
        let Ok(n) = d.name() else { continue };
        if n == name {
            return Ok(d);
        }
        available.push(n);
    }
    // The default device is not always listed (ALSA lists `default` only when it opens).
    if default_name(&host, direction).as_deref() == Some(name) {
        let d = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        if let Some(d) = d {
            return Ok(d);
        }
    }
    Err(DeviceError::NotFound { direction, name: name.to_owned(), available })
}

/// How a [`Microphone`] or [`Speaker`] opens its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// The device's name (see [`list`]); `None`: the default device.
    pub device: Option<String>,
    /// Sample rate to ask for; `None`: the device's default (the library resamples either way).
    pub sample_rate: Option<u32>,
    /// Sample format to ask for (`i16`, `f32`, … as [`ConfigRange::format`] names them);
    /// `None`: the device's default (the library converts either way).
    pub format: Option<String>,
    /// Samples per channel per callback (cpal's fixed buffer size); `None`: the device's default.
    pub callback_frames: Option<u32>,
    /// The most audio the buffer between the device and the call holds; beyond it the oldest
    /// is dropped (counted). Bounds the latency the buffer can add.
    pub max_buffer: Duration,
    /// How much is buffered before it plays (at the start and after an underrun).
    pub prebuffer: Duration,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            device: None,
            sample_rate: None,
            format: None,
            callback_frames: None,
            max_buffer: Duration::from_millis(200),
            prebuffer: Duration::from_millis(40),
        }
    }
}

impl DeviceOptions {
    /// The device named `name` (`None`: the default one).
    #[must_use]
    pub fn device(mut self, name: Option<&str>) -> Self {
        self.device = name.map(str::to_owned);
        self
    }
}

/// Counters of a device stream, in samples per channel at the device's rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Device callbacks run.
    pub callbacks: u64,
    /// Samples the device took (speaker) or gave (microphone).
    pub device_samples: u64,
    /// Speaker: samples played from the call (the rest of `device_samples` was silence).
    /// Microphone: samples handed to the call.
    pub delivered: u64,
    /// Samples of silence filled in because the buffer was empty.
    pub underrun: u64,
    /// Samples dropped because the buffer was full.
    pub overflow: u64,
    /// Errors the stream reported.
    pub errors: u64,
    /// Whether the device turned out to be unclocked and is paced to real time.
    pub paced: bool,
    /// Samples per channel buffered now.
    pub buffered: u64,
}

#[derive(Default)]
struct Counters {
    callbacks: AtomicU64,
    device_samples: AtomicU64,
    delivered: AtomicU64,
    underrun: AtomicU64,
    overflow: AtomicU64,
    errors: AtomicU64,
    paced: AtomicBool,
}

/// The buffer between a device callback and the call: interleaved f32 at the device's rate
/// and channels, bounded, with a prebuffer.
struct Ring {
    samples: VecDeque<f32>,
    channels: usize,
    max: usize,
    prebuffer: usize,
    primed: bool,
}

impl Ring {
    fn new(rate: u32, channels: u16, options: &DeviceOptions) -> Self {
        let per_second = rate as usize * usize::from(channels.max(1));
        let of = |d: Duration| (per_second as f64 * d.as_secs_f64()) as usize;
        let ch = usize::from(channels.max(1));
        let max = (of(options.max_buffer) / ch).max(1) * ch;
        Ring {
            samples: VecDeque::with_capacity(max),
            channels: ch,
            max,
            prebuffer: of(options.prebuffer).min(max / 2),
            primed: false,
        }
    }

    /// Appends, dropping the oldest beyond the bound; returns samples per channel dropped.
    fn push(&mut self, data: impl IntoIterator<Item = f32>) -> u64 {
        self.samples.extend(data);
        let excess = self.samples.len().saturating_sub(self.max).div_ceil(self.channels) * self.channels;
        self.samples.drain(..excess.min(self.samples.len()));
        (excess / self.channels) as u64
    }

    /// Fills `out` (interleaved): from the buffer once primed, silence otherwise. Returns
    /// (samples per channel taken, samples per channel of silence).
    fn pull(&mut self, out: &mut [f32]) -> (u64, u64) {
        if !self.primed && self.samples.len() >= self.prebuffer.max(1) {
            self.primed = true;
        }
        let take = if self.primed { out.len().min(self.samples.len()) } else { 0 };
        for (o, s) in out.iter_mut().zip(self.samples.drain(..take)) {
            *o = s;
        }
        out[take..].fill(0.0);
        if take < out.len() {
            self.primed = false;
        }
        ((take / self.channels) as u64, ((out.len() - take) / self.channels) as u64)
    }

    fn buffered(&self) -> u64 {
        (self.samples.len() / self.channels) as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds a stream to real time when its device turns out to be unclocked.
struct Pacer {
    rate: f64,
    lead: Duration,
    start: Option<Instant>,
    samples: u64,
    counters: Arc<Counters>,
}

impl Pacer {
    fn new(rate: u32, counters: Arc<Counters>) -> Self {
        Pacer { rate: f64::from(rate.max(1)), lead: UNCLOCKED_LEAD, start: None, samples: 0, counters }
    }

    /// After a callback of `n` samples per channel: sleeps while the stream is ahead of real
    /// time, once it is known to be unclocked.
    fn after(&mut self, n: usize) {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        self.samples += n as u64;
        let due = start + Duration::from_secs_f64(self.samples as f64 / self.rate);
        let ahead = due.saturating_duration_since(now);
        let paced = self.counters.paced.load(Ordering::Relaxed);
        if !paced && ahead > self.lead && now.duration_since(start) < UNCLOCKED_WINDOW {
            self.counters.paced.store(true, Ordering::Relaxed);
            tracing::info!(ahead = ?ahead, "audio device runs ahead of the clock: pacing it to real time");
            // Real time from now on: what it ran ahead is not made up by a long pause.
            self.start = Some(now);
            self.samples = 0;
            return;
        }
        if self.counters.paced.load(Ordering::Relaxed) && !ahead.is_zero() {
            std::thread::sleep(ahead);
        }
    }
}

/// The device thread: opens the stream, reports the outcome, keeps the stream until `stop`
/// is dropped.
fn spawn_stream<F>(label: &str, build: F) -> Result<mpsc::Sender<()>, DeviceError>
where
    F: FnOnce() -> Result<cpal::Stream, DeviceError> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), DeviceError>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("voip-{label}"))
        .spawn(move || {
            let stream = match build() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Until every sender is dropped.
            while stop_rx.recv().is_ok() {}
            drop(stream);
        })
        .map_err(|e| DeviceError::Thread(e.to_string()))?;
    ready_rx.recv().map_err(|_| DeviceError::Thread("the device thread ended while opening".into()))??;
    Ok(stop_tx)
}

/// The configuration to open `device` with.
fn choose_config(
    device: &cpal::Device,
    name: &str,
    direction: Direction,
    options: &DeviceOptions,
) -> Result<(cpal::StreamConfig, cpal::SampleFormat), DeviceError> {
    let config_err = |e: String| DeviceError::Config { name: name.to_owned(), message: e };
    let default = match direction {
        Direction::Input => device.default_input_config().map_err(|e| config_err(e.to_string()))?,
        Direction::Output => device.default_output_config().map_err(|e| config_err(e.to_string()))?,
    };
    let mut chosen = default.clone();
    if options.sample_rate.is_some() || options.format.is_some() {
        let rate = options.sample_rate.unwrap_or(default.sample_rate().0);
        let format = options.format.clone().unwrap_or_else(|| format_name(default.sample_format()));
        let ranges: Vec<cpal::SupportedStreamConfigRange> = match direction {
            Direction::Input => {
                device.supported_input_configs().map_err(|e| config_err(e.to_string()))?.collect()
            }
            Direction::Output => {
                device.supported_output_configs().map_err(|e| config_err(e.to_string()))?.collect()
            }
        };
        let fit = ranges
            .into_iter()
            .filter(|r| r.channels() == default.channels() && format_name(r.sample_format()) == format)
            .find_map(|r| r.try_with_sample_rate(cpal::SampleRate(rate)));
        chosen = fit.ok_or_else(|| config_err(format!("{rate} Hz {format} not supported")))?;
    }
    let mut config = chosen.config();
    if let Some(frames) = options.callback_frames {
        config.buffer_size = cpal::BufferSize::Fixed(frames);
    }
    Ok((config, chosen.sample_format()))
}

macro_rules! for_format {
    ($format:expr, $name:expr, $f:ident, $($arg:expr),*) => {
        match $format {
            cpal::SampleFormat::I8 => $f::<i8>($($arg),*),
            cpal::SampleFormat::I16 => $f::<i16>($($arg),*),
            cpal::SampleFormat::I32 => $f::<i32>($($arg),*),
            cpal::SampleFormat::I64 => $f::<i64>($($arg),*),
            cpal::SampleFormat::U8 => $f::<u8>($($arg),*),
            cpal::SampleFormat::U16 => $f::<u16>($($arg),*),
            cpal::SampleFormat::U32 => $f::<u32>($($arg),*),
            cpal::SampleFormat::U64 => $f::<u64>($($arg),*),
            cpal::SampleFormat::F32 => $f::<f32>($($arg),*),
            cpal::SampleFormat::F64 => $f::<f64>($($arg),*),
            other => Err(DeviceError::UnsupportedFormat { name: $name, format: other.to_string() }),
        }
    };
}

struct Opened {
    name: String,
    rate: u32,
    channels: u16,
    format: String,
    /// Dropping it stops the stream's thread.
    _stop: mpsc::Sender<()>,
}

fn error_callback(counters: Arc<Counters>, name: String) -> impl FnMut(cpal::StreamError) + Send + 'static {
    move |e| {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = %name, error = %e, "audio device stream error");
    }
}

fn build_input<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    ring: Arc<Mutex<Ring>>,
    counters: Arc<Counters>,
    name: String,
) -> Result<cpal::Stream, DeviceError>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let mut pacer = Pacer::new(config.sample_rate.0, counters.clone());
    let c = counters.clone();
    device
        .build_input_stream::<T, _, _>(
            config,
            move |data: &[T], _| {
                let n = data.len() / channels;
                c.callbacks.fetch_add(1, Ordering::Relaxed);
                c.device_samples.fetch_add(n as u64, Ordering::Relaxed);
                let dropped = lock(&ring).push(data.iter().map(|&s| f32::from_sample(s)));
                c.overflow.fetch_add(dropped, Ordering::Relaxed);
                pacer.after(n);
            },
            error_callback(counters, name.clone()),
            None,
        )
        .map_err(|e| DeviceError::Stream { name, message: e.to_string() })
}

fn build_output<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    ring: Arc<Mutex<Ring>>,
    counters: Arc<Counters>,
    name: String,
) -> Result<cpal::Stream, DeviceError>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels.max(1));
    let mut pacer = Pacer::new(config.sample_rate.0, counters.clone());
    let c = counters.clone();
    let mut scratch: Vec<f32> = Vec::new();
    device
        .build_output_stream::<T, _, _>(
            config,
            move |data: &mut [T], _| {
                let n = data.len() / channels;
                scratch.resize(data.len(), 0.0);
                let (played, silent) = lock(&ring).pull(&mut scratch);
                for (d, s) in data.iter_mut().zip(&scratch) {
                    *d = T::from_sample(*s);
                }
                c.callbacks.fetch_add(1, Ordering::Relaxed);
                c.device_samples.fetch_add(n as u64, Ordering::Relaxed);
                c.delivered.fetch_add(played, Ordering::Relaxed);
                c.underrun.fetch_add(silent, Ordering::Relaxed);
                pacer.after(n);
            },
            error_callback(counters, name.clone()),
            None,
        )
        .map_err(|e| DeviceError::Stream { name, message: e.to_string() })
}

fn open_stream(
    direction: Direction,
    options: &DeviceOptions,
    counters: Arc<Counters>,
    make_ring: impl FnOnce(u32, u16) -> Arc<Mutex<Ring>> + Send + 'static,
) -> Result<(Opened, Arc<Mutex<Ring>>), DeviceError> {
    let options = options.clone();
    let (info_tx, info_rx) = mpsc::channel();
    let label = match direction {
        Direction::Input => "microphone",
        Direction::Output => "speaker",
    };
    let stop = spawn_stream(label, move || {
        // The device is looked up on the stream's thread: cpal's handles need not be `Send`.
        let device = find(direction, options.device.as_deref())?;
        let name = device.name().unwrap_or_else(|_| options.device.clone().unwrap_or_default());
        let (config, format) = choose_config(&device, &name, direction, &options)?;
        let ring = make_ring(config.sample_rate.0, config.channels);
        let stream = match direction {
            Direction::Input => for_format!(
                format,
                name.clone(),
                build_input,
                &device,
                &config,
                ring.clone(),
                counters,
                name.clone()
            )?,
            Direction::Output => for_format!(
                format,
                name.clone(),
                build_output,
                &device,
                &config,
                ring.clone(),
                counters,
                name.clone()
            )?,
        };
        stream.play().map_err(|e| DeviceError::Stream { name: name.clone(), message: e.to_string() })?;
        let _ = info_tx.send((name, config.sample_rate.0, config.channels, format.to_string(), ring));
        Ok(stream)
    })?;
    let (name, rate, channels, format, ring) =
        info_rx.recv().map_err(|_| DeviceError::Thread("no stream information".into()))?;
    Ok((Opened { name, rate, channels, format, _stop: stop }, ring))
}

fn stats(counters: &Counters, ring: &Mutex<Ring>) -> DeviceStats {
    DeviceStats {
        callbacks: counters.callbacks.load(Ordering::Relaxed),
        device_samples: counters.device_samples.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        underrun: counters.underrun.load(Ordering::Relaxed),
        overflow: counters.overflow.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        paced: counters.paced.load(Ordering::Relaxed),
        buffered: lock(ring).buffered(),
    }
}

/// Live counters of a [`Microphone`] or [`Speaker`], readable after the device was handed
/// over (for example after `AudioInput::replace(mic)`). Cheap to clone.
#[derive(Clone)]
pub struct DeviceMonitor {
    counters: Arc<Counters>,
    ring: Arc<Mutex<Ring>>,
}

impl std::fmt::Debug for DeviceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeviceMonitor").field(&self.stats()).finish()
    }
}

impl DeviceMonitor {
    /// The counters now.
    pub fn stats(&self) -> DeviceStats {
        stats(&self.counters, &self.ring)
    }
}

/// A microphone: a capture stream on its own thread, buffered (bounded) for the call. A
/// [`PcmSource`] at the device's rate and channels: give it to `AudioInput::replace`. The
/// stream stops when it is dropped.
pub struct Microphone {
    opened: Opened,
    counters: Arc<Counters>,
    ring: Arc<Mutex<Ring>>,
}

impl std::fmt::Debug for Microphone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microphone")
            .field("device", &self.opened.name)
            .field("sample_rate", &self.opened.rate)
            .field("channels", &self.opened.channels)
            .field("format", &self.opened.format)
            .finish_non_exhaustive()
    }
}

impl Microphone {
    /// Opens the input device `name` (`None`: the default one) with default options.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        Self::open_with(&DeviceOptions::default().device(name))
    }

    /// Opens an input device with `options`.
    pub fn open_with(options: &DeviceOptions) -> Result<Self, DeviceError> {
        let counters = Arc::new(Counters::default());
        let opts = options.clone();
        let (opened, ring) = open_stream(Direction::Input, options, counters.clone(), move |rate, ch| {
            Arc::new(Mutex::new(Ring::new(rate, ch, &opts)))
        })?;
        tracing::info!(device = %opened.name, rate = opened.rate, channels = opened.channels,
            format = %opened.format, "microphone open");
        Ok(Microphone { opened, counters, ring })
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.opened.name
    }

    /// The stream's configuration.
    pub fn format(&self) -> StreamFormat {
        StreamFormat {
            sample_rate: self.opened.rate,
            channels: self.opened.channels,
            format: self.opened.format.clone(),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> DeviceStats {
        stats(&self.counters, &self.ring)
    }

    /// Counters that stay readable after the microphone was handed to an input.
    pub fn monitor(&self) -> DeviceMonitor {
        DeviceMonitor { counters: self.counters.clone(), ring: self.ring.clone() }
    }
}

impl PcmSource for Microphone {
    fn sample_rate(&self) -> u32 {
        self.opened.rate
    }

    fn channels(&self) -> u16 {
        self.opened.channels
    }

    /// Captured samples; silence while the buffer fills (at the start and after an underrun),
    /// counted as underrun. Never ends while the device runs.
    fn read(&mut self, out: &mut [f32]) -> usize {
        let (taken, silent) = lock(&self.ring).pull(out);
        self.counters.delivered.fetch_add(taken, Ordering::Relaxed);
        self.counters.underrun.fetch_add(silent, Ordering::Relaxed);
        out.len()
    }
}

struct Feed {
    /// Input rate and channels the resampler was made for.
    format: Option<(u32, u16)>,
    resampler: Option<Resampler>,
}

/// A speaker: a playback stream on its own thread, fed decoded audio through a bounded
/// buffer (remixed and resampled to the device). An underrun plays silence (counted); audio
/// beyond the buffer's bound drops the oldest (counted). Cheap to clone (clones feed the same
/// stream); the stream stops when the last clone is dropped.
#[derive(Clone)]
pub struct Speaker {
    inner: Arc<SpeakerInner>,
}

struct SpeakerInner {
    opened: Opened,
    counters: Arc<Counters>,
    ring: Arc<Mutex<Ring>>,
    feed: Mutex<Feed>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("device", &self.inner.opened.name)
            .field("sample_rate", &self.inner.opened.rate)
            .field("channels", &self.inner.opened.channels)
            .field("format", &self.inner.opened.format)
            .finish_non_exhaustive()
    }
}

impl Speaker {
    /// Opens the output device `name` (`None`: the default one) with default options.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        Self::open_with(&DeviceOptions::default().device(name))
    }

    /// Opens an output device with `options`.
    pub fn open_with(options: &DeviceOptions) -> Result<Self, DeviceError> {
        let counters = Arc::new(Counters::default());
        let opts = options.clone();
        let (opened, ring) = open_stream(Direction::Output, options, counters.clone(), move |rate, ch| {
            Arc::new(Mutex::new(Ring::new(rate, ch, &opts)))
        })?;
        tracing::info!(device = %opened.name, rate = opened.rate, channels = opened.channels,
            format = %opened.format, "speaker open");
        let feed = Mutex::new(Feed { format: None, resampler: None });
        Ok(Speaker { inner: Arc::new(SpeakerInner { opened, counters, ring, feed }) })
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.inner.opened.name
    }

    /// The stream's configuration.
    pub fn format(&self) -> StreamFormat {
        StreamFormat {
            sample_rate: self.inner.opened.rate,
            channels: self.inner.opened.channels,
            format: self.inner.opened.format.clone(),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> DeviceStats {
        stats(&self.inner.counters, &self.inner.ring)
    }

    /// Counters that stay readable independently of the speaker.
    pub fn monitor(&self) -> DeviceMonitor {
        DeviceMonitor { counters: self.inner.counters.clone(), ring: self.inner.ring.clone() }
    }

    /// Queues a decoded frame for playback.
    pub fn push(&self, frame: &AudioFrame) {
        self.push_f32(frame.sample_rate, frame.channels, &frame.to_f32());
    }

    /// Queues interleaved f32 PCM at `sample_rate` with `channels` channels for playback.
    pub fn push_f32(&self, sample_rate: u32, channels: u16, samples: &[f32]) {
        let (rate, out_ch) = (self.inner.opened.rate, self.inner.opened.channels);
        let converted = {
            let mut feed = lock(&self.inner.feed);
            if feed.format != Some((sample_rate, channels)) {
                feed.format = Some((sample_rate, channels));
                feed.resampler = (sample_rate != rate).then(|| Resampler::new(sample_rate, rate, out_ch));
            }
            let mixed = remix(samples, channels, out_ch);
            match &mut feed.resampler {
                Some(r) => r.process(&mixed),
                None => mixed,
            }
        };
        let dropped = lock(&self.inner.ring).push(converted);
        self.inner.counters.overflow.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Plays `audio` (a call's decoded remote stream) until it ends, on a tokio task; the task
    /// returns the number of frames it queued.
    pub fn play(&self, mut audio: RemoteAudio) -> tokio::task::JoinHandle<u64> {
        let speaker = self.clone();
        tokio::spawn(async move {
            let mut frames = 0;
            while let Some(frame) = audio.next().await {
                speaker.push(&frame);
                frames += 1;
            }
            frames
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(max_ms: u64, pre_ms: u64) -> Ring {
        let options = DeviceOptions {
            max_buffer: Duration::from_millis(max_ms),
            prebuffer: Duration::from_millis(pre_ms),
            ..DeviceOptions::default()
        };
        Ring::new(1000, 2, &options)
    }

    #[test]
    fn ring_prebuffers_bounds_and_counts() {
        // 1000 Hz stereo: 1 sample per channel per ms.
        let mut r = ring(100, 20);
        let mut out = vec![1.0; 20];
        assert_eq!(r.push(vec![0.5; 20]), 0);
        assert_eq!(r.pull(&mut out), (0, 10), "10 ms buffered, 20 needed: silence");
        assert!(out.iter().all(|&s| s == 0.0));
        r.push(vec![0.5; 20]);
        assert_eq!(r.pull(&mut out), (10, 0));
        assert!(out.iter().all(|&s| s == 0.5));
        // 10 ms left, 20 asked: the rest is silence and the ring waits for the prebuffer again.
        let mut big = vec![1.0; 40];
        assert_eq!(r.pull(&mut big), (10, 10));
        assert!(big[..20].iter().all(|&s| s == 0.5) && big[20..].iter().all(|&s| s == 0.0));
        r.push(vec![0.25; 20]);
        assert_eq!(r.pull(&mut out), (0, 10));
        // Bounded: 100 ms at most, the oldest goes first.
        let dropped = r.push((0..300).map(|i| i as f32));
        assert_eq!(dropped, 60);
        assert_eq!(r.buffered(), 100);
        let mut all = vec![0.0; 200];
        r.pull(&mut all);
        assert_eq!(all[199], 299.0);
        assert_eq!(all[0], 100.0);
    }

    #[test]
    fn the_pacer_only_holds_back_a_stream_far_ahead_of_the_clock() {
        let counters = Arc::new(Counters::default());
        let mut p = Pacer::new(48_000, counters.clone());
        p.lead = Duration::from_millis(300);
        // A real device's first callbacks fill its buffer at once: not paced.
        let t = Instant::now();
        p.after(4800);
        p.after(4800);
        assert!(!counters.paced.load(Ordering::Relaxed));
        assert!(t.elapsed() < Duration::from_millis(150));
        // 400 ms more in an instant (600 ms ahead): unclocked, held to real time from then on,
        // without a pause for what it ran ahead.
        p.after(19_200);
        assert!(counters.paced.load(Ordering::Relaxed));
        assert!(t.elapsed() < Duration::from_millis(150));
        let t = Instant::now();
        p.after(4800);
        p.after(4800);
        let waited = t.elapsed();
        assert!((190..400).contains(&waited.as_millis()), "{waited:?}");
    }
}
