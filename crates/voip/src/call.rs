//! A 1:1 call handle: commands, a snapshot of the call, and its update feed.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use voip_core::{
    AssertedIdentity, CallDirection, CallId, CallInfo, CallReplaces, CallState, CallType, Command, EndReason,
    Initiator, LocalStream, PartyId, RemoteStream, RoomId, UserId,
};

use crate::driver::{Handle, StoredUpdate, WeakHandle};
use crate::feed::Subscription;
use crate::{StreamExt, VoipError};

/// Something that happened to one call (the runtime's view; the wire events of a call are
/// [`voip_core::wire`]'s, the core's app events [`voip_core::Event`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CallUpdate {
    /// The call's state changed.
    StateChanged(CallState),
    /// Our or the peer's streams changed (tracks arrived, mute, screenshare). Remote streams are
    /// ordered screenshare first.
    StreamsChanged {
        /// Our streams.
        local: Vec<LocalStream>,
        /// The peer's streams.
        remote: Vec<RemoteStream>,
    },
    /// Hold changed: `local_hold` we hold the peer, `remote_hold` the peer holds us.
    HoldChanged {
        /// We hold the peer.
        local_hold: bool,
        /// The peer holds us.
        remote_hold: bool,
    },
    /// The peer's asserted identity (MSC3086) changed; informational.
    AssertedIdentityChanged(Option<AssertedIdentity>),
    /// The peer asks us to transfer the call (MSC2747); the app decides.
    ReplacesReceived(CallReplaces),
    /// Glare: this outgoing call was replaced by the peer's call, which continues as `new_call`.
    Replaced {
        /// The surviving call.
        new_call: Call,
    },
    /// The caller picked an answer (outgoing calls).
    AnswerSelected {
        /// The answering party.
        party_id: PartyId,
        /// The answering user.
        user_id: UserId,
    },
    /// Start playing a ringtone.
    RingtoneStarted,
    /// Stop the ringtone.
    RingtoneStopped,
    /// The call ended; the last event of a call.
    Ended {
        /// Why.
        reason: EndReason,
        /// Who ended it.
        initiator: Initiator,
    },
}

/// The update feed of one call: everything since the call began, then live updates; ends after
/// [`CallUpdate::Ended`] is read and the runtime dropped the call, or when the runtime stops.
/// A [`Stream`]: `use voip::StreamExt` for `next().await`. It does not keep the runtime running.
#[derive(Debug)]
pub struct CallUpdates {
    feed: Subscription<StoredUpdate>,
    handle: WeakHandle,
}

impl CallUpdates {
    /// The next update if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<CallUpdate> {
        loop {
            let stored = self.feed.try_next()?;
            if let Some(update) = self.resolve(stored) {
                return Some(update);
            }
        }
    }

    fn resolve(&self, stored: StoredUpdate) -> Option<CallUpdate> {
        match stored {
            StoredUpdate::Update(update) => Some(update),
            // Without a runtime there is no call to continue in.
            StoredUpdate::Replaced(id) => {
                self.handle.upgrade().map(|h| CallUpdate::Replaced { new_call: Call::new(h, id) })
            }
        }
    }
}

impl Stream for CallUpdates {
    type Item = CallUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CallUpdate>> {
        loop {
            match self.feed.poll_next_unpin(cx) {
                Poll::Ready(Some(stored)) => {
                    if let Some(update) = self.resolve(stored) {
                        return Poll::Ready(Some(update));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A handle on one 1:1 call (incoming or outgoing, room or to-device signalled, or a mesh peer
/// call of a group call). Cheap to clone; keeps the runtime running.
///
/// Getters read the driver's last snapshot; commands are `async` and return once the core has
/// handled them (the snapshot then includes their effect).
#[derive(Clone)]
pub struct Call {
    handle: Handle,
    id: CallId,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn new(handle: Handle, id: CallId) -> Self {
        Self { handle, id }
    }

    /// The call id.
    pub fn id(&self) -> &CallId {
        &self.id
    }

    /// A snapshot of the call (state, direction, peer, streams, hold, mute); `None` once the
    /// core has forgotten it.
    pub fn info(&self) -> Option<CallInfo> {
        self.handle.snapshot().calls.get(&self.id).cloned()
    }

    /// The state (`Ended` once the core has forgotten the call).
    pub fn state(&self) -> CallState {
        self.info().map_or(CallState::Ended, |i| i.state)
    }

    /// Incoming or outgoing.
    pub fn direction(&self) -> Option<CallDirection> {
        self.info().map(|i| i.direction)
    }

    /// The room.
    pub fn room_id(&self) -> Option<RoomId> {
        self.info().map(|i| i.room_id)
    }

    /// The other party's user.
    pub fn remote_user(&self) -> Option<UserId> {
        self.info().map(|i| i.peer_user)
    }

    /// Our streams and the peer's (screenshare first).
    pub fn streams(&self) -> (Vec<LocalStream>, Vec<RemoteStream>) {
        self.info().map(|i| (i.local_streams, i.remote_streams)).unwrap_or_default()
    }

    /// The call's updates, from the first one on.
    pub fn updates(&self) -> CallUpdates {
        CallUpdates { feed: self.handle.call_feed(&self.id), handle: self.handle.downgrade() }
    }

    async fn command(&self, command: Command) -> Result<(), VoipError> {
        self.handle.command(command).await
    }

    /// Answers a ringing call with the media it was offered with.
    pub async fn answer(&self) -> Result<(), VoipError> {
        self.command(Command::Answer { call_id: self.id.clone(), call_type: None }).await
    }

    /// Answers a ringing call, voice only or with video.
    pub async fn answer_with(&self, call_type: CallType) -> Result<(), VoipError> {
        self.command(Command::Answer { call_id: self.id.clone(), call_type: Some(call_type) }).await
    }

    /// Declines a ringing call: the caller and our other devices are told (they stop ringing).
    pub async fn reject(&self) -> Result<(), VoipError> {
        self.command(Command::Reject { call_id: self.id.clone(), emit: true }).await
    }

    /// Stops a ringing call ringing here only, telling nobody: the caller and our other devices
    /// go on ringing (famedly's `reject(shouldEmit: false)`).
    pub async fn ignore(&self) -> Result<(), VoipError> {
        self.command(Command::Reject { call_id: self.id.clone(), emit: false }).await
    }

    /// Ends the call (any state).
    pub async fn hangup(&self) -> Result<(), VoipError> {
        self.command(Command::Hangup { call_id: self.id.clone(), reason: None }).await
    }

    /// Ends the call with a specific reason.
    pub async fn hangup_with(&self, reason: EndReason) -> Result<(), VoipError> {
        self.command(Command::Hangup { call_id: self.id.clone(), reason: Some(reason) }).await
    }

    /// Puts the peer on hold (`true`) or resumes (`false`).
    pub async fn set_hold(&self, on_hold: bool) -> Result<(), VoipError> {
        self.command(Command::SetHold { call_id: self.id.clone(), on_hold }).await
    }

    /// Mutes or unmutes our microphone.
    pub async fn set_microphone_muted(&self, muted: bool) -> Result<(), VoipError> {
        self.command(Command::SetMuted { call_id: self.id.clone(), audio: Some(muted), video: None }).await
    }

    /// Turns our camera off (`true`) or on.
    pub async fn set_camera_muted(&self, muted: bool) -> Result<(), VoipError> {
        self.command(Command::SetMuted { call_id: self.id.clone(), audio: None, video: Some(muted) }).await
    }

    /// Starts or stops sharing the screen (a second stream with purpose `m.screenshare`).
    pub async fn set_screensharing(&self, enabled: bool) -> Result<(), VoipError> {
        self.command(Command::SetScreenshare { call_id: self.id.clone(), enabled }).await
    }

    /// Restarts ICE now.
    pub async fn restart_ice(&self) -> Result<(), VoipError> {
        self.command(Command::RestartIce { call_id: self.id.clone() }).await
    }

    /// Tells the peer who they are really talking to (MSC3086).
    pub async fn send_asserted_identity(&self, identity: Option<AssertedIdentity>) -> Result<(), VoipError> {
        self.command(Command::SendAssertedIdentity { call_id: self.id.clone(), identity }).await
    }

    /// Asks the peer to transfer (MSC2747).
    pub async fn send_replaces(&self, replaces: CallReplaces) -> Result<(), VoipError> {
        self.command(Command::SendReplaces { call_id: self.id.clone(), replaces }).await
    }

    /// Waits until the call's updates report `state` (the history counts: a call that connected
    /// earlier has reached `Connected`). `None` if the call ended first or the runtime stopped.
    pub async fn wait_for_state(&self, state: CallState) -> Option<CallState> {
        let mut updates = self.updates();
        while let Some(update) = updates.next().await {
            match update {
                CallUpdate::StateChanged(s) if s == state => return Some(s),
                CallUpdate::Ended { .. } => return None,
                _ => {}
            }
        }
        None
    }

    /// Waits until the call ends; its reason and initiator.
    pub async fn ended(&self) -> Option<(EndReason, Initiator)> {
        let mut updates = self.updates();
        while let Some(update) = updates.next().await {
            if let CallUpdate::Ended { reason, initiator } = update {
                return Some((reason, initiator));
            }
        }
        None
    }
}

/// Decoded audio (feature `codecs`, with an engine built from
/// `WebrtcConfig::with_audio(AudioHub)`).
#[cfg(feature = "codecs")]
impl Call {
    fn audio_hub(&self) -> Option<&voip_webrtc::media::audio::AudioHub> {
        self.handle.ctx.audio.as_ref()
    }

    /// Decoded 48 kHz PCM of the peer's stream `stream` (see [`Call::streams`]), from now on:
    /// jitter-buffered, lost packets recovered from FEC or concealed. `None` without decoded
    /// audio. The stream ends with the track or the call.
    pub fn remote_audio(
        &self,
        stream: &voip_core::StreamId,
    ) -> Option<voip_webrtc::media::audio::RemoteAudio> {
        Some(self.audio_hub()?.remote_audio(&self.id, stream))
    }

    /// What this call sends as its microphone: push PCM (any rate, any channels) or play a
    /// source. Usable before the call is answered. `None` without decoded audio.
    pub fn audio_input(&self) -> Option<voip_webrtc::media::audio::AudioInput> {
        Some(self.audio_hub()?.input(&self.id))
    }

    /// Replaces what the call sends from the next 20 ms frame on (no renegotiation): a tone, a
    /// WAV file, silence, an app's capture. `false` without decoded audio.
    pub fn replace_audio_input(&self, source: impl voip_webrtc::media::audio::PcmSource) -> bool {
        self.audio_input().map(|i| i.replace(source)).is_some()
    }
}

/// Decoded video (feature `codecs`, with an engine built from
/// `WebrtcConfig::with_video(VideoHub)`).
#[cfg(feature = "codecs")]
impl Call {
    fn video_hub(&self) -> Option<&voip_webrtc::media::video::VideoHub> {
        self.handle.ctx.video.as_ref()
    }

    /// Decoded I420 frames of the peer's video stream `stream` (usermedia or screenshare, see
    /// [`Call::streams`]), from now on: reassembled, decoded, with keyframes requested on start
    /// and after loss (frames that depend on a lost one are dropped, not shown broken). `None`
    /// without decoded video. The stream ends with the track or the call.
    pub fn remote_video(
        &self,
        stream: &voip_core::StreamId,
    ) -> Option<voip_webrtc::media::video::RemoteVideo> {
        Some(self.video_hub()?.remote_video(&self.id, stream))
    }

    /// What this call sends as its camera: push I420 or RGBA frames of any size, or play a
    /// source. Usable before the call is answered. `None` without decoded video.
    pub fn video_input(&self) -> Option<voip_webrtc::media::video::VideoInput> {
        Some(self.video_hub()?.input(&self.id))
    }

    /// What this call sends as its screenshare (a separate input). `None` without decoded video.
    pub fn screenshare_input(&self) -> Option<voip_webrtc::media::video::VideoInput> {
        Some(self.video_hub()?.input_for(&self.id, voip_core::media::StreamPurpose::Screenshare))
    }

    /// Replaces what the call sends as its camera from the next frame on (no renegotiation; the
    /// first frame is a keyframe): a test pattern, a Y4M file, an app's capture. `false` without
    /// decoded video.
    pub fn replace_video_input(&self, source: impl voip_webrtc::media::video::VideoSource) -> bool {
        self.video_input().map(|i| i.replace(source)).is_some()
    }
}
