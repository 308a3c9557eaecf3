//! Integration tests of the matrix-sdk adapter against a real Synapse (voip-testkit).
//!
//! One test binary so the whole suite shares one homeserver (or the one in `SYNAPSE_URL`).
//! Every test uses its own users, devices and rooms, so tests run in parallel.
#![recursion_limit = "256"]

mod calls;
mod faults;
mod group;
mod plumbing;
mod restart;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use matrix_sdk::Client;
use serde_json::json;
use tokio::sync::mpsc;
use voip_core::{Input, RoomMembership};
use voip_matrix::MatrixAdapter;
use voip_testkit::{Syncing, TestUser};

/// Generous: Synapse is ×3 slower when cargo saturates both cores.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One logged-in device with an adapter and a running sync loop.
pub struct Peer {
    pub user: TestUser,
    pub client: Client,
    pub adapter: MatrixAdapter,
    pub inputs: mpsc::Receiver<Input>,
    pub sync: Option<Syncing>,
}

impl Peer {
    /// A new user with one device.
    pub async fn new(name: &str) -> Result<Peer> {
        let user = voip_testkit::register_user(name).await?;
        Peer::device(&user, None).await
    }

    /// A new user with one device on the homeserver `hs` (not the shared one).
    pub async fn new_on(hs: &voip_testkit::Synapse, name: &str) -> Result<Peer> {
        let user = voip_testkit::register_user_on(hs, name).await?;
        Peer::device(&user, None).await
    }

    /// Another device of `user` (on the user's homeserver).
    pub async fn device(user: &TestUser, device_id: Option<&str>) -> Result<Peer> {
        let client = voip_testkit::login(user, device_id).await?;
        // The adapter's handlers must exist before the first sync to see the initial state.
        let (adapter, inputs) = MatrixAdapter::new(client.clone());
        let sync = Some(Syncing::start(&client).await?);
        Ok(Peer { user: user.clone(), client, adapter, inputs, sync })
    }

    pub fn user_id(&self) -> String {
        self.user.user_id.clone()
    }

    pub fn device_id(&self) -> String {
        self.client.device_id().expect("logged in").to_string()
    }

    /// Receives inputs until `pick` accepts one (others are dropped), or fails after
    /// [`TIMEOUT`].
    pub async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Input) -> Option<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.inputs.recv()).await {
                Ok(Some(input)) => {
                    if let Some(v) = pick(&input) {
                        return Ok(v);
                    }
                }
                Ok(None) => bail!("input channel closed while waiting for {what}"),
                Err(_) => bail!("{}: timed out after {TIMEOUT:?} waiting for {what}", self.user.user_id),
            }
        }
    }

    /// Waits until this peer's inputs say `user` has `membership` in `room`.
    pub async fn expect_member(&mut self, room: &str, user: &str, membership: RoomMembership) -> Result<()> {
        self.expect(&format!("{user} {membership:?} in {room}"), |i| match i {
            Input::RoomMember(m) if m.room_id.as_str() == room && m.user_id.as_str() == user => {
                (m.membership == membership).then_some(())
            }
            _ => None,
        })
        .await
    }
}

/// `creator` makes a private room with `others` invited (encrypted or not) and every other
/// user joins; returns the room id once the creator has seen all of them join.
pub async fn room_with(creator: &mut Peer, others: &[&Peer], encrypted: bool) -> Result<String> {
    let invite: Vec<String> = others.iter().map(|p| p.user_id()).collect();
    let room_id = create_room(creator, &invite, encrypted).await?;
    for p in others {
        join(&p.client, &room_id).await?;
    }
    let rid = room_id.to_string();
    for p in others {
        creator.expect_member(&rid, &p.user_id(), RoomMembership::Join).await?;
    }
    Ok(rid)
}

/// `creator` makes a private room (a DM when one user is invited) with `invite` invited, where
/// every member may send group-call membership state; nobody joins yet.
pub async fn create_room(creator: &Peer, invite: &[String], encrypted: bool) -> Result<OwnedRoomId> {
    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.is_direct = invite.len() == 1;
    req.invite = invite.iter().map(|u| OwnedUserId::try_from(u.as_str())).collect::<Result<_, _>>()?;
    if encrypted {
        req.initial_state = vec![InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any()];
    }
    // Let every member send group-call membership state (both dialects).
    req.power_level_content_override = Some(
        Raw::new(&json!({
            "events": { "org.matrix.msc3401.call.member": 0, "com.famedly.call.member": 0 }
        }))?
        .cast_unchecked(),
    );
    let room = creator.client.create_room(req).await.context("create room")?;
    Ok(room.room_id().to_owned())
}

pub async fn join(client: &Client, room_id: &OwnedRoomId) -> Result<()> {
    // The invite may not have reached this client's sync yet; joining by id works regardless.
    client.join_room_by_id(room_id).await.context("join")?;
    voip_testkit::wait_for("joined room in store", TIMEOUT, || async {
        client.get_room(room_id).filter(|r| r.state() == matrix_sdk::RoomState::Joined)
    })
    .await?;
    Ok(())
}

/// Parses a room id.
pub fn rid(room: &str) -> Result<OwnedRoomId> {
    Ok(OwnedRoomId::try_from(room)?)
}
