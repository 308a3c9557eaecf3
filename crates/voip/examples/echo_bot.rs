//! An echo bot: answers every call and sends the caller's own audio back.
//!
//! `cargo run -p voip --example echo_bot` runs the bot and a caller on the in-process homeserver
//! and checks that the caller receives its own audio. Against a real homeserver, build the bot's
//! `Voip` with `Voip::from_client(&client)?` and the same `WebrtcConfig`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use voip::core::media::MediaKind;
use voip::local::LocalHomeserver;
use voip::webrtc::{Echo, WebrtcConfig};
use voip::StreamExt;
use voip::{CallState, CallType, VoipBuilder};

#[tokio::main]
async fn main() -> Result<()> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@caller:local", "@echo:local"]);

    // The bot: its engine's audio source for each call is what it received on that call.
    let echo = Echo::new();
    let c = hs.connect("@echo:local", "BOT");
    let bot = VoipBuilder::new(c.device, c.transport, c.inputs)
        .webrtc(WebrtcConfig::loopback().with_sources(echo.clone()).with_sink(echo.clone()))
        .build()?;
    let mut incoming = bot.incoming_calls();
    tokio::spawn(async move {
        while let Some(call) = incoming.next().await {
            let _ = call.answer_with(CallType::Voice).await;
        }
    });

    // A caller with the bundled Opus tone.
    let c = hs.connect("@caller:local", "PHONE");
    let caller =
        VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(WebrtcConfig::loopback()).build()?;
    let call = caller.invite_to_call(&room, CallType::Voice, "@echo:local").await?;
    tokio::time::timeout(Duration::from_secs(20), call.wait_for_state(CallState::Connected))
        .await
        .context("not connected")?
        .context("ended")?;

    let engine = caller.webrtc().context("webrtc")?;
    let mut echoed = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        echoed = engine
            .remote_tracks(call.id())?
            .iter()
            .filter(|t| t.kind == MediaKind::Audio)
            .map(|t| t.stats.valid_opus)
            .sum::<u64>();
        if echoed >= 50 {
            break;
        }
    }
    println!("caller heard {echoed} of its own Opus packets back");
    call.hangup().await?;
    caller.shutdown().await;
    bot.shutdown().await;
    if echoed < 50 {
        bail!("the echo did not come back");
    }
    Ok(())
}
