//! A fake media engine: answers the core's media commands with plausible SDP, candidates and
//! connection states, without any networking. Two peers "connect" once both have a local and a
//! remote description.

use std::collections::BTreeMap;

use voip_core::media::{
    CallType, Candidate, ConnectionState, MediaCommand, MediaEvent, MediaKind, SdpType, SessionDescription,
    StreamPurpose,
};
use voip_core::{CallId, StreamId};

#[derive(Debug, Default, Clone)]
struct Peer {
    local_streams: Vec<(StreamId, StreamPurpose, bool, bool)>,
    local_set: bool,
    remote_set: bool,
    connected: bool,
    closed: bool,
    /// The remote end's process died: ICE never connects again.
    remote_gone: bool,
    on_hold: bool,
    /// The remote description accepts media from us (not `sendonly`/`inactive`).
    remote_receives: bool,
    ufrag_gen: u32,
    version: u32,
    reported_tracks: Vec<(StreamId, MediaKind)>,
    /// Media commands received, for assertions.
    pub(crate) log: Vec<String>,
}

/// The fake engine of one device: one fake peer connection per call.
#[derive(Debug, Default, Clone)]
pub struct FakeMedia {
    peers: BTreeMap<CallId, Peer>,
    /// Whether `CreatePeer`/`AddLocalStream` fail (to test `user_media_failed`).
    pub fail_local_media: bool,
    /// Whether to report candidates and gathering completion.
    pub trickle: bool,
}

impl FakeMedia {
    /// A working engine that trickles two candidates per gathering.
    pub fn new() -> Self {
        FakeMedia { peers: BTreeMap::new(), fail_local_media: false, trickle: true }
    }

    /// Whether the peer connection of `call_id` is connected and not closed.
    pub fn is_connected(&self, call_id: &CallId) -> bool {
        self.peers.get(call_id).is_some_and(|p| p.connected && !p.closed)
    }

    /// Whether the peer connection of `call_id` was closed.
    pub fn is_closed(&self, call_id: &CallId) -> bool {
        self.peers.get(call_id).is_some_and(|p| p.closed)
    }

    /// Whether we currently send media to the peer of `call_id` (not held by us, not closed).
    pub fn is_sending(&self, call_id: &CallId) -> bool {
        self.peers.get(call_id).is_some_and(|p| p.connected && !p.closed && !p.on_hold && p.remote_receives)
    }

    /// Number of peer connections not closed.
    pub fn open_peers(&self) -> usize {
        self.peers.values().filter(|p| !p.closed).count()
    }

    /// The fake as an engine closure for a runtime that executes commands asynchronously (the
    /// `voip` driver takes any `Fn(CallId, MediaCommand)` as its media engine): each command is
    /// executed at once and its events are handed to `report`, in order.
    pub fn into_engine(
        self,
        report: impl Fn(CallId, MediaEvent) + Send + Sync + 'static,
    ) -> impl Fn(CallId, MediaCommand) + Send + Sync + 'static {
        let fake = std::sync::Mutex::new(self);
        move |call_id: CallId, command: MediaCommand| {
            let events = fake.lock().map(|mut f| f.execute(&call_id, command)).unwrap_or_default();
            for event in events {
                report(call_id.clone(), event);
            }
        }
    }

    /// Executes one command; returns the events the engine reports back, in order.
    pub fn execute(&mut self, call_id: &CallId, command: MediaCommand) -> Vec<MediaEvent> {
        let fail_local = self.fail_local_media;
        let trickle = self.trickle;
        let peer = self.peers.entry(call_id.clone()).or_default();
        peer.log.push(format!("{command:?}"));
        if peer.closed {
            return Vec::new();
        }
        let mut out = Vec::new();
        match command {
            MediaCommand::CreatePeer { .. } | MediaCommand::SetStreamPurposes { .. } => {}
            MediaCommand::AddLocalStream { stream_id, purpose, audio, video } => {
                if fail_local {
                    out.push(MediaEvent::Failed {
                        operation: voip_core::media::MediaOperation::LocalMedia,
                        error: "no devices".into(),
                    });
                    return out;
                }
                match peer.local_streams.iter_mut().find(|s| s.0 == stream_id) {
                    Some(s) => {
                        s.2 |= audio;
                        s.3 |= video;
                    }
                    None => peer.local_streams.push((stream_id, purpose, audio, video)),
                }
            }
            MediaCommand::RemoveLocalStream { stream_id } => peer.local_streams.retain(|s| s.0 != stream_id),
            MediaCommand::CreateOffer { ice_restart } => {
                if ice_restart {
                    peer.ufrag_gen += 1;
                }
                let sdp = peer.sdp(SdpType::Offer, call_id);
                peer.local_set = true;
                out.push(MediaEvent::LocalDescription { description: SessionDescription::offer(sdp) });
                if trickle {
                    out.extend(candidates(peer.ufrag_gen));
                }
                peer.maybe_connect(&mut out);
            }
            MediaCommand::CreateAnswer => {
                let sdp = peer.sdp(SdpType::Answer, call_id);
                peer.local_set = true;
                out.push(MediaEvent::LocalDescription { description: SessionDescription::answer(sdp) });
                if trickle {
                    out.extend(candidates(peer.ufrag_gen));
                }
                peer.maybe_connect(&mut out);
            }
            MediaCommand::Rollback => {}
            MediaCommand::SetRemoteDescription { description, .. } => {
                peer.remote_set = true;
                let held = description.sdp.contains("a=sendonly") || description.sdp.contains("a=inactive");
                peer.remote_receives = !held;
                for (stream, kind) in tracks(&description.sdp) {
                    if !peer.reported_tracks.contains(&(stream.clone(), kind)) {
                        peer.reported_tracks.push((stream.clone(), kind));
                        out.push(MediaEvent::RemoteTrack { stream_id: stream, kind });
                    }
                }
                peer.maybe_connect(&mut out);
            }
            MediaCommand::AddRemoteCandidates { .. } => {}
            MediaCommand::SetTrackEnabled { .. } => {}
            MediaCommand::SetHold { on_hold } => peer.on_hold = on_hold,
            MediaCommand::Close => {
                peer.closed = true;
                peer.connected = false;
            }
            // A command this fake does not model has no media effect here.
            _ => {}
        }
        out
    }

    /// The other end of `call_id` died (its app crashed): nothing answers this connection's
    /// ICE checks any more, so it never connects again (ICE restarts included). Returns whether
    /// it was connected until now (and so will see ICE go `Disconnected`, then `Failed`).
    /// A connection the core creates for this call later is dead from the start.
    pub fn remote_died(&mut self, call_id: &CallId) -> bool {
        let peer = self.peers.entry(call_id.clone()).or_default();
        if peer.closed || peer.remote_gone {
            return false;
        }
        peer.remote_gone = true;
        peer.connected
    }

    /// Whether `call_id`'s peer connection is open and has a local description.
    pub fn is_negotiating(&self, call_id: &CallId) -> bool {
        self.peers.get(call_id).is_some_and(|p| !p.closed && p.local_set)
    }

    /// The calls whose peer connection is open and has a local description (this device is an
    /// end of the call, not a sibling that only rang).
    pub fn negotiating_calls(&self) -> Vec<CallId> {
        self.peers.iter().filter(|(_, p)| !p.closed && p.local_set).map(|(c, _)| c.clone()).collect()
    }

    /// Forces a connection-state change (to simulate ICE failure or recovery).
    pub fn force_state(&mut self, call_id: &CallId, state: ConnectionState) -> Vec<MediaEvent> {
        let Some(peer) = self.peers.get_mut(call_id) else { return Vec::new() };
        if peer.closed {
            return Vec::new();
        }
        peer.connected = state == ConnectionState::Connected;
        vec![MediaEvent::ConnectionState { state }]
    }

    /// The media commands a call's peer connection received, as debug strings.
    pub fn command_log(&self, call_id: &CallId) -> Vec<String> {
        self.peers.get(call_id).map(|p| p.log.clone()).unwrap_or_default()
    }
}

impl Peer {
    fn maybe_connect(&mut self, out: &mut Vec<MediaEvent>) {
        if self.local_set && self.remote_set && !self.connected && !self.remote_gone {
            self.connected = true;
            out.push(MediaEvent::ConnectionState { state: ConnectionState::Checking });
            out.push(MediaEvent::ConnectionState { state: ConnectionState::Connected });
        }
    }

    fn sdp(&mut self, sdp_type: SdpType, call_id: &CallId) -> String {
        self.version += 1;
        let dir = match (self.on_hold, sdp_type) {
            (true, _) => "sendonly",
            (false, SdpType::Answer) if !self.remote_receives && self.remote_set => "recvonly",
            _ => "sendrecv",
        };
        let mut s = format!(
            "v=0\r\no=- {} {} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            call_id.as_str().len() as u64 * 7919,
            self.version
        );
        let mut mid = 0;
        for (stream, _purpose, audio, video) in &self.local_streams {
            for (present, kind) in [(*audio, "audio"), (*video, "video")] {
                if present {
                    s.push_str(&format!(
                        "m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}\r\na=ice-ufrag:u{}\r\na={dir}\r\na=msid:{} t{mid}\r\n",
                        self.ufrag_gen, stream
                    ));
                    mid += 1;
                }
            }
        }
        s
    }
}

fn candidates(generation: u32) -> Vec<MediaEvent> {
    let c = |n: u32| Candidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host generation {generation}",
            40000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some(format!("u{generation}")),
    };
    vec![
        MediaEvent::LocalCandidate { candidate: c(1) },
        MediaEvent::LocalCandidate { candidate: c(2) },
        MediaEvent::GatheringComplete,
    ]
}

/// Remote (stream, kind) pairs announced in an SDP.
fn tracks(sdp: &str) -> Vec<(StreamId, MediaKind)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            kind = match rest.split_whitespace().next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
        } else if let (Some(rest), Some(k)) = (line.strip_prefix("a=msid:"), kind) {
            if let Some(stream) = rest.split_whitespace().next() {
                out.push((StreamId::from(stream), k));
            }
        }
    }
    out
}

/// The call type an SDP offers (for tests).
pub fn sdp_call_type(sdp: &str) -> CallType {
    if tracks(sdp).iter().any(|(_, k)| *k == MediaKind::Video) {
        CallType::Video
    } else {
        CallType::Voice
    }
}
