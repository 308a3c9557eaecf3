//! `GroupCall::livekit_session` against a real Synapse and two JWT services (voip-testkit's, which
//! check OpenID tokens with that Synapse and mint real LiveKit tokens), with `Voip`s built
//! without media as an app on its own LiveKit SDK would: the plan follows the call's oldest
//! member, credentials come for each service in the plan and are renewed before they expire.
#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use support::{encrypted_room, within};
use voip::core::MembershipDialect;
use voip::{
    GroupCallBackend, GroupCallOptions, GroupCallState, LivekitSession, LivekitUpdate, StreamExt, Voip,
};
use voip_testkit::jwt_service::{JwtService, Options};
use voip_testkit::Syncing;

struct Person {
    voip: Voip,
    client: matrix_sdk::Client,
    _sync: Syncing,
}

async fn person(name: &str) -> Result<Person> {
    let user = voip_testkit::register_user_on(voip_testkit::synapse(), name).await?;
    let client = voip_testkit::login(&user, None).await?;
    let voip = Voip::from_client(&client)?.without_media().build()?;
    let _sync = Syncing::start(&client).await?;
    Ok(Person { voip, client, _sync })
}

/// The next update that `pick` accepts (others are skipped), within the test's bound.
async fn next_where<T>(
    session: &mut LivekitSession,
    what: &str,
    mut pick: impl FnMut(LivekitUpdate) -> Option<T>,
) -> Result<T> {
    within(what, async {
        while let Some(update) = session.next().await {
            if let LivekitUpdate::CredentialsFailed { focus, error, .. } = &update {
                bail!("token request to {} failed: {error}", focus.service_url);
            }
            if let Some(t) = pick(update) {
                return Ok(t);
            }
        }
        bail!("the session ended")
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_oldest_member_and_renews_tokens() -> Result<()> {
    // Tokens of the first service live 63 s: renewed 60 s before expiry, so about every 3 s.
    let first =
        JwtService::start(Options { ttl: Some(Duration::from_secs(63)), ..Options::default() }).await?;
    let second = JwtService::start(Options::default()).await?;
    let (ann, ben) = (person("lk_ann").await?, person("lk_ben").await?);
    let room = encrypted_room(&[&ann.client, &ben.client]).await?;
    // famedly: a call has one backend, its oldest membership's; everyone publishes there.
    let options = |url: &str| {
        GroupCallOptions::new(GroupCallBackend::LiveKit { service_url: url.to_owned(), alias: None })
            .dialect(MembershipDialect::Famedly)
    };
    let ann_group = ann.voip.fetch_or_create_group_call(&room, options(&first.url)).await?;
    ann_group.enter().await?;
    within("ann joined", async {
        while ann_group.state() != Some(GroupCallState::Joined) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    let ben_group = ben.voip.fetch_or_create_group_call(&room, options(&second.url)).await?;
    ben_group.enter().await?;
    let mut session = ben_group.livekit_session()?;

    // Ann is older: Ben publishes on Ann's service and gets a token there.
    let plan = next_where(&mut session, "a plan on ann's service", |u| match u {
        LivekitUpdate::Plan(p) if p.publish.as_ref().is_some_and(|f| f.service_url == first.url) => Some(p),
        _ => None,
    })
    .await?;
    assert_eq!(plan.services().len(), 1, "{plan:?}");
    let token = |url: String| {
        move |u: LivekitUpdate| match u {
            LivekitUpdate::Credentials { focus, credentials } if focus.service_url == url => {
                Some(credentials)
            }
            _ => None,
        }
    };
    let creds = next_where(&mut session, "credentials from ann's service", token(first.url.clone())).await?;
    assert!(creds.jwt.len() > 20 && !creds.room.is_empty() && !creds.identity.is_empty(), "{creds:?}");
    // Renewed before it expires, with a later expiry.
    let renewed = next_where(&mut session, "renewed credentials", token(first.url.clone())).await?;
    assert!(renewed.expires_at > creds.expires_at, "{:?} then {:?}", creds.expires_at, renewed.expires_at);

    // Ann leaves: Ben is the oldest now and moves to his own service.
    ann_group.leave().await?;
    next_where(&mut session, "a plan on ben's own service", |u| match u {
        LivekitUpdate::Plan(p) if p.publish.as_ref().is_some_and(|f| f.service_url == second.url) => Some(()),
        _ => None,
    })
    .await?;
    let own = next_where(&mut session, "credentials from ben's service", token(second.url.clone())).await?;
    assert_eq!(own.service_url, second.url);
    assert!(second.log().iter().any(|(_, _, status)| *status == 200), "{:?}", second.log());
    drop(session);
    ben_group.leave().await.context("ben leaves")?;
    Ok(())
}
