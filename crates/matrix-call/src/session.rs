//! The account: a data dir with the saved session (`session.json`) and matrix-sdk's SQLite
//! stores (`store/`: state, E2EE keys, event cache, media), so the device and its keys survive
//! restarts. `login`, `logout`, `whoami`, and the client every other command runs on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{StoreConfig, SyncSettings};
use matrix_sdk::cross_process_lock::CrossProcessLockConfig;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use matrix_sdk::{Client, RoomMemberships, RoomState, SessionMeta, SessionTokens};
use matrix_sdk_sqlite::{
    SqliteCryptoStore, SqliteEventCacheStore, SqliteMediaStore, SqliteStateStore, SqliteStoreConfig,
};
use serde_json::json;

use crate::error::{from_http, from_matrix, one_line, CliError};
use crate::output::Out;

/// The default data dir: `$XDG_DATA_HOME/matrix-call` (`~/.local/share/matrix-call` on Linux,
/// the platform's data dir elsewhere).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("matrix-call")
}

/// What `session.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The homeserver's base URL (after discovery).
    homeserver: String,
    #[serde(flatten)]
    session: MatrixSession,
}

fn session_file(dir: &Path) -> PathBuf {
    dir.join("session.json")
}

fn store_dir(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// A client on `homeserver` (a URL, or a server name to discover) with the SQLite stores of `dir`.
async fn build_client(dir: &Path, homeserver: &str, discover: bool) -> Result<Client, CliError> {
    let store = store_dir(dir);
    std::fs::create_dir_all(&store).map_err(|e| CliError::file(&store, e))?;
    let config = SqliteStoreConfig::new(&store);
    let open = |what: &'static str| {
        let store = store.clone();
        move |e: matrix_sdk_sqlite::OpenStoreError| {
            CliError::file(store, anyhow::anyhow!("cannot open the {what} store: {}", one_line(&e)))
        }
    };
    let state = SqliteStateStore::open_with_config(&config).await.map_err(open("state"))?;
    let crypto = SqliteCryptoStore::open_with_config(&config).await.map_err(open("E2EE"))?;
    let events = SqliteEventCacheStore::open_with_config(&config).await.map_err(open("event cache"))?;
    let media = SqliteMediaStore::open_with_config(&config).await.map_err(open("media"))?;
    let stores = StoreConfig::new(CrossProcessLockConfig::multi_process("matrix-call"))
        .state_store(state)
        .crypto_store(crypto)
        .event_cache_store(events)
        .media_store(media);
    let builder = Client::builder().store_config(stores);
    let builder = if discover {
        builder.server_name_or_homeserver_url(homeserver)
    } else {
        builder.homeserver_url(homeserver)
    };
    builder.build().await.map_err(|e| match e {
        matrix_sdk::ClientBuildError::Http(h) => from_http("homeserver", h),
        other => CliError::Unreachable(format!("{homeserver}: {}", one_line(&other))),
    })
}

/// Writes `session.json`, readable by the owner only.
fn save(dir: &Path, saved: &Saved) -> Result<(), CliError> {
    let path = session_file(dir);
    let text = serde_json::to_string_pretty(saved).map_err(|e| CliError::file(&path, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut f = options.open(&path).map_err(|e| CliError::file(&path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| CliError::file(&path, e))?;
    Ok(())
}

fn load(dir: &Path) -> Result<Saved, CliError> {
    let path = session_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::Auth(format!(
                "not logged in (no session in {}): run `matrix-call login HOMESERVER USER` first",
                dir.display()
            )))
        }
        Err(e) => return Err(CliError::file(&path, e)),
    };
    serde_json::from_str(&text).map_err(|e| CliError::file(&path, e))
}

/// How `login` authenticates.
#[derive(Debug)]
pub enum Credentials {
    /// User name (or full user id) and password.
    Password {
        /// `@user:server` or the localpart.
        user: String,
        /// The password.
        password: String,
    },
    /// An access token of a device that has no E2EE keys yet (or whose keys are lost anyway).
    AccessToken(String),
}

/// `login`: a new device on `homeserver`, its session saved in `dir`, its keys uploaded.
pub async fn login(
    out: &Out,
    dir: &Path,
    homeserver: &str,
    credentials: Credentials,
    device_name: &str,
) -> Result<(), CliError> {
    if let Ok(saved) = load(dir) {
        return Err(CliError::Usage(format!(
            "already logged in as {} (device {}) in {}: run `matrix-call logout` first, or use another --data-dir",
            saved.session.meta.user_id,
            saved.session.meta.device_id,
            dir.display()
        )));
    }
    // Stores left by a login that did not finish belong to no device.
    let _ = std::fs::remove_dir_all(store_dir(dir));
    let client = build_client(dir, homeserver, true).await?;
    match credentials {
        Credentials::Password { user, password } => {
            client
                .matrix_auth()
                .login_username(&user, &password)
                .initial_device_display_name(device_name)
                .send()
                .await
                .map_err(|e| from_matrix("login", e))?;
        }
        Credentials::AccessToken(token) => {
            // Who the token belongs to (with a throw-away client: the real one's crypto store
            // must be opened for the right device).
            let probe = Client::builder()
                .homeserver_url(client.homeserver())
                .build()
                .await
                .map_err(|e| CliError::Other(anyhow::anyhow!("{}", one_line(&e))))?;
            let placeholder = MatrixSession {
                meta: SessionMeta {
                    user_id: OwnedUserId::try_from("@matrix-call:invalid").map_err(anyhow::Error::from)?,
                    device_id: "MATRIXCALLPROBE".into(),
                },
                tokens: SessionTokens { access_token: token.clone(), refresh_token: None },
            };
            probe.restore_session(placeholder).await.map_err(|e| from_matrix("login", e))?;
            let me = probe.whoami().await.map_err(|e| from_http("login with the access token", e))?;
            let device_id = me.device_id.ok_or_else(|| {
                CliError::Auth("the access token belongs to no device (an appservice token?)".into())
            })?;
            let session = MatrixSession {
                meta: SessionMeta { user_id: me.user_id, device_id },
                tokens: SessionTokens { access_token: token, refresh_token: None },
            };
            client.restore_session(session).await.map_err(|e| from_matrix("login", e))?;
        }
    }
    let session = client
        .matrix_auth()
        .session()
        .ok_or_else(|| CliError::Other(anyhow::anyhow!("login gave no session")))?;
    let saved = Saved { homeserver: client.homeserver().to_string(), session };
    save(dir, &saved)?;
    // The first sync uploads the device's E2EE keys, so others can call it at once.
    first_sync(&client).await?;
    let key = client.encryption().ed25519_key().await.unwrap_or_default();
    let (user, device) = (&saved.session.meta.user_id, &saved.session.meta.device_id);
    out.event(
        "logged_in",
        json!({ "user_id": user, "device_id": device, "homeserver": saved.homeserver, "ed25519": key, "data_dir": dir }),
        || format!("Logged in as {user} (device {device}) on {}; session saved in {}", saved.homeserver, dir.display()),
    );
    Ok(())
}

/// The saved session's client (not synced yet).
pub async fn restore(dir: &Path) -> Result<Client, CliError> {
    let saved = load(dir)?;
    let client = build_client(dir, &saved.homeserver, false).await?;
    client.restore_session(saved.session).await.map_err(|e| from_matrix("restoring the session", e))?;
    Ok(client)
}

/// `logout`: the device is deleted on the homeserver and the data dir's session and stores are
/// removed (also when the homeserver already forgot the token).
pub async fn logout(out: &Out, dir: &Path) -> Result<(), CliError> {
    let client = restore(dir).await?;
    let user = client.user_id().map(|u| u.to_string()).unwrap_or_default();
    match client.matrix_auth().logout().await {
        Ok(_) => {}
        Err(e) => match from_http("logout", e) {
            CliError::Auth(_) => {} // the token was already revoked: forget it locally too
            other => return Err(other),
        },
    }
    drop(client);
    let _ = std::fs::remove_file(session_file(dir));
    let _ = std::fs::remove_dir_all(store_dir(dir));
    out.event("logged_out", json!({ "user_id": user }), || format!("Logged out {user}"));
    Ok(())
}

/// `whoami`: the session as the homeserver sees it, and this device's identity key.
pub async fn whoami(out: &Out, dir: &Path) -> Result<(), CliError> {
    let client = restore(dir).await?;
    let me = client.whoami().await.map_err(|e| from_http("whoami", e))?;
    let device = client.device_id().map(|d| d.to_string()).unwrap_or_default();
    let key = client.encryption().ed25519_key().await.unwrap_or_default();
    let homeserver = client.homeserver().to_string();
    out.event(
        "whoami",
        json!({ "user_id": me.user_id, "device_id": device, "homeserver": homeserver, "ed25519": key, "data_dir": dir }),
        || format!("{} (device {device}, ed25519 {key}) on {homeserver}", me.user_id),
    );
    Ok(())
}

/// One sync with no long-poll wait (the initial one after a login: keys uploaded, rooms known).
pub async fn first_sync(client: &Client) -> Result<String, CliError> {
    let response = client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .map_err(|e| from_matrix("sync", e))?;
    Ok(response.next_batch)
}

/// The background sync loop of a command; stops when dropped.
#[derive(Debug)]
pub struct Syncing(tokio::task::JoinHandle<()>);

impl Drop for Syncing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Catches up (one sync without waiting), then syncs in the background with
/// [`voip::sync::sync`] (no pause between responses, so call set-up is fast).
pub async fn start_sync(client: &Client) -> Result<Syncing, CliError> {
    let token = first_sync(client).await?;
    let client = client.clone();
    Ok(Syncing(tokio::spawn(async move {
        if let Err(e) = voip::sync::sync(&client, SyncSettings::default().token(token)).await {
            tracing::error!("sync stopped: {e}");
            eprintln!("matrix-call: sync stopped: {}", one_line(&e));
        }
    })))
}

/// `@user:server`, or a localpart on our own server.
pub fn user_id(client: &Client, user: &str) -> Result<OwnedUserId, CliError> {
    let full = if user.starts_with('@') {
        user.to_owned()
    } else {
        let server = client.user_id().map(|u| u.server_name().to_string()).unwrap_or_default();
        format!("@{user}:{server}")
    };
    UserId::parse(&full).map_err(|e| CliError::Usage(format!("invalid user id {user:?}: {e}")))
}

/// A joined room by id (`!id:server`) or alias (`#alias:server`).
pub async fn joined_room(client: &Client, room: &str) -> Result<Room, CliError> {
    let id: OwnedRoomId = if room.starts_with('#') {
        let alias = RoomAliasId::parse(room)
            .map_err(|e| CliError::Usage(format!("invalid room alias {room:?}: {e}")))?;
        match client.resolve_room_alias(&alias).await {
            Ok(r) => r.room_id,
            Err(e) => {
                return Err(match from_http("resolving the alias", e) {
                    CliError::Other(_) => CliError::NotFound(format!("unknown room alias {room}")),
                    other => other,
                })
            }
        }
    } else {
        RoomId::parse(room).map_err(|e| CliError::Usage(format!("invalid room id {room:?}: {e}")))?
    };
    match client.get_room(&id) {
        Some(r) if r.state() == RoomState::Joined => Ok(r),
        _ => Err(CliError::NotFound(format!("not a member of room {room}"))),
    }
}

/// The DM room with `user`: a room in `m.direct`, else a joined room whose only members are us
/// and `user` (encrypted ones first). No room: "unknown user" when the homeserver does not know
/// the user, else "no DM room".
pub async fn dm_room(client: &Client, user: &UserId) -> Result<Room, CliError> {
    if let Some(room) = client.get_dm_room(user) {
        return Ok(room);
    }
    let me = client.user_id().map(|u| u.to_owned());
    let mut found: Option<Room> = None;
    for room in client.joined_rooms() {
        let Ok(members) = room.members(RoomMemberships::ACTIVE).await else { continue };
        let two = members.len() == 2
            && members.iter().any(|m| m.user_id() == user)
            && members.iter().any(|m| Some(m.user_id()) == me.as_deref());
        if !two {
            continue;
        }
        let encrypted = room.latest_encryption_state().await.map(|s| s.is_encrypted()).unwrap_or(false);
        if encrypted {
            return Ok(room);
        }
        found.get_or_insert(room);
    }
    if let Some(room) = found {
        return Ok(room);
    }
    match client.account().fetch_user_profile_of(user).await {
        // Synapse answers 404 for a user it does not know (`M_NOT_FOUND`, or `M_UNKNOWN` "No row
        // found" for a local user).
        Err(e) if e.as_client_api_error().is_some_and(|api| api.status_code.as_u16() == 404) => {
            Err(CliError::NotFound(format!("unknown user {user}")))
        }
        _ => Err(CliError::NotFound(format!(
            "no DM room with {user}: start a chat with them in your Matrix client, or pass --room"
        ))),
    }
}
