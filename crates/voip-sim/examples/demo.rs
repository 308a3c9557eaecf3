//! A readable timeline of two simulated devices completing a video call through the sans-IO
//! core: place, ring, answer, connect, hold/unhold, screenshare, mute, hang up. Exits non-zero
//! if any step does not happen.
//!
//! Run: `cargo run -p voip-sim --example demo`

use std::process::ExitCode;

use voip_core::{CallType, Command, Config, Event, Signalling};
use voip_sim::{DeviceIdx, Sim};

const ROOM: &str = "!dm:example.org";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";

fn show(sim: &Sim, names: &[&str], from: &mut [usize]) {
    let mut lines = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let events = &sim.device(DeviceIdx(i)).events;
        for (at, e) in &events[from[i]..] {
            let line = match e {
                Event::IncomingCall { caller, call_type, .. } => {
                    format!("incoming {call_type:?} call from {caller}")
                }
                Event::StateChanged { state, .. } => format!("state → {state:?}"),
                Event::StreamsChanged { local, remote, .. } => format!(
                    "streams: local [{}], remote [{}]",
                    local.iter().map(|s| format!("{:?}", s.purpose)).collect::<Vec<_>>().join(", "),
                    remote
                        .iter()
                        .map(|s| format!(
                            "{:?}{}",
                            s.purpose,
                            if s.audio_muted { " (mic muted)" } else { "" }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Event::HoldChanged { local_hold, remote_hold, .. } => {
                    format!("hold: we hold the peer {local_hold}, the peer holds us {remote_hold}")
                }
                Event::CallEnded { reason, initiator, .. } => {
                    format!("call ended: {reason:?} by {initiator:?}")
                }
                other => format!("{other:?}").split_whitespace().next().unwrap_or("").to_owned(),
            };
            lines.push((at.0 - 1_700_000_000_000, *name, line));
        }
        from[i] = events.len();
    }
    lines.sort_by_key(|l| l.0);
    for (t, name, line) in lines {
        println!("  {t:>6} ms  {name:<5} {line}");
    }
}

fn main() -> ExitCode {
    let mut sim = Sim::new(2026);
    let alice = sim.add_device(ALICE, "ALICEPHONE", Config::default());
    let bob = sim.add_device(BOB, "BOBLAPTOP", Config::default());
    let room = sim.join(ROOM, &[ALICE, BOB]);
    let names = ["alice", "bob"];
    let mut seen = [0, 0];
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: &str| {
        println!("{} {what}", if ok { "✔" } else { "✘" });
        if !ok {
            failures.push(what.to_owned());
        }
    };

    println!("== Alice calls Bob (video) ==");
    let call = sim.place_call(alice, &room, BOB, None, CallType::Video, Signalling::Room);
    sim.settle();
    show(&sim, &names, &mut seen);
    check(sim.incoming(bob) == vec![call.clone()], "Bob's device rings");

    println!("== Bob answers ==");
    let _ = sim.command(bob, Command::Answer { call_id: call.clone(), call_type: None });
    sim.settle();
    show(&sim, &names, &mut seen);
    check(sim.is_connected(alice, &call) && sim.is_connected(bob, &call), "both sides connected");

    println!("== Alice puts Bob on hold, then resumes ==");
    let _ = sim.command(alice, Command::SetHold { call_id: call.clone(), on_hold: true });
    sim.settle();
    let held = sim.device(bob).call(&call).is_some_and(|c| c.remote_hold);
    let _ = sim.command(alice, Command::SetHold { call_id: call.clone(), on_hold: false });
    sim.settle();
    show(&sim, &names, &mut seen);
    check(
        held && sim.device(bob).call(&call).is_some_and(|c| !c.remote_hold),
        "hold and resume renegotiated",
    );

    println!("== Bob shares his screen and mutes his microphone ==");
    let _ = sim.command(bob, Command::SetScreenshare { call_id: call.clone(), enabled: true });
    let _ = sim.command(bob, Command::SetMuted { call_id: call.clone(), audio: Some(true), video: None });
    sim.settle();
    show(&sim, &names, &mut seen);
    let remote = sim.device(alice).call(&call).map(|c| c.remote_streams).unwrap_or_default();
    check(
        remote.first().is_some_and(|s| s.purpose == voip_core::media::StreamPurpose::Screenshare)
            && remote.iter().any(|s| s.audio_muted),
        "Alice sees Bob's screenshare first and his microphone muted",
    );

    println!("== Alice hangs up ==");
    let _ = sim.command(alice, Command::Hangup { call_id: call.clone(), reason: None });
    sim.settle();
    show(&sim, &names, &mut seen);
    check(
        sim.device(alice).calls().is_empty() && sim.device(bob).calls().is_empty(),
        "the call ended on both sides",
    );

    if failures.is_empty() {
        println!("demo finished: every step happened");
        ExitCode::SUCCESS
    } else {
        println!("demo FAILED: {}", failures.join("; "));
        ExitCode::FAILURE
    }
}
