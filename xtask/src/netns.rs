//! A network namespace for the tasks that run libwebrtc peers (`interop`, `bench`), and the
//! command-status helper they share.
//!
//! Inside: `lo` up plus a veth pair that stays inside the namespace, so that libwebrtc has a
//! non-loopback interface (Chromium gathers nothing with `lo` alone; wrtc ignores `lo` next to
//! a real interface; wrtc and webrtc-rs then use 127.0.0.2 and `lo`). Needs root.

use std::process::{Command, Stdio};

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
