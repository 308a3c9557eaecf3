//! `m.call.*` event contents (spec VoIP version 1, MSC2746, MSC3077/3291, MSC2747, MSC3086),
//! plus the to-device fields mesh signalling adds (`room_id`, `conf_id`, `device_id`, `seq`,
//! session ids).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::fields::{Fields, MAX_ID_LEN, MAX_LIST_LEN, MAX_STRING_LEN};
use super::{WireError, WireErrorKind};
use crate::media::{Candidate, SdpType, SessionDescription, StreamPurpose};

/// Event type names.
pub mod types {
    /// `m.call.invite`
    pub const INVITE: &str = "m.call.invite";
    /// `m.call.answer`
    pub const ANSWER: &str = "m.call.answer";
    /// `m.call.candidates`
    pub const CANDIDATES: &str = "m.call.candidates";
    /// `m.call.select_answer`
    pub const SELECT_ANSWER: &str = "m.call.select_answer";
    /// `m.call.reject`
    pub const REJECT: &str = "m.call.reject";
    /// `m.call.hangup`
    pub const HANGUP: &str = "m.call.hangup";
    /// `m.call.negotiate`
    pub const NEGOTIATE: &str = "m.call.negotiate";
    /// `m.call.sdp_stream_metadata_changed`
    pub const SDP_STREAM_METADATA_CHANGED: &str = "m.call.sdp_stream_metadata_changed";
    /// Unstable name of `m.call.sdp_stream_metadata_changed`.
    pub const SDP_STREAM_METADATA_CHANGED_UNSTABLE: &str = "org.matrix.call.sdp_stream_metadata_changed";
    /// `m.call.replaces` (MSC2747).
    pub const REPLACES: &str = "m.call.replaces";
    /// `m.call.asserted_identity` (MSC3086).
    pub const ASSERTED_IDENTITY: &str = "m.call.asserted_identity";
    /// Unstable name of `m.call.asserted_identity`.
    pub const ASSERTED_IDENTITY_UNSTABLE: &str = "org.matrix.call.asserted_identity";
}

/// Stable key of the stream metadata map.
pub const SDP_STREAM_METADATA: &str = "sdp_stream_metadata";
/// Unstable (MSC3077) key of the stream metadata map, still written by older clients.
pub const SDP_STREAM_METADATA_UNSTABLE: &str = "org.matrix.msc3077.sdp_stream_metadata";

/// VoIP protocol version of the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CallVersion {
    /// The integer `0`.
    V0,
    /// `"1"`, or anything else (spec rule: every value but `0` is treated as `"1"`).
    V1,
}

/// One stream's metadata (MSC3077): purpose and mute flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamMetadata {
    /// Usermedia or screenshare.
    pub purpose: StreamPurpose,
    /// Microphone muted.
    #[serde(default)]
    pub audio_muted: bool,
    /// Camera muted.
    #[serde(default)]
    pub video_muted: bool,
}

/// `sdp_stream_metadata`: stream id → metadata. Entries with an unknown purpose are dropped on
/// input (the spec says such streams are ignored).
pub type SdpStreamMetadata = BTreeMap<String, StreamMetadata>;

/// `capabilities` on invite and answer (MSC2747). Only a boolean `true` counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Capabilities {
    /// `m.call.transferee`
    pub transferee: bool,
    /// `m.call.dtmf`
    pub dtmf: bool,
}

/// `asserted_identity` (MSC3086).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AssertedIdentity {
    /// A Matrix user id or other identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// `target_user` of `m.call.replaces`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TargetUser {
    /// User id.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// The transfer request of `m.call.replaces` (MSC2747), minus the common fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CallReplaces {
    /// Id of this replacement.
    pub replacement_id: String,
    /// Room to place the new call in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_room: Option<String>,
    /// Who to call.
    pub target_user: TargetUser,
    /// Place a new call with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_call: Option<String>,
    /// Or wait for a call with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub await_call: Option<String>,
}

/// Fields present on to-device call signalling (MSC3401 mesh style; famedly requires `room_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ToDeviceFields {
    /// Room the call belongs to.
    pub room_id: Option<String>,
    /// Group call id, for mesh calls.
    pub conf_id: Option<String>,
    /// The sender's device (self-asserted).
    pub device_id: Option<String>,
    /// Per-call sequence number.
    pub seq: Option<u64>,
    /// Sender's session id.
    pub sender_session_id: Option<String>,
    /// Intended receiver session id.
    pub dest_session_id: Option<String>,
}

/// Fields shared by every `m.call.*` content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Common {
    /// `call_id`.
    pub call_id: String,
    /// `party_id` (absent for version 0 senders).
    pub party_id: Option<String>,
    /// `version`.
    pub version: CallVersion,
    /// To-device extras (all `None` for room events that lack them).
    pub to_device: ToDeviceFields,
}

/// A parsed `m.call.*` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// `m.call.invite`
    Invite {
        /// The offer.
        offer: SessionDescription,
        /// `lifetime` in ms, if given and numeric.
        lifetime: Option<u64>,
        /// `invitee` user.
        invitee: Option<String>,
        /// `invitee_device_id`.
        invitee_device_id: Option<String>,
        /// Stream metadata, if the sender supports it.
        metadata: Option<SdpStreamMetadata>,
        /// Capabilities.
        capabilities: Capabilities,
    },
    /// `m.call.answer`
    Answer {
        /// The answer.
        answer: SessionDescription,
        /// Stream metadata.
        metadata: Option<SdpStreamMetadata>,
        /// Capabilities.
        capabilities: Capabilities,
    },
    /// `m.call.candidates`
    Candidates {
        /// Valid candidates (invalid entries are skipped).
        candidates: Vec<Candidate>,
    },
    /// `m.call.select_answer`
    SelectAnswer {
        /// The chosen party.
        selected_party_id: String,
    },
    /// `m.call.reject`
    Reject {
        /// `reason` (not in the spec; js-sdk ends an `invite_sent` call with it, e.g. `user_busy`).
        reason: Option<String>,
    },
    /// `m.call.hangup`
    Hangup {
        /// Reason, if given.
        reason: Option<String>,
    },
    /// `m.call.negotiate`
    Negotiate {
        /// Offer or answer.
        description: SessionDescription,
        /// `lifetime` in ms.
        lifetime: Option<u64>,
        /// Stream metadata.
        metadata: Option<SdpStreamMetadata>,
    },
    /// `m.call.sdp_stream_metadata_changed` (either name)
    SdpStreamMetadataChanged {
        /// The new metadata.
        metadata: SdpStreamMetadata,
    },
    /// `m.call.asserted_identity` (either name)
    AssertedIdentity {
        /// The identity, `None` to revert.
        identity: Option<AssertedIdentity>,
    },
    /// `m.call.replaces`
    Replaces {
        /// The request.
        replaces: CallReplaces,
    },
}

impl CallEvent {
    /// The `m.call.*` type name to send this event as.
    pub fn event_type(&self) -> &'static str {
        match self {
            CallEvent::Invite { .. } => types::INVITE,
            CallEvent::Answer { .. } => types::ANSWER,
            CallEvent::Candidates { .. } => types::CANDIDATES,
            CallEvent::SelectAnswer { .. } => types::SELECT_ANSWER,
            CallEvent::Reject { .. } => types::REJECT,
            CallEvent::Hangup { .. } => types::HANGUP,
            CallEvent::Negotiate { .. } => types::NEGOTIATE,
            CallEvent::SdpStreamMetadataChanged { .. } => types::SDP_STREAM_METADATA_CHANGED,
            CallEvent::AssertedIdentity { .. } => types::ASSERTED_IDENTITY,
            CallEvent::Replaces { .. } => types::REPLACES,
        }
    }
}

/// famedly's namespaced name of a call event (`m.call.invite` → `com.famedly.call.member.invite`),
/// which famedly's own mesh group calls send to their peers (its receiver reads both names, older
/// builds may not); other types unchanged.
pub fn famedly_event_type(event_type: &str) -> String {
    match event_type.strip_prefix("m.call.") {
        Some(rest) => format!("com.famedly.call.member.{rest}"),
        None => event_type.to_owned(),
    }
}

/// famedly's namespaced names of the call events (`com.famedly.call.member.invite`, …), which
/// its mesh group calls send, mapped to the `m.call.*` names; other types unchanged.
pub fn normalize_event_type(event_type: &str) -> std::borrow::Cow<'_, str> {
    match event_type.strip_prefix("com.famedly.call.member.") {
        Some(rest) if is_call_event_type(&format!("m.call.{rest}")) => format!("m.call.{rest}").into(),
        _ => event_type.into(),
    }
}

/// Whether an event type is one of the `m.call.*` types the core understands (either name).
pub fn is_call_event_type(event_type: &str) -> bool {
    let matrix_name;
    let event_type = match event_type.strip_prefix("com.famedly.call.member.") {
        Some(rest) => {
            matrix_name = format!("m.call.{rest}");
            matrix_name.as_str()
        }
        None => event_type,
    };
    matches!(
        event_type,
        types::INVITE
            | types::ANSWER
            | types::CANDIDATES
            | types::SELECT_ANSWER
            | types::REJECT
            | types::HANGUP
            | types::NEGOTIATE
            | types::SDP_STREAM_METADATA_CHANGED
            | types::SDP_STREAM_METADATA_CHANGED_UNSTABLE
            | types::ASSERTED_IDENTITY
            | types::ASSERTED_IDENTITY_UNSTABLE
            | types::REPLACES
    )
}

/// Parses the content of a call event of type `event_type`.
///
/// Lenient where real clients differ, strict where meaning is at stake: a missing `call_id`,
/// `offer`, `answer`, `description` or `selected_party_id` is an error; a malformed candidate
/// entry is skipped; an unknown stream purpose drops that stream.
pub fn parse(event_type: &str, content: &Value) -> Result<(Common, CallEvent), WireError> {
    let f = Fields::new(event_type, content)?;
    let common = parse_common(&f)?;
    let event = match event_type {
        types::INVITE => CallEvent::Invite {
            offer: description(&f, "offer", SdpType::Offer)?,
            lifetime: f.u64_opt("lifetime")?,
            invitee: f.id_opt("invitee")?.map(str::to_owned),
            invitee_device_id: f.id_opt("invitee_device_id")?.map(str::to_owned),
            metadata: metadata(&f)?,
            capabilities: capabilities(&f)?,
        },
        types::ANSWER => CallEvent::Answer {
            answer: description(&f, "answer", SdpType::Answer)?,
            metadata: metadata(&f)?,
            capabilities: capabilities(&f)?,
        },
        types::CANDIDATES => CallEvent::Candidates { candidates: candidates(&f)? },
        types::SELECT_ANSWER => {
            CallEvent::SelectAnswer { selected_party_id: f.id_req("selected_party_id")?.to_owned() }
        }
        types::REJECT => CallEvent::Reject { reason: f.str_opt("reason", MAX_ID_LEN)?.map(str::to_owned) },
        types::HANGUP => CallEvent::Hangup { reason: f.str_opt("reason", MAX_ID_LEN)?.map(str::to_owned) },
        types::NEGOTIATE => {
            let description = match f.nested("description")? {
                Some(d) => {
                    let sdp_type = match d.str_req("type", 16)? {
                        "offer" => SdpType::Offer,
                        "answer" => SdpType::Answer,
                        _ => return Err(d.err("type", WireErrorKind::Invalid)),
                    };
                    SessionDescription { sdp_type, sdp: d.str_req("sdp", MAX_STRING_LEN)?.to_owned() }
                }
                None => return Err(f.err("description", WireErrorKind::Missing)),
            };
            CallEvent::Negotiate { description, lifetime: f.u64_opt("lifetime")?, metadata: metadata(&f)? }
        }
        types::SDP_STREAM_METADATA_CHANGED | types::SDP_STREAM_METADATA_CHANGED_UNSTABLE => {
            CallEvent::SdpStreamMetadataChanged {
                metadata: metadata(&f)?.ok_or_else(|| f.err(SDP_STREAM_METADATA, WireErrorKind::Missing))?,
            }
        }
        types::ASSERTED_IDENTITY | types::ASSERTED_IDENTITY_UNSTABLE => {
            let identity = match f.nested("asserted_identity")? {
                None => None,
                Some(a) => Some(AssertedIdentity {
                    id: a.str_opt("id", MAX_ID_LEN)?.map(str::to_owned),
                    display_name: a.str_opt("display_name", MAX_ID_LEN)?.map(str::to_owned),
                    avatar_url: a.str_opt("avatar_url", MAX_ID_LEN * 8)?.map(str::to_owned),
                }),
            };
            CallEvent::AssertedIdentity { identity }
        }
        types::REPLACES => {
            let target =
                f.nested("target_user")?.ok_or_else(|| f.err("target_user", WireErrorKind::Missing))?;
            let replaces = CallReplaces {
                replacement_id: f.id_req("replacement_id")?.to_owned(),
                target_room: f.id_opt("target_room")?.map(str::to_owned),
                target_user: TargetUser {
                    id: target.id_req("id")?.to_owned(),
                    display_name: target.str_opt("display_name", MAX_ID_LEN)?.map(str::to_owned),
                    avatar_url: target.str_opt("avatar_url", MAX_ID_LEN * 8)?.map(str::to_owned),
                },
                create_call: f.id_opt("create_call")?.map(str::to_owned),
                await_call: f.id_opt("await_call")?.map(str::to_owned),
            };
            if replaces.create_call.is_some() == replaces.await_call.is_some() {
                return Err(f.err("create_call", WireErrorKind::Invalid));
            }
            CallEvent::Replaces { replaces }
        }
        other => {
            return Err(WireError {
                event_type: other.to_owned(),
                field: "type".into(),
                kind: WireErrorKind::Invalid,
            })
        }
    };
    Ok((common, event))
}

fn parse_common(f: &Fields<'_>) -> Result<Common, WireError> {
    let version = match f.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => CallVersion::V0,
        None => CallVersion::V0,
        Some(Value::String(_) | Value::Number(_)) => CallVersion::V1,
        Some(_) => return Err(f.err("version", WireErrorKind::WrongType)),
    };
    Ok(Common {
        call_id: f.id_req("call_id")?.to_owned(),
        party_id: f.id_opt("party_id")?.map(str::to_owned),
        version,
        to_device: ToDeviceFields {
            room_id: f.id_opt("room_id")?.map(str::to_owned),
            conf_id: f.str_opt("conf_id", MAX_ID_LEN)?.map(str::to_owned),
            device_id: f.id_opt("device_id")?.map(str::to_owned),
            seq: f.u64_opt("seq")?,
            sender_session_id: f.id_opt("sender_session_id")?.map(str::to_owned),
            dest_session_id: f.id_opt("dest_session_id")?.map(str::to_owned),
        },
    })
}

fn description(f: &Fields<'_>, field: &str, expected: SdpType) -> Result<SessionDescription, WireError> {
    // The spec says receivers should not validate `type`; we only need the SDP.
    let d = f.nested(field)?.ok_or_else(|| f.err(field, WireErrorKind::Missing))?;
    let sdp = d.str_req("sdp", MAX_STRING_LEN)?;
    Ok(SessionDescription { sdp_type: expected, sdp: sdp.to_owned() })
}

fn capabilities(f: &Fields<'_>) -> Result<Capabilities, WireError> {
    Ok(match f.nested("capabilities")? {
        Some(c) => Capabilities { transferee: c.flag("m.call.transferee"), dtmf: c.flag("m.call.dtmf") },
        None => Capabilities::default(),
    })
}

/// Reads the stream metadata under the stable key, else the unstable one. A stream whose entry is
/// malformed or has an unknown purpose is left out.
fn metadata(f: &Fields<'_>) -> Result<Option<SdpStreamMetadata>, WireError> {
    let raw = f.get(SDP_STREAM_METADATA).or_else(|| f.get(SDP_STREAM_METADATA_UNSTABLE));
    let Some(raw) = raw else { return Ok(None) };
    let Value::Object(map) = raw else { return Err(f.err(SDP_STREAM_METADATA, WireErrorKind::WrongType)) };
    let mut out = SdpStreamMetadata::new();
    for (stream_id, entry) in map.iter().take(MAX_LIST_LEN) {
        if stream_id.is_empty() || stream_id.len() > MAX_ID_LEN {
            continue;
        }
        let Value::Object(e) = entry else { continue };
        let purpose = match e.get("purpose").and_then(Value::as_str) {
            Some("m.usermedia") => StreamPurpose::Usermedia,
            Some("m.screenshare") => StreamPurpose::Screenshare,
            _ => continue,
        };
        let flag = |k: &str| matches!(e.get(k), Some(Value::Bool(true)));
        out.insert(
            stream_id.clone(),
            StreamMetadata { purpose, audio_muted: flag("audio_muted"), video_muted: flag("video_muted") },
        );
    }
    Ok(Some(out))
}

fn candidates(f: &Fields<'_>) -> Result<Vec<Candidate>, WireError> {
    let list = match f.get("candidates") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(f.err("candidates", WireErrorKind::WrongType)),
        None => return Err(f.err("candidates", WireErrorKind::Missing)),
    };
    let mut out = Vec::with_capacity(list.len().min(MAX_LIST_LEN));
    for c in list.iter().take(MAX_LIST_LEN) {
        let Value::Object(c) = c else { continue };
        let Some(candidate) = c.get("candidate").and_then(Value::as_str) else { continue };
        if candidate.len() > 4096 {
            continue;
        }
        let sdp_mid = c.get("sdpMid").and_then(Value::as_str).map(str::to_owned);
        let sdp_m_line_index =
            c.get("sdpMLineIndex").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
        // A real candidate needs an m-line reference; end-of-candidates does not.
        if !candidate.is_empty() && sdp_mid.is_none() && sdp_m_line_index.is_none() {
            continue;
        }
        out.push(Candidate {
            candidate: candidate.to_owned(),
            sdp_mid,
            sdp_m_line_index,
            username_fragment: c.get("usernameFragment").and_then(Value::as_str).map(str::to_owned),
        });
    }
    Ok(out)
}

/// Serializes an event for sending: version `"1"`, our `call_id` and `party_id`, the event's own
/// fields, and the to-device extras when given. Stream metadata goes under the stable key only.
pub fn to_content(common: &Common, event: &CallEvent) -> Value {
    let mut m = Map::new();
    m.insert("call_id".into(), json!(common.call_id));
    if let Some(p) = &common.party_id {
        m.insert("party_id".into(), json!(p));
    }
    m.insert("version".into(), json!("1"));
    let td = &common.to_device;
    for (k, v) in [
        ("room_id", &td.room_id),
        ("conf_id", &td.conf_id),
        ("device_id", &td.device_id),
        ("sender_session_id", &td.sender_session_id),
        ("dest_session_id", &td.dest_session_id),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    if let Some(seq) = td.seq {
        m.insert("seq".into(), json!(seq));
    }
    let caps = |c: &Capabilities| json!({"m.call.transferee": c.transferee, "m.call.dtmf": c.dtmf});
    let desc = |d: &SessionDescription| json!(d);
    match event {
        CallEvent::Invite { offer, lifetime, invitee, invitee_device_id, metadata, capabilities } => {
            m.insert("offer".into(), desc(offer));
            m.insert("lifetime".into(), json!(lifetime.unwrap_or(60_000)));
            if let Some(i) = invitee {
                m.insert("invitee".into(), json!(i));
            }
            if let Some(d) = invitee_device_id {
                m.insert("invitee_device_id".into(), json!(d));
            }
            if let Some(md) = metadata {
                m.insert(SDP_STREAM_METADATA.into(), json!(md));
            }
            m.insert("capabilities".into(), caps(capabilities));
        }
        CallEvent::Answer { answer, metadata, capabilities } => {
            m.insert("answer".into(), desc(answer));
            if let Some(md) = metadata {
                m.insert(SDP_STREAM_METADATA.into(), json!(md));
            }
            m.insert("capabilities".into(), caps(capabilities));
        }
        CallEvent::Candidates { candidates } => {
            m.insert("candidates".into(), json!(candidates));
        }
        CallEvent::SelectAnswer { selected_party_id } => {
            m.insert("selected_party_id".into(), json!(selected_party_id));
        }
        CallEvent::Reject { reason } => {
            if let Some(r) = reason {
                m.insert("reason".into(), json!(r));
            }
        }
        CallEvent::Hangup { reason } => {
            m.insert("reason".into(), json!(reason.as_deref().unwrap_or("user_hangup")));
        }
        CallEvent::Negotiate { description, lifetime, metadata } => {
            m.insert("description".into(), desc(description));
            m.insert("lifetime".into(), json!(lifetime.unwrap_or(10_000)));
            if let Some(md) = metadata {
                m.insert(SDP_STREAM_METADATA.into(), json!(md));
            }
        }
        CallEvent::SdpStreamMetadataChanged { metadata } => {
            m.insert(SDP_STREAM_METADATA.into(), json!(metadata));
        }
        CallEvent::AssertedIdentity { identity } => {
            m.insert("asserted_identity".into(), json!(identity));
        }
        CallEvent::Replaces { replaces } => {
            if let Value::Object(r) = json!(replaces) {
                m.extend(r);
            }
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn famedly_names_round_trip() {
        for t in [types::INVITE, types::ANSWER, types::CANDIDATES, types::HANGUP, types::SELECT_ANSWER] {
            let f = famedly_event_type(t);
            assert!(f.starts_with("com.famedly.call.member."), "{f}");
            assert_eq!(normalize_event_type(&f), t);
        }
        assert_eq!(famedly_event_type("m.room.message"), "m.room.message");
        // Both names are call events (adapters forward famedly's to the core).
        assert!(is_call_event_type("com.famedly.call.member.invite"));
        assert!(!is_call_event_type("com.famedly.call.member.encryption_keys"));
    }

    #[test]
    fn version_rules() {
        for (v, expected) in [
            (json!("1"), CallVersion::V1),
            (json!(1), CallVersion::V1),
            (json!(0), CallVersion::V0),
            (json!("0"), CallVersion::V1),
            (json!("2"), CallVersion::V1),
        ] {
            let (c, _) =
                parse(types::REJECT, &json!({"call_id": "c", "party_id": "p", "version": v})).unwrap();
            assert_eq!(c.version, expected);
        }
    }

    #[test]
    fn both_metadata_keys_and_lenient_lifetime() {
        let content = json!({
            "call_id": "c", "version": "1", "party_id": "p", "lifetime": "60000",
            "offer": {"type": "offer", "sdp": "v=0"},
            "org.matrix.msc3077.sdp_stream_metadata": {"s1": {"purpose": "m.usermedia", "video_muted": true},
                                                       "s2": {"purpose": "m.bogus"}}
        });
        let (_, ev) = parse(types::INVITE, &content).unwrap();
        let CallEvent::Invite { lifetime, metadata, .. } = ev else { panic!("not an invite") };
        assert_eq!(lifetime, Some(60_000));
        let md = metadata.unwrap();
        assert_eq!(md.len(), 1);
        assert!(md["s1"].video_muted && !md["s1"].audio_muted);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(types::INVITE, &json!({"call_id": "c", "version": "1"})).unwrap_err();
        assert_eq!((e.field.as_str(), e.kind), ("offer", WireErrorKind::Missing));
        let e = parse(types::HANGUP, &json!({"call_id": 5})).unwrap_err();
        assert_eq!((e.field.as_str(), e.kind), ("call_id", WireErrorKind::WrongType));
        let e = parse(types::NEGOTIATE, &json!({"call_id": "c", "description": {"type": "x", "sdp": ""}}))
            .unwrap_err();
        assert_eq!((e.field.as_str(), e.kind), ("description.type", WireErrorKind::Invalid));
        let e = parse(types::ANSWER, &json!([1])).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::NotAnObject);
    }

    #[test]
    fn invalid_candidates_are_skipped() {
        let (_, ev) = parse(
            types::CANDIDATES,
            &json!({"call_id": "c", "version": "1", "candidates": [
                {"candidate": "candidate:1 1 udp 1 127.0.0.1 1 typ host", "sdpMid": "0"},
                {"candidate": "candidate:2 1 udp 1 127.0.0.1 2 typ host"},
                {"candidate": 7},
                "junk",
                {"candidate": ""}
            ]}),
        )
        .unwrap();
        let CallEvent::Candidates { candidates } = ev else { panic!("not candidates") };
        assert_eq!(candidates.len(), 2);
        assert!(candidates[1].is_end_of_candidates());
    }

    #[test]
    fn round_trip() {
        let common = Common {
            call_id: "c1".into(),
            party_id: Some("p1".into()),
            version: CallVersion::V1,
            to_device: ToDeviceFields::default(),
        };
        let mut md = SdpStreamMetadata::new();
        md.insert(
            "s".into(),
            StreamMetadata { purpose: StreamPurpose::Screenshare, audio_muted: false, video_muted: false },
        );
        let events = vec![
            CallEvent::Invite {
                offer: SessionDescription::offer("v=0"),
                lifetime: Some(90_000),
                invitee: Some("@b:x".into()),
                invitee_device_id: Some("D".into()),
                metadata: Some(md.clone()),
                capabilities: Capabilities { transferee: true, dtmf: false },
            },
            CallEvent::Answer {
                answer: SessionDescription::answer("v=0"),
                metadata: None,
                capabilities: Capabilities::default(),
            },
            CallEvent::Candidates { candidates: vec![Candidate::end_of_candidates()] },
            CallEvent::SelectAnswer { selected_party_id: "p2".into() },
            CallEvent::Reject { reason: None },
            CallEvent::Reject { reason: Some("user_busy".into()) },
            CallEvent::Hangup { reason: Some("user_busy".into()) },
            CallEvent::Negotiate {
                description: SessionDescription::answer("v=0"),
                lifetime: Some(1),
                metadata: Some(md.clone()),
            },
            CallEvent::SdpStreamMetadataChanged { metadata: md },
            CallEvent::AssertedIdentity {
                identity: Some(AssertedIdentity { id: Some("@c:x".into()), ..Default::default() }),
            },
            CallEvent::Replaces {
                replaces: CallReplaces {
                    replacement_id: "r".into(),
                    target_user: TargetUser { id: "@c:x".into(), ..Default::default() },
                    create_call: Some("n".into()),
                    ..Default::default()
                },
            },
        ];
        for ev in events {
            let content = to_content(&common, &ev);
            let (c, back) = parse(ev.event_type(), &content).unwrap();
            assert_eq!(c, common);
            assert_eq!(back, ev);
        }
    }
}
