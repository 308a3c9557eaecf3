//! `cargo xtask interop [--scenario PAT] [--under rust|js] [--list] [--no-install] [--no-chromium]
//! [--rig PATH] [--keep]`:
//! interoperability with the real matrix-js-sdk (issue #9; see docs/interop.md).
//!
//! 1. `npm ci` in `interop/` (pinned matrix-js-sdk 43.0.0 and 40.2.0, @roamhq/wrtc 0.10.0);
//! 2. builds `synapse-rig` (and the Rust peer for `--under rust`) outside the namespace;
//! 3. creates a network namespace with `lo` and a veth end carrying 127.0.0.2 (libwebrtc ignores
//!    loopback when a real interface exists; inside the namespace both stacks gather loopback
//!    candidates), starts coturn inside it (`synapse-rig coturn`, a random TURN REST secret) and
//!    Synapse with `turn_uris`/`turn_shared_secret` pointing at it, so `/voip/turnServer` hands
//!    both SDKs working TURN credentials in every scenario;
//! 4. runs every scenario: one process per peer, commands and events as JSON lines
//!    (`interop/js-peer.mjs`, `interop/rust-peer`), asserting on the events.
//!
//! "Under test" is the side whose behaviour we check against js-sdk: the Rust library (default)
//! or js-sdk itself (`--under js`, a self-test of the harness: both sides are js-sdk).
//! Peer logs go to `<target>/interop/<scenario>/`. The `cli-calls-j` scenarios also build and
//! run the `matrix-call` binary (crates/matrix-call) as the calling side.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::netns::{status, Netns, NsCoturn};

/// How long any single expected event may take before the scenario fails (a bound, not a
/// latency assertion: call set-up takes about 1 s on an idle machine).
const WAIT: Duration = Duration::from_secs(30);
/// Audio packets each way that count as "media flows" (50 packets/s with 20 ms Opus frames).
const PACKETS: u64 = 25;
/// Decoded-content scenarios: what J (js-sdk) sends, what U sends, the frequencies whose
/// Goertzel power the margin is taken against, and the margin a tone must reach (issue #17).
const J_TONE: f64 = 440.0;
const U_TONE: f64 = 1000.0;
const TEST_FREQS: [f64; 6] = [300.0, 440.0, 700.0, 1000.0, 1700.0, 2500.0];
const MIN_MARGIN_DB: f64 = 20.0;
/// Decoded PCM analysed per side (after 200 ms skipped).
const MEASURE_MS: u64 = 2000;
/// Decoded video watched per side, the size both test patterns are sent at, and the share of
/// decoded frames that must carry a readable frame number.
const VIDEO_MS: u64 = 3000;
const VIDEO_SIZE: (u64, u64) = (640, 480);
const MIN_NUMBERED: f64 = 0.8;
/// `cli-calls-j`: the CLI hangs up this long after its call connected (time for J to measure
/// the CLI's tone and for the CLI to record J's).
const CLI_HANGUP_AFTER_S: u64 = 8;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::root().join("target"))
}

fn cargo_build(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("==> cargo {}", args.join(" "));
    status(Command::new(cargo).args(args).current_dir(crate::root()), "cargo build")
}

/// The kind of a peer process.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// matrix-js-sdk; `sdk` is "43" or "40", `trickle` selects the browser-like candidate style.
    Js { sdk: &'static str, trickle: bool },
    /// matrix-js-sdk 43 in headless Chromium (`interop/browser-peer.mjs`, Debian's chromium).
    Browser,
    /// The Rust library (`interop/rust-peer`).
    Rust,
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::Js { sdk, trickle } => format!("js{sdk}-{}", if *trickle { "trickle" } else { "sdp" }),
            Kind::Browser => "chromium".into(),
            Kind::Rust => "rust".into(),
        }
    }
}

/// Everything a scenario needs from the environment.
struct Env {
    ns: String,
    hs: String,
    interop: PathBuf,
    rust_peer: Option<PathBuf>,
    /// The `matrix-call` binary (built when a `cli-` scenario is planned).
    matrix_call: Option<PathBuf>,
    /// The TURN server Synapse's `/voip/turnServer` points at, and its log.
    turn_uri: String,
    turn_log: Option<PathBuf>,
    logs: PathBuf,
}

/// Users and rooms made by `js-peer.mjs setup`.
struct Setup {
    users: Vec<Value>,
    rooms: Vec<String>,
}

impl Env {
    fn in_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    fn setup(&self, users: &str, pairs: &str, encrypted: bool) -> anyhow::Result<Setup> {
        let mut c = self.in_ns("node");
        c.arg(self.interop.join("js-peer.mjs")).args(["setup", "--hs", &self.hs, "--users", users]);
        if !pairs.is_empty() {
            c.args(["--pairs", pairs]);
        }
        if encrypted {
            c.arg("--encrypted");
        }
        let out = c.stderr(Stdio::inherit()).output().context("js-peer.mjs setup")?;
        if !out.status.success() {
            bail!("js-peer.mjs setup failed ({})", out.status);
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("setup output")?;
        let users = v["users"].as_array().cloned().unwrap_or_default();
        let rooms = v["rooms"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok(Setup { users, rooms })
    }

    /// Spawns one peer for `user` (index into the setup) with `room` as its default room.
    fn peer(
        &self,
        scenario: &str,
        name: &str,
        kind: &Kind,
        user: &Value,
        room: &str,
        extra: &[&str],
    ) -> anyhow::Result<Peer> {
        let dir = self.log_dir(scenario)?;
        let mut c = match kind {
            Kind::Js { .. } => {
                let mut c = self.in_ns("node");
                c.arg(self.interop.join("js-peer.mjs"));
                c
            }
            Kind::Browser => {
                let mut c = self.in_ns("node");
                c.arg(self.interop.join("browser-peer.mjs"));
                c
            }
            Kind::Rust => self.in_ns(self.rust_peer.as_ref().context("the Rust peer was not built")?),
        };
        c.args(["peer", "--hs", &self.hs, "--room", room]);
        for (flag, key) in
            [("--user-id", "user_id"), ("--device-id", "device_id"), ("--token", "access_token")]
        {
            c.arg(flag).arg(user[key].as_str().unwrap_or_default());
        }
        if let Kind::Js { sdk, trickle } = kind {
            c.args(["--sdk", sdk, "--candidates", if *trickle { "trickle" } else { "sdp" }]);
        }
        c.args(extra);
        let user_id = user["user_id"].as_str().unwrap_or_default();
        let mut p = spawn_lines(&dir, name, user_id, c)?;
        p.wait("ready", |e| ev(e, "ready"))?;
        Ok(p)
    }

    /// The scenario's log directory (created).
    fn log_dir(&self, scenario: &str) -> anyhow::Result<PathBuf> {
        let dir = self.logs.join(scenario.replace('/', "_"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Successful TURN permissions in coturn's log so far (relay paths being opened).
    fn turn_permissions(&self) -> usize {
        let log = self.turn_log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        log.lines().filter(|l| l.contains("CREATE_PERMISSION processed, success")).count()
    }
}

/// Spawns `c` with piped stdin/stdout: its stdout lines (JSON) are logged to
/// `DIR/NAME.events.jsonl` and collected as events; stderr goes to `DIR/NAME.stderr.log`.
fn spawn_lines(dir: &Path, name: &str, user_id: &str, mut c: Command) -> anyhow::Result<Peer> {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join(format!("{name}.stderr.log")))?);
    let mut child = c.spawn().with_context(|| format!("spawning {name}"))?;
    let stdin = child.stdin.take().context("peer stdin")?;
    let stdout = child.stdout.take().context("peer stdout")?;
    let (tx, rx) = channel();
    let mut log = File::create(dir.join(format!("{name}.events.jsonl")))?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            let v =
                serde_json::from_str::<Value>(&line).unwrap_or_else(|_| json!({"ev": "raw", "line": line}));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    Ok(Peer {
        name: name.to_owned(),
        user_id: user_id.to_owned(),
        child,
        stdin,
        rx,
        events: Vec::new(),
        mark: 0,
    })
}

fn ev(e: &Value, name: &str) -> bool {
    e["ev"] == name
}

/// One peer process, speaking the JSON-lines protocol.
struct Peer {
    name: String,
    user_id: String,
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    events: Vec<Value>,
    /// `wait` looks at events from here on.
    mark: usize,
}

impl Peer {
    fn cmd(&mut self, c: Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{c}").with_context(|| format!("{}: writing {c}", self.name))?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Only events after this point count for the next `wait`s.
    fn mark(&mut self) {
        self.drain();
        self.mark = self.events.len();
    }

    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.events.push(e);
        }
    }

    /// The first event since the mark that matches; fails on `fatal` or after `WAIT`.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        let mut i = self.mark;
        loop {
            while i < self.events.len() {
                let e = &self.events[i];
                i += 1;
                if pred(e) {
                    return Ok(e.clone());
                }
                if ev(e, "fatal") {
                    bail!("{}: peer died: {}", self.name, e["message"]);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.events.push(e),
                Err(RecvTimeoutError::Timeout) => bail!("{}: no `{what}` within {WAIT:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => bail!("{}: exited before `{what}`", self.name),
            }
        }
    }

    /// Asks for stats until at least `PACKETS` more audio packets were sent and received than in
    /// `base`; returns the last counters.
    fn audio_flows(&mut self, base: (u64, u64)) -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let (sent, recv) = self.counters()?;
            if sent >= base.0 + PACKETS && recv >= base.1 + PACKETS {
                return Ok((sent, recv));
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: audio does not flow both ways: sent {sent}, received {recv} (base {base:?})",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The current (sent, received) audio packet counters.
    fn counters(&mut self) -> anyhow::Result<(u64, u64)> {
        self.mark();
        self.cmd(json!({"cmd": "stats"}))?;
        let s = self.wait("stats", |e| ev(e, "stats"))?;
        Ok((s["sent"].as_u64().unwrap_or(0), s["received"].as_u64().unwrap_or(0)))
    }

    /// Waits for the call to be connected (js-sdk's `connected` can flap; see docs/interop.md).
    fn connected(&mut self) -> anyhow::Result<String> {
        let e = self.wait("connected", |e| ev(e, "state") && e["state"] == "connected")?;
        Ok(e["call_id"].as_str().unwrap_or_default().to_owned())
    }

    fn ended(&mut self) -> anyhow::Result<Value> {
        self.wait("ended", |e| ev(e, "ended"))
    }

    /// The selected candidate pair of the current call, from a `stats` event.
    fn selected_pair(&mut self) -> anyhow::Result<Value> {
        self.mark();
        self.cmd(json!({"cmd": "stats"}))?;
        let s = self.wait("stats", |e| ev(e, "stats"))?;
        Ok(s["pair"].clone())
    }

    /// The process's exit code, waiting up to `timeout` for it to exit by itself.
    fn exit_code(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!("{}: still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.cmd(json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scenario: name and the function that runs it with (under-test kind, js kind).
type Run = fn(&Env, &str, &Kind, &Kind) -> anyhow::Result<()>;

fn scenarios() -> Vec<(&'static str, Run, &'static [&'static str])> {
    // name, runner, js variants (sdk version + candidate style)
    const BOTH: &[&str] = &["43-sdp", "43-trickle"];
    const OLD: &[&str] = &["40-sdp", "40-trickle"];
    vec![
        ("u-calls-j", u_calls_j as Run, BOTH),
        ("j-calls-u", j_calls_u, BOTH),
        ("j-rejects", j_rejects, BOTH),
        ("u-busy", u_busy, BOTH),
        ("glare", glare, BOTH),
        ("hold-by-u", hold_by_u, BOTH),
        ("hold-by-j", hold_by_j, BOTH),
        ("sdk40-u-calls-j", u_calls_j, OLD),
        ("sdk40-j-calls-u", j_calls_u, OLD),
        ("rtc-keys", rtc_keys, &["43-sdp"]),
        ("decoded-audio", decoded_audio, BOTH),
        ("decoded-video", decoded_video, BOTH),
        ("cli-calls-j", cli_calls_j, BOTH),
        ("relayed-u-calls-j", relayed_u_calls_j, BOTH),
        ("relayed-j-calls-u", relayed_j_calls_u, BOTH),
        ("chromium-u-calls-j", u_calls_j, &["chromium"]),
        ("chromium-j-calls-u", j_calls_u, &["chromium"]),
        ("chromium-decoded-audio", decoded_audio, &["chromium"]),
        ("chromium-decoded-video", decoded_video, &["chromium"]),
    ]
}

fn js_kind(variant: &str) -> Kind {
    if variant == "chromium" {
        return Kind::Browser;
    }
    let (sdk, style) = variant.split_once('-').unwrap_or(("43", "sdp"));
    Kind::Js { sdk: if sdk == "40" { "40" } else { "43" }, trickle: style == "trickle" }
}

/// U calls J in the shared room; J answers; audio both ways; J hangs up; both see the end.
fn u_calls_j(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &[])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    let t = Instant::now();
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    let a = pu.connected()?;
    let b = pj.connected()?;
    println!("      set-up (call -> connected on both sides): {} ms", t.elapsed().as_millis());
    ensure_eq(&a, &b, "call ids")?;
    check_candidate_style(&mut pj, j)?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    pj.cmd(json!({"cmd": "hangup"}))?;
    pj.ended()?;
    let e = pu.ended()?;
    ensure_eq(e["reason"].as_str().unwrap_or(""), "user_hangup", "U's hangup reason")
}

/// J calls U; U answers; audio both ways; U hangs up.
fn j_calls_u(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("j,u", "", false)?;
    let mut pj = env.peer(sc, "j", j, &s.users[0], &s.rooms[0], &[])?;
    let mut pu = env.peer(sc, "u", u, &s.users[1], &s.rooms[0], &[])?;
    pj.cmd(json!({"cmd": "call", "to": pu.user_id}))?;
    pu.wait("incoming", |e| ev(e, "incoming"))?;
    pu.cmd(json!({"cmd": "answer"}))?;
    let a = pu.connected()?;
    let b = pj.connected()?;
    ensure_eq(&a, &b, "call ids")?;
    check_candidate_style(&mut pj, j)?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    pu.cmd(json!({"cmd": "hangup"}))?;
    pu.ended()?;
    let e = pj.ended()?;
    ensure_eq(e["reason"].as_str().unwrap_or(""), "user_hangup", "J's hangup reason")?;
    ensure_eq(e["party"].as_str().unwrap_or(""), "remote", "J's hangup party")
}

/// U calls J; J rejects (m.call.reject); U's call ends, J never connected.
fn j_rejects(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &[])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "reject"}))?;
    pj.wait("m.call.reject sent", |e| ev(e, "sent") && e["type"] == "m.call.reject")?;
    pu.ended()?;
    pu.mark();
    pj.mark();
    if pu.events.iter().chain(&pj.events).any(|e| ev(e, "state") && e["state"] == "connected") {
        bail!("a rejected call connected");
    }
    Ok(())
}

/// U is in a call with J; K (js) calls U in another room; K's call ends at once (with reason
/// `user_busy` when U is matrix-voip-rs); U's first call is unaffected (audio still flows).
fn u_busy(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j,k", "0-2", false)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &["--busy"])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    let mut pk = env.peer(sc, "k", j, &s.users[2], &s.rooms[1], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    pu.connected()?;
    pj.connected()?;
    let base = pu.audio_flows((0, 0))?;
    pk.cmd(json!({"cmd": "call", "to": pu.user_id}))?;
    // The caller must stop ringing (not ring until the invite lifetime ends) ...
    let e = pk.ended()?;
    // ... and, from matrix-voip-rs (README: "busy: caller is told"), learn why.
    if *u == Kind::Rust {
        ensure_eq(e["reason"].as_str().unwrap_or(""), "user_busy", "K's hangup reason")?;
    }
    pu.audio_flows(base)?;
    pj.cmd(json!({"cmd": "hangup"}))?;
    pu.ended()?;
    Ok(())
}

/// U and J call each other at the same time: both end up in one connected call (the lower call
/// id wins) with audio both ways.
fn glare(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &[])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.cmd(json!({"cmd": "call", "to": pu.user_id}))?;
    let a = pu.connected()?;
    let b = pj.connected()?;
    ensure_eq(&a, &b, "the call both sides kept")?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    pj.cmd(json!({"cmd": "hangup"}))?;
    pu.wait("ended", |e| ev(e, "ended") && e["call_id"] == a.as_str())?;
    Ok(())
}

fn hold_by_u(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    hold(env, sc, u, j, true)
}

fn hold_by_j(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    hold(env, sc, u, j, false)
}

/// U calls J; the holder puts the other on hold, both see it; unhold; audio flows again.
fn hold(env: &Env, sc: &str, u: &Kind, j: &Kind, u_holds: bool) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &[])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    pu.connected()?;
    pj.connected()?;
    pu.audio_flows((0, 0))?;
    let (holder, other) = if u_holds { (&mut pu, &mut pj) } else { (&mut pj, &mut pu) };
    holder.mark();
    other.mark();
    holder.cmd(json!({"cmd": "hold"}))?;
    holder.wait("remote_on_hold", |e| ev(e, "hold") && e["remote_on_hold"] == true)?;
    other.wait("local_on_hold", |e| ev(e, "hold") && e["local_on_hold"] == true)?;
    holder.mark();
    other.mark();
    let base = other.counters()?;
    holder.cmd(json!({"cmd": "unhold"}))?;
    holder.wait("remote_on_hold=false", |e| ev(e, "hold") && e["remote_on_hold"] == false)?;
    other.wait("local_on_hold=false", |e| ev(e, "hold") && e["local_on_hold"] == false)?;
    other.audio_flows(base)?;
    holder.cmd(json!({"cmd": "hangup"}))?;
    other.ended()?;
    Ok(())
}

/// MatrixRTC (Element Call dialect, js-sdk's MatrixRTCSession with Rust crypto): U, J and K
/// join; everyone sees the other two; media keys arrive both ways over Olm to-device; K leaves;
/// U and J see it and each receives the other's rotated key.
fn rtc_keys(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j,k", "", true)?;
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &["--crypto"])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &["--crypto"])?;
    let mut pk = env.peer(sc, "k", j, &s.users[2], &s.rooms[0], &["--crypto"])?;
    let ids: Vec<(String, String)> = s
        .users
        .iter()
        .map(|x| {
            (x["user_id"].as_str().unwrap_or("").to_owned(), x["device_id"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    for p in [&mut pu, &mut pj, &mut pk] {
        p.cmd(json!({"cmd": "rtc-join"}))?;
    }
    let all = ids.clone();
    for p in [&mut pu, &mut pj, &mut pk] {
        p.wait("all three members", |e| ev(e, "rtc-members") && members_are(e, &all))?;
    }
    // Keys from each other member, over to-device.
    for (p, me) in [(&mut pu, 0), (&mut pj, 1), (&mut pk, 2)] {
        for (i, (uid, did)) in ids.iter().enumerate() {
            if i != me {
                p.wait(&format!("key from {uid}"), |e| key_from(e, uid, did, -1))?;
            }
        }
    }
    // Last key index seen from the other one, before the leave.
    let last = |p: &mut Peer, (uid, did): &(String, String)| -> i64 {
        p.drain();
        p.events
            .iter()
            .filter(|e| key_from(e, uid, did, -1))
            .filter_map(|e| e["index"].as_i64())
            .max()
            .unwrap_or(-1)
    };
    let u_had = last(&mut pu, &ids[1]);
    let j_had = last(&mut pj, &ids[0]);
    pu.mark();
    pj.mark();
    pk.cmd(json!({"cmd": "rtc-leave"}))?;
    pk.wait("rtc-left", |e| ev(e, "rtc-left"))?;
    let two = ids[..2].to_vec();
    pu.wait("K gone", |e| ev(e, "rtc-members") && members_are(e, &two))?;
    pj.wait("K gone", |e| ev(e, "rtc-members") && members_are(e, &two))?;
    let (juid, jdid) = &ids[1];
    let (uuid, udid) = &ids[0];
    pu.wait("J's rotated key", |e| key_from(e, juid, jdid, after(u_had)))?;
    pj.wait("U's rotated key", |e| key_from(e, uuid, udid, after(j_had)))?;
    drop(pk);
    Ok(())
}

/// Real decoded content both ways in one call (issue #17): U calls J; J (js-sdk on wrtc) sends
/// a 440 Hz tone from an `RTCAudioSource`, U (with `--tone`) a 1 kHz tone from its `AudioInput`;
/// each side analyses 2 s of its *decoded* output (U: `Call::remote_audio` after libopus and the
/// jitter buffer; J: wrtc's `RTCAudioSink` after libwebrtc's NetEq) and the other side's tone
/// must stand ≥ 20 dB above every other test frequency.
fn decoded_audio(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let tone = format!("{U_TONE}");
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &["--tone", &tone])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    pu.connected()?;
    pj.connected()?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    let failures = tones_both_ways(&mut pu, &mut pj)?;
    pj.cmd(json!({"cmd": "hangup"}))?;
    pu.ended()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Both peers analyse their decoded audio at once; prints the margins, returns what failed.
fn tones_both_ways(pu: &mut Peer, pj: &mut Peer) -> anyhow::Result<Vec<String>> {
    pu.mark();
    pj.mark();
    let m = |target| json!({"cmd": "measure-audio", "ms": MEASURE_MS, "target": target, "freqs": TEST_FREQS});
    pu.cmd(m(J_TONE))?;
    pj.cmd(m(U_TONE))?;
    let heard_by_u =
        pu.wait("audio", |e| ev(e, "audio") || (ev(e, "error") && e["cmd"] == "measure-audio"))?;
    let heard_by_j =
        pj.wait("audio", |e| ev(e, "audio") || (ev(e, "error") && e["cmd"] == "measure-audio"))?;
    let mut failures = Vec::new();
    for (who, from, r, want) in [("U", "J", &heard_by_u, J_TONE), ("J", "U", &heard_by_j, U_TONE)] {
        if ev(r, "error") {
            failures.push(format!("{who}: measure-audio failed: {}", r["message"]));
            continue;
        }
        let margin = r["margin_db"].as_f64().unwrap_or(f64::NEG_INFINITY);
        println!(
            "      {who} decoded {from}'s {want} Hz: {margin:.1} dB above the other test frequencies, level {:.1} dBFS, {} ms at {} Hz x{}",
            r["level_dbfs"].as_f64().unwrap_or(-100.0),
            r["ms"],
            r["sample_rate"],
            r["channels"],
        );
        if r["target"].as_f64() != Some(want) || margin < MIN_MARGIN_DB {
            failures.push(format!(
                "{who}: {want} Hz only {margin:.1} dB above the rest (need {MIN_MARGIN_DB}): {r}"
            ));
        }
    }
    Ok(failures)
}

/// Real decoded video both ways, with the tones of `decoded-audio`, in one video call (issue
/// #17): U (`--tone 1000 --video`) places a video call to J; J answers with its camera. J sends
/// the frame-number test pattern from an `RTCVideoSource` (640×480, 15 fps), U sends
/// voip-webrtc's `TestPattern` (same layout, 640×480, 15 fps, VP8 through libvpx). Each side
/// watches 3 s of its decoded frames (U: `Call::remote_video`; J: wrtc's `RTCVideoSink`): at
/// least 80 % of them must carry a readable frame number, the numbers must rise, the size must
/// be 640×480; and each side's decoded audio must hold the other's tone.
fn decoded_video(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let tone = format!("{U_TONE}");
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &["--tone", &tone, "--video"])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    pu.cmd(json!({"cmd": "call", "to": pj.user_id, "video": true}))?;
    pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    pu.connected()?;
    pj.connected()?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    pu.mark();
    pj.mark();
    let m = json!({"cmd": "measure-video", "ms": VIDEO_MS});
    pu.cmd(m.clone())?;
    pj.cmd(m)?;
    let seen_by_u =
        pu.wait("video", |e| ev(e, "video") || (ev(e, "error") && e["cmd"] == "measure-video"))?;
    let seen_by_j =
        pj.wait("video", |e| ev(e, "video") || (ev(e, "error") && e["cmd"] == "measure-video"))?;
    let mut failures = Vec::new();
    for (who, from, r) in [("U", "J", &seen_by_u), ("J", "U", &seen_by_j)] {
        if ev(r, "error") {
            failures.push(format!("{who}: measure-video failed: {}", r["message"]));
            continue;
        }
        let frames = r["frames"].as_u64().unwrap_or(0);
        let numbered = r["numbered"].as_u64().unwrap_or(0);
        let size = (r["width"].as_u64().unwrap_or(0), r["height"].as_u64().unwrap_or(0));
        println!(
            "      {who} decoded {from}'s pattern: {frames} frames in {VIDEO_MS} ms at {}x{}, {numbered} with a frame \
             number ({}..{}), in order: {}, mean luma {:.1} ± {:.1}",
            size.0,
            size.1,
            r["first"],
            r["last"],
            r["in_order"],
            r["luma_mean"].as_f64().unwrap_or(0.0),
            r["luma_sd"].as_f64().unwrap_or(0.0),
        );
        if frames < 10 || (numbered as f64) < MIN_NUMBERED * frames as f64 || r["in_order"] != true {
            failures.push(format!("{who}: {from}'s pattern not decoded cleanly: {r}"));
        }
        if size != VIDEO_SIZE {
            failures.push(format!("{who}: {from}'s video is {}x{}, sent at 640x480", size.0, size.1));
        }
    }
    failures.extend(tones_both_ways(&mut pu, &mut pj)?);
    pj.cmd(json!({"cmd": "hangup"}))?;
    pu.ended()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The flag that makes a peer of `kind` relay-only: the Rust peer's `WebrtcConfig::with_relay_only`,
/// js-sdk's `forceTURN`.
fn relay_flag(kind: &Kind) -> &'static str {
    match kind {
        Kind::Rust => "--relay-only",
        Kind::Js { .. } | Kind::Browser => "--force-turn",
    }
}

fn relayed_u_calls_j(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    relayed(env, sc, u, j, true)
}

fn relayed_j_calls_u(env: &Env, sc: &str, u: &Kind, j: &Kind) -> anyhow::Result<()> {
    relayed(env, sc, u, j, false)
}

/// A call relayed through coturn with relay-only on both sides (issue #18): U relay-only (the
/// Rust peer's `--relay-only`: `iceTransportPolicy: relay`), J with js-sdk's `forceTURN`, both
/// with the TURN credentials Synapse's `/voip/turnServer` hands out for the harness's coturn.
/// `u_calls` picks the caller. Asserted: both have a TURN server before calling; the selected
/// candidate pair is `relay` on both sides (stats); coturn granted new permissions; decoded
/// audio both ways (U's 1 kHz, J's 440 Hz, Goertzel margin ≥ 20 dB); the hangup arrives. The
/// set-up time (call → connected on both sides, and → audio both ways) is printed.
fn relayed(env: &Env, sc: &str, u: &Kind, j: &Kind, u_calls: bool) -> anyhow::Result<()> {
    let s = env.setup("u,j", "", false)?;
    let tone = format!("{U_TONE}");
    let mut pu = env.peer(sc, "u", u, &s.users[0], &s.rooms[0], &[relay_flag(u), "--tone", &tone])?;
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[relay_flag(j)])?;
    for p in [&pu, &pj] {
        let ready = p.events.iter().find(|e| ev(e, "ready")).cloned().unwrap_or_default();
        if ready["turn_servers"].as_u64().unwrap_or(0) == 0 {
            bail!("{}: no TURN server from /voip/turnServer ({ready})", p.name);
        }
    }
    let permissions = env.turn_permissions();
    let t = Instant::now();
    let (caller, callee) = if u_calls { (&mut pu, &mut pj) } else { (&mut pj, &mut pu) };
    let to = callee.user_id.clone();
    caller.cmd(json!({"cmd": "call", "to": to}))?;
    callee.wait("incoming", |e| ev(e, "incoming"))?;
    callee.cmd(json!({"cmd": "answer"}))?;
    let a = pu.connected()?;
    let b = pj.connected()?;
    let connected = t.elapsed();
    ensure_eq(&a, &b, "call ids")?;
    pu.audio_flows((0, 0))?;
    pj.audio_flows((0, 0))?;
    println!(
        "      relayed set-up: call -> connected on both sides {} ms, -> {PACKETS}+ audio packets each way on both sides {} ms",
        connected.as_millis(),
        t.elapsed().as_millis(),
    );
    let mut failures = Vec::new();
    for p in [&mut pu, &mut pj] {
        let pair = p.selected_pair()?;
        println!("      {} selected pair: {pair}", p.name);
        if pair["local"]["type"] != "relay" {
            failures.push(format!("{}: local candidate of the selected pair is not relay: {pair}", p.name));
        }
        if !pair["remote"].is_null() && pair["remote"]["type"] != "relay" {
            failures.push(format!("{}: remote candidate of the selected pair is not relay: {pair}", p.name));
        }
    }
    let granted = env.turn_permissions().saturating_sub(permissions);
    println!("      coturn ({}): {granted} new permissions", env.turn_uri);
    if env.turn_log.is_some() && granted < 2 {
        failures.push(format!("coturn granted {granted} permissions during the call (need both sides)"));
    }
    failures.extend(tones_both_ways(&mut pu, &mut pj)?);
    let (caller, callee) = if u_calls { (&mut pu, &mut pj) } else { (&mut pj, &mut pu) };
    callee.mark();
    caller.mark();
    callee.cmd(json!({"cmd": "hangup"}))?;
    callee.ended()?;
    let e = caller.ended()?;
    if e["reason"] != "user_hangup" {
        failures.push(format!("{}: hangup reason {}", caller.name, e["reason"]));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The real `matrix-call` binary calls J (issue #18): it logs in with the password (a new
/// device, its SQLite store in the scenario's log dir), finds its DM room with J, calls with
/// `--play` (a 1 kHz WAV) and `--record`, and hangs up `CLI_HANGUP_AFTER_S` after connecting.
/// J answers and sends its 440 Hz tone. Asserted: J decodes the CLI's 1 kHz (margin ≥ 20 dB),
/// J's call ends with the CLI's `user_hangup`, the CLI exits 0, and its recording holds J's
/// 440 Hz (Goertzel margin ≥ 20 dB over the other test frequencies).
fn cli_calls_j(env: &Env, sc: &str, _u: &Kind, j: &Kind) -> anyhow::Result<()> {
    let bin = env.matrix_call.clone().context("matrix-call was not built")?;
    let helper = env.rust_peer.clone().context("the Rust peer (WAV helpers) was not built")?;
    let s = env.setup("u,j", "", false)?;
    let logs = env.log_dir(sc)?;
    let dir = logs.join("cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (play, record, data) = (dir.join("u-tone.wav"), dir.join("recorded.wav"), dir.join("data"));
    status(
        Command::new(&helper)
            .args(["tone-wav", "--hz", &format!("{U_TONE}"), "--seconds", "30", "--out"])
            .arg(&play),
        "rust-peer tone-wav",
    )?;
    let uid = s.users[0]["user_id"].as_str().unwrap_or_default().to_owned();
    let localpart = uid.trim_start_matches('@').split(':').next().unwrap_or_default().to_owned();
    let cli = |args: &[&str]| {
        let mut c = env.in_ns(&bin);
        c.arg("--json").arg("--data-dir").arg(&data).args(args);
        c.env_remove("MATRIX_ACCESS_TOKEN").env_remove("MATRIX_CALL_DATA_DIR");
        c
    };
    let login = cli(&["login", &env.hs, &uid])
        .env("MATRIX_PASSWORD", format!("pw-{localpart}"))
        .stdin(Stdio::null())
        .output()
        .context("matrix-call login")?;
    std::fs::write(logs.join("cli-login.stdout.log"), &login.stdout)?;
    std::fs::write(logs.join("cli-login.stderr.log"), &login.stderr)?;
    if !login.status.success() || !String::from_utf8_lossy(&login.stdout).contains("\"logged_in\"") {
        bail!(
            "matrix-call login failed ({}): {}",
            login.status,
            String::from_utf8_lossy(&login.stderr).trim()
        );
    }
    let mut pj = env.peer(sc, "j", j, &s.users[1], &s.rooms[0], &[])?;
    let hangup_after = CLI_HANGUP_AFTER_S.to_string();
    let mut call = cli(&["call", &pj.user_id, "--play"]);
    call.arg(&play).arg("--record").arg(&record).args(["--hangup-after", &hangup_after, "--loopback"]);
    call.env_remove("MATRIX_PASSWORD");
    let t = Instant::now();
    let mut pc = spawn_lines(&logs, "cli", &uid, call)?;
    let invite = pj.wait("incoming", |e| ev(e, "incoming"))?;
    pj.cmd(json!({"cmd": "answer"}))?;
    let connected = pc.wait("state connected", |e| {
        (e["event"] == "state" && e["state"] == "connected") || e["event"] == "error"
    })?;
    if connected["event"] == "error" {
        bail!("matrix-call: {}", connected["message"]);
    }
    pj.connected()?;
    println!(
        "      CLI set-up: call -> connected {} ms on the harness clock, setup_ms {} on the CLI's",
        t.elapsed().as_millis(),
        connected["setup_ms"]
    );
    ensure_eq(
        connected["call_id"].as_str().unwrap_or(""),
        invite["call_id"].as_str().unwrap_or("-"),
        "call ids",
    )?;
    pj.audio_flows((0, 0))?;
    pj.mark();
    pj.cmd(json!({"cmd": "measure-audio", "ms": MEASURE_MS, "target": U_TONE, "freqs": TEST_FREQS}))?;
    let heard = pj.wait("audio", |e| ev(e, "audio") || (ev(e, "error") && e["cmd"] == "measure-audio"))?;
    let mut failures = Vec::new();
    let margin = heard["margin_db"].as_f64().unwrap_or(f64::NEG_INFINITY);
    println!(
        "      J decoded the CLI's {U_TONE} Hz WAV: {margin:.1} dB above the other test frequencies, level {:.1} dBFS",
        heard["level_dbfs"].as_f64().unwrap_or(-100.0)
    );
    if ev(&heard, "error") || heard["target"].as_f64() != Some(U_TONE) || margin < MIN_MARGIN_DB {
        failures.push(format!("J: the CLI's {U_TONE} Hz only {margin:.1} dB above the rest: {heard}"));
    }
    // The CLI hangs up by itself (--hangup-after); J must see it as the remote's user_hangup.
    let e = pj.ended()?;
    if e["reason"] != "user_hangup" || e["party"] != "remote" {
        failures.push(format!("J: call ended with {e} (want a remote user_hangup)"));
    }
    let code = pc.exit_code(WAIT)?;
    pc.drain();
    let ended = pc.events.iter().find(|e| e["event"] == "ended").cloned().unwrap_or_default();
    let recorded = pc.events.iter().find(|e| e["event"] == "recorded").cloned().unwrap_or_default();
    println!("      CLI exit code {code:?}; ended {ended}; recorded {recorded}");
    if code != Some(0) {
        failures.push(format!("matrix-call exited {code:?}, want 0"));
    }
    if ended["initiator"] != "local_user" || ended["connected"] != true {
        failures.push(format!("matrix-call: ended {ended} (want a connected call it hung up)"));
    }
    let out = Command::new(&helper)
        .args(["analyse-wav", "--target", &format!("{J_TONE}"), "--freqs"])
        .arg(TEST_FREQS.map(|f| f.to_string()).join(","))
        .arg("--in")
        .arg(&record)
        .output()
        .context("rust-peer analyse-wav")?;
    if !out.status.success() {
        bail!("analyse-wav {}: {}", record.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let r: Value = serde_json::from_slice(&out.stdout).context("analyse-wav output")?;
    let margin = r["margin_db"].as_f64().unwrap_or(f64::NEG_INFINITY);
    println!(
        "      the CLI's recording holds J's {J_TONE} Hz: {margin:.1} dB above the other test frequencies, level {:.1} dBFS, {} ms",
        r["level_dbfs"].as_f64().unwrap_or(-100.0),
        r["ms"]
    );
    if margin < MIN_MARGIN_DB {
        failures.push(format!("recording: J's {J_TONE} Hz only {margin:.1} dB above the rest: {r}"));
    }
    // The `recorded` event must tell the recording's real length (the file: analysed + skipped).
    let file_s = (r["ms"].as_f64().unwrap_or(0.0) + 500.0) / 1000.0;
    let said_s = recorded["seconds"].as_f64().unwrap_or(-1.0);
    if (said_s - file_s).abs() > 0.1 {
        failures.push(format!("matrix-call's `recorded` says {said_s} s, the WAV holds {file_s:.2} s"));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// A rotated key has a higher index than any seen before (-1: none seen).
fn after(had: i64) -> i64 {
    had + 1
}

fn members_are(e: &Value, want: &[(String, String)]) -> bool {
    let Some(m) = e["members"].as_array() else { return false };
    let mut got: Vec<(String, String)> = m
        .iter()
        .map(|x| {
            (x["user_id"].as_str().unwrap_or("").to_owned(), x["device_id"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    got == want
}

/// A remote key event from `uid`/`did` with index >= `min_index` (-1: any).
fn key_from(e: &Value, uid: &str, did: &str, min_index: i64) -> bool {
    ev(e, "rtc-key")
        && e["local"] == false
        && e["user_id"] == uid
        && e["device_id"] == did
        && e["index"].as_i64().unwrap_or(-1) >= min_index
}

/// The js peer's wire check: in trickle style its SDPs carry no candidates and it sent
/// m.call.candidates; in SDP style its offer/answer carried candidates.
fn check_candidate_style(p: &mut Peer, kind: &Kind) -> anyhow::Result<()> {
    let trickle = match kind {
        Kind::Js { trickle, .. } => *trickle,
        // Chromium decides by itself (its invites carry no candidates, its answers some).
        Kind::Browser | Kind::Rust => return Ok(()),
    };
    p.drain();
    let sdp_sends: Vec<&Value> = p
        .events
        .iter()
        .filter(|e| ev(e, "sent") && (e["type"] == "m.call.invite" || e["type"] == "m.call.answer"))
        .collect();
    if sdp_sends.is_empty() {
        bail!("{}: sent no invite or answer", p.name);
    }
    let in_sdp: u64 = sdp_sends.iter().filter_map(|e| e["sdp_candidates"].as_u64()).sum();
    if trickle {
        if in_sdp != 0 {
            bail!("{}: trickle style but {in_sdp} candidates in the SDP", p.name);
        }
        p.wait("m.call.candidates sent", |e| ev(e, "sent") && e["type"] == "m.call.candidates")?;
    } else if in_sdp == 0 {
        bail!("{}: SDP style but no candidates in the SDP", p.name);
    }
    Ok(())
}

fn ensure_eq(a: &str, b: &str, what: &str) -> anyhow::Result<()> {
    if a != b {
        bail!("{what} differ: {a:?} vs {b:?}");
    }
    Ok(())
}

/// Synapse inside the namespace, stopped on drop.
struct NsSynapse {
    rig: PathBuf,
    data: String,
    keep: bool,
}

impl Drop for NsSynapse {
    fn drop(&mut self) {
        let mut c = Command::new(&self.rig);
        c.args(["stop", "--data", &self.data]);
        if !self.keep {
            c.arg("--rm");
        }
        let _ = c.status();
    }
}

fn npm_ci(interop: &Path) -> anyhow::Result<()> {
    let node = Command::new("node").arg("--version").output();
    let major = node
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse::<u32>().ok()));
    match major {
        Some(m) if m >= 20 => {}
        Some(m) => bail!("Node {m} found; the interop peers need Node >= 20 (see docs/interop.md)"),
        None => bail!("`node` not found; install Node >= 20 with npm (see docs/interop.md)"),
    }
    println!("==> npm ci (interop/)");
    status(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(interop),
        "npm ci",
    )
}

/// Debian's chromium package for the browser scenarios (about 350 MB, 2 minutes, once).
fn ensure_chromium() -> anyhow::Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Path::new(&chromium).exists() {
        return Ok(());
    }
    println!("==> apt-get install chromium (browser scenarios; skip them with --no-chromium)");
    status(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install chromium",
    )
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    let filter = value("--scenario");
    let under = value("--under").unwrap_or_else(|| "rust".into());
    let under_kind = match under.as_str() {
        "rust" => Kind::Rust,
        "js" => Kind::Js { sdk: "43", trickle: false },
        other => bail!("--under rust|js (got {other})"),
    };
    let mut plan = Vec::new();
    for (name, run, variants) in scenarios() {
        for v in variants {
            let full = format!("{name}/{v}");
            if flag("--no-chromium") && *v == "chromium" {
                continue;
            }
            if filter.as_deref().is_none_or(|f| full.contains(f)) {
                plan.push((full, run, js_kind(v)));
            }
        }
    }
    if flag("--list") {
        for (name, _, _) in &plan {
            println!("{name}");
        }
        return Ok(true);
    }
    if plan.is_empty() {
        bail!("no scenario matches {filter:?} (see --list)");
    }
    let t0 = Instant::now();
    let root = crate::root();
    let interop = root.join("interop");
    if !flag("--no-install") {
        npm_ci(&interop)?;
        if plan.iter().any(|(_, _, k)| *k == Kind::Browser) {
            ensure_chromium()?;
        }
    }
    let target = target_dir();
    let rig = match value("--rig") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            cargo_build(&[
                "build",
                "-q",
                "-p",
                "voip-testkit",
                "--no-default-features",
                "--bin",
                "synapse-rig",
            ])?;
            target.join("debug/synapse-rig")
        }
    };
    let cli = plan.iter().any(|(name, _, _)| name.starts_with("cli-"));
    let rust_peer = if under_kind == Kind::Rust || cli {
        cargo_build(&["build", "-q", "-p", "rust-peer"])?;
        Some(target.join("debug/rust-peer"))
    } else {
        None
    };
    let matrix_call = if cli {
        cargo_build(&["build", "-q", "-p", "matrix-call"])?;
        Some(target.join("debug/matrix-call"))
    } else {
        None
    };
    println!("==> Synapse venv");
    status(Command::new(&rig).arg("install"), "synapse-rig install")?;

    let pid = std::process::id();
    let ns = Netns::create(&format!("voip-interop-{pid}"))?;
    let data = format!("/dev/shm/voip-interop-{pid}");
    println!("==> coturn in namespace {}", ns.0);
    let turn_secret = format!("interop-{pid}-{}", t0.elapsed().as_nanos());
    let coturn = NsCoturn::start(&ns.0, &rig, &turn_secret)?;
    println!("==> Synapse in namespace {} (TURN {})", ns.0, coturn.uri);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&rig)
        .args(["start", "--data", &data, "--turn", &coturn.uri, "--turn-secret", &turn_secret])
        .stderr(Stdio::inherit())
        .output()
        .context("synapse-rig start")?;
    let synapse = NsSynapse { rig: rig.clone(), data: data.clone(), keep: flag("--keep") };
    if !out.status.success() {
        bail!("synapse-rig start failed ({})", out.status);
    }
    let env_lines: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim().strip_prefix("export ")?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let hs =
        env_lines.get("SYNAPSE_URL").cloned().ok_or_else(|| anyhow!("synapse-rig printed no SYNAPSE_URL"))?;
    let env = Env {
        ns: ns.0.clone(),
        hs,
        interop,
        rust_peer,
        matrix_call,
        turn_uri: coturn.uri.clone(),
        turn_log: coturn.log.clone(),
        logs: target.join("interop"),
    };
    let setup_time = t0.elapsed();

    let (mut passed, mut failed) = (0, 0);
    for (name, run, jk) in &plan {
        let t = Instant::now();
        let label = format!("{name} [{} vs {}]", under_kind.label(), jk.label());
        match run(&env, name, &under_kind, jk) {
            Ok(()) => {
                passed += 1;
                println!("ok    {label} ({:.1} s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {label} ({:.1} s): {e:#}", t.elapsed().as_secs_f64());
                println!("      logs: {}", env.logs.join(name.replace('/', "_")).display());
            }
        }
    }
    drop(synapse);
    drop(coturn);
    drop(ns);
    println!(
        "interop: {passed} passed, {failed} failed (set-up {:.0} s, total {:.0} s)",
        setup_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(failed == 0)
}
