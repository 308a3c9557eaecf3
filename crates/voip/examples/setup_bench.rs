//! Call set-up, group join and key rotation times through a real Synapse, with the floor
//! (raw room-event delivery) measured in the same run. Driven by `cargo xtask bench`
//! (docs/benchmarks.md), or by hand:
//!
//! ```text
//! cargo run -p voip --example setup_bench -- --homeserver URL --registration-secret S \
//!     [--calls 10] [--groups] [--synapse-log homeserver.log] [--out results.json] [--sync MODE] \
//!     [--trace-sync] [--gap-ms MS] [--relay-only]
//! ```
//!
//! `--sync` picks how every client syncs (docs/benchmarks.md, "Sync modes"): `test-loop`
//! (default: voip-testkit's `sync_once` loop), `helper` (`voip::sync::SyncLoop`), `client-sync`
//! (matrix-sdk's `Client::sync`, with its 1 s pause) or, built with `--features sync-service`,
//! `sync-service` (matrix-sdk-ui's `SyncService` through `voip::sync::sync_service`).
//!
//! * **raw**: N plain Megolm room events Alice → Bob, each timed from the start of the send
//!   request until Bob's event handler has it.
//! * **calls**: N 1:1 voice calls Alice → Bob on real webrtc-rs media over loopback; Bob answers
//!   as soon as the call rings (as an app that auto-answers would). Each call is timed from
//!   `invite_to_call` to "connected with media flowing" on both sides (both `Connected` and at
//!   least one audio packet received by each), with the steps in between: invite received by Bob,
//!   answer sent, answer received by Alice (her call leaves `InviteSent`), each side connected,
//!   each side's first packet.
//! * **groups** (`--groups`): a 4-member mesh call, from every member's `enter` until every
//!   pair is connected with audio both ways; an 8-member LiveKit-mode (SFU) call, from `enter`
//!   until every member has everyone's media key; then one member leaves and the time until every
//!   remaining member uses a new key that all the others have; with `--synapse-log PATH`
//!   (Synapse's `homeserver.log`) also the HTTP requests the clients made for it.
//!
//! `--gap-ms MS` waits that long before every raw send and every call (default 0: back to back,
//! each call placed as soon as the previous one ended on both sides). Under `Client::sync` this
//! decides whether the caller's sync pauses 1 s after its own invite's echo: it does when the
//! previous sync response (here: the previous call's hang-up echo) came less than a second
//! before (`--trace-sync` prints which events each client got when).
//!
//! `--relay-only` sends every call's media through the homeserver's TURN server (the
//! `/voip/turnServer` credentials; coturn in `cargo xtask bench`), relay-only on both sides.
//!
//! Times are wall-clock milliseconds, observed by polling every 2 ms. The results are printed
//! as a table and, with `--out`, written as JSON for `cargo xtask bench`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use serde_json::{json, Value};
use support::{encrypted_room, MatrixPerson, SyncMode};
use voip::core::media::MediaKind;
use voip::StreamExt;
use voip::{Call, CallState, CallType, GroupCall, GroupCallBackend};

#[path = "../tests/support/mod.rs"]
mod support;

/// One call's or one run's bound.
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(2);

/// How every client syncs (`--sync`).
static SYNC_MODE: std::sync::OnceLock<SyncMode> = std::sync::OnceLock::new();
/// `--relay-only`: every call through the homeserver's TURN server (coturn in `cargo xtask
/// bench`), as `WebrtcConfig::with_relay_only`.
static RELAY_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `--trace-sync`: every event the clients' handlers saw, with when (to find which sync response
/// carried what; the homeserver's access log has when each `/sync` request came and went).
#[derive(Clone, Default)]
struct SyncTrace(Arc<Mutex<Vec<(Instant, std::time::SystemTime, String)>>>);

impl SyncTrace {
    /// Records every timeline, state, ephemeral and to-device event `who`'s client processes.
    fn watch(&self, who: &'static str, client: &matrix_sdk::Client) {
        use matrix_sdk::ruma::events::{AnySyncEphemeralRoomEvent, AnySyncTimelineEvent, AnyToDeviceEvent};
        use matrix_sdk::ruma::serde::Raw;
        fn field(raw: &Raw<impl Sized>, k: &str) -> String {
            raw.get_field::<String>(k).ok().flatten().unwrap_or_default()
        }
        let t = self.0.clone();
        client.add_event_handler(move |ev: Raw<AnySyncTimelineEvent>| {
            let t = t.clone();
            async move {
                let line = format!("{who}: timeline {} from {}", field(&ev, "type"), field(&ev, "sender"));
                t.lock().expect("lock").push((Instant::now(), std::time::SystemTime::now(), line));
            }
        });
        let t = self.0.clone();
        client.add_event_handler(move |ev: Raw<AnyToDeviceEvent>| {
            let t = t.clone();
            async move {
                let line = format!("{who}: to-device {} from {}", field(&ev, "type"), field(&ev, "sender"));
                t.lock().expect("lock").push((Instant::now(), std::time::SystemTime::now(), line));
            }
        });
        let t = self.0.clone();
        client.add_event_handler(move |ev: Raw<AnySyncEphemeralRoomEvent>| {
            let t = t.clone();
            async move {
                let line = format!("{who}: ephemeral {}", field(&ev, "type"));
                t.lock().expect("lock").push((Instant::now(), std::time::SystemTime::now(), line));
            }
        });
    }

    /// Prints (and forgets) what was seen since `t0`.
    fn print_since(&self, t0: Instant) {
        let mut v = self.0.lock().expect("lock");
        for (at, wall, line) in v.drain(..) {
            let wall = wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let rel = if at >= t0 { ms(at - t0) } else { -ms(t0 - at) };
            println!("  {:>8.1} ms  (unix {:.3})  {line}", rel, wall.as_secs_f64());
        }
    }
}

static TRACE: std::sync::OnceLock<SyncTrace> = std::sync::OnceLock::new();

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// (median, p95) of `xs` (nearest rank).
fn median_p95(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.95))
}

fn audio(p: &MatrixPerson, c: &Call) -> u64 {
    support::received(&p.voip, c, MediaKind::Audio, None)
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(BOUND, fut).await.with_context(|| format!("{what}: nothing after {BOUND:?}"))?
}

/// Raw room-event delivery Alice → Bob, `n` times, one at a time.
async fn raw_deliveries(
    alice: &MatrixPerson,
    bob: &MatrixPerson,
    room: &str,
    n: usize,
    gap: Duration,
) -> Result<Vec<f64>> {
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    let handle = bob.client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let s = s.clone();
        async move {
            s.lock().expect("lock").entry(ev.content.body().to_owned()).or_insert_with(Instant::now);
        }
    });
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(room).context("room id")?;
    let r = alice.client.get_room(&room_id).context("alice has the room")?;
    let mut out = Vec::new();
    for i in 0..n {
        let body = format!("raw-{i}-{}", std::process::id());
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        r.send(RoomMessageEventContent::text_plain(&body)).await.context("send")?;
        bounded("raw event delivered", async {
            loop {
                if let Some(t) = seen.lock().expect("lock").get(&body) {
                    return Ok(ms(*t - t0));
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .map(|d| out.push(d))?;
    }
    bob.client.remove_event_handler(handle);
    Ok(out)
}

/// One 1:1 call; the moments of its steps since `invite_to_call`, in ms.
async fn one_call(alice: &MatrixPerson, bob: &MatrixPerson, room: &voip::core::RoomId) -> Result<Value> {
    let mut incoming = bob.voip.incoming_calls();
    let bob_user = bob.voip.local_device().user_id.clone();
    let t0 = Instant::now();
    if let Some(t) = TRACE.get() {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        println!("call starts at unix {:.3}; events before it:", wall.as_secs_f64());
        t.print_since(t0);
    }
    let call = alice.voip.invite_to_call(room, CallType::Voice, &bob_user).await?;
    let invited = ms(t0.elapsed());
    // Bob answers as soon as it rings, in its own task (as an app would).
    let answerer = tokio::spawn(async move {
        let c = incoming.next().await.context("no incoming call")?;
        let rang = Instant::now();
        c.answer().await?;
        Ok::<_, anyhow::Error>((c, rang, Instant::now()))
    });
    let mut marks: BTreeMap<&str, f64> = BTreeMap::new();
    marks.insert("invite_sent", invited);
    let mut ringing: Option<Call> = None;
    let mut answerer = Some(answerer);
    let done = bounded("call set up with media both ways", async {
        loop {
            if let Some(h) = answerer.take_if(|h| h.is_finished()) {
                let (c, rang, answered) = h.await??;
                marks.insert("invite_received", ms(rang - t0));
                marks.insert("answer_sent", ms(answered - t0));
                ringing = Some(c);
            }
            let now = ms(t0.elapsed());
            let st = call.state();
            if !matches!(st, CallState::CreateOffer | CallState::InviteSent) {
                marks.entry("answer_received").or_insert(now);
            }
            if st == CallState::Connected {
                marks.entry("caller_connected").or_insert(now);
            }
            if audio(alice, &call) > 0 {
                marks.entry("caller_first_packet").or_insert(now);
            }
            if let Some(r) = &ringing {
                if r.state() == CallState::Connected {
                    marks.entry("callee_connected").or_insert(now);
                }
                if audio(bob, r) > 0 {
                    marks.entry("callee_first_packet").or_insert(now);
                }
            }
            if [("caller_connected"), "callee_connected", "caller_first_packet", "callee_first_packet"]
                .iter()
                .all(|k| marks.contains_key(k))
            {
                return Ok(now);
            }
            if st == CallState::Ended {
                bail!("the call ended during set-up");
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await?;
    marks.insert("total", done);
    if let Some(t) = TRACE.get() {
        println!("call {marks:?}; events during it:");
        t.print_since(t0);
    }
    call.hangup().await?;
    bounded("hang-up seen by both", async {
        call.ended().await;
        if let Some(r) = &ringing {
            r.ended().await;
        }
        Ok(())
    })
    .await?;
    Ok(json!(marks))
}

async fn people(hs: &voip_testkit::Synapse, names: &[&str]) -> Result<Vec<MatrixPerson>> {
    let mut out = Vec::new();
    for n in names {
        let mode = *SYNC_MODE.get().unwrap_or(&SyncMode::TestLoop);
        let relay = *RELAY_ONLY.get().unwrap_or(&false);
        let media = voip::webrtc::WebrtcConfig::loopback().with_relay_only(relay);
        let p = MatrixPerson::with_media(hs, n, voip::Config::default(), mode, media).await?;
        if relay {
            // Relay-only has no candidate until `/voip/turnServer` has been fetched.
            let engine = p.voip.webrtc().context("webrtc engine")?.clone();
            let has_turn =
                move || engine.ice_servers().iter().any(|s| s.urls.iter().any(|u| u.starts_with("turn")));
            tokio::time::timeout(Duration::from_secs(20), async {
                while !has_turn() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .context("no TURN server from the homeserver (relay-only needs one)")?;
        }
        out.push(p);
    }
    Ok(out)
}

async fn room_of(ps: &[MatrixPerson]) -> Result<voip::core::RoomId> {
    let clients: Vec<&matrix_sdk::Client> = ps.iter().map(|p| &p.client).collect();
    encrypted_room(&clients).await
}

/// Mesh with 4 members: `enter` on all → every pair connected with audio both ways.
async fn mesh_join(hs: &voip_testkit::Synapse) -> Result<f64> {
    let ps = people(hs, &["m1", "m2", "m3", "m4"]).await?;
    let room = room_of(&ps).await?;
    let groups: Vec<GroupCall> = futures_util::future::try_join_all(
        ps.iter().map(|p| p.voip.fetch_or_create_group_call(&room, GroupCallBackend::Mesh)),
    )
    .await?;
    let t0 = Instant::now();
    for g in &groups {
        g.enter().await?;
    }
    let n = ps.len() - 1;
    let t = bounded("mesh: every pair connected with audio", async {
        loop {
            let ok = ps.iter().zip(&groups).all(|(p, g)| {
                let calls = g.peer_calls();
                calls.len() == n
                    && calls.iter().all(|(_, c)| c.state() == CallState::Connected && audio(p, c) > 0)
            });
            if ok {
                return Ok(ms(t0.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await?;
    for g in &groups {
        g.leave().await?;
    }
    for p in &ps {
        p.voip.shutdown().await;
    }
    Ok(t)
}

/// The homeserver's access log (Synapse's `homeserver.log`), to count the HTTP requests clients
/// made in a window. `None` without `--synapse-log`.
struct AccessLog(Option<std::path::PathBuf>);

impl AccessLog {
    fn len(&self) -> u64 {
        self.0.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    /// The requests other than `/sync` logged after byte `from`, per kind (`sendToDevice`,
    /// `send`, `state`, `keys/claim`, `keys/query`, `delayed_events`, other paths) and in total.
    fn requests_since(&self, from: u64) -> Value {
        let Some(path) = &self.0 else { return Value::Null };
        let Ok(bytes) = std::fs::read(path) else { return Value::Null };
        let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for line in text.lines().filter(|l| l.contains("Processed request")) {
            let Some(req) = line.split('"').nth(1) else { continue };
            let mut parts = req.split_whitespace();
            let (Some(method), Some(path)) = (parts.next(), parts.next()) else { continue };
            let path = path.split('?').next().unwrap_or(path);
            if path.ends_with("/sync") {
                continue;
            }
            let kind = ["sendToDevice", "/send/", "/state/", "keys/claim", "keys/query", "delayed_events"]
                .into_iter()
                .find(|k| path.contains(k))
                .map(|k| k.trim_matches('/').to_owned())
                .unwrap_or_else(|| path.rsplit("/v3/").next().unwrap_or(path).to_owned());
            *kinds.entry(format!("{method} {kind}")).or_default() += 1;
        }
        let total: u64 = kinds.values().sum();
        json!({ "total": total, "by_kind": kinds })
    }
}

/// LiveKit mode with 8 members: `enter` → everyone has everyone's key; then one leaves →
/// every remaining member uses a new key that all the others have; the HTTP requests (other
/// than `/sync`) every client made from the leave until one second after the rotation.
async fn sfu_join_and_rotation(hs: &voip_testkit::Synapse, log: &AccessLog) -> Result<(f64, f64, Value)> {
    let names = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"];
    let ps = people(hs, &names).await?;
    let room = room_of(&ps).await?;
    let backend =
        GroupCallBackend::LiveKit { service_url: "https://livekit-jwt.example.org".into(), alias: None };
    let groups: Vec<GroupCall> = futures_util::future::try_join_all(
        ps.iter().map(|p| p.voip.fetch_or_create_group_call(&room, backend.clone())),
    )
    .await?;
    let t0 = Instant::now();
    for g in &groups {
        g.enter().await?;
    }
    let all_keys = |gs: &[GroupCall], n: usize| {
        gs.iter().all(|g| g.media_keys().is_some_and(|k| k.local.is_some() && k.remote.len() == n))
    };
    let join = bounded("sfu: everyone has everyone's key", async {
        loop {
            if all_keys(&groups, names.len() - 1) {
                return Ok(ms(t0.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await?;
    let rest = &groups[..names.len() - 1];
    let before: Vec<String> =
        rest.iter().map(|g| g.media_keys().and_then(|k| k.local).map(|l| l.1).unwrap_or_default()).collect();
    // Let the join's last requests land in the log before the window opens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log_from = log.len();
    let t1 = Instant::now();
    groups[names.len() - 1].leave().await?;
    let rotation = bounded("sfu: every remaining member uses a new key everyone has", async {
        loop {
            let keys: Vec<_> = rest.iter().filter_map(|g| g.media_keys()).collect();
            let locals: Vec<Option<String>> =
                keys.iter().map(|k| k.local.as_ref().map(|l| l.1.clone())).collect();
            let rotated = keys.len() == rest.len()
                && locals.iter().zip(&before).all(|(l, b)| l.as_ref().is_some_and(|l| l != b))
                && keys.iter().all(|k| {
                    k.remote.len() == rest.len() - 1
                        && k.remote.iter().all(|(_, _, key)| locals.iter().any(|l| l.as_deref() == Some(key)))
                });
            if rotated {
                return Ok(ms(t1.elapsed()));
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = log.requests_since(log_from);
    for g in rest {
        g.leave().await?;
    }
    for p in &ps {
        p.voip.shutdown().await;
    }
    Ok((join, rotation, requests))
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = arg(&args, "--homeserver").context("--homeserver URL is required")?;
    let secret = arg(&args, "--registration-secret").context("--registration-secret is required")?;
    let server_name = arg(&args, "--server-name").unwrap_or_else(|| "localhost".into());
    let n: usize = arg(&args, "--calls").map(|s| s.parse()).transpose().context("--calls")?.unwrap_or(10);
    let hs = voip_testkit::Synapse { url, reg_secret: secret, server_name, owned: false };
    let sync = arg(&args, "--sync").unwrap_or_else(|| "test-loop".into());
    let mode =
        SyncMode::parse(&sync).with_context(|| format!("--sync {sync}: unknown (or built without it)"))?;
    let _ = SYNC_MODE.set(mode);
    let _ = RELAY_ONLY.set(args.iter().any(|a| a == "--relay-only"));
    let gap = Duration::from_millis(
        arg(&args, "--gap-ms").map(|s| s.parse()).transpose().context("--gap-ms")?.unwrap_or(0),
    );

    let ab = people(&hs, &["alice", "bob"]).await?;
    let (alice, bob) = (&ab[0], &ab[1]);
    let room = room_of(&ab).await?;
    if args.iter().any(|a| a == "--trace-sync") {
        let t = TRACE.get_or_init(SyncTrace::default);
        t.watch("alice", &alice.client);
        t.watch("bob", &bob.client);
    }
    // One call first, unmeasured: the first Olm session and key share happen here.
    tokio::time::sleep(gap).await;
    one_call(alice, bob, &room).await.context("warm-up call")?;
    let raw = raw_deliveries(alice, bob, room.as_str(), n, gap).await?;
    let mut calls = Vec::new();
    for i in 0..n {
        tokio::time::sleep(gap).await;
        let c = one_call(alice, bob, &room).await.with_context(|| format!("call {i}"))?;
        println!("call {i}: {c}");
        calls.push(c);
    }
    for p in &ab {
        p.voip.shutdown().await;
    }
    let mut groups = json!(null);
    if args.iter().any(|a| a == "--groups") {
        let mesh = mesh_join(&hs).await?;
        let log = AccessLog(arg(&args, "--synapse-log").map(Into::into));
        let (sfu, rotation, requests) = sfu_join_and_rotation(&hs, &log).await?;
        println!(
            "mesh join (4): {mesh:.0} ms, sfu join (8): {sfu:.0} ms, key rotation (7 left): {rotation:.0} ms, \
             requests {requests}"
        );
        groups = json!({
            "mesh4_join_ms": mesh,
            "sfu8_join_ms": sfu,
            "sfu_rotation_ms": rotation,
            "sfu_rotation_requests": requests,
        });
    }

    let steps = [
        "invite_received",
        "answer_sent",
        "answer_received",
        "caller_connected",
        "callee_connected",
        "caller_first_packet",
        "callee_first_packet",
        "total",
    ];
    println!("\n| step (ms since invite_to_call) | median | p95 |\n|---|---|---|");
    let (m, p) = median_p95(&raw);
    println!("| raw room event A→B (floor leg) | {m:.0} | {p:.0} |");
    for s in steps {
        let xs: Vec<f64> = calls.iter().filter_map(|c| c[s].as_f64()).collect();
        let (m, p) = median_p95(&xs);
        println!("| {s} | {m:.0} | {p:.0} |");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = json!({ "raw_ms": raw, "calls": calls, "groups": groups, "loadavg": load.trim(), "sync": sync, "gap_ms": ms(gap) });
    if let Some(out) = arg(&args, "--out") {
        std::fs::write(&out, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,webrtc::peer_connection::driver=off".into()),
        )
        .try_init();
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        eprintln!("cannot start tokio");
        return ExitCode::FAILURE;
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(600), run()).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("setup_bench failed: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("setup_bench failed: not finished within 600 s");
            ExitCode::FAILURE
        }
    }
}
