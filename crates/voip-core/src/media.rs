//! Media vocabulary: what the core asks of a media engine, and what the engine reports back.
//!
//! The core never touches WebRTC. It emits [`MediaCommand`]s (in [`crate::Output::Media`]) and
//! receives [`MediaEvent`]s (in [`crate::Input::Media`]), always tagged with the call they belong
//! to. An engine (webrtc-rs in `voip-webrtc`, a fake in `voip-sim`, or the app's own) executes
//! the commands in order and reports results as events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::StreamId;

/// Voice or video, as the user chose it or as the offer implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    /// Audio only.
    Voice,
    /// Audio and video.
    Video,
}

/// `offer` or `answer` (`RTCSdpType`; `pranswer`/`rollback` never appear on the Matrix wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SdpType {
    /// An SDP offer.
    Offer,
    /// An SDP answer.
    Answer,
}

/// An `RTCSessionDescriptionInit`: `{ "type": "offer", "sdp": "v=0…" }` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub sdp_type: SdpType,
    /// The SDP text.
    pub sdp: String,
}

impl SessionDescription {
    /// An offer.
    pub fn offer(sdp: impl Into<String>) -> Self {
        Self { sdp_type: SdpType::Offer, sdp: sdp.into() }
    }

    /// An answer.
    pub fn answer(sdp: impl Into<String>) -> Self {
        Self { sdp_type: SdpType::Answer, sdp: sdp.into() }
    }
}

/// One ICE candidate (`RTCIceCandidateInit`), in the field names of the Matrix wire format.
///
/// A candidate whose `candidate` string is empty is the end-of-candidates marker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Candidate {
    /// The `candidate:` attribute value, or `""` for end-of-candidates.
    pub candidate: String,
    /// Media stream identification tag of the m-line.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Index of the m-line.
    #[serde(rename = "sdpMLineIndex", default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u32>,
    /// ICE username fragment, when the sender gave one.
    #[serde(rename = "usernameFragment", default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

impl Candidate {
    /// The end-of-candidates marker `{ "candidate": "" }`.
    pub fn end_of_candidates() -> Self {
        Self { candidate: String::new(), sdp_mid: None, sdp_m_line_index: None, username_fragment: None }
    }

    /// Whether this is the end-of-candidates marker.
    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
    }
}

/// `m.usermedia` or `m.screenshare` (MSC3077).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum StreamPurpose {
    /// Camera and microphone.
    #[serde(rename = "m.usermedia")]
    Usermedia,
    /// Screen sharing.
    #[serde(rename = "m.screenshare")]
    Screenshare,
}

/// Audio or video track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// ICE connection state as the engine reports it (`RTCIceConnectionState`, or the peer
/// connection state for engines that only expose that).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not started.
    New,
    /// Checking candidate pairs.
    Checking,
    /// Media can flow.
    Connected,
    /// Temporarily lost; may recover or need an ICE restart.
    Disconnected,
    /// ICE failed; needs a restart.
    Failed,
    /// Closed locally.
    Closed,
}

/// Which engine operation failed (in [`MediaEvent::Failed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MediaOperation {
    /// Creating the peer connection.
    CreatePeer,
    /// Capturing local media (microphone, camera, screen).
    LocalMedia,
    /// `createOffer` / `setLocalDescription(offer)`.
    CreateOffer,
    /// `createAnswer` / `setLocalDescription(answer)`.
    CreateAnswer,
    /// `setRemoteDescription`.
    SetRemoteDescription,
    /// `addIceCandidate`.
    AddCandidate,
}

/// A command for the media engine, always about one call ([`crate::Output::Media`]).
///
/// Commands for one call must be executed in the order they are polled. Each command that
/// produces something answers with a [`MediaEvent`]: `CreateOffer` and `CreateAnswer` with
/// [`MediaEvent::LocalDescription`] (after the engine applied it as its local description).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MediaCommand {
    /// Create the peer connection for this call. ICE servers are the adapter's business (it
    /// holds the homeserver's TURN configuration).
    CreatePeer {
        /// Voice or video: the media the call was placed or offered with.
        call_type: CallType,
    },
    /// Capture and attach local media as one stream with the given id (the id must appear as the
    /// stream id in the local SDP, because `sdp_stream_metadata` is keyed by it).
    AddLocalStream {
        /// Stream id to use in SDP (`msid`).
        stream_id: StreamId,
        /// Usermedia or screenshare.
        purpose: StreamPurpose,
        /// Attach an audio track.
        audio: bool,
        /// Attach a video track.
        video: bool,
    },
    /// Detach and stop a local stream (screenshare off).
    RemoveLocalStream {
        /// The stream's id.
        stream_id: StreamId,
    },
    /// Create an offer and set it as local description; report [`MediaEvent::LocalDescription`].
    CreateOffer {
        /// Restart ICE (new ufrag/pwd).
        ice_restart: bool,
    },
    /// Create an answer to the remote offer and set it as local description; report
    /// [`MediaEvent::LocalDescription`].
    CreateAnswer,
    /// Roll a pending local offer back (polite side of an offer collision).
    Rollback,
    /// Apply the remote description.
    SetRemoteDescription {
        /// The remote offer or answer.
        description: SessionDescription,
        /// The purpose of each remote stream (msid stream id → usermedia/screenshare), from the
        /// `sdp_stream_metadata` that came with the description: the SDP does not carry it.
        /// Empty when the peer sent no metadata (a pre-MSC3077 peer: its stream is usermedia).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        stream_purposes: BTreeMap<StreamId, StreamPurpose>,
    },
    /// The peer's stream metadata changed (`m.call.sdp_stream_metadata_changed`) and with it
    /// the purpose of a remote stream: the full map, as on `SetRemoteDescription`.
    SetStreamPurposes {
        /// msid stream id → usermedia/screenshare, for every stream the peer describes.
        stream_purposes: BTreeMap<StreamId, StreamPurpose>,
    },
    /// Add remote candidates. Only sent after `SetRemoteDescription`; the core buffers earlier
    /// ones. An entry with an empty `candidate` is end-of-candidates.
    AddRemoteCandidates {
        /// The candidates, in arrival order.
        candidates: Vec<Candidate>,
    },
    /// Enable or disable the local tracks of one kind of a stream (mute).
    SetTrackEnabled {
        /// The local stream.
        stream_id: StreamId,
        /// Audio or video.
        kind: MediaKind,
        /// `false` sends silence / black frames.
        enabled: bool,
    },
    /// Put the remote on hold (every transceiver `sendonly`, tracks disabled) or resume
    /// (`sendrecv`). The core follows with `CreateOffer` to renegotiate.
    SetHold {
        /// Hold or resume.
        on_hold: bool,
    },
    /// Close the peer connection and stop local media of this call.
    Close,
}

impl MediaCommand {
    /// `SetRemoteDescription` without stream purposes (a peer that sent no metadata).
    pub fn set_remote_description(description: SessionDescription) -> Self {
        MediaCommand::SetRemoteDescription { description, stream_purposes: BTreeMap::new() }
    }
}

/// What the media engine reports about one call ([`crate::Input::Media`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MediaEvent {
    /// The local description produced by `CreateOffer` / `CreateAnswer`, already applied locally.
    LocalDescription {
        /// The description.
        description: SessionDescription,
    },
    /// A local ICE candidate was gathered.
    LocalCandidate {
        /// The candidate (with its real `sdpMid`).
        candidate: Candidate,
    },
    /// ICE gathering finished: the core flushes queued candidates and sends end-of-candidates.
    GatheringComplete,
    /// The ICE / peer connection state changed.
    ConnectionState {
        /// The new state.
        state: ConnectionState,
    },
    /// A remote track arrived in the stream with this id.
    RemoteTrack {
        /// The stream id from the remote SDP (`msid`).
        stream_id: StreamId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// A remote track ended.
    RemoteTrackEnded {
        /// The stream id.
        stream_id: StreamId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// The engine wants to renegotiate on its own (the app changed tracks directly).
    NegotiationNeeded,
    /// An operation failed. The core ends the call with the matching reason.
    Failed {
        /// Which operation.
        operation: MediaOperation,
        /// Human-readable detail for logs.
        error: String,
    },
}
