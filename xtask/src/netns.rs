//! A network namespace for the tasks that run libwebrtc peers (`interop`, `bench`), and the
//! command-status helper they share.
//!
//! Inside: `lo` up plus a veth pair that stays inside the namespace, so that libwebrtc has a
//! non-loopback interface (Chromium gathers nothing with `lo` alone; wrtc ignores `lo` next to
//! a real interface; wrtc and webrtc-rs then use 127.0.0.2 and `lo`). Needs root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `cmd`, failing with `what` unless it exits successfully.
pub(crate) fn status(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// The namespace, deleted on drop.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    /// Creates namespace `name` (replacing a stale one of that name).
    pub(crate) fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        status(Command::new("ip").args(["netns", "add", name]), "ip netns add (needs root)")?;
        let ns = Netns(name.to_owned());
        let ip = |args: &[&str]| status(Command::new("ip").args(["-n", name]).args(args), "ip");
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "vn0", "type", "veth", "peer", "name", "vn1"])?;
        ip(&["addr", "add", "127.0.0.2/32", "dev", "vn0"])?;
        ip(&["link", "set", "vn0", "up"])?;
        ip(&["link", "set", "vn1", "up"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace, from the workspace root.
    pub(crate) fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program).current_dir(crate::root());
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// coturn inside the namespace (`synapse-rig coturn`), stopped on drop by closing its stdin.
pub(crate) struct NsCoturn {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `turn:127.0.0.1:PORT?transport=udp`.
    pub(crate) uri: String,
    /// turnserver's log (allocations, permissions), when synapse-rig printed it.
    pub(crate) log: Option<PathBuf>,
}

impl NsCoturn {
    pub(crate) fn start(ns: &str, rig: &Path, secret: &str) -> anyhow::Result<NsCoturn> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(rig)
            .args(["coturn", "--secret", secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("synapse-rig coturn")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("coturn stdout")?;
        let mut c = NsCoturn { child, stdin, uri: String::new(), log: None };
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(v) = line.strip_prefix("export TURN_LOG=") {
                c.log = Some(PathBuf::from(v));
            }
            if let Some(v) = line.strip_prefix("export TURN_URI=") {
                c.uri = v.to_owned();
                return Ok(c);
            }
        }
        bail!("synapse-rig coturn exited before printing TURN_URI")
    }
}

impl Drop for NsCoturn {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
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
