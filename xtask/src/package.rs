//! `cargo xtask package [--verify-all]`: `cargo package` for every publishable crate of the
//! workspace (every member without `publish = false`), in one invocation, so that cargo packages
//! them in dependency order and resolves their dependencies on each other through a local
//! overlay of the freshly packaged crates (none of them is on crates.io yet).
//!
//! Two steps:
//!
//! 1. all publishable crates with `--no-verify`: manifests (a `version` on every path
//!    dependency, licence, metadata), the file list, the `.crate` tarballs, and the resolution
//!    of the packaged manifests against crates.io plus the overlay;
//! 2. the crates without a heavy dependency again, verified: cargo unpacks each tarball and
//!    compiles it on its own.
//!
//! Why not verify every crate: each verification builds the packaged crate with its own feature
//! set, so matrix-sdk and webrtc-rs are compiled again for `voip-matrix`, `voip-livekit`,
//! `voip-webrtc` and `voip` (measured in docs/testing.md: minutes on 2 cores, next to a CI run
//! that already takes most of its budget), while the test run compiles exactly the same sources
//! from the workspace. `--verify-all` verifies every crate (before a release).
//!
//! `--allow-dirty`: the tarballs hold the working tree as it is, like the tests that run next to
//! this step.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context};

/// Crates verified by default: no matrix-sdk or webrtc-rs among their dependencies.
const VERIFIED: &[&str] = &["voip-core"];

/// `-p NAME` for each crate.
fn select<'a>(names: &[&'a String]) -> Vec<&'a str> {
    names.iter().flat_map(|n| ["-p", n.as_str()]).collect()
}

/// The workspace members that can be published, in the workspace's order.
fn publishable() -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let mut names = Vec::new();
    for package in meta["packages"].as_array().context("no packages in cargo metadata")? {
        // `publish = false` is an empty list of registries; absent (null) means crates.io.
        let blocked = package["publish"].as_array().is_some_and(|registries| registries.is_empty());
        if !blocked {
            names.push(package["name"].as_str().context("package without a name")?.to_owned());
        }
    }
    if names.is_empty() {
        bail!("no publishable crate in the workspace");
    }
    Ok(names)
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let verify_all = args.iter().any(|a| a == "--verify-all");
    if let Some(other) = args.iter().find(|a| *a != "--verify-all") {
        bail!("cargo xtask package: unknown argument {other:?} (only --verify-all)");
    }
    let crates = publishable()?;
    println!("publishable crates: {}", crates.join(", "));
    let none = BTreeMap::new();
    let all: Vec<&String> = crates.iter().collect();

    let mut step = vec!["package", "--allow-dirty"];
    if !verify_all {
        step.push("--no-verify");
    }
    step.extend(select(&all));
    crate::test::cargo(&step, &none)?;

    if !verify_all {
        let cheap: Vec<&String> = crates.iter().filter(|n| VERIFIED.contains(&n.as_str())).collect();
        if cheap.is_empty() {
            bail!("none of {VERIFIED:?} is publishable any more: update xtask/src/package.rs");
        }
        let mut verify = vec!["package", "--allow-dirty"];
        verify.extend(select(&cheap));
        crate::test::cargo(&verify, &none)?;
    }
    Ok(true)
}
