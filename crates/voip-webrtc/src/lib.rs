#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

mod call;
mod config;
mod engine;
mod error;
pub mod media;
mod runtime;
mod sdp;
mod stats;
mod webrtc_engine;

pub use config::{IceServer, IceTransportPolicy, MdnsMode, TurnServerResponse, WebrtcConfig};
pub use engine::{media_event_channel, MediaEventReceiver, MediaEventSender};
pub use error::{Error, Result};
pub use media::echo::{Echo, EchoSource};
pub use media::sink::{MediaSink, ReceivedPacket, SinkStats, TrackSink};
pub use media::source::{BundledMedia, ClipSource, EncodedFrame, MediaSource, SourceFactory, ToneSource};
pub use runtime::{NetworkSwitch, Resources};
pub use stats::{CallStats, CandidateSummary, RtpStreamSummary, SelectedPair};
pub use webrtc_engine::{LocalTrackInfo, RemoteTrackInfo, WebrtcEngine};
