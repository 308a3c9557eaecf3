//! The `matrix-call` binary against a real Synapse (voip-testkit's rig; `SYNAPSE_URL` and
//! `SYNAPSE_REG_SECRET` from `cargo xtask test`, else one started for this test process): two
//! processes log in, call each other with WAV files on real webrtc-rs media, the recording holds
//! the caller's tones, a restart keeps the device and its keys, Ctrl-C during a call sends the
//! hangup, a rejected call ends unanswered, both join a mesh group call with media, and errors
//! end with their exit codes in one line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::InitialStateEvent;
use serde_json::Value;
use voip::webrtc::media::audio::{goertzel_power, read_wav, WavRecorder};
use voip_testkit::TestUser;

const BIN: &str = env!("CARGO_BIN_EXE_matrix-call");
/// What the caller says: two tones.
const TONES: [f64; 2] = [440.0, 1320.0];
/// Generous: Synapse and webrtc-rs are slow while cargo builds on both cores.
const STEP: Duration = Duration::from_secs(60);

fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("matrix-call-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `matrix-call --json --data-dir DIR ARGS...`.
fn cli(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--json").arg("--data-dir").arg(dir).args(args);
    c.env_remove("MATRIX_PASSWORD").env_remove("MATRIX_ACCESS_TOKEN").env_remove("MATRIX_CALL_DATA_DIR");
    c.stdin(Stdio::null());
    c
}

/// The JSON events a finished process printed.
fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn event<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == name)
}

fn run(mut command: Command) -> Result<Output> {
    let output = command.output().context("running matrix-call")?;
    eprintln!(
        "matrix-call exited {:?}\n  stdout: {}\n  stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// A running `matrix-call` whose JSON events are collected as they come.
struct Running {
    name: &'static str,
    child: Child,
    lines: Arc<(Mutex<Vec<Value>>, Condvar)>,
}

impl Running {
    fn spawn(name: &'static str, mut command: Command) -> Result<Running> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("spawn")?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines: Arc<(Mutex<Vec<Value>>, Condvar)> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                eprintln!("[{name}] {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.0.lock().unwrap().push(v);
                    sink.1.notify_all();
                }
            }
        });
        Ok(Running { name, child, lines })
    }

    /// Waits for the first event matching `pred`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(v) = lines.iter().find(|v| pred(v)) {
                return Ok(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("{}: no {what} within {timeout:?}; events: {:?}", self.name, *lines);
            }
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    fn wait_event(&self, name: &str, timeout: Duration) -> Result<Value> {
        self.wait_for(name, timeout, |v| v["event"] == name)
    }

    /// Waits for the process to exit; its exit code.
    fn exit_code(&mut self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().context("killed by a signal");
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn interrupt(&self) -> Result<()> {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status()?;
        ensure!(status.success(), "kill -INT failed");
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two users on the rig's Synapse and an encrypted DM room they have both joined (made with
/// throw-away devices that are logged out again).
async fn two_users_with_a_dm() -> Result<(TestUser, TestUser, String)> {
    let hs = voip_testkit::synapse();
    let alice = voip_testkit::register_user_on(hs, "alice").await?;
    let bob = voip_testkit::register_user_on(hs, "bob").await?;
    let a = voip_testkit::login(&alice, None).await?;
    let b = voip_testkit::login(&bob, None).await?;
    let mut req = Request::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.is_direct = true;
    req.invite = vec![b.user_id().context("bob")?.to_owned()];
    req.initial_state =
        vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    // Both may send group-call memberships (for `join`).
    req.power_level_content_override = Some(
        matrix_sdk::ruma::serde::Raw::new(&serde_json::json!({
            "events": { "org.matrix.msc3401.call.member": 0, "com.famedly.call.member": 0 }
        }))?
        .cast_unchecked(),
    );
    let room = a.create_room(req).await.context("create the DM")?;
    b.join_room_by_id(room.room_id()).await.context("bob joins")?;
    a.matrix_auth().logout().await.context("logout")?;
    b.matrix_auth().logout().await.context("logout")?;
    Ok((alice, bob, room.room_id().to_string()))
}

fn login(dir: &Path, user: &TestUser) -> Result<Value> {
    let mut c = cli(dir, &["login", &user.homeserver, &user.user_id]);
    c.env("MATRIX_PASSWORD", &user.password);
    let out = run(c)?;
    ensure!(out.status.code() == Some(0), "login failed");
    event(&events(&out), "logged_in").cloned().context("no logged_in event")
}

fn whoami(dir: &Path) -> Result<Value> {
    let out = run(cli(dir, &["whoami"]))?;
    ensure!(out.status.code() == Some(0), "whoami failed");
    event(&events(&out), "whoami").cloned().context("no whoami event")
}

/// 6 s of the two tones, 48 kHz mono.
fn write_tones(path: &Path) -> Result<()> {
    let mut w = WavRecorder::create(path, 1)?;
    let samples: Vec<i16> = (0..6 * 48_000)
        .map(|i| {
            let t = f64::from(i) / 48_000.0;
            let v: f64 = TONES.iter().map(|f| (2.0 * std::f64::consts::PI * f * t).sin()).sum();
            (6000.0 * v) as i16
        })
        .collect();
    w.write_samples(&samples)?;
    w.finish()?;
    Ok(())
}

/// dB by which the weaker of `tones` stands above the strongest of some other frequencies.
fn tone_margin(pcm: &[f32], tones: &[f64]) -> f64 {
    let on = tones.iter().map(|&f| goertzel_power(pcm, 48_000, f)).fold(f64::MAX, f64::min);
    let off =
        [300.0, 1000.0, 1700.0, 2500.0].iter().map(|&f| goertzel_power(pcm, 48_000, f)).fold(0.0, f64::max);
    10.0 * (on / off.max(1e-20)).log10()
}

#[test]
fn two_processes_call_reject_hang_up_on_ctrl_c_and_join_a_mesh_call() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (alice, bob, room) = rt.block_on(two_users_with_a_dm())?;
    let dir = scratch("call");
    let (a_dir, b_dir) = (dir.join("alice"), dir.join("bob"));
    let tone = dir.join("tone.wav");
    write_tones(&tone)?;

    // Log in (bob first: his device keys are on the server before alice's first message).
    let b_login = login(&b_dir, &bob)?;
    let a_login = login(&a_dir, &alice)?;
    let a_device = a_login["device_id"].as_str().context("device id")?.to_owned();
    let a_key = a_login["ed25519"].as_str().context("ed25519")?.to_owned();
    assert!(!a_device.is_empty() && !a_key.is_empty());
    assert_ne!(b_login["device_id"], a_login["device_id"]);

    // 1. Bob's answering machine records; alice plays the tones and hangs up after 4 s.
    let rec = dir.join("out.wav");
    let b = Running::spawn(
        "bob",
        cli(&b_dir, &["answer", "--auto", "--loopback", "--record", rec.to_str().context("path")?]),
    )?;
    b.wait_event("waiting", STEP)?;
    let started = Instant::now();
    let a = run(cli(
        &a_dir,
        &[
            "call",
            &bob.user_id,
            "--loopback",
            "--play",
            tone.to_str().context("path")?,
            "--hangup-after",
            "4",
        ],
    ))?;
    assert_eq!(a.status.code(), Some(0), "the caller's exit code");
    let a_events = events(&a);
    let connected = a_events.iter().find(|e| e["event"] == "state" && e["state"] == "connected");
    assert!(connected.is_some(), "the caller connected: {a_events:?}");
    let ended = event(&a_events, "ended").context("the caller's ended event")?;
    assert_eq!(ended["reason"], "user_hangup");
    assert_eq!(ended["initiator"], "local_user");
    assert!(ended["duration_s"].as_f64().unwrap_or(0.0) >= 3.5, "held about 4 s: {ended}");
    assert!(a_events.iter().any(|e| e["event"] == "stats"), "status events while the call ran");
    eprintln!("call placed, held 4 s and ended in {:?}", started.elapsed());

    let b_ended = b.wait_event("ended", STEP)?;
    assert_eq!(b_ended["reason"], "user_hangup");
    assert_eq!(b_ended["initiator"], "remote");
    let recorded = b.wait_event("recorded", STEP)?;
    assert_eq!(recorded["path"], rec.to_str().context("path")?);
    // The answering machine keeps waiting for calls; Ctrl-C stops it.
    let mut b = b;
    b.interrupt()?;
    assert_eq!(b.exit_code(STEP)?, 130, "answer --auto stopped by Ctrl-C");

    let (pcm, rate, channels) = read_wav(&rec)?;
    assert_eq!((rate, channels), (48_000, 1));
    let seconds = pcm.len() as f64 / 48_000.0;
    assert!(seconds >= 2.5, "recorded {seconds:.1} s");
    // Skip the first half second (jitter buffer filling).
    let margin = tone_margin(&pcm[24_000..], &TONES);
    eprintln!("recording: {seconds:.1} s, tones {margin:.1} dB above other frequencies");
    assert!(margin > 20.0, "the recording holds the caller's tones ({margin:.1} dB)");

    // 2. A restart keeps the device and its E2EE identity (the SQLite store).
    let again = whoami(&a_dir)?;
    assert_eq!(again["device_id"], a_device.as_str());
    assert_eq!(again["ed25519"], a_key.as_str());
    assert_eq!(again["user_id"], alice.user_id.as_str());

    // 3. Ctrl-C during a call: the caller hangs up before exiting; bob sees a hangup.
    let b = Running::spawn("bob", cli(&b_dir, &["answer", "--loopback"]))?;
    b.wait_event("waiting", STEP)?;
    let mut a = Running::spawn(
        "alice",
        cli(&a_dir, &["call", &bob.user_id, "--loopback", "--play", tone.to_str().context("path")?]),
    )?;
    a.wait_for("connected", STEP, |e| e["event"] == "state" && e["state"] == "connected")?;
    a.interrupt()?;
    assert_eq!(a.exit_code(STEP)?, 130, "the interrupted caller's exit code");
    let a_ended = a.wait_event("ended", Duration::from_secs(1))?;
    assert_eq!(a_ended["initiator"], "local_user");
    let b_ended = b.wait_event("ended", STEP)?;
    assert_eq!(b_ended["reason"], "user_hangup", "bob sees alice's hangup: {b_ended}");
    assert_eq!(b_ended["initiator"], "remote");
    let mut b = b;
    assert_eq!(b.exit_code(STEP)?, 0, "answer ends with the call");

    // 4. Bob rejects: alice's call ends unanswered (exit code 5).
    let mut b = Running::spawn("bob", cli(&b_dir, &["reject", "--loopback", "--timeout", "60"]))?;
    b.wait_event("waiting", STEP)?;
    let a = run(cli(&a_dir, &["call", &bob.user_id, "--loopback"]))?;
    assert_eq!(a.status.code(), Some(5), "a rejected call");
    let a_events = events(&a);
    let ended = event(&a_events, "ended").context("ended")?;
    assert_eq!(ended["reason"], "rejected");
    assert_eq!(ended["connected"], false);
    assert_eq!(b.exit_code(STEP)?, 0);
    b.wait_event("rejected", Duration::from_secs(1))?;

    // 5. Both join the room's group call (mesh): they call each other, media flows both ways,
    // both leave after a while.
    let tone_path = tone.to_str().context("path")?;
    let join = |dir: &Path| {
        cli(
            dir,
            &["join", &room, "--mesh", "--loopback", "--play", tone_path, "--loop", "--leave-after", "15"],
        )
    };
    let mut a = Running::spawn("alice", join(&a_dir))?;
    let mut b = Running::spawn("bob", join(&b_dir))?;
    let media = |e: &Value| {
        e["event"] == "stats" && e["state"] == "1/1 peers" && e["recv_kbps"].as_f64().unwrap_or(0.0) > 5.0
    };
    a.wait_for("media from bob", STEP, media)?;
    b.wait_for("media from alice", STEP, media)?;
    assert_eq!(a.exit_code(STEP)?, 0);
    assert_eq!(b.exit_code(STEP)?, 0);
    for p in [&a, &b] {
        p.wait_event("left", Duration::from_secs(1))?;
        let peers = p.wait_event("participants", Duration::from_secs(1))?;
        assert_eq!(peers["participants"].as_array().map(Vec::len), Some(1), "the other member: {peers}");
    }

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One line on stderr, starting `matrix-call: `.
fn one_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    assert!(lines[0].starts_with("matrix-call: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn errors_have_one_line_and_their_exit_code() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let hs = voip_testkit::synapse();
    let carol = rt.block_on(voip_testkit::register_user_on(hs, "carol"))?;
    let dave = rt.block_on(voip_testkit::register_user_on(hs, "dave"))?;
    let dir = scratch("errors");

    // Not logged in.
    let out = run(cli(&dir, &["call", &dave.user_id]))?;
    assert_eq!(out.status.code(), Some(3));
    assert!(one_error_line(&out).contains("not logged in"));

    // Wrong password.
    let mut c = cli(&dir, &["login", &carol.homeserver, &carol.user_id]);
    c.env("MATRIX_PASSWORD", "not-the-password");
    let out = run(c)?;
    assert_eq!(out.status.code(), Some(3));
    assert!(one_error_line(&out).contains("wrong user name or password"));
    let json = events(&out);
    let error = event(&json, "error").context("error event")?;
    assert_eq!(error["kind"], "auth");
    assert_eq!(error["exit_code"], 3);

    // No homeserver there.
    let mut c = cli(&dir, &["login", "http://127.0.0.1:9", &carol.user_id]);
    c.env("MATRIX_PASSWORD", &carol.password);
    let out = run(c)?;
    assert_eq!(out.status.code(), Some(7));
    one_error_line(&out);

    // Logged in: an unknown user, and a user without a DM room.
    login(&dir, &carol)?;
    let out = run(cli(&dir, &["call", "@nobody-here:localhost"]))?;
    assert_eq!(out.status.code(), Some(4));
    assert!(one_error_line(&out).contains("unknown user @nobody-here:localhost"));
    let out = run(cli(&dir, &["call", &dave.user_id]))?;
    assert_eq!(out.status.code(), Some(4));
    assert!(one_error_line(&out).contains(&format!("no DM room with {}", dave.user_id)));
    // No call comes in.
    let out = run(cli(&dir, &["answer", "--timeout", "1"]))?;
    assert_eq!(out.status.code(), Some(5));
    one_error_line(&out);

    // Log out: the device is gone, the next command is not logged in.
    let out = run(cli(&dir, &["logout"]))?;
    assert_eq!(out.status.code(), Some(0));
    assert!(!dir.join("session.json").exists());
    let out = run(cli(&dir, &["whoami"]))?;
    assert_eq!(out.status.code(), Some(3));

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// With the `devices` feature: a call on the microphone and the speaker. Both processes run with
/// an ALSA configuration (a temporary `$XDG_CONFIG_HOME`) whose default PCM is ALSA's `null`, so
/// no sound card is needed: bob answers playing the tones and listening on his speaker, alice
/// talks into her microphone (null capture: silence) and listens on her speaker.
#[cfg(feature = "devices")]
#[test]
fn a_call_on_the_microphone_and_the_speaker() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (alice, bob, _room) = rt.block_on(two_users_with_a_dm())?;
    let dir = scratch("devices");
    let (a_dir, b_dir) = (dir.join("alice"), dir.join("bob"));
    std::fs::create_dir_all(dir.join("alsa"))?;
    std::fs::write(dir.join("alsa/asoundrc"), "pcm.!default { type null }\n")?;
    let tone = dir.join("tone.wav");
    write_tones(&tone)?;
    login(&b_dir, &bob)?;
    login(&a_dir, &alice)?;
    let with_null = |mut c: Command| {
        c.env("XDG_CONFIG_HOME", &dir);
        c
    };

    // Named by the device's name (`default`, the null PCM here) and by default.
    let tone_path = tone.to_str().context("path")?;
    let b = Running::spawn(
        "bob",
        with_null(cli(&b_dir, &["answer", "--loopback", "--play", tone_path, "--speaker=default"])),
    )?;
    b.wait_event("waiting", STEP)?;
    let a = run(with_null(cli(
        &a_dir,
        &["call", &bob.user_id, "--loopback", "--mic", "--speaker", "--hangup-after", "4"],
    )))?;
    assert_eq!(a.status.code(), Some(0), "the caller's exit code");
    let a_events = events(&a);
    let device = |what: &str| {
        a_events.iter().find(|e| e["event"] == "device" && e["device"] == what).cloned().unwrap_or_default()
    };
    assert_eq!(device("microphone")["name"], "default", "{a_events:?}");
    assert_eq!(device("speaker")["name"], "default", "{a_events:?}");
    let stats = |what: &str| {
        a_events
            .iter()
            .find(|e| e["event"] == "device_stats" && e["device"] == what)
            .cloned()
            .unwrap_or_default()
    };
    let (speaker, mic) = (stats("speaker"), stats("microphone"));
    eprintln!("alice's speaker: {speaker}\nalice's microphone: {mic}");
    // Held 4 s: the jitter buffer fills in the first half second or so.
    let played = speaker["delivered_s"].as_f64().unwrap_or(0.0);
    assert!(played >= 2.5, "the speaker played {played} s of bob");
    let sent = mic["delivered_s"].as_f64().unwrap_or(0.0);
    assert!(sent >= 2.5, "the microphone gave the call {sent} s");
    // Alice heard bob's tones: the status line's audio level of the other side.
    let loudest = a_events
        .iter()
        .filter(|e| e["event"] == "stats")
        .filter_map(|e| e["audio_level_dbfs"].as_f64())
        .fold(-200.0, f64::max);
    assert!(loudest > -30.0, "alice heard bob at {loudest} dBFS");
    let mut b = b;
    b.wait_event("ended", STEP)?;
    let b_speaker =
        b.wait_for("speaker stats", STEP, |e| e["event"] == "device_stats" && e["device"] == "speaker")?;
    assert!(b_speaker["delivered_s"].as_f64().unwrap_or(0.0) >= 2.5, "bob's speaker: {b_speaker}");
    assert_eq!(b.exit_code(STEP)?, 0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
