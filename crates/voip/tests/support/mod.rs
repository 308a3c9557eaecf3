//! Shared by the end-to-end tests and the demo: people with a `Voip` on a real homeserver, and
//! rooms they have all joined.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::OwnedUserId;
use voip::core::media::{MediaKind, StreamPurpose};
use voip::core::{Config, RoomId};
use voip::webrtc::WebrtcConfig;
use voip::{Call, Voip};

/// Generous: Synapse is slower when cargo saturates both cores.
pub const STEP: Duration = Duration::from_secs(30);

/// One logged-in device with a running sync loop and a `Voip` on real webrtc-rs media.
pub struct MatrixPerson {
    pub voip: Voip,
    pub client: matrix_sdk::Client,
    _sync: Syncing,
}

/// How a [`MatrixPerson`]'s client syncs (docs/benchmarks.md, "Sync modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// `voip_testkit::Syncing`: `sync_once` in a loop with a 2 s long-poll.
    TestLoop,
    /// `voip::sync::SyncLoop`: the library's loop without matrix-sdk's 1 s pause.
    Helper,
    /// matrix-sdk's `Client::sync` (sleeps 1 s after a response that came within a second).
    ClientSync,
    /// matrix-sdk-ui's `SyncService` from `voip::sync::sync_service` (feature `sync-service`).
    #[cfg(feature = "sync-service")]
    Service,
}

impl SyncMode {
    /// The mode named `s` (`test-loop`, `helper`, `client-sync`, `sync-service`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "test-loop" => Self::TestLoop,
            "helper" => Self::Helper,
            "client-sync" => Self::ClientSync,
            #[cfg(feature = "sync-service")]
            "sync-service" => Self::Service,
            _ => return None,
        })
    }
}

enum Syncing {
    TestLoop(#[allow(dead_code)] voip_testkit::Syncing),
    Helper(#[allow(dead_code)] voip::sync::SyncLoop),
    #[cfg(feature = "sync-service")]
    Service(#[allow(dead_code)] matrix_sdk_ui::sync_service::SyncService),
}

impl Syncing {
    async fn start(client: &matrix_sdk::Client, mode: SyncMode) -> Result<Self> {
        use matrix_sdk::config::SyncSettings;
        Ok(match mode {
            SyncMode::TestLoop => Syncing::TestLoop(voip_testkit::Syncing::start(client).await?),
            SyncMode::Helper => {
                Syncing::Helper(voip::sync::SyncLoop::start(client, SyncSettings::default()).await?)
            }
            SyncMode::ClientSync => {
                Syncing::TestLoop(voip_testkit::Syncing::start_client_sync(client).await?)
            }
            #[cfg(feature = "sync-service")]
            SyncMode::Service => {
                use matrix_sdk_ui::sync_service::State;
                let service = voip::sync::sync_service(client).await?;
                service.start().await;
                let mut state = service.state();
                within("sync service running", async {
                    loop {
                        match state.get() {
                            State::Running => return Ok(()),
                            State::Error(e) => anyhow::bail!("sync service failed: {e}"),
                            _ => {}
                        }
                        state.next().await;
                    }
                })
                .await??;
                // The encryption sync has uploaded this device's keys (others can share Megolm
                // sessions with it and Olm-encrypt to it).
                let me = client.user_id().context("logged in")?.to_owned();
                let device = client.device_id().context("device")?.to_owned();
                voip_testkit::wait_for("own device keys uploaded", STEP, || {
                    let (probe, me, device) = (client.clone(), me.clone(), device.clone());
                    async move {
                        let mut req = matrix_sdk::ruma::api::client::keys::get_keys::v3::Request::new();
                        req.device_keys.insert(me.clone(), vec![]);
                        let resp = probe.send(req).await.ok()?;
                        resp.device_keys.get(&me)?.get(&device).map(|_| ())
                    }
                })
                .await?;
                Syncing::Service(service)
            }
        })
    }
}

impl MatrixPerson {
    /// Registers `name` on `hs`, logs in, builds the `Voip` (before the first sync, so it sees the
    /// initial state) and starts syncing.
    pub async fn new(hs: &voip_testkit::Synapse, name: &str, config: Config) -> Result<Self> {
        Self::with_sync(hs, name, config, SyncMode::TestLoop).await
    }

    /// [`MatrixPerson::new`] syncing in `mode`.
    pub async fn with_sync(
        hs: &voip_testkit::Synapse,
        name: &str,
        config: Config,
        mode: SyncMode,
    ) -> Result<Self> {
        Self::with_media(hs, name, config, mode, WebrtcConfig::loopback()).await
    }

    /// [`MatrixPerson::with_sync`] with its own media configuration (e.g. relay-only).
    #[allow(dead_code)] // Not every test target uses it.
    pub async fn with_media(
        hs: &voip_testkit::Synapse,
        name: &str,
        config: Config,
        mode: SyncMode,
        media: WebrtcConfig,
    ) -> Result<Self> {
        let user = voip_testkit::register_user_on(hs, name).await?;
        let client = voip_testkit::login(&user, None).await?;
        let voip = Voip::from_client(&client)?.config(config).webrtc(media).build()?;
        let _sync = Syncing::start(&client, mode).await?;
        Ok(Self { voip, client, _sync })
    }
}

/// An encrypted room created by `members[0]` that every member has joined (and every member's
/// client knows that). Every member may send group-call membership state of both formats.
pub async fn encrypted_room(members: &[&matrix_sdk::Client]) -> Result<RoomId> {
    let mut req = Request::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.is_direct = members.len() == 2;
    req.invite = members[1..]
        .iter()
        .map(|c| c.user_id().map(|u| u.to_owned()).context("logged in"))
        .collect::<Result<Vec<OwnedUserId>>>()?;
    req.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    req.power_level_content_override = Some(
        Raw::new(&serde_json::json!({
            "events": { "org.matrix.msc3401.call.member": 0, "com.famedly.call.member": 0 }
        }))?
        .cast_unchecked(),
    );
    let room = members[0].create_room(req).await.context("create room")?;
    let id = room.room_id().to_owned();
    for c in &members[1..] {
        c.join_room_by_id(&id).await.context("join")?;
    }
    // Every client has synced every join (so every core has seen it too).
    let users: Vec<OwnedUserId> = members.iter().filter_map(|c| c.user_id().map(|u| u.to_owned())).collect();
    for c in members {
        voip_testkit::wait_for("every member joined", STEP, || async {
            let r = c.get_room(&id)?;
            for u in &users {
                let m = r.get_member_no_sync(u).await.ok()??;
                if *m.membership() != MembershipState::Join {
                    return None;
                }
            }
            Some(())
        })
        .await?;
    }
    Ok(RoomId::from(id.as_str()))
}

/// Packets received on a call's live remote tracks of one kind (and purpose, if given).
pub fn received(voip: &Voip, call: &Call, kind: MediaKind, purpose: Option<StreamPurpose>) -> u64 {
    let Some(engine) = voip.webrtc() else { return 0 };
    engine
        .remote_tracks(call.id())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.kind == kind && !t.ended && purpose.is_none_or(|want| t.purpose == Some(want)))
                .map(|t| t.stats.packets)
                .sum()
        })
        .unwrap_or(0)
}

/// Polls `cond` every 50 ms until it holds.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `fut`, or an error naming `what` after [`STEP`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut).await.with_context(|| format!("{what}: nothing after {STEP:?}"))
}
