//! The JWT service client against a mock HTTP server: endpoint fallback, the retry without delay
//! fields, typed errors, malformed answers, and refresh before expiry.
//!
//! The happy path against a real service that validates real OpenID tokens with a real Synapse
//! is in `tests/synapse/`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use serde_json::{json, Value};
use voip_core::{DeviceId, GroupCallId, Participant, RoomId, UserId};
use voip_livekit::{
    DelayedLeave, JwtError, JwtServiceClient, OpenIdSource, OpenIdToken, TokenEndpoint, TokenKeeper,
    TokenRequest,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "devkey";
const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";

fn mint(identity: &str, room: &str, ttl: Duration) -> String {
    AccessToken::with_api_key(KEY, SECRET)
        .with_identity(identity)
        .with_grants(VideoGrants { room_join: true, room: room.into(), ..Default::default() })
        .with_ttl(ttl)
        .to_jwt()
        .expect("mint")
}

fn openid() -> OpenIdToken {
    OpenIdToken {
        access_token: "opaque".into(),
        token_type: "Bearer".into(),
        matrix_server_name: "example.org".into(),
        expires_in: 3600,
    }
}

fn request(delay: bool) -> TokenRequest {
    let member = Participant {
        user_id: UserId::from("@alice:example.org"),
        device_id: DeviceId::from("ALICEDEV"),
        member_id: "@alice:example.org:ALICEDEV".into(),
    };
    let mut r = TokenRequest::for_group(&GroupCallId::room_call(RoomId::from("!room:example.org")), member);
    if delay {
        r.delayed_leave = Some(DelayedLeave { delay_id: "syd_abc".into(), delay_timeout_ms: 8000 });
    }
    r
}

fn client(server: &MockServer) -> JwtServiceClient {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // A trailing slash in the configured URL must not double up.
    JwtServiceClient::with_http(http, format!("{}/", server.uri()))
}

fn ok(identity: &str, room: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(
        json!({"url": "wss://sfu.example.org", "jwt": mint(identity, room, Duration::from_secs(3600))}),
    )
}

fn err(status: u16, errcode: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"errcode": errcode, "error": "nope"}))
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

async fn requests(server: &MockServer) -> Vec<(String, Value)> {
    server.received_requests().await.unwrap().iter().map(|r| (r.url.path().to_owned(), body(r))).collect()
}

#[tokio::test]
async fn get_token_answer_gives_url_jwt_room_and_identity_from_the_claims() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/get_token"))
        .respond_with(ok("hashed-id", "lk-room"))
        .mount(&server)
        .await;
    let creds = client(&server).get_token(&openid(), &request(false)).await.unwrap();
    assert_eq!(creds.endpoint, TokenEndpoint::GetToken);
    assert_eq!(
        (creds.url.as_str(), creds.room.as_str(), creds.identity.as_str()),
        ("wss://sfu.example.org", "lk-room", "hashed-id")
    );
    let claims = TokenVerifier::with_api_key(KEY, SECRET).verify(&creds.jwt).unwrap();
    assert_eq!(claims.sub, creds.identity);
    let left = creds.expires_at.unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3601), "{left:?}");
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1["room_id"], "!room:example.org");
    assert_eq!(sent[0].1["slot_id"], "m.call#ROOM");
    assert_eq!(sent[0].1["member"]["claimed_user_id"], "@alice:example.org");
    assert_eq!(sent[0].1["openid_token"]["access_token"], "opaque");
}

#[tokio::test]
async fn an_old_service_without_get_token_is_asked_on_sfu_get() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/get_token"))
        .respond_with(err(404, "M_NOT_FOUND"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/sfu/get"))
        .respond_with(ok("@alice:example.org:ALICEDEV", "r"))
        .mount(&server)
        .await;
    let creds = client(&server).get_token(&openid(), &request(false)).await.unwrap();
    assert_eq!(creds.endpoint, TokenEndpoint::SfuGet);
    assert_eq!(creds.identity, "@alice:example.org:ALICEDEV");
    let sent = requests(&server).await;
    assert_eq!(sent.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["/get_token", "/sfu/get"]);
    assert_eq!(
        sent[1].1,
        json!({"room": "!room:example.org", "openid_token": openid(), "device_id": "ALICEDEV"})
    );

    // Nothing at all there: a typed error, not a fall-through.
    let empty = MockServer::start().await;
    assert!(matches!(client(&empty).get_token(&openid(), &request(false)).await, Err(JwtError::NotFound(_))));
}

struct HasDelay;
impl wiremock::Match for HasDelay {
    fn matches(&self, r: &Request) -> bool {
        serde_json::from_slice::<Value>(&r.body).is_ok_and(|b| b.get("delay_id").is_some())
    }
}

#[tokio::test]
async fn bad_json_with_delay_fields_is_retried_once_without_them() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/get_token"))
        .and(HasDelay)
        .respond_with(err(400, "M_BAD_JSON"))
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path("/get_token")).respond_with(ok("id", "r")).mount(&server).await;
    let creds = client(&server).get_token(&openid(), &request(true)).await.unwrap();
    assert_eq!(creds.identity, "id");
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (sent[0].1["delay_id"].as_str(), sent[0].1["delay_timeout"].as_u64()),
        (Some("syd_abc"), Some(8000))
    );
    assert!(sent[1].1.get("delay_id").is_none() && sent[1].1.get("delay_timeout").is_none());

    // The same on the legacy endpoint.
    let legacy = MockServer::start().await;
    Mock::given(path("/get_token")).respond_with(err(404, "M_NOT_FOUND")).mount(&legacy).await;
    Mock::given(path("/sfu/get")).and(HasDelay).respond_with(err(400, "M_BAD_JSON")).mount(&legacy).await;
    Mock::given(path("/sfu/get")).respond_with(ok("id", "r")).mount(&legacy).await;
    client(&legacy).get_token(&openid(), &request(true)).await.unwrap();
    assert_eq!(requests(&legacy).await.len(), 3);

    // Without delay fields there is nothing to drop: the 400 is the answer.
    let strict = MockServer::start().await;
    Mock::given(path("/get_token")).respond_with(err(400, "M_BAD_JSON")).mount(&strict).await;
    let e = client(&strict).get_token(&openid(), &request(false)).await.unwrap_err();
    assert!(matches!(&e, JwtError::Rejected { status: 400, errcode, .. } if errcode == "M_BAD_JSON"), "{e}");
    assert_eq!(requests(&strict).await.len(), 1);
}

/// An answer and what the client must make of it.
type Case = (ResponseTemplate, fn(&JwtError) -> bool);

#[tokio::test]
async fn http_errors_are_typed() {
    let cases: [Case; 6] = [
        (
            err(401, "M_UNAUTHORIZED"),
            |e| matches!(e, JwtError::Unauthorized { errcode, .. } if errcode == "M_UNAUTHORIZED"),
        ),
        (
            err(403, "M_FORBIDDEN"),
            |e| matches!(e, JwtError::Forbidden { errcode, .. } if errcode == "M_FORBIDDEN"),
        ),
        (
            ResponseTemplate::new(500).set_body_string("boom"),
            |e| matches!(e, JwtError::Server { status: 500, body } if body == "boom"),
        ),
        (err(503, "M_UNKNOWN"), |e| matches!(e, JwtError::Server { status: 503, .. }) && e.is_transient()),
        (
            ResponseTemplate::new(401),
            |e| matches!(e, JwtError::Unauthorized { errcode, .. } if errcode.is_empty()),
        ),
        (err(429, "M_LIMIT_EXCEEDED"), |e| {
            matches!(e, JwtError::Rejected { status: 429, .. }) && !e.is_transient()
        }),
    ];
    for (response, check) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(response).mount(&server).await;
        let e = client(&server).get_token(&openid(), &request(false)).await.unwrap_err();
        assert!(check(&e), "unexpected {e:?}");
        assert_eq!(requests(&server).await.len(), 1, "no fallback or retry after {e}");
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    let bad_jwt = |jwt: &str| ResponseTemplate::new(200).set_body_json(json!({"url": "wss://x", "jwt": jwt}));
    let no_room = AccessToken::with_api_key(KEY, SECRET).with_identity("id").to_jwt().unwrap();
    let cases: Vec<Case> = vec![
        (ResponseTemplate::new(200).set_body_string("<html>"), |e| matches!(e, JwtError::InvalidResponse(_))),
        (ResponseTemplate::new(200).set_body_json(json!({"url": "wss://x"})), |e| {
            matches!(e, JwtError::InvalidResponse(_))
        }),
        (ResponseTemplate::new(200).set_body_json(json!({"url": 1, "jwt": "a.b.c"})), |e| {
            matches!(e, JwtError::InvalidResponse(_))
        }),
        (bad_jwt("not-a-jwt"), |e| matches!(e, JwtError::InvalidJwt(_))),
        (bad_jwt("a.%%%.c"), |e| matches!(e, JwtError::InvalidJwt(_))),
        (bad_jwt(&no_room), |e| matches!(e, JwtError::InvalidJwt(_))),
        (ResponseTemplate::new(200).set_body_string("x".repeat(1 << 20)), |e| {
            matches!(e, JwtError::InvalidResponse(_))
        }),
        (ResponseTemplate::new(418).set_body_string("\u{0}\u{1}"), |e| {
            matches!(e, JwtError::Rejected { status: 418, .. })
        }),
    ];
    for (response, check) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(response).mount(&server).await;
        let e = client(&server).get_token(&openid(), &request(false)).await.unwrap_err();
        assert!(check(&e), "unexpected {e:?}");
    }
    // Nobody listening: a transport error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let e = JwtServiceClient::with_http(http, format!("http://{closed}"))
        .get_token(&openid(), &request(false))
        .await
        .unwrap_err();
    assert!(matches!(e, JwtError::Http(_)) && e.is_transient(), "{e:?}");
}

struct CountingSource(Arc<AtomicU32>, bool);
impl OpenIdSource for CountingSource {
    async fn openid_token(&self) -> Result<OpenIdToken, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if self.1 {
            Ok(openid())
        } else {
            Err("homeserver unreachable".into())
        }
    }
}

#[tokio::test]
async fn the_keeper_refreshes_credentials_before_they_expire() {
    let server = MockServer::start().await;
    let minted = Arc::new(AtomicU32::new(0));
    let m = minted.clone();
    Mock::given(path("/get_token"))
        .respond_with(move |_: &Request| {
            let n = m.fetch_add(1, Ordering::SeqCst);
            let jwt = mint(&format!("id{n}"), "r", Duration::from_secs(120));
            ResponseTemplate::new(200).set_body_json(json!({"url": "wss://x", "jwt": jwt}))
        })
        .mount(&server)
        .await;
    let openids = Arc::new(AtomicU32::new(0));
    let mut keeper = TokenKeeper::new(
        client(&server),
        CountingSource(openids.clone(), true),
        request(false),
        Duration::from_secs(60),
    );
    assert_eq!(keeper.refresh_at(), None);
    let t0 = SystemTime::now();
    assert_eq!(keeper.credentials(t0).await.unwrap().identity, "id0");
    let refresh_at = keeper.refresh_at().unwrap();
    let lead = refresh_at.duration_since(t0).unwrap();
    assert!(lead >= Duration::from_secs(59) && lead <= Duration::from_secs(61), "{lead:?}");
    // Before the refresh point: the same credentials, no request.
    assert_eq!(keeper.credentials(t0 + Duration::from_secs(30)).await.unwrap().identity, "id0");
    assert_eq!(keeper.fetches(), 1);
    // At it (still a minute before expiry): fresh ones, with a fresh OpenID token.
    assert_eq!(keeper.credentials(refresh_at).await.unwrap().identity, "id1");
    assert_eq!((keeper.fetches(), openids.load(Ordering::SeqCst)), (2, 2));
    keeper.invalidate();
    assert_eq!(keeper.credentials(refresh_at).await.unwrap().identity, "id2");

    let mut failing = TokenKeeper::new(
        client(&server),
        CountingSource(Arc::default(), false),
        request(false),
        Duration::ZERO,
    );
    assert!(matches!(failing.credentials(t0).await, Err(JwtError::OpenId(e)) if e.contains("unreachable")));
}
