//! `cargo xtask conformance [--dir DIR] [--filter PAT]`

use anyhow::{bail, Context};
use voip_sim::conformance;

pub(crate) fn run(args: &[String]) -> anyhow::Result<bool> {
    let mut dir = crate::root().join("fixtures");
    let mut filter: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().context("--dir needs a folder")?.into(),
            "--filter" => filter = Some(it.next().context("--filter needs a pattern")?.clone()),
            other => bail!("unknown argument {other}"),
        }
    }
    let files = conformance::discover(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in files {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        match conformance::load(&path).and_then(|fx| conformance::run(&fx)) {
            Ok(()) => {
                passed += 1;
                println!("ok   {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0 && passed > 0)
}
