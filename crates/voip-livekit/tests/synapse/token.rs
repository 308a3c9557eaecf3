//! The whole token path: an OpenID token from Synapse, a JWT service that validates it with
//! Synapse and mints a real LiveKit token, our client reading room and identity from it; and
//! transport discovery against Synapse's `rtc/transports`.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use livekit_api::access_token::TokenVerifier;
use voip_core::{DeviceId, GroupCallId, MembershipDialect, Participant, RoomId, UserId};
use voip_livekit::matrix::homeserver_transports;
use voip_livekit::{
    choose_own_transport, DelayedLeave, JwtError, JwtServiceClient, LivekitFocus, OpenIdSource, OpenIdToken,
    RtcTransport, TokenEndpoint, TokenKeeper, TokenRequest, TransportSource,
};

use crate::jwt_service::{JwtService, Options, API_KEY, API_SECRET, SFU_URL};
use crate::{http, Device};

fn me(d: &Device) -> Participant {
    let device = d.client.device_id().expect("logged in").to_string();
    Participant {
        user_id: UserId::from(d.user_id()),
        device_id: DeviceId::from(device.as_str()),
        member_id: format!("{}:{device}", d.user_id()),
    }
}

fn group() -> GroupCallId {
    GroupCallId::room_call(RoomId::from("!call:localhost"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_openid_token_buys_a_livekit_token_and_a_bogus_one_does_not() -> Result<()> {
    let alice = Device::new("alice").await?;
    let service = JwtService::start(Options::default()).await?;
    let client = JwtServiceClient::with_http(http(), &service.url);
    let openid: OpenIdToken = alice.adapter.openid_token().await?.into();
    assert_eq!(openid.token_type, "Bearer");

    let creds = client.get_token(&openid, &TokenRequest::for_group(&group(), me(&alice))).await?;
    assert_eq!(creds.endpoint, TokenEndpoint::GetToken);
    assert_eq!(creds.url, SFU_URL);
    // The service hashed what it verified; the core hashes what it knows: they agree.
    assert_eq!(creds.identity, me(&alice).livekit_hashed_identity());
    let claims = TokenVerifier::with_api_key(API_KEY, API_SECRET).verify(&creds.jwt)?;
    assert_eq!(
        (claims.sub.as_str(), claims.video.room.as_str()),
        (creds.identity.as_str(), creds.room.as_str())
    );
    assert!(claims.video.room_join);
    let left = creds.expires_at.unwrap().duration_since(SystemTime::now())?;
    assert!(left > Duration::from_secs(3000), "{left:?}");

    // Synapse does not know this token: 401 from the service, typed.
    let bogus = OpenIdToken { access_token: "not-a-token".into(), ..openid.clone() };
    let e = client.get_token(&bogus, &TokenRequest::for_group(&group(), me(&alice))).await.unwrap_err();
    assert!(matches!(&e, JwtError::Unauthorized { errcode, .. } if errcode == "M_UNAUTHORIZED"), "{e}");
    // A valid token claimed for someone else: refused too.
    let mut mallory = me(&alice);
    mallory.user_id = UserId::from("@mallory:localhost");
    let e = client.get_token(&openid, &TokenRequest::for_group(&group(), mallory)).await.unwrap_err();
    assert!(matches!(e, JwtError::Unauthorized { .. }), "{e}");
    assert_eq!(service.log().iter().map(|l| l.2).collect::<Vec<_>>(), [200, 401, 401]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_service_is_reached_on_sfu_get_and_the_keeper_refreshes_through_synapse() -> Result<()> {
    let bob = Device::new("bob").await?;
    let service =
        JwtService::start(Options { legacy_only: true, reject_delay: true, ..Options::default() }).await?;
    let mut req = TokenRequest::for_group(&group(), me(&bob)).with_alias(Some("!call:localhost".into()));
    req.delayed_leave = Some(DelayedLeave { delay_id: "syd_x".into(), delay_timeout_ms: 8000 });
    // The adapter is the OpenID source: every fetch asks Synapse for a new token.
    let mut keeper = TokenKeeper::new(
        JwtServiceClient::with_http(http(), &service.url),
        bob.adapter.clone(),
        req,
        Duration::from_secs(60),
    );
    let t0 = SystemTime::now();
    let first = keeper.credentials(t0).await?.clone();
    assert_eq!(first.endpoint, TokenEndpoint::SfuGet);
    assert_eq!(first.identity, me(&bob).livekit_identity());
    // /get_token 404 → /sfu/get with delay (M_BAD_JSON) → /sfu/get without.
    let log: Vec<(String, bool, u16)> = service.log();
    let expected = [("get_token", true, 404), ("sfu/get", true, 400), ("sfu/get", false, 200)];
    assert_eq!(log, expected.map(|(e, d, s)| (e.to_owned(), d, s)));
    let again = keeper.credentials(t0 + Duration::from_secs(10)).await?.clone();
    assert_eq!((again.jwt == first.jwt, keeper.fetches()), (true, 1));
    let refreshed = keeper.credentials(keeper.refresh_at().unwrap()).await?.clone();
    assert_eq!((refreshed.room == first.room, keeper.fetches()), (true, 2));
    assert_eq!(service.log().iter().filter(|l| l.2 == 200).count(), 2);
    // The adapter also works as a source on its own.
    assert!(!OpenIdSource::openid_token(&bob.adapter)
        .await
        .map_err(anyhow::Error::msg)?
        .access_token
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_asks_synapse_then_falls_back_to_membership_and_config() -> Result<()> {
    let carol = Device::new("carol").await?;
    let hs = homeserver_transports(&carol.adapter, &http()).await?;
    // The rig's Synapse advertises a bare LiveKit SFU (`{type: livekit, url}`), no JWT service.
    assert!(hs.contains(&RtcTransport::LivekitSfu { url: "ws://127.0.0.1:7880".into() }), "{hs:?}");
    assert!(!hs.iter().any(|t| matches!(t, RtcTransport::Livekit { .. })));
    let cfg = LivekitFocus { service_url: "http://jwt.example".into(), alias: None };
    let own = choose_own_transport(MembershipDialect::MatrixRtc, &hs, &[], Some(&cfg)).unwrap();
    assert_eq!(own.source, TransportSource::Config);
    assert_eq!(choose_own_transport(MembershipDialect::Famedly, &hs, &[], None), None);
    Ok(())
}
