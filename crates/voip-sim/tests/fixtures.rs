//! Runs every conformance fixture in `fixtures/` as a Rust test (the same runner as
//! `cargo xtask conformance`).

use std::path::Path;

#[test]
fn all_fixtures_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let files = voip_sim::conformance::discover(&dir).expect("fixtures folder");
    assert!(!files.is_empty(), "no fixtures found in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let result = voip_sim::conformance::load(path).and_then(|fx| {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            assert_eq!(fx.name, stem, "fixture name must equal its file name");
            voip_sim::conformance::run(&fx)
        });
        if let Err(e) = result {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
