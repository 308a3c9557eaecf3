//! `VoipBuilder::without_media`: a LiveKit-mode group call (membership and media keys) works
//! without any media engine, and a 1:1 call, which would need one, ends as `user_media_failed`.

use std::time::Duration;

use voip::core::MediaEncryption;
use voip::local::LocalHomeserver;
use voip::{
    CallType, EndReason, GroupCallBackend, GroupCallOptions, GroupCallUpdate, StreamExt, VoipBuilder,
    VoipError,
};

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn livekit_mode_needs_no_media_engine_and_one_to_one_calls_fail_cleanly() -> Result<(), VoipError> {
    let hs = LocalHomeserver::new();
    let room = hs.create_room(&["@ann:local", "@ben:local"]);
    let start = |user: &str, device: &str| {
        let c = hs.connect(user, device);
        VoipBuilder::new(c.device, c.transport, c.inputs).without_media().build()
    };
    let (ann, ben) = (start("@ann:local", "ANN")?, start("@ben:local", "BEN")?);
    let backend = GroupCallBackend::LiveKit { service_url: "https://jwt.example.org".into(), alias: None };
    let options =
        || GroupCallOptions::new(backend.clone()).media_encryption(MediaEncryption::PerParticipantKeys);
    let ann_group = ann.fetch_or_create_group_call(&room, options()).await?;
    let ben_group = ben.fetch_or_create_group_call(&room, options()).await?;
    let mut updates = ann_group.updates();
    ann_group.enter().await?;
    ben_group.enter().await?;
    // Ann sees Ben join and receives Ben's media key: the whole SFU-mode path, no media stack.
    let (mut joined, mut key) = (false, false);
    while !(joined && key) {
        match tokio::time::timeout(BOUND, updates.next()).await.expect("updates in time") {
            Some(GroupCallUpdate::ParticipantsChanged { joined: j, .. }) => {
                joined |= j.iter().any(|p| p.user_id.as_str() == "@ben:local")
            }
            Some(GroupCallUpdate::EncryptionKey { participant, local: false, .. }) => {
                key |= participant.user_id.as_str() == "@ben:local"
            }
            Some(_) => {}
            None => panic!("the feed ended"),
        }
    }

    // A 1:1 call needs media: it ends at once, before anything is sent.
    let call = ann.invite_to_call(&room, CallType::Voice, "@ben:local").await?;
    let ended = tokio::time::timeout(BOUND, call.ended()).await.expect("ends in time");
    assert_eq!(ended.map(|(reason, _)| reason), Some(EndReason::UserMediaFailed));
    let mut incoming = ben.incoming_calls();
    assert!(tokio::time::timeout(Duration::from_millis(300), incoming.next()).await.is_err(), "nothing rang");
    Ok(())
}
