//! Replays every fuzz input found so far (`fuzz/corpus/<target>/*` and the crashes turned
//! regressions in `fuzz/artifacts/<target>/*`) through the same harness functions the fuzz
//! targets use (`voip_sim::fuzzing`), as an ordinary test. See docs/fuzzing.md.

use std::path::Path;

use voip_sim::fuzzing::TARGETS;

#[test]
fn every_fuzz_input_found_so_far_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut total = 0;
    for (target, harness) in TARGETS {
        let mut n = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
            for e in entries {
                let path = e.expect("readable").path();
                let data = std::fs::read(&path).expect("readable");
                let r = std::panic::catch_unwind(|| harness(&data));
                assert!(r.is_ok(), "{target}: {} fails its harness", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "{target}: no corpus");
        total += n;
    }
    assert!(total >= 4);
}
