//! `cargo xtask test`: what CI runs, in order, stopping at the first failure.

use std::process::Command;

use anyhow::{bail, Context};

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("\n==> cargo {}", args.join(" "));
    let status =
        Command::new(&cargo).args(args).current_dir(crate::root()).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let quick = args.iter().any(|a| a == "--no-lint");
    if !quick {
        cargo(&["fmt", "--all", "--", "--check"])?;
        cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    }
    cargo(&["test", "--workspace", "--all-targets"])?;
    cargo(&["test", "--workspace", "--doc"])?;
    println!("\n==> conformance fixtures");
    crate::conformance::run(&[])
}
