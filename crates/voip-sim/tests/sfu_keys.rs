//! SFU (LiveKit) group calls through the simulator, in both key transports: every member ends
//! up holding every other member's key in use; a leave rotates keys and the leaver never gets
//! the new ones; every key send is one Olm-required to-device batch.

use voip_core::{
    Command, Config, Event, Focus, GroupCallId, MembershipDialect, Output, RoomId, SendKind,
    ToDeviceEncryption,
};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!sfu:example.org";
const USERS: [&str; 3] = ["@alice:example.org", "@bob:example.org", "@carol:example.org"];

fn group() -> GroupCallId {
    GroupCallId::room_call(RoomId::from(ROOM))
}

fn join(sim: &mut Sim, d: DeviceIdx, dialect: MembershipDialect) {
    let focus =
        Focus::Livekit { livekit_service_url: Some("https://sfu.example.org".into()), livekit_alias: None };
    sim.join_group_call(d, ROOM, dialect, focus).expect("join");
}

/// Every present member holds every other present member's key in use.
fn converged(sim: &Sim, devs: &[DeviceIdx]) -> bool {
    devs.iter().all(|a| {
        let mine = sim.device(*a).media_keys(&group()).expect("in the call");
        mine.local.is_some()
            && devs.iter().filter(|b| *b != a).all(|b| {
                let theirs = sim.device(*b).media_keys(&group()).expect("in the call").local;
                let me = sim.device(*b).local_device().clone();
                mine.remote.iter().any(|(p, i, k)| {
                    p.user_id == me.user_id && p.device_id == me.device_id && Some((*i, k.clone())) == theirs
                })
            })
    })
}

#[test]
fn keys_are_exchanged_and_rotated_on_leave_in_both_transports() {
    for dialect in [MembershipDialect::MatrixRtc, MembershipDialect::Famedly] {
        let mut sim = Sim::new(31);
        let devs: Vec<DeviceIdx> =
            (0..3).map(|i| sim.add_device(USERS[i], &format!("DEV{i}"), Config::default())).collect();
        sim.join(ROOM, &USERS);
        for d in &devs {
            join(&mut sim, *d, dialect);
        }
        sim.advance(15_000);
        assert!(converged(&sim, &devs), "{dialect:?}: all three hold each other's keys");
        let received = sim
            .events(devs[0])
            .iter()
            .filter(|e| matches!(e, Event::EncryptionKey { local: false, .. }))
            .count();
        assert!(received >= 2, "{dialect:?}: alice got keys from bob and carol");

        let carol_before = sim.device(devs[2]).media_keys(&group()).unwrap();
        let bob_key_before = sim.device(devs[1]).media_keys(&group()).unwrap().local;
        let carol_events_before = sim.events(devs[2]).len();
        sim.command(devs[2], Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() })
            .unwrap();
        sim.advance(15_000);
        let bob_key_after = sim.device(devs[1]).media_keys(&group()).unwrap().local;
        assert_ne!(bob_key_before, bob_key_after, "{dialect:?}: bob rotated after carol left");
        assert!(converged(&sim, &devs[..2]), "{dialect:?}: alice and bob converge on the new keys");
        let carol_new_keys = sim.events(devs[2])[carol_events_before..]
            .iter()
            .filter(|e| matches!(e, Event::EncryptionKey { local: false, .. }))
            .count();
        assert_eq!(carol_new_keys, 0, "{dialect:?}: carol gets no key made after she left");
        assert!(sim.device(devs[2]).media_keys(&group()).is_none());
        let _ = carol_before;

        // Every key send was a single Olm-required to-device batch.
        for d in &devs {
            for (_, out) in &sim.device(*d).outputs {
                if let Output::Send(req) = out {
                    if let SendKind::ToDevice { event_type, encryption, .. } = &req.kind {
                        if event_type.contains("encryption_keys") {
                            assert_eq!(*encryption, ToDeviceEncryption::Required, "{dialect:?}");
                        }
                    }
                }
            }
        }
    }
}
