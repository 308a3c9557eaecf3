//! Property test of mesh group calls with 2 to 8 devices, through the shared scenario runner
//! (`voip_sim::scenario`, the same as `cargo xtask sim --scenario mesh`): after any sequence of
//! joins, leaves, partitions, sync gaps, crashes and restarts, over jitter, failing and lost
//! sends, duplicates and clock skew, every invariant holds after every step, and once things
//! settle every pair of present members has exactly one connected peer call and everyone sees
//! the present members.

mod strategies;

use proptest::prelude::*;
use strategies::{action, faults, Waits};
use voip_sim::scenario::{Action, Scenario, Trace};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mesh_converges_after_churn(
        n in 2usize..=8,
        seed in any::<u64>(),
        faults in faults(),
        delayed_events in any::<bool>(),
        actions in prop::collection::vec(action(8, Waits::Short), 1..16),
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
