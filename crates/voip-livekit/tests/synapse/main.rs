//! LiveKit SFU mode against a real Synapse (voip-testkit) and a JWT service started here that
//! validates OpenID tokens with that Synapse and mints real LiveKit tokens.
//!
//! One test binary, so the tests share one homeserver (or the one in `SYNAPSE_URL`).
#![recursion_limit = "256"]

mod group;
mod token;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::OwnedUserId;
use matrix_sdk::Client;
use serde_json::json;
use voip_core::{Config, Event, LocalDevice, Timestamp};
use voip_matrix::MatrixAdapter;
use voip_testkit::{jwt_service, Syncing, TestUser};

/// Generous: Synapse is ×3 slower when cargo saturates both cores.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

/// One logged-in device: an adapter, a sync loop, and the `voip` runtime's driver running a
/// core over both (SFU mode: no media engine is ever asked for anything).
pub struct Device {
    pub user: TestUser,
    pub client: Client,
    pub adapter: MatrixAdapter,
    pub voip: voip::Voip,
    pub state: Arc<Mutex<State>>,
    group: tokio::sync::Mutex<Option<voip::GroupCall>>,
    record: tokio::task::JoinHandle<()>,
    _sync: Syncing,
}

/// The app events the device's runtime reported.
pub struct State {
    pub events: Vec<Event>,
}

/// SFU mode drives no media engine: a media command is a bug.
struct NoMedia;

impl voip::MediaEngine for NoMedia {
    fn execute(&self, call_id: voip_core::CallId, command: voip_core::MediaCommand) {
        panic!("media command in SFU mode: {call_id} {command:?}");
    }
}

impl Device {
    pub async fn new(name: &str) -> Result<Device> {
        let user = voip_testkit::register_user(name).await?;
        let client = voip_testkit::login(&user, None).await?;
        // The adapter's handlers must exist before the first sync to see the initial state.
        let (adapter, inputs) = MatrixAdapter::new(client.clone());
        let sync = Syncing::start(&client).await?;
        let local = LocalDevice::new(user.user_id.clone(), client.device_id().context("device")?.to_string());
        let (_media_tx, media_rx) = tokio::sync::mpsc::unbounded_channel();
        let voip = voip::VoipBuilder::new(local, adapter.clone(), inputs)
            .config(Config::default())
            .seed(voip_core::seed_from_u64(now().0))
            .media_engine(Arc::new(NoMedia), media_rx)
            .build()?;
        let state = Arc::new(Mutex::new(State { events: Vec::new() }));
        let mut events = voip.events();
        let st = state.clone();
        let record = tokio::spawn(async move {
            use voip::StreamExt;
            while let Some(e) = events.next().await {
                st.lock().unwrap().events.push(e);
            }
        });
        Ok(Device {
            user,
            client,
            adapter,
            voip,
            state,
            group: tokio::sync::Mutex::new(None),
            record,
            _sync: sync,
        })
    }

    pub fn user_id(&self) -> String {
        self.user.user_id.clone()
    }

    /// Runs a core command through the runtime; it must be accepted.
    pub async fn command(&self, command: voip_core::Command) {
        self.voip.command(command).await.expect("command accepted");
    }

    /// The handle on `group` (kept, so the runtime publishes its snapshot).
    pub async fn group(&self, group: &voip_core::GroupCallId) -> voip::GroupCall {
        let mut slot = self.group.lock().await;
        if let Some(g) = slot.as_ref().filter(|g| g.id() == group) {
            return g.clone();
        }
        let backend = voip::GroupCallBackend::Mesh; // only read by `enter`; tests join by command
        let g = self.voip.fetch_or_create_group_call(&group.room_id, backend).await.expect("runtime running");
        *slot = Some(g.clone());
        g
    }

    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Waits until `pick` finds something in the state.
    pub async fn wait<T>(&self, what: &str, mut pick: impl FnMut(&State) -> Option<T>) -> Result<T> {
        voip_testkit::wait_for(&format!("{}: {what}", self.user.user_id), TIMEOUT, || {
            let found = pick(&self.state.lock().unwrap());
            async move { found }
        })
        .await
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.record.abort();
    }
}

/// `devices[0]` makes an encrypted private room, every other device's user joins; returns its
/// id once everyone is in.
pub async fn room_with(devices: &[Device]) -> Result<String> {
    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.invite =
        devices[1..].iter().map(|d| OwnedUserId::try_from(d.user_id().as_str())).collect::<Result<_, _>>()?;
    req.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    req.power_level_content_override = Some(
        Raw::new(&json!({"events": {"org.matrix.msc3401.call.member": 0, "com.famedly.call.member": 0}}))?
            .cast_unchecked(),
    );
    let room = devices[0].client.create_room(req).await.context("create room")?;
    let room_id = room.room_id().to_owned();
    for d in &devices[1..] {
        d.client.join_room_by_id(&room_id).await.context("join")?;
    }
    for d in devices {
        voip_testkit::wait_for("everyone joined", TIMEOUT, || async {
            let r = d.client.get_room(&room_id)?;
            let members = r.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
            (members.len() == devices.len()).then_some(())
        })
        .await?;
    }
    Ok(room_id.to_string())
}
