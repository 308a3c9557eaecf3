//! A mesh group call of three: everyone enters, every pair gets a peer call, audio flows, one
//! leaves, the others see it.
//!
//! `cargo run -p voip --example mesh_group_call`

use std::time::Duration;

use anyhow::{Context, Result};
use voip::local::LocalHomeserver;
use voip::webrtc::WebrtcConfig;
use voip::StreamExt;
use voip::{CallState, GroupCallBackend, GroupCallUpdate, VoipBuilder};

#[tokio::main]
async fn main() -> Result<()> {
    let hs = LocalHomeserver::new();
    let users = ["@ann:local", "@ben:local", "@cat:local"];
    let room = hs.create_room(&users);
    let mut groups = Vec::new();
    let mut voips = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let c = hs.connect(user, &format!("DEV{i}"));
        let voip =
            VoipBuilder::new(c.device, c.transport, c.inputs).webrtc(WebrtcConfig::loopback()).build()?;
        // famedly's `com.famedly.call.member` membership by default for mesh.
        let group = voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh).await?;
        group.enter().await?;
        groups.push(group);
        voips.push(voip);
    }

    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ready = groups.iter().all(|g| {
                let calls = g.peer_calls();
                calls.len() == 2 && calls.iter().all(|(_, c)| c.state() == CallState::Connected)
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the mesh did not connect")?;
    for (user, g) in users.iter().zip(&groups) {
        let peers: Vec<String> = g.participants().iter().map(|p| p.user_id.to_string()).collect();
        println!("{user}: connected to {}", peers.join(", "));
    }

    let mut ann_events = groups[0].updates();
    groups[2].leave().await?;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = ann_events.next().await {
            if let GroupCallUpdate::ParticipantsChanged { left, .. } = ev {
                if !left.is_empty() {
                    println!("{}: {} left", users[0], left[0].user_id);
                    return;
                }
            }
        }
    })
    .await
    .context("nobody saw cat leave")?;
    for g in &groups[..2] {
        g.leave().await?;
    }
    for v in &voips {
        v.shutdown().await;
    }
    Ok(())
}
