//! The fault scenarios of `cargo xtask sim`, as tests: every regression trace in
//! `fixtures/sim/` (each once found a bug or a false alarm) replays without a violation, a few
//! seeds of every scenario pass, and a seed always replays the same way.

use std::path::Path;

use voip_sim::scenario::{Scenario, Trace};

fn traces() -> Vec<(String, Trace)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sim");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/sim exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (p.display().to_string(), Trace::from_json(text.trim()).expect("a trace"))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn regression_traces_replay_cleanly() {
    let traces = traces();
    assert!(traces.len() >= 7, "the regression traces are there");
    for (name, trace) in traces {
        let report = trace.run().unwrap_or_else(|v| panic!("{name}: {v}"));
        assert!(report.checks > 0, "{name}: checked");
    }
}

#[test]
fn a_few_seeds_of_every_scenario_keep_every_invariant() {
    for scenario in Scenario::ALL {
        for seed in 1000..1004 {
            let trace = Trace::generate(scenario, seed);
            if let Err(v) = trace.run() {
                panic!("{scenario} seed {seed}: {v}\ntrace: {}", trace.to_json());
            }
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_way() {
    for scenario in Scenario::ALL {
        let a = Trace::generate(scenario, 42);
        let b = Trace::generate(scenario, 42);
        assert_eq!(a, b, "{scenario}: generation is deterministic");
        let json = Trace::from_json(&a.to_json()).expect("round-trips");
        assert_eq!(json, a);
        let (ra, sa) = a.run_keeping_sim();
        let (rb, sb) = b.run_keeping_sim();
        let (ra, rb) = (ra.expect("passes"), rb.expect("passes"));
        assert_eq!((ra.steps, ra.checks, ra.injected), (rb.steps, rb.checks, rb.injected), "{scenario}");
        for i in 0..sa.len() {
            let d = voip_sim::DeviceIdx(i);
            assert_eq!(sa.device(d).outputs, sb.device(d).outputs, "{scenario}: device {i} did the same");
        }
    }
}
