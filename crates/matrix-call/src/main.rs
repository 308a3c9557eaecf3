//! `matrix-call`: Matrix calls from a terminal, on a real account, with the `voip` crate.
//!
//! ```sh
//! matrix-call login https://matrix.example.org @alice:example.org   # password from stdin or $MATRIX_PASSWORD
//! matrix-call call @bob:example.org --play hello.wav --record bob.wav
//! matrix-call answer --auto --play greeting.wav --record messages.wav   # an answering machine
//! ```
//!
//! Exit codes: 0 done; 1 other error; 2 bad command line or input file; 3 authentication (not
//! logged in, wrong password, session revoked); 4 not found (unknown user, no DM room, room not
//! joined); 5 call not answered (rejected, busy, no answer; no incoming call within
//! `--timeout`); 6 call failed; 7 homeserver unreachable; 130 interrupted by Ctrl-C (a call in
//! progress is hung up and the hangup sent first).
#![deny(missing_docs)]

mod call;
#[cfg(feature = "devices")]
mod devices;
mod error;
mod group;
mod interrupt;
mod output;
mod session;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use voip::webrtc::media::audio::{AudioConfig, AudioHub};
use voip::webrtc::WebrtcConfig;
use voip::Voip;

use crate::call::MediaOptions;
use crate::error::{exit, one_line, CliError};
use crate::interrupt::Interrupt;
use crate::output::Out;

/// Matrix voice and video calls from a terminal.
#[derive(Debug, Parser)]
#[command(
    name = "matrix-call",
    version,
    about,
    after_help = "Exit codes: 0 done, 1 other error, 2 bad command line or input file, 3 authentication \
                  (not logged in, wrong password, session revoked), 4 not found (unknown user, no DM room, \
                  room not joined), 5 call not answered (rejected, busy, no answer, nothing within --timeout), \
                  6 call failed, 7 homeserver unreachable, 130 interrupted by Ctrl-C (the call is hung up first)."
)]
struct Cli {
    /// Where the session and the E2EE store live (one account per directory).
    #[arg(long, global = true, env = "MATRIX_CALL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print events as JSON, one object per line (stdout).
    #[arg(long, global = true)]
    json: bool,
    /// Log the library's progress to stderr (more with -vv; `RUST_LOG` overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in and keep the session (a new device, its E2EE keys in the data dir).
    Login {
        /// The homeserver: a URL (`https://matrix.example.org`) or a server name to discover.
        homeserver: String,
        /// `@user:server` or the user name; not needed with --access-token.
        user: Option<String>,
        /// Use this access token instead of a password (its device must be new to E2EE).
        #[arg(long, env = "MATRIX_ACCESS_TOKEN", hide_env_values = true)]
        access_token: Option<String>,
        /// The new device's display name.
        #[arg(long, default_value = "matrix-call")]
        device_name: String,
    },
    /// Log out: delete this device on the homeserver and the local session and keys.
    Logout,
    /// Show the account, the device and its identity key.
    Whoami,
    /// Call someone: rings them in your DM room (or --room) and holds the call.
    Call {
        /// `@user:server` (or a user name on your server).
        user: String,
        /// The room to call in (`!id:server` or `#alias:server`) instead of the DM room.
        #[arg(long)]
        room: Option<String>,
        /// A video call (test-pattern video).
        #[arg(long)]
        video: bool,
        #[command(flatten)]
        media: MediaArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Wait for a call and answer it (`--auto`: every call, e.g. an answering machine or an echo bot).
    Answer {
        /// Keep answering call after call until Ctrl-C.
        #[arg(long)]
        auto: bool,
        /// Send callers their own audio back (echo bot).
        #[arg(long)]
        echo: bool,
        /// Give up when no call comes in within this many seconds (exit code 5).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        #[command(flatten)]
        media: MediaArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Wait for a call and reject it.
    Reject {
        /// Give up when no call comes in within this many seconds (exit code 5).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Join a room's group call: mesh (real media) or LiveKit (prints focus, credentials, keys).
    Join {
        /// The room (`!id:server` or `#alias:server`).
        room: String,
        /// Mesh: every member calls every other member (the default).
        #[arg(long, conflicts_with = "livekit")]
        mesh: bool,
        /// LiveKit SFU through this MatrixRTC JWT service (`livekit_service_url`).
        #[arg(long, value_name = "URL")]
        livekit: Option<String>,
        /// Print the media keys themselves, not only their indices.
        #[arg(long)]
        show_keys: bool,
        /// Leave after this many seconds (otherwise on Ctrl-C).
        #[arg(long, value_name = "SECONDS")]
        leave_after: Option<f64>,
        /// A WAV file every member hears (mesh).
        #[arg(long, value_name = "FILE.wav")]
        play: Option<PathBuf>,
        /// Play the file in a loop.
        #[arg(long = "loop")]
        loop_play: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// List the audio input and output devices (feature `devices`).
    #[cfg(feature = "devices")]
    Devices,
}

/// What a call sends and records.
#[derive(Debug, Args)]
struct MediaArgs {
    /// A WAV file to send as the microphone (any rate and channel count; then silence).
    #[arg(long, value_name = "FILE.wav")]
    play: Option<PathBuf>,
    /// Play the file in a loop.
    #[arg(long = "loop")]
    loop_play: bool,
    /// Record the other side to a WAV file (48 kHz mono; with --auto: FILE-2.wav, ... for later calls).
    #[arg(long, value_name = "FILE.wav")]
    record: Option<PathBuf>,
    /// Hang up this many seconds after the call connected.
    #[arg(long, value_name = "SECONDS")]
    hangup_after: Option<f64>,
    /// Send this microphone (`--mic=NAME`, a name from `matrix-call devices`; `--mic`: the default
    /// one). At a terminal the default microphone is used anyway unless --play (or --echo) is given.
    #[cfg(feature = "devices")]
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    mic: Option<String>,
    /// Play the other side on this speaker (`--speaker=NAME`; `--speaker`: the default one). At a
    /// terminal the default speaker is used anyway unless --record (or --echo) is given.
    #[cfg(feature = "devices")]
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    speaker: Option<String>,
}

/// How media connects.
#[derive(Debug, Args)]
struct NetArgs {
    /// Gather loopback candidates only (both sides on this machine).
    #[arg(long)]
    loopback: bool,
    /// Relay all media through the homeserver's TURN servers (no direct connection).
    #[arg(long)]
    relay_only: bool,
}

fn seconds(s: Option<f64>, what: &str) -> Result<Option<Duration>, CliError> {
    match s {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(Duration::from_secs_f64(v))),
        Some(v) => Err(CliError::Usage(format!("{what}: {v} is not a number of seconds"))),
    }
}

impl MediaArgs {
    fn options(&self, echo: bool) -> Result<MediaOptions, CliError> {
        Ok(MediaOptions {
            play: self.play.clone(),
            loop_play: self.loop_play,
            record: self.record.clone(),
            echo,
            hangup_after: seconds(self.hangup_after, "--hangup-after")?,
            #[cfg(feature = "devices")]
            mic: call::DeviceChoice::pick(self.mic.as_deref(), self.play.is_none() && !echo),
            #[cfg(feature = "devices")]
            speaker: call::DeviceChoice::pick(self.speaker.as_deref(), self.record.is_none() && !echo),
        })
    }
}

/// What a command that makes or takes calls runs on.
pub struct Ctx {
    /// The logged-in client.
    pub client: matrix_sdk::Client,
    /// The call runtime on it.
    pub voip: Voip,
    /// Decoded audio of every call.
    pub hub: AudioHub,
    /// The printer.
    pub out: Out,
    /// Ctrl-C.
    pub interrupt: Interrupt,
    _sync: session::Syncing,
}

/// Restores the session, builds the call runtime (before the first sync, so it sees everything)
/// and starts syncing. `incoming` is subscribed before the first sync.
async fn connect(
    data_dir: &std::path::Path,
    out: &Out,
    interrupt: &Interrupt,
    net: &NetArgs,
) -> Result<(Ctx, voip::IncomingCalls), CliError> {
    let client = session::restore(data_dir).await?;
    let hub = AudioHub::new(AudioConfig::default());
    let config = if net.loopback { WebrtcConfig::loopback() } else { WebrtcConfig::default() };
    let config = config.with_relay_only(net.relay_only).with_audio(hub.clone());
    let voip = Voip::from_client(&client)
        .map_err(|e| CliError::Auth(one_line(&e)))?
        .webrtc(config)
        .build()
        .map_err(|e| CliError::Other(anyhow::anyhow!("{}", one_line(&e))))?;
    let incoming = voip.incoming_calls();
    let sync = session::start_sync(&client).await?;
    let ctx = Ctx { client, voip, hub, out: out.clone(), interrupt: interrupt.clone(), _sync: sync };
    Ok((ctx, incoming))
}

/// Ends the runtime: queued sends (a hangup, a leave) are delivered first.
async fn disconnect(ctx: Ctx) {
    if tokio::time::timeout(Duration::from_secs(15), ctx.voip.shutdown()).await.is_err() {
        ctx.out.error("other", exit::OTHER, "the call runtime did not stop within 15 s");
    }
}

/// The password: `$MATRIX_PASSWORD`, else asked on the terminal, else the first line of stdin.
fn read_password() -> Result<String, CliError> {
    if let Ok(p) = std::env::var("MATRIX_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(CliError::Usage("no password: pipe it to stdin or set MATRIX_PASSWORD".into()));
    }
    Ok(password)
}

async fn run(cli: Cli, out: &Out, interrupt: &Interrupt) -> Result<(), CliError> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(session::default_data_dir);
    match cli.command {
        Command::Login { homeserver, user, access_token, device_name } => {
            let credentials = match (access_token, user) {
                (Some(token), _) => session::Credentials::AccessToken(token),
                (None, Some(user)) => session::Credentials::Password { user, password: read_password()? },
                (None, None) => return Err(CliError::Usage("login needs a USER (or --access-token)".into())),
            };
            std::fs::create_dir_all(&data_dir).map_err(|e| CliError::file(&data_dir, e))?;
            session::login(out, &data_dir, &homeserver, credentials, &device_name).await
        }
        Command::Logout => session::logout(out, &data_dir).await,
        #[cfg(feature = "devices")]
        Command::Devices => devices::list(out),
        Command::Whoami => session::whoami(out, &data_dir).await,
        Command::Call { user, room, video, media, net } => {
            let options = media.options(false)?;
            options.check()?;
            let (ctx, _incoming) = connect(&data_dir, out, interrupt, &net).await?;
            let result = call::call(&ctx, &user, room.as_deref(), video, &options).await;
            disconnect(ctx).await;
            result
        }
        Command::Answer { auto, echo, timeout, media, net } => {
            let options = media.options(echo)?;
            options.check()?;
            let timeout = seconds(timeout, "--timeout")?;
            let (ctx, mut incoming) = connect(&data_dir, out, interrupt, &net).await?;
            let result = call::answer(&ctx, &mut incoming, auto, false, timeout, &options).await;
            disconnect(ctx).await;
            result
        }
        Command::Reject { timeout, net } => {
            let timeout = seconds(timeout, "--timeout")?;
            let (ctx, mut incoming) = connect(&data_dir, out, interrupt, &net).await?;
            let result =
                call::answer(&ctx, &mut incoming, false, true, timeout, &MediaOptions::default()).await;
            disconnect(ctx).await;
            result
        }
        Command::Join { room, mesh: _, livekit, show_keys, leave_after, play, loop_play, net } => {
            let options = MediaOptions { play, loop_play, ..MediaOptions::default() };
            options.check()?;
            let leave_after = seconds(leave_after, "--leave-after")?;
            let backend = match livekit {
                Some(url) => group::Backend::LiveKit(url),
                None => group::Backend::Mesh,
            };
            let (ctx, _incoming) = connect(&data_dir, out, interrupt, &net).await?;
            let result = group::join(&ctx, &room, backend, &options, leave_after, show_keys).await;
            disconnect(ctx).await;
            result
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "off",
        1 => "warn,voip=info,voip_matrix=info,voip_webrtc=info,matrix_call=info",
        _ => "info,voip=debug,voip_core=debug,voip_matrix=debug,voip_webrtc=debug,matrix_call=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let out = Out::new(cli.json);
    let fail = |e: CliError| {
        out.error(e.kind(), e.exit_code(), &e.to_string());
        ExitCode::from(e.exit_code())
    };
    let interrupt = match Interrupt::install() {
        Ok(i) => i,
        Err(e) => return fail(CliError::Other(anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(CliError::Other(anyhow::anyhow!("cannot start the async runtime: {e}"))),
    };
    let result = runtime.block_on(run(cli, &out, &interrupt));
    // Background tasks (webrtc-rs, matrix-sdk) are not waited for beyond this.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => fail(e),
    }
}
