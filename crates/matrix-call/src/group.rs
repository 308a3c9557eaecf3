//! `join`: a room's group call, mesh (real media with every member) or LiveKit (membership,
//! credentials and media keys for a LiveKit client; no media here).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use voip::webrtc::media::audio::WavSource;
use voip::{GroupCallBackend, GroupCallOptions, GroupCallState, GroupCallUpdate, StreamExt};

use crate::call::MediaOptions;
use crate::error::{one_line, CliError};
use crate::Ctx;

/// How to join.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Every member calls every other member.
    Mesh,
    /// A LiveKit SFU behind this MatrixRTC JWT service.
    LiveKit(String),
}

/// Joins the group call of `room` and stays until Ctrl-C or `leave_after`.
pub async fn join(
    ctx: &Ctx,
    room: &str,
    backend: Backend,
    media: &MediaOptions,
    leave_after: Option<Duration>,
    show_keys: bool,
) -> Result<(), CliError> {
    media.check()?;
    let out = &ctx.out;
    let room = crate::session::joined_room(&ctx.client, room).await?;
    let room_id = room.room_id().to_string();
    let (focus, label) = match &backend {
        Backend::Mesh => (json!({ "type": "mesh" }), "mesh".to_owned()),
        Backend::LiveKit(url) => (
            json!({ "type": "livekit", "livekit_service_url": url, "livekit_alias": room_id }),
            format!("LiveKit via {url}, alias {room_id}"),
        ),
    };
    let livekit = matches!(backend, Backend::LiveKit(_));
    let backend = match backend {
        Backend::Mesh => GroupCallBackend::Mesh,
        Backend::LiveKit(url) => GroupCallBackend::LiveKit { service_url: url, alias: None },
    };
    let group = ctx
        .voip
        .fetch_or_create_group_call(&room_id, GroupCallOptions::new(backend))
        .await
        .map_err(|e| CliError::CallFailed(one_line(&e)))?;
    let mut updates = group.updates();
    group.enter().await.map_err(|e| CliError::CallFailed(one_line(&e)))?;
    out.event("joining", json!({ "room_id": room_id, "focus": focus }), || {
        format!("Joining the group call of {room_id} ({label})")
    });
    let mut credentials_fetched = !livekit;
    let started = Instant::now();
    let leave_at = leave_after.map(|d| tokio::time::Instant::now() + d);
    let mut leaving = false;
    // After our leave is sent, the `Left` state ends the loop; never wait for it for long.
    let mut give_up: Option<tokio::time::Instant> = None;
    let mut interrupted = false;
    let mut playing: HashSet<String> = HashSet::new();
    let mut rates = std::collections::HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            update = updates.next() => {
                let Some(update) = update else { break };
                match update {
                    GroupCallUpdate::StateChanged(state) => {
                        out.event("group_state", json!({ "room_id": room_id, "state": state }), || format!("Group call: {state:?}"));
                        if state == GroupCallState::Joined && !credentials_fetched {
                            credentials_fetched = true;
                            match group.livekit_credentials().await {
                                Ok(c) => {
                                    let expires = c.expires_at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
                                    out.event("livekit_credentials", json!({
                                        "service_url": c.service_url, "url": c.url, "jwt": c.jwt, "room": c.room,
                                        "identity": c.identity, "expires_at": expires,
                                    }), || format!("LiveKit: connect to {} room {} as {}\n  jwt {}", c.url, c.room, c.identity, c.jwt));
                                }
                                Err(e) => {
                                    out.event("livekit_credentials_failed", json!({ "error": one_line(&e) }), || {
                                        format!("LiveKit credentials: {}", one_line(&e))
                                    });
                                }
                            }
                        }
                        if state == GroupCallState::Left {
                            break;
                        }
                    }
                    GroupCallUpdate::ParticipantsChanged { joined, left, .. } => {
                        let participants = group.participants();
                        let ids = |ps: &[voip::Participant]| ps.iter().map(|p| p.livekit_identity()).collect::<Vec<_>>();
                        let (j, l, all) = (ids(&joined), ids(&left), ids(&participants));
                        out.event("participants", json!({ "joined": j, "left": l, "participants": all }), || {
                            format!("Participants ({}): {}{}{}", all.len(), all.join(", "),
                                if j.is_empty() { String::new() } else { format!("; joined {}", j.join(", ")) },
                                if l.is_empty() { String::new() } else { format!("; left {}", l.join(", ")) })
                        });
                    }
                    GroupCallUpdate::EncryptionKey { participant, local, index, key } => {
                        let who = participant.livekit_identity();
                        let mut fields = json!({ "participant": who, "local": local, "index": index });
                        if show_keys {
                            fields["key"] = json!(key);
                        }
                        out.event("encryption_key", fields, || {
                            format!("Media key {index} of {who}{}{}", if local { " (ours)" } else { "" },
                                if show_keys { format!(": {key}") } else { String::new() })
                        });
                    }
                    _ => {}
                }
            }
            _ = ticker.tick() => {
                let peers = group.peer_calls();
                if let Some(p) = &media.play {
                    for (_, call) in &peers {
                        if playing.insert(call.id().as_str().to_owned()) {
                            if let Ok(wav) = WavSource::open(p) {
                                if media.loop_play { call.replace_audio_input(wav.looped()); } else { call.replace_audio_input(wav); }
                            }
                        }
                    }
                }
                if !livekit {
                    let connected: Vec<voip::core::CallId> = peers
                        .iter()
                        .filter(|(_, c)| c.state() == voip::CallState::Connected)
                        .map(|(_, c)| c.id().clone())
                        .collect();
                    let label = format!("{}/{} peers", connected.len(), group.participants().len());
                    let mut status = crate::call::sample_calls(ctx, &connected, &label, started, &mut rates).await;
                    status.call_id = room_id.clone();
                    out.status(&status);
                }
            }
            _ = sleep_until(leave_at), if !leaving => {
                leaving = true;
                give_up = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                leave(ctx, &group).await;
            }
            _ = ctx.interrupt.wait(), if !interrupted => {
                interrupted = true;
                if !leaving {
                    leaving = true;
                    give_up = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    leave(ctx, &group).await;
                }
            }
            _ = sleep_until(give_up) => break,
        }
    }
    out.finish();
    out.event("left", json!({ "room_id": room_id }), || "Left the group call".into());
    if interrupted {
        Err(CliError::Interrupted)
    } else {
        Ok(())
    }
}

async fn leave(ctx: &Ctx, group: &voip::GroupCall) {
    ctx.out.event("leaving", json!({}), || "Leaving".into());
    if let Err(e) = group.leave().await {
        tracing::warn!("leave: {e}");
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
