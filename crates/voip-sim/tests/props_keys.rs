//! Property test of SFU media keys with 2 to 8 devices, both key transports: after any sequence
//! of joins, leaves, restarts and waits, every present member holds every other present
//! member's key in use, and a device that left never receives a key event after it left.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use voip_core::{Command, Config, Event, Focus, GroupCallId, MembershipDialect, RoomId, Timestamp};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!sfu:example.org";

#[derive(Clone, Debug)]
enum Action {
    Join(usize),
    Leave(usize),
    Restart(usize),
    Wait(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..8usize).prop_map(Action::Join),
        2 => (0..8usize).prop_map(Action::Leave),
        1 => (0..8usize).prop_map(Action::Restart),
        3 => prop_oneof![0u64..200, 200u64..15_000].prop_map(Action::Wait),
    ]
}

fn join(sim: &mut Sim, d: DeviceIdx, dialect: MembershipDialect) {
    let focus =
        Focus::Livekit { livekit_service_url: Some("https://sfu.example.org".into()), livekit_alias: None };
    let _ = sim.join_group_call(d, ROOM, dialect, focus);
}

fn run(n: usize, famedly: bool, seed: u64, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let dialect = if famedly { MembershipDialect::Famedly } else { MembershipDialect::MatrixRtc };
    let mut sim = Sim::new(seed);
    let users: Vec<String> = (0..n).map(|i| format!("@u{i}:example.org")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let devs: Vec<DeviceIdx> =
        (0..n).map(|i| sim.add_device(&users[i], &format!("D{i}"), Config::default())).collect();
    sim.join(ROOM, &refs);
    let mut present = BTreeSet::new();
    let mut left_at: BTreeMap<usize, Timestamp> = BTreeMap::new();
    for a in actions {
        match a {
            Action::Join(i) if i < n => {
                join(&mut sim, devs[i], dialect);
                present.insert(i);
                left_at.remove(&i);
            }
            Action::Leave(i) if i < n => {
                let _ = sim.command(
                    devs[i],
                    Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() },
                );
                if present.remove(&i) {
                    left_at.insert(i, sim.now());
                }
            }
            Action::Restart(i) if i < n => {
                sim.replace_device(devs[i], Config::default());
                if present.contains(&i) {
                    join(&mut sim, devs[i], dialect);
                }
            }
            Action::Wait(ms) => sim.advance(ms),
            _ => {}
        }
    }
    sim.advance(60_000);
    let group = GroupCallId::room_call(RoomId::from(ROOM));
    for i in &present {
        let mine = sim.device(devs[*i]).voip.media_keys(&group).expect("present members are in the call");
        for j in present.iter().filter(|j| *j != i) {
            let theirs = sim.device(devs[*j]).voip.media_keys(&group).expect("in the call").local;
            let held = mine
                .remote
                .iter()
                .find(|(p, _, _)| p.device_id.as_str() == format!("D{j}"))
                .map(|(_, i, k)| (*i, k.clone()));
            prop_assert_eq!(held, theirs.clone(), "D{} holds D{}'s key in use", i, j);
        }
    }
    // A device that left (and did not come back) gets no key once its leave has been delivered.
    for (i, at) in &left_at {
        let late = sim
            .device(devs[*i])
            .events
            .iter()
            .filter(|(t, e)| *t > at.plus(1_000) && matches!(e, Event::EncryptionKey { local: false, .. }))
            .count();
        prop_assert_eq!(late, 0, "D{} received keys after leaving", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn keys_converge_and_never_reach_leavers(n in 2usize..=8, famedly in any::<bool>(), seed in any::<u64>(), actions in prop::collection::vec(action(), 1..14)) {
        run(n, famedly, seed, actions)?;
    }
}
