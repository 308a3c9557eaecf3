//! Sync loops that keep call set-up fast.
//!
//! The library sees Matrix events through event handlers on the app's [`matrix_sdk::Client`]
//! (registered by [`crate::Voip::from_client`]), so every way of syncing that goes through
//! matrix-sdk's response processing delivers call events: `Client::sync`, `Client::sync_stream`,
//! `Client::sync_once` in a loop, sliding sync and matrix-sdk-ui's `SyncService`. They differ in
//! **how soon** an event reaches the handlers:
//!
//! * `Client::sync` / `sync_stream` (matrix-sdk 0.18) sleep **1 s** after a response that came
//!   within a second of the previous one. The caller's first response in a set-up is the echo
//!   of its own invite: when anything was synced in the second before it (the previous call's
//!   hang-up, a message) or arrives between it and the answer (the callee's first Megolm key,
//!   trickled candidates' echo), the answer would wait for the sleep, about a second more: the
//!   adapter's answer watch (voip-matrix `AdapterOptions::watch_answers`) fetches the answer
//!   to our invite itself meanwhile, except the first answer in a new room (its Megolm key
//!   comes through the client's sync). Everything after the set-up still waits for the sleep.
//! * [`sync`] / [`sync_with_callback`] here: the same `/sync` long-poll, the next request sent as
//!   soon as the previous response is processed; a pause only after an error (backoff) or when
//!   the server keeps answering at once with nothing new (a server that ignores the timeout).
//! * [`sync_service`] (feature `sync-service`): matrix-sdk-ui's `SyncService` (simplified
//!   sliding sync, MSC4186) with a room-list timeline limit that keeps call events: with the
//!   default limit of 1, a room that gets an invite and its candidates in one response keeps
//!   only the last event, and the call never rings.
//!
//! Measured set-up times per mode: `docs/benchmarks.md`, section "Sync modes".

use std::future::Future;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::sync::SyncResponse;
use matrix_sdk::{Client, LoopCtrl};

/// Backoff after the first failed request; doubled per further failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between two failed requests.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A response to a long-poll that came back faster than this with nothing in it counts as
/// "the server ignored the timeout".
const SUSPICIOUSLY_FAST: Duration = Duration::from_millis(50);
/// After this many such responses in a row, [`sync`] pauses [`IGNORED_TIMEOUT_PAUSE`].
const FAST_EMPTY_LIMIT: u32 = 3;
const IGNORED_TIMEOUT_PAUSE: Duration = Duration::from_secs(1);

/// Syncs forever like `Client::sync`, without its 1 s pause between requests.
///
/// Each request uses `settings` (long-poll timeout, filter, presence; matrix-sdk's default
/// timeout is 30 s), starting from `settings.token` (or the client's stored token) and carrying
/// each response's `next_batch`. Transient errors (network, 5xx, 429) are retried with backoff; the function
/// returns only on an error that syncing again cannot fix (the access token is no longer valid).
pub async fn sync(client: &Client, settings: SyncSettings) -> Result<(), matrix_sdk::Error> {
    sync_with_callback(client, settings, |_| async { LoopCtrl::Continue }).await
}

/// [`sync`] with a callback after every processed response, which may stop the loop.
pub async fn sync_with_callback<C, Fut>(
    client: &Client,
    settings: SyncSettings,
    mut callback: C,
) -> Result<(), matrix_sdk::Error>
where
    C: FnMut(SyncResponse) -> Fut,
    Fut: Future<Output = LoopCtrl>,
{
    let mut settings = settings;
    let mut first = true;
    let mut failures: u32 = 0;
    let mut fast_empty: u32 = 0;
    loop {
        let started = std::time::Instant::now();
        match client.sync_once(settings.clone()).await {
            Ok(response) => {
                failures = 0;
                let elapsed = started.elapsed();
                let empty = response.rooms.is_empty()
                    && response.to_device.is_empty()
                    && response.presence.is_empty()
                    && response.account_data.is_empty();
                fast_empty = if !first && empty && elapsed < SUSPICIOUSLY_FAST { fast_empty + 1 } else { 0 };
                first = false;
                settings = settings.token(response.next_batch.clone());
                if callback(response).await == LoopCtrl::Break {
                    return Ok(());
                }
                if fast_empty >= FAST_EMPTY_LIMIT {
                    tracing::debug!("the homeserver answers long-polls at once; pausing");
                    tokio::time::sleep(IGNORED_TIMEOUT_PAUSE).await;
                    fast_empty = 0;
                }
            }
            Err(e) => {
                if is_fatal(&e) {
                    return Err(e);
                }
                let pause = backoff(failures);
                failures = failures.saturating_add(1);
                tracing::debug!("sync failed, again in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The pause after `failures` failed requests in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << failures.min(6)).min(MAX_BACKOFF)
}

/// Errors that syncing again cannot fix.
fn is_fatal(e: &matrix_sdk::Error) -> bool {
    matches!(e.client_api_error_kind(), Some(ErrorKind::UnknownToken(_) | ErrorKind::UserDeactivated))
}

/// A [`sync`] loop running in a spawned task; stops when dropped (or on [`SyncLoop::stop`]).
#[derive(Debug)]
pub struct SyncLoop {
    task: tokio::task::JoinHandle<Result<(), matrix_sdk::Error>>,
}

impl SyncLoop {
    /// Runs one `sync_once` first (device keys uploaded, rooms and state loaded, so the app can
    /// use them when this returns), then [`sync`] in a spawned task from that response's token.
    pub async fn start(client: &Client, settings: SyncSettings) -> Result<Self, matrix_sdk::Error> {
        let first = client.sync_once(settings.clone()).await?;
        let settings = settings.token(first.next_batch);
        let client = client.clone();
        let task = tokio::spawn(async move { sync(&client, settings).await });
        Ok(Self { task })
    }

    /// Whether the loop ended (only after a fatal error; see [`sync`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops syncing.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for SyncLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The room-list timeline limit [`sync_service`] asks for: enough for every event of a call
/// set-up or a group-call join that can land in one room between two responses.
#[cfg(feature = "sync-service")]
pub const CALL_TIMELINE_LIMIT: u32 = 50;

/// matrix-sdk-ui's `SyncService` for an app with calls: the room list syncs with a timeline limit
/// of [`CALL_TIMELINE_LIMIT`] instead of 1, so no call event is cut from a busy room's timeline
/// (to-device and E2EE run in the service's encryption sync as usual). A client without a
/// sliding sync version is switched to native simplified sliding sync (MSC4186, which Synapse
/// serves). Build the [`crate::Voip`] first, then call `start()` on the returned service.
#[cfg(feature = "sync-service")]
pub async fn sync_service(
    client: &Client,
) -> Result<matrix_sdk_ui::sync_service::SyncService, matrix_sdk_ui::sync_service::Error> {
    use matrix_sdk::sliding_sync::Version;
    if matches!(client.sliding_sync_version(), Version::None) {
        client.set_sliding_sync_version(Version::Native);
    }
    matrix_sdk_ui::sync_service::SyncService::builder(client.clone())
        .with_room_list_timeline_limit(CALL_TIMELINE_LIMIT)
        .build()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
