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
//!
//! First of all, every dependency's `license` (from `cargo metadata`) must allow use under the
//! workspace's `MIT OR Apache-2.0`: an SPDX expression that can be satisfied with the permissive
//! licences (and MPL-2.0, file-level copyleft) in [`COMPATIBLE`].

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context};

/// Crates verified by default: no matrix-sdk or webrtc-rs among their dependencies.
const VERIFIED: &[&str] = &["voip-core", "voip-homeserver"];

/// Licences a dependency of an `MIT OR Apache-2.0` library may have.
const COMPATIBLE: &[&str] = &[
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "BSL-1.0",
    "CC0-1.0",
    "Unlicense",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "CDLA-Permissive-2.0",
    "MPL-2.0",
    "MPL-2.0+",
];

/// Whether an SPDX licence expression (`A OR B`, `A AND (B OR C)`, `A WITH E`, and the legacy
/// `A/B`) can be satisfied with the [`COMPATIBLE`] licences.
fn compatible(expression: &str) -> bool {
    fn any(tokens: &[String], at: &mut usize) -> bool {
        let mut ok = all(tokens, at);
        while tokens.get(*at).is_some_and(|t| t == "OR") {
            *at += 1;
            ok |= all(tokens, at);
        }
        ok
    }
    fn all(tokens: &[String], at: &mut usize) -> bool {
        let mut ok = one(tokens, at);
        while tokens.get(*at).is_some_and(|t| t == "AND") {
            *at += 1;
            ok &= one(tokens, at);
        }
        ok
    }
    fn one(tokens: &[String], at: &mut usize) -> bool {
        let Some(token) = tokens.get(*at) else { return false };
        *at += 1;
        if token == "(" {
            let ok = any(tokens, at);
            *at += 1; // ")"
            return ok;
        }
        let mut id = token.clone();
        if tokens.get(*at).is_some_and(|t| t == "WITH") {
            id = format!("{id} WITH {}", tokens.get(*at + 1).map_or("", String::as_str));
            *at += 2;
        }
        COMPATIBLE.contains(&id.as_str())
    }
    let spaced = expression.replace('/', " OR ").replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<String> = spaced.split_whitespace().map(str::to_owned).collect();
    let operator = |t: Option<&String>| t.is_none_or(|t| ["OR", "AND", "WITH", "("].contains(&t.as_str()));
    if operator(tokens.last()) {
        return false; // empty, or cut off after an operator
    }
    let mut at = 0;
    any(&tokens, &mut at) && at == tokens.len()
}

/// Every package in the dependency graph that is not a workspace member, with its licence;
/// fails on one whose licence is missing or not [`compatible`].
fn check_licences() -> anyhow::Result<()> {
    let meta = metadata(&["--format-version", "1"])?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("no workspace_members in cargo metadata")?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let mut bad = Vec::new();
    let mut count = 0;
    for package in meta["packages"].as_array().context("no packages in cargo metadata")? {
        if package["id"].as_str().is_some_and(|id| members.contains(&id)) {
            continue;
        }
        count += 1;
        let name = format!(
            "{} {}",
            package["name"].as_str().unwrap_or("?"),
            package["version"].as_str().unwrap_or("?")
        );
        match package["license"].as_str() {
            Some(licence) if compatible(licence) => {}
            Some(licence) => bad.push(format!("{name}: {licence}")),
            None => bad.push(format!("{name}: no `license` field (license-file only)")),
        }
    }
    if !bad.is_empty() {
        bail!(
            "dependencies whose licence is not known to be compatible with MIT OR Apache-2.0:\n  {}",
            bad.join("\n  ")
        );
    }
    println!("licences of {count} dependencies: all compatible with MIT OR Apache-2.0");
    Ok(())
}

/// `cargo metadata ARGS`, parsed.
fn metadata(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::root())
        .arg("metadata")
        .args(args)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata output")
}

/// `-p NAME` for each crate.
fn select<'a>(names: &[&'a String]) -> Vec<&'a str> {
    names.iter().flat_map(|n| ["-p", n.as_str()]).collect()
}

/// The workspace members that can be published, in the workspace's order.
fn publishable() -> anyhow::Result<Vec<String>> {
    let meta = metadata(&["--no-deps", "--format-version", "1"])?;
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
    check_licences()?;
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

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn licence_expressions() {
        for ok in [
            "MIT",
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
            "ISC AND (Apache-2.0 OR ISC) AND Apache-2.0 AND MIT AND BSD-3-Clause",
            "MPL-2.0",
        ] {
            assert!(compatible(ok), "{ok}");
        }
        for bad in
            ["GPL-3.0-only", "AGPL-3.0-or-later", "MIT AND GPL-2.0-only", "LGPL-2.1-or-later", "", "MIT OR"]
        {
            assert!(!compatible(bad), "{bad}");
        }
    }
}
