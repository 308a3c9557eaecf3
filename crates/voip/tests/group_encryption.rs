//! The per-call media encryption of LiveKit group calls through the public API (#20 item 4):
//! `GroupCallOptions::media_encryption(MediaEncryption::None)` joins without media keys (none is
//! made, none reaches the key callback), while the default in an encrypted room (the in-process
//! homeserver's rooms are) runs per-participant keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use voip::core::MediaEncryption;
use voip::local::{LocalConnection, LocalHomeserver};
use voip::{GroupCallBackend, GroupCallOptions, Voip, VoipBuilder, VoipError};
use voip_sim::FakeMedia;

/// A device whose key callback counts the keys it is given.
fn device(c: LocalConnection, keys: Arc<Mutex<usize>>) -> Result<Voip, VoipError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = FakeMedia::new().into_engine(move |id, event| drop(tx.send((id, event))));
    VoipBuilder::new(c.device, c.transport, c.inputs)
        .media_engine(Arc::new(engine), rx)
        .on_encryption_key(move |_| *keys.lock().unwrap() += 1)
        .build()
}

const BOUND: Duration = Duration::from_secs(10);

async fn until(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn call(
    encryption: Option<MediaEncryption>,
) -> Result<(usize, usize, Option<MediaEncryption>), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let (alice_keys, bob_keys) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let alice = device(hs.connect("@alice:local", "ALICE"), alice_keys.clone())?;
    let bob = device(hs.connect("@bob:local", "BOB"), bob_keys.clone())?;
    let backend = GroupCallBackend::LiveKit { service_url: "http://127.0.0.1:9/jwt".into(), alias: None };
    let options = |b: GroupCallBackend| match encryption {
        Some(e) => GroupCallOptions::new(b).media_encryption(e),
        None => GroupCallOptions::new(b),
    };
    let a = alice.fetch_or_create_group_call(&room, options(backend.clone())).await?;
    let b = bob.fetch_or_create_group_call(&room, options(backend)).await?;
    a.enter().await?;
    b.enter().await?;
    until("both see each other", || a.participants().len() == 1 && b.participants().len() == 1).await;
    // Give keys time to travel (in-process: milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mode = a.info().encryption;
    let counted = (*alice_keys.lock().unwrap(), *bob_keys.lock().unwrap());
    a.leave().await?;
    b.leave().await?;
    alice.shutdown().await;
    bob.shutdown().await;
    Ok((counted.0, counted.1, mode))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_joined_without_media_encryption_exchanges_no_keys() -> Result<(), VoipError> {
    let (alice_keys, bob_keys, mode) = call(Some(MediaEncryption::None)).await?;
    assert_eq!(mode, Some(MediaEncryption::None));
    assert_eq!((alice_keys, bob_keys), (0, 0), "no key made or received");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_encrypted_room_gets_per_participant_keys() -> Result<(), VoipError> {
    let (alice_keys, bob_keys, mode) = call(None).await?;
    assert_eq!(mode, Some(MediaEncryption::PerParticipantKeys));
    // Each gets its own key and the other's.
    assert!(alice_keys >= 2 && bob_keys >= 2, "keys: alice {alice_keys}, bob {bob_keys}");
    Ok(())
}
