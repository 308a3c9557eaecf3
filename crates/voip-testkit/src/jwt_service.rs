//! A MatrixRTC JWT service for tests (feature `jwt-service`), speaking lk-jwt-service's protocol:
//! it validates the OpenID token against the real Synapse's federation `openid/userinfo` endpoint
//! and mints real LiveKit access tokens with `livekit-api`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use livekit_api::access_token::{AccessToken, VideoGrants};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The LiveKit API key the tokens are signed for.
pub const API_KEY: &str = "testkey";
/// The LiveKit API secret the tokens are signed with.
pub const API_SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
/// The SFU URL the service answers with (nothing listens there).
pub const SFU_URL: &str = "ws://127.0.0.1:7880";

#[derive(Clone, Debug, Default)]
/// How the service behaves.
pub struct Options {
    /// An old service: no `/get_token` (404).
    pub legacy_only: bool,
    /// Refuse delayed-leave fields with 400 `M_BAD_JSON` (services without MSC4140 support).
    pub reject_delay: bool,
    /// Lifetime of the minted tokens (`exp`); one hour when `None`, as lk-jwt-service.
    pub ttl: Option<Duration>,
}

struct Svc {
    options: Options,
    synapse_url: String,
    http: reqwest::Client,
    /// Every request: endpoint, whether it carried delay fields, the HTTP status answered.
    log: Mutex<Vec<(String, bool, u16)>>,
}

/// A running service; stopped when dropped.
pub struct JwtService {
    /// Its base URL (the `livekit_service_url` to put in a focus).
    pub url: String,
    svc: Arc<Svc>,
    task: tokio::task::JoinHandle<()>,
}

impl JwtService {
    /// Starts the service on a free loopback port.
    pub async fn start(options: Options) -> Result<JwtService> {
        let svc = Arc::new(Svc {
            options,
            synapse_url: crate::synapse().url.clone(),
            http: reqwest::Client::builder().no_proxy().build()?,
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/livekit/jwt/get_token", post(get_token))
            .route("/livekit/jwt/sfu/get", post(sfu_get))
            .with_state(svc.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/livekit/jwt", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(JwtService { url, svc, task })
    }

    /// `(endpoint, had delay fields, status)` of every request so far.
    pub fn log(&self) -> Vec<(String, bool, u16)> {
        self.svc.log.lock().unwrap().clone()
    }
}

impl Drop for JwtService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, errcode: &str, msg: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": msg}))).into_response()
}

/// unpadded base64 of SHA-256 over compact JSON, as lk-jwt-service hashes identities and rooms.
fn hash_json(parts: &[&str]) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(serde_json::to_string(parts).unwrap().as_bytes()))
}

impl Svc {
    fn ttl(&self) -> Duration {
        self.options.ttl.unwrap_or(Duration::from_secs(3600))
    }

    fn record(&self, endpoint: &str, body: &Value, r: &Response) {
        let delay = body.get("delay_id").is_some() || body.get("delay_timeout").is_some();
        self.log.lock().unwrap().push((endpoint.into(), delay, r.status().as_u16()));
    }

    /// Checks the delay fields, then the OpenID token against Synapse: the user id it belongs to.
    async fn validate(&self, body: &Value) -> Result<String, Response> {
        let has = |k| body.get(k).is_some();
        if has("delay_id") != has("delay_timeout") || (self.options.reject_delay && has("delay_id")) {
            return Err(error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "delay_id and delay_timeout"));
        }
        let token = body["openid_token"]["access_token"].as_str().unwrap_or_default();
        let server = body["openid_token"]["matrix_server_name"].as_str().unwrap_or_default();
        if token.is_empty() || server.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "openid_token"));
        }
        // The token names `localhost`; the rig's Synapse serves federation on its client port.
        if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "malformed OpenID token"));
        }
        let url = format!("{}/_matrix/federation/v1/openid/userinfo?access_token={token}", self.synapse_url);
        let answer = self.http.get(url).send().await;
        let sub = match answer {
            Ok(r) if r.status().is_success() => {
                r.json::<Value>().await.ok().and_then(|v| v["sub"].as_str().map(str::to_owned))
            }
            _ => None,
        };
        match sub {
            Some(sub) if sub.ends_with(&format!(":{server}")) => Ok(sub),
            _ => Err(error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "invalid OpenID token")),
        }
    }
}

fn mint(identity: &str, room: &str, ttl: Duration) -> Response {
    let jwt = AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_grants(VideoGrants { room_join: true, room: room.into(), ..Default::default() })
        .with_ttl(ttl)
        .to_jwt()
        .expect("mint");
    Json(json!({"url": SFU_URL, "jwt": jwt})).into_response()
}

async fn get_token(State(svc): State<Arc<Svc>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", "not JSON");
    };
    let r = if svc.options.legacy_only {
        error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such endpoint")
    } else {
        get_token_inner(&svc, &body).await
    };
    svc.record("get_token", &body, &r);
    r
}

async fn get_token_inner(svc: &Svc, body: &Value) -> Response {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (room_id, slot_id) = (s(&body["room_id"]), s(&body["slot_id"]));
    let m = &body["member"];
    let (member_id, claimed_user, claimed_device) =
        (s(&m["id"]), s(&m["claimed_user_id"]), s(&m["claimed_device_id"]));
    if [&room_id, &slot_id, &member_id, &claimed_user, &claimed_device].iter().any(|x| x.is_empty()) {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "missing fields");
    }
    let user = match svc.validate(body).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if user != claimed_user {
        return error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", "claimed user does not own the token");
    }
    mint(&hash_json(&[&user, &claimed_device, &member_id]), &hash_json(&[&room_id, &slot_id]), svc.ttl())
}

async fn sfu_get(State(svc): State<Arc<Svc>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", "not JSON");
    };
    let r = sfu_get_inner(&svc, &body).await;
    svc.record("sfu/get", &body, &r);
    r
}

async fn sfu_get_inner(svc: &Svc, body: &Value) -> Response {
    let (Some(room), Some(device)) = (body["room"].as_str(), body["device_id"].as_str()) else {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "room and device_id");
    };
    match svc.validate(body).await {
        Ok(user) => mint(&format!("{user}:{device}"), &hash_json(&[room, "m.call#ROOM"]), svc.ttl()),
        Err(r) => r,
    }
}
