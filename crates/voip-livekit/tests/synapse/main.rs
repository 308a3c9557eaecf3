//! LiveKit SFU mode against a real Synapse (voip-testkit) and a JWT service started here that
//! validates OpenID tokens with that Synapse and mints real LiveKit tokens.
//!
//! One test binary, so the tests share one homeserver (or the one in `SYNAPSE_URL`).
#![recursion_limit = "256"]

mod group;
mod jwt_service;
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
use tokio::sync::Notify;
use voip_core::{Config, Event, Input, LocalDevice, Output, Timestamp};
use voip_matrix::MatrixAdapter;
use voip_testkit::{Syncing, TestUser};

/// Generous: Synapse is ×3 slower when cargo saturates both cores.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

/// One logged-in device: an adapter, a sync loop, and a `voip_core::Voip` driven by both.
pub struct Device {
    pub user: TestUser,
    pub client: Client,
    pub adapter: MatrixAdapter,
    pub state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    _sync: Syncing,
}

pub struct State {
    pub voip: voip_core::Voip,
    pub events: Vec<Event>,
}

fn drain(st: &mut State, adapter: &MatrixAdapter) {
    while let Some(out) = st.voip.poll() {
        match out {
            Output::Send(req) => adapter.submit(req),
            // SFU mode: the core never drives a media engine.
            Output::Media { call_id, command } => panic!("media command in SFU mode: {call_id} {command:?}"),
            Output::Event(e) => st.events.push(e),
        }
    }
}

impl Device {
    pub async fn new(name: &str) -> Result<Device> {
        let user = voip_testkit::register_user(name).await?;
        let client = voip_testkit::login(&user, None).await?;
        // The adapter's handlers must exist before the first sync to see the initial state.
        let (adapter, mut inputs) = MatrixAdapter::new(client.clone());
        let sync = Syncing::start(&client).await?;
        let local = LocalDevice::new(user.user_id.clone(), client.device_id().context("device")?.to_string());
        let voip = voip_core::Voip::new(Config::default(), local, voip_core::seed_from_u64(now().0));
        let state = Arc::new(Mutex::new(State { voip, events: Vec::new() }));
        let wake = Arc::new(Notify::new());
        let (st, ad, wk) = (state.clone(), adapter.clone(), wake.clone());
        let task = tokio::spawn(async move {
            loop {
                let deadline = st.lock().unwrap().voip.next_deadline().map(|d| d.at);
                let sleep =
                    deadline.map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.since(now())));
                let input = tokio::select! {
                    i = inputs.recv() => match i { Some(i) => i, None => return },
                    _ = tokio::time::sleep(sleep) => Input::Tick,
                    _ = wk.notified() => continue,
                };
                let mut s = st.lock().unwrap();
                if let Err(e) = s.voip.handle(now(), input) {
                    tracing::warn!("input rejected: {e}");
                }
                drain(&mut s, &ad);
            }
        });
        Ok(Device { user, client, adapter, state, wake, task, _sync: sync })
    }

    pub fn user_id(&self) -> String {
        self.user.user_id.clone()
    }

    pub fn command(&self, command: voip_core::Command) {
        let mut s = self.state.lock().unwrap();
        s.voip.handle(now(), Input::Command(command)).expect("command accepted");
        drain(&mut s, &self.adapter);
        drop(s);
        self.wake.notify_one();
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
        self.task.abort();
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
