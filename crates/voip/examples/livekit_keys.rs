//! LiveKit SFU mode: the library handles membership (Element Call's MatrixRTC format) and media
//! keys; the app's LiveKit client gets the keys through a key provider.
//!
//! Here three devices on the in-process homeserver each install an `InMemoryKeyProvider` (the
//! LiveKit key provider's shape: `set_key(identity, index, key)`); when one leaves, the others'
//! providers receive rotated keys. With a real homeserver and JWT service,
//! `GroupCall::livekit_credentials()` gives the `url` and `jwt` for `Room::connect`, and the
//! provider is handed to the LiveKit SDK's E2EE options (see docs/livekit.md).
//!
//! `cargo run -p voip --example livekit_keys`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use voip::livekit_sfu::{IdentityScheme, InMemoryKeyProvider, KeyProviderOptions};
use voip::local::LocalHomeserver;
use voip::webrtc::WebrtcConfig;
use voip::{GroupCallBackend, VoipBuilder};

#[tokio::main]
async fn main() -> Result<()> {
    let hs = LocalHomeserver::new();
    let users = ["@ann:local", "@ben:local", "@cat:local"];
    let room = hs.create_room(&users);
    let backend = GroupCallBackend::LiveKit { service_url: "https://jwt.example.org".into(), alias: None };
    let (mut groups, mut providers, mut voips) = (Vec::new(), Vec::new(), Vec::new());
    for (i, user) in users.iter().enumerate() {
        let c = hs.connect(user, &format!("DEV{i}"));
        let provider = Arc::new(Mutex::new(InMemoryKeyProvider::new(KeyProviderOptions::element_call())));
        let voip = VoipBuilder::new(c.device, c.transport, c.inputs)
            .webrtc(WebrtcConfig::loopback())
            .livekit_key_provider(provider.clone(), IdentityScheme::Plain)
            .build()?;
        let group = voip.fetch_or_create_group_call(&room, backend.clone()).await?;
        group.enter().await?;
        groups.push(group);
        providers.push(provider);
        voips.push(voip);
    }
    let identities = |i: usize| providers[i].lock().map(|p| p.identities().len()).unwrap_or(0);
    wait("every provider holds three identities' keys", || (0..3).all(|i| identities(i) == 3)).await?;
    let index = |i: usize| providers[i].lock().ok().and_then(|p| p.latest_key_index());
    println!("key indices before the leave: {:?}", (0..3).map(index).collect::<Vec<_>>());

    // Read before leaving: the rotation may land before `leave()` returns.
    let before = (index(0), index(1));
    groups[2].leave().await?;
    wait("ann and ben install rotated keys", || index(0) != before.0 && index(1) != before.1).await?;
    println!("key indices after cat left: {:?} {:?}", index(0), index(1));
    let ben = format!("{}:DEV1", users[1]);
    let key_for_ben = providers[0].lock().ok().and_then(|p| p.frame_key(&ben, index(1)?));
    if key_for_ben.is_none() {
        bail!("ann has no frame key for ben's new index");
    }
    println!("ann can decrypt ben's new frames (AES-128 frame key derived with HKDF, as Element Call)");
    for v in &voips {
        v.shutdown().await;
    }
    Ok(())
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("{what}: not within 20 s"))
}
