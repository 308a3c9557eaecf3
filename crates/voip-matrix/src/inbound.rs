//! From Matrix events to core inputs: pure conversions and the matrix-sdk event handlers.

use serde_json::Value;
use voip_core::wire::call::is_call_event_type;
use voip_core::{DeviceId, RoomEvent, RoomId, RoomMember, RoomMembership, Timestamp, ToDeviceEvent, UserId};

/// State event types of group-call memberships, in both dialects (MSC3401 as used by Element
/// Call / matrix-js-sdk, and famedly's).
pub const CALL_MEMBER_TYPES: &[&str] =
    &["org.matrix.msc3401.call.member", "m.call.member", "com.famedly.call.member"];

/// To-device types forwarded besides the `m.call.*` ones: group-call media keys, with the names
/// the core parses (famedly's documentation calls them `com.famedly.call.encryption_keys(.request)`,
/// but its SDK sends `com.famedly.call.member.encryption_keys(_request)`).
pub const KEY_TO_DEVICE_TYPES: &[&str] = &[
    voip_core::wire::keys::types::ELEMENT_CALL_KEYS,
    voip_core::wire::keys::types::FAMEDLY_KEYS,
    voip_core::wire::keys::types::FAMEDLY_KEYS_REQUEST,
];

/// Whether a to-device message of this type carries media keys (never sent in clear).
pub fn is_media_key_type(event_type: &str) -> bool {
    event_type.contains("encryption_keys")
}

/// Whether an event of this type is a call invite (`m.call.invite` or famedly's namespaced
/// mesh invite).
pub fn is_invite_type(event_type: &str) -> bool {
    matches!(event_type, "m.call.invite" | "com.famedly.call.member.invite")
}

/// Whether a to-device event of this type goes to the core.
pub fn is_forwarded_to_device_type(event_type: &str) -> bool {
    is_call_event_type(event_type) || KEY_TO_DEVICE_TYPES.contains(&event_type)
}

/// A group-call membership state event (either dialect), as received.
///
/// They reach the core as [`voip_core::Input::StateEvent`]; apps can also subscribe with
/// [`crate::MatrixAdapter::call_member_events`].
#[derive(Clone, Debug, PartialEq)]
pub struct CallMemberState {
    /// The room.
    pub room_id: RoomId,
    /// `org.matrix.msc3401.call.member`, `m.call.member` or `com.famedly.call.member`.
    pub event_type: String,
    /// The state key (`@user:hs`, `_@user:hs_DEVICE`, `@user:hs_DEVICE`).
    pub state_key: String,
    /// The sender.
    pub sender: UserId,
    /// The content (`{}` means left).
    pub content: Value,
    /// The event id, when known.
    pub event_id: Option<String>,
    /// `origin_server_ts`.
    pub origin_server_ts: Timestamp,
}

impl From<CallMemberState> for voip_core::StateEvent {
    fn from(s: CallMemberState) -> Self {
        voip_core::StateEvent {
            room_id: s.room_id,
            event_id: s.event_id,
            sender: s.sender,
            event_type: s.event_type,
            state_key: s.state_key,
            content: s.content,
            origin_server_ts: s.origin_server_ts,
        }
    }
}

fn str_field<'a>(ev: &'a Value, key: &str) -> Option<&'a str> {
    ev.get(key).and_then(Value::as_str)
}

/// A room timeline event (already decrypted) as a core [`RoomEvent`], if it is a call event.
/// `megolm_sender_device` is `Some` exactly when the event arrived encrypted, with the sending
/// device the Megolm session vouches for, when known.
pub fn room_event_from_json(
    room_id: &str,
    ev: &Value,
    megolm_sender_device: Option<Option<&str>>,
) -> Option<RoomEvent> {
    let event_type = str_field(ev, "type")?;
    if !is_call_event_type(event_type) || ev.get("state_key").is_some() {
        return None;
    }
    Some(RoomEvent {
        room_id: RoomId::from(room_id),
        event_id: str_field(ev, "event_id").map(str::to_owned),
        sender: UserId::from(str_field(ev, "sender")?),
        event_type: event_type.to_owned(),
        content: ev.get("content").cloned().unwrap_or(Value::Object(Default::default())),
        origin_server_ts: Timestamp(ev.get("origin_server_ts").and_then(Value::as_u64).unwrap_or(0)),
        age_ms: ev.pointer("/unsigned/age").and_then(Value::as_u64),
        encrypted: megolm_sender_device.is_some(),
        sender_device: megolm_sender_device.flatten().map(DeviceId::from),
    })
}

/// A to-device event as a core [`ToDeviceEvent`], if its type is forwarded. `olm_sender_device`
/// is the Olm-authenticated sending device, `Some` exactly when the event arrived encrypted.
pub fn to_device_from_json(ev: &Value, olm_sender_device: Option<Option<&str>>) -> Option<ToDeviceEvent> {
    let event_type = str_field(ev, "type")?;
    if !is_forwarded_to_device_type(event_type) {
        return None;
    }
    Some(ToDeviceEvent {
        sender: UserId::from(str_field(ev, "sender")?),
        sender_device: olm_sender_device.flatten().map(DeviceId::from),
        event_type: event_type.to_owned(),
        content: ev.get("content").cloned().unwrap_or(Value::Object(Default::default())),
        encrypted: olm_sender_device.is_some(),
    })
}

/// An `m.room.member` state event as a core [`RoomMember`].
pub fn member_from_json(room_id: &str, ev: &Value) -> Option<RoomMember> {
    if str_field(ev, "type")? != "m.room.member" {
        return None;
    }
    let membership = match ev.pointer("/content/membership").and_then(Value::as_str)? {
        "join" => RoomMembership::Join,
        "invite" => RoomMembership::Invite,
        "leave" => RoomMembership::Leave,
        "ban" => RoomMembership::Ban,
        "knock" => RoomMembership::Knock,
        _ => return None,
    };
    Some(RoomMember {
        room_id: RoomId::from(room_id),
        user_id: UserId::from(str_field(ev, "state_key")?),
        membership,
    })
}

/// The room's `m.room.encryption` state event as a core state event, if `ev` is one.
pub fn room_encryption_from_json(room_id: &str, ev: &Value) -> Option<voip_core::StateEvent> {
    if str_field(ev, "type")? != "m.room.encryption" || !str_field(ev, "state_key")?.is_empty() {
        return None;
    }
    Some(voip_core::StateEvent {
        room_id: RoomId::from(room_id),
        event_id: str_field(ev, "event_id").map(str::to_owned),
        sender: UserId::from(str_field(ev, "sender")?),
        event_type: "m.room.encryption".to_owned(),
        state_key: String::new(),
        content: ev.get("content").cloned().unwrap_or(Value::Object(Default::default())),
        origin_server_ts: Timestamp(ev.get("origin_server_ts").and_then(Value::as_u64).unwrap_or(0)),
    })
}

/// A group-call membership state event, if `ev` is one.
pub fn call_member_from_json(room_id: &str, ev: &Value) -> Option<CallMemberState> {
    let event_type = str_field(ev, "type")?;
    if !CALL_MEMBER_TYPES.contains(&event_type) {
        return None;
    }
    Some(CallMemberState {
        room_id: RoomId::from(room_id),
        event_type: event_type.to_owned(),
        state_key: str_field(ev, "state_key")?.to_owned(),
        sender: UserId::from(str_field(ev, "sender")?),
        content: ev.get("content").cloned().unwrap_or(Value::Object(Default::default())),
        event_id: str_field(ev, "event_id").map(str::to_owned),
        origin_server_ts: Timestamp(ev.get("origin_server_ts").and_then(Value::as_u64).unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn room_call_event() {
        let ev = json!({"type": "m.call.invite", "sender": "@a:hs", "event_id": "$e", "origin_server_ts": 5,
                        "content": {"call_id": "c"}, "unsigned": {"age": 12}});
        let r = room_event_from_json("!r:hs", &ev, None).unwrap();
        assert!(!r.encrypted && r.sender_device.is_none());
        let enc = room_event_from_json("!r:hs", &ev, Some(Some("DEV"))).unwrap();
        assert!(enc.encrypted);
        assert_eq!(enc.sender_device, Some(DeviceId::from("DEV")));
        assert_eq!(r.event_type, "m.call.invite");
        assert_eq!(r.age_ms, Some(12));
        assert_eq!(r.origin_server_ts, Timestamp(5));
        assert!(room_event_from_json("!r:hs", &json!({"type": "m.room.message", "sender": "@a:hs"}), None)
            .is_none());
    }

    #[test]
    fn to_device_encryption_flag() {
        let ev = json!({"type": "m.call.hangup", "sender": "@a:hs", "content": {}});
        let clear = to_device_from_json(&ev, None).unwrap();
        assert!(!clear.encrypted && clear.sender_device.is_none());
        let enc = to_device_from_json(&ev, Some(Some("DEV"))).unwrap();
        assert!(enc.encrypted);
        assert_eq!(enc.sender_device, Some(DeviceId::from("DEV")));
        let keys = json!({"type": "io.element.call.encryption_keys", "sender": "@a:hs", "content": {}});
        assert!(to_device_from_json(&keys, None).is_some());
        assert!(to_device_from_json(&json!({"type": "m.room_key", "sender": "@a:hs"}), None).is_none());
    }

    #[test]
    fn room_encryption() {
        let ev = json!({"type": "m.room.encryption", "state_key": "", "sender": "@a:hs",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
        let s = room_encryption_from_json("!r:hs", &ev).unwrap();
        assert_eq!(s.content["algorithm"], "m.megolm.v1.aes-sha2");
        assert!(room_encryption_from_json(
            "!r:hs",
            &json!({"type": "m.room.name", "state_key": "", "sender": "@a:hs"})
        )
        .is_none());
    }

    #[test]
    fn members() {
        let ev = json!({"type": "m.room.member", "state_key": "@b:hs", "sender": "@b:hs", "content": {"membership": "leave"}});
        assert_eq!(member_from_json("!r:hs", &ev).unwrap().membership, RoomMembership::Leave);
        let cm = json!({"type": "com.famedly.call.member", "state_key": "@b:hs", "sender": "@b:hs", "content": {"memberships": []}});
        assert_eq!(call_member_from_json("!r:hs", &cm).unwrap().state_key, "@b:hs");
        assert!(is_media_key_type("io.element.call.encryption_keys"));
        // The types famedly's SDK really sends reach the core.
        assert!(is_forwarded_to_device_type("com.famedly.call.member.encryption_keys"));
        assert!(is_forwarded_to_device_type("com.famedly.call.member.encryption_keys_request"));
        assert!(is_forwarded_to_device_type("io.element.call.encryption_keys"));
        assert!(!is_forwarded_to_device_type("com.famedly.call.encryption_keys"));
        assert!(!is_media_key_type("m.call.invite"));
    }
}
