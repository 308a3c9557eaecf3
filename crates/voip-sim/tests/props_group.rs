//! Property test of mesh group calls with 2 to 8 devices: after any sequence of joins, leaves,
//! network outages and app restarts, once things settle every pair of present members has
//! exactly one connected peer call, absent members have none, and no core ever errs.

use std::collections::BTreeSet;

use proptest::prelude::*;
use voip_core::{CallState, Command, Config, Focus, GroupCallId, MembershipDialect, RoomId};
use voip_sim::{DeviceIdx, Faults, Sim};

const ROOM: &str = "!mesh:example.org";

#[derive(Clone, Debug)]
enum Action {
    Join(usize),
    Leave(usize),
    Outage(usize, u64),
    Restart(usize),
    Wait(u64),
}

fn action(n: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..n).prop_map(Action::Join),
        2 => (0..n).prop_map(Action::Leave),
        1 => (0..n, 100u64..30_000).prop_map(|(d, ms)| Action::Outage(d, ms)),
        1 => (0..n).prop_map(Action::Restart),
        2 => prop_oneof![0u64..100, 100u64..5_000].prop_map(Action::Wait),
    ]
}

fn join(sim: &mut Sim, d: DeviceIdx) {
    let _ = sim.join_group_call(d, ROOM, MembershipDialect::Famedly, Focus::Mesh);
}

fn run(n: usize, seed: u64, jitter_ms: u64, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(seed);
    sim.faults = Faults { jitter_ms, ..Faults::default() };
    let users: Vec<String> = (0..n).map(|i| format!("@u{i}:example.org")).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let devs: Vec<DeviceIdx> =
        (0..n).map(|i| sim.add_device(&users[i], &format!("D{i}"), Config::default())).collect();
    sim.join(ROOM, &user_refs);
    let mut present = BTreeSet::new();
    for a in actions {
        match a {
            Action::Join(i) => {
                join(&mut sim, devs[i]);
                present.insert(i);
            }
            Action::Leave(i) => {
                let _ = sim.command(
                    devs[i],
                    Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() },
                );
                present.remove(&i);
            }
            Action::Outage(i, ms) => {
                sim.set_offline(devs[i], true);
                sim.advance(ms);
                sim.set_offline(devs[i], false);
            }
            Action::Restart(i) => {
                // The app restarts and, if it was in the call, joins again.
                sim.replace_device(devs[i], Config::default());
                if present.contains(&i) {
                    join(&mut sim, devs[i]);
                }
            }
            Action::Wait(ms) => sim.advance(ms),
        }
    }
    // Let delayed leaves, rejoins and call set-ups finish.
    sim.advance(60_000);
    let group = GroupCallId::room_call(RoomId::from(ROOM));
    for (i, d) in devs.iter().enumerate() {
        let dev = sim.device(*d);
        prop_assert!(dev.errors.is_empty(), "device {i}: {:?}", dev.errors);
        let peers: BTreeSet<String> = dev
            .voip
            .calls()
            .into_iter()
            .map(|c| {
                assert_eq!(
                    c.state,
                    CallState::Connected,
                    "device {i}: call with {} is {:?}",
                    c.peer_user,
                    c.state
                );
                c.peer_device.map(|p| p.0).unwrap_or_default()
            })
            .collect();
        let calls = dev.voip.calls().len();
        prop_assert_eq!(calls, peers.len(), "device {} has two calls with one peer", i);
        let expected: BTreeSet<String> = if present.contains(&i) {
            present.iter().filter(|j| **j != i).map(|j| format!("D{j}")).collect()
        } else {
            BTreeSet::new()
        };
        prop_assert_eq!(&peers, &expected, "device {} peers", i);
        let members: BTreeSet<String> =
            dev.voip.group_call(&group).members.into_iter().map(|m| m.participant.device_id.0).collect();
        let others: BTreeSet<String> = present.iter().filter(|j| **j != i).map(|j| format!("D{j}")).collect();
        prop_assert_eq!(members, others, "device {} sees the present members", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mesh_converges_after_churn(n in 2usize..=8, seed in any::<u64>(), jitter in 0u64..200, actions in prop::collection::vec(action(8), 1..16)) {
        let actions = actions.into_iter().map(|a| match a {
            Action::Join(i) => Action::Join(i % n),
            Action::Leave(i) => Action::Leave(i % n),
            Action::Outage(i, ms) => Action::Outage(i % n, ms),
            Action::Restart(i) => Action::Restart(i % n),
            w => w,
        }).collect();
        run(n, seed, jitter, actions)?;
    }
}
