//! A call's media tracks: local tracks and their sending tasks (mute, hold, negotiated
//! direction and codec parameters), remote tracks and their sinks.

use super::*;
use crate::media::sink::{FeedbackRequest, TrackFeedback};
use webrtc::media_stream::track_local::TrackLocalEvent;

/// Shared between a local track's sending task, the call task and the app API.
#[derive(Debug, Default)]
pub(crate) struct SendGate {
    /// The user's mute state (`SetTrackEnabled`).
    pub(crate) user_enabled: AtomicBool,
    /// The call holds the peer (`SetHold`).
    pub(crate) held: AtomicBool,
    /// The negotiated direction of the track's transceiver includes sending.
    pub(crate) may_send: AtomicBool,
    /// Negotiated payload type + 1 (0: not negotiated yet).
    pub(crate) payload_type: AtomicU16,
    /// Frames handed to webrtc-rs.
    pub(crate) frames_sent: AtomicU64,
    /// The peer's format parameters for the track's codec (Opus `a=fmtp:`), with a generation
    /// counter the sending task watches.
    pub(crate) codec_parameters: Mutex<String>,
    pub(crate) codec_generation: AtomicU64,
}

impl SendGate {
    pub(crate) fn enabled(&self) -> bool {
        self.user_enabled.load(Ordering::SeqCst) && !self.held.load(Ordering::SeqCst)
    }

    pub(super) fn set_codec_parameters(&self, params: &str) {
        if let Ok(mut p) = self.codec_parameters.lock() {
            if *p != params || self.codec_generation.load(Ordering::SeqCst) == 0 {
                params.clone_into(&mut p);
                self.codec_generation.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn payload_type(&self) -> Option<u8> {
        self.payload_type.load(Ordering::SeqCst).checked_sub(1).and_then(|v| u8::try_from(v).ok())
    }
}

/// A local track as the app API sees it.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    pub(crate) stream_id: StreamId,
    pub(crate) purpose: StreamPurpose,
    pub(crate) kind: MediaKind,
    pub(crate) gate: Arc<SendGate>,
}

/// A remote track as the app API sees it.
#[derive(Debug)]
pub(crate) struct RemoteEntry {
    pub(crate) stream_id: StreamId,
    pub(crate) kind: MediaKind,
    pub(crate) track_id: String,
    pub(crate) sink: Arc<TrackSink>,
    pub(crate) ended: bool,
}

pub(super) struct LocalTrack {
    pub(super) stream_id: StreamId,
    pub(super) kind: MediaKind,
    pub(super) sender: Arc<dyn RtpSender>,
    pub(super) gate: Arc<SendGate>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// A per-track SSRC: random enough to avoid collisions between the tracks of a call and
/// between calls, without an RNG dependency.
pub(super) fn random_ssrc(seed: &str) -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let h = RandomState::new().hash_one(seed);
    (h as u32) ^ ((h >> 32) as u32)
}

/// How long a local track waits after its source had no frame.
pub(super) const NO_FRAME_RETRY: Duration = Duration::from_millis(10);

/// Hands inbound keyframe requests (RTCP PLI and FIR) to the application, that is to the
/// sending task of the local track they are about (`TrackLocal::poll`), which asks its source
/// for a keyframe. webrtc-rs stops inbound RTCP at the end of the interceptor chain unless an
/// interceptor marks it `DeliverToApplication`; this one marks only keyframe requests, and sits
/// last ([`KEYFRAME_REQUEST_SLOT`]) so every other interceptor has seen all RTCP first.
#[derive(Default)]
pub(super) struct KeyframeRequestForwarder {
    read: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
    write: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
}

/// Where [`KeyframeRequestForwarder`] sits in the interceptor chain (application-most).
pub(super) const KEYFRAME_REQUEST_SLOT: usize = 14_000;

/// Whether an RTCP packet asks for a keyframe.
pub(super) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl rtc::sansio::Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for KeyframeRequestForwarder
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        if let rtc::interceptor::Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|p| is_keyframe_request(p.as_ref())).cloned().collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = rtc::interceptor::Packet::Rtcp(requests);
            msg.message.add(rtc::interceptor::Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl rtc::interceptor::Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
}

/// Hands one frame to webrtc-rs if the negotiated direction lets the track send.
pub(super) async fn send_frame(
    track: &TrackLocalStaticSample,
    ssrc: u32,
    gate: &SendGate,
    frame: EncodedFrame,
) {
    if frame.data.is_empty() || !gate.may_send.load(Ordering::SeqCst) {
        return;
    }
    let Some(pt) = gate.payload_type() else { return };
    let sample = Sample {
        data: frame.data,
        timestamp: Instant::now(),
        duration: frame.duration,
        packet_timestamp: 0,
        prev_dropped_packets: 0,
        prev_padding_packets: 0,
    };
    match track.sample_writer(ssrc, pt).write_sample(&sample).await {
        Ok(()) => {
            gate.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => debug!(error = %e, "write_sample"),
    }
}

/// Paces a source into a local track.
pub(super) async fn run_source(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    gate: Arc<SendGate>,
    mut source: Box<dyn MediaSource>,
    keyframe_requests: bool,
) {
    let mut next = tokio::time::Instant::now();
    let mut generation = 0;
    loop {
        let current = gate.codec_generation.load(Ordering::SeqCst);
        if current != generation {
            generation = current;
            let params = gate.codec_parameters.lock().map(|p| p.clone()).unwrap_or_default();
            source.negotiated(&params);
        }
        // `None` means nothing to send this tick (the `MediaSource` contract): ask again later.
        let wait = match source.next_frame(gate.enabled()) {
            Some(frame) => {
                let duration = frame.duration;
                send_frame(&track, ssrc, &gate, frame).await;
                duration.max(Duration::from_millis(1))
            }
            None => NO_FRAME_RETRY,
        };
        next += wait;
        let now = tokio::time::Instant::now();
        if next + Duration::from_millis(200) < now {
            next = now;
        }
        if !keyframe_requests {
            tokio::time::sleep_until(next).await;
            continue;
        }
        // Video: while waiting for the next frame, take the peer's keyframe requests (PLI/FIR
        // that `KeyframeRequestForwarder` let through). The poll is dropped at every tick, so
        // its lock on the track's event queue is never held across a frame.
        while let Ok(event) = tokio::time::timeout_at(next, track.poll()).await {
            match event {
                Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        debug!("keyframe requested by the peer");
                        source.keyframe_requested();
                    }
                }
                Some(_) => {}
                None => {
                    // Not bound (yet) or unbound: no events until the next tick.
                    tokio::time::sleep_until(next).await;
                    break;
                }
            }
        }
    }
}

/// Reads a remote track into its sink (and the app's, with the call id) until it ends.
pub(super) async fn run_sink(
    track: Arc<dyn TrackRemote>,
    stream_id: StreamId,
    kind: MediaKind,
    track_id: String,
    sink: Arc<TrackSink>,
    (call_id, app_sinks): (CallId, Vec<Arc<dyn MediaSink>>),
    pc_tx: mpsc::UnboundedSender<PcEvent>,
) {
    let (feedback, mut requests) = TrackFeedback::channel();
    for app in &app_sinks {
        app.on_track_feedback(&call_id, &stream_id, kind, feedback.clone());
    }
    drop(feedback);
    let mut media_ssrc = None;
    loop {
        let event = tokio::select! {
            event = track.poll() => event,
            Some(FeedbackRequest::Keyframe) = requests.recv() => {
                let ssrc = match media_ssrc {
                    Some(s) => Some(s),
                    None => track.ssrcs().await.first().copied(),
                };
                if let Some(media_ssrc) = ssrc {
                    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    };
                    match track.write_rtcp(vec![Box::new(pli)]).await {
                        Ok(()) => debug!(%stream_id, media_ssrc, "PLI sent"),
                        Err(e) => debug!(error = %e, "PLI not sent"),
                    }
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            TrackRemoteEvent::OnRtpPacket(p) => {
                media_ssrc = Some(p.header.ssrc);
                let packet = ReceivedPacket {
                    sequence_number: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    payload_type: p.header.payload_type,
                    marker: p.header.marker,
                    ssrc: p.header.ssrc,
                    payload: p.payload,
                    arrived: Instant::now(),
                };
                sink.record(&packet);
                for app in &app_sinks {
                    app.on_call_packet(&call_id, &stream_id, kind, &packet);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    for app in &app_sinks {
        app.on_track_ended(&call_id, &stream_id, kind);
    }
    let _ = pc_tx.send(PcEvent::TrackEnded { stream_id, kind, track_id });
}

impl CallTask {
    pub(super) async fn add_local_track(
        &mut self,
        stream_id: &StreamId,
        purpose: StreamPurpose,
        kind: MediaKind,
    ) -> Result<(), String> {
        let pc = self.pc.clone().ok_or("no peer connection (CreatePeer missing or failed)")?;
        let source = self
            .config
            .source_factory(kind)
            .create(&self.call_id, stream_id, purpose, kind)
            .map_err(|e| e.to_string())?;
        self.track_counter += 1;
        let kind_str = match kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        };
        // Unique per side, not only per call: webrtc-rs routes inbound RTCP (the peer's PLI
        // about our track) to the *remote* track of that id first, so a local track named like
        // the peer's (both `{call_id}-video-1`) lost every keyframe request in two-way video.
        let track_id = format!("{stream_id}-{kind_str}-{}", self.track_counter);
        let (codec_kind, codec) = match kind {
            MediaKind::Audio => (
                RtpCodecKind::Audio,
                RTCRtpCodec {
                    mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
            ),
            MediaKind::Video => (
                RtpCodecKind::Video,
                RTCRtpCodec {
                    mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
            ),
        };
        let ssrc = random_ssrc(&track_id);
        let media_track = MediaStreamTrack::new(
            stream_id.as_str().to_owned(),
            track_id.clone(),
            format!("{purpose:?} {kind_str}"),
            codec_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        let track =
            Arc::new(TrackLocalStaticSample::new(Instant::now(), media_track).map_err(|e| e.to_string())?);
        let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(|e| e.to_string())?;
        let gate = Arc::new(SendGate::default());
        gate.user_enabled.store(true, Ordering::SeqCst);
        gate.held.store(self.held, Ordering::SeqCst);
        if let (MediaKind::Audio, Some(fmtp)) = (kind, &self.remote_opus_fmtp) {
            gate.set_codec_parameters(fmtp);
        }
        let task = spawn_counted(
            &self.counters,
            run_source(track, ssrc, gate.clone(), source, kind == MediaKind::Video),
        );
        info!(%stream_id, ?purpose, ?kind, %track_id, "local track added");
        if let Ok(mut s) = self.shared.lock() {
            s.local.push(LocalEntry { stream_id: stream_id.clone(), purpose, kind, gate: gate.clone() });
        }
        self.local_tracks.push(LocalTrack { stream_id: stream_id.clone(), kind, sender, gate, task });
        if self.remote_description_set {
            self.refresh_send_state().await;
        }
        Ok(())
    }

    pub(super) async fn remove_local_stream(&mut self, stream_id: &StreamId) {
        let (removed, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.local_tracks).into_iter().partition(|t| &t.stream_id == stream_id);
        self.local_tracks = kept;
        for t in removed {
            t.task.abort();
            if let Some(pc) = &self.pc {
                if let Err(e) = pc.remove_track(&t.sender).await {
                    warn!(error = %e, "remove_track failed");
                }
            }
        }
        if let Ok(mut s) = self.shared.lock() {
            s.local.retain(|l| &l.stream_id != stream_id);
        }
        info!(%stream_id, "local stream removed");
    }

    /// After a negotiation completes: which local tracks may send, with which payload type.
    pub(super) async fn refresh_send_state(&mut self) {
        let Some(pc) = self.pc.clone() else { return };
        let mut directions = HashMap::new();
        for tr in pc.get_transceivers().await {
            if let Ok(Some(sender)) = tr.sender().await {
                if let Ok(dir) = tr.current_direction().await {
                    directions.insert(sender.id(), dir);
                }
            }
        }
        for t in &self.local_tracks {
            let may_send = matches!(
                directions.get(&t.sender.id()),
                Some(RTCRtpTransceiverDirection::Sendrecv | RTCRtpTransceiverDirection::Sendonly)
            );
            let wanted = match t.kind {
                MediaKind::Audio => rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS,
                MediaKind::Video => rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8,
            };
            if let Ok(params) = t.sender.get_parameters().await {
                if let Some(codec) = params
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(wanted))
                {
                    t.gate.payload_type.store(u16::from(codec.payload_type) + 1, Ordering::SeqCst);
                }
            }
            if t.gate.may_send.swap(may_send, Ordering::SeqCst) != may_send {
                debug!(stream_id = %t.stream_id, kind = ?t.kind, may_send, "send state");
            }
        }
    }

    pub(super) async fn on_remote_track(&mut self, track: Arc<dyn TrackRemote>) {
        let stream_id = StreamId(track.stream_id().await);
        let track_id = track.track_id().await;
        let kind = match track.kind().await {
            RtpCodecKind::Audio => MediaKind::Audio,
            RtpCodecKind::Video => MediaKind::Video,
            _ => return warn!("remote track of unknown kind ignored"),
        };
        info!(%stream_id, ?kind, %track_id, "remote track");
        let sink = TrackSink::new(kind);
        if let Ok(mut s) = self.shared.lock() {
            s.remote.push(RemoteEntry {
                stream_id: stream_id.clone(),
                kind,
                track_id: track_id.clone(),
                sink: sink.clone(),
                ended: false,
            });
        }
        let task = spawn_counted(
            &self.counters,
            run_sink(
                track,
                stream_id.clone(),
                kind,
                track_id,
                sink,
                (self.call_id.clone(), self.config.app_sinks()),
                self.pc_tx.clone(),
            ),
        );
        self.sink_tasks.retain(|t| !t.is_finished());
        self.sink_tasks.push(task);
        if self.reported_remote.insert((stream_id.clone(), kind)) {
            self.emit(MediaEvent::RemoteTrack { stream_id, kind });
        }
    }

    pub(super) fn remote_track_ended(
        &mut self,
        stream_id: &StreamId,
        kind: MediaKind,
        track_id: Option<&str>,
    ) {
        if let Ok(mut s) = self.shared.lock() {
            for r in s.remote.iter_mut().filter(|r| &r.stream_id == stream_id && r.kind == kind) {
                if track_id.is_none_or(|id| id == r.track_id) {
                    r.ended = true;
                }
            }
        }
        if self.reported_remote.remove(&(stream_id.clone(), kind)) {
            info!(%stream_id, ?kind, "remote track ended");
            self.emit(MediaEvent::RemoteTrackEnded { stream_id: stream_id.clone(), kind });
        }
    }
}
