//! The MatrixRTC JWT service client (the protocol of element-hq's lk-jwt-service).
//!
//! ```text
//!  OpenID token ──▶ POST {service}/get_token ──200──▶ { url, jwt }
//!                        │ 404 (old service)
//!                        ▼
//!                   POST {service}/sfu/get ──200──▶ { url, jwt }
//!  either: 400 M_BAD_JSON with delay fields ──▶ the same request once more without them
//! ```
//!
//! The LiveKit room and our LiveKit identity are read from the JWT's claims (`video.room`,
//! `sub`), never computed locally: services have changed their formulas over time.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use voip_core::{GroupCallId, Participant};

/// Bodies larger than this are not read as a JWT service answer.
const MAX_BODY: usize = 64 * 1024;

/// An OpenID token from the homeserver (`POST /_matrix/client/v3/user/{userId}/openid/request_token`),
/// sent verbatim to the JWT service as `openid_token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenIdToken {
    /// The token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// The homeserver the service validates the token against.
    pub matrix_server_name: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

impl fmt::Debug for OpenIdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenIdToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("matrix_server_name", &self.matrix_server_name)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// A source of fresh OpenID tokens (the homeserver, through the app's client).
pub trait OpenIdSource {
    /// Requests a new OpenID token.
    fn openid_token(&self) -> impl Future<Output = Result<OpenIdToken, String>> + Send;
}

/// MSC4140 delayed leave the service may take over (`delay_id` + `delay_timeout`, always together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayedLeave {
    /// The delayed event's id.
    pub delay_id: String,
    /// Its timeout in milliseconds.
    pub delay_timeout_ms: u64,
}

/// What to ask a JWT service for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Matrix room.
    pub room_id: String,
    /// The MatrixRTC slot, `m.call#ROOM` for the room's call.
    pub slot_id: String,
    /// The focus' `livekit_alias`: the legacy `/sfu/get` `room` field (the room id when absent).
    pub livekit_alias: Option<String>,
    /// Us: user, device and membership id.
    pub member: Participant,
    /// Optional delayed leave (dropped and retried without on `M_BAD_JSON`).
    pub delayed_leave: Option<DelayedLeave>,
}

impl TokenRequest {
    /// A request for a group call (`application` `m.call`): slot `m.call#ROOM` for the room's
    /// call, `m.call#{call_id}` otherwise.
    pub fn for_group(group: &GroupCallId, member: Participant) -> Self {
        let slot = if group.call_id.is_empty() { "ROOM" } else { group.call_id.as_str() };
        TokenRequest {
            room_id: group.room_id.0.clone(),
            slot_id: format!("m.call#{slot}"),
            livekit_alias: None,
            member,
            delayed_leave: None,
        }
    }

    /// Sets the focus' `livekit_alias` (famedly and Element Call state mode).
    #[must_use]
    pub fn with_alias(mut self, alias: Option<String>) -> Self {
        self.livekit_alias = alias;
        self
    }

    fn get_token_body(&self, openid: &OpenIdToken, with_delay: bool) -> Value {
        let mut body = json!({
            "room_id": self.room_id,
            "slot_id": self.slot_id,
            "openid_token": openid,
            "member": {
                "id": self.member.member_id,
                "claimed_user_id": self.member.user_id,
                "claimed_device_id": self.member.device_id,
            },
        });
        self.add_delay(&mut body, with_delay);
        body
    }

    fn sfu_get_body(&self, openid: &OpenIdToken, with_delay: bool) -> Value {
        let mut body = json!({
            "room": self.livekit_alias.as_deref().unwrap_or(&self.room_id),
            "openid_token": openid,
            "device_id": self.member.device_id,
        });
        self.add_delay(&mut body, with_delay);
        body
    }

    fn add_delay(&self, body: &mut Value, with_delay: bool) {
        if let (true, Some(d), Some(map)) = (with_delay, &self.delayed_leave, body.as_object_mut()) {
            map.insert("delay_id".into(), json!(d.delay_id));
            map.insert("delay_timeout".into(), json!(d.delay_timeout_ms));
        }
    }
}

/// Which endpoint issued a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenEndpoint {
    /// `POST /get_token` (identity: hashed `[user, device, member id]`).
    GetToken,
    /// The legacy `POST /sfu/get` (identity: `@user:server:DEVICE`).
    SfuGet,
}

impl TokenEndpoint {
    fn path(self) -> &'static str {
        match self {
            TokenEndpoint::GetToken => "get_token",
            TokenEndpoint::SfuGet => "sfu/get",
        }
    }
}

/// The parts of a LiveKit access token this library reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct JwtClaims {
    /// `sub`: the LiveKit participant identity.
    #[serde(default)]
    pub sub: String,
    /// `name`, if set.
    #[serde(default)]
    pub name: Option<String>,
    /// `exp` (seconds since the epoch).
    #[serde(default)]
    pub exp: Option<u64>,
    /// `nbf` (seconds since the epoch).
    #[serde(default)]
    pub nbf: Option<u64>,
    /// The video grant.
    #[serde(default)]
    pub video: VideoGrant,
}

/// The LiveKit `video` grant (only the fields this library reads).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// The LiveKit room name.
    #[serde(default)]
    pub room: String,
    /// `roomJoin`.
    #[serde(default)]
    pub room_join: bool,
    /// `canPublish` (absent means allowed in LiveKit).
    #[serde(default)]
    pub can_publish: Option<bool>,
    /// `canSubscribe` (absent means allowed in LiveKit).
    #[serde(default)]
    pub can_subscribe: Option<bool>,
}

/// Reads the claims of a JWT without verifying its signature (the SFU does that; the client only
/// learns its room and identity from it).
pub fn decode_claims(jwt: &str) -> Result<JwtClaims, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::InvalidJwt("not three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| JwtError::InvalidJwt(format!("payload is not base64url: {e}")))?;
    let claims: JwtClaims =
        serde_json::from_slice(&bytes).map_err(|e| JwtError::InvalidJwt(format!("payload: {e}")))?;
    if claims.sub.is_empty() {
        return Err(JwtError::InvalidJwt("no `sub` (participant identity)".into()));
    }
    if claims.video.room.is_empty() {
        return Err(JwtError::InvalidJwt("no `video.room`".into()));
    }
    Ok(claims)
}

/// What an app needs to connect its LiveKit SDK: `Room::connect(url, jwt)`.
#[derive(Clone, PartialEq, Eq)]
pub struct LivekitCredentials {
    /// The JWT service that issued them.
    pub service_url: String,
    /// The endpoint that answered.
    pub endpoint: TokenEndpoint,
    /// The SFU's WebSocket URL.
    pub url: String,
    /// The access token.
    pub jwt: String,
    /// The LiveKit room (`video.room` claim).
    pub room: String,
    /// Our LiveKit participant identity (`sub` claim).
    pub identity: String,
    /// When the token expires (`exp` claim), if it says.
    pub expires_at: Option<SystemTime>,
}

impl fmt::Debug for LivekitCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivekitCredentials")
            .field("service_url", &self.service_url)
            .field("endpoint", &self.endpoint)
            .field("url", &self.url)
            .field("jwt", &"<redacted>")
            .field("room", &self.room)
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl LivekitCredentials {
    /// When to fetch new credentials: `margin` before expiry (never, if the token has no `exp`).
    pub fn refresh_at(&self, margin: Duration) -> Option<SystemTime> {
        self.expires_at
            .map(|at| UNIX_EPOCH + at.duration_since(UNIX_EPOCH).unwrap_or_default().saturating_sub(margin))
    }

    /// Whether these credentials are due for refresh at `now`.
    pub fn needs_refresh(&self, now: SystemTime, margin: Duration) -> bool {
        self.refresh_at(margin).is_some_and(|at| now >= at)
    }

    /// The decoded claims of [`Self::jwt`].
    pub fn claims(&self) -> Result<JwtClaims, JwtError> {
        decode_claims(&self.jwt)
    }
}

/// Failures of a JWT service request.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// 401: the service did not accept the OpenID token.
    #[error("JWT service rejected the OpenID token (401 {errcode}: {error})")]
    Unauthorized {
        /// `errcode` of the answer (e.g. `M_UNAUTHORIZED`).
        errcode: String,
        /// `error` of the answer.
        error: String,
    },
    /// 403: not allowed (e.g. a homeserver that may not use this SFU).
    #[error("JWT service refused access (403 {errcode}: {error})")]
    Forbidden {
        /// `errcode`.
        errcode: String,
        /// `error`.
        error: String,
    },
    /// 5xx: the service failed; worth retrying later.
    #[error("JWT service failed ({status}): {body}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// Neither `/get_token` nor `/sfu/get` exists at this URL.
    #[error("no JWT service at {0} (404 on /get_token and /sfu/get)")]
    NotFound(String),
    /// Another 4xx.
    #[error("JWT service rejected the request ({status} {errcode}: {error})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// `errcode`.
        errcode: String,
        /// `error`.
        error: String,
    },
    /// The request did not get an answer (connection, timeout, ...).
    #[error("JWT service request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// A 200 whose body is not `{url, jwt}`.
    #[error("JWT service answer is not {{url, jwt}}: {0}")]
    InvalidResponse(String),
    /// The `jwt` is not a LiveKit access token this library can read.
    #[error("the JWT cannot be read: {0}")]
    InvalidJwt(String),
    /// The OpenID token could not be had.
    #[error("no OpenID token: {0}")]
    OpenId(String),
}

impl JwtError {
    /// Whether trying again later may succeed (network errors and 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, JwtError::Server { .. } | JwtError::Http(_))
    }
}

/// A client of one JWT service (one `livekit_service_url`).
#[derive(Clone, Debug)]
pub struct JwtServiceClient {
    http: reqwest::Client,
    service_url: String,
    timeout: Duration,
}

enum Attempt {
    Done(LivekitCredentials),
    NotFound,
}

impl JwtServiceClient {
    /// A client for the service at `service_url` (e.g. `https://rtc.example.org/livekit/jwt`).
    pub fn new(service_url: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), service_url)
    }

    /// The same with the app's own HTTP client (proxies, TLS roots, ...).
    pub fn with_http(http: reqwest::Client, service_url: impl Into<String>) -> Self {
        let service_url = service_url.into().trim_end_matches('/').to_owned();
        JwtServiceClient { http, service_url, timeout: Duration::from_secs(30) }
    }

    /// Per-request timeout (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The service URL.
    pub fn service_url(&self) -> &str {
        &self.service_url
    }

    /// Gets LiveKit credentials: `/get_token` first, `/sfu/get` when the service answers 404.
    pub async fn get_token(
        &self,
        openid: &OpenIdToken,
        request: &TokenRequest,
    ) -> Result<LivekitCredentials, JwtError> {
        match self.attempt(TokenEndpoint::GetToken, openid, request).await? {
            Attempt::Done(c) => Ok(c),
            Attempt::NotFound => {
                tracing::debug!(service = %self.service_url, "no /get_token, falling back to /sfu/get");
                match self.attempt(TokenEndpoint::SfuGet, openid, request).await? {
                    Attempt::Done(c) => Ok(c),
                    Attempt::NotFound => Err(JwtError::NotFound(self.service_url.clone())),
                }
            }
        }
    }

    /// One endpoint, with the retry without delay fields on `M_BAD_JSON`.
    async fn attempt(
        &self,
        endpoint: TokenEndpoint,
        openid: &OpenIdToken,
        request: &TokenRequest,
    ) -> Result<Attempt, JwtError> {
        let body = |with_delay| match endpoint {
            TokenEndpoint::GetToken => request.get_token_body(openid, with_delay),
            TokenEndpoint::SfuGet => request.sfu_get_body(openid, with_delay),
        };
        match self.post(endpoint, &body(true)).await {
            Err(JwtError::Rejected { status: 400, errcode, .. })
                if errcode == "M_BAD_JSON" && request.delayed_leave.is_some() =>
            {
                tracing::debug!(?endpoint, "M_BAD_JSON with delay fields: retrying without them");
                self.post(endpoint, &body(false)).await
            }
            other => other,
        }
    }

    async fn post(&self, endpoint: TokenEndpoint, body: &Value) -> Result<Attempt, JwtError> {
        let url = format!("{}/{}", self.service_url, endpoint.path());
        let response = self.http.post(&url).timeout(self.timeout).json(body).send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let bytes = &bytes[..bytes.len().min(MAX_BODY)];
        if status == 404 {
            return Ok(Attempt::NotFound);
        }
        if !(200..300).contains(&status) {
            let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let (errcode, error) = (field("errcode"), field("error"));
            tracing::debug!(%url, status, %errcode, %error, "JWT service error");
            return Err(match status {
                401 => JwtError::Unauthorized { errcode, error },
                403 => JwtError::Forbidden { errcode, error },
                500..=599 => JwtError::Server {
                    status,
                    body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                },
                _ => JwtError::Rejected { status, errcode, error },
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            url: String,
            jwt: String,
        }
        let answer: Answer =
            serde_json::from_slice(bytes).map_err(|e| JwtError::InvalidResponse(e.to_string()))?;
        let claims = decode_claims(&answer.jwt)?;
        Ok(Attempt::Done(LivekitCredentials {
            service_url: self.service_url.clone(),
            endpoint,
            url: answer.url,
            jwt: answer.jwt,
            room: claims.video.room,
            identity: claims.sub,
            expires_at: claims.exp.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        }))
    }
}

/// Keeps the credentials of one service fresh: fetches them (with a new OpenID token) when there
/// are none or when they are within `margin` of expiring.
///
/// ```no_run
/// # async fn run(src: impl voip_livekit::OpenIdSource, req: voip_livekit::TokenRequest) -> Result<(), voip_livekit::JwtError> {
/// use std::time::{Duration, SystemTime};
/// let client = voip_livekit::JwtServiceClient::new("https://rtc.example.org/livekit/jwt");
/// let mut keeper = voip_livekit::TokenKeeper::new(client, src, req, Duration::from_secs(60));
/// let creds = keeper.credentials(SystemTime::now()).await?.clone();
/// // connect LiveKit with creds.url + creds.jwt; at keeper.refresh_at(), call credentials() again
/// // and hand the new jwt to the SDK.
/// # let _ = creds; Ok(()) }
/// ```
#[derive(Debug)]
pub struct TokenKeeper<S> {
    client: JwtServiceClient,
    source: S,
    request: TokenRequest,
    margin: Duration,
    current: Option<LivekitCredentials>,
    fetches: u64,
}

impl<S: OpenIdSource> TokenKeeper<S> {
    /// A keeper for `request` at `client`'s service, refreshing `margin` before expiry.
    pub fn new(client: JwtServiceClient, source: S, request: TokenRequest, margin: Duration) -> Self {
        TokenKeeper { client, source, request, margin, current: None, fetches: 0 }
    }

    /// Current credentials, fetched anew if there are none or they are due at `now`.
    pub async fn credentials(&mut self, now: SystemTime) -> Result<&LivekitCredentials, JwtError> {
        let due = self.current.as_ref().is_none_or(|c| c.needs_refresh(now, self.margin));
        if due {
            let openid = self.source.openid_token().await.map_err(JwtError::OpenId)?;
            let fresh = self.client.get_token(&openid, &self.request).await?;
            tracing::debug!(room = %fresh.room, identity = %fresh.identity, "LiveKit credentials fetched");
            self.fetches += 1;
            self.current = Some(fresh);
        }
        Ok(self.current.as_ref().expect("set above"))
    }

    /// When the current credentials should be refreshed (`None`: none yet, or no expiry).
    pub fn refresh_at(&self) -> Option<SystemTime> {
        self.current.as_ref().and_then(|c| c.refresh_at(self.margin))
    }

    /// Replaces the request (e.g. a new delayed-leave id) and forgets the credentials.
    pub fn set_request(&mut self, request: TokenRequest) {
        self.request = request;
        self.current = None;
    }

    /// Forgets the credentials (e.g. the SFU rejected them); the next call fetches.
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    /// How many times credentials were fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voip_core::{DeviceId, RoomId, UserId};

    fn jwt_with(payload: &Value) -> String {
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.{}", b(br#"{"alg":"HS256"}"#), b(payload.to_string().as_bytes()), b(b"sig"))
    }

    fn member() -> Participant {
        Participant {
            user_id: UserId::from("@a:x"),
            device_id: DeviceId::from("DEV"),
            member_id: "@a:x:DEV".into(),
        }
    }

    #[test]
    fn claims_are_read_and_bad_tokens_are_errors() {
        let jwt = jwt_with(&json!({"sub": "id1", "exp": 100, "video": {"room": "r1", "roomJoin": true}}));
        let c = decode_claims(&jwt).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.video.room.as_str(), c.exp, c.video.room_join),
            ("id1", "r1", Some(100), true)
        );
        for bad in [
            "".to_owned(),
            "a.b".into(),
            "a.b.c.d".into(),
            "a.!!!.c".into(),
            jwt_with(&json!([1])),
            jwt_with(&json!({"video": {"room": "r"}})),
            jwt_with(&json!({"sub": "x"})),
        ] {
            assert!(matches!(decode_claims(&bad), Err(JwtError::InvalidJwt(_))), "{bad}");
        }
    }

    #[test]
    fn request_bodies_follow_the_service_protocol() {
        let openid = OpenIdToken {
            access_token: "t".into(),
            token_type: "Bearer".into(),
            matrix_server_name: "x".into(),
            expires_in: 3600,
        };
        let mut r = TokenRequest::for_group(&GroupCallId::room_call(RoomId::from("!r:x")), member());
        assert_eq!(r.slot_id, "m.call#ROOM");
        r.delayed_leave = Some(DelayedLeave { delay_id: "d1".into(), delay_timeout_ms: 8000 });
        let b = r.get_token_body(&openid, true);
        assert_eq!(b["member"]["claimed_device_id"], "DEV");
        assert_eq!(b["openid_token"]["expires_in"], 3600);
        assert_eq!((b["delay_id"].as_str(), b["delay_timeout"].as_u64()), (Some("d1"), Some(8000)));
        assert!(r.get_token_body(&openid, false).get("delay_id").is_none());
        let s = r.clone().with_alias(Some("alias".into())).sfu_get_body(&openid, false);
        assert_eq!(s, json!({"room": "alias", "openid_token": openid, "device_id": "DEV"}));
        assert_eq!(r.sfu_get_body(&openid, false)["room"], "!r:x");
        let other = TokenRequest::for_group(
            &GroupCallId { room_id: RoomId::from("!r:x"), call_id: "c1".into() },
            member(),
        );
        assert_eq!(other.slot_id, "m.call#c1");
        assert!(!format!("{openid:?}").contains("\"t\""));
    }

    #[test]
    fn refresh_is_due_margin_before_expiry() {
        let c = LivekitCredentials {
            service_url: "s".into(),
            endpoint: TokenEndpoint::GetToken,
            url: "ws://sfu".into(),
            jwt: "j".into(),
            room: "r".into(),
            identity: "i".into(),
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(1000)),
        };
        let m = Duration::from_secs(60);
        assert_eq!(c.refresh_at(m), Some(UNIX_EPOCH + Duration::from_secs(940)));
        assert!(!c.needs_refresh(UNIX_EPOCH + Duration::from_secs(939), m));
        assert!(c.needs_refresh(UNIX_EPOCH + Duration::from_secs(940), m));
        assert_eq!(c.refresh_at(Duration::from_secs(5000)), Some(UNIX_EPOCH));
        let forever = LivekitCredentials { expires_at: None, ..c };
        assert!(!forever.needs_refresh(UNIX_EPOCH + Duration::from_secs(u32::MAX.into()), m));
    }
}
