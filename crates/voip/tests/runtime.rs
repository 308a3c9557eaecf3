//! The runtime's driver on the in-process homeserver with voip-sim's fake media engine: it stops
//! when the last handle drops (no task left behind), a key callback may use the handles (it
//! deadlocked when the core ran under a lock), and a `ManualClock` drives the core's timers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use voip::core::Timestamp;
use voip::local::{LocalConnection, LocalHomeserver};
use voip::{
    CallState, CallType, Clock, EndReason, GroupCallBackend, Initiator, ManualClock, StreamExt, Voip,
    VoipBuilder, VoipError,
};
use voip_sim::FakeMedia;

fn builder(c: LocalConnection) -> VoipBuilder {
    // voip-sim's synchronous fake engine behind the channel interface of a real engine.
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = FakeMedia::new().into_engine(move |id, event| drop(tx.send((id, event))));
    VoipBuilder::new(c.device, c.transport, c.inputs).media_engine(Arc::new(engine), rx)
}

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_runtime_stops_when_the_last_handle_drops() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let alice = builder(hs.connect("@alice:local", "ALICE")).build()?;
    let mut incoming = alice.incoming_calls();
    // Resolves when the driver task has ended; holds no handle.
    let mut stopped = Box::pin(alice.stopped());
    let call = alice.invite_to_call(&room, CallType::Voice, "@bob:local").await?;
    let mut updates = call.updates();

    // Streams do not keep the runtime running; a `Call` does.
    drop(alice.clone());
    drop(alice);
    let early = tokio::time::timeout(Duration::from_millis(200), &mut stopped).await;
    assert!(early.is_err(), "a Call handle keeps the runtime running");
    assert_eq!(call.state(), CallState::InviteSent, "the call is alive: {:?}", call.info());
    call.hangup().await?;

    drop(call);
    tokio::time::timeout(BOUND, stopped).await.expect("the driver task ended");
    // Every stream ends: the call's after replaying its history, the incoming calls at once.
    let mut seen = Vec::new();
    while let Some(u) = tokio::time::timeout(BOUND, updates.next()).await.expect("the feed ends") {
        seen.push(format!("{u:?}"));
    }
    assert!(seen.iter().any(|u| u.starts_with("Ended")), "history replayed: {seen:?}");
    assert!(tokio::time::timeout(BOUND, incoming.next()).await.expect("ends").is_none());
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_task_and_later_commands_fail() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let alice = builder(hs.connect("@alice:local", "ALICE")).build()?;
    let stopped = alice.stopped();
    alice.shutdown().await;
    tokio::time::timeout(BOUND, stopped).await.expect("stopped");
    let refused = alice.invite_to_call(&room, CallType::Voice, "@bob:local").await;
    assert!(matches!(refused, Err(VoipError::Stopped)), "{refused:?}");
    Ok(())
}

/// A LiveKit key provider callback that reads a group call handle and sends a command from
/// inside the callback: before the driver, the callback ran under the runtime's lock and this
/// deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_callback_may_use_the_handles() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let backend = GroupCallBackend::LiveKit { service_url: "http://127.0.0.1:9/jwt".into(), alias: None };
    let slot: Arc<OnceLock<voip::GroupCall>> = Arc::new(OnceLock::new());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let alice = {
        let slot = slot.clone();
        builder(hs.connect("@alice:local", "ALICE"))
            .on_encryption_key(move |_event| {
                let Some(group) = slot.get() else { return };
                // A snapshot read and a command, from inside the callback.
                let keys = group.media_keys();
                let group = group.clone();
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let command = group.request_encryption_keys(None).await;
                    let _ = seen_tx.send((keys, command.is_ok()));
                });
            })
            .build()?
    };
    let bob = builder(hs.connect("@bob:local", "BOB")).build()?;
    let a = alice.fetch_or_create_group_call(&room, backend.clone()).await?;
    let _ = slot.set(a.clone());
    let b = bob.fetch_or_create_group_call(&room, backend).await?;
    a.enter().await?;
    b.enter().await?;
    let (keys, command_ok) = tokio::time::timeout(BOUND, seen.recv()).await.expect("a key arrived").unwrap();
    assert!(keys.is_some(), "the snapshot the callback read already has the keys");
    assert!(command_ok, "a command sent from the callback's task was handled");
    drop(slot);
    a.leave().await?;
    b.leave().await?;
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}

/// Time comes from the clock: an unanswered invite times out when the manual clock passes its
/// lifetime, without waiting 90 s.
#[tokio::test]
async fn a_manual_clock_drives_the_timers() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let clock = ManualClock::new(voip::clock::SystemClock.now());
    let alice = builder(hs.connect("@alice:local", "ALICE")).clock(clock.clone()).build()?;
    let bob = builder(hs.connect("@bob:local", "BOB")).clock(clock.clone()).build()?;
    let mut incoming = bob.incoming_calls();
    let mut missed = bob.missed_calls();
    let call = alice.invite_to_call(&room, CallType::Voice, "@bob:local").await?;
    let ringing = tokio::time::timeout(BOUND, incoming.next()).await.expect("bob rings").expect("running");
    assert_eq!(ringing.id(), call.id());
    // Nothing happens while the clock stands still.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call.state(), CallState::InviteSent);
    let start = clock.now();
    clock.set(Timestamp(start.0 + voip::Config::default().invite_lifetime_ms + 1));
    let ended = tokio::time::timeout(BOUND, call.ended()).await.expect("timed out by the clock");
    assert_eq!(ended, Some((EndReason::InviteTimeout, Initiator::Library)));
    let m = tokio::time::timeout(BOUND, missed.next()).await.expect("a missed call").expect("running");
    assert_eq!(&m.call_id, call.id());
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}

/// Room and user ids may be ruma's, `&str` or this crate's.
#[tokio::test]
async fn ids_of_every_kind_are_accepted() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let alice: Voip = builder(hs.connect("@alice:local", "ALICE")).build()?;
    let ruma_room = matrix_sdk::ruma::RoomId::parse(room.as_str()).expect("room id");
    let ruma_user = matrix_sdk::ruma::UserId::parse("@bob:local").expect("user id");
    let a = alice.invite_to_call(&*ruma_room, CallType::Voice, &*ruma_user).await?;
    let b =
        alice.invite_to_call(room.as_str(), CallType::Voice, voip::core::UserId::from("@bob:local")).await;
    // The second call to the same user is refused or placed: either way the ids were accepted.
    assert_eq!(a.room_id().as_ref(), Some(&room));
    assert!(b.is_ok() || matches!(b, Err(VoipError::Core(_))), "{b:?}");
    alice.shutdown().await;
    Ok(())
}
