//! Issue #20 item 3 against Synapse: a process that dies in a group call leaves its MSC4140
//! delayed leave running; the restarted process of the same device lists it at start-up and
//! cancels it once its own join writes the same membership, so the old leave never removes the
//! new membership.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use tokio::sync::Notify;
use voip_core::{
    Command, Config, Event, Focus, GroupCallId, GroupCallState, Input, LocalDevice, MediaEncryption,
    MembershipDialect, Output, RequestId, RoomId, SendKind, SendOutcome, Timestamp, Voip,
};
use voip_matrix::MatrixAdapter;

use crate::{room_with, Peer, TIMEOUT};

fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64)
}

/// What a device's core did.
struct Dev {
    voip: Voip,
    events: Vec<Event>,
    /// Every request: what it was, and its result once known.
    sends: BTreeMap<RequestId, (String, Option<SendOutcome>)>,
}

/// One process of a device: a core driven by the adapter (inputs in, sends out); no media (a
/// LiveKit call's media would go through the app's LiveKit SDK). Dropping it is the process
/// dying: no leave is sent, no heartbeat any more.
struct Process {
    user: String,
    dev: Arc<Mutex<Dev>>,
    adapter: MatrixAdapter,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    _peer: Peer,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn label(kind: &SendKind) -> String {
    match kind {
        SendKind::StateEvent { event_type, .. } => format!("state {event_type}"),
        SendKind::DelayedStateEvent { event_type, .. } => format!("delayed {event_type}"),
        SendKind::UpdateDelayedEvent { action, .. } => format!("update delayed {action:?}"),
        SendKind::ListDelayedEvents => "list delayed".to_owned(),
        SendKind::RoomEvent { event_type, .. } | SendKind::ToDevice { event_type, .. } => event_type.clone(),
    }
}

fn drain(dev: &mut Dev, adapter: &MatrixAdapter) {
    while let Some(out) = dev.voip.poll() {
        match out {
            Output::Send(req) => {
                dev.sends.insert(req.id, (label(&req.kind), None));
                adapter.submit(req);
            }
            Output::Event(e) => dev.events.push(e),
            Output::Media { .. } => {}
        }
    }
}

impl Process {
    fn start(mut peer: Peer, config: Config) -> Process {
        let local = LocalDevice::new(peer.user_id(), peer.device_id());
        let voip = Voip::new(config, local, voip_core::seed_from_u64(now().0));
        let dev = Arc::new(Mutex::new(Dev { voip, events: Vec::new(), sends: BTreeMap::new() }));
        let adapter = peer.adapter.clone();
        let mut inputs = std::mem::replace(&mut peer.inputs, tokio::sync::mpsc::channel(1).1);
        let wake = Arc::new(Notify::new());
        let (d, ad, wk) = (dev.clone(), adapter.clone(), wake.clone());
        let task = tokio::spawn(async move {
            loop {
                let deadline = d.lock().unwrap().voip.next_deadline().map(|x| x.at);
                let sleep =
                    deadline.map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.since(now())));
                let input = tokio::select! {
                    i = inputs.recv() => match i { Some(i) => i, None => return },
                    _ = tokio::time::sleep(sleep) => Input::Tick,
                    _ = wk.notified() => continue,
                };
                let mut dev = d.lock().unwrap();
                if let Input::SendResult { id, result } = &input {
                    if let Some(entry) = dev.sends.get_mut(id) {
                        entry.1 = Some(result.clone());
                    }
                }
                if let Err(e) = dev.voip.handle(now(), input) {
                    tracing::warn!("input rejected: {e}");
                }
                drain(&mut dev, &ad);
            }
        });
        Process { user: peer.user_id(), dev, adapter, wake, task, _peer: peer }
    }

    fn command(&self, command: Command) {
        let mut dev = self.dev.lock().unwrap();
        dev.voip.handle(now(), Input::Command(command)).expect("command accepted");
        drain(&mut dev, &self.adapter);
        drop(dev);
        self.wake.notify_one();
    }

    fn members(&self, room: &str) -> Vec<String> {
        let dev = self.dev.lock().unwrap();
        let info = dev.voip.group_call(&GroupCallId::room_call(RoomId::from(room)));
        info.members.into_iter().map(|m| m.participant.user_id.0).collect()
    }

    async fn until<T>(&self, what: &str, check: impl Fn(&Dev) -> Option<T>) -> Result<T> {
        voip_testkit::wait_for(&format!("{}: {what}", self.user), TIMEOUT, || {
            let found = check(&self.dev.lock().unwrap());
            async move { found }
        })
        .await
    }
}

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
async fn scheduled_delay_id(p: &Process) -> Result<String> {
    p.until("delayed leave scheduled", |dev| {
        dev.sends.values().find_map(|(what, result)| match result {
            Some(SendOutcome::Sent { delay_id: Some(d), .. }) if *what == format!("delayed {RTC}") => {
                Some(d.clone())
            }
            _ => None,
        })
    })
    .await
}

/// How many membership state events `p`'s core sent.
fn membership_sends(p: &Process) -> usize {
    p.dev.lock().unwrap().sends.values().filter(|(w, _)| *w == format!("state {RTC}")).count()
}

/// The delay ids Synapse lists for `p`'s user.
async fn listed(p: &Process) -> Result<Vec<String>> {
    match p.adapter.list_delayed_events().await {
        SendOutcome::DelayedEvents { delayed_events } => {
            Ok(delayed_events.into_iter().map(|e| e.delay_id).collect())
        }
        other => bail!("listing failed: {other:?}"),
    }
}

async fn wait_members(p: &Process, room: &str, expected: &[&str]) -> Result<()> {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    voip_testkit::wait_for(&format!("{} sees {expected:?}", p.user), TIMEOUT, || {
        let ok = p.members(room) == expected;
        async move { ok.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_device_cancels_the_delayed_leave_its_dead_process_left_behind() -> Result<()> {
    // A short delay so that the old leave would fire within the test (memberships last 4 h).
    let delay = Duration::from_secs(15);
    let config = Config {
        rtc_delayed_leave_ms: delay.as_millis() as u64,
        rtc_delayed_restart_ms: 2_000,
        ..Config::default()
    };
    let mut alice = Peer::new("alice").await?;
    let bob = Peer::new("bob").await?;
    let room = room_with(&mut alice, &[&bob], true).await?;
    let (user, device) = (alice.user.clone(), alice.device_id());
    let alice_id = alice.user_id();
    let bob = Process::start(bob, config.clone());

    // Process A joins, then dies without leaving: its delayed leave keeps running on the server.
    let a = Process::start(alice, config.clone());
    a.command(join(&room));
    wait_members(&bob, &room, &[&alice_id]).await?;
    let old = scheduled_delay_id(&a).await?;
    assert!(listed(&a).await?.contains(&old), "A's delayed leave is on the server");
    drop(a);
    let died = now();

    // Process B: the same user and device, started again.
    let b = Process::start(Peer::device(&user, Some(&device)).await?, config);
    b.command(join(&room));
    b.until("B joined", |dev| {
        dev.events
            .iter()
            .any(|e| matches!(e, Event::GroupCallStateChanged { state: GroupCallState::Joined, .. }))
            .then_some(())
    })
    .await?;
    let new = scheduled_delay_id(&b).await?;
    assert_ne!(new, old);
    b.until("A's delayed leave cancelled", |dev| {
        let cancelled = dev.voip.counters().stale_delayed_leaves_cancelled == 1;
        let settled = dev.sends.values().all(|(_, r)| r.is_some());
        (cancelled && settled).then_some(())
    })
    .await?;
    let cancel = b.dev.lock().unwrap().sends.values().find(|(w, _)| w == "update delayed Cancel").cloned();
    assert!(
        matches!(cancel, Some((_, Some(SendOutcome::Sent { .. })))),
        "the cancel went through: {cancel:?}"
    );
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
        .dev
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
    assert_eq!(b.dev.lock().unwrap().voip.counters().delayed_event_listing_failed, 0);
    Ok(())
}
