//! `cargo xtask sim [--release] [--seeds N] [--seed S] [--scenario NAME] [--replay FILE]`:
//! runs the seeded fault scenarios of `voip-sim` (its `sim` binary) and checks the invariants
//! after every step; see docs/simulation.md. `--release` builds the simulator optimised (for
//! thousands of seeds); everything else is passed on.

use std::process::Command;

use anyhow::Context;

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let release = args.iter().any(|a| a == "--release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(crate::root()).args(["run", "-q", "-p", "voip-sim", "--bin", "sim"]);
    if release {
        c.arg("--release");
    }
    c.arg("--").args(args.iter().filter(|a| *a != "--release"));
    let status = c.status().context("running the simulator")?;
    Ok(status.success())
}
