//! Sends that `voip_core::SendKind` does not have yet (state events with explicit keys,
//! MSC4140 delayed events), OpenID tokens and `/versions` capabilities.

use std::time::Duration;

use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::api::client::account::request_openid_token;
use matrix_sdk::ruma::api::client::delayed_events::{
    delayed_message_event, delayed_state_event, update_delayed_event, DelayParameters,
};
use matrix_sdk::ruma::api::client::discovery::get_supported_versions;
use matrix_sdk::ruma::api::client::state::send_state_event;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use serde_json::Value;
pub use voip_core::DelayedAction;
use voip_core::{RoomId, SendOutcome};

use crate::retry::{self, classify_http, Failure, RetryPolicy};
use crate::{AdapterError, MatrixAdapter};

/// `/versions` unstable feature flag of MSC4140 (delayed events).
pub const MSC4140_FEATURE: &str = "org.matrix.msc4140";

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events` (MSC4140's listing of the
/// user's scheduled delayed events; ruma has no request type for it). Synapse answers
/// `{"delayed_events": [{"delay_id", "room_id", "type", "state_key", "delay_ms",
/// "delayed_since_ts", "content", "delay", "running_since"}]}`.
mod list_delayed_events {
    use matrix_sdk::ruma::api::auth_scheme::{AccessToken, AuthScheme};
    use matrix_sdk::ruma::api::error::{
        DeserializationError, Error as MatrixError, FromHttpResponseError, IntoHttpError,
    };
    use matrix_sdk::ruma::api::{EndpointError, IncomingResponse, Metadata, OutgoingRequest};
    use matrix_sdk::ruma::exports::{bytes::BufMut, http};
    use matrix_sdk::ruma::metadata;

    /// The listing request (no parameters). Written by hand: ruma's request macros cannot be
    /// used from outside ruma's own crates here.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Request;

    metadata! {
        method: GET,
        rate_limited: true,
        authentication: AccessToken,
        path: "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
    }

    /// The scheduled delayed events, unparsed.
    #[derive(Clone, Debug)]
    pub(crate) struct Response {
        pub(crate) delayed_events: Vec<serde_json::Value>,
    }

    impl OutgoingRequest for Request {
        type EndpointError = MatrixError;
        type IncomingResponse = Response;

        fn try_into_http_request<T: Default + BufMut + AsRef<[u8]>>(
            self,
            base_url: &str,
            authentication_input: <AccessToken as AuthScheme>::Input<'_>,
            path_builder_input: <Self::PathBuilder as matrix_sdk::ruma::api::path_builder::PathBuilder>::Input<'_>,
        ) -> Result<http::Request<T>, IntoHttpError> {
            let url = Self::make_endpoint_url(path_builder_input, base_url, &[], "")?;
            let mut request = http::Request::builder()
                .method(Self::METHOD)
                .uri(url)
                .body(Self::empty_request_body::<T>())?;
            AccessToken::add_authentication(&mut request, authentication_input)
                .map_err(|e| IntoHttpError::Authentication(e.into()))?;
            Ok(request)
        }
    }

    impl IncomingResponse for Response {
        type EndpointError = MatrixError;

        fn try_from_http_response<T: AsRef<[u8]>>(
            response: http::Response<T>,
        ) -> Result<Self, FromHttpResponseError<MatrixError>> {
            if response.status().as_u16() >= 400 {
                return Err(FromHttpResponseError::Server(MatrixError::from_http_response(response)));
            }
            let body: serde_json::Value = serde_json::from_slice(response.body().as_ref())
                .map_err(|e| FromHttpResponseError::Deserialization(DeserializationError::Json(e)))?;
            let delayed_events =
                body.get("delayed_events").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
            Ok(Response { delayed_events })
        }
    }
}

/// The entries of a delayed-event listing the core can use; unreadable ones are skipped (and
/// logged). Synapse 1.163 sends `delay_ms` and the older revision's `delay` side by side; an entry
/// with only `delay` gets it as `delay_ms`.
fn parse_delayed_events(listed: Vec<Value>) -> Vec<voip_core::ScheduledDelayedEvent> {
    listed
        .into_iter()
        .filter_map(|mut v| {
            if let Some(o) = v.as_object_mut().filter(|o| !o.contains_key("delay_ms")) {
                if let Some(d) = o.get("delay").cloned() {
                    o.insert("delay_ms".into(), d);
                }
            }
            serde_json::from_value::<voip_core::ScheduledDelayedEvent>(v)
                .map_err(|e| tracing::warn!(%e, "unreadable delayed event in the listing"))
                .ok()
        })
        .collect()
}

/// A state event with an explicit state key (e.g. a call membership
/// `_@alice:hs_DEVICE` / `@alice:hs`).
#[derive(Clone, Debug, PartialEq)]
pub struct StateEventRequest {
    /// The room.
    pub room_id: RoomId,
    /// Event type, e.g. `org.matrix.msc3401.call.member`.
    pub event_type: String,
    /// State key.
    pub state_key: String,
    /// Content (`{}` to leave a call).
    pub content: Value,
    /// A leave: retried with the critical policy, never given up silently.
    pub critical: bool,
}

/// What a delayed event will send when it fires.
#[derive(Clone, Debug, PartialEq)]
pub enum DelayedEvent {
    /// A state event (typically the `{}` call-membership leave).
    State {
        /// Event type.
        event_type: String,
        /// State key.
        state_key: String,
        /// Content.
        content: Value,
    },
    /// A message-like event.
    Message {
        /// Event type.
        event_type: String,
        /// Content.
        content: Value,
        /// Transaction id (idempotent scheduling).
        txn_id: String,
    },
}

/// Schedule an event to be sent by the homeserver after `delay` unless restarted or cancelled
/// (MSC4140).
#[derive(Clone, Debug, PartialEq)]
pub struct DelayedEventRequest {
    /// The room.
    pub room_id: RoomId,
    /// The event.
    pub event: DelayedEvent,
    /// Delay before it fires (restarting the timer resets it to this).
    pub delay: Duration,
}

/// An OpenID token (for a LiveKit JWT service or other third party).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIdToken {
    /// The token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Server name the third party validates against.
    pub matrix_server_name: String,
    /// Lifetime.
    pub expires_in: Duration,
}

fn bad(error: String) -> Failure {
    Failure::refused(false, error)
}

fn room_id(r: &RoomId) -> Result<OwnedRoomId, Failure> {
    OwnedRoomId::try_from(r.as_str()).map_err(|e| bad(format!("invalid room id {r}: {e}")))
}

fn raw<T>(content: &Value) -> Result<Raw<T>, Failure> {
    Ok(Raw::new(content).map_err(|e| bad(e.to_string()))?.cast_unchecked())
}

/// Who retries a request: the adapter (the app called it directly) or the core (it came
/// through [`MatrixAdapter::execute`]; the core retries with back-off by its own rules, so the
/// adapter makes one attempt and reports the outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retries {
    /// The adapter's [`RetryPolicy`]s apply.
    Adapter,
    /// One attempt.
    Core,
}

impl MatrixAdapter {
    /// The retry bounds of one request: the app's calls use the adapter's policies; the core's
    /// sends ([`MatrixAdapter::execute`]) get one attempt, because the core owns their retries.
    pub(crate) fn policy(&self, retries: Retries, critical: bool) -> RetryPolicy {
        match retries {
            Retries::Core => RetryPolicy::NONE,
            Retries::Adapter if critical => self.inner.options.critical_retry,
            Retries::Adapter => self.inner.options.retry,
        }
    }

    /// Sends a state event with an explicit state key, with retries. `Sent` carries the event id.
    pub async fn send_state(&self, req: StateEventRequest) -> SendOutcome {
        self.send_state_with(Retries::Adapter, req).await
    }

    pub(crate) async fn send_state_with(&self, retries: Retries, req: StateEventRequest) -> SendOutcome {
        let result = async {
            let room = room_id(&req.room_id)?;
            let body = raw(&req.content)?;
            let client = self.inner.client.clone();
            retry::retry_counted(
                self.policy(retries, req.critical),
                &req.event_type,
                Some(&self.inner.counters),
                |_| {
                    let request = send_state_event::v3::Request::new_raw(
                        room.clone(),
                        req.event_type.as_str().into(),
                        req.state_key.clone(),
                        body.clone(),
                    );
                    let client = client.clone();
                    async move {
                        client
                            .send(request)
                            .with_request_config(RequestConfig::new().disable_retry())
                            .await
                            .map_err(|e| classify_http(&e))
                    }
                },
            )
            .await
        }
        .await;
        match result {
            Ok(r) => SendOutcome::Sent { event_id: Some(r.event_id.to_string()), delay_id: None },
            Err(f) => {
                if req.critical {
                    tracing::error!(room = %req.room_id, r#type = %req.event_type, key = %req.state_key, ?f, "critical state send failed");
                }
                f.into_outcome()
            }
        }
    }

    /// Schedules a delayed event (MSC4140); returns its `delay_id`. Errors with
    /// `M_FORBIDDEN`/`M_UNRECOGNIZED` when the server does not allow delayed events (see
    /// [`MatrixAdapter::supports_delayed_events`]). Scheduling a leave is critical: it is retried
    /// with the critical policy.
    pub async fn schedule_delayed(&self, req: DelayedEventRequest) -> Result<String, Failure> {
        self.schedule_delayed_with(Retries::Adapter, req).await
    }

    pub(crate) async fn schedule_delayed_with(
        &self,
        retries: Retries,
        req: DelayedEventRequest,
    ) -> Result<String, Failure> {
        let room = room_id(&req.room_id)?;
        let client = self.inner.client.clone();
        let params = DelayParameters::Timeout { timeout: req.delay };
        match &req.event {
            DelayedEvent::State { event_type, state_key, content } => {
                let body = raw(content)?;
                retry::retry_counted(
                    self.policy(retries, true),
                    event_type,
                    Some(&self.inner.counters),
                    |_| {
                        let request = delayed_state_event::unstable::Request::new_raw(
                            room.clone(),
                            state_key.clone(),
                            event_type.as_str().into(),
                            params.clone(),
                            body.clone(),
                        );
                        let client = client.clone();
                        async move {
                            client
                                .send(request)
                                .with_request_config(RequestConfig::new().disable_retry())
                                .await
                                .map(|r| r.delay_id)
                                .map_err(|e| classify_http(&e))
                        }
                    },
                )
                .await
            }
            DelayedEvent::Message { event_type, content, txn_id } => {
                let body = raw(content)?;
                retry::retry_counted(
                    self.policy(retries, false),
                    event_type,
                    Some(&self.inner.counters),
                    |_| {
                        let request = delayed_message_event::unstable::Request::new_raw(
                            room.clone(),
                            txn_id.as_str().into(),
                            event_type.as_str().into(),
                            params.clone(),
                            body.clone(),
                        );
                        let client = client.clone();
                        async move {
                            client
                                .send(request)
                                .with_request_config(RequestConfig::new().disable_retry())
                                .await
                                .map(|r| r.delay_id)
                                .map_err(|e| classify_http(&e))
                        }
                    },
                )
                .await
            }
        }
    }

    /// Restarts, sends or cancels a delayed event. A `delay_id` that is unknown (already sent or
    /// cancelled) fails permanently with `M_NOT_FOUND`.
    pub async fn update_delayed(&self, delay_id: &str, action: DelayedAction) -> Result<(), Failure> {
        self.update_delayed_with(Retries::Adapter, delay_id, action).await
    }

    pub(crate) async fn update_delayed_with(
        &self,
        retries: Retries,
        delay_id: &str,
        action: DelayedAction,
    ) -> Result<(), Failure> {
        let client = self.inner.client.clone();
        let action_name = match action {
            DelayedAction::Restart => "restart",
            DelayedAction::Send => "send",
            DelayedAction::Cancel => "cancel",
        };
        // Sending a leave now must not be lost; restarts are frequent and cheap to miss once.
        let critical = action == DelayedAction::Send;
        retry::retry_counted(self.policy(retries, critical), action_name, Some(&self.inner.counters), |_| {
            let a = match action {
                DelayedAction::Restart => update_delayed_event::unstable::UpdateAction::Restart,
                DelayedAction::Send => update_delayed_event::unstable::UpdateAction::Send,
                DelayedAction::Cancel => update_delayed_event::unstable::UpdateAction::Cancel,
            };
            let request = update_delayed_event::unstable::Request::new(delay_id.to_owned(), a);
            let client = client.clone();
            async move {
                let result = client
                    .send(request)
                    .with_request_config(RequestConfig::new().disable_retry())
                    .await
                    .map(|_| ())
                    .map_err(|e| classify_http(&e));
                match result {
                    // Cancelling a delayed event that no longer exists (it fired, or was sent or
                    // cancelled already) achieved what it was for: not a failed send.
                    Err(f) if action == DelayedAction::Cancel && f.errcode() == Some("M_NOT_FOUND") => Ok(()),
                    other => other,
                }
            }
        })
        .await
    }

    /// Lists our user's scheduled delayed events (MSC4140), as [`SendOutcome::DelayedEvents`].
    /// Entries that do not parse are skipped. A server without the endpoint answers `404` or
    /// `400` `M_UNRECOGNIZED`: reported as a failure with errcode `M_UNRECOGNIZED`, not retried.
    pub async fn list_delayed_events(&self) -> SendOutcome {
        self.list_delayed_events_with(Retries::Adapter).await
    }

    pub(crate) async fn list_delayed_events_with(&self, retries: Retries) -> SendOutcome {
        let client = self.inner.client.clone();
        let result = retry::retry_counted(
            self.policy(retries, false),
            "list-delayed",
            Some(&self.inner.counters),
            |_| {
                let client = client.clone();
                async move {
                    client
                        .send(list_delayed_events::Request)
                        .with_request_config(RequestConfig::new().disable_retry())
                        .await
                        .map_err(|e| {
                            let status = e.as_client_api_error().map(|api| api.status_code.as_u16());
                            match classify_http(&e) {
                                Failure::Permanent { retryable, error, errcode: None }
                                    if matches!(status, Some(404 | 405)) =>
                                {
                                    Failure::Permanent {
                                        retryable,
                                        error,
                                        errcode: Some("M_UNRECOGNIZED".into()),
                                    }
                                }
                                other => other,
                            }
                        })
                }
            },
        )
        .await;
        match result {
            Ok(r) => {
                let delayed_events = parse_delayed_events(r.delayed_events);
                SendOutcome::DelayedEvents { delayed_events }
            }
            Err(f) => f.into_outcome(),
        }
    }

    /// Requests an OpenID token for our user.
    pub async fn openid_token(&self) -> Result<OpenIdToken, AdapterError> {
        let user: OwnedUserId = self.inner.client.user_id().ok_or(AdapterError::NotLoggedIn)?.to_owned();
        let r = self.inner.client.send(request_openid_token::v3::Request::new(user)).await?;
        Ok(OpenIdToken {
            access_token: r.access_token,
            token_type: r.token_type.to_string(),
            matrix_server_name: r.matrix_server_name.to_string(),
            expires_in: r.expires_in,
        })
    }

    /// Whether the homeserver accepts MSC4140 delayed events (`org.matrix.msc4140` in
    /// `/versions`' `unstable_features`). Asked once, then cached.
    pub async fn supports_delayed_events(&self) -> Result<bool, AdapterError> {
        self.inner
            .delayed_events_supported
            .get_or_try_init(|| async {
                let r = self.inner.client.send(get_supported_versions::Request::new()).await?;
                Ok::<_, AdapterError>(r.unstable_features.get(MSC4140_FEATURE).copied().unwrap_or(false))
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_synapse_listing_parses_with_both_delay_names() {
        // As Synapse 1.163's DelayedEventsServlet answers (DelayedEventResponseLegacyCompat).
        let listed = vec![
            json!({"delay_id": "syd_a", "room_id": "!r:hs", "type": "org.matrix.msc3401.call.member",
                   "state_key": "_@a:hs_DEV_m.call", "delay_ms": 8000, "delayed_since_ts": 1_700_000_000_000u64,
                   "content": {}, "delay": 8000, "running_since": 1_700_000_000_000u64}),
            json!({"delay_id": "syd_b", "room_id": "!r:hs", "type": "m.room.message",
                   "delay": 5000, "content": {"body": "later"}}),
            json!({"room_id": "!r:hs", "type": "no delay id"}),
        ];
        let parsed = parse_delayed_events(listed);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].delay_id, "syd_a");
        assert_eq!(parsed[0].state_key.as_deref(), Some("_@a:hs_DEV_m.call"));
        assert_eq!(parsed[0].delay_ms, Some(8000));
        assert_eq!((parsed[1].state_key.as_deref(), parsed[1].delay_ms), (None, Some(5000)));
    }
}
