//! Mesh group calls through the simulator: every pair of present members has exactly one
//! connected peer call, set up by the lower `userId:deviceId`; leaving ends them; a member that
//! comes back with a new session gets fresh calls at once.

use std::collections::BTreeSet;

use voip_core::{CallState, Command, Config, Focus, MembershipDialect, RoomId};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!mesh:example.org";

fn join(sim: &mut Sim, d: DeviceIdx) {
    sim.join_group_call(d, ROOM, MembershipDialect::Famedly, Focus::Mesh).expect("join");
}

fn leave(sim: &mut Sim, d: DeviceIdx) {
    sim.command(d, Command::LeaveGroupCall { room_id: RoomId::from(ROOM), call_id: String::new() })
        .expect("leave");
}

/// Connected peers of each device, as (device, peer user, peer device) triples.
fn connected_pairs(sim: &Sim, devs: &[DeviceIdx]) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for d in devs {
        let me = sim.device(*d).local_device().clone();
        for c in sim.device(*d).calls() {
            assert_eq!(
                c.state,
                CallState::Connected,
                "{}: call with {} is {:?}",
                me.device_id,
                c.peer_user,
                c.state
            );
            let peer = c.peer_device.expect("mesh calls know the peer device");
            pairs.insert((me.device_id.0.clone(), peer.0));
        }
    }
    pairs
}

fn full_mesh(devices: &[&str]) -> BTreeSet<(String, String)> {
    let mut s = BTreeSet::new();
    for a in devices {
        for b in devices {
            if a != b {
                s.insert((a.to_string(), b.to_string()));
            }
        }
    }
    s
}

#[test]
fn four_members_form_a_full_mesh_and_leavers_are_dropped() {
    let mut sim = Sim::new(21);
    let users = ["@alice:x.org", "@bob:x.org", "@carol:x.org", "@dave:x.org"];
    let names = ["A", "B", "C", "D"];
    let devs: Vec<DeviceIdx> =
        users.iter().zip(names).map(|(u, n)| sim.add_device(u, n, Config::default())).collect();
    sim.join(ROOM, &users);
    for d in &devs {
        join(&mut sim, *d);
    }
    sim.settle();
    assert_eq!(connected_pairs(&sim, &devs), full_mesh(&names), "every pair has one connected call");
    for d in &devs {
        assert_eq!(sim.device(*d).calls().len(), 3, "exactly one call per other member");
    }
    leave(&mut sim, devs[3]);
    sim.settle();
    assert!(sim.device(devs[3]).calls().is_empty(), "the leaver has no calls left");
    assert_eq!(connected_pairs(&sim, &devs[..3]), full_mesh(&names[..3]));
    // Dave comes back: a new session, fresh calls with everyone at once.
    join(&mut sim, devs[3]);
    sim.settle();
    assert_eq!(connected_pairs(&sim, &devs), full_mesh(&names));
}

#[test]
fn a_restarted_member_with_a_new_session_replaces_its_stale_calls() {
    let mut sim = Sim::new(22);
    let a = sim.add_device("@alice:x.org", "A", Config::default());
    let b = sim.add_device("@bob:x.org", "B", Config::default());
    sim.join(ROOM, &["@alice:x.org", "@bob:x.org"]);
    join(&mut sim, a);
    join(&mut sim, b);
    sim.settle();
    let first = sim.device(a).calls()[0].call_id.clone();
    // Bob's app restarts: a new core for the same device (state lost), which joins again.
    sim.replace_device(b, Config::default());
    join(&mut sim, b);
    sim.settle();
    let calls = sim.device(a).calls();
    assert_eq!(calls.len(), 1);
    assert_ne!(calls[0].call_id, first, "the stale call was replaced");
    assert_eq!(calls[0].state, CallState::Connected);
    assert_eq!(sim.device(b).calls().len(), 1);
}

#[test]
fn mute_and_screenshare_fan_out_to_every_peer_and_streams_are_listed_per_member() {
    let mut sim = Sim::new(23);
    let users = ["@alice:x.org", "@bob:x.org", "@carol:x.org"];
    let devs: Vec<DeviceIdx> =
        users.iter().zip(["A", "B", "C"]).map(|(u, n)| sim.add_device(u, n, Config::default())).collect();
    sim.join(ROOM, &users);
    join(&mut sim, devs[0]);
    sim.command(
        devs[0],
        Command::SetGroupMuted {
            room_id: RoomId::from(ROOM),
            call_id: String::new(),
            audio: Some(true),
            video: None,
        },
    )
    .unwrap();
    join(&mut sim, devs[1]);
    join(&mut sim, devs[2]);
    sim.settle();
    sim.command(
        devs[0],
        Command::SetGroupScreenshare { room_id: RoomId::from(ROOM), call_id: String::new(), enabled: true },
    )
    .unwrap();
    sim.settle();
    let group = voip_core::GroupCallId::room_call(RoomId::from(ROOM));
    for other in &devs[1..] {
        let info = sim.device(*other).group_call(&group);
        let alice =
            info.streams.iter().find(|(p, _)| p.user_id.as_str() == users[0]).expect("alice's streams");
        assert_eq!(alice.1.len(), 2, "usermedia and screenshare");
        assert_eq!(alice.1[0].purpose, voip_core::media::StreamPurpose::Screenshare, "screenshare first");
        assert!(
            alice.1[1].audio_muted,
            "the mute chosen before the calls existed applies to every peer call"
        );
    }
}
