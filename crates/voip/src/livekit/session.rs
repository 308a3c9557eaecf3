//! [`GroupCall::livekit_session`]: what the app's LiveKit SDK needs, kept current — where to
//! publish and subscribe (focus selection over the call's memberships) and fresh credentials for
//! every service in use (a new JWT before the old one expires, and for a new focus when the
//! membership moves one, e.g. the oldest member leaves under `oldest_membership`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use voip_core::{GroupCallState, Participant};
use voip_livekit::{
    sfu_plan, JwtError, JwtServiceClient, LivekitCredentials, LivekitFocus, OwnMembership, SfuPlan,
    TokenKeeper, TokenRequest,
};
use voip_matrix::MatrixAdapter;

use crate::group::{GroupCall, GroupCallBackend, GroupCallUpdate};
use crate::VoipError;

/// How long before a token's `exp` a new one is fetched.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// First wait after a failed token request; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What changed for the app's LiveKit connections.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LivekitUpdate {
    /// Where this device publishes and which services carry the other members. Sent first, then
    /// whenever a membership change moves a member (or us) to another transport: connect to new
    /// services, disconnect from ones no longer listed.
    Plan(SfuPlan),
    /// Credentials for one service of the plan: first for each service, then again before they
    /// expire (hand the new JWT to the SDK for its next (re)connection).
    Credentials {
        /// The service (its `livekit_service_url` and alias), a key of the plan.
        focus: LivekitFocus,
        /// `url` + `jwt` for `Room::connect`, the LiveKit room and our identity.
        credentials: LivekitCredentials,
    },
    /// A token request failed; it is retried after `retry_in` (doubling, up to a minute).
    CredentialsFailed {
        /// The service.
        focus: LivekitFocus,
        /// Why.
        error: Arc<JwtError>,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// The stream of [`LivekitUpdate`]s of one group call (a [`futures_core::Stream`]). Its task
/// stops when this is dropped, when we leave the call, or when the runtime stops.
#[derive(Debug)]
pub struct LivekitSession {
    rx: mpsc::UnboundedReceiver<LivekitUpdate>,
}

impl Stream for LivekitSession {
    type Item = LivekitUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LivekitUpdate>> {
        self.rx.poll_recv(cx)
    }
}

impl GroupCall {
    /// Keeps the app's LiveKit SDK connected: the [`SfuPlan`] (our focus and every other
    /// member's, per the call's focus selection) and fresh credentials for each service in it.
    /// Call after [`GroupCall::enter`] (the first update comes once we are in the call).
    ///
    /// ```no_run
    /// # async fn f(group: voip::GroupCall) -> Result<(), voip::VoipError> {
    /// use voip::{LivekitUpdate, StreamExt};
    /// let mut session = group.livekit_session()?;
    /// while let Some(update) = session.next().await {
    ///     match update {
    ///         LivekitUpdate::Plan(plan) => println!("publish on {:?}", plan.publish),
    ///         LivekitUpdate::Credentials { focus, credentials } => {
    ///             // livekit::Room::connect(&credentials.url, &credentials.jwt, options) for
    ///             // `focus`, or hand the new token to the connected room.
    ///             let _ = (focus, credentials);
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn livekit_session(&self) -> Result<LivekitSession, VoipError> {
        let GroupCallBackend::LiveKit { service_url, alias } = self.backend() else {
            return Err(VoipError::NotLiveKit);
        };
        let adapter = self.handle.ctx.adapter.clone().ok_or(VoipError::NoHomeserver)?;
        let own_focus = LivekitFocus {
            service_url: service_url.clone(),
            // As joined: without an alias the core writes the room id (`GroupCallBackend::focus`).
            alias: Some(alias.clone().unwrap_or_else(|| self.id().room_id.to_string())),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = SessionTask { group: self.clone(), adapter, own_focus, tx, keepers: BTreeMap::new() };
        tokio::spawn(task.run());
        Ok(LivekitSession { rx })
    }
}

struct Keeper {
    keeper: TokenKeeper<MatrixAdapter>,
    /// When to ask again after a failure.
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
}

struct SessionTask {
    group: GroupCall,
    adapter: MatrixAdapter,
    own_focus: LivekitFocus,
    tx: mpsc::UnboundedSender<LivekitUpdate>,
    keepers: BTreeMap<LivekitFocus, Keeper>,
}

impl SessionTask {
    async fn run(mut self) {
        let mut updates = self.group.updates();
        let mut plan: Option<SfuPlan> = None;
        loop {
            if self.group.state() == Some(GroupCallState::Joined) {
                if let Some(me) = self.group.local_participant() {
                    let next = self.plan(&me);
                    if plan.as_ref() != Some(&next) {
                        if self.tx.send(LivekitUpdate::Plan(next.clone())).is_err() {
                            return;
                        }
                        self.follow(&me, &next);
                        plan = Some(next);
                    }
                }
            }
            if matches!(self.group.state(), Some(GroupCallState::Left) | Some(GroupCallState::Leaving))
                && plan.is_some()
            {
                return;
            }
            self.refresh_due().await;
            let wake = self.next_wake();
            tokio::select! {
                update = updates.next() => match update {
                    None => return,
                    Some(GroupCallUpdate::StateChanged(GroupCallState::Left)) => return,
                    Some(_) => {}
                },
                () = sleep_until(wake) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    fn plan(&self, me: &Participant) -> SfuPlan {
        let own = OwnMembership { participant: me.clone(), focus: self.own_focus.clone(), created: None };
        sfu_plan(&own, &self.group.info().members)
    }

    /// Keeps a token keeper for exactly the plan's services.
    fn follow(&mut self, me: &Participant, plan: &SfuPlan) {
        let wanted: Vec<LivekitFocus> = plan.services().into_iter().cloned().collect();
        self.keepers.retain(|focus, _| wanted.contains(focus));
        for focus in wanted {
            self.keepers.entry(focus.clone()).or_insert_with(|| {
                let request =
                    TokenRequest::for_group(self.group.id(), me.clone()).with_alias(focus.alias.clone());
                let client = JwtServiceClient::new(focus.service_url.clone());
                Keeper {
                    keeper: TokenKeeper::new(client, self.adapter.clone(), request, REFRESH_MARGIN),
                    retry_at: None,
                    backoff: FIRST_RETRY,
                }
            });
        }
    }

    /// Fetches credentials for every service that has none, or whose token is due.
    async fn refresh_due(&mut self) {
        let now = tokio::time::Instant::now();
        for (focus, k) in self.keepers.iter_mut() {
            let fresh =
                k.keeper.fetches() > 0 && k.keeper.refresh_at().is_none_or(|at| SystemTime::now() < at);
            if fresh || k.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            let before = k.keeper.fetches();
            let result = k.keeper.credentials(SystemTime::now()).await.cloned();
            let update = match result {
                Ok(credentials) => {
                    k.retry_at = None;
                    k.backoff = FIRST_RETRY;
                    (k.keeper.fetches() != before)
                        .then(|| LivekitUpdate::Credentials { focus: focus.clone(), credentials })
                }
                Err(error) => {
                    let retry_in = k.backoff;
                    k.retry_at = Some(tokio::time::Instant::now() + retry_in);
                    k.backoff = (k.backoff * 2).min(MAX_RETRY);
                    tracing::warn!(service = %focus.service_url, %error, ?retry_in, "LiveKit token request failed");
                    Some(LivekitUpdate::CredentialsFailed {
                        focus: focus.clone(),
                        error: Arc::new(error),
                        retry_in,
                    })
                }
            };
            if let Some(update) = update {
                let _ = self.tx.send(update);
            }
        }
    }

    /// The next refresh or retry.
    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let now_sys = SystemTime::now();
        let now = tokio::time::Instant::now();
        self.keepers
            .values()
            .filter_map(|k| {
                k.retry_at.or_else(|| {
                    k.keeper.refresh_at().map(|at| now + at.duration_since(now_sys).unwrap_or_default())
                })
            })
            .min()
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
