//! `cargo xtask demo [-- ARGS]`: the README's demo with decoded media. Installs what the
//! `codecs` feature builds with, as `cargo xtask test` does (cmake for libopus, `libvpx-dev` and
//! `pkg-config` for VP8, with apt-get when missing), then runs
//! `cargo run -p voip --features codecs --example demo -- ARGS` (for example
//! `--homeserver URL --registration-secret SECRET`).

use std::collections::BTreeMap;

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    crate::test::ensure_cmake()?;
    crate::test::ensure_libvpx()?;
    let rest = match args.first().map(String::as_str) {
        Some("--") => &args[1..],
        _ => args,
    };
    let mut cargo = vec!["run", "-q", "-p", "voip", "--features", "codecs", "--example", "demo", "--"];
    cargo.extend(rest.iter().map(String::as_str));
    crate::test::cargo(&cargo, &BTreeMap::new())?;
    Ok(true)
}
