//! A real TURN server for tests: coturn (`turnserver`, Debian package `coturn`) on loopback
//! with Synapse's TURN REST secret (`use-auth-secret`), so the credentials a homeserver hands out
//! at `/voip/turnServer` work on it (synchronous, std only).
//!
//! `turnserver` is installed with `apt-get install -y coturn` when missing and running as root
//! (the way the rig installs `python3-venv`); otherwise [`Coturn::start`] fails with the command
//! to run.

use std::fs;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `turnserver` on `127.0.0.1`, stopped (and its data removed) when dropped.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// `turnserver`'s path, installing coturn first if needed (as root).
pub fn ensure_installed() -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        ["/usr/bin/turnserver", "/usr/local/bin/turnserver"].iter().map(PathBuf::from).find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if !super::rig::is_root_user() {
        bail!("coturn is not installed: run `apt-get install -y coturn` as root");
    }
    eprintln!("voip-testkit: installing coturn (apt-get install -y coturn)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "coturn"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let update =
        || Command::new("apt-get").arg("update").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !(install() || (update() && install())) {
        bail!("apt-get install -y coturn failed");
    }
    find().context("coturn installed but no turnserver binary")
}

impl Coturn {
    /// Starts `turnserver` on a free UDP port of 127.0.0.1 with `secret` as its
    /// `static-auth-secret` (Synapse's `turn_shared_secret`), relaying between loopback peers,
    /// and waits until it answers a STUN binding request.
    pub fn start(secret: &str) -> Result<Coturn> {
        let bin = ensure_installed()?;
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("voip-testkit-coturn-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let log = dir.join("turnserver.log");
        let child = Command::new(bin)
            .args([
                "-n", // no config file
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--min-port=49152",
                "--max-port=65535",
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=localhost",
                "--fingerprint",
                "--no-tls",
                "--no-dtls",
                "--no-tcp-relay",
                "--no-cli",
                "--allow-loopback-peers",
                "--no-software-attribute",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
                &format!("--log-file={}", log.display()),
                "--simple-log",
                "--verbose", // one line per ALLOCATE / CreatePermission / ChannelBind: tests read them
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn turnserver")?;
        let mut c = Coturn { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stun_binding_answered(port) {
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!("turnserver exited ({status}); log:\n{}", fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("turnserver did not answer STUN within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// The UDP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `turn:` URI for Synapse's `turn_uris`.
    pub fn uri(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// Where the server writes its log (the file behind [`Coturn::log`]).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("turnserver.log")
    }

    /// The server's log (allocations, permissions, errors).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether a STUN binding request to 127.0.0.1:`port` gets a binding success response.
fn stun_binding_answered(port: u16) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else { return false };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(b"voiptestkit!");
    if sock.send_to(&req, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == req[8..20])
}
