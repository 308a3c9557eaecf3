//! A group call handle: enter and leave, members, mesh peer calls and SFU media keys.

use voip_core::{
    Command, Focus, GroupCallId, GroupCallInfo, GroupCallState, MediaKeys, MembershipDialect,
    NotificationType, Participant, RemoteStream, RoomId, Signalling,
};

use crate::call::Call;
use crate::driver::Handle;
use crate::feed::Subscription;
use crate::VoipError;

/// How a group call carries media.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// How to take part in a group call, for [`crate::Voip::fetch_or_create_group_call`]: fixed
/// for the handle's lifetime (fetch another handle to change them).
///
/// ```
/// use voip::{GroupCallBackend, GroupCallOptions, MembershipDialect};
/// let options = GroupCallOptions::new(GroupCallBackend::Mesh).dialect(MembershipDialect::MatrixRtc);
/// assert_eq!(options.application(), "m.call");
/// let plain: GroupCallOptions = GroupCallBackend::Mesh.into();
/// assert_eq!(plain.membership_dialect(), MembershipDialect::Famedly);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCallOptions {
    backend: GroupCallBackend,
    application: String,
    scope: String,
    dialect: MembershipDialect,
    owned_state_keys: bool,
    encryption: Option<voip_core::MediaEncryption>,
}

impl GroupCallOptions {
    /// Application `m.call`, scope `m.room`, the backend's
    /// [default dialect](GroupCallBackend::default_dialect), `_`-prefixed state keys.
    pub fn new(backend: GroupCallBackend) -> Self {
        Self {
            dialect: backend.default_dialect(),
            backend,
            application: "m.call".into(),
            scope: "m.room".into(),
            owned_state_keys: false,
            encryption: None,
        }
    }

    /// The MatrixRTC application (`m.call` for calls).
    #[must_use]
    pub fn with_application(mut self, application: impl Into<String>) -> Self {
        self.application = application.into();
        self
    }

    /// The MatrixRTC scope (`m.room` for a room-wide call).
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Writes memberships in `dialect` (members of either dialect are always read).
    #[must_use]
    pub fn dialect(mut self, dialect: MembershipDialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The room version allows owned per-device state keys (MSC3757/MSC3779): state keys
    /// without the `_` prefix.
    #[must_use]
    pub fn owned_state_keys(mut self, owned: bool) -> Self {
        self.owned_state_keys = owned;
        self
    }

    /// Media encryption of a LiveKit call: per-participant keys, or none (js-sdk's
    /// `manageMediaKeys: false`). Without a choice it follows the room's `m.room.encryption`
    /// (see [`voip_core::MediaEncryption`]); `Event::GroupCallEncryption` and
    /// `GroupCallInfo::encryption` tell which mode the call runs.
    #[must_use]
    pub fn media_encryption(mut self, encryption: voip_core::MediaEncryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// The media encryption chosen, if any (`None`: from the room).
    pub fn chosen_media_encryption(&self) -> Option<voip_core::MediaEncryption> {
        self.encryption
    }

    /// The backend.
    pub fn backend(&self) -> &GroupCallBackend {
        &self.backend
    }

    /// The application.
    pub fn application(&self) -> &str {
        &self.application
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The dialect memberships are written in.
    pub fn membership_dialect(&self) -> MembershipDialect {
        self.dialect
    }

    /// Whether state keys are owned (no `_` prefix).
    pub fn uses_owned_state_keys(&self) -> bool {
        self.owned_state_keys
    }
}

impl From<GroupCallBackend> for GroupCallOptions {
    fn from(backend: GroupCallBackend) -> Self {
        Self::new(backend)
    }
}

/// Something that happened in a group call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum GroupCallUpdate {
    /// Our state in the call changed.
    StateChanged(GroupCallState),
    /// Members joined or left (our own device is never listed).
    ParticipantsChanged {
        /// Who joined.
        joined: Vec<Participant>,
        /// Who left or expired.
        left: Vec<Participant>,
        /// How many participants there are now (the list: [`GroupCall::participants`]).
        count: usize,
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

/// The update feed of a group call, from its first update on (a [`futures_core::Stream`]; it
/// does not keep the runtime running).
pub type GroupCallUpdates = Subscription<GroupCallUpdate>;

/// A handle on a room's group call. Cheap to clone; keeps the runtime running. Its
/// [`GroupCallOptions`] are fixed.
#[derive(Clone)]
pub struct GroupCall {
    pub(crate) handle: Handle,
    id: GroupCallId,
    options: GroupCallOptions,
}

impl std::fmt::Debug for GroupCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCall")
            .field("id", &self.id)
            .field("backend", &self.options.backend)
            .finish_non_exhaustive()
    }
}

impl GroupCall {
    pub(crate) fn new(handle: Handle, room: RoomId, options: GroupCallOptions) -> Self {
        Self { handle, id: GroupCallId::room_call(room), options }
    }

    /// The group call's id (room and `call_id`).
    pub fn id(&self) -> &GroupCallId {
        &self.id
    }

    /// The backend.
    pub fn backend(&self) -> &GroupCallBackend {
        &self.options.backend
    }

    /// How this handle takes part.
    pub fn options(&self) -> &GroupCallOptions {
        &self.options
    }

    /// Joins: sends our membership (and, where the server supports MSC4140, schedules the
    /// delayed leave that removes it if this device disappears). Mesh: calls the members this
    /// device must call.
    pub async fn enter(&self) -> Result<(), VoipError> {
        self.enter_inner(None).await
    }

    /// Joins, and if nobody else is in the call, rings or notifies the room (MSC4075).
    pub async fn enter_and_notify(&self, notification: NotificationType) -> Result<(), VoipError> {
        self.enter_inner(Some(notification)).await
    }

    async fn enter_inner(&self, notify: Option<NotificationType>) -> Result<(), VoipError> {
        let o = &self.options;
        self.handle
            .command(Command::JoinGroupCall {
                room_id: self.id.room_id.clone(),
                call_id: self.id.call_id.clone(),
                application: o.application.clone(),
                scope: o.scope.clone(),
                dialect: o.dialect,
                focus: o.backend.focus(&self.id.room_id),
                owned_state_keys: o.owned_state_keys,
                notify,
                encryption: o.encryption,
            })
            .await
    }

    /// Leaves: removes our membership and hangs up every mesh peer call.
    pub async fn leave(&self) -> Result<(), VoipError> {
        self.handle
            .command(Command::LeaveGroupCall {
                room_id: self.id.room_id.clone(),
                call_id: self.id.call_id.clone(),
            })
            .await
    }

    /// A snapshot: our state, the members (oldest first), their transports and mesh streams.
    pub fn info(&self) -> GroupCallInfo {
        self.handle.snapshot().groups.get(&self.id).map(|g| g.info.clone()).unwrap_or_else(|| GroupCallInfo {
            group: self.id.clone(),
            state: None,
            members: Vec::new(),
            transports: Vec::new(),
            streams: Vec::new(),
            encryption: None,
        })
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
        let snapshot = self.handle.snapshot();
        let members = snapshot.groups.get(&self.id).map(|g| g.info.members.clone()).unwrap_or_default();
        members
            .into_iter()
            .filter_map(|m| {
                let p = m.participant;
                let c = snapshot.calls.values().find(|c| {
                    c.room_id == self.id.room_id
                        && c.signalling == Signalling::ToDevice
                        && c.peer_user == p.user_id
                        && c.peer_device.as_ref() == Some(&p.device_id)
                        && c.state != voip_core::CallState::Ended
                })?;
                Some((p, Call::new(self.handle.clone(), c.call_id.clone())))
            })
            .collect()
    }

    /// Mesh: mutes or unmutes our microphone and/or camera towards every member.
    pub async fn set_muted(&self, audio: Option<bool>, video: Option<bool>) -> Result<(), VoipError> {
        self.handle
            .command(Command::SetGroupMuted {
                room_id: self.id.room_id.clone(),
                call_id: self.id.call_id.clone(),
                audio,
                video,
            })
            .await
    }

    /// Mesh: shares our screen with every member (or stops).
    pub async fn set_screensharing(&self, enabled: bool) -> Result<(), VoipError> {
        self.handle
            .command(Command::SetGroupScreenshare {
                room_id: self.id.room_id.clone(),
                call_id: self.id.call_id.clone(),
                enabled,
            })
            .await
    }

    /// SFU mode: asks members for their media keys (`None`: every member).
    pub async fn request_encryption_keys(
        &self,
        participants: Option<Vec<Participant>>,
    ) -> Result<(), VoipError> {
        self.handle
            .command(Command::RequestEncryptionKeys {
                room_id: self.id.room_id.clone(),
                call_id: self.id.call_id.clone(),
                participants,
            })
            .await
    }

    /// SFU mode: our key in use and the latest key of every current member.
    pub fn media_keys(&self) -> Option<MediaKeys> {
        self.handle.snapshot().groups.get(&self.id).and_then(|g| g.media_keys.clone())
    }

    /// Our own participant (user, device, membership id) while we are in the call.
    pub fn local_participant(&self) -> Option<Participant> {
        self.handle.snapshot().groups.get(&self.id).and_then(|g| g.local.clone())
    }

    /// The call's updates, from the first one on.
    pub fn updates(&self) -> GroupCallUpdates {
        self.handle.group_feed(&self.id)
    }
}

/// Mesh decoded audio (feature `codecs`, with an engine built from
/// `WebrtcConfig::with_audio(AudioHub)`): every peer call carries the same microphone.
#[cfg(feature = "codecs")]
impl GroupCall {
    /// Mesh: decoded audio of each connected member's streams, from now on: (member, stream id,
    /// frames). Members whose stream is not known yet are missing: ask again after
    /// `GroupCallUpdate`s.
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

/// Mesh decoded video (feature `codecs`, with an engine built from
/// `WebrtcConfig::with_video(VideoHub)`): every peer call carries the same camera.
#[cfg(feature = "codecs")]
impl GroupCall {
    /// Mesh: decoded video of each connected member's streams, from now on: (member, stream id,
    /// frames). Members whose stream is not known yet are missing: ask again after
    /// `GroupCallUpdate`s.
    pub fn remote_video(
        &self,
    ) -> Vec<(Participant, voip_core::StreamId, voip_webrtc::media::video::RemoteVideo)> {
        self.peer_calls()
            .into_iter()
            .flat_map(|(p, call)| {
                call.streams()
                    .1
                    .into_iter()
                    .filter_map(|s| Some((p.clone(), s.stream_id.clone(), call.remote_video(&s.stream_id)?)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Mesh: pushes our camera's frame into the video input of every peer call, so each member
    /// sees it.
    pub fn push_video_frame(&self, frame: &voip_webrtc::media::video::VideoFrame) {
        for (_, call) in self.peer_calls() {
            if let Some(input) = call.video_input() {
                input.push(frame.clone());
            }
        }
    }

    /// Mesh: every peer call plays its own copy of `source` (from its start) as the camera.
    pub fn replace_video_input<S: voip_webrtc::media::video::VideoSource + Clone>(&self, source: S) {
        for (_, call) in self.peer_calls() {
            call.replace_video_input(source.clone());
        }
    }
}
