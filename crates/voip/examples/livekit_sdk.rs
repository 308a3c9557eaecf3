//! The exact code that connects a `GroupCall` in LiveKit mode to the official LiveKit Rust SDK
//! (`livekit` crate): credentials from [`voip::GroupCall::livekit_session`] into
//! `Room::connect`, media keys into the SDK's `KeyProvider` through `E2eeOptions`.
//!
//! The `livekit` crate cannot be built on this project's machines (it downloads a prebuilt
//! libwebrtc at build time), so the module `livekit` below stands in for it with the same paths
//! and signatures as livekit 0.7 (`livekit::prelude::{Room, RoomOptions}`,
//! `livekit::e2ee::{E2eeOptions, EncryptionType}`, `livekit::e2ee::key_provider::{KeyProvider,
//! KeyProviderOptions}`, `livekit::id::ParticipantIdentity`; read in livekit/rust-sdks on
//! 2026-12-03). In an app: delete the module, add `livekit = "0.7"`; nothing else changes. Here it
//! records what the SDK would be asked to do, so the example runs end to end.
//!
//! Caveat (docs/livekit.md §4): the Rust SDK's key provider imports keys with PBKDF2; Element
//! Call's clients use HKDF. Until the SDK offers HKDF, Rust SDK clients decrypt each other, not
//! Element Call.
//!
//! ```sh
//! cargo run -p voip --example livekit_sdk   # against SYNAPSE_URL, or the repository's rig
//! ```
//! In the repository only (it uses voip-testkit's Synapse rig and JWT service); `cargo xtask
//! test` runs it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::InitialStateEvent;
use voip::livekit_sfu::{IdentityScheme, KeyProviderOptions as VoipKeyOptions};
use voip::{GroupCallBackend, GroupCallOptions, LivekitUpdate, StreamExt, Voip};
use voip_testkit::jwt_service::{JwtService, Options};

/// Stands in for the `livekit` crate (same paths and signatures; see the file's header).
#[allow(dead_code)] // The SDK reads these fields; the stand-in only mirrors them.
mod livekit {
    pub mod id {
        /// `livekit::id::ParticipantIdentity`.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct ParticipantIdentity(pub String);
    }
    pub mod e2ee {
        pub mod key_provider {
            use std::collections::HashMap;
            use std::sync::{Arc, Mutex};

            use super::super::id::ParticipantIdentity;

            /// `livekit::e2ee::key_provider::KeyProviderOptions`.
            #[derive(Clone, Debug)]
            pub struct KeyProviderOptions {
                pub ratchet_window_size: i32,
                pub ratchet_salt: Vec<u8>,
                pub failure_tolerance: i32,
            }

            /// `livekit::e2ee::key_provider::KeyProvider` (cheap to clone, shared with the room).
            type Keys = HashMap<(String, i32), Vec<u8>>;

            #[derive(Clone, Debug)]
            pub struct KeyProvider {
                keys: Arc<Mutex<Keys>>,
            }

            impl KeyProvider {
                pub fn new(_options: KeyProviderOptions) -> Self {
                    Self { keys: Arc::default() }
                }
                pub fn set_key(&self, identity: &ParticipantIdentity, key_index: i32, key: Vec<u8>) -> bool {
                    self.keys.lock().unwrap().insert((identity.0.clone(), key_index), key);
                    true
                }
                pub fn get_key(&self, identity: &ParticipantIdentity, key_index: i32) -> Option<Vec<u8>> {
                    self.keys.lock().unwrap().get(&(identity.0.clone(), key_index)).cloned()
                }
                pub fn ratchet_key(&self, identity: &ParticipantIdentity, key_index: i32) -> Option<Vec<u8>> {
                    self.get_key(identity, key_index)
                }
                pub fn set_shared_key(&self, shared_key: Vec<u8>, key_index: i32) {
                    self.set_key(&ParticipantIdentity(String::new()), key_index, shared_key);
                }
                pub fn get_shared_key(&self, key_index: i32) -> Option<Vec<u8>> {
                    self.get_key(&ParticipantIdentity(String::new()), key_index)
                }
                pub fn ratchet_shared_key(&self, key_index: i32) -> Option<Vec<u8>> {
                    self.get_shared_key(key_index)
                }
                /// Not in the SDK: what the stand-in was given.
                pub fn identities(&self) -> usize {
                    self.keys.lock().unwrap().len()
                }
            }
        }

        /// `livekit::e2ee::EncryptionType`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EncryptionType {
            None,
            Gcm,
        }

        /// `livekit::e2ee::E2eeOptions`.
        #[derive(Clone, Debug)]
        pub struct E2eeOptions {
            pub encryption_type: EncryptionType,
            pub key_provider: key_provider::KeyProvider,
        }
    }
    pub mod prelude {
        use super::e2ee::E2eeOptions;

        /// `livekit::prelude::RoomOptions` (`#[non_exhaustive]`: start from `default()`).
        #[derive(Clone, Debug, Default)]
        pub struct RoomOptions {
            pub encryption: Option<E2eeOptions>,
        }

        /// `livekit::prelude::Room`.
        #[derive(Debug)]
        pub struct Room {
            pub url: String,
        }

        /// `livekit::prelude::RoomEvent` (events of the room; none in the stand-in).
        #[derive(Debug)]
        pub enum RoomEvent {}

        impl Room {
            /// `Room::connect(url, token, options) -> RoomResult<(Room, UnboundedReceiver<RoomEvent>)>`.
            pub async fn connect(
                url: &str,
                token: &str,
                options: RoomOptions,
            ) -> Result<(Room, tokio::sync::mpsc::UnboundedReceiver<RoomEvent>), String> {
                if token.is_empty() || options.encryption.is_none() {
                    return Err("no token or no encryption".into());
                }
                Ok((Room { url: url.to_owned() }, tokio::sync::mpsc::unbounded_channel().1))
            }
            /// `Room::close`.
            pub async fn close(&self) -> Result<(), String> {
                Ok(())
            }
        }
    }
}

use livekit::e2ee::key_provider::{KeyProvider as SdkKeyProvider, KeyProviderOptions as SdkKeyOptions};
use livekit::e2ee::{E2eeOptions, EncryptionType};
use livekit::id::ParticipantIdentity;
use livekit::prelude::{Room, RoomOptions};

/// The LiveKit SDK's key provider behind `voip_livekit::KeyProvider`: the library installs every
/// member's media key here under the identity from the member's JWT.
struct SdkKeys {
    sdk: SdkKeyProvider,
    options: VoipKeyOptions,
}

impl voip::livekit_sfu::KeyProvider for SdkKeys {
    fn options(&self) -> &VoipKeyOptions {
        &self.options
    }
    fn set_key(&mut self, identity: &str, index: u32, key: &[u8]) -> bool {
        self.sdk.set_key(&ParticipantIdentity(identity.to_owned()), index as i32, key.to_vec())
    }
    fn ratchet_key(&mut self, identity: &str, index: u32) -> Option<Vec<u8>> {
        self.sdk.ratchet_key(&ParticipantIdentity(identity.to_owned()), index as i32)
    }
    fn get_key(&self, identity: &str, index: u32) -> Option<Vec<u8>> {
        self.sdk.get_key(&ParticipantIdentity(identity.to_owned()), index as i32)
    }
    fn set_shared_key(&mut self, index: u32, key: &[u8]) {
        self.sdk.set_shared_key(key.to_vec(), index as i32)
    }
    fn ratchet_shared_key(&mut self, index: u32) -> Option<Vec<u8>> {
        self.sdk.ratchet_shared_key(index as i32)
    }
    fn get_shared_key(&self, index: u32) -> Option<Vec<u8>> {
        self.sdk.get_shared_key(index as i32)
    }
}

/// One participant: a `Voip` without media whose media keys go to the SDK's key provider.
async fn participant(client: &matrix_sdk::Client) -> Result<(Voip, SdkKeyProvider)> {
    let sdk = SdkKeyProvider::new(SdkKeyOptions {
        ratchet_window_size: 10,
        ratchet_salt: b"LKFrameEncryptionKey".to_vec(),
        failure_tolerance: -1,
    });
    let keys = SdkKeys { sdk: sdk.clone(), options: VoipKeyOptions::element_call() };
    let voip = Voip::from_client(client)?
        .without_media()
        // Identities as the JWT service issues them on `/get_token` (hashed).
        .livekit_key_provider(Arc::new(Mutex::new(keys)), IdentityScheme::Hashed)
        .build()?;
    Ok((voip, sdk))
}

/// Connects `group`'s device to the SFU its plan names, with E2EE on the SDK key provider.
async fn connect(group: &voip::GroupCall, sdk: &SdkKeyProvider) -> Result<Room> {
    let mut session = group.livekit_session()?;
    while let Some(update) = tokio::time::timeout(Duration::from_secs(30), session.next()).await? {
        match update {
            LivekitUpdate::Plan(plan) => println!("{}: publish on {:?}", group.id(), plan.publish),
            LivekitUpdate::Credentials { focus, credentials } => {
                println!("credentials from {} for LiveKit room {}", focus.service_url, credentials.room);
                // `RoomOptions` is `#[non_exhaustive]` in the SDK: start from the default.
                #[allow(clippy::field_reassign_with_default)]
                let options = {
                    let mut options = RoomOptions::default();
                    options.encryption =
                        Some(E2eeOptions { encryption_type: EncryptionType::Gcm, key_provider: sdk.clone() });
                    options
                };
                let (room, _events) = Room::connect(&credentials.url, &credentials.jwt, options)
                    .await
                    .map_err(anyhow::Error::msg)?;
                // With the real SDK: room.e2ee_manager().set_enabled(true); and keep reading the
                // session: a later `Credentials` is the renewed token, a later `Plan` a new SFU.
                return Ok(room);
            }
            LivekitUpdate::CredentialsFailed { error, .. } => bail!("no credentials: {error}"),
            _ => {}
        }
    }
    bail!("the session ended")
}

#[tokio::main]
async fn main() -> Result<()> {
    // The repository's homeserver (SYNAPSE_URL, or the rig started on demand) and a JWT service
    // that checks OpenID tokens with it and mints real LiveKit tokens.
    let jwt = JwtService::start(Options::default()).await?;
    let (a, b) =
        (voip_testkit::register_user("lk_sdk_a").await?, voip_testkit::register_user("lk_sdk_b").await?);
    let (ca, cb) = (voip_testkit::login(&a, None).await?, voip_testkit::login(&b, None).await?);
    let (va, ka) = participant(&ca).await?;
    let (vb, kb) = participant(&cb).await?;
    let _syncs = (voip_testkit::Syncing::start(&ca).await?, voip_testkit::Syncing::start(&cb).await?);
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::TrustedPrivateChat);
    request.invite = vec![cb.user_id().context("logged in")?.to_owned()];
    request.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    let room_id = ca.create_room(request).await?.room_id().to_owned();
    cb.join_room_by_id(&room_id).await?;
    let room = voip::core::RoomId::from(room_id.as_str());
    let backend = GroupCallBackend::LiveKit { service_url: jwt.url.clone(), alias: None };
    let ga = va.fetch_or_create_group_call(&room, GroupCallOptions::new(backend.clone())).await?;
    let gb = vb.fetch_or_create_group_call(&room, GroupCallOptions::new(backend)).await?;
    ga.enter().await?;
    gb.enter().await?;
    let (room_a, room_b) = (connect(&ga, &ka).await?, connect(&gb, &kb).await?);
    println!("both connected to {} and {}", room_a.url, room_b.url);
    // Each SDK key provider holds both participants' keys (ours for the encryptor, theirs to decrypt).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ka.identities() < 2 || kb.identities() < 2 {
        if tokio::time::Instant::now() > deadline {
            bail!("keys missing: {} and {}", ka.identities(), kb.identities());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("each LiveKit key provider holds both participants' media keys");
    gb.leave().await.context("leave")?;
    ga.leave().await.context("leave")?;
    room_a.close().await.map_err(anyhow::Error::msg)?;
    room_b.close().await.map_err(anyhow::Error::msg)?;
    Ok(())
}
