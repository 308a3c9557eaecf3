//! A 1:1 call handle: commands, a snapshot of the call, and its event feed.

use std::sync::Arc;

use voip_core::{
    AssertedIdentity, CallDirection, CallId, CallInfo, CallReplaces, CallState, CallType, Command, EndReason,
    Initiator, LocalStream, PartyId, RemoteStream, RoomId, UserId,
};

use crate::feed::Subscription;
use crate::runtime::Shared;
use crate::VoipError;

/// Something that happened to one call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CallEvent {
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

/// The event feed of one call: everything since the call began, then live events; ends after
/// [`CallEvent::Ended`] is read and the runtime dropped the call, or when the runtime stops.
pub type CallEvents = Subscription<CallEvent>;

/// A handle on one 1:1 call (incoming or outgoing, room or to-device signalled, or a mesh peer
/// call of a group call). Cheap to clone.
#[derive(Clone)]
pub struct Call {
    shared: Arc<Shared>,
    id: CallId,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn new(shared: Arc<Shared>, id: CallId) -> Self {
        Self { shared, id }
    }

    /// The call id.
    pub fn id(&self) -> &CallId {
        &self.id
    }

    /// A snapshot of the call (state, direction, peer, streams, hold, mute); `None` once the
    /// core has forgotten it.
    pub fn info(&self) -> Option<CallInfo> {
        self.shared.call_info(&self.id)
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

    /// The call's events, from the first one on.
    pub fn events(&self) -> CallEvents {
        self.shared.call_events(&self.id)
    }

    /// Answers a ringing call with the media it was offered with.
    pub fn answer(&self) -> Result<(), VoipError> {
        self.shared.command(Command::Answer { call_id: self.id.clone(), call_type: None })
    }

    /// Answers a ringing call, voice only or with video.
    pub fn answer_with(&self, call_type: CallType) -> Result<(), VoipError> {
        self.shared.command(Command::Answer { call_id: self.id.clone(), call_type: Some(call_type) })
    }

    /// Declines a ringing call. With `emit`, the caller and our other devices are told; without,
    /// it stops ringing here only.
    pub fn reject(&self, emit: bool) -> Result<(), VoipError> {
        self.shared.command(Command::Reject { call_id: self.id.clone(), emit })
    }

    /// Ends the call (any state).
    pub fn hangup(&self) -> Result<(), VoipError> {
        self.shared.command(Command::Hangup { call_id: self.id.clone(), reason: None })
    }

    /// Ends the call with a specific reason.
    pub fn hangup_with(&self, reason: EndReason) -> Result<(), VoipError> {
        self.shared.command(Command::Hangup { call_id: self.id.clone(), reason: Some(reason) })
    }

    /// Puts the peer on hold (`true`) or resumes (`false`).
    pub fn set_hold(&self, on_hold: bool) -> Result<(), VoipError> {
        self.shared.command(Command::SetHold { call_id: self.id.clone(), on_hold })
    }

    /// Mutes or unmutes our microphone.
    pub fn set_microphone_muted(&self, muted: bool) -> Result<(), VoipError> {
        self.shared.command(Command::SetMuted { call_id: self.id.clone(), audio: Some(muted), video: None })
    }

    /// Turns our camera off (`true`) or on.
    pub fn set_camera_muted(&self, muted: bool) -> Result<(), VoipError> {
        self.shared.command(Command::SetMuted { call_id: self.id.clone(), audio: None, video: Some(muted) })
    }

    /// Starts or stops sharing the screen (a second stream with purpose `m.screenshare`).
    pub fn set_screensharing(&self, enabled: bool) -> Result<(), VoipError> {
        self.shared.command(Command::SetScreenshare { call_id: self.id.clone(), enabled })
    }

    /// Restarts ICE now.
    pub fn restart_ice(&self) -> Result<(), VoipError> {
        self.shared.command(Command::RestartIce { call_id: self.id.clone() })
    }

    /// Tells the peer who they are really talking to (MSC3086).
    pub fn send_asserted_identity(&self, identity: Option<AssertedIdentity>) -> Result<(), VoipError> {
        self.shared.command(Command::SendAssertedIdentity { call_id: self.id.clone(), identity })
    }

    /// Asks the peer to transfer (MSC2747).
    pub fn send_replaces(&self, replaces: CallReplaces) -> Result<(), VoipError> {
        self.shared.command(Command::SendReplaces { call_id: self.id.clone(), replaces })
    }

    /// Waits until the call's events report `state` (the history counts: a call that connected
    /// earlier has reached `Connected`). `None` if the call ended first or the runtime stopped.
    pub async fn wait_for_state(&self, state: CallState) -> Option<CallState> {
        let mut events = self.events();
        while let Some(ev) = events.next().await {
            match ev {
                CallEvent::StateChanged(s) if s == state => return Some(s),
                CallEvent::Ended { .. } => return None,
                _ => {}
            }
        }
        None
    }

    /// Waits until the call ends; its reason and initiator.
    pub async fn ended(&self) -> Option<(EndReason, Initiator)> {
        let mut events = self.events();
        while let Some(ev) = events.next().await {
            if let CallEvent::Ended { reason, initiator } = ev {
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
        self.shared.audio.as_ref()
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
