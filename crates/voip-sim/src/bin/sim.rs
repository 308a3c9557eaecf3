//! Runs seeded fault scenarios and checks the invariants after every step (`cargo xtask sim`).
//!
//! ```text
//! sim [--seeds N] [--seed S] [--scenario one-to-one|mesh|sfu] [--replay FILE] [--shrink-budget N]
//! ```
//!
//! `--seed S` alone runs seed S; with `--seeds N` it runs seeds S..S+N (S defaults to 0). A
//! failure prints its seed and the shrunk trace, writes it to `target/sim-failures/`, and exits
//! with status 1; `--replay FILE` runs a written trace again.

use std::process::ExitCode;
use std::time::Instant;

use voip_sim::scenario::{shrink, Scenario, Trace};

struct Args {
    seeds: Option<u64>,
    seed: Option<u64>,
    scenarios: Vec<Scenario>,
    replay: Option<String>,
    shrink_budget: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { seeds: None, seed: None, scenarios: Scenario::ALL.to_vec(), replay: None, shrink_budget: 400 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seeds" => args.seeds = Some(value()?.parse().map_err(|e| format!("--seeds: {e}"))?),
            "--seed" => args.seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--scenario" => {
                let name = value()?;
                let s = Scenario::from_name(&name).ok_or_else(|| {
                    format!("unknown scenario {name:?} (one of: one-to-one, mesh, sfu)")
                })?;
                args.scenarios = vec![s];
            }
            "--replay" => args.replay = Some(value()?),
            "--shrink-budget" => {
                args.shrink_budget = value()?.parse().map_err(|e| format!("--shrink-budget: {e}"))?
            }
            "-h" | "--help" => {
                return Err("usage: sim [--seeds N] [--seed S] [--scenario one-to-one|mesh|sfu] [--replay FILE] [--shrink-budget N]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &args.replay {
        let trace = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|s| Trace::from_json(s.trim()).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot read trace {file}: {e}");
                return ExitCode::from(2);
            }
        };
        return match trace.run() {
            Ok(r) => {
                println!("replay {file}: ok ({} steps, {} checks)", r.steps, r.checks);
                ExitCode::SUCCESS
            }
            Err(v) => {
                println!("replay {file}: FAILED {v}");
                ExitCode::FAILURE
            }
        };
    }
    let (start, count) = match (args.seed, args.seeds) {
        (Some(s), None) => (s, 1),
        (s, n) => (s.unwrap_or(0), n.unwrap_or(100)),
    };
    let mut failed = false;
    for scenario in &args.scenarios {
        let t0 = Instant::now();
        let (mut steps, mut checks, mut batched, mut lost, mut dedup) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut ran = 0u64;
        for seed in start..start.saturating_add(count) {
            let trace = Trace::generate(*scenario, seed);
            ran += 1;
            match trace.run() {
                Ok(r) => {
                    steps += r.steps;
                    checks += r.checks;
                    batched += r.injected.batched;
                    lost += r.injected.lost_requests + r.injected.lost_responses;
                    dedup += r.injected.deduplicated;
                }
                Err(v) => {
                    failed = true;
                    println!("{scenario} seed {seed}: FAILED {v}");
                    let (small, sv) = shrink(&trace, &v, args.shrink_budget);
                    println!(
                        "  shrunk from {} to {} actions: {sv}",
                        trace.actions.len(),
                        small.actions.len()
                    );
                    println!("  trace: {}", small.to_json());
                    let dir = std::path::Path::new("target/sim-failures");
                    let file = dir.join(format!("{scenario}-{seed}.json"));
                    if std::fs::create_dir_all(dir)
                        .and_then(|_| std::fs::write(&file, small.to_json()))
                        .is_ok()
                    {
                        println!("  replay: cargo xtask sim --replay {}", file.display());
                    }
                    println!("  rerun:  cargo xtask sim --scenario {scenario} --seed {seed}");
                    break;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{scenario}: {ran} seeds in {secs:.2} s ({:.1} scenarios/s), {steps} steps, {checks} invariant checks; \
             faults: {lost} lost sends, {dedup} de-duplicated retries, {batched} batched deliveries",
            ran as f64 / secs.max(1e-9)
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
