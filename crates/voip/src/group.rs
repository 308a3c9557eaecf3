//! A group call handle: enter and leave, members, mesh peer calls and SFU media keys.

use std::sync::{Arc, Mutex};

use voip_core::{
    Command, Focus, GroupCallId, GroupCallInfo, GroupCallState, MediaKeys, MembershipDialect,
    NotificationType, Participant, RemoteStream, RoomId, Signalling,
};

use crate::call::Call;
use crate::feed::Subscription;
use crate::runtime::Shared;
use crate::VoipError;

/// How a group call carries media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupCallBackend {
    /// Every member calls every other member (`m.call.*` over to-device).
    Mesh,
    /// A LiveKit SFU reached through a JWT service (MatrixRTC / Element Call): the library
    /// manages membership and media keys; the app connects its LiveKit client.
    LiveKit {
        /// The JWT service (`livekit_service_url`).
        service_url: String,
        /// `livekit_alias` (Element Call writes the room id; `None` does the same).
        alias: Option<String>,
    },
}

impl GroupCallBackend {
    fn focus(&self, room: &RoomId) -> Focus {
        match self {
            GroupCallBackend::Mesh => Focus::Mesh,
            GroupCallBackend::LiveKit { service_url, alias } => Focus::Livekit {
                livekit_service_url: Some(service_url.clone()),
                livekit_alias: Some(alias.clone().unwrap_or_else(|| room.to_string())),
            },
        }
    }

    /// The membership format written by default: famedly's `com.famedly.call.member` for mesh
    /// (what famedly clients understand), Element Call's per-device
    /// `org.matrix.msc3401.call.member` for LiveKit (what Element Call understands).
    pub fn default_dialect(&self) -> MembershipDialect {
        match self {
            GroupCallBackend::Mesh => MembershipDialect::Famedly,
            GroupCallBackend::LiveKit { .. } => MembershipDialect::MatrixRtc,
        }
    }
}

/// Something that happened in a group call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum GroupCallEvent {
    /// Our state in the call changed.
    StateChanged(GroupCallState),
    /// Members joined or left (our own device is never listed).
    ParticipantsChanged {
        /// Who joined.
        joined: Vec<Participant>,
        /// Who left or expired.
        left: Vec<Participant>,
        /// Everyone now.
        participants: Vec<Participant>,
    },
    /// A media key for the app's LiveKit key provider (SFU mode): `set_key(identity, index,
    /// key)`, the identity being [`Participant::livekit_identity`].
    EncryptionKey {
        /// Whose key.
        participant: Participant,
        /// Whether it is our own key.
        local: bool,
        /// Key index.
        index: u32,
        /// The raw key, standard padded base64.
        key: String,
    },
}

/// The event feed of a group call, from its first event on.
pub type GroupCallEvents = Subscription<GroupCallEvent>;

#[derive(Debug)]
struct Settings {
    dialect: MembershipDialect,
    owned_state_keys: bool,
}

/// A handle on a room's group call. Cheap to clone.
#[derive(Clone)]
pub struct GroupCall {
    pub(crate) shared: Arc<Shared>,
    id: GroupCallId,
    backend: GroupCallBackend,
    application: String,
    scope: String,
    settings: Arc<Mutex<Settings>>,
}

impl std::fmt::Debug for GroupCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCall")
            .field("id", &self.id)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl GroupCall {
    pub(crate) fn new(
        shared: Arc<Shared>,
        room: RoomId,
        backend: GroupCallBackend,
        application: &str,
        scope: &str,
    ) -> Self {
        let settings = Settings { dialect: backend.default_dialect(), owned_state_keys: false };
        Self {
            shared,
            id: GroupCallId::room_call(room),
            backend,
            application: application.to_owned(),
            scope: scope.to_owned(),
            settings: Arc::new(Mutex::new(settings)),
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group call's id (room and `call_id`).
    pub fn id(&self) -> &GroupCallId {
        &self.id
    }

    /// The backend.
    pub fn backend(&self) -> &GroupCallBackend {
        &self.backend
    }

    /// Writes memberships in `dialect` from the next [`GroupCall::enter`] on (members of
    /// either dialect are always read).
    pub fn set_dialect(&self, dialect: MembershipDialect) {
        self.settings().dialect = dialect;
    }

    /// The room version allows owned per-device state keys (MSC3757/MSC3779): state keys
    /// without the `_` prefix.
    pub fn set_owned_state_keys(&self, owned: bool) {
        self.settings().owned_state_keys = owned;
    }

    /// Joins: sends our membership (and, where the server supports MSC4140, schedules the
    /// delayed leave that removes it if this device disappears). Mesh: calls the members this
    /// device must call.
    pub fn enter(&self) -> Result<(), VoipError> {
        self.enter_inner(None)
    }

    /// Joins, and if nobody else is in the call, rings or notifies the room (MSC4075).
    pub fn enter_and_notify(&self, notification: NotificationType) -> Result<(), VoipError> {
        self.enter_inner(Some(notification))
    }

    fn enter_inner(&self, notify: Option<NotificationType>) -> Result<(), VoipError> {
        let (dialect, owned_state_keys) = {
            let s = self.settings();
            (s.dialect, s.owned_state_keys)
        };
        self.shared.command(Command::JoinGroupCall {
            room_id: self.id.room_id.clone(),
            call_id: self.id.call_id.clone(),
            application: self.application.clone(),
            scope: self.scope.clone(),
            dialect,
            focus: self.backend.focus(&self.id.room_id),
            owned_state_keys,
            notify,
        })
    }

    /// Leaves: removes our membership and hangs up every mesh peer call.
    pub fn leave(&self) -> Result<(), VoipError> {
        self.shared.command(Command::LeaveGroupCall {
            room_id: self.id.room_id.clone(),
            call_id: self.id.call_id.clone(),
        })
    }

    /// A snapshot: our state, the members (oldest first), their transports and mesh streams.
    pub fn info(&self) -> GroupCallInfo {
        self.shared.lock().core.group_call(&self.id)
    }

    /// Our state; `None` when we are not in the call (never entered, or left and forgotten).
    pub fn state(&self) -> Option<GroupCallState> {
        self.info().state
    }

    /// Whether we are in the call or on the way in or out (`Joining`, `Joined`, `Leaving`).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state(),
            Some(GroupCallState::Joining | GroupCallState::Joined | GroupCallState::Leaving)
        )
    }

    /// The current members other than this device, oldest first.
    pub fn participants(&self) -> Vec<Participant> {
        self.info().members.into_iter().map(|m| m.participant).collect()
    }

    /// Mesh: each member's remote streams (screenshare first).
    pub fn streams(&self) -> Vec<(Participant, Vec<RemoteStream>)> {
        self.info().streams
    }

    /// Mesh: the peer call with each member we are connected to (or connecting).
    pub fn peer_calls(&self) -> Vec<(Participant, Call)> {
        let st = self.shared.lock();
        let members = st.core.group_call(&self.id).members;
        let calls = st.core.calls();
        drop(st);
        members
            .into_iter()
            .filter_map(|m| {
                let p = m.participant;
                let c = calls.iter().find(|c| {
                    c.room_id == self.id.room_id
                        && c.signalling == Signalling::ToDevice
                        && c.peer_user == p.user_id
                        && c.peer_device.as_ref() == Some(&p.device_id)
                        && c.state != voip_core::CallState::Ended
                })?;
                Some((p, Call::new(self.shared.clone(), c.call_id.clone())))
            })
            .collect()
    }

    /// Mesh: mutes or unmutes our microphone and/or camera towards every member.
    pub fn set_muted(&self, audio: Option<bool>, video: Option<bool>) -> Result<(), VoipError> {
        self.shared.command(Command::SetGroupMuted {
            room_id: self.id.room_id.clone(),
            call_id: self.id.call_id.clone(),
            audio,
            video,
        })
    }

    /// Mesh: shares our screen with every member (or stops).
    pub fn set_screensharing(&self, enabled: bool) -> Result<(), VoipError> {
        self.shared.command(Command::SetGroupScreenshare {
            room_id: self.id.room_id.clone(),
            call_id: self.id.call_id.clone(),
            enabled,
        })
    }

    /// SFU mode: asks members for their media keys (`None`: every member).
    pub fn request_encryption_keys(&self, participants: Option<Vec<Participant>>) -> Result<(), VoipError> {
        self.shared.command(Command::RequestEncryptionKeys {
            room_id: self.id.room_id.clone(),
            call_id: self.id.call_id.clone(),
            participants,
        })
    }

    /// SFU mode: our key in use and the latest key of every current member.
    pub fn media_keys(&self) -> Option<MediaKeys> {
        self.shared.lock().core.media_keys(&self.id)
    }

    /// The call's events, from the first one on.
    pub fn events(&self) -> GroupCallEvents {
        self.shared.group_events(&self.id)
    }
}

/// Mesh decoded audio (feature `codecs`, with an engine built from
/// `WebrtcConfig::with_audio(AudioHub)`): every peer call carries the same microphone.
#[cfg(feature = "codecs")]
impl GroupCall {
    /// Mesh: decoded audio of each connected member's streams, from now on: (member, stream id,
    /// frames). Members whose stream is not known yet are missing: ask again after
    /// `GroupCallEvent`s.
    pub fn remote_audio(
        &self,
    ) -> Vec<(Participant, voip_core::StreamId, voip_webrtc::media::audio::RemoteAudio)> {
        self.peer_calls()
            .into_iter()
            .flat_map(|(p, call)| {
                call.streams()
                    .1
                    .into_iter()
                    .filter_map(|s| Some((p.clone(), s.stream_id.clone(), call.remote_audio(&s.stream_id)?)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Mesh: pushes our microphone's PCM (interleaved i16, any rate and channel count) into the
    /// input of every peer call, so each member hears it.
    pub fn push_audio_i16(&self, sample_rate: u32, channels: u16, samples: &[i16]) {
        for (_, call) in self.peer_calls() {
            if let Some(input) = call.audio_input() {
                input.push_i16(sample_rate, channels, samples);
            }
        }
    }

    /// Mesh: [`GroupCall::push_audio_i16`] with f32 samples.
    pub fn push_audio_f32(&self, sample_rate: u32, channels: u16, samples: &[f32]) {
        for (_, call) in self.peer_calls() {
            if let Some(input) = call.audio_input() {
                input.push_f32(sample_rate, channels, samples);
            }
        }
    }
}
