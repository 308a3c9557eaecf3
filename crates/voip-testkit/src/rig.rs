//! Installing, starting and stopping a real Synapse (synchronous, std only).
//!
//! Layout:
//! * virtualenv: `$VOIP_TESTKIT_SYNAPSE_VENV`, else `$XDG_CACHE_HOME/matrix-voip-rs/synapse-<version>/venv`
//!   (`~/.cache/...` without `XDG_CACHE_HOME`); a `.installed-ok` marker is written after a
//!   complete install, and an install without it is redone. Installs are serialised by a lock
//!   file next to the venv, so parallel test processes install once.
//! * data dir (per instance): `homeserver.yaml`, `log.config`, `homeserver.db`, `homeserver.log`,
//!   `stdout.log`, `synapse.pid`, `synapse.env`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The pinned Synapse version.
pub const SYNAPSE_VERSION: &str = "1.163.2";

const CONSTRAINTS: &str = include_str!("../synapse/constraints.txt");
const CONFIG_TEMPLATE: &str = include_str!("../synapse/homeserver.yaml.in");
const LOG_CONFIG: &str = r#"version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "@DATA@/homeserver.log"
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"#;

/// Watchdog used when the instance belongs to one process: starts Synapse, then stops it
/// (SIGTERM, SIGKILL after 10 s) as soon as the owning process is gone, and removes the data dir
/// when `$3` is `rm` and the owner is gone (an owner that stopped Synapse itself, e.g. to restart
/// it on the same data, keeps the data; [`Instance`] deletes it when dropped).
const WATCHDOG: &str = r#"
owner=$1; data=$2; rm=$3; shift 3
"$@" >"$data/stdout.log" 2>&1 </dev/null &
child=$!
echo "$child" >"$data/synapse.pid"
while kill -0 "$owner" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
kill -TERM "$child" 2>/dev/null
i=0
while kill -0 "$child" 2>/dev/null && [ "$i" -lt 20 ]; do sleep 0.5; i=$((i+1)); done
kill -KILL "$child" 2>/dev/null
wait "$child" 2>/dev/null
if [ "$rm" = rm ] && ! kill -0 "$owner" 2>/dev/null; then rm -rf "$data"; fi
"#;

/// Where the cached virtualenv lives.
pub fn venv_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("VOIP_TESTKIT_SYNAPSE_VENV") {
        return PathBuf::from(v);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("matrix-voip-rs").join(format!("synapse-{SYNAPSE_VERSION}")).join("venv")
}

/// A default fresh data directory: under `/dev/shm` when it is a writable directory (SQLite
/// fsyncs are ~2× cheaper on tmpfs), else the system temp dir.
pub fn default_data_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() && fs::create_dir_all(shm.join("matrix-voip-rs")).is_ok() {
        shm.join("matrix-voip-rs")
    } else {
        std::env::temp_dir().join("matrix-voip-rs")
    };
    base.join(format!("synapse-{}-{}", std::process::id(), random_hex(4)))
}

/// Random hex string of `bytes` bytes from `/dev/urandom`.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn python_bin(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Makes sure the pinned Synapse is installed in the cached virtualenv; returns the venv's
/// Python. Creates the venv with `python3 -m venv` (`$SYNAPSE_PYTHON` overrides `python3`).
pub fn ensure_installed() -> Result<PathBuf> {
    let venv = venv_dir();
    let marker = venv.join(".installed-ok");
    if marker.exists() {
        return Ok(python_bin(&venv));
    }
    let parent = venv.parent().context("venv dir has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(parent.join("install.lock"))
        .context("open install lock")?;
    lock.lock().context("lock install lock")?;
    if marker.exists() {
        return Ok(python_bin(&venv));
    }
    let started = Instant::now();
    eprintln!(
        "voip-testkit: installing matrix-synapse=={SYNAPSE_VERSION} into {} (once; ~40-60 s)",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv).context("remove incomplete venv")?;
    }
    let python = std::env::var("SYNAPSE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if let Err(e) = check_python(&python) {
        // No usable python3 at all: on Debian, python3-venv brings python3 along.
        if !is_root() || !apt_install_venv() {
            return Err(e);
        }
        check_python(&python)?;
    }
    if let Err(e) = create_venv(&python, &venv) {
        eprintln!("voip-testkit: {e:#}");
        eprintln!("voip-testkit: the venv module or ensurepip is missing; install it with: apt-get install -y python3-venv");
        if !is_root() {
            bail!("cannot create a virtualenv (run `apt-get install -y python3-venv` as root)");
        }
        let _ = fs::remove_dir_all(&venv);
        if !apt_install_venv() {
            bail!("apt-get install -y python3-venv failed");
        }
        create_venv(&python, &venv)?;
    }
    let constraints = parent.join("constraints.txt");
    fs::write(&constraints, CONSTRAINTS).context("write constraints.txt")?;
    let log_path = parent.join("pip-install.log");
    let log = File::create(&log_path).context("create pip log")?;
    let status = Command::new(python_bin(&venv))
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-c"])
        .arg(&constraints)
        .arg(format!("matrix-synapse=={SYNAPSE_VERSION}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("run pip")?;
    if !status.success() {
        bail!(
            "pip install matrix-synapse failed ({status}); log: {}\n{}",
            log_path.display(),
            tail(&log_path, 30)
        );
    }
    fs::write(&marker, SYNAPSE_VERSION).context("write install marker")?;
    eprintln!("voip-testkit: Synapse installed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(python_bin(&venv))
}

fn check_python(python: &str) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.version_info >= (3, 10))"])
        .output()
        .with_context(|| format!("run {python} (set SYNAPSE_PYTHON or install python3)"))?;
    if String::from_utf8_lossy(&out.stdout).trim() != "True" {
        bail!("{python} is older than 3.10 (Synapse {SYNAPSE_VERSION} needs >= 3.10)");
    }
    Ok(())
}

fn create_venv(python: &str, venv: &Path) -> Result<()> {
    let out = Command::new(python).args(["-m", "venv"]).arg(venv).output().context("run python -m venv")?;
    if !out.status.success() {
        bail!(
            "`{python} -m venv` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `apt-get install -y python3-venv` (after `apt-get update` if the first try fails).
fn apt_install_venv() -> bool {
    eprintln!("voip-testkit: running as root, trying apt-get install -y python3-venv");
    let install = || {
        run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "python3-venv"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    install() || (run_quiet(Command::new("apt-get").arg("update")) && install())
}

pub(crate) fn is_root_user() -> bool {
    is_root()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The `rc_*` rate limits written into an instance's config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Limits {
    /// Every limiter at 10 000/s with a burst of 10 000: effectively off (tests that need a 429
    /// override one user's `rc_message` through the admin API).
    #[default]
    Generous,
    /// Tight limits for rate-limit tests ([`TIGHT_LIMITS_YAML`]): messages (room events, state
    /// events and delayed-event scheduling) 0.5/s with a burst of 1 per user (two sends in a row
    /// always meet a 429); delayed-event
    /// management (MSC4140 restart/cancel/send) 0.5/s burst 2; logins 1/s burst 4 (per address
    /// and per account); joins, invites, room creation 1/s burst 3; cross-user key requests
    /// 0.5/s burst 2. Synapse 1.163.2 has no other limiter on to-device messages.
    Tight,
}

const GENEROUS_LIMITS_YAML: &str = r#"# (per_second: 0 does NOT disable a limiter; use big numbers.)
rc_message:              {per_second: 10000, burst_count: 10000}
rc_registration:         {per_second: 10000, burst_count: 10000}
rc_registration_token_validity: {per_second: 10000, burst_count: 10000}
rc_login:
  address:               {per_second: 10000, burst_count: 10000}
  account:               {per_second: 10000, burst_count: 10000}
  failed_attempts:       {per_second: 10000, burst_count: 10000}
rc_joins:
  local:                 {per_second: 10000, burst_count: 10000}
  remote:                {per_second: 10000, burst_count: 10000}
rc_joins_per_room:       {per_second: 10000, burst_count: 10000}
rc_invites:
  per_room:              {per_second: 10000, burst_count: 10000}
  per_user:              {per_second: 10000, burst_count: 10000}
  per_issuer:            {per_second: 10000, burst_count: 10000}
rc_3pid_validation:      {per_second: 10000, burst_count: 10000}
rc_third_party_invite:   {per_second: 10000, burst_count: 10000}
rc_key_requests:         {per_second: 10000, burst_count: 10000}  # only limiter on to-device (m.room_key_request)
rc_room_creation:        {per_second: 10000, burst_count: 10000}
rc_delayed_event_mgmt:   {per_second: 10000, burst_count: 10000}
rc_presence:
  per_user:              {per_second: 10000, burst_count: 10000}
rc_profile:              {per_second: 10000, burst_count: 10000}
rc_user_directory:       {per_second: 10000, burst_count: 10000}
rc_media_create:         {per_second: 10000, burst_count: 10000}
rc_reports:              {per_second: 10000, burst_count: 10000}
rc_admin_redaction:      {per_second: 10000, burst_count: 10000}
"#;

/// The `rc_*` block of [`Limits::Tight`].
pub const TIGHT_LIMITS_YAML: &str = r#"# Tight: a user's message (room event, state event, delayed-event scheduling) less than 2 s
# after the previous one gets a 429 with retry_after_ms up to 2 s.
rc_message:              {per_second: 0.5, burst_count: 1}
rc_registration:         {per_second: 1, burst_count: 5}
rc_registration_token_validity: {per_second: 1, burst_count: 5}
rc_login:
  address:               {per_second: 1, burst_count: 4}
  account:               {per_second: 1, burst_count: 4}
  failed_attempts:       {per_second: 1, burst_count: 4}
rc_joins:
  local:                 {per_second: 1, burst_count: 3}
  remote:                {per_second: 1, burst_count: 3}
rc_joins_per_room:       {per_second: 1, burst_count: 3}
rc_invites:
  per_room:              {per_second: 1, burst_count: 3}
  per_user:              {per_second: 1, burst_count: 3}
  per_issuer:            {per_second: 1, burst_count: 3}
rc_3pid_validation:      {per_second: 1, burst_count: 3}
rc_third_party_invite:   {per_second: 1, burst_count: 3}
rc_key_requests:         {per_second: 0.5, burst_count: 2}  # only limiter on to-device (m.room_key_request)
rc_room_creation:        {per_second: 1, burst_count: 3}
rc_delayed_event_mgmt:   {per_second: 0.5, burst_count: 2}
rc_presence:
  per_user:              {per_second: 1, burst_count: 3}
rc_profile:              {per_second: 1, burst_count: 3}
rc_user_directory:       {per_second: 1, burst_count: 3}
rc_media_create:         {per_second: 1, burst_count: 3}
rc_reports:              {per_second: 1, burst_count: 3}
rc_admin_redaction:      {per_second: 1, burst_count: 3}
"#;

impl Limits {
    fn yaml(self) -> &'static str {
        match self {
            Limits::Generous => GENEROUS_LIMITS_YAML,
            Limits::Tight => TIGHT_LIMITS_YAML,
        }
    }
}

/// How to start an instance.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Data directory (created; an existing one keeps its database).
    pub data_dir: PathBuf,
    /// Stop Synapse when the process with this PID is gone (a `sh` watchdog). `None` leaves it
    /// running until [`stop`].
    pub owner_pid: Option<u32>,
    /// With `owner_pid`: delete the data dir after stopping (once the owner is gone).
    pub remove_data_on_exit: bool,
    /// Readiness timeout (default 60 s; `SYNAPSE_START_TIMEOUT` seconds overrides).
    pub timeout: Duration,
    /// The rate limits (default [`Limits::Generous`]).
    pub limits: Limits,
    /// Synapse's `max_event_delay_duration` (default `24h`), e.g. `"2s"` to test a server that
    /// caps MSC4140 delays.
    pub max_event_delay: Option<String>,
    /// Synapse's `turn_uris` and `turn_shared_secret` (default: `turn:127.0.0.1:3478` and a
    /// random secret, with no TURN server behind it). See [`crate::coturn`].
    pub turn: Option<(String, String)>,
    /// Synapse's `turn_user_lifetime` (default `1h`): how long the TURN credentials it hands
    /// out stay valid (the `ttl` of `/voip/turnServer`), e.g. `"20s"` to test their refresh.
    pub turn_user_lifetime: Option<String>,
}

impl StartOptions {
    /// Options for a detached instance in `data_dir`.
    pub fn detached(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            owner_pid: None,
            remove_data_on_exit: false,
            timeout: start_timeout(),
            limits: Limits::Generous,
            max_event_delay: None,
            turn: None,
            turn_user_lifetime: None,
        }
    }

    /// Options for an instance owned by this process, in a fresh data dir that is deleted after.
    pub fn owned_by_this_process() -> Self {
        Self {
            data_dir: default_data_dir(),
            owner_pid: Some(std::process::id()),
            remove_data_on_exit: true,
            timeout: start_timeout(),
            limits: Limits::Generous,
            max_event_delay: None,
            turn: None,
            turn_user_lifetime: None,
        }
    }

    /// The same with Synapse's `/voip/turnServer` pointing at `uri` (e.g. [`crate::coturn::Coturn::uri`])
    /// with the TURN REST `secret` the TURN server was started with.
    pub fn with_turn(mut self, uri: impl Into<String>, secret: impl Into<String>) -> Self {
        self.turn = Some((uri.into(), secret.into()));
        self
    }

    /// The same with another `turn_user_lifetime` (Synapse syntax, e.g. `"20s"`), instead of
    /// `1h`.
    pub fn with_turn_user_lifetime(mut self, lifetime: impl Into<String>) -> Self {
        self.turn_user_lifetime = Some(lifetime.into());
        self
    }

    /// The same with another `max_event_delay_duration` (MSC4140's maximum delay; Synapse syntax,
    /// e.g. `"2s"`), instead of `24h`.
    pub fn with_max_event_delay(mut self, duration: impl Into<String>) -> Self {
        self.max_event_delay = Some(duration.into());
        self
    }

    /// The same with other rate limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

fn start_timeout() -> Duration {
    let secs = std::env::var("SYNAPSE_START_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}

/// A started instance.
#[derive(Clone, Debug)]
pub struct Started {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `registration_shared_secret`.
    pub reg_secret: String,
    /// Synapse's PID.
    pub pid: u32,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Time from spawn to the first 200 from `/versions`.
    pub startup: Duration,
}

impl Started {
    /// The shell lines (`export K=V`) describing this instance, as written to `synapse.env`.
    pub fn env_lines(&self) -> String {
        format!(
            "export SYNAPSE_URL={}\nexport SYNAPSE_REG_SECRET={}\nexport SYNAPSE_PID={}\nexport SYNAPSE_DATA={}\n",
            self.url,
            self.reg_secret,
            self.pid,
            self.data_dir.display()
        )
    }

    /// The port of [`Started::url`].
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("url has a port")
    }
}

/// Port and secrets of an instance: kept across restarts so clients and tokens stay valid.
#[derive(Clone, Debug)]
struct Identity {
    port: u16,
    reg: String,
    mac: String,
    form: String,
    turn: String,
}

impl Identity {
    fn fresh() -> std::io::Result<Identity> {
        Ok(Identity {
            port: TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            reg: random_hex(16),
            mac: random_hex(16),
            form: random_hex(16),
            turn: random_hex(16),
        })
    }
}

/// Installs (if needed) and starts Synapse; waits until `/_matrix/client/versions` answers.
pub fn start(opts: &StartOptions) -> Result<Started> {
    start_with(opts, None).map(|(started, _identity, child)| {
        // The Child handle is dropped without waiting: the process keeps running.
        drop(child);
        started
    })
}

fn start_with(opts: &StartOptions, identity: Option<&Identity>) -> Result<(Started, Identity, Child)> {
    let python = ensure_installed()?;
    let data = &opts.data_dir;
    fs::create_dir_all(data).with_context(|| format!("create {}", data.display()))?;
    let data = data.canonicalize()?;
    if let Some(pid) = read_pid(&data) {
        if alive(pid) {
            bail!("a Synapse (pid {pid}) is already running in {}", data.display());
        }
    }
    let mut last_err = None;
    for attempt in 0..5 {
        // A restart keeps its port (the old listener may need a moment to go); a fresh start
        // picks another free port when the chosen one was taken meanwhile.
        let id = match identity {
            Some(id) => id.clone(),
            None => Identity::fresh()?,
        };
        match start_once(&python, &data, opts, &id) {
            Ok((s, child)) => return Ok((s, id, child)),
            Err(StartError::PortInUse) => {
                last_err = Some(anyhow::anyhow!("port {} in use {} times", id.port, attempt + 1));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(StartError::Other(e)) => {
                last_err = Some(e);
                break;
            }
        }
    }
    // A fresh instance that never came up: its watchdog keeps the data while this process lives,
    // so delete it here (a failed restart leaves it to the `Instance`).
    if identity.is_none() && opts.remove_data_on_exit {
        let _ = fs::remove_dir_all(&data);
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("start failed")))
}

enum StartError {
    PortInUse,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Other(e.into())
    }
}

fn start_once(
    python: &Path,
    data: &Path,
    opts: &StartOptions,
    id: &Identity,
) -> std::result::Result<(Started, Child), StartError> {
    let port = id.port;
    let d = data.display().to_string();
    let config = CONFIG_TEMPLATE
        .replace("@RATE_LIMITS@", opts.limits.yaml())
        .replace("@DATA@", &d)
        .replace("@PORT@", &port.to_string())
        .replace("@SECRET_REG@", &id.reg)
        .replace("@SECRET_MAC@", &id.mac)
        .replace("@SECRET_FORM@", &id.form)
        .replace(
            "max_event_delay_duration: 24h",
            &format!("max_event_delay_duration: {}", opts.max_event_delay.as_deref().unwrap_or("24h")),
        )
        .replace(
            "turn:127.0.0.1:3478?transport=udp",
            opts.turn.as_ref().map_or("turn:127.0.0.1:3478?transport=udp", |t| &t.0),
        )
        .replace("@SECRET_TURN@", opts.turn.as_ref().map_or(&id.turn, |t| &t.1))
        .replace(
            "turn_user_lifetime: 1h",
            &format!("turn_user_lifetime: {}", opts.turn_user_lifetime.as_deref().unwrap_or("1h")),
        );
    let config_path = data.join("homeserver.yaml");
    fs::write(&config_path, config)?;
    fs::write(data.join("log.config"), LOG_CONFIG.replace("@DATA@", &d))?;
    let _ = fs::remove_file(data.join("synapse.pid"));

    let t0 = Instant::now();
    let mut synapse = Command::new(python);
    synapse.args(["-m", "synapse.app.homeserver", "--config-path"]).arg(&config_path).current_dir(data);
    let mut child: Child = match opts.owner_pid {
        Some(owner) => Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("synapse-watchdog")
            .arg(owner.to_string())
            .arg(data)
            .arg(if opts.remove_data_on_exit { "rm" } else { "keep" })
            .arg(synapse.get_program())
            .args(synapse.get_args())
            .current_dir(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sh watchdog")?,
        None => {
            let log = File::create(data.join("stdout.log"))?;
            let child = synapse
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn synapse")?;
            fs::write(data.join("synapse.pid"), child.id().to_string())?;
            child
        }
    };

    let url = format!("http://127.0.0.1:{port}");
    loop {
        if let Some(status) = child.try_wait()? {
            let out = tail(&data.join("stdout.log"), 40);
            if out.contains("Address already in use") {
                return Err(StartError::PortInUse);
            }
            return Err(anyhow::anyhow!(
                "Synapse exited ({status}) during start-up; {}/stdout.log:\n{out}",
                d
            )
            .into());
        }
        if http_get_status(port, "/_matrix/client/versions") == Some(200) {
            break;
        }
        if t0.elapsed() > opts.timeout {
            let pid = read_pid(data);
            if let Some(pid) = pid {
                kill(pid, "KILL");
            }
            let _ = child.kill();
            return Err(anyhow::anyhow!(
                "Synapse not ready after {:?}; {}/stdout.log:\n{}",
                opts.timeout,
                d,
                tail(&data.join("stdout.log"), 40)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let startup = t0.elapsed();
    let pid = read_pid(data).context("no synapse.pid")?;
    let started = Started { url, reg_secret: id.reg.clone(), pid, data_dir: data.to_owned(), startup };
    fs::write(data.join("synapse.env"), started.env_lines())?;
    Ok((started, child))
}

fn read_pid(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("synapse.pid")).ok()?.trim().parse().ok()
}

/// Whether a process is alive (not a zombie).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops the instance recorded in `data_dir` (SIGTERM, SIGKILL after 10 s). Returns whether
/// one was running.
pub fn stop(data_dir: &Path) -> Result<bool> {
    let Some(pid) = read_pid(data_dir) else { return Ok(false) };
    if !alive(pid) {
        return Ok(false);
    }
    kill(pid, "TERM");
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        kill(pid, "KILL");
    }
    let _ = fs::remove_file(data_dir.join("synapse.pid"));
    Ok(true)
}

/// Minimal HTTP/1.0 GET on 127.0.0.1 (readiness probe without an HTTP client).
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// An instance this process controls: its own data dir, port, secrets and rate limits. It can be
/// stopped and started again on the same data, port and secrets (clients, users and access
/// tokens stay valid), and it is stopped and its data deleted when dropped. While it runs, a
/// watchdog stops it if this process dies.
#[derive(Debug)]
pub struct Instance {
    opts: StartOptions,
    identity: Identity,
    started: Started,
    /// The watchdog (`sh`) while Synapse runs.
    child: Option<Child>,
}

impl Instance {
    /// Starts a fresh instance owned by this process, with `limits`, in a new data dir.
    pub fn start(limits: Limits) -> Result<Instance> {
        Self::start_with_options(StartOptions::owned_by_this_process().with_limits(limits))
    }

    /// Starts a fresh instance with `opts` (e.g. [`StartOptions::with_turn`]).
    pub fn start_with_options(opts: StartOptions) -> Result<Instance> {
        let (started, identity, child) = start_with(&opts, None)?;
        tracing_note(&started, "started");
        Ok(Instance { opts, identity, started, child: Some(child) })
    }

    /// The running (or last running) instance.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The base URL (unchanged across restarts).
    pub fn url(&self) -> &str {
        &self.started.url
    }

    /// The `registration_shared_secret` (unchanged across restarts).
    pub fn reg_secret(&self) -> &str {
        &self.started.reg_secret
    }

    /// Whether Synapse is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && alive(self.started.pid)
    }

    /// Stops Synapse (SIGTERM, SIGKILL after 10 s); the data stays. Returns whether it was
    /// running.
    pub fn stop(&mut self) -> Result<bool> {
        let was = stop(&self.started.data_dir)?;
        if let Some(mut child) = self.child.take() {
            // The watchdog notices Synapse is gone within 0.5 s and exits (keeping the data,
            // since this process is alive).
            let _ = child.wait();
        }
        Ok(was)
    }

    /// Kills Synapse with SIGKILL (a crash: no clean shutdown); the data stays.
    pub fn kill(&mut self) {
        kill(self.started.pid, "KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.started.data_dir.join("synapse.pid"));
    }

    /// Starts Synapse again on the same data dir, port and secrets (stopping it first if it
    /// runs).
    pub fn restart(&mut self) -> Result<&Started> {
        if self.child.is_some() {
            self.stop()?;
        }
        let (started, _, child) = start_with(&self.opts, Some(&self.identity))?;
        tracing_note(&started, "restarted");
        self.started = started;
        self.child = Some(child);
        Ok(&self.started)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.stop();
        if self.opts.remove_data_on_exit {
            let _ = fs::remove_dir_all(&self.started.data_dir);
        }
    }
}

fn tracing_note(s: &Started, what: &str) {
    eprintln!(
        "voip-testkit: Synapse {SYNAPSE_VERSION} {what} at {} (pid {}, data {}, ready in {:.1} s)",
        s.url,
        s.pid,
        s.data_dir.display(),
        s.startup.as_secs_f64()
    );
}
