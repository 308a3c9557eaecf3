//! A call's streams: local media attached, SDP stream metadata, mute and screenshare,
//! the streams the app sees.

use super::*;

impl Call {
    pub(super) fn metadata(&self) -> SdpStreamMetadata {
        let mut md = BTreeMap::new();
        md.insert(
            self.usermedia.0.clone(),
            StreamMetadata {
                purpose: StreamPurpose::Usermedia,
                audio_muted: self.audio_muted,
                video_muted: self.video_muted || !self.local_has_video,
            },
        );
        if let Some(s) = &self.screenshare {
            md.insert(
                s.0.clone(),
                StreamMetadata {
                    purpose: StreamPurpose::Screenshare,
                    audio_muted: false,
                    video_muted: false,
                },
            );
        }
        md
    }

    pub(super) fn local_streams(&self) -> Vec<LocalStream> {
        let mut v = Vec::new();
        if self.local_media_attached {
            v.push(LocalStream {
                stream_id: self.usermedia.clone(),
                purpose: StreamPurpose::Usermedia,
                audio_muted: self.audio_muted,
                video_muted: self.video_muted || !self.local_has_video,
            });
        }
        if let Some(s) = &self.screenshare {
            v.push(LocalStream {
                stream_id: s.clone(),
                purpose: StreamPurpose::Screenshare,
                audio_muted: false,
                video_muted: false,
            });
        }
        v
    }

    pub(super) fn remote_streams(&self) -> Vec<RemoteStream> {
        let mut v: Vec<RemoteStream> = match &self.remote_metadata {
            Some(md) => self
                .remote_tracks
                .iter()
                .filter_map(|(id, a, vid)| {
                    md.get(id.as_str()).map(|m| RemoteStream {
                        stream_id: id.clone(),
                        purpose: m.purpose,
                        audio_muted: m.audio_muted,
                        video_muted: m.video_muted,
                        has_audio: *a,
                        has_video: *vid,
                    })
                })
                .collect(),
            // No metadata: the peer predates MSC3077; only its first stream counts.
            None => self
                .remote_tracks
                .iter()
                .take(1)
                .map(|(id, a, vid)| RemoteStream {
                    stream_id: id.clone(),
                    purpose: StreamPurpose::Usermedia,
                    audio_muted: false,
                    video_muted: false,
                    has_audio: *a,
                    has_video: *vid,
                })
                .collect(),
        };
        v.sort_by_key(|s| s.purpose != StreamPurpose::Screenshare);
        v
    }

    /// The purpose of each remote stream, from the peer's latest metadata.
    fn remote_purposes(&self) -> BTreeMap<StreamId, StreamPurpose> {
        self.remote_metadata.iter().flatten().map(|(id, m)| (StreamId(id.clone()), m.purpose)).collect()
    }

    /// Applies a remote description, telling the engine the purpose of each remote stream
    /// from the metadata that came with it (the SDP does not carry purposes).
    pub(super) fn set_remote_description(&mut self, ctx: &mut Ctx<'_>, description: SessionDescription) {
        let stream_purposes = self.remote_purposes();
        self.engine_purposes = stream_purposes.clone();
        self.media(ctx, MediaCommand::SetRemoteDescription { description, stream_purposes });
    }

    /// After `m.call.sdp_stream_metadata_changed`: tells the engine when a remote stream's
    /// purpose is new or changed since the last description.
    pub(super) fn update_engine_purposes(&mut self, ctx: &mut Ctx<'_>) {
        let stream_purposes = self.remote_purposes();
        if stream_purposes != self.engine_purposes {
            self.engine_purposes = stream_purposes.clone();
            self.media(ctx, MediaCommand::SetStreamPurposes { stream_purposes });
        }
    }

    /// Emits `StreamsChanged` when the streams differ from what the app last saw.
    pub(super) fn emit_streams(&mut self, ctx: &mut Ctx<'_>) {
        let now = (self.local_streams(), self.remote_streams());
        if self.last_streams.as_ref() == Some(&now) {
            return;
        }
        self.last_streams = Some(now.clone());
        ctx.emit(Event::StreamsChanged { call_id: self.id.clone(), local: now.0, remote: now.1 });
    }

    /// Attaches our usermedia stream; mutes chosen before (while ringing, or on the call that
    /// glare replaced) apply from the first packet.
    pub(super) fn attach_local_media(&mut self, ctx: &mut Ctx<'_>, call_type: CallType) {
        self.local_has_video = call_type == CallType::Video;
        self.local_media_attached = true;
        self.media(
            ctx,
            MediaCommand::AddLocalStream {
                stream_id: self.usermedia.clone(),
                purpose: StreamPurpose::Usermedia,
                audio: true,
                video: self.local_has_video,
            },
        );
        if self.audio_muted {
            self.set_track(ctx, MediaKind::Audio, false);
        }
        if self.video_muted && self.local_has_video {
            self.set_track(ctx, MediaKind::Video, false);
        }
    }

    /// Whether we share our screen in this call.
    pub(crate) fn has_screenshare(&self) -> bool {
        self.screenshare.is_some()
    }

    /// Our mute state, to carry over to the call that replaces this one.
    pub(crate) fn mutes(&self) -> (bool, bool) {
        (self.audio_muted, self.video_muted)
    }

    /// Takes over the mute state of the call this one replaces (before media is attached).
    pub(crate) fn inherit_mutes(&mut self, (audio, video): (bool, bool)) {
        self.audio_muted = audio;
        self.video_muted = video;
    }

    pub(crate) fn cmd_mute(
        &mut self,
        ctx: &mut Ctx<'_>,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<(), ApiMisuse> {
        if self.is_ended() {
            return Err(self.wrong_state("set_muted"));
        }
        // Unmuting the camera of a voice call upgrades it to video (js-sdk `upgradeCall`).
        let upgrade = video == Some(false) && self.local_media_attached && !self.local_has_video;
        if upgrade {
            self.require_negotiable("set_muted(video: false) on a voice call")?;
        }
        let before = self.metadata();
        if let Some(a) = audio.filter(|a| *a != self.audio_muted) {
            self.audio_muted = a;
            if self.local_media_attached {
                self.set_track(ctx, MediaKind::Audio, !a);
            }
        }
        if let Some(v) = video {
            self.video_muted = v;
        }
        if upgrade {
            self.local_has_video = true;
            self.media(
                ctx,
                MediaCommand::AddLocalStream {
                    stream_id: self.usermedia.clone(),
                    purpose: StreamPurpose::Usermedia,
                    audio: false,
                    video: true,
                },
            );
            self.start_offer(ctx, false);
        } else if self.metadata() != before {
            if self.local_has_video && video.is_some() {
                self.set_track(ctx, MediaKind::Video, !self.video_muted);
            }
            if self.peer_is_v1() && matches!(self.state, CallState::Connecting | CallState::Connected) {
                let metadata = self.metadata();
                self.send(ctx, CallEvent::SdpStreamMetadataChanged { metadata }, SendPurpose::Other);
            }
        }
        self.emit_streams(ctx);
        Ok(())
    }

    pub(super) fn set_track(&self, ctx: &mut Ctx<'_>, kind: MediaKind, enabled: bool) {
        let stream_id = self.usermedia.clone();
        self.media(ctx, MediaCommand::SetTrackEnabled { stream_id, kind, enabled });
    }

    pub(crate) fn cmd_screenshare(&mut self, ctx: &mut Ctx<'_>, enabled: bool) -> Result<(), ApiMisuse> {
        self.require_negotiable("set_screenshare")?;
        match (enabled, self.screenshare.clone()) {
            (true, None) => {
                let id = StreamId(ctx.rng.alnum(16));
                self.screenshare = Some(id.clone());
                self.media(
                    ctx,
                    MediaCommand::AddLocalStream {
                        stream_id: id,
                        purpose: StreamPurpose::Screenshare,
                        audio: false,
                        video: true,
                    },
                );
            }
            (false, Some(id)) => {
                self.screenshare = None;
                self.media(ctx, MediaCommand::RemoveLocalStream { stream_id: id });
            }
            _ => return Ok(()),
        }
        self.start_offer(ctx, false);
        self.emit_streams(ctx);
        Ok(())
    }
}
