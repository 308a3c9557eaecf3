//! Proptest strategies shared by the group property tests (`props_group`, `props_keys`): the
//! scenario actions of up to `n` devices and the network faults.
#![allow(dead_code)]

use proptest::prelude::*;
use voip_sim::scenario::Action;
use voip_sim::Faults;

/// How long and how often the scenario waits between other actions.
#[derive(Clone, Copy)]
pub enum Waits {
    /// Weight 2, up to 5 s: churn stays dense (mesh calls).
    Short,
    /// Weight 3, up to 15 s: lets key-use delays and grace periods pass (SFU keys).
    Long,
}

/// One scenario action on device `0..n`.
pub fn action(n: usize, waits: Waits) -> impl Strategy<Value = Action> {
    let wait = match waits {
        Waits::Short => (2u32, prop_oneof![0u64..100, 100u64..5_000].boxed()),
        Waits::Long => (3u32, prop_oneof![0u64..200, 200u64..15_000].boxed()),
    };
    prop_oneof![
        4 => (0..n).prop_map(|dev| Action::Join { dev }),
        2 => (0..n).prop_map(|dev| Action::Leave { dev }),
        1 => (0..n, 100u64..30_000).prop_map(|(dev, ms)| Action::Partition { dev, ms }),
        1 => (0..n, 100u64..10_000).prop_map(|(dev, ms)| Action::SyncGap { dev, ms }),
        1 => (0..n).prop_map(|dev| Action::Crash { dev }),
        1 => (0..n).prop_map(|dev| Action::Restart { dev }),
        wait.0 => wait.1.prop_map(|ms| Action::Wait { ms }),
    ]
}

/// Network faults of one run.
pub fn faults() -> impl Strategy<Value = Faults> {
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
