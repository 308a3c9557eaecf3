//! The two key transports (famedly, Element Call): their defaults and their outgoing contents.

use serde_json::Value;

use crate::ids::{GroupCallId, Participant, Timestamp};
use crate::wire::keys::{self as wire, types, KeyEntry};

/// Which dialect carries the media keys of a group call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyTransport {
    /// `com.famedly.call.member.encryption_keys` (+ `…_request`), famedly's dart SDK.
    Famedly,
    /// `io.element.call.encryption_keys` to-device, object form (Element Call, js-sdk).
    ElementCall,
}

/// Sizes and timings of the key manager. Build with [`KeyConfig::for_transport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyConfig {
    /// Bytes of each key we make. famedly 32, Element Call 16. Clamped to 16..=64.
    pub(crate) key_len: usize,
    /// Index ring: our indices run `0, 1, …, ring_size - 1, 0, …`. famedly 16, Element Call
    /// 256. Clamped to 1..=256 (LiveKit carries the index in one byte).
    pub(crate) ring_size: u32,
    /// A new key of ours (other than the first) is used this long after it is sent, so that it
    /// arrives first. famedly 4 000, Element Call 1 000.
    pub(crate) use_delay_ms: u64,
    /// On a join, when our latest key is younger than this, the joiners get that key instead of
    /// everyone getting a fresh one. famedly 8 000 (`makeKeyOnJoinDelay`), Element Call 10 000
    /// (`keyRotationGracePeriodMs`).
    pub(crate) join_grace_ms: u64,
    /// After a leave, the fresh key is made this long later (further leaves restart the wait,
    /// so several leaves make one key). famedly 4 000 (`makeKeyOnLeaveDelay`), Element Call 0.
    pub(crate) leave_delay_ms: u64,
    /// A key from a device that is not (yet) a member is kept this long in case its membership
    /// arrives. Both 60 000.
    pub(crate) pending_key_ttl_ms: u64,
    /// Most such keys kept at once (the oldest is dropped first). Both 64.
    pub(crate) max_pending_keys: usize,
    /// An Element Call key whose `member.id` differs from the sender device's current
    /// membership id is held back (buffered) as a key of another membership session, instead
    /// of being applied to this one. Default true for both (famedly keys carry no member id).
    pub(crate) bind_member_id: bool,
}

impl KeyConfig {
    /// The defaults of a dialect (see each field).
    pub(crate) fn for_transport(t: KeyTransport) -> Self {
        match t {
            KeyTransport::Famedly => KeyConfig {
                key_len: 32,
                ring_size: 16,
                use_delay_ms: 4_000,
                join_grace_ms: 8_000,
                leave_delay_ms: 4_000,
                pending_key_ttl_ms: 60_000,
                max_pending_keys: 64,
                bind_member_id: true,
            },
            KeyTransport::ElementCall => KeyConfig {
                key_len: 16,
                ring_size: 256,
                use_delay_ms: 1_000,
                join_grace_ms: 10_000,
                leave_delay_ms: 0,
                pending_key_ttl_ms: 60_000,
                max_pending_keys: 64,
                bind_member_id: true,
            },
        }
    }

    /// The configuration with its sizes brought into range.
    pub(crate) fn sanitized(mut self) -> Self {
        self.key_len = self.key_len.clamp(wire::MIN_KEY_LEN, wire::MAX_KEY_LEN);
        self.ring_size = self.ring_size.clamp(1, wire::MAX_KEY_INDEX + 1);
        self.max_pending_keys = self.max_pending_keys.max(1);
        self
    }
}

impl KeyTransport {
    /// The event type our keys go out as.
    pub(crate) fn keys_event_type(self) -> &'static str {
        match self {
            KeyTransport::Famedly => types::FAMEDLY_KEYS,
            KeyTransport::ElementCall => types::ELEMENT_CALL_KEYS,
        }
    }

    /// The contents that carry `keys`: famedly puts them all in one event, Element Call's
    /// object form carries one key per event (so one content per key).
    pub(crate) fn keys_contents(
        self,
        group: &GroupCallId,
        local: &Participant,
        keys: &[KeyEntry],
        now: Timestamp,
    ) -> Vec<Value> {
        match self {
            KeyTransport::Famedly => {
                vec![wire::famedly_keys_content(&group.room_id, &group.call_id, &local.device_id, keys)]
            }
            KeyTransport::ElementCall => keys
                .iter()
                .map(|k| {
                    wire::element_call_keys_content(
                        &group.room_id,
                        &group.call_id,
                        &local.device_id,
                        &local.member_id,
                        k,
                        now,
                    )
                })
                .collect(),
        }
    }

    /// The key-request content, for the transports that have one (famedly).
    pub(crate) fn request_content(self, group: &GroupCallId, local: &Participant) -> Option<Value> {
        match self {
            KeyTransport::Famedly => {
                Some(wire::famedly_request_content(&group.room_id, &group.call_id, &local.device_id))
            }
            KeyTransport::ElementCall => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, RoomId, UserId};

    fn local() -> Participant {
        Participant { user_id: UserId::from("@me:x"), device_id: DeviceId::from("ME"), member_id: "m".into() }
    }

    #[test]
    fn defaults_per_dialect() {
        let f = KeyConfig::for_transport(KeyTransport::Famedly);
        assert_eq!(
            (f.key_len, f.ring_size, f.use_delay_ms, f.join_grace_ms, f.leave_delay_ms),
            (32, 16, 4000, 8000, 4000)
        );
        let e = KeyConfig::for_transport(KeyTransport::ElementCall);
        assert_eq!(
            (e.key_len, e.ring_size, e.use_delay_ms, e.join_grace_ms, e.leave_delay_ms),
            (16, 256, 1000, 10000, 0)
        );
        let wild = KeyConfig { key_len: 1, ring_size: 1000, max_pending_keys: 0, ..e }.sanitized();
        assert_eq!((wild.key_len, wild.ring_size, wild.max_pending_keys), (16, 256, 1));
    }

    #[test]
    fn contents_per_dialect() {
        let g = GroupCallId { room_id: RoomId::from("!r"), call_id: "c".into() };
        let keys = [KeyEntry { index: 1, key: vec![1; 16] }, KeyEntry { index: 2, key: vec![2; 16] }];
        let f = KeyTransport::Famedly.keys_contents(&g, &local(), &keys, Timestamp(9));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["keys"].as_array().map(Vec::len), Some(2));
        let e = KeyTransport::ElementCall.keys_contents(&g, &local(), &keys, Timestamp(9));
        assert_eq!(e.len(), 2);
        assert_eq!(e[1]["keys"]["index"], 2);
        assert_eq!(e[1]["member"]["id"], "m");
        assert_eq!(e[1]["sent_ts"], 9);
        assert_eq!(KeyTransport::ElementCall.keys_event_type(), types::ELEMENT_CALL_KEYS);
        assert!(KeyTransport::ElementCall.request_content(&g, &local()).is_none());
        let r = KeyTransport::Famedly.request_content(&g, &local()).unwrap_or_default();
        assert_eq!(r["conf_id"], "c");
    }
}
