//! `cargo xtask test`: what CI runs, in order, stopping at the first failure:
//! format check, clippy with `-D warnings`, one shared real Synapse on loopback (installed into a
//! cached virtualenv on first use by `voip-testkit`'s rig), every test of the workspace against
//! it (`matrix-call`'s among them: two `matrix-call` processes log in and call each other, ~15 s),
//! the doc tests, the demo against that Synapse, the conformance fixtures, the demo on the
//! in-process homeserver (both on real webrtc-rs media, decoded with libopus and libvpx), a
//! fault simulation (300 seeds per scenario, release) and `cargo package` of the publishable
//! crates. Synapse is stopped however the run ends.
//!
//! `--no-lint` skips format and clippy (for a quick local run).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context};

fn cargo_cmd(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(args).current_dir(crate::root());
    c
}

pub(crate) fn cargo(args: &[&str], env: &BTreeMap<String, String>) -> anyhow::Result<()> {
    println!("\n==> cargo {}", args.join(" "));
    let status = cargo_cmd(args).envs(env).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `synapse-rig` of voip-testkit, built without its matrix-sdk client helpers (they are not
/// needed to start or stop Synapse, and building them with other features than the tests use
/// would compile matrix-sdk twice).
fn rig(args: &[&str]) -> Command {
    let mut all =
        vec!["run", "-q", "-p", "voip-testkit", "--no-default-features", "--bin", "synapse-rig", "--"];
    all.extend_from_slice(args);
    cargo_cmd(&all)
}

/// A running shared Synapse, stopped on drop.
struct Synapse {
    data: String,
    env: BTreeMap<String, String>,
}

impl Synapse {
    fn start() -> anyhow::Result<Synapse> {
        let data = format!(
            "{}/matrix-voip-rs-ci-{}",
            if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm".to_owned()
            } else {
                std::env::temp_dir().display().to_string()
            },
            std::process::id()
        );
        println!("\n==> starting Synapse (data {data})");
        let out = rig(&["start", "--data", &data])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running synapse-rig")?;
        if !out.status.success() {
            bail!("synapse-rig start failed ({})", out.status);
        }
        let mut env = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.trim().strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.insert(k.to_owned(), v.trim_matches(|c| c == '"' || c == '\'').to_owned());
            }
        }
        if !env.contains_key("SYNAPSE_URL") {
            bail!("synapse-rig printed no SYNAPSE_URL");
        }
        println!("    Synapse at {}", env["SYNAPSE_URL"]);
        Ok(Synapse { data, env })
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        println!("\n==> stopping Synapse");
        let _ = rig(&["stop", "--data", &self.data, "--rm"]).status();
    }
}

/// The features every step builds with: the workspace's defaults plus decoded audio
/// (`voip/codecs`: libopus built from source by `opusic-sys`) and matrix-sdk-ui's `SyncService`
/// (`voip/sync-service`, for the `sync_modes` tests), so one build serves all steps.
/// `voip/devices` and `matrix-call/devices`: microphones and speakers through cpal (ALSA), whose
/// test (voip-webrtc's `devices`) runs a call on ALSA's `null` PCM.
const FEATURES: &str = "voip/codecs,voip/sync-service,voip/devices,matrix-call/devices";

/// `apt-get update` then `apt-get install -y PACKAGES` (Debian/Ubuntu), as root or through
/// password-less sudo; whether both succeeded.
fn apt_install(packages: &[&str]) -> anyhow::Result<bool> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| -> anyhow::Result<bool> {
        let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            c.args(["-n", "apt-get"]);
        }
        Ok(c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success())
    };
    Ok(apt(&["update", "-q"])? && apt(&[&["install", "-y", "-q"][..], packages].concat())?)
}

/// libopus is built with cmake: install it with apt-get (Debian/Ubuntu, as root or with
/// password-less sudo) when it is missing, so a fresh machine needs nothing else.
pub(crate) fn ensure_cmake() -> anyhow::Result<()> {
    let found = |cmd: &str| Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    if found("cmake") {
        return Ok(());
    }
    println!("\n==> cmake is missing (libopus is built with it): installing it with apt-get");
    if !(apt_install(&["cmake"])? && found("cmake")) {
        bail!("cmake is needed to build libopus (feature codecs): install it (e.g. apt-get install cmake)");
    }
    Ok(())
}

/// VP8 (feature codecs) links the system libvpx found through pkg-config: install
/// `libvpx-dev` (and `pkg-config`) with apt-get when `pkg-config --exists vpx` fails, so a fresh
/// machine needs nothing else.
pub(crate) fn ensure_libvpx() -> anyhow::Result<()> {
    let found = || Command::new("pkg-config").args(["--exists", "vpx"]).status().is_ok_and(|s| s.success());
    if found() {
        return Ok(());
    }
    println!("\n==> libvpx-dev is missing (VP8 for decoded video): installing it with apt-get");
    if !(apt_install(&["libvpx-dev", "pkg-config"])? && found()) {
        bail!("libvpx is needed for VP8 (feature codecs): install it (e.g. apt-get install libvpx-dev pkg-config)");
    }
    Ok(())
}

/// The audio devices (feature `devices`) build on cpal's ALSA host, which needs the ALSA headers
/// (`alsa.pc`): install `libasound2-dev` with apt-get when pkg-config does not find them.
fn ensure_alsa() -> anyhow::Result<()> {
    let found = || Command::new("pkg-config").args(["--exists", "alsa"]).status().is_ok_and(|s| s.success());
    if found() {
        return Ok(());
    }
    println!("\n==> the ALSA headers are missing (feature devices): installing libasound2-dev with apt-get");
    if !(apt_install(&["libasound2-dev", "pkg-config"])? && found()) {
        bail!("the ALSA headers are needed for the audio devices (feature devices): apt-get install libasound2-dev");
    }
    Ok(())
}

/// The softphone example's self-test with its microphone and speaker on ALSA's `null` PCM (an
/// ALSA configuration in a temporary `$XDG_CONFIG_HOME` makes it the default device), then with
/// the peer recorded to a WAV file instead of the speaker.
fn run_softphone() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("voip-softphone-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("alsa"))?;
    std::fs::write(dir.join("alsa/asoundrc"), "pcm.!default { type null }\n")?;
    let env = BTreeMap::from([("XDG_CONFIG_HOME".to_owned(), dir.display().to_string())]);
    let run =
        ["run", "-q", "-p", "voip", "--features", "devices", "--example", "softphone", "--", "--self-test"];
    let recording = dir.join("heard.wav").display().to_string();
    let result = cargo(&run, &env).and_then(|()| {
        let mut args = run.to_vec();
        args.extend(["--record", &recording]);
        cargo(&args, &env)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Every example of the `voip` crate that `run` does not run otherwise (`demo` and
/// `answering_machine` are run below): each ends by itself and fails on a wrong result.
fn run_examples(url: &str, secret: &str) -> anyhow::Result<()> {
    let none = BTreeMap::new();
    println!("\n==> examples");
    for example in ["one_to_one", "echo_bot", "mesh_group_call", "livekit_keys"] {
        cargo(&["run", "-q", "-p", "voip", "--example", example], &none)?;
    }
    // The set-up benchmark as a smoke test: two calls through the real homeserver.
    let bench = ["--homeserver", url, "--registration-secret", secret, "--calls", "2", "--groups"];
    let mut args = vec!["run", "-q", "-p", "voip", "--example", "setup_bench", "--"];
    args.extend(bench);
    cargo(&args, &none)
}

/// voip-core draws no OS randomness: getrandom is not in its dependency tree (its clippy.toml
/// forbids clocks, threads, files and hashed collections).
fn core_is_pure() -> anyhow::Result<()> {
    let out = cargo_cmd(&["tree", "-p", "voip-core", "-e", "normal,build", "-i", "getrandom", "--quiet"])
        .output()?;
    let tree = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(!tree.contains("getrandom"), "voip-core must not depend on getrandom:\n{tree}");
    println!("==> voip-core: no getrandom in its dependency tree");
    Ok(())
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let quick = args.iter().any(|a| a == "--no-lint");
    let none = BTreeMap::new();
    ensure_cmake()?;
    ensure_libvpx()?;
    ensure_alsa()?;
    if !quick {
        cargo(&["fmt", "--all", "--", "--check"], &none)?;
        cargo(
            &["clippy", "--workspace", "--all-targets", "--features", FEATURES, "--", "-D", "warnings"],
            &none,
        )?;
        // The signalling-only build (an app with its own media stack) compiles too.
        cargo(&["check", "-q", "-p", "voip", "--no-default-features", "--features", "matrix"], &none)?;
    }
    core_is_pure()?;
    // Build everything first, so Synapse does not idle while the tests compile.
    cargo(&["test", "--workspace", "--all-targets", "--features", FEATURES, "--no-run"], &none)?;
    let synapse = Synapse::start()?;
    cargo(&["test", "--workspace", "--all-targets", "--features", FEATURES], &synapse.env)?;
    cargo(&["test", "--workspace", "--doc", "--features", FEATURES], &synapse.env)?;
    // The demo against the real homeserver too (it registers its own users).
    let (url, secret) = (synapse.env["SYNAPSE_URL"].clone(), synapse.env["SYNAPSE_REG_SECRET"].clone());
    // With decoded media (`codecs`, through `devices`: the answering machine's and softphone's
    // build below, so the demo adds no build of its own).
    let homeserver_demo = [
        "run",
        "-q",
        "-p",
        "voip",
        "--features",
        "devices",
        "--example",
        "demo",
        "--",
        "--homeserver",
        &url,
        "--registration-secret",
        &secret,
    ];
    cargo(&homeserver_demo, &none)?;
    run_examples(&url, &secret)?;
    // LiveKit mode into the LiveKit SDK's shapes, with voip-testkit's JWT service on this Synapse.
    cargo(&["run", "-q", "-p", "voip", "--features", "livekit", "--example", "livekit_sdk"], &synapse.env)?;
    drop(synapse);
    println!("\n==> conformance fixtures");
    let fixtures_ok = crate::conformance::run(&[])?;
    cargo(&["run", "-q", "-p", "voip", "--features", "devices", "--example", "demo"], &none)?;
    // Decoded audio through a call on the in-process homeserver: greeting and recording.
    // (With `devices`, which it does not use, so that the softphone below shares its build.)
    cargo(&["run", "-q", "-p", "voip", "--features", "devices", "--example", "answering_machine"], &none)?;
    // The softphone on the audio devices (ALSA's null PCM) and on a WAV file.
    run_softphone()?;
    // The fault scenarios (docs/simulation.md): 300 seeds of each, in release (≈ 20 s of
    // simulation after a ≈ 1 min build).
    cargo(&["run", "-q", "--release", "-p", "voip-sim", "--bin", "sim", "--", "--seeds", "300"], &none)?;
    // The publishable crates as crates.io would get them (`cargo xtask package`, docs/testing.md).
    crate::package::run(&[])?;
    Ok(fixtures_ok)
}
