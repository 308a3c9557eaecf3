//! `synapse-rig`: install, start and stop one shared Synapse for a whole test run.
//!
//! ```text
//! synapse-rig install                 # only make sure the cached venv exists
//! synapse-rig start [--data DIR]      # start detached; prints `export SYNAPSE_URL=…` lines
//! synapse-rig stop --data DIR [--rm]  # SIGTERM (SIGKILL after 10 s); --rm deletes DIR
//! ```
//!
//! `start` also writes the lines to `DIR/synapse.env`; tests that see `SYNAPSE_URL` and
//! `SYNAPSE_REG_SECRET` in their environment use that instance instead of starting their own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use voip_testkit::rig;

fn usage() -> ExitCode {
    eprintln!("usage: synapse-rig install | start [--data DIR] | stop --data DIR [--rm]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = args.iter().position(|a| a == "--data").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let result = match args.first().map(String::as_str) {
        Some("install") => {
            let t0 = Instant::now();
            rig::ensure_installed().map(|py| {
                eprintln!("synapse-rig: {} ready ({:.1} s)", py.display(), t0.elapsed().as_secs_f64());
            })
        }
        Some("start") => {
            let data = data.unwrap_or_else(rig::default_data_dir);
            rig::start(&rig::StartOptions::detached(&data)).map(|s| {
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
