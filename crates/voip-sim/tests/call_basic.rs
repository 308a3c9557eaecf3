//! Two and three simulated devices completing 1:1 calls end to end.

use voip_core::media::ConnectionState;
use voip_core::{CallState, CallType, Command, Config, EndReason, Event, Initiator, Signalling};
use voip_sim::Sim;

const ROOM: &str = "!dm:example.org";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

#[test]
fn video_call_connects_and_hangs_up() {
    let mut sim = Sim::new(1);
    let a = sim.add_device(ALICE, "ALICE1", Config::default());
    let b = sim.add_device(BOB, "BOB1", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let call = sim.place_call(a, &room, BOB, None, CallType::Video, Signalling::Room);
    // The device runs the app's runtime: its snapshot shows the call at once, and the invite
    // as a send still waiting for the homeserver's answer.
    assert_eq!(sim.device(a).call(&call).unwrap().state, CallState::CreateOffer);
    assert!(sim.run_until(1_000, |s| s.device(a).pending_sends() > 0), "the invite is in flight");
    sim.settle();
    assert_eq!(sim.incoming(b), vec![call.clone()]);
    assert!(sim.events(b).contains(&Event::RingtoneStarted { call_id: call.clone() }));
    assert_eq!(sim.device(b).call(&call).unwrap().call_type, CallType::Video);
    sim.command(b, Command::Answer { call_id: call.clone(), call_type: None }).unwrap();
    sim.settle();
    assert!(sim.is_connected(a, &call), "caller connected");
    assert!(sim.is_connected(b, &call), "callee connected");
    let remote = sim.device(a).call(&call).unwrap().remote_streams;
    assert_eq!(remote.len(), 1);
    assert!(remote[0].has_audio && remote[0].has_video);
    sim.command(a, Command::Hangup { call_id: call.clone(), reason: None }).unwrap();
    sim.settle();
    assert_eq!(sim.ended(a), vec![(call.clone(), EndReason::UserHangup, Initiator::LocalUser)]);
    assert_eq!(sim.ended(b), vec![(call.clone(), EndReason::UserHangup, Initiator::Remote)]);
    assert!(sim.device(a).media.is_closed(&call) && sim.device(b).media.is_closed(&call));
    assert_eq!(sim.device(a).pending_sends(), 0);
    assert!(sim.device(a).errors.is_empty() && sim.device(b).errors.is_empty());
}

#[test]
fn unanswered_call_times_out_on_both_sides() {
    let mut sim = Sim::new(2);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b = sim.add_device(BOB, "B", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let call = sim.place_call(a, &room, BOB, None, CallType::Voice, Signalling::Room);
    sim.run_until_idle(10_000);
    assert_eq!(sim.ended(a), vec![(call.clone(), EndReason::InviteTimeout, Initiator::Library)]);
    let b_events = sim.events(b);
    assert!(b_events.iter().any(|e| matches!(e, Event::MissedCall { call_id, .. } if *call_id == call)));
    assert!(sim.device(a).calls().is_empty() && sim.device(b).calls().is_empty());
}

#[test]
fn answered_elsewhere_stops_the_other_device() {
    let mut sim = Sim::new(3);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b1 = sim.add_device(BOB, "B1", Config::default());
    let b2 = sim.add_device(BOB, "B2", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let call = sim.place_call(a, &room, BOB, None, CallType::Voice, Signalling::Room);
    sim.settle();
    assert_eq!(sim.incoming(b1), vec![call.clone()]);
    assert_eq!(sim.incoming(b2), vec![call.clone()]);
    sim.command(b1, Command::Answer { call_id: call.clone(), call_type: None }).unwrap();
    sim.settle();
    assert!(sim.is_connected(a, &call) && sim.is_connected(b1, &call));
    assert_eq!(sim.ended(b2), vec![(call.clone(), EndReason::AnsweredElsewhere, Initiator::Remote)]);
    assert!(!sim.events(b2).iter().any(|e| matches!(e, Event::MissedCall { .. })));
}

#[test]
fn reject_stops_every_device_of_the_callee() {
    let mut sim = Sim::new(4);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b1 = sim.add_device(BOB, "B1", Config::default());
    let b2 = sim.add_device(BOB, "B2", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let call = sim.place_call(a, &room, BOB, None, CallType::Voice, Signalling::Room);
    sim.settle();
    sim.command(b1, Command::Reject { call_id: call.clone(), emit: true }).unwrap();
    sim.settle();
    assert_eq!(sim.ended(a), vec![(call.clone(), EndReason::Rejected, Initiator::Remote)]);
    assert_eq!(sim.ended(b1), vec![(call.clone(), EndReason::Rejected, Initiator::LocalUser)]);
    assert_eq!(sim.ended(b2), vec![(call.clone(), EndReason::Rejected, Initiator::Remote)]);
}

#[test]
fn busy_callee_refuses_and_caller_stops_ringing() {
    let mut sim = Sim::new(5);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b = sim.add_device(BOB, "B", Config::default());
    let c = sim.add_device("@carol:example.org", "C", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let room2 = sim.join("!other:example.org", &["@carol:example.org", BOB]);
    let first = sim.place_call(a, &room, BOB, None, CallType::Voice, Signalling::Room);
    sim.settle();
    sim.command(b, Command::Answer { call_id: first.clone(), call_type: None }).unwrap();
    sim.settle();
    assert!(sim.is_connected(b, &first));
    let second = sim.place_call(c, &room2, BOB, None, CallType::Voice, Signalling::Room);
    sim.settle();
    assert_eq!(sim.ended(c), vec![(second.clone(), EndReason::UserBusy, Initiator::Remote)]);
    assert!(sim.events(b).iter().any(
        |e| matches!(e, Event::MissedCall { call_id, reason: EndReason::UserBusy, .. } if *call_id == second)
    ));
    assert!(sim.is_connected(b, &first), "the first call is untouched");
    assert_eq!(sim.device(b).counters().busy, 1);
}

#[test]
fn glare_ends_with_one_connected_call_on_both_sides() {
    let mut sim = Sim::new(6);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b = sim.add_device(BOB, "B", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let ca = sim.place_call(a, &room, BOB, None, CallType::Voice, Signalling::Room);
    let cb = sim.place_call(b, &room, ALICE, None, CallType::Voice, Signalling::Room);
    sim.settle();
    let winner = std::cmp::min(ca.clone(), cb.clone());
    assert!(sim.is_connected(a, &winner), "a connected on the lower call id");
    assert!(sim.is_connected(b, &winner), "b connected on the lower call id");
    assert_eq!(sim.device(a).calls().len(), 1);
    assert_eq!(sim.device(b).calls().len(), 1);
}

#[test]
fn calls_between_two_devices_of_one_user_over_room_and_to_device() {
    for signalling in [Signalling::Room, Signalling::ToDevice] {
        let mut sim = Sim::new(7);
        let a1 = sim.add_device(ALICE, "A1", Config::default());
        let a2 = sim.add_device(ALICE, "A2", Config::default());
        let a3 = sim.add_device(ALICE, "A3", Config::default());
        let room = sim.join(ROOM, &[ALICE]);
        let call = sim.place_call(a1, &room, ALICE, Some("A2"), CallType::Voice, signalling);
        sim.settle();
        assert_eq!(sim.incoming(a2), vec![call.clone()], "{signalling:?}");
        assert!(sim.incoming(a3).is_empty(), "{signalling:?}: a third device must not ring");
        sim.command(a2, Command::Answer { call_id: call.clone(), call_type: None }).unwrap();
        sim.settle();
        assert!(sim.is_connected(a1, &call) && sim.is_connected(a2, &call), "{signalling:?}");
        sim.command(a2, Command::Hangup { call_id: call.clone(), reason: None }).unwrap();
        sim.settle();
        assert_eq!(sim.ended(a1), vec![(call.clone(), EndReason::UserHangup, Initiator::Remote)]);
    }
}

#[test]
fn hold_and_ice_restart_renegotiate() {
    let mut sim = Sim::new(8);
    let a = sim.add_device(ALICE, "A", Config::default());
    let b = sim.add_device(BOB, "B", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let call = sim.place_call(a, &room, BOB, None, CallType::Video, Signalling::Room);
    sim.settle();
    sim.command(b, Command::Answer { call_id: call.clone(), call_type: None }).unwrap();
    sim.settle();
    sim.command(a, Command::SetHold { call_id: call.clone(), on_hold: true }).unwrap();
    sim.settle();
    assert!(sim.device(b).call(&call).unwrap().remote_hold, "b sees itself held");
    assert!(!sim.device(a).media.is_sending(&call) && !sim.device(b).media.is_sending(&call));
    sim.command(a, Command::SetHold { call_id: call.clone(), on_hold: false }).unwrap();
    sim.settle();
    assert!(!sim.device(b).call(&call).unwrap().remote_hold);
    assert!(sim.device(a).media.is_sending(&call) && sim.device(b).media.is_sending(&call));
    // ICE fails on b: b restarts ICE through m.call.negotiate and reconnects.
    sim.force_media_state(b, &call, ConnectionState::Failed);
    sim.run_until(1000, |s| {
        s.device(b).media.command_log(&call).iter().any(|c| c.contains("ice_restart: true"))
    });
    sim.force_media_state(b, &call, ConnectionState::Connected);
    sim.settle();
    assert!(sim.is_connected(b, &call) && sim.is_connected(a, &call));
    assert_eq!(sim.device(a).call(&call).unwrap().state, CallState::Connected);
}

/// What the core refuses reaches the runtime's diagnostics (and the simulator's
/// `no_core_error` invariant through them): a media report for a call the device never had.
#[test]
fn an_input_the_core_refuses_is_recorded_by_the_runtime() {
    let mut sim = Sim::new(11);
    let a = sim.add_device(ALICE, "ALICE1", Config::default());
    sim.join(ROOM, &[ALICE]);
    assert!(sim.device(a).errors.is_empty());
    sim.media_event(
        a,
        &"no-such-call".into(),
        voip_core::media::MediaEvent::ConnectionState { state: ConnectionState::Connected },
    );
    let errors = sim.device(a).voip().input_errors();
    assert_eq!(errors.count, sim.device(a).errors.len() as u64);
    assert!(errors.count >= 1, "{errors:?}");
    let (_, first) = errors.first.expect("recorded");
    assert!(first.contains("no-such-call"), "{first}");
}
