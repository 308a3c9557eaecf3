//! A 1:1 voice call between two devices, start to finish: place, ring, answer, connect, hang up.
//!
//! `cargo run -p voip --example one_to_one` (in-process homeserver, real webrtc-rs media on
//! loopback). With matrix-sdk, build each `Voip` with `Voip::from_client(&client)?` instead.

use std::time::Duration;

use anyhow::{Context, Result};
use voip::local::LocalHomeserver;
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{CallState, CallType, CallUpdate, VoipBuilder};

#[tokio::main]
async fn main() -> Result<()> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@alice:local", "@bob:local"]);
    let start = |user: &str, device: &str| {
        let c = hs.connect(user, device);
        VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(WebrtcConfig::loopback()).build()
    };
    let alice = start("@alice:local", "ALICE")?;
    let bob = start("@bob:local", "BOB")?;

    // Bob answers whatever rings.
    let mut incoming = bob.incoming_calls();
    tokio::spawn(async move {
        while let Some(call) = incoming.next().await {
            println!("bob: {} is calling", call.remote_user().map(|u| u.to_string()).unwrap_or_default());
            let _ = call.answer().await;
        }
    });

    let call = alice.invite_to_call(&room, CallType::Voice, "@bob:local").await?;
    let mut events = call.updates();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.next().await {
            match ev {
                CallUpdate::StateChanged(state) => {
                    println!("alice: {state:?}");
                    if state == CallState::Connected {
                        break;
                    }
                }
                CallUpdate::Ended { reason, .. } => anyhow::bail!("ended early: {reason:?}"),
                _ => {}
            }
        }
        Ok(())
    })
    .await
    .context("no connection within 20 s")??;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = alice.webrtc().context("webrtc")?.stats(call.id()).await?;
    println!("alice: stats after 1 s: {stats:?}");
    call.hangup().await?;
    println!("alice: ended: {:?}", call.ended().await);
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}
