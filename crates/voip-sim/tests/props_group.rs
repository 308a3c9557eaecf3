//! Property test of mesh group calls with 2 to 8 devices, through the shared scenario runner
//! (`voip_sim::scenario`, the same as `cargo xtask sim --scenario mesh`): after any sequence of
//! joins, leaves, partitions, sync gaps, crashes and restarts, over jitter, failing and lost
//! sends, duplicates and clock skew, every invariant holds after every step, and once things
//! settle every pair of present members has exactly one connected peer call and everyone sees
//! the present members.

use proptest::prelude::*;
use voip_sim::scenario::{Action, Scenario, Trace};
use voip_sim::Faults;

fn action(n: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..n).prop_map(|dev| Action::Join { dev }),
        2 => (0..n).prop_map(|dev| Action::Leave { dev }),
        1 => (0..n, 100u64..30_000).prop_map(|(dev, ms)| Action::Partition { dev, ms }),
        1 => (0..n, 100u64..10_000).prop_map(|(dev, ms)| Action::SyncGap { dev, ms }),
        1 => (0..n).prop_map(|dev| Action::Crash { dev }),
        1 => (0..n).prop_map(|dev| Action::Restart { dev }),
        2 => prop_oneof![0u64..100, 100u64..5_000].prop_map(|ms| Action::Wait { ms }),
    ]
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        0u64..200,
        prop_oneof![Just(0.0), 0.0f64..0.15],
        prop_oneof![Just(0.0), 0.0f64..0.2],
        prop_oneof![Just(0.0), 0.0f64..0.15],
        prop_oneof![Just(0u64), 0u64..3_000],
    )
        .prop_map(|(jitter_ms, send_failure, duplicate, drop, clock_skew_ms)| Faults {
            jitter_ms,
            send_failure,
            duplicate,
            drop,
            clock_skew_ms,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mesh_converges_after_churn(
        n in 2usize..=8,
        seed in any::<u64>(),
        faults in faults(),
        delayed_events in any::<bool>(),
        actions in prop::collection::vec(action(8), 1..16),
    ) {
        let actions = actions.into_iter().filter(|a| !matches!(a,
            Action::Join { dev } | Action::Leave { dev } | Action::Partition { dev, .. } | Action::SyncGap { dev, .. }
            | Action::Crash { dev } | Action::Restart { dev } if *dev >= n)).collect();
        let trace = Trace { scenario: Scenario::Mesh, seed, devices: (0..n).collect(), faults, delayed_events, famedly: true, actions };
        if let Err(v) = trace.run() {
            prop_assert!(false, "{v}\ntrace: {}", trace.to_json());
        }
    }
}
