//! Issue #20 item 3 against Synapse: a process that dies in a group call leaves its MSC4140
//! delayed leave running; the restarted process of the same device lists it at start-up and
//! cancels it once its own join writes the same membership, so the old leave never removes the
//! new membership.

use std::time::Duration;

use anyhow::{bail, Result};
use voip_core::{
    Command, Config, Event, Focus, GroupCallState, MediaEncryption, MembershipDialect, RoomId, SendOutcome,
};

use crate::calls::{now, Phone};
use crate::group::wait_members;
use crate::{room_with, Peer, TIMEOUT};

const RTC: &str = "org.matrix.msc3401.call.member";

fn join(room: &str) -> Command {
    Command::JoinGroupCall {
        room_id: RoomId::from(room),
        call_id: String::new(),
        application: "m.call".into(),
        scope: "m.room".into(),
        dialect: MembershipDialect::MatrixRtc,
        focus: Focus::Livekit {
            livekit_service_url: Some("http://127.0.0.1:9/livekit/jwt".into()),
            livekit_alias: Some(room.into()),
        },
        owned_state_keys: false,
        notify: None,
        // The restarted device logs in with a fresh crypto store (its Olm identity changes):
        // keep media keys out of this test, it is about memberships.
        encryption: Some(MediaEncryption::None),
    }
}

/// The `delay_id` of the delayed leave `p`'s core scheduled (and the server accepted).
async fn scheduled_delay_id(p: &Phone) -> Result<String> {
    voip_testkit::wait_for(&format!("{}: delayed leave scheduled", p.peer_user), TIMEOUT, || {
        let st = p.state.lock().unwrap();
        let id = st.sends.iter().find_map(|(id, what)| match st.results.get(id) {
            Some(SendOutcome::Sent { delay_id: Some(d), .. }) if *what == format!("delayed {RTC}") => {
                Some(d.clone())
            }
            _ => None,
        });
        async move { id }
    })
    .await
}

/// How many membership state events `p`'s core sent.
fn membership_sends(p: &Phone) -> usize {
    p.state.lock().unwrap().sends.values().filter(|w| **w == format!("state {RTC}")).count()
}

/// The delay ids Synapse lists for `p`'s user.
async fn listed(p: &Phone) -> Result<Vec<String>> {
    match p.adapter.list_delayed_events().await {
        SendOutcome::DelayedEvents { delayed_events } => {
            Ok(delayed_events.into_iter().map(|e| e.delay_id).collect())
        }
        other => bail!("listing failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_device_cancels_the_delayed_leave_its_dead_process_left_behind() -> Result<()> {
    // A short delay so that the old leave would fire within the test (memberships last 4 h).
    let delay = Duration::from_secs(15);
    let config = Config::default()
        .with_rtc_delayed_leave_ms(delay.as_millis() as u64)
        .with_rtc_delayed_restart_ms(2_000);
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (user, device) = (alice.user.clone(), alice.device_id());
    let alice_id = alice.user_id();
    let bob = Phone::with_config(bob, config.clone());

    // Process A joins, then dies without leaving: its delayed leave keeps running on the server.
    let a = Phone::with_config(alice, config.clone());
    a.command(join(&room)).await;
    wait_members(&bob, &room, &[&alice_id]).await?;
    let old = scheduled_delay_id(&a).await?;
    assert!(listed(&a).await?.contains(&old), "A's delayed leave is on the server");
    drop(a);
    let died = now();

    // Process B: the same user and device, started again.
    let b = Phone::with_config(Peer::device(&user, Some(&device)).await?, config);
    b.command(join(&room)).await;
    b.wait("B joined", |e| {
        matches!(e, Event::GroupCallStateChanged { state: GroupCallState::Joined, .. }).then_some(())
    })
    .await?;
    let new = scheduled_delay_id(&b).await?;
    assert_ne!(new, old);
    voip_testkit::wait_for("B: A's delayed leave cancelled", TIMEOUT, || {
        let cancelled = b.voip.counters().stale_delayed_leaves_cancelled == 1;
        async move { cancelled.then_some(()) }
    })
    .await?;
    let sends = b.settled_sends().await?;
    let cancel = sends.iter().find(|(w, _)| w == "update delayed Cancel").cloned();
    assert!(matches!(cancel, Some((_, SendOutcome::Sent { .. }))), "the cancel went through: {cancel:?}");
    let on_server = listed(&b).await?;
    assert!(!on_server.contains(&old), "A's delayed leave is gone: {on_server:?}");
    assert!(on_server.contains(&new), "B's own delayed leave runs: {on_server:?}");
    assert!(
        now().since(died) < delay.as_millis() as u64,
        "the cancel landed before A's leave was due ({} ms after A died)",
        now().since(died)
    );

    // Past the time A's leave would have fired: B's membership was never removed.
    tokio::time::sleep(delay + Duration::from_secs(3)).await;
    let left: Vec<_> = bob
        .state
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|e| {
            matches!(e, Event::ParticipantsChanged { left, .. } if left.iter().any(|p| p.user_id.as_str() == alice_id))
        })
        .cloned()
        .collect();
    assert!(left.is_empty(), "bob never saw alice leave: {left:?}");
    wait_members(&bob, &room, &[&alice_id]).await?;
    assert_eq!(membership_sends(&b), 1, "B never had to join again");
    assert_eq!(b.voip.counters().delayed_event_listing_failed, 0);
    Ok(())
}
