//! LiveKit-mode group calls end to end: real cores on two or three devices join through Synapse
//! (both membership dialects), discover their transport, get tokens for the same LiveKit room
//! from the JWT service, and end up holding each other's current media key under the LiveKit
//! identity the other's token carries.

use std::collections::BTreeSet;
use std::time::SystemTime;

use anyhow::{ensure, Result};
use voip_core::{Command, Event, GroupCallId, MemberInfo, MembershipDialect, Participant, RoomId};
use voip_livekit::matrix::homeserver_transports;
use voip_livekit::{
    apply_encryption_key, choose_own_transport, sfu_plan, IdentityScheme, InMemoryKeyProvider,
    JwtServiceClient, KeyProvider, KeyProviderOptions, LivekitCredentials, LivekitFocus, OwnMembership,
    TokenEndpoint, TokenRequest, TransportSource,
};

use crate::jwt_service::{JwtService, Options};
use crate::{http, room_with, Device, State};

async fn members(d: &Device, group: &GroupCallId) -> Vec<MemberInfo> {
    d.group(group).await.info().members
}

/// Waits until `d` sees `n` members other than itself.
async fn wait_members(d: &Device, group: &GroupCallId, n: usize, what: &str) -> Result<()> {
    voip_testkit::wait_for(&format!("{}: {what}", d.user_id()), crate::TIMEOUT, || async {
        (members(d, group).await.len() == n).then_some(())
    })
    .await
}

/// Our own participant (with the membership id the core chose), from our first local key.
fn own_participant(s: &State) -> Option<Participant> {
    s.events.iter().find_map(|e| match e {
        Event::EncryptionKey { participant, local: true, .. } => Some(participant.clone()),
        _ => None,
    })
}

/// The key a device encrypts with now: its latest local key.
fn current_local_key(s: &State) -> Option<(u32, String)> {
    s.events.iter().rev().find_map(|e| match e {
        Event::EncryptionKey { local: true, index, key, .. } => Some((*index, key.clone())),
        _ => None,
    })
}

/// A key provider fed with every key event the device has seen.
fn provider(d: &Device, scheme: IdentityScheme) -> Result<InMemoryKeyProvider> {
    let mut p = InMemoryKeyProvider::new(KeyProviderOptions::element_call());
    let events: Vec<Event> = d.with(|s| s.events.clone());
    for e in &events {
        apply_encryption_key(&mut p, e, scheme)?;
    }
    Ok(p)
}

async fn call(n: usize, dialect: MembershipDialect, options: Options, check_keys: bool) -> Result<()> {
    let mut devices = Vec::new();
    for name in ["alice", "bob", "carol"].iter().take(n) {
        devices.push(Device::new(name).await?);
    }
    let room = room_with(&devices).await?;
    let group = GroupCallId::room_call(RoomId::from(room.as_str()));
    let service = JwtService::start(options).await?;
    let config = LivekitFocus { service_url: service.url.clone(), alias: None };

    // Join one after the other, each discovering its transport first.
    let mut foci = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            wait_members(d, &group, i, "the call's current members").await?;
        }
        let hs = homeserver_transports(&d.adapter, &http()).await?;
        let current = members(d, &group).await;
        let own = choose_own_transport(dialect, &hs, &current, Some(&config)).expect("a transport");
        // The rig's Synapse names no JWT service: the first joiner uses the configuration, the
        // others find the service in the first one's membership.
        let expected = if i == 0 { TransportSource::Config } else { TransportSource::Membership };
        ensure!(own.source == expected, "{dialect:?} device {i}: {own:?}");
        ensure!(own.focus.service_url == service.url);
        let focus = own.focus.to_focus(&room);
        d.command(Command::JoinGroupCall {
            room_id: group.room_id.clone(),
            call_id: String::new(),
            application: "m.call".into(),
            scope: "m.room".into(),
            dialect,
            focus: focus.clone(),
            owned_state_keys: false,
            notify: None,
            encryption: Some(voip_core::MediaEncryption::PerParticipantKeys),
        })
        .await;
        // The focus as joined (with the alias `to_focus` filled in) is the one others see.
        foci.push(LivekitFocus::from_focus(&focus).expect("a LiveKit focus"));
    }

    // Everyone sees everyone, plans to publish and subscribe on the one service, and gets a
    // token for the same LiveKit room.
    let mut creds: Vec<(Participant, LivekitCredentials)> = Vec::new();
    for (d, focus) in devices.iter().zip(&foci) {
        wait_members(d, &group, n - 1, "all members").await?;
        let me = d.wait("our own key", own_participant).await?;
        let plan = sfu_plan(
            &OwnMembership { participant: me.clone(), focus: focus.clone(), created: None },
            &members(d, &group).await,
        );
        ensure!(plan.publish.as_ref().map(|f| &f.service_url) == Some(&service.url), "{plan:?}");
        ensure!(plan.services().len() == 1 && plan.unreachable.is_empty(), "{plan:?}");
        ensure!(plan.subscribe.values().map(Vec::len).sum::<usize>() == n - 1, "{plan:?}");
        let client = JwtServiceClient::with_http(http(), &plan.publish.as_ref().unwrap().service_url);
        let openid = d.adapter.openid_token().await?.into();
        let req = TokenRequest::for_group(&group, me.clone()).with_alias(focus.alias.clone());
        let c = client.get_token(&openid, &req).await?;
        ensure!(!c.needs_refresh(SystemTime::now(), std::time::Duration::from_secs(60)));
        creds.push((me, c));
    }
    let rooms: BTreeSet<&str> = creds.iter().map(|(_, c)| c.room.as_str()).collect();
    ensure!(rooms.len() == 1, "one LiveKit room for everyone: {rooms:?}");
    let identities: BTreeSet<&str> = creds.iter().map(|(_, c)| c.identity.as_str()).collect();
    ensure!(identities.len() == n, "distinct identities: {identities:?}");
    let endpoint = if service_is_legacy(&creds) { TokenEndpoint::SfuGet } else { TokenEndpoint::GetToken };
    let scheme = IdentityScheme::for_endpoint(endpoint);
    for (p, c) in &creds {
        ensure!(c.endpoint == endpoint && c.identity == scheme.identity(p), "{p:?}: {c:?}");
    }

    if !check_keys {
        return Ok(());
    }
    // Keys: each device ends up with every other's current key under that other's LiveKit
    // identity (the `sub` of its token), and its own under its own.
    for (i, d) in devices.iter().enumerate() {
        for (j, other) in devices.iter().enumerate() {
            let identity = creds[j].1.identity.clone();
            voip_testkit::wait_for(
                &format!("{dialect:?}: device {i} holds device {j}'s current key"),
                crate::TIMEOUT,
                || {
                    let held = other.with(current_local_key).and_then(|(index, key)| {
                        let p = provider(d, scheme).ok()?;
                        let want = voip_core::wire::keys::decode_key(&key)?;
                        (p.get_key(&identity, index) == Some(want)).then_some(())
                    });
                    async move { held }
                },
            )
            .await
            .map_err(|e| {
                let keys = |d: &Device| {
                    d.with(|s| {
                        s.events
                            .iter()
                            .filter(|e| matches!(e, Event::EncryptionKey { .. }))
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                };
                e.context(format!("holder has {:?}; sender has {:?}", keys(d), keys(other)))
            })?;
        }
    }
    // The keys are distinct per sender (per-participant mode).
    let keys: BTreeSet<String> =
        devices.iter().filter_map(|d| d.with(current_local_key)).map(|(_, k)| k).collect();
    ensure!(keys.len() == n, "each sender its own key");
    drop(service);
    Ok(())
}

fn service_is_legacy(creds: &[(Participant, LivekitCredentials)]) -> bool {
    creds.iter().all(|(_, c)| c.endpoint == TokenEndpoint::SfuGet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_get_one_livekit_room_and_each_others_keys_in_both_dialects() -> Result<()> {
    call(3, MembershipDialect::MatrixRtc, Options::default(), true).await?;
    call(3, MembershipDialect::Famedly, Options::default(), true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_through_an_old_sfu_get_service_in_both_dialects() -> Result<()> {
    let legacy = || Options { legacy_only: true, ..Options::default() };
    call(2, MembershipDialect::MatrixRtc, legacy(), true).await?;
    call(2, MembershipDialect::Famedly, legacy(), true).await
}
