//! Large rooms (issue #15): the cost of taking in a room's state through [`VoipMachine::handle`], and
//! of each further `m.room.member` event.
//!
//! The room has `ROOM_MEMBERS` joined users; `call` of them are in the room's group call, each
//! with one device, in one of two dialects: MatrixRTC (`org.matrix.msc3401.call.member`, one
//! state key per device) or famedly (`com.famedly.call.member`, one list per user). Taken in
//! either all at once (`take_in_batch`: one [`Input::RoomState`]) or one input per event
//! (`take_in_one_by_one`: the call memberships first, then the `m.room.member` joins, as the
//! issue measured it; every event that adds a participant reports the whole participant list,
//! so this is quadratic in the call size by the API's contract). The machine either only
//! observes the call, or has joined it (LiveKit focus, so no peer calls), or (mesh) has joined a
//! famedly mesh call with a few members.
//!
//! Run: `cargo bench -p voip-sim --bench large_room` (criterion: the batch take-ins and further
//! member events). `LARGE_ROOM_ONCE=1 cargo bench -p voip-sim --bench large_room` runs every
//! take-in (batch and one by one) once, prints its wall time and the heap it left behind per
//! room member (a counting global allocator, `cap`), and exits; `LARGE_ROOM_ONLY=<substring>`
//! picks scenarios. Next to the wall time it prints the thread's CPU time for the same span
//! (Linux `schedstat`), which a loaded machine inflates far less.

use std::time::Instant;

use cap::Cap;
use criterion::{black_box, criterion_group, Criterion};
use serde_json::json;
use voip_core::{
    Command, Config, Event, Focus, Input, LocalDevice, MembershipDialect, Output, RoomId, RoomMember,
    RoomMembership, StateEvent, Timestamp, UserId, VoipMachine,
};

/// Counts the bytes currently allocated.
#[global_allocator]
static HEAP: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const ROOM_MEMBERS: usize = 10_000;
const ROOM: &str = "!large:example.org";
const T0: Timestamp = Timestamp(1_700_000_000_000);
const SFU: &str = "https://sfu.example.org";

fn user(i: usize) -> UserId {
    UserId::from(format!("@u{i}:example.org").as_str())
}

/// User `i`'s call membership (device `D{i}`).
fn call_member(i: usize, dialect: MembershipDialect, mesh: bool) -> StateEvent {
    let u = user(i);
    let focus =
        if mesh { json!({"type": "mesh"}) } else { json!({"type": "livekit", "livekit_service_url": SFU}) };
    let (event_type, state_key, content) = match dialect {
        MembershipDialect::Famedly => (
            "com.famedly.call.member",
            u.to_string(),
            json!({"memberships": [{"call_id": "", "application": "m.call", "scope": "m.room",
                "foci_active": [focus], "device_id": format!("D{i}"), "membershipID": format!("S{i}"),
                "expires_ts": T0.0 + 4 * 3_600_000}]}),
        ),
        _ => (
            "org.matrix.msc3401.call.member",
            format!("_{u}_D{i}_m.call"),
            json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": format!("D{i}"),
                "expires": 4 * 3_600_000u64, "created_ts": T0.0 - 1000 + i as u64,
                "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
                "foci_preferred": [{"type": "livekit", "livekit_service_url": SFU}]}),
        ),
    };
    StateEvent {
        room_id: RoomId::from(ROOM),
        event_id: None,
        sender: u,
        event_type: event_type.into(),
        state_key,
        content,
        origin_server_ts: Timestamp(T0.0 - 1000),
    }
}

fn room_member(i: usize, membership: RoomMembership) -> RoomMember {
    RoomMember { room_id: RoomId::from(ROOM), user_id: user(i), membership }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// We only observe the call.
    Observe,
    /// We joined it (LiveKit).
    JoinedLivekit,
    /// We joined a famedly mesh call.
    JoinedMesh,
}

fn machine(mode: Mode, dialect: MembershipDialect) -> VoipMachine {
    let mut voip = VoipMachine::new(Config::default(), LocalDevice::new("@me:example.org", "ME"), [3; 32]);
    voip.handle(T0, Input::ServerSupport { delayed_events: true }).expect("support");
    let focus = match mode {
        Mode::Observe => None,
        Mode::JoinedLivekit => {
            Some(Focus::Livekit { livekit_service_url: Some(SFU.into()), livekit_alias: None })
        }
        Mode::JoinedMesh => Some(Focus::Mesh),
    };
    if let Some(focus) = focus {
        voip.handle(
            T0,
            Input::Command(Command::JoinGroupCall {
                room_id: RoomId::from(ROOM),
                call_id: String::new(),
                application: "m.call".into(),
                scope: "m.room".into(),
                dialect,
                focus,
                owned_state_keys: false,
                notify: None,
                encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
            }),
        )
        .expect("join");
    }
    while voip.poll().is_some() {}
    voip
}

/// Feeds the call memberships of users `0..call`, then the room joins of `0..ROOM_MEMBERS`:
/// one input each, draining outputs after each, or (`batch`) all in one [`Input::RoomState`].
/// Returns how many participants the last `participants_changed` counted.
fn take_in(
    voip: &mut VoipMachine,
    call: usize,
    dialect: MembershipDialect,
    mesh: bool,
    batch: bool,
) -> usize {
    let mut participants = 0;
    let mut drain = |voip: &mut VoipMachine| {
        while let Some(o) = voip.poll() {
            if let Output::Event(Event::ParticipantsChanged { count, .. }) = &o {
                participants = *count;
            }
            black_box(o);
        }
    };
    let state = (0..call).map(|i| call_member(i, dialect, mesh));
    let members = (0..ROOM_MEMBERS).map(|i| room_member(i, RoomMembership::Join));
    if batch {
        voip.handle(T0, room_state(call, dialect, mesh)).expect("room state");
        drain(voip);
        return participants;
    }
    for e in state {
        voip.handle(T0, Input::StateEvent(e)).expect("membership");
        drain(voip);
    }
    for m in members {
        voip.handle(T0, Input::RoomMember(m)).expect("member");
        drain(voip);
    }
    participants
}

/// The whole room as one input.
fn room_state(call: usize, dialect: MembershipDialect, mesh: bool) -> Input {
    Input::RoomState {
        members: (0..ROOM_MEMBERS).map(|i| room_member(i, RoomMembership::Join)).collect(),
        state: (0..call).map(|i| call_member(i, dialect, mesh)).collect(),
    }
}

struct Scenario {
    name: &'static str,
    mode: Mode,
    dialect: MembershipDialect,
    call: usize,
    /// All in one `Input::RoomState` (else one input per event).
    batch: bool,
}

fn scenarios() -> Vec<Scenario> {
    use MembershipDialect::{Famedly, MatrixRtc};
    let mut v = Vec::new();
    for (batch, b) in [(true, "batch"), (false, "one_by_one")] {
        for (call, c) in [(1_000, "1000"), (10_000, "10000")] {
            for (dialect, d) in [(MatrixRtc, "rtc"), (Famedly, "famedly")] {
                for (mode, m) in [(Mode::Observe, "observed"), (Mode::JoinedLivekit, "joined_livekit")] {
                    let name: &'static str =
                        Box::leak(format!("take_in_{b}/{c}_call_{d}_{m}").into_boxed_str());
                    v.push(Scenario { name, mode, dialect, call, batch });
                }
            }
        }
        let name: &'static str =
            Box::leak(format!("take_in_{b}/4_call_famedly_joined_mesh").into_boxed_str());
        v.push(Scenario { name, mode: Mode::JoinedMesh, dialect: Famedly, call: 4, batch });
        let name: &'static str = Box::leak(format!("take_in_{b}/0_call_observed").into_boxed_str());
        v.push(Scenario { name, mode: Mode::Observe, dialect: MatrixRtc, call: 0, batch });
    }
    v
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux): on a loaded
/// machine the wall time counts the time other processes had the core, this does not.
fn thread_cpu() -> Option<std::time::Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

fn run_once(s: &Scenario) {
    let mut voip = machine(s.mode, s.dialect);
    let before = HEAP.allocated() as isize;
    let mesh = matches!(s.mode, Mode::JoinedMesh);
    let (participants, took, cpu_start) = if s.batch {
        // As under criterion: the input is built first, the time is the core taking it in.
        let input = room_state(s.call, s.dialect, mesh);
        let cpu_start = thread_cpu();
        let start = Instant::now();
        voip.handle(T0, input).expect("room state");
        let mut n = 0;
        while let Some(o) = voip.poll() {
            if let Output::Event(Event::ParticipantsChanged { count, .. }) = &o {
                n = *count;
            }
            black_box(o);
        }
        (n, start.elapsed(), cpu_start)
    } else {
        let cpu_start = thread_cpu();
        let start = Instant::now();
        let n = take_in(&mut voip, s.call, s.dialect, mesh, false);
        (n, start.elapsed(), cpu_start)
    };
    let cpu = cpu_start.zip(thread_cpu()).map(|(a, b)| (b - a).as_secs_f64() * 1e3);
    let heap = HEAP.allocated() as isize - before;
    assert_eq!(participants, s.call, "{}: every call member is a participant", s.name);
    println!(
        "{:<45} {:>10.1} ms (cpu {:>7.1} ms)   heap after {:>7} KiB = {:>5} B per room member",
        s.name,
        took.as_secs_f64() * 1e3,
        cpu.unwrap_or(f64::NAN),
        heap / 1024,
        heap / ROOM_MEMBERS as isize
    );
    black_box(voip);
}

fn bench_take_in(c: &mut Criterion) {
    let mut g = c.benchmark_group("large_room");
    g.sample_size(10);
    // One by one, a take-in costs seconds (see `LARGE_ROOM_ONCE`): criterion runs the batches.
    for s in scenarios().into_iter().filter(|s| s.batch) {
        g.bench_function(s.name, |b| {
            // The input is built in the setup: one iteration is the core taking it in (and its
            // outputs drained), not the test building JSON.
            b.iter_batched(
                || {
                    (
                        machine(s.mode, s.dialect),
                        room_state(s.call, s.dialect, matches!(s.mode, Mode::JoinedMesh)),
                    )
                },
                |(mut voip, input)| {
                    voip.handle(T0, input).expect("room state");
                    let mut n = 0;
                    while let Some(o) = voip.poll() {
                        if let Output::Event(Event::ParticipantsChanged { count, .. }) = &o {
                            n = *count;
                        }
                        black_box(o);
                    }
                    assert_eq!(n, s.call);
                    voip
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// Further `m.room.member` events in a taken-in 10 000-member room whose members are all in
/// the call: one iteration is one event (alternately leave and join).
fn bench_further(c: &mut Criterion) {
    let mut g = c.benchmark_group("large_room_member_event");
    for (mode, m) in [(Mode::Observe, "observed"), (Mode::JoinedLivekit, "joined_livekit")] {
        let dialect = MembershipDialect::MatrixRtc;
        let mut voip = machine(mode, dialect);
        take_in(&mut voip, ROOM_MEMBERS, dialect, false, true);
        // A user of the room who is not in the call.
        let outsider = RoomMember { user_id: user(ROOM_MEMBERS + 1), ..room_member(0, RoomMembership::Join) };
        let mut flip = false;
        g.bench_function(format!("10000_call_{m}/user_not_in_call"), |b| {
            b.iter(|| {
                flip = !flip;
                let membership = if flip { RoomMembership::Leave } else { RoomMembership::Join };
                voip.handle(T0, Input::RoomMember(RoomMember { membership, ..outsider.clone() }))
                    .expect("member");
                while let Some(o) = voip.poll() {
                    black_box(o);
                }
            })
        });
        if matches!(mode, Mode::Observe) {
            // A call member leaves the room and joins again: one participant leaves / joins.
            let mut flip = false;
            g.bench_function(format!("10000_call_{m}/call_member"), |b| {
                b.iter(|| {
                    flip = !flip;
                    let membership = if flip { RoomMembership::Leave } else { RoomMembership::Join };
                    voip.handle(T0, Input::RoomMember(room_member(7, membership))).expect("member");
                    while let Some(o) = voip.poll() {
                        black_box(o);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_take_in, bench_further);

fn main() {
    if std::env::var_os("LARGE_ROOM_ONCE").is_some() {
        let only = std::env::var("LARGE_ROOM_ONLY").ok();
        for s in scenarios() {
            if only.as_deref().is_none_or(|o| s.name.contains(o)) {
                run_once(&s);
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
