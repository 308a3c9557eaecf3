//! TURN servers from `/voip/turnServer`, cached and refreshed before their TTL ends.

use std::time::{Duration, Instant};

use matrix_sdk::ruma::api::client::voip::get_turn_server_info;
use tokio::sync::watch;

use crate::{AdapterError, MatrixAdapter};

/// TURN credentials as the homeserver gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnServers {
    /// `turn:`/`turns:` URIs.
    pub uris: Vec<String>,
    /// Username (time-limited).
    pub username: String,
    /// Password / credential.
    pub password: String,
    /// Lifetime the server announced.
    pub ttl: Duration,
    /// When they were fetched.
    pub fetched_at: Instant,
}

impl TurnServers {
    /// When to fetch new credentials: after 80 % of the TTL, and at least 30 s (or a fifth of
    /// the TTL, for very short TTLs) before it ends.
    pub fn refresh_at(&self) -> Instant {
        let early = (self.ttl / 5).max(Duration::from_secs(30).min(self.ttl / 2));
        self.fetched_at + self.ttl.saturating_sub(early)
    }

    /// Whether they should be refreshed at `now`.
    pub fn needs_refresh(&self, now: Instant) -> bool {
        now >= self.refresh_at()
    }
}

/// Cached state.
#[derive(Debug, Default)]
pub(crate) struct TurnState {
    /// `Some(None)`: the server has no TURN configured (checked at that time).
    cached: Option<(Instant, Option<TurnServers>)>,
}

/// How long "no TURN configured" is believed.
const NONE_RECHECK: Duration = Duration::from_secs(300);

impl MatrixAdapter {
    /// The homeserver's TURN servers, fetched on first use and again when the cached credentials
    /// reach [`TurnServers::refresh_at`]. `Ok(None)` when the server offers none (`{}` or 404).
    pub async fn turn_servers(&self) -> Result<Option<TurnServers>, AdapterError> {
        let mut state = self.inner.turn.lock().await;
        let now = Instant::now();
        if let Some((checked, cached)) = &state.cached {
            let fresh = match cached {
                Some(t) => !t.needs_refresh(now),
                None => now.duration_since(*checked) < NONE_RECHECK,
            };
            if fresh {
                return Ok(cached.clone());
            }
        }
        let fetched = self.fetch_turn_servers().await?;
        state.cached = Some((now, fetched.clone()));
        Ok(fetched)
    }

    async fn fetch_turn_servers(&self) -> Result<Option<TurnServers>, AdapterError> {
        let fetched_at = Instant::now();
        match self.inner.client.send(get_turn_server_info::v3::Request::new()).await {
            Ok(r) => Ok(Some(TurnServers {
                uris: r.uris,
                username: r.username,
                password: r.password,
                ttl: r.ttl,
                fetched_at,
            })),
            Err(e) => {
                // Synapse answers `200 {}` without TURN config: a deserialization error here.
                let not_configured = e.as_client_api_error().is_some_and(|c| c.status_code.as_u16() == 404)
                    || matches!(&e, matrix_sdk::HttpError::Api(api)
                        if matches!(**api, matrix_sdk::ruma::api::error::FromHttpResponseError::Deserialization(_)));
                if not_configured {
                    Ok(None)
                } else {
                    Err(AdapterError::Http(e))
                }
            }
        }
    }

    /// Keeps TURN credentials fresh in the background: the receiver always holds the latest
    /// (refreshed at [`TurnServers::refresh_at`]; after a failure, retried every 30 s). The task
    /// ends when the receiver is dropped.
    pub fn watch_turn_servers(&self) -> watch::Receiver<Option<TurnServers>> {
        let (tx, rx) = watch::channel(None);
        let adapter = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = match adapter.turn_servers().await {
                    Ok(t) => {
                        let wait = match &t {
                            Some(t) => t.refresh_at().saturating_duration_since(Instant::now()),
                            None => NONE_RECHECK,
                        };
                        if tx.send(t).is_err() {
                            return;
                        }
                        wait
                    }
                    Err(e) => {
                        tracing::warn!("TURN refresh failed: {e}");
                        Duration::from_secs(30)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(ttl: u64, at: Instant) -> TurnServers {
        TurnServers {
            uris: vec![],
            username: String::new(),
            password: String::new(),
            ttl: Duration::from_secs(ttl),
            fetched_at: at,
        }
    }

    #[test]
    fn refresh_before_ttl() {
        let t0 = Instant::now();
        let t = servers(3600, t0);
        assert_eq!(t.refresh_at(), t0 + Duration::from_secs(2880));
        assert!(!t.needs_refresh(t0 + Duration::from_secs(2879)));
        assert!(t.needs_refresh(t0 + Duration::from_secs(2880)));
        // Short TTLs still refresh before the end.
        let short = servers(60, t0);
        assert_eq!(short.refresh_at(), t0 + Duration::from_secs(30));
        let tiny = servers(10, t0);
        assert_eq!(tiny.refresh_at(), t0 + Duration::from_secs(5));
    }
}
