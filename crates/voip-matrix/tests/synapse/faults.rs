//! Real-component faults (issue #8) and tight rate limits (issue #4):
//!
//! * a second Synapse with tight `rc_*` limits ([`voip_testkit::tight_synapse`]): a 1:1 call and
//!   a group call complete, nothing is lost, and the adapter really saw 429s;
//! * a Synapse of the test's own ([`voip_testkit::rig::Instance`]) stopped and restarted on the
//!   same data and port in the middle of a 1:1 call and of a group call;
//! * a client in a real child process (this test binary run again as `faults::child_peer`)
//!   SIGKILLed after it answered or joined: the other side ends the call by its own timers.

use std::io::BufRead;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use voip_core::{
    CallState, Command, Config, EndReason, Event, GroupCallState, Initiator, MembershipDialect, RoomId,
    RoomMembership, SendOutcome, Signalling,
};
use voip_testkit::rig::{Instance, Limits};
use voip_testkit::{Synapse, TestUser};

use crate::calls::{connect, Phone};
use crate::group::{join_command, wait_members};
use crate::{create_room, room_with, Peer, TIMEOUT};

/// Short timers so a vanished peer is noticed within seconds.
fn short_config() -> Config {
    Config::default()
        .with_ice_restart_delay_ms(500)
        .with_max_ice_restarts(1)
        .with_ice_failed_timeout_ms(3_000)
        .with_rtc_delayed_leave_ms(4_000)
        .with_rtc_delayed_restart_ms(1_000)
}

fn leave_command(room: &str) -> Command {
    Command::LeaveGroupCall { room_id: RoomId::from(room), call_id: String::new() }
}

/// Waits until `phone` has been told that `user` left the group call.
async fn saw_leave(phone: &Phone, user: &str) -> Result<()> {
    phone
        .wait(&format!("{user} left"), |e| match e {
            Event::ParticipantsChanged { left, .. } if left.iter().any(|p| p.user_id.as_str() == user) => {
                Some(())
            }
            _ => None,
        })
        .await
}

async fn joined(phone: &Phone) -> Result<()> {
    phone
        .wait("joined", |e| match e {
            Event::GroupCallStateChanged { state: GroupCallState::Joined, .. } => Some(()),
            _ => None,
        })
        .await
}

/// Every request of `phone` got a result; none was lost to rate limiting. The core owns the
/// retries (the adapter makes one attempt per try and a retry reuses the request id), so a
/// request's result is its last attempt's. Two kinds may end unsent on purpose, the core having
/// dropped them while they waited for their retry: candidates of a call that ended meanwhile,
/// and a delayed-leave heartbeat (`update delayed Restart`) that the next heartbeat replaced.
/// Delayed-event updates may also find their event gone (`M_NOT_FOUND`, e.g. a heartbeat racing
/// the leave). Everything else — invites, answers, hangups, memberships, leaves, keys — must
/// have been sent. Returns how many requests there were.
async fn nothing_lost(phone: &Phone) -> Result<usize> {
    let all = phone.settled_sends().await?;
    for (what, outcome) in &all {
        let ok = match outcome {
            SendOutcome::Sent { .. } | SendOutcome::DelayedEvents { .. } => true,
            SendOutcome::Failed { errcode: Some(code), .. } => {
                what.starts_with("update delayed") && code == "M_NOT_FOUND"
            }
            SendOutcome::RateLimited { .. } | SendOutcome::Failed { retryable: true, errcode: None, .. } => {
                what == "m.call.candidates" || what == "update delayed Restart"
            }
            _ => false,
        };
        assert!(ok, "{}: {what} ended {outcome:?}", phone.peer_user);
    }
    Ok(all.len())
}

fn sent(phone: &Phone, what: &str) -> bool {
    let s = phone.state.lock().unwrap();
    s.sends.iter().any(|(id, w)| w == what && matches!(s.results.get(id), Some(SendOutcome::Sent { .. })))
}

// ---------------------------------------------------------------------------------------------
// Tight rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_server_one_to_one_call_completes_and_nothing_is_lost() -> Result<()> {
    let hs = tokio::task::spawn_blocking(voip_testkit::tight_synapse).await?;
    let mut alice = Peer::new_on(hs, "alice").await?;
    let bob = Peer::new_on(hs, "bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (alice, bob) = (Phone::new(alice), Phone::new(bob));
    let (call, _) = connect(&alice, &bob, &room).await?;
    alice.call(&call).hangup().await.expect("hangup");
    assert_eq!(bob.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::LocalUser));

    let sends = nothing_lost(&alice).await? + nothing_lost(&bob).await?;
    // `m.call.select_answer` may be dropped by the core when alice hangs up while it still
    // waits (behind a rate-limited candidates send) for its turn: the hangup ends the call on
    // every device anyway. The invite and the hangup must get through.
    for what in ["m.call.invite", "m.call.hangup"] {
        assert!(sent(&alice, what), "alice's {what} was not sent");
    }
    assert!(sent(&bob, "m.call.answer"), "bob's answer was not sent");
    let (a, b) = (alice.adapter.send_stats(), bob.adapter.send_stats());
    eprintln!("tight 1:1: {sends} sends; alice {a:?}; bob {b:?}");
    assert!(a.rate_limited + b.rate_limited > 0, "the limits never bit: alice {a:?}, bob {b:?}");
    assert_eq!(a.given_up + b.given_up, 0, "a send was given up: alice {a:?}, bob {b:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_server_group_call_join_see_leave_and_nothing_is_lost() -> Result<()> {
    let hs = tokio::task::spawn_blocking(voip_testkit::tight_synapse).await?;
    let mut alice = Peer::new_on(hs, "alice").await?;
    let bob = Peer::new_on(hs, "bob").await?;
    let carol = Peer::new_on(hs, "carol").await?;
    let room = room_with(&mut alice, &[&bob, &carol], true).await?;
    let phones: Vec<Phone> = [alice, bob, carol].into_iter().map(Phone::new).collect();
    let users: Vec<String> = phones.iter().map(|p| p.peer_user.clone()).collect();
    for p in &phones {
        p.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    }
    for (i, p) in phones.iter().enumerate() {
        let others: Vec<&str> =
            users.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, u)| u.as_str()).collect();
        wait_members(p, &room, &others).await?;
        joined(p).await?;
    }
    phones[2].command(leave_command(&room)).await;
    for p in &phones[..2] {
        saw_leave(p, &users[2]).await?;
    }
    wait_members(&phones[0], &room, &[&users[1]]).await?;
    wait_members(&phones[1], &room, &[&users[0]]).await?;

    let mut sends = 0;
    let mut limited = 0;
    for p in &phones {
        sends += nothing_lost(p).await?;
        let stats = p.adapter.send_stats();
        eprintln!("tight group: {} {stats:?}", p.peer_user);
        assert_eq!(stats.given_up, 0, "{}: a send was given up: {stats:?}", p.peer_user);
        limited += stats.rate_limited;
    }
    assert!(sent(&phones[2], "state org.matrix.msc3401.call.member"), "carol's membership sends");
    assert!(limited > 0, "the limits never bit ({sends} sends)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synapse stopped and restarted in the middle of a call

async fn own_synapse() -> Result<(Instance, Synapse)> {
    let instance = tokio::task::spawn_blocking(|| Instance::start(Limits::Generous)).await??;
    let hs = Synapse::of(&instance);
    Ok((instance, hs))
}

async fn stop(mut instance: Instance) -> Result<Instance> {
    tokio::task::spawn_blocking(move || {
        assert!(instance.stop()?, "Synapse was running");
        Ok(instance)
    })
    .await?
}

/// SIGKILL: a crash, no clean shutdown.
async fn crash(mut instance: Instance) -> Result<Instance> {
    tokio::task::spawn_blocking(move || {
        assert!(instance.is_running(), "Synapse was running");
        instance.kill();
        Ok(instance)
    })
    .await?
}

async fn restart(mut instance: Instance) -> Result<Instance> {
    tokio::task::spawn_blocking(move || {
        instance.restart()?;
        Ok(instance)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_crash_and_restart_in_a_one_to_one_call_hangup_sent_while_down_arrives() -> Result<()> {
    let (instance, hs) = own_synapse().await?;
    let mut alice = Peer::new_on(&hs, "alice").await?;
    let bob = Peer::new_on(&hs, "bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (alice, bob) = (Phone::new(alice), Phone::new(bob));
    let (call, _) = connect(&alice, &bob, &room).await?;
    // The set-up is complete on the wire (select_answer included) before the server goes.
    nothing_lost(&alice).await?;
    nothing_lost(&bob).await?;

    let instance = crash(instance).await?;
    // Hung up while the homeserver is down: the core keeps retrying the hangup (the adapter
    // makes one attempt per retry).
    alice.call(&call).hangup().await.expect("hangup");
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::LocalUser));
    let before = alice.adapter.send_stats();
    let instance = restart(instance).await?;
    assert_eq!(bob.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    assert!(sent(&alice, "m.call.hangup"));
    let after = alice.adapter.send_stats();
    assert!(after.transient > 0, "the hangup never failed while Synapse was down: {before:?} {after:?}");
    nothing_lost(&alice).await?;
    nothing_lost(&bob).await?;

    // Signalling after the restart: a new call connects and ends.
    let (call, _) = connect(&bob, &alice, &room).await?;
    bob.call(&call).hangup().await.expect("hangup");
    assert_eq!(alice.ended(&call).await?, (EndReason::UserHangup, Initiator::Remote));
    drop(instance);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_restart_in_a_group_call_members_stay_and_a_leave_after_it_arrives() -> Result<()> {
    let (instance, hs) = own_synapse().await?;
    let mut alice = Peer::new_on(&hs, "alice").await?;
    let bob = Peer::new_on(&hs, "bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (alice, bob) = (Phone::new(alice), Phone::new(bob));
    let (a, b) = (alice.peer_user.clone(), bob.peer_user.clone());
    for p in [&alice, &bob] {
        p.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    }
    wait_members(&alice, &room, &[&b]).await?;
    wait_members(&bob, &room, &[&a]).await?;
    nothing_lost(&alice).await?;
    nothing_lost(&bob).await?;

    let instance = stop(instance).await?;
    let instance = restart(instance).await?;
    // Both are still (or again: a delayed leave that fired while down is followed by a rejoin)
    // in the call, and the next leave reaches the other side.
    wait_members(&alice, &room, &[&b]).await?;
    wait_members(&bob, &room, &[&a]).await?;
    bob.command(leave_command(&room)).await;
    saw_leave(&alice, &b).await?;
    wait_members(&alice, &room, &[]).await?;
    nothing_lost(&bob).await?;
    drop(instance);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A client process killed without hanging up

/// This test binary run again as `faults::child_peer`: a real separate client process.
struct ChildPeer {
    process: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

const CHILD_PREFIX: &str = "VOIP-CHILD ";

impl ChildPeer {
    fn spawn(role: &str, user: &TestUser, room: &str) -> Result<ChildPeer> {
        let exe = std::env::current_exe().context("current exe")?;
        let mut process = Process::new(exe)
            .args(["faults::child_peer", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("VOIP_CHILD_ROLE", role)
            .env("VOIP_CHILD_USER", &user.user_id)
            .env("VOIP_CHILD_PASSWORD", &user.password)
            .env("VOIP_CHILD_HOMESERVER", &user.homeserver)
            .env("VOIP_CHILD_ROOM", room)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn child peer")?;
        let stdout = process.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            // libtest may print `test faults::child_peer ... ` before a report on the same line.
            for line in std::io::BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                match line.find(CHILD_PREFIX) {
                    Some(i) => {
                        if tx.send(line[i + CHILD_PREFIX.len()..].to_owned()).is_err() {
                            return;
                        }
                    }
                    None => eprintln!("child peer: {line}"),
                }
            }
        });
        Ok(ChildPeer { process, lines })
    }

    /// The child's next report starting with `prefix`.
    async fn expect(&mut self, prefix: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!("child peer exited before reporting {prefix}"),
                Err(_) => bail!("child peer: timed out waiting for {prefix}"),
            }
        }
    }

    /// SIGKILL: no hangup, no leave, no more heartbeats.
    fn kill(&mut self) -> Result<()> {
        self.process.kill().context("kill child")?;
        let status = self.process.wait()?;
        assert!(!status.success(), "the child was killed, not finished: {status}");
        Ok(())
    }
}

impl Drop for ChildPeer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The child process of the killed-client tests; does nothing unless `VOIP_CHILD_ROLE` is set.
/// Logs in a new device of the given user, joins the room, then answers the first call
/// (`answer`) or joins the room's MatrixRTC call (`join`), reports it on stdout and lives on
/// until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the killed-client tests as a child process"]
async fn child_peer() -> Result<()> {
    let Ok(role) = std::env::var("VOIP_CHILD_ROLE") else { return Ok(()) };
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} not set"));
    let say = |what: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{CHILD_PREFIX}{what}");
        let _ = out.flush();
    };
    let user = TestUser {
        user_id: var("VOIP_CHILD_USER")?,
        localpart: String::new(),
        password: var("VOIP_CHILD_PASSWORD")?,
        access_token: String::new(),
        admin: false,
        homeserver: var("VOIP_CHILD_HOMESERVER")?,
    };
    let room = var("VOIP_CHILD_ROOM")?;
    let peer = Peer::device(&user, None).await?;
    crate::join(&peer.client, &crate::rid(&room)?).await?;
    let phone = Phone::with_config(peer, short_config());
    say("READY");
    match role.as_str() {
        "answer" => {
            let call = phone.incoming().await?;
            phone.call(&call).answer().await.expect("answer");
            phone.state_reached(&call, CallState::Connected).await?;
            say(&format!("CONNECTED {call}"));
        }
        "join" => {
            phone.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
            joined(&phone).await?;
            say("JOINED");
        }
        other => bail!("unknown VOIP_CHILD_ROLE {other}"),
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    bail!("child peer was never killed")
}

/// Alice (in this process) and a child process logged in as Bob, in an encrypted room that Bob
/// joined from the child.
async fn alice_and_child(role: &str) -> Result<(Peer, ChildPeer, String, String)> {
    let mut alice = Peer::new("alice").await?;
    let bob = voip_testkit::register_user("bob").await?;
    let room = create_room(&alice, std::slice::from_ref(&bob.user_id), true).await?.to_string();
    let mut child = ChildPeer::spawn(role, &bob, &room)?;
    child.expect("READY").await?;
    alice.expect_member(&room, &bob.user_id, RoomMembership::Join).await?;
    Ok((alice, child, room, bob.user_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_process_killed_in_a_call_caller_ends_it_by_its_timers() -> Result<()> {
    let (alice, mut child, room, bob) = alice_and_child("answer").await?;
    let alice = Phone::with_config(alice, short_config());
    let call = alice.place_call(&room, &bob, None, Signalling::Room).await;
    alice.state_reached(&call, CallState::Connected).await?;
    let line = child.expect("CONNECTED").await?;
    assert_eq!(line, format!("CONNECTED {call}"));

    child.kill()?;
    // The media path died with the process (the fake engine is told so and never reconnects).
    alice.cut_media(&call);
    let (reason, initiator) = alice.ended(&call).await?;
    assert_eq!((reason, initiator), (EndReason::IceFailed, Initiator::Library));
    let restarts = alice.state.lock().unwrap().sends.values().filter(|w| *w == "m.call.negotiate").count();
    assert!(restarts >= 1, "no ICE restart was tried before giving up");
    // The hangup still goes out (to nobody listening) and nothing is left pending.
    nothing_lost(&alice).await?;
    assert!(sent(&alice, "m.call.hangup"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_process_killed_others_see_it_leave_by_delayed_leave() -> Result<()> {
    let (alice, mut child, room, bob) = alice_and_child("join").await?;
    let alice = Phone::with_config(alice, short_config());
    alice.command(join_command(&room, MembershipDialect::MatrixRtc)).await;
    child.expect("JOINED").await?;
    wait_members(&alice, &room, &[&bob]).await?;

    child.kill()?;
    // No leave was sent: the MSC4140 delayed leave scheduled at join (4 s, no more heartbeats)
    // is sent by the homeserver.
    saw_leave(&alice, &bob).await?;
    wait_members(&alice, &room, &[]).await?;
    Ok(())
}
