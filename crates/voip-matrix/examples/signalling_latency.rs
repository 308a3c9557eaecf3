//! End-to-end signalling latency through a real Synapse, next to the raw room-event delivery
//! time measured in the same run.
//!
//! ```text
//! cargo run --release -p voip-matrix --example signalling_latency -- --calls 20 [--sdk-sync]
//! ```
//!
//! Starts its own Synapse (voip-testkit's rig, data on tmpfs, generous limits), registers Alice
//! and Bob, puts them in an encrypted DM, and then
//!
//! 1. **raw delivery**: Alice sends N plain (Megolm-encrypted) room events one after another;
//!    each is timed from the start of the send request until Bob's event handler has it;
//! 2. **calls**: N 1:1 voice calls, each device running the `voip` runtime (its driver task owns
//!    the core; media faked by voip-sim's engine) over `MatrixAdapter`; Bob's app answers as soon
//!    as the call rings. Timed from `invite_to_call` (the invite is queued for sending at once)
//!    until Alice's runtime receives the `m.call.answer` from sync, with the stages in between.
//!
//! Sync: by default each client runs `sync_once` in a loop (`voip_testkit::Syncing`).
//! `--sdk-sync` uses matrix-sdk's `Client::sync` instead, which sleeps 1 s before a request that
//! follows the previous one within a second: the difference is the point of the flag.
#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, InitialStateEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::OwnedUserId;
use matrix_sdk::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use voip::{StreamExt, VoipBuilder};
use voip_core::{CallId, CallType, Event, Input, LocalDevice};
use voip_matrix::MatrixAdapter;
use voip_sim::FakeMedia;
use voip_testkit::rig::{Instance, Limits};

/// Moments of one call, by what happened.
type Marks = Arc<Mutex<BTreeMap<(CallId, &'static str), Instant>>>;

/// A device running the `voip` runtime over the adapter, recording when call events arrive.
struct Phone {
    voip: voip::Voip,
    events: Arc<Mutex<Vec<Event>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn call_id_of(input: &Input) -> Option<(CallId, &str)> {
    if let Input::RoomEvent(ev) = input {
        let id = ev.content.get("call_id")?.as_str()?;
        return Some((CallId::from(id), ev.event_type.as_str()));
    }
    None
}

impl Phone {
    fn start(
        adapter: MatrixAdapter,
        mut inputs: mpsc::Receiver<Input>,
        who: &'static str,
        auto_answer: bool,
        marks: Marks,
    ) -> Result<Phone> {
        let client = adapter.client();
        let local = LocalDevice::new(
            client.user_id().context("logged in")?.to_string(),
            client.device_id().context("logged in")?.to_string(),
        );
        // The adapter's inputs, timed as they reach the runtime.
        let (tx, rx) = mpsc::channel(64);
        let m = marks.clone();
        let forward = tokio::spawn(async move {
            while let Some(input) = inputs.recv().await {
                if let Some((call, t)) = call_id_of(&input) {
                    let what = match (who, t) {
                        ("alice", "m.call.answer") => Some("alice has answer"),
                        ("bob", "m.call.invite") => Some("bob has invite"),
                        _ => None,
                    };
                    if let Some(what) = what {
                        m.lock().unwrap().entry((call, what)).or_insert_with(Instant::now);
                    }
                }
                if tx.send(input).await.is_err() {
                    return;
                }
            }
        });
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        // voip-sim's fake engine behind a real engine's channel.
        let engine =
            Arc::new(FakeMedia::new().into_engine(move |id, event| drop(media_tx.send((id, event)))));
        let voip = VoipBuilder::new(local, adapter, rx)
            .seed(voip_core::seed_from_u64(std::process::id().into()))
            .media_engine(engine, media_rx)
            .build()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (mut stream, log) = (voip.events(), events.clone());
        let record = tokio::spawn(async move {
            while let Some(e) = stream.next().await {
                log.lock().unwrap().push(e);
            }
        });
        let mut tasks = vec![forward, record];
        if auto_answer {
            // The app answers as soon as it rings.
            let mut incoming = voip.incoming_calls();
            tasks.push(tokio::spawn(async move {
                while let Some(call) = incoming.next().await {
                    marks.lock().unwrap().insert((call.id().clone(), "bob rings"), Instant::now());
                    if let Err(e) = call.answer().await {
                        tracing::warn!("answer: {e}");
                    }
                }
            }));
        }
        Ok(Phone { voip, events, tasks })
    }

    async fn wait(&self, what: &str, mut pick: impl FnMut(&Event) -> bool) -> Result<()> {
        voip_testkit::wait_for(what, Duration::from_secs(60), || {
            let found = self.events.lock().unwrap().iter().any(&mut pick);
            async move { found.then_some(()) }
        })
        .await
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Median and 95th percentile (nearest rank) in milliseconds.
fn stats(mut ms: Vec<f64>) -> (f64, f64, f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    (rank(0.5), rank(0.95), ms[0], ms[ms.len() - 1])
}

fn print_row(what: &str, ms: Vec<f64>) {
    let n = ms.len();
    let (median, p95, min, max) = stats(ms);
    println!("| {what} | {n} | {median:.1} | {p95:.1} | {min:.1} | {max:.1} |");
}

/// A client's sync loop (either kind); stops when dropped.
struct SyncLoop {
    _own: Option<voip_testkit::Syncing>,
    sdk: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SyncLoop {
    fn drop(&mut self) {
        if let Some(t) = self.sdk.take() {
            t.abort();
        }
    }
}

async fn start_sync(client: &Client, sdk_sync: bool) -> Result<SyncLoop> {
    if !sdk_sync {
        return Ok(SyncLoop { _own: Some(voip_testkit::Syncing::start(client).await?), sdk: None });
    }
    client.sync_once(SyncSettings::default()).await?;
    let c = client.clone();
    let task = tokio::spawn(async move {
        let _ = c.sync(SyncSettings::default().timeout(Duration::from_secs(2))).await;
    });
    Ok(SyncLoop { _own: None, sdk: Some(task) })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let calls: usize = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()
        .context("--calls N")?
        .unwrap_or(20);
    let sdk_sync = args.iter().any(|a| a == "--sdk-sync");
    if calls == 0 {
        bail!("--calls must be at least 1");
    }

    let instance = tokio::task::spawn_blocking(|| Instance::start(Limits::Generous)).await??;
    let hs = voip_testkit::Synapse::of(&instance);
    let alice_user = voip_testkit::register_user_on(&hs, "alice").await?;
    let bob_user = voip_testkit::register_user_on(&hs, "bob").await?;
    let alice = voip_testkit::login(&alice_user, None).await?;
    let bob = voip_testkit::login(&bob_user, None).await?;
    let (alice_adapter, alice_inputs) = MatrixAdapter::new(alice.clone());
    let (bob_adapter, bob_inputs) = MatrixAdapter::new(bob.clone());

    // Raw delivery: Bob's handler reports every ping with its arrival time.
    let (ping_tx, mut pings) = mpsc::unbounded_channel::<(u64, Instant)>();
    bob.add_event_handler(move |raw: Raw<AnySyncMessageLikeEvent>| {
        let tx = ping_tx.clone();
        async move {
            let at = Instant::now();
            if let Ok(ev) = raw.deserialize_as_unchecked::<Value>() {
                if ev["type"] == "org.example.ping" {
                    if let Some(n) = ev["content"]["n"].as_u64() {
                        let _ = tx.send((n, at));
                    }
                }
            }
        }
    });
    let _alice_sync = start_sync(&alice, sdk_sync).await?;
    let _bob_sync = start_sync(&bob, sdk_sync).await?;

    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.is_direct = true;
    req.invite = vec![OwnedUserId::try_from(bob_user.user_id.as_str())?];
    req.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    let room = alice.create_room(req).await?;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await?;
    voip_testkit::wait_for("bob's join seen by alice", Duration::from_secs(60), || async {
        let r = alice.get_room(&room_id)?;
        let members = r.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
        (members.len() == 2).then_some(())
    })
    .await?;

    // 1. Raw room-event delivery, one at a time.
    let mut raw_ms = Vec::new();
    let mut send_ms = Vec::new();
    for n in 0..calls as u64 + 1 {
        let t0 = Instant::now();
        room.send_raw("org.example.ping", json!({ "n": n })).await?;
        let sent = t0.elapsed();
        let at = loop {
            match tokio::time::timeout(Duration::from_secs(60), pings.recv()).await? {
                Some((m, at)) if m == n => break at,
                Some(_) => {}
                None => bail!("ping handler gone"),
            }
        };
        // The first one also shares the Megolm session: not counted.
        if n > 0 {
            raw_ms.push(at.duration_since(t0).as_secs_f64() * 1e3);
            send_ms.push(sent.as_secs_f64() * 1e3);
        }
    }

    // 2. Calls.
    let marks: Marks = Arc::default();
    let a = Phone::start(alice_adapter, alice_inputs, "alice", false, marks.clone())?;
    let b = Phone::start(bob_adapter, bob_inputs, "bob", true, marks.clone())?;
    let bob_id = bob_user.user_id.clone();
    let mut total = Vec::new();
    let mut to_bob = Vec::new();
    let mut bob_turnaround = Vec::new();
    let mut to_alice = Vec::new();
    for _ in 0..calls {
        let t0 = Instant::now();
        let handle = a.voip.invite_to_call(room_id.as_str(), CallType::Voice, bob_id.as_str()).await?;
        let call = handle.id().clone();
        let c = call.clone();
        voip_testkit::wait_for("answer at alice", Duration::from_secs(60), || {
            let got = marks.lock().unwrap().get(&(c.clone(), "alice has answer")).copied();
            async move { got }
        })
        .await?;
        let m = marks.lock().unwrap().clone();
        let at = |what| m.get(&(call.clone(), what)).copied().context(what);
        let (invite_in, rings, answer_in) =
            (at("bob has invite")?, at("bob rings")?, at("alice has answer")?);
        total.push(answer_in.duration_since(t0).as_secs_f64() * 1e3);
        to_bob.push(invite_in.duration_since(t0).as_secs_f64() * 1e3);
        bob_turnaround.push(rings.duration_since(invite_in).as_secs_f64() * 1e3);
        to_alice.push(answer_in.duration_since(rings).as_secs_f64() * 1e3);
        // Hang up and let both sides finish before the next call.
        handle.hangup().await?;
        let ended = |c: &CallId| {
            let c = c.clone();
            move |e: &Event| matches!(e, Event::CallEnded { call_id, .. } if *call_id == c)
        };
        a.wait("alice ended", ended(&call)).await?;
        b.wait("bob ended", ended(&call)).await?;
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nSynapse {} (own instance, data {}), sync: {}, {} samples each, load average: {}",
        voip_testkit::rig::SYNAPSE_VERSION,
        instance.started().data_dir.display(),
        if sdk_sync { "matrix-sdk Client::sync" } else { "sync_once loop (voip_testkit::Syncing)" },
        calls,
        load.trim()
    );
    println!("\n| what | n | median ms | p95 ms | min ms | max ms |\n|---|---|---|---|---|---|");
    print_row("raw room event A→B (send request start → B's handler), encrypted room", raw_ms);
    print_row("… of which the send request alone", send_ms);
    print_row("call: invite sent → caller's core has the answer", total.clone());
    print_row("… invite_to_call → callee's adapter has the invite", to_bob);
    print_row("… callee: invite input → the app sees it ring", bob_turnaround);
    print_row("… answer queued → caller's adapter has it", to_alice);
    drop((a, b));
    drop(instance);
    Ok(())
}
