//! `synapse-rig`: install, start and stop one shared Synapse for a whole test run.
//!
//! ```text
//! synapse-rig install                 # only make sure the cached venv exists
//! synapse-rig start [--data DIR] [--turn URI --turn-secret S]
//!                                     # start detached; prints `export SYNAPSE_URL=…` lines
//! synapse-rig stop --data DIR [--rm]  # SIGTERM (SIGKILL after 10 s); --rm deletes DIR
//! synapse-rig coturn --secret S       # coturn on 127.0.0.1 until stdin closes
//! ```
//!
//! `start` also writes the lines to `DIR/synapse.env`; tests that see `SYNAPSE_URL` and
//! `SYNAPSE_REG_SECRET` in their environment use that instance instead of starting their own.
//! `--turn`/`--turn-secret` set Synapse's `turn_uris` and `turn_shared_secret` (for
//! `/voip/turnServer`). `coturn` starts `turnserver` with that secret (installing the Debian
//! package when missing, as root), prints `export TURN_LOG=…` and `export TURN_URI=…` once it answers STUN, and stops it
//! when its stdin reaches EOF: `cargo xtask interop` runs it inside its network namespace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use voip_testkit::{coturn, rig};

fn usage() -> ExitCode {
    eprintln!(
        "usage: synapse-rig install | start [--data DIR] [--turn URI --turn-secret S] | stop --data DIR [--rm] \
         | coturn --secret S"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    let data = value("--data").map(PathBuf::from);
    let result = match args.first().map(String::as_str) {
        Some("install") => {
            let t0 = Instant::now();
            rig::ensure_installed().map(|py| {
                eprintln!("synapse-rig: {} ready ({:.1} s)", py.display(), t0.elapsed().as_secs_f64());
            })
        }
        Some("start") => {
            let data = data.unwrap_or_else(rig::default_data_dir);
            let mut options = rig::StartOptions::detached(&data);
            match (value("--turn"), value("--turn-secret")) {
                (Some(uri), Some(secret)) => options = options.with_turn(uri, secret),
                (None, None) => {}
                _ => return usage(),
            }
            rig::start(&options).map(|s| {
                eprintln!(
                    "synapse-rig: Synapse {} at {} (pid {}), ready in {:.1} s; env in {}/synapse.env",
                    rig::SYNAPSE_VERSION,
                    s.url,
                    s.pid,
                    s.startup.as_secs_f64(),
                    s.data_dir.display()
                );
                print!("{}", s.env_lines());
            })
        }
        Some("stop") => {
            let Some(data) = data else { return usage() };
            let remove = args.iter().any(|a| a == "--rm");
            rig::stop(&data).and_then(|was| {
                eprintln!("synapse-rig: {}", if was { "stopped" } else { "was not running" });
                if remove && data.exists() {
                    std::fs::remove_dir_all(&data)?;
                }
                Ok(())
            })
        }
        Some("coturn") => {
            let Some(secret) = value("--secret") else { return usage() };
            coturn::Coturn::start(&secret).and_then(|turn| {
                eprintln!("synapse-rig: coturn at {} until stdin closes", turn.uri());
                println!("export TURN_LOG={}", turn.log_path().display());
                println!("export TURN_URI={}", turn.uri());
                std::io::stdout().flush()?;
                // Until the parent closes our stdin (or dies): then `turn` is dropped, which
                // stops turnserver.
                std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
                Ok(())
            })
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synapse-rig: {e:#}");
            ExitCode::FAILURE
        }
    }
}
