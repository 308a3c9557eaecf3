//! Users and matrix-sdk clients on the rig's homeserver (feature `client`, on by default).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::Client;
use serde_json::{json, Value};
use sha1::Sha1;

use crate::{rig, synapse, Synapse};

/// A registered user.
#[derive(Clone, Debug)]
pub struct TestUser {
    /// Full user id, e.g. `@alice-1a2b3c:localhost`.
    pub user_id: String,
    /// Localpart.
    pub localpart: String,
    /// Password.
    pub password: String,
    /// Access token of the device created by the registration (unused by [`login`]).
    pub access_token: String,
    /// Whether the user is a server admin.
    pub admin: bool,
    /// Base URL of the user's homeserver ([`login`] logs in there).
    pub homeserver: String,
}

/// Registers a user named `name` plus a random suffix (names stay unique on a shared instance),
/// through `/_synapse/admin/v1/register` (HMAC-SHA1 with the shared secret).
pub async fn register_user(name: &str) -> Result<TestUser> {
    register(synapse(), name, false).await
}

/// Like [`register_user`], but the user is a server admin (for admin-API helpers).
pub async fn register_admin(name: &str) -> Result<TestUser> {
    register(synapse(), name, true).await
}

/// Like [`register_user`], on the homeserver `hs` (e.g. [`crate::tight_synapse()`] or a
/// [`rig::Instance`] through [`Synapse::of`]).
pub async fn register_user_on(hs: &Synapse, name: &str) -> Result<TestUser> {
    register(hs, name, false).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

async fn register(hs: &Synapse, name: &str, admin: bool) -> Result<TestUser> {
    // A rate-limited server may refuse a burst of registrations for a moment.
    let mut attempt = 0;
    loop {
        match register_once(hs, name, admin).await {
            Err(RegisterError::Limited(wait)) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            Err(RegisterError::Limited(_)) => {
                bail!("register {name}: still rate-limited after {attempt} tries")
            }
            Err(RegisterError::Other(e)) => return Err(e),
            Ok(user) => return Ok(user),
        }
    }
}

enum RegisterError {
    Limited(Duration),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RegisterError {
    fn from(e: E) -> Self {
        RegisterError::Other(e.into())
    }
}

async fn register_once(
    hs: &Synapse,
    name: &str,
    admin: bool,
) -> std::result::Result<TestUser, RegisterError> {
    let localpart = format!("{}-{}", name.to_lowercase(), rig::random_hex(3));
    let password = rig::random_hex(12);
    let url = format!("{}/_synapse/admin/v1/register", hs.url);
    let http = http();
    let nonce: Value = http.get(&url).send().await?.error_for_status()?.json().await?;
    let nonce = nonce["nonce"].as_str().context("no nonce")?.to_owned();
    let mut mac = Hmac::<Sha1>::new_from_slice(hs.reg_secret.as_bytes()).expect("hmac key");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(localpart.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if admin { b"admin".as_slice() } else { b"notadmin".as_slice() });
    let mac: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let resp = http
        .post(&url)
        .json(&json!({ "nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status.as_u16() == 429 {
        let ms = body["retry_after_ms"].as_u64().unwrap_or(500);
        return Err(RegisterError::Limited(Duration::from_millis(ms.max(50))));
    }
    if !status.is_success() {
        return Err(anyhow::anyhow!("register {localpart}: {status} {body}").into());
    }
    Ok(TestUser {
        user_id: body["user_id"].as_str().context("no user_id")?.to_owned(),
        localpart,
        password,
        access_token: body["access_token"].as_str().unwrap_or_default().to_owned(),
        admin,
        homeserver: hs.url.clone(),
    })
}

/// Sets a per-user message rate limit (`rc_message` override, which also covers delayed-event
/// scheduling) through the admin API. `admin` must be a [`register_admin`] user.
pub async fn override_ratelimit(
    admin: &TestUser,
    user_id: &str,
    per_second: u32,
    burst_count: u32,
) -> Result<()> {
    let url = format!("{}/_synapse/admin/v1/users/{}/override_ratelimit", admin.homeserver, user_id);
    let resp = http()
        .post(&url)
        .bearer_auth(&admin.access_token)
        .json(&json!({ "messages_per_second": per_second, "burst_count": burst_count }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("override_ratelimit: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    Ok(())
}

/// A logged-in client for `user` on the user's homeserver, with its own in-memory stores; each
/// call logs in a new device (`device_id` chosen or generated). Does not sync: see [`Syncing`].
pub async fn login(user: &TestUser, device_id: Option<&str>) -> Result<Client> {
    let client = Client::builder().homeserver_url(&user.homeserver).build().await.context("build client")?;
    let mut req = client.matrix_auth().login_username(&user.user_id, &user.password);
    if let Some(d) = device_id {
        req = req.device_id(d);
    }
    req.initial_device_display_name("voip-testkit").send().await.context("login")?;
    Ok(client)
}

/// Registers `name` and logs in one device: the usual start of a test.
pub async fn new_client(name: &str) -> Result<(TestUser, Client)> {
    let user = register_user(name).await?;
    let client = login(&user, None).await?;
    Ok((user, client))
}

/// A background sync loop; stops when dropped.
#[derive(Debug)]
pub struct Syncing {
    task: tokio::task::JoinHandle<()>,
}

impl Syncing {
    /// Runs one `sync_once` (uploads device keys, loads initial state), then keeps syncing in a
    /// spawned task: `sync_once` in a loop with a 2 s long-poll timeout, each request starting as
    /// soon as the previous response is processed. (`Client::sync` instead sleeps 1 s before
    /// any request that follows the previous one within a second, which delays every event of a
    /// burst such as a call set-up by up to a second.) The loop survives a homeserver that goes
    /// away: after an error it waits 250 ms and syncs on from the stored token.
    pub async fn start(client: &Client) -> Result<Self> {
        client.sync_once(SyncSettings::default()).await.context("first sync")?;
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                let settings = SyncSettings::default().timeout(Duration::from_secs(2));
                if let Err(e) = c.sync_once(settings).await {
                    tracing::debug!("sync failed, syncing again: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Ok(Self { task })
    }
}

impl Syncing {
    /// matrix-sdk's own loop instead: one `sync_once`, then `Client::sync` (which sleeps 1 s
    /// before any request that follows the previous one within a second) in a spawned task.
    /// For comparing sync modes (`docs/benchmarks.md`).
    pub async fn start_client_sync(client: &Client) -> Result<Self> {
        client.sync_once(SyncSettings::default()).await.context("first sync")?;
        let c = client.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = c.sync(SyncSettings::default()).await {
                tracing::debug!("Client::sync ended: {e}");
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
