//! A member's app crashes in a connected mesh call: its peer connections die with it. The
//! survivor's ICE goes `Disconnected`, then `Failed`, and the core ends the call (`ice_failed`)
//! unless the crashed member's delayed leave (MSC4140) arrives first and ends it as a leave.

use voip_core::{CallState, Config, EndReason, Event, Focus, GroupCallId, MembershipDialect, RoomId};
use voip_sim::invariants::server_live;
use voip_sim::{DeviceIdx, Sim, ICE_DISCONNECTED_AFTER_MS, ICE_FAILED_AFTER_MS};

const ROOM: &str = "!mesh:example.org";

fn connected_pair(delayed_events: bool) -> (Sim, DeviceIdx, DeviceIdx) {
    let mut sim = Sim::new(7);
    sim.delayed_events = delayed_events;
    let a = sim.add_device("@alice:x.org", "A", Config::default());
    let b = sim.add_device("@bob:x.org", "B", Config::default());
    sim.join(ROOM, &["@alice:x.org", "@bob:x.org"]);
    for d in [a, b] {
        sim.join_group_call(d, ROOM, MembershipDialect::Famedly, Focus::Mesh).expect("join");
    }
    sim.settle();
    let calls = sim.device(a).calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].state, CallState::Connected);
    (sim, a, b)
}

fn ended(sim: &Sim, d: DeviceIdx) -> Vec<(u64, EndReason)> {
    sim.device(d)
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::CallEnded { reason, .. } => Some((t.0, reason.clone())),
            _ => None,
        })
        .collect()
}

fn group() -> GroupCallId {
    GroupCallId { room_id: RoomId::from(ROOM), call_id: String::new() }
}

fn members(sim: &Sim, d: DeviceIdx) -> Vec<String> {
    sim.device(d).group_call(&group()).members.into_iter().map(|m| m.participant.device_id.0).collect()
}

#[test]
fn without_delayed_events_the_call_to_a_crashed_peer_ends_by_ice_failure() {
    let (mut sim, a, b) = connected_pair(false);
    let call = sim.device(a).calls()[0].call_id.clone();
    let crashed_at = sim.now().0;
    sim.crash(b);
    sim.advance(ICE_DISCONNECTED_AFTER_MS - 1);
    assert!(sim.is_connected(a, &call), "ICE notices nothing for a while");
    sim.advance(2);
    assert!(!sim.is_connected(a, &call), "ICE disconnected");
    sim.advance(ICE_FAILED_AFTER_MS + 60_000);
    let ends = ended(&sim, a);
    assert_eq!(ends.first().map(|e| e.1.clone()), Some(EndReason::IceFailed), "{ends:?}");
    assert!(ends[0].0 > crashed_at + ICE_DISCONNECTED_AFTER_MS, "{ends:?}");
    // Bob's membership still claims he is there, so Alice calls him again, a bounded number of
    // times; none of those calls connects, and then she stops.
    assert!(members(&sim, a).contains(&"B".to_string()), "bob's membership has not expired yet");
    sim.advance(10 * 60_000);
    let ends = ended(&sim, a);
    assert!((2..=4).contains(&ends.len()), "the first call and at most 3 more: {ends:?}");
    assert!(sim.device(a).calls().is_empty(), "no call left: {:?}", sim.device(a).calls());
    let connected = sim
        .device(a)
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::StateChanged { state: CallState::Connected, .. }))
        .count();
    assert_eq!(connected, 1, "only the call from before the crash ever connected");
    // Without a delayed leave the crashed member's membership stays until it expires.
    let bob =
        sim.device(a).group_call(&group()).members.into_iter().find(|m| m.participant.device_id.0 == "B");
    assert_eq!(bob.is_some(), bob.is_some_and(|m| server_live(&sim, &group(), &m.participant)));
    assert!(sim.injected.dead_peer_connections >= 1);
}

#[test]
fn with_delayed_events_the_crashed_members_delayed_leave_ends_the_call_first() {
    let (mut sim, a, b) = connected_pair(true);
    let crashed_at = sim.now().0;
    sim.crash(b);
    sim.advance(ICE_DISCONNECTED_AFTER_MS + ICE_FAILED_AFTER_MS + 60_000);
    let ends = ended(&sim, a);
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_ne!(ends[0].1, EndReason::IceFailed, "{ends:?}");
    let delayed_leave = Config::default().famedly_delayed_leave_ms;
    assert!(ends[0].0 <= crashed_at + delayed_leave + 100, "ended by the delayed leave: {ends:?}");
    assert!(sim.device(a).calls().is_empty());
    assert!(!members(&sim, a).contains(&"B".to_string()), "the delayed leave removed bob");
}

#[test]
fn an_invite_answered_after_its_caller_crashed_never_connects() {
    let mut sim = Sim::new(8);
    sim.delayed_events = false;
    let a = sim.add_device("@alice:x.org", "A", Config::default());
    let b = sim.add_device("@bob:x.org", "B", Config::default());
    sim.join(ROOM, &["@alice:x.org", "@bob:x.org"]);
    sim.join_group_call(b, ROOM, MembershipDialect::Famedly, Focus::Mesh).expect("join");
    sim.settle();
    sim.join_group_call(a, ROOM, MembershipDialect::Famedly, Focus::Mesh).expect("join");
    // Alice (the lower device) places the call; she crashes before Bob gets the invite.
    assert!(sim.run_until(10_000, |s| s
        .device(a)
        .calls()
        .first()
        .is_some_and(|c| c.state == CallState::InviteSent)));
    sim.crash(a);
    sim.advance(120_000);
    let ends = ended(&sim, b);
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(sim
        .device(b)
        .events
        .iter()
        .all(|(_, e)| !matches!(e, Event::StateChanged { state: CallState::Connected, .. })));
    assert!(sim.device(b).calls().is_empty());
}
