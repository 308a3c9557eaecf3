//! Media-key to-device events of SFU (LiveKit) group calls, in both dialects:
//!
//! - famedly: `com.famedly.call.member.encryption_keys`
//!   `{keys: [{index, key}], call_id, conf_id, device_id, room_id}` and
//!   `com.famedly.call.member.encryption_keys_request` `{conf_id, device_id, room_id}`;
//! - Element Call: `io.element.call.encryption_keys`
//!   `{keys: {index, key}, room_id, member: {id, claimed_device_id},
//!   session: {application, call_id, scope}, sent_ts}`, plus the legacy form
//!   `{keys: [{index, key}], device_id, call_id, sent_ts}` on input.
//!
//! Input is lenient (either `keys` shape in either event type, padded or unpadded, standard or
//! URL-safe base64, numeric strings for numbers); output is each dialect's exact shape with
//! standard padded base64.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fields::{Fields, MAX_ID_LEN};
use super::{WireError, WireErrorKind};
use crate::ids::{DeviceId, RoomId, Timestamp};

/// Event type names.
pub mod types {
    /// famedly: our media key(s), to-device.
    pub const FAMEDLY_KEYS: &str = "com.famedly.call.member.encryption_keys";
    /// famedly: "send me your key", to-device.
    pub const FAMEDLY_KEYS_REQUEST: &str = "com.famedly.call.member.encryption_keys_request";
    /// Element Call (MatrixRTC): our media key, to-device.
    pub const ELEMENT_CALL_KEYS: &str = "io.element.call.encryption_keys";
}

/// Shortest key accepted on input (Element Call's 128-bit keys).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted on input (famedly and MSC4143 use 32 bytes; HKDF takes any length).
pub const MAX_KEY_LEN: usize = 64;
/// Highest key index accepted: LiveKit carries the index in one byte of the frame trailer.
pub const MAX_KEY_INDEX: u32 = 255;
/// Most keys read from one event.
pub const MAX_KEYS_PER_EVENT: usize = 256;

/// One media key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyEntry {
    /// Ring slot (`0..=255`).
    pub index: u32,
    /// The raw key bytes.
    pub key: Vec<u8>,
}

/// A received key event of either dialect, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeysContent {
    /// `room_id` (absent in the legacy Element Call form).
    pub room_id: Option<RoomId>,
    /// famedly `conf_id`/`call_id`, Element Call `session.call_id`/`call_id` (`""` when absent).
    pub call_id: String,
    /// Element Call `session.application`, when present (`m.call` for calls).
    pub application: Option<String>,
    /// The device the sender claims to be (`device_id`, `member.claimed_device_id`).
    pub claimed_device: DeviceId,
    /// Element Call `member.id`, when present.
    pub member_id: Option<String>,
    /// `sent_ts`, when present (Element Call).
    pub sent_ts: Option<Timestamp>,
    /// The keys (at least one).
    pub keys: Vec<KeyEntry>,
}

/// A received famedly key request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyRequestContent {
    /// `room_id`.
    pub room_id: RoomId,
    /// `conf_id`: the group call id.
    pub call_id: String,
    /// The device the requester claims to be (`device_id`).
    pub claimed_device: DeviceId,
}

/// A parsed key-related to-device event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyEvent {
    /// Keys (either dialect).
    Keys(KeysContent),
    /// A famedly key request.
    Request(KeyRequestContent),
}

/// Whether `event_type` is one of the key or key-request types.
pub fn is_key_event_type(event_type: &str) -> bool {
    matches!(event_type, types::FAMEDLY_KEYS | types::FAMEDLY_KEYS_REQUEST | types::ELEMENT_CALL_KEYS)
}

/// Parses a key or key-request event. Unknown event types give a [`WireErrorKind::Invalid`]
/// error on the empty field.
pub fn parse(event_type: &str, content: &Value) -> Result<KeyEvent, WireError> {
    let f = Fields::new(event_type, content)?;
    match event_type {
        types::FAMEDLY_KEYS => {
            let room_id = RoomId::from(f.id_req("room_id")?);
            let call_id = famedly_call_id(&f)?;
            let claimed_device = DeviceId::from(f.id_req("device_id")?);
            let keys = parse_keys(&f)?;
            Ok(KeyEvent::Keys(KeysContent {
                room_id: Some(room_id),
                call_id,
                application: None,
                claimed_device,
                member_id: None,
                sent_ts: f.u64_opt("sent_ts")?.map(Timestamp),
                keys,
            }))
        }
        types::FAMEDLY_KEYS_REQUEST => Ok(KeyEvent::Request(KeyRequestContent {
            room_id: RoomId::from(f.id_req("room_id")?),
            call_id: famedly_call_id(&f)?,
            claimed_device: DeviceId::from(f.id_req("device_id")?),
        })),
        types::ELEMENT_CALL_KEYS => {
            let room_id = f.id_opt("room_id")?.map(RoomId::from);
            let member = f.nested("member")?;
            let session = f.nested("session")?;
            let claimed = match &member {
                Some(m) => m.id_opt("claimed_device_id")?,
                None => None,
            };
            let claimed_device = match claimed {
                Some(d) => DeviceId::from(d),
                None => DeviceId::from(
                    f.id_opt("device_id")?
                        .ok_or_else(|| f.err("member.claimed_device_id", WireErrorKind::Missing))?,
                ),
            };
            let member_id = match &member {
                Some(m) => m.id_opt("id")?.map(str::to_owned),
                None => None,
            };
            let application = match &session {
                Some(s) => s.id_opt("application")?.map(str::to_owned),
                None => None,
            };
            let session_call = match &session {
                Some(s) => s.str_opt("call_id", MAX_ID_LEN)?,
                None => None,
            };
            let call_id = match session_call {
                Some(c) => c.to_owned(),
                None => f.str_opt("call_id", MAX_ID_LEN)?.unwrap_or("").to_owned(),
            };
            let keys = parse_keys(&f)?;
            Ok(KeyEvent::Keys(KeysContent {
                room_id,
                call_id,
                application,
                claimed_device,
                member_id,
                sent_ts: f.u64_opt("sent_ts")?.map(Timestamp),
                keys,
            }))
        }
        _ => Err(f.err("", WireErrorKind::Invalid)),
    }
}

/// famedly names the group call `conf_id` (and repeats it as `call_id` on key events).
fn famedly_call_id(f: &Fields<'_>) -> Result<String, WireError> {
    match f.str_opt("conf_id", MAX_ID_LEN)? {
        Some(c) => Ok(c.to_owned()),
        None => f
            .str_opt("call_id", MAX_ID_LEN)?
            .map(str::to_owned)
            .ok_or_else(|| f.err("conf_id", WireErrorKind::Missing)),
    }
}

/// `keys`: one `{index, key}` object or a non-empty array of them.
fn parse_keys(f: &Fields<'_>) -> Result<Vec<KeyEntry>, WireError> {
    match f.get("keys") {
        None => Err(f.err("keys", WireErrorKind::Missing)),
        Some(Value::Object(_)) => {
            let k = f.nested("keys")?.ok_or_else(|| f.err("keys", WireErrorKind::Missing))?;
            Ok(vec![parse_entry(&k)?])
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(f.err("keys", WireErrorKind::Invalid));
            }
            if items.len() > MAX_KEYS_PER_EVENT {
                return Err(f.err("keys", WireErrorKind::TooLong));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("keys.{i}");
                    let k = Fields::new(f.event_type, item)
                        .map_err(|_| f.err(&path, WireErrorKind::WrongType))?;
                    parse_entry(&k).map_err(|e| WireError { field: format!("{path}.{}", e.field), ..e })
                })
                .collect()
        }
        Some(_) => Err(f.err("keys", WireErrorKind::WrongType)),
    }
}

fn parse_entry(k: &Fields<'_>) -> Result<KeyEntry, WireError> {
    let index = k.u64_opt("index")?.ok_or_else(|| k.err("index", WireErrorKind::Missing))?;
    let index = u32::try_from(index)
        .ok()
        .filter(|i| *i <= MAX_KEY_INDEX)
        .ok_or_else(|| k.err("index", WireErrorKind::Invalid))?;
    // Base64 of MAX_KEY_LEN bytes is at most 88 characters; allow some whitespace slack.
    let encoded = k.str_req("key", 4 * MAX_KEY_LEN)?;
    let key = decode_key(encoded).ok_or_else(|| k.err("key", WireErrorKind::Invalid))?;
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        return Err(k.err("key", WireErrorKind::Invalid));
    }
    Ok(KeyEntry { index, key })
}

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD_NO_PAD: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, GeneralPurposeConfig::new().with_encode_padding(false));

/// Decodes base64 leniently: padded or not, standard or URL-safe alphabet, surrounding
/// whitespace ignored.
pub fn decode_key(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    STANDARD_LENIENT.decode(s).or_else(|_| URL_SAFE_LENIENT.decode(s)).ok()
}

/// Encodes a key as standard padded base64 (what both dialects write, and what
/// [`crate::Event::EncryptionKey`] carries).
pub fn encode_key(key: &[u8]) -> String {
    STANDARD.encode(key)
}

/// The famedly key event content for one or more of our keys.
pub fn famedly_keys_content(
    room_id: &RoomId,
    call_id: &str,
    device_id: &DeviceId,
    keys: &[KeyEntry],
) -> Value {
    let keys: Vec<Value> =
        keys.iter().map(|k| json!({"index": k.index, "key": encode_key(&k.key)})).collect();
    json!({
        "keys": keys,
        "call_id": call_id,
        "conf_id": call_id,
        "device_id": device_id,
        "room_id": room_id,
    })
}

/// The famedly key request content.
pub fn famedly_request_content(room_id: &RoomId, call_id: &str, device_id: &DeviceId) -> Value {
    json!({"conf_id": call_id, "device_id": device_id, "room_id": room_id})
}

/// The Element Call key event content (object form: one key per event).
pub fn element_call_keys_content(
    room_id: &RoomId,
    call_id: &str,
    device_id: &DeviceId,
    member_id: &str,
    key: &KeyEntry,
    sent_ts: Timestamp,
) -> Value {
    json!({
        "keys": {"index": key.index, "key": encode_key(&key.key)},
        "room_id": room_id,
        "member": {"id": member_id, "claimed_device_id": device_id},
        "session": {"application": "m.call", "call_id": call_id, "scope": "m.room"},
        "sent_ts": sent_ts,
    })
}

/// LiveKit participant identity in MatrixRTC sticky-event mode:
/// unpadded base64 of SHA-256 over the JSON array `[user_id, device_id, member_id]`.
pub fn hashed_livekit_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    // serde_json escapes exactly as JSON.stringify does for strings (no spaces, `\"`, `\\`,
    // short escapes and lowercase `\u00xx` for control characters, non-ASCII kept verbatim).
    let json = Value::Array(vec![json!(user_id), json!(device_id), json!(member_id)]).to_string();
    STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key16() -> Vec<u8> {
        (0u8..16).collect()
    }

    #[test]
    fn hashed_identity_test_vector() {
        assert_eq!(
            hashed_livekit_identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
    }

    #[test]
    fn element_call_object_form_round_trips() {
        let entry = KeyEntry { index: 7, key: key16() };
        let c = element_call_keys_content(
            &RoomId::from("!r:x"),
            "",
            &DeviceId::from("DEV"),
            "@a:x:DEV",
            &entry,
            Timestamp(1234),
        );
        assert_eq!(c["keys"]["key"], "AAECAwQFBgcICQoLDA0ODw==");
        assert_eq!(c["session"]["application"], "m.call");
        let KeyEvent::Keys(k) = parse(types::ELEMENT_CALL_KEYS, &c).unwrap() else { panic!("keys") };
        assert_eq!(k.room_id, Some(RoomId::from("!r:x")));
        assert_eq!(k.call_id, "");
        assert_eq!(k.application.as_deref(), Some("m.call"));
        assert_eq!(k.claimed_device, DeviceId::from("DEV"));
        assert_eq!(k.member_id.as_deref(), Some("@a:x:DEV"));
        assert_eq!(k.sent_ts, Some(Timestamp(1234)));
        assert_eq!(k.keys, vec![entry]);
    }

    #[test]
    fn element_call_legacy_array_form_parses() {
        let c = json!({"keys": [{"index": 1, "key": "AAECAwQFBgcICQoLDA0ODw"},
                                {"index": "2", "key": "AAECAwQFBgcICQoLDA0ODw=="}],
                       "device_id": "OLD", "call_id": "", "sent_ts": 5});
        let KeyEvent::Keys(k) = parse(types::ELEMENT_CALL_KEYS, &c).unwrap() else { panic!("keys") };
        assert_eq!(k.room_id, None);
        assert_eq!(k.claimed_device, DeviceId::from("OLD"));
        assert_eq!(k.keys.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(k.keys.iter().all(|e| e.key == key16()));
    }

    #[test]
    fn famedly_keys_and_request_round_trip() {
        let entry = KeyEntry { index: 3, key: vec![0xfb; 32] };
        let c = famedly_keys_content(
            &RoomId::from("!r:x"),
            "conf",
            &DeviceId::from("D"),
            std::slice::from_ref(&entry),
        );
        assert_eq!(c["conf_id"], "conf");
        assert_eq!(c["call_id"], "conf");
        let KeyEvent::Keys(k) = parse(types::FAMEDLY_KEYS, &c).unwrap() else { panic!("keys") };
        assert_eq!((k.call_id.as_str(), k.keys.clone()), ("conf", vec![entry]));
        let r = famedly_request_content(&RoomId::from("!r:x"), "conf", &DeviceId::from("D"));
        assert_eq!(
            parse(types::FAMEDLY_KEYS_REQUEST, &r).unwrap(),
            KeyEvent::Request(KeyRequestContent {
                room_id: RoomId::from("!r:x"),
                call_id: "conf".into(),
                claimed_device: DeviceId::from("D"),
            })
        );
    }

    #[test]
    fn base64_is_decoded_leniently() {
        let bytes = vec![0xfb, 0xff, 0xfe, 0x00, 0x01];
        for s in ["+//+AAE=", "+//+AAE", "-__-AAE=", "-__-AAE", " +//+AAE= "] {
            assert_eq!(decode_key(s), Some(bytes.clone()), "{s}");
        }
        assert_eq!(decode_key("not base64!"), None);
    }

    #[test]
    fn malformed_contents_are_wire_errors() {
        let cases = [
            (types::ELEMENT_CALL_KEYS, json!([])),
            (types::ELEMENT_CALL_KEYS, json!({"room_id": "!r", "member": {"claimed_device_id": "D"}})),
            (
                types::ELEMENT_CALL_KEYS,
                json!({"keys": {"index": 0, "key": "AAAA"}, "member": {"claimed_device_id": "D"}}),
            ),
            (
                types::ELEMENT_CALL_KEYS,
                json!({"keys": {"index": 256, "key": "AAECAwQFBgcICQoLDA0ODw"}, "member": {"claimed_device_id": "D"}}),
            ),
            (
                types::ELEMENT_CALL_KEYS,
                json!({"keys": {"index": "x", "key": "AAECAwQFBgcICQoLDA0ODw"}, "member": {"claimed_device_id": "D"}}),
            ),
            (
                types::ELEMENT_CALL_KEYS,
                json!({"keys": {"index": 1, "key": "AAECAwQFBgcICQoLDA0ODw"}, "room_id": "!r"}),
            ),
            (types::ELEMENT_CALL_KEYS, json!({"keys": [], "device_id": "D"})),
            (types::ELEMENT_CALL_KEYS, json!({"keys": [3], "device_id": "D"})),
            (types::ELEMENT_CALL_KEYS, json!({"keys": "k", "device_id": "D"})),
            (
                types::FAMEDLY_KEYS,
                json!({"keys": [{"index": 0, "key": "AAECAwQFBgcICQoLDA0ODw"}], "device_id": "D", "conf_id": "c"}),
            ),
            (
                types::FAMEDLY_KEYS,
                json!({"keys": [{"index": 0, "key": "AAECAwQFBgcICQoLDA0ODw"}], "room_id": "!r", "device_id": "D"}),
            ),
            (types::FAMEDLY_KEYS_REQUEST, json!({"room_id": "!r", "conf_id": "c"})),
            ("m.other", json!({})),
        ];
        for (t, c) in cases {
            assert!(parse(t, &c).is_err(), "{t} {c}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            "[A-Za-z0-9+/=_!:@-]{0,30}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let key = prop_oneof![
                Just("keys".to_owned()),
                Just("index".to_owned()),
                Just("key".to_owned()),
                Just("room_id".to_owned()),
                Just("member".to_owned()),
                Just("claimed_device_id".to_owned()),
                Just("device_id".to_owned()),
                Just("session".to_owned()),
                Just("call_id".to_owned()),
                Just("conf_id".to_owned()),
                Just("sent_ts".to_owned()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(content in arb_json()) {
            for t in [types::FAMEDLY_KEYS, types::FAMEDLY_KEYS_REQUEST, types::ELEMENT_CALL_KEYS] {
                if let Ok(KeyEvent::Keys(k)) = parse(t, &content) {
                    prop_assert!(!k.keys.is_empty());
                    prop_assert!(k.keys.iter().all(|e| e.index <= MAX_KEY_INDEX
                        && (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&e.key.len())));
                }
            }
        }
    }
}
