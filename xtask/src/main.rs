//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `conformance [--dir DIR] [--filter PAT]`: run the conformance fixtures.
//! - `demo [-- ARGS]`: the README's demo with decoded audio and video (installs cmake and
//!   libvpx-dev when missing, see `demo.rs`).
//! - `test`: everything CI runs (format, lints, unit/integration tests with a real Synapse,
//!   fixtures, packaging).
//! - `package [--verify-all]`: `cargo package` for every publishable crate (see `package.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod conformance;
mod demo;
mod netns;
mod package;
mod test;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("conformance") => conformance::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("package") => package::run(&args[1..]),
        Some("interop") => {
            // `cargo xtask interop …`: interop with the real matrix-js-sdk (docs/interop.md).
            #[path = "interop.rs"]
            mod interop;
            interop::run(&args[1..])
        }
        Some("bench") => {
            // `cargo xtask bench …`: call set-up, group join, key rotation vs js-sdk (docs/benchmarks.md).
            #[path = "bench.rs"]
            mod bench;
            bench::run(&args[1..])
        }
        Some("sim") => {
            // `cargo xtask sim …`: seeded fault scenarios with invariant checks (docs/simulation.md).
            #[path = "sim.rs"]
            mod sim;
            sim::run(&args[1..])
        }
        other => {
            eprintln!(
                "usage: cargo xtask <test|demo|package|conformance|sim|interop|bench> …  (got {other:?})"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}
