//! Property test of SFU media keys with 2 to 8 devices, both key transports, through the shared
//! scenario runner (`cargo xtask sim --scenario sfu` runs the same): after any sequence of joins,
//! leaves, partitions, sync gaps, crashes, restarts and waits, over network faults, no key ever
//! reaches a non-member (checked after every step), and every present member ends up holding
//! every other present member's key in use.

mod strategies;

use proptest::prelude::*;
use strategies::{action, faults, Waits};
use voip_sim::scenario::{Action, Scenario, Trace};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn keys_converge_and_never_reach_non_members(
        n in 2usize..=8,
        famedly in any::<bool>(),
        seed in any::<u64>(),
        faults in faults(),
        delayed_events in any::<bool>(),
        actions in prop::collection::vec(action(8, Waits::Long), 1..14),
    ) {
        let actions = actions.into_iter().filter(|a| !matches!(a,
            Action::Join { dev } | Action::Leave { dev } | Action::Partition { dev, .. } | Action::SyncGap { dev, .. }
            | Action::Crash { dev } | Action::Restart { dev } if *dev >= n)).collect();
        let trace = Trace { scenario: Scenario::Sfu, seed, devices: (0..n).collect(), faults, delayed_events, famedly, actions };
        if let Err(v) = trace.run() {
            prop_assert!(false, "{v}\ntrace: {}", trace.to_json());
        }
    }
}
