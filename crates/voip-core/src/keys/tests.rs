//! Unit tests of the key manager (fixture-style transcripts are in `fixtures/keys-*.json`).

use super::*;
use crate::config::Config;
use crate::ids::LocalDevice;
use crate::output::{Output, SendKind, ToDeviceMessage};
use crate::rng::Rng;
use crate::sends::SendTable;
use proptest::prelude::*;
use serde_json::json;

const ROOM: &str = "!room:x";

struct Harness {
    now: Timestamp,
    config: Config,
    local: LocalDevice,
    rng: Rng,
    out: VecDeque<Output>,
    sends: SendTable,
}

impl Harness {
    fn new() -> Self {
        Harness {
            now: Timestamp(1_000_000),
            config: Config::default(),
            local: LocalDevice::new("@me:x", "ME"),
            rng: Rng::from_seed([7; 32]),
            out: VecDeque::new(),
            sends: SendTable::default(),
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            now: self.now,
            config: &self.config,
            local: &self.local,
            rng: &mut self.rng,
            out: &mut self.out,
            sends: &mut self.sends,
        };
        f(&mut ctx)
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus(ms);
    }

    /// Drains the outputs: (to-device sends, encryption-key events).
    fn drain(&mut self) -> (Vec<Sent>, Vec<Key>) {
        let mut sends = Vec::new();
        let mut keys = Vec::new();
        for o in self.out.drain(..) {
            match o {
                Output::Send(r) => match r.kind {
                    SendKind::ToDevice { event_type, room_id, messages, encryption } => {
                        assert_eq!(encryption, ToDeviceEncryption::Required);
                        assert_eq!(room_id, Some(RoomId::from(ROOM)));
                        sends.push(Sent { event_type, messages });
                    }
                    other => panic!("unexpected send {other:?}"),
                },
                Output::Event(Event::EncryptionKey { group, participant, local, index, key }) => {
                    assert_eq!(group, group_id());
                    keys.push(Key { participant, local, index, key });
                }
                other => panic!("unexpected output {other:?}"),
            }
        }
        (sends, keys)
    }
}

#[derive(Debug)]
struct Sent {
    event_type: String,
    messages: Vec<ToDeviceMessage>,
}

impl Sent {
    fn targets(&self) -> Vec<String> {
        self.messages.iter().map(|m| m.device_id.to_string()).collect()
    }
}

#[derive(Debug)]
struct Key {
    participant: Participant,
    local: bool,
    index: u32,
    key: String,
}

fn group_id() -> GroupCallId {
    GroupCallId::room_call(RoomId::from(ROOM))
}

fn member(n: usize) -> Participant {
    let device = format!("D{n:03}");
    Participant {
        user_id: UserId::from(format!("@u{n}:x")),
        device_id: DeviceId::from(device.as_str()),
        member_id: format!("@u{n}:x:{device}"),
    }
}

fn me() -> Participant {
    Participant {
        user_id: UserId::from("@me:x"),
        device_id: DeviceId::from("ME"),
        member_id: "@me:x:ME".into(),
    }
}

fn set(ns: &[usize]) -> BTreeSet<Participant> {
    ns.iter().map(|n| member(*n)).collect()
}

fn manager(t: KeyTransport) -> KeyManager {
    KeyManager::new(group_id(), t, KeyConfig::for_transport(t), me())
}

fn key_of(sent: &Sent) -> (u32, String) {
    let c = &sent.messages[0].content;
    let k = if c["keys"].is_array() { &c["keys"][0] } else { &c["keys"] };
    (k["index"].as_u64().unwrap_or(999) as u32, k["key"].as_str().unwrap_or("").to_owned())
}

fn ec_key(p: &Participant, index: u32, byte: u8, sent_ts: u64) -> Value {
    wire::element_call_keys_content(
        &RoomId::from(ROOM),
        "",
        &p.device_id,
        &p.member_id,
        &KeyEntry { index, key: vec![byte; 16] },
        Timestamp(sent_ts),
    )
}

fn receive(h: &mut Harness, km: &mut KeyManager, from: &Participant, t: &str, c: &Value) -> KeyDisposition {
    h.with(|ctx| km.handle_to_device(ctx, &from.user_id, Some(&from.device_id), true, t, c))
        .unwrap_or_else(|e| panic!("wire error {e}"))
}

/// A join with 100 members: the first key is used at once and sent in ONE batch.
#[test]
fn first_key_on_join_is_used_at_once_and_sent_to_all_in_one_batch() {
    for t in [KeyTransport::ElementCall, KeyTransport::Famedly] {
        let mut h = Harness::new();
        let mut km = manager(t);
        let all: Vec<usize> = (0..100).collect();
        h.with(|ctx| km.set_members(ctx, &set(&all)));
        let (sends, keys) = h.drain();
        assert_eq!(sends.len(), 1, "{t:?}: one to-device batch");
        assert_eq!(sends[0].event_type, t.keys_event_type());
        assert_eq!(sends[0].messages.len(), 100);
        assert!(!sends[0].targets().contains(&"ME".to_owned()));
        assert_eq!(keys.len(), 1);
        assert!(keys[0].local);
        assert_eq!(keys[0].participant, me());
        assert_eq!(keys[0].index, 0);
        assert_eq!(key_of(&sends[0]), (0, keys[0].key.clone()));
        let len = wire::decode_key(&keys[0].key).map(|k| k.len());
        assert_eq!(len, Some(if t == KeyTransport::Famedly { 32 } else { 16 }));
        assert_eq!(km.local_key().map(|k| k.0), Some(0));
        assert_eq!(km.next_timer(), None);
    }
}

/// The benchmark case: a rotation for 100 members is ONE to-device send of 100 messages.
#[test]
fn a_rotation_for_100_members_is_one_batch() {
    for t in [KeyTransport::ElementCall, KeyTransport::Famedly] {
        let mut h = Harness::new();
        let mut km = manager(t);
        let all: Vec<usize> = (0..101).collect();
        h.with(|ctx| km.set_members(ctx, &set(&all)));
        h.out.clear();
        h.with(|ctx| km.set_members(ctx, &set(&all[1..])));
        h.advance(KeyConfig::for_transport(t).leave_delay_ms);
        h.with(|ctx| km.handle_timeout(ctx));
        let sends: Vec<_> = h
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Send(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 1, "{t:?}");
        assert!(sends[0].txn_id.starts_with("voip.keys."));
        let SendKind::ToDevice { messages, .. } = &sends[0].kind else { panic!("to-device") };
        assert_eq!(messages.len(), 100);
        assert!(messages.iter().all(|m| m.device_id.as_str() != "D000"));
    }
}

#[test]
fn a_join_with_nobody_else_sends_nothing_but_uses_the_key() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &BTreeSet::from([me()])));
    let (sends, keys) = h.drain();
    assert!(sends.is_empty());
    assert_eq!(keys.len(), 1);
}

/// Element Call: a leave rotates at once, to the remaining members only, used 1 s later.
#[test]
fn a_leave_rotates_to_the_remaining_members_and_uses_the_key_after_the_delay() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2, 3])));
    h.drain();
    h.advance(60_000);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 3])));
    let (sends, keys) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D001", "D003"], "the departed device is not addressed");
    assert!(keys.is_empty(), "not used before the delay");
    let (index, key) = key_of(&sends[0]);
    assert_eq!(index, 1);
    assert_eq!(km.next_timer(), Some(h.now.plus(1_000)));
    h.advance(999);
    h.with(|ctx| km.handle_timeout(ctx));
    assert!(h.drain().1.is_empty());
    h.advance(1);
    h.with(|ctx| km.handle_timeout(ctx));
    let (sends, keys) = h.drain();
    assert!(sends.is_empty());
    assert_eq!(keys.len(), 1);
    assert!(keys[0].local);
    assert_eq!((keys[0].index, keys[0].key.clone()), (1, key));
    assert_eq!(km.next_timer(), None);
    // The departed device asks for our key: refused, nothing sent.
    let req = json!({"conf_id": "", "device_id": "D002", "room_id": ROOM});
    let d = receive(&mut h, &mut km, &member(2), types::FAMEDLY_KEYS_REQUEST, &req);
    assert_eq!(d, KeyDisposition::Ignored(KeyIgnored::NotMember));
    assert!(h.drain().0.is_empty());
}

/// famedly: leaves are debounced 4 s into one fresh key, used 4 s after it is sent.
#[test]
fn famedly_leaves_are_debounced_into_one_rotation() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::Famedly);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2, 3])));
    h.drain();
    h.with(|ctx| km.set_members(ctx, &set(&[1, 3])));
    h.advance(1_000);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    assert!(h.drain().0.is_empty(), "debounced");
    assert_eq!(km.next_timer(), Some(h.now.plus(4_000)));
    h.advance(4_000);
    h.with(|ctx| km.handle_timeout(ctx));
    let (sends, keys) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D001"]);
    assert_eq!(key_of(&sends[0]).0, 1);
    assert!(keys.is_empty());
    h.advance(4_000);
    h.with(|ctx| km.handle_timeout(ctx));
    let (_, keys) = h.drain();
    assert_eq!(keys.iter().map(|k| (k.local, k.index)).collect::<Vec<_>>(), vec![(true, 1)]);
}

#[test]
fn ring_behind_is_less_than_half_a_ring_back() {
    assert!(ring_behind(5, 4, 16));
    assert!(ring_behind(0, 14, 16), "around the wrap");
    assert!(ring_behind(6, 15, 16), "7 back");
    assert!(!ring_behind(6, 14, 16), "8 back: half a ring is ahead");
    assert!(!ring_behind(4, 4, 16), "the same index (the ring wrapped) is not behind");
    assert!(!ring_behind(4, 5, 16));
    assert!(ring_behind(0, 255, 256) && !ring_behind(0, 128, 256));
    assert!(!ring_behind(0, 0, 0), "a zero ring never panics");
}

#[test]
fn famedly_index_ring_wraps_at_16() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::Famedly);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    h.drain();
    let mut indices = Vec::new();
    for i in 0..17 {
        // Alternate a leave and a join of member 2, each past the grace period.
        h.advance(20_000);
        let s = if i % 2 == 0 { set(&[1]) } else { set(&[1, 2]) };
        h.with(|ctx| km.set_members(ctx, &s));
        h.advance(4_000);
        h.with(|ctx| km.handle_timeout(ctx));
        h.advance(4_000);
        h.with(|ctx| km.handle_timeout(ctx));
        indices.extend(h.drain().0.iter().map(|s| key_of(s).0));
    }
    assert_eq!(indices.len(), 17);
    assert_eq!(indices[14..], [15, 0, 1]);
}

#[test]
fn a_join_within_the_grace_period_gets_the_current_key_only_then_a_fresh_key_for_all() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    let (first, _) = h.drain();
    h.advance(9_999);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    let (sends, keys) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D002"], "the joiner only");
    assert_eq!(key_of(&sends[0]), key_of(&first[0]), "the current key");
    assert!(keys.is_empty());
    h.advance(1);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2, 3])));
    let (sends, keys) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D001", "D002", "D003"], "a fresh key for everyone");
    assert_eq!(key_of(&sends[0]).0, 1);
    assert!(keys.is_empty());
    h.advance(1_000);
    h.with(|ctx| km.handle_timeout(ctx));
    assert_eq!(h.drain().1.iter().map(|k| k.index).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn a_changed_member_id_is_a_leave_and_a_join() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    h.drain();
    receive(&mut h, &mut km, &member(2), types::ELEMENT_CALL_KEYS, &ec_key(&member(2), 0, 9, 1));
    h.drain();
    let mut rejoined = member(2);
    rejoined.member_id = "new-session".into();
    h.with(|ctx| km.set_members(ctx, &BTreeSet::from([member(1), rejoined.clone()])));
    let (sends, _) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D001", "D002"], "fresh key to all");
    assert_eq!(km.current_keys().len(), 0, "the old session's keys are forgotten");
    // A late key of the old session is held back, not applied to the new one.
    let d = receive(&mut h, &mut km, &member(2), types::ELEMENT_CALL_KEYS, &ec_key(&member(2), 1, 8, 2));
    assert_eq!(d, KeyDisposition::Buffered);
    let d = receive(&mut h, &mut km, &rejoined, types::ELEMENT_CALL_KEYS, &ec_key(&rejoined, 0, 7, 3));
    assert_eq!(d, KeyDisposition::Applied);
    assert_eq!(km.current_keys(), vec![(rejoined, 0, vec![7; 16])]);
}

/// Member changes reported as diffs (what a group call does) end where the whole member
/// list would: the same sends, to the same devices, and the same members held. A new
/// session reported only as a join still counts as that device's leave.
#[test]
fn diffs_end_where_whole_member_lists_end() {
    for t in [KeyTransport::ElementCall, KeyTransport::Famedly] {
        let (mut h1, mut h2) = (Harness::new(), Harness::new());
        let (mut whole, mut diff) = (manager(t), manager(t));
        let all: Vec<usize> = (0..50).collect();
        h1.with(|ctx| whole.set_members(ctx, &set(&all)));
        h2.with(|ctx| diff.update_members(ctx, &set(&all), &[]));
        let mut rejoined = member(7);
        rejoined.member_id = "new-session".into();
        let mut now: BTreeSet<Participant> = set(&all);
        // 3 leaves, 60 joins, 7 changes its session (reported as a join only).
        let steps: Vec<(Vec<Participant>, Vec<Participant>)> = vec![
            (vec![], vec![member(3)]),
            (vec![member(60)], vec![]),
            (vec![rejoined.clone()], vec![]),
            (vec![member(61), me()], vec![member(4), member(5), member(99)]),
        ];
        for (i, (joined, left)) in steps.into_iter().enumerate() {
            for p in &left {
                now.remove(p);
            }
            now.retain(|p| !joined.iter().any(|j| j.user_id == p.user_id && j.device_id == p.device_id));
            now.extend(joined.iter().cloned());
            h1.advance(30_000);
            h2.advance(30_000);
            h1.with(|ctx| whole.set_members(ctx, &now));
            h2.with(|ctx| diff.update_members(ctx, &joined, &left));
            let (s1, _) = h1.drain();
            let (s2, _) = h2.drain();
            let targets = |s: &[Sent]| s.iter().map(Sent::targets).collect::<Vec<_>>();
            assert_eq!(targets(&s1), targets(&s2), "{t:?} step {i}");
            assert_eq!(whole.members, diff.members, "{t:?} step {i}");
            h1.advance(10_000);
            h2.advance(10_000);
            h1.with(|ctx| whole.handle_timeout(ctx));
            h2.with(|ctx| diff.handle_timeout(ctx));
            assert_eq!(targets(&h1.drain().0), targets(&h2.drain().0), "{t:?} step {i}, timers");
        }
        assert_eq!(diff.members.get(&device_key(&rejoined)), Some(&rejoined));
        assert!(!diff.members.contains_key(&device_key(&me())), "never ourselves");
        assert_eq!(diff.members.len(), 50 - 3 + 2, "{t:?}");
    }
}

#[test]
fn keys_from_members_become_encryption_key_events_with_the_right_identity() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    h.drain();
    let p = member(2);
    let d = receive(&mut h, &mut km, &p, types::ELEMENT_CALL_KEYS, &ec_key(&p, 5, 0xab, 10));
    assert_eq!(d, KeyDisposition::Applied);
    let (sends, keys) = h.drain();
    assert!(sends.is_empty());
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].local);
    assert_eq!(keys[0].participant, p);
    assert_eq!(keys[0].participant.livekit_identity(), "@u2:x:D002");
    assert_eq!(keys[0].index, 5);
    assert_eq!(wire::decode_key(&keys[0].key), Some(vec![0xab; 16]));
    assert_eq!(keys[0].key, wire::encode_key(&[0xab; 16]), "standard padded base64");
    assert_eq!(km.current_keys(), vec![(p, 5, vec![0xab; 16])]);
}

#[test]
fn famedly_keys_from_members_are_applied() {
    let mut h = Harness::new();
    let mut km = KeyManager::new(
        GroupCallId { room_id: RoomId::from(ROOM), call_id: "conf1".into() },
        KeyTransport::Famedly,
        KeyConfig::for_transport(KeyTransport::Famedly),
        me(),
    );
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    h.out.clear();
    let p = member(1);
    let c = wire::famedly_keys_content(
        &RoomId::from(ROOM),
        "conf1",
        &p.device_id,
        &[KeyEntry { index: 3, key: vec![1; 32] }],
    );
    assert_eq!(key_event_group(types::FAMEDLY_KEYS, &c), Some(km.group.clone()));
    assert_eq!(receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &c), KeyDisposition::Applied);
    assert_eq!(
        receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &c),
        KeyDisposition::Ignored(KeyIgnored::Duplicate)
    );
    // The ring wraps: new bytes at a used index (no timestamps) replace the old key.
    let c2 = wire::famedly_keys_content(
        &RoomId::from(ROOM),
        "conf1",
        &p.device_id,
        &[KeyEntry { index: 3, key: vec![2; 32] }],
    );
    assert_eq!(receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &c2), KeyDisposition::Applied);
    assert_eq!(km.current_keys(), vec![(p.clone(), 3, vec![2; 32])]);
    // Another call in the same room.
    let other = wire::famedly_keys_content(
        &RoomId::from(ROOM),
        "conf2",
        &p.device_id,
        &[KeyEntry { index: 4, key: vec![3; 32] }],
    );
    assert_eq!(
        receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &other),
        KeyDisposition::Ignored(KeyIgnored::WrongCall)
    );
}

#[test]
fn keys_from_non_members_are_buffered_then_applied_within_the_ttl_or_dropped() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    h.drain();
    let (p2, p3) = (member(2), member(3));
    assert_eq!(
        receive(&mut h, &mut km, &p2, types::ELEMENT_CALL_KEYS, &ec_key(&p2, 0, 2, 1)),
        KeyDisposition::Buffered
    );
    assert_eq!(
        receive(&mut h, &mut km, &p3, types::ELEMENT_CALL_KEYS, &ec_key(&p3, 0, 3, 1)),
        KeyDisposition::Buffered
    );
    assert!(h.drain().1.is_empty(), "nothing applied yet");
    assert_eq!(km.next_timer(), Some(h.now.plus(60_000)));
    h.advance(59_999);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    let (_, keys) = h.drain();
    let remote: Vec<_> = keys.iter().filter(|k| !k.local).map(|k| k.participant.clone()).collect();
    assert_eq!(remote, vec![p2.clone()]);
    h.advance(1);
    h.with(|ctx| km.handle_timeout(ctx));
    assert!(km.buffered.is_empty(), "member 3's key expired");
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2, 3])));
    let (_, keys) = h.drain();
    assert!(keys.iter().all(|k| k.local || k.participant != p3), "dropped after the TTL");
}

#[test]
fn keys_received_before_our_join_are_applied_on_join() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    let p = member(1);
    assert_eq!(
        receive(&mut h, &mut km, &p, types::ELEMENT_CALL_KEYS, &ec_key(&p, 0, 1, 1)),
        KeyDisposition::Buffered
    );
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    let (_, keys) = h.drain();
    assert_eq!(keys.iter().map(|k| (k.local, k.index)).collect::<Vec<_>>(), vec![(true, 0), (false, 0)]);
}

#[test]
fn buffer_is_bounded() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    for n in 0..100 {
        let p = member(n);
        receive(&mut h, &mut km, &p, types::ELEMENT_CALL_KEYS, &ec_key(&p, 0, 1, 1));
    }
    assert_eq!(km.buffered.len(), 64);
    assert_eq!(km.buffered.front().map(|b| b.content.claimed_device.to_string()), Some("D036".into()));
}

#[test]
fn one_senders_key_flood_does_not_evict_another_senders_buffered_key() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    // A member-to-be's key waits for its membership.
    let carol = member(1);
    receive(&mut h, &mut km, &carol, types::ELEMENT_CALL_KEYS, &ec_key(&carol, 0, 7, 1));
    // One Olm user (many claimed devices) floods keys.
    let mut mallory = member(2);
    for n in 0..1_000 {
        mallory.device_id = format!("M{n}").as_str().into();
        receive(&mut h, &mut km, &mallory, types::ELEMENT_CALL_KEYS, &ec_key(&mallory, 0, 9, 1));
    }
    assert!(km.buffered.iter().any(|b| b.sender == carol.user_id), "carol's key survives");
    assert_eq!(km.buffered.iter().filter(|b| b.sender == mallory.user_id).count(), 64 / 8);
}

#[test]
fn unencrypted_mismatched_and_misaddressed_keys_are_refused() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    h.drain();
    let p = member(1);
    let c = ec_key(&p, 0, 1, 1);
    let t = types::ELEMENT_CALL_KEYS;
    let d = h.with(|ctx| km.handle_to_device(ctx, &p.user_id, Some(&p.device_id), false, t, &c));
    assert_eq!(d, Ok(KeyDisposition::Ignored(KeyIgnored::NotEncrypted)));
    let d = h.with(|ctx| km.handle_to_device(ctx, &p.user_id, None, true, t, &c));
    assert_eq!(d, Ok(KeyDisposition::Ignored(KeyIgnored::NotEncrypted)));
    // Member 2's device sends a key claiming to be member 1's device.
    let d = h.with(|ctx| km.handle_to_device(ctx, &p.user_id, Some(&member(2).device_id), true, t, &c));
    assert_eq!(d, Ok(KeyDisposition::Ignored(KeyIgnored::DeviceMismatch)));
    let mut other_room = c.clone();
    other_room["room_id"] = json!("!elsewhere:x");
    assert_eq!(receive(&mut h, &mut km, &p, t, &other_room), KeyDisposition::Ignored(KeyIgnored::WrongRoom));
    let mut no_room = c.clone();
    no_room.as_object_mut().map(|m| m.remove("room_id"));
    assert_eq!(receive(&mut h, &mut km, &p, t, &no_room), KeyDisposition::Ignored(KeyIgnored::WrongRoom));
    let mut other_call = c.clone();
    other_call["session"]["call_id"] = json!("x");
    assert_eq!(receive(&mut h, &mut km, &p, t, &other_call), KeyDisposition::Ignored(KeyIgnored::WrongCall));
    let mut other_app = c.clone();
    other_app["session"]["application"] = json!("m.other");
    assert_eq!(receive(&mut h, &mut km, &p, t, &other_app), KeyDisposition::Ignored(KeyIgnored::WrongCall));
    let mine = ec_key(&me(), 0, 1, 1);
    assert_eq!(receive(&mut h, &mut km, &me(), t, &mine), KeyDisposition::Ignored(KeyIgnored::OwnDevice));
    assert!(h.drain().1.is_empty());
    assert!(km.current_keys().is_empty());
}

#[test]
fn duplicate_and_older_keys_are_ignored() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    h.drain();
    let p = member(1);
    let t = types::ELEMENT_CALL_KEYS;
    assert_eq!(receive(&mut h, &mut km, &p, t, &ec_key(&p, 4, 1, 100)), KeyDisposition::Applied);
    assert_eq!(
        receive(&mut h, &mut km, &p, t, &ec_key(&p, 4, 1, 200)),
        KeyDisposition::Ignored(KeyIgnored::Duplicate)
    );
    assert_eq!(
        receive(&mut h, &mut km, &p, t, &ec_key(&p, 4, 2, 50)),
        KeyDisposition::Ignored(KeyIgnored::Older)
    );
    assert_eq!(km.current_keys(), vec![(p.clone(), 4, vec![1; 16])]);
    // A newer key at the same index replaces it; an older key at another index is kept
    // for in-flight frames but does not become the latest.
    assert_eq!(receive(&mut h, &mut km, &p, t, &ec_key(&p, 4, 3, 300)), KeyDisposition::Applied);
    assert_eq!(receive(&mut h, &mut km, &p, t, &ec_key(&p, 3, 4, 250)), KeyDisposition::Applied);
    assert_eq!(km.current_keys(), vec![(p.clone(), 4, vec![3; 16])]);
    let (_, keys) = h.drain();
    assert_eq!(keys.len(), 3);
    // Legacy array form with one new key and one duplicate: applied (the new one only).
    let legacy = json!({"keys": [{"index": 4, "key": wire::encode_key(&[3; 16])},
                                 {"index": 5, "key": wire::encode_key(&[5; 16])}],
                        "device_id": "D001", "call_id": "", "room_id": ROOM, "sent_ts": 400});
    assert_eq!(receive(&mut h, &mut km, &p, t, &legacy), KeyDisposition::Applied);
    assert_eq!(h.drain().1.iter().map(|k| k.index).collect::<Vec<_>>(), vec![5]);
}

#[test]
fn famedly_requests_are_answered_only_for_current_members() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::Famedly);
    let req = |p: &Participant| json!({"conf_id": "", "device_id": p.device_id, "room_id": ROOM});
    let (p1, p9) = (member(1), member(9));
    assert_eq!(
        receive(&mut h, &mut km, &p1, types::FAMEDLY_KEYS_REQUEST, &req(&p1)),
        KeyDisposition::Ignored(KeyIgnored::NotJoined)
    );
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    let (first, _) = h.drain();
    assert_eq!(
        receive(&mut h, &mut km, &p1, types::FAMEDLY_KEYS_REQUEST, &req(&p1)),
        KeyDisposition::Applied
    );
    let (sends, _) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].targets(), vec!["D001"]);
    assert_eq!(key_of(&sends[0]), key_of(&first[0]));
    assert_eq!(
        receive(&mut h, &mut km, &p9, types::FAMEDLY_KEYS_REQUEST, &req(&p9)),
        KeyDisposition::Ignored(KeyIgnored::NotMember)
    );
    let d = h.with(|ctx| {
        km.handle_to_device(
            ctx,
            &p1.user_id,
            Some(&p1.device_id),
            false,
            types::FAMEDLY_KEYS_REQUEST,
            &req(&p1),
        )
    });
    assert_eq!(d, Ok(KeyDisposition::Ignored(KeyIgnored::NotEncrypted)));
    assert!(h.drain().0.is_empty());
}

#[test]
fn request_keys_asks_current_members_in_one_batch_famedly_only() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::Famedly);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2, 3])));
    h.drain();
    h.with(|ctx| km.request_keys(ctx, &[member(1), member(3), member(9)]));
    let (sends, _) = h.drain();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].event_type, types::FAMEDLY_KEYS_REQUEST);
    assert_eq!(sends[0].targets(), vec!["D001", "D003"]);
    assert_eq!(*sends[0].messages[0].content, json!({"conf_id": "", "device_id": "ME", "room_id": ROOM}));
    let mut ec = manager(KeyTransport::ElementCall);
    h.with(|ctx| ec.set_members(ctx, &set(&[1])));
    h.drain();
    h.with(|ctx| ec.request_keys(ctx, &[member(1)]));
    assert!(h.drain().0.is_empty(), "Element Call has no request");
}

#[test]
fn leave_forgets_everything_and_sends_nothing_more() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::Famedly);
    h.with(|ctx| km.set_members(ctx, &set(&[1, 2])));
    let p = member(1);
    let c = wire::famedly_keys_content(
        &RoomId::from(ROOM),
        "",
        &p.device_id,
        &[KeyEntry { index: 0, key: vec![1; 32] }],
    );
    receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &c);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    assert!(km.next_timer().is_some());
    h.drain();
    h.with(|ctx| km.leave(ctx));
    assert_eq!(km.next_timer(), None);
    assert!(km.current_keys().is_empty());
    assert_eq!(km.local_key(), None);
    assert_eq!(km.members.len(), 0);
    h.advance(100_000);
    h.with(|ctx| km.handle_timeout(ctx));
    h.with(|ctx| km.request_keys(ctx, std::slice::from_ref(&p)));
    assert_eq!(
        receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS, &c),
        KeyDisposition::Ignored(KeyIgnored::NotJoined)
    );
    assert!(h.out.is_empty(), "nothing after leaving");
    // A new join starts over.
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    let (sends, keys) = h.drain();
    assert_eq!((sends.len(), keys.len()), (1, 1));
}

#[test]
fn routing_and_identities() {
    let ec = ec_key(&member(1), 0, 1, 1);
    assert_eq!(key_event_group(types::ELEMENT_CALL_KEYS, &ec), Some(group_id()));
    let req = json!({"conf_id": "c", "device_id": "D", "room_id": ROOM});
    assert_eq!(
        key_event_group(types::FAMEDLY_KEYS_REQUEST, &req),
        Some(GroupCallId { room_id: RoomId::from(ROOM), call_id: "c".into() })
    );
    // Malformed keys are still routed, so the manager can report them.
    let bad = json!({"room_id": ROOM, "keys": 3});
    assert_eq!(key_event_group(types::ELEMENT_CALL_KEYS, &bad), Some(group_id()));
    assert_eq!(key_event_group(types::ELEMENT_CALL_KEYS, &json!({"keys": []})), None);
    assert_eq!(key_event_group("m.call.invite", &req), None);
    assert!(is_key_event_type(types::FAMEDLY_KEYS) && !is_key_event_type("m.call.invite"));
    let p = Participant {
        user_id: UserId::from("@alice:example.com"),
        device_id: DeviceId::from("DEVICE123"),
        member_id: "memberABC".into(),
    };
    assert_eq!(p.livekit_hashed_identity(), "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU");
    assert_eq!(p.livekit_identity(), "@alice:example.com:DEVICE123");
}

#[test]
fn malformed_contents_are_wire_errors() {
    let mut h = Harness::new();
    let mut km = manager(KeyTransport::ElementCall);
    h.with(|ctx| km.set_members(ctx, &set(&[1])));
    let p = member(1);
    for c in [
        json!(null),
        json!({"room_id": ROOM}),
        json!({"keys": {"index": 0, "key": "!!"}, "device_id": "D001"}),
    ] {
        let r = h.with(|ctx| {
            km.handle_to_device(ctx, &p.user_id, Some(&p.device_id), true, types::ELEMENT_CALL_KEYS, &c)
        });
        assert!(r.is_err(), "{c}");
    }
}

/// One step of a random membership history.
#[derive(Clone, Debug)]
enum Op {
    /// The members (bit n: member n), and whether member 0 rejoined with a new member id.
    Members(u8, bool),
    Advance(u64),
    Timeout,
    /// A famedly key request from member n.
    Request(usize),
    /// An Element Call key from member n.
    Key(usize, u8),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<bool>()).prop_map(|(m, r)| Op::Members(m & 0x3f, r)),
        (0u64..15_000).prop_map(Op::Advance),
        Just(Op::Timeout),
        (0usize..6).prop_map(Op::Request),
        (0usize..6, any::<u8>()).prop_map(|(n, b)| Op::Key(n, b)),
    ]
}

fn members_of(bits: u8, rejoined: bool) -> BTreeSet<Participant> {
    (0..6)
        .filter(|n| bits & (1 << n) != 0)
        .map(|n| {
            let mut p = member(n);
            if n == 0 && rejoined {
                p.member_id = "second-session".into();
            }
            p
        })
        .collect()
}

proptest! {
    /// Security invariants over random histories, both transports: keys go only to current
    /// members, one batch per key; once the timers have run, the key in use was never sent
    /// to a device that is not a member; the held remote keys are current members' only.
    #[test]
    fn keys_reach_only_current_members(
        famedly in any::<bool>(),
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let t = if famedly { KeyTransport::Famedly } else { KeyTransport::ElementCall };
        let mut h = Harness::new();
        let mut km = manager(t);
        let mut current: BTreeSet<Participant> = BTreeSet::new();
        // Key (base64) -> devices it was sent to.
        let mut recipients: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut in_use: Option<String> = None;
        let ops = std::iter::once(Op::Members(0b11, false))
            .chain(ops)
            .chain([Op::Advance(20_000), Op::Timeout, Op::Advance(20_000), Op::Timeout]);
        for op in ops {
            match op {
                Op::Members(bits, rejoined) => {
                    current = members_of(bits, rejoined);
                    h.with(|ctx| km.set_members(ctx, &current));
                }
                Op::Advance(ms) => h.advance(ms),
                Op::Timeout => {
                    if km.next_timer().is_some_and(|at| at <= h.now) {
                        h.with(|ctx| km.handle_timeout(ctx));
                    }
                }
                Op::Request(n) => {
                    let p = member(n);
                    let c = json!({"conf_id": "", "device_id": p.device_id, "room_id": ROOM});
                    receive(&mut h, &mut km, &p, types::FAMEDLY_KEYS_REQUEST, &c);
                }
                Op::Key(n, b) => {
                    let p = member(n);
                    let c = ec_key(&p, u32::from(b), b, h.now.0);
                    receive(&mut h, &mut km, &p, types::ELEMENT_CALL_KEYS, &c);
                }
            }
            let devices: BTreeSet<String> = current.iter().map(|p| p.device_id.to_string()).collect();
            let (sends, keys) = h.drain();
            for s in &sends {
                let targets = s.targets();
                prop_assert_eq!(targets.iter().collect::<BTreeSet<_>>().len(), targets.len());
                for d in &targets {
                    prop_assert!(devices.contains(d), "{} is not a member", d);
                }
                if s.event_type == t.keys_event_type() {
                    let (_, key) = key_of(s);
                    recipients.entry(key).or_default().extend(targets);
                }
            }
            for k in keys.iter().filter(|k| k.local) {
                in_use = Some(k.key.clone());
            }
            for (p, _, _) in km.current_keys() {
                prop_assert!(current.contains(&p));
            }
        }
        let devices: BTreeSet<String> = current.iter().map(|p| p.device_id.to_string()).collect();
        let in_use = in_use.unwrap_or_default();
        prop_assert_eq!(km.local_key().map(|(_, k)| wire::encode_key(&k)), Some(in_use.clone()));
        for d in recipients.get(&in_use).into_iter().flatten() {
            prop_assert!(devices.contains(d), "the key in use reached departed device {}", d);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_contents_never_panic(
        t in prop_oneof![Just(types::FAMEDLY_KEYS), Just(types::FAMEDLY_KEYS_REQUEST), Just(types::ELEMENT_CALL_KEYS), Just("x")],
        index in prop_oneof![Just(json!(0)), Just(json!(-1)), Just(json!("7")), Just(json!(1e300)), Just(json!(null)), Just(json!([]))],
        key in prop_oneof![Just(json!("AAECAwQFBgcICQoLDA0ODw")), Just(json!("")), Just(json!(5)), Just(json!({}))],
        keys_array in any::<bool>(),
        room in prop_oneof![Just(json!(ROOM)), Just(json!(1)), Just(json!(null))],
        device in prop_oneof![Just(json!("D001")), Just(json!("")), Just(json!(false))],
    ) {
        let mut h = Harness::new();
        let mut km = manager(KeyTransport::ElementCall);
        h.with(|ctx| km.set_members(ctx, &set(&[1])));
        let entry = json!({"index": index, "key": key});
        let c = json!({
            "keys": if keys_array { json!([entry]) } else { entry },
            "room_id": room, "conf_id": "", "device_id": device,
            "member": {"claimed_device_id": device}, "session": {"call_id": ""},
        });
        let p = member(1);
        let _ = key_event_group(t, &c);
        let _ = h.with(|ctx| km.handle_to_device(ctx, &p.user_id, Some(&p.device_id), true, t, &c));
    }
}
