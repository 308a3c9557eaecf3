//! Harness functions of the fuzz targets in `fuzz/` (`cargo fuzz run <target>`), kept here so
//! that the inputs found so far replay as ordinary tests (`tests/fuzz_corpus.rs`).
//!
//! Every function takes raw bytes and panics only when an oracle is broken:
//! - [`wire_call`]: `m.call.*` parsing; what parses, written back out, parses and writes the same;
//! - [`wire_member`]: membership parsing of every dialect; entries within the list limit;
//! - [`wire_keys`]: media-key parsing; every accepted key within the length and index limits;
//! - [`handle`]: the core's input handler fed a JSON list of [`Input`]s on a device with a live
//!   1:1 call and SFU and mesh group calls: a cleartext to-device call event changes no call and
//!   causes no output; no map that remote input grows exceeds its per-sender or total bound
//!   (`VoipMachine::footprint`); no peer gets more live calls than its new-call budget; deadlines are
//!   never in the past (and, built with debug assertions, no arithmetic overflows); afterwards
//!   the machine still works.
//!
//! For the wire targets the first byte picks the event type, the rest is the JSON content.

use serde_json::Value;
use voip_core::wire::{call, keys, member};
use voip_core::{
    CallType, Command, Config, Focus, Input, LocalDevice, MembershipDialect, RoomId, RoomMember,
    RoomMembership, Signalling, Timestamp, UserId, VoipMachine,
};

/// A harness: raw bytes in, a panic when an oracle breaks.
pub type Harness = fn(&[u8]);

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [(&str, Harness); 4] =
    [("wire_call", wire_call), ("wire_member", wire_member), ("wire_keys", wire_keys), ("handle", handle)];

/// Event types the call target picks from.
pub const CALL_TYPES: [&str; 12] = [
    call::types::INVITE,
    call::types::ANSWER,
    call::types::CANDIDATES,
    call::types::SELECT_ANSWER,
    call::types::REJECT,
    call::types::HANGUP,
    call::types::NEGOTIATE,
    call::types::SDP_STREAM_METADATA_CHANGED,
    call::types::SDP_STREAM_METADATA_CHANGED_UNSTABLE,
    call::types::REPLACES,
    call::types::ASSERTED_IDENTITY,
    call::types::ASSERTED_IDENTITY_UNSTABLE,
];

/// Event types the membership target picks from.
pub const MEMBER_TYPES: [&str; 3] = [member::FAMEDLY_MEMBER, member::RTC_MEMBER, member::RTC_MEMBER_STICKY];

/// Event types the key target picks from.
pub const KEY_TYPES: [&str; 3] =
    [keys::types::FAMEDLY_KEYS, keys::types::FAMEDLY_KEYS_REQUEST, keys::types::ELEMENT_CALL_KEYS];

fn split<'a>(data: &'a [u8], types: &[&'a str]) -> Option<(&'a str, Value)> {
    let (first, rest) = data.split_first()?;
    let content = serde_json::from_slice(rest).ok()?;
    Some((types[*first as usize % types.len()], content))
}

/// `m.call.*` parsing round-trips.
pub fn wire_call(data: &[u8]) {
    let Some((event_type, content)) = split(data, &CALL_TYPES) else { return };
    let Ok((common, event)) = call::parse(event_type, &content) else { return };
    // What we write parses, and writing what we parsed from it gives it back (the writer
    // normalises: version "1", default lifetime, ...; after that nothing may change).
    let out = call::to_content(&common, &event);
    let again = call::parse(event.event_type(), &out);
    let Ok((c2, e2)) = again else {
        panic!("{event_type}: our own output does not parse: {out} ({again:?})")
    };
    assert_eq!(e2.event_type(), event.event_type());
    assert_eq!(c2.call_id, common.call_id);
    let out2 = call::to_content(&c2, &e2);
    assert_eq!(out2, out, "{event_type} does not round-trip: {content} -> {out} -> {out2}");
}

/// Membership parsing stays within its limits.
pub fn wire_member(data: &[u8]) {
    let Some((event_type, content)) = split(data, &MEMBER_TYPES) else { return };
    if let Ok(Some(parsed)) = member::parse(event_type, &content) {
        assert!(parsed.entries.len() + parsed.skipped <= 512, "{event_type}: too many entries");
        for e in &parsed.entries {
            assert!(!e.device_id.is_empty(), "{event_type}: empty device id accepted");
        }
    }
    let _ = member::sticky_key(&content);
    let _ = member::sticky_user(&content);
}

/// Media-key parsing accepts only keys within the limits.
pub fn wire_keys(data: &[u8]) {
    let Some((event_type, content)) = split(data, &KEY_TYPES) else { return };
    if let Ok(keys::KeyEvent::Keys(k)) = keys::parse(event_type, &content) {
        assert!(!k.keys.is_empty() && k.keys.len() <= keys::MAX_KEYS_PER_EVENT);
        for e in &k.keys {
            assert!(e.index <= keys::MAX_KEY_INDEX, "key index {} accepted", e.index);
            assert!((keys::MIN_KEY_LEN..=keys::MAX_KEY_LEN).contains(&e.key.len()), "key length accepted");
        }
    }
}

const ROOM: &str = "!fuzz:example.org";

/// A device with a live 1:1 call, an SFU group call and a mesh group call, ready for input.
pub fn handle_machine() -> (VoipMachine, Timestamp) {
    let mut voip =
        VoipMachine::new(Config::default(), LocalDevice::new("@alice:example.org", "ALICE"), [3; 32]);
    let now = Timestamp(1_700_000_000_000);
    for u in ["@alice:example.org", "@bob:example.org", "@carol:example.org"] {
        let m = RoomMember {
            room_id: RoomId::from(ROOM),
            user_id: UserId::from(u),
            membership: RoomMembership::Join,
        };
        let _ = voip.handle(now, Input::RoomMember(m));
    }
    let _ = voip.place_call(
        now,
        RoomId::from(ROOM),
        UserId::from("@bob:example.org"),
        None,
        CallType::Video,
        Signalling::Room,
    );
    let join = |room: &str, call_id: &str, dialect, focus| {
        Input::Command(Command::JoinGroupCall {
            room_id: RoomId::from(room),
            call_id: call_id.into(),
            application: "m.call".into(),
            scope: "m.room".into(),
            dialect,
            focus,
            owned_state_keys: false,
            notify: None,
            encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
        })
    };
    let sfu =
        Focus::Livekit { livekit_service_url: Some("https://sfu.example.org".into()), livekit_alias: None };
    let _ = voip.handle(now, join(ROOM, "", MembershipDialect::MatrixRtc, sfu));
    let _ = voip.handle(now, join(ROOM, "mesh", MembershipDialect::Famedly, Focus::Mesh));
    while voip.poll().is_some() {}
    (voip, now)
}

/// The input handler: a JSON list of inputs (each one `Input` in its serde form), fed one
/// second apart. Inputs that do not deserialize are skipped.
pub fn handle(data: &[u8]) {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(data) else { return };
    let (mut voip, mut now) = handle_machine();
    for item in items.into_iter().take(64) {
        let Ok(input) = serde_json::from_value::<Input>(item) else { continue };
        // Timers due now fire first, so what follows is the input's doing alone.
        let _ = voip.handle(now, Input::Tick);
        while voip.poll().is_some() {}
        let unauthenticated = matches!(&input, Input::ToDevice(e)
            if (!e.encrypted || e.sender_device.is_none()) && call::is_call_event_type(&e.event_type));
        let before = unauthenticated.then(|| voip.calls());
        let _ = voip.handle(now, input);
        let mut outputs = 0;
        while voip.poll().is_some() {
            outputs += 1;
        }
        if let Some(before) = before {
            // A cleartext to-device call event never creates, changes or ends a call.
            assert_eq!(voip.calls(), before, "a cleartext to-device event changed a call");
            assert_eq!(outputs, 0, "a cleartext to-device event caused output");
        }
        if let Some(d) = voip.next_deadline() {
            assert!(d.at >= now, "deadline {d:?} before now {now:?}");
        }
        // Nothing one sender caused outgrows its bounds.
        let f = voip.footprint();
        for (name, u) in
            [("ended", f.ended), ("early candidates", f.early_candidates), ("pending mesh", f.pending_mesh)]
        {
            assert!(u.within_bounds(), "{name} over its bounds: {u:?}");
        }
        // One peer: at most its budget of new calls (a minute's worth) plus our own call.
        let budget = Config::default().max_new_calls_per_minute + 1;
        assert!(f.max_calls_one_peer <= budget, "{} live calls with one peer", f.max_calls_one_peer);
        now = now.plus(1_000);
    }
    // The machine still works: every call can be hung up, and time runs out for everything.
    for c in voip.calls() {
        let _ = voip.hangup(now, c.call_id.clone());
        while voip.poll().is_some() {}
    }
    assert!(voip.calls().iter().all(|c| c.state == voip_core::CallState::Ended) || voip.calls().is_empty());
}
