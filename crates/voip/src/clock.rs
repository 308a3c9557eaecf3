//! Time for the driver: the core never reads a clock, the driver asks a [`Clock`] for `now` and
//! for a sleep until the core's next deadline. [`SystemClock`] is wall-clock time on tokio's
//! timer; [`ManualClock`] is moved by hand (tests, simulations).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use voip_core::Timestamp;

/// A sleep returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the driver's time comes from.
///
/// The core counts time as [`Timestamp`]s (milliseconds since the Unix epoch, as Matrix
/// `origin_server_ts` does), so [`Clock::now`] is wall-clock-like; [`Clock::sleep_until`] resolves
/// once [`Clock::now`] has reached `at` (it may resolve a little early or late: the driver asks
/// the core again and re-arms).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// A future that resolves when the clock reaches `at`.
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// Wall-clock time (`SystemTime`) with tokio's timer for sleeps. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        system_now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        Box::pin(tokio::time::sleep(Duration::from_millis(at.since(system_now()))))
    }
}

/// Wall-clock time as the core counts it (ms since the Unix epoch).
pub(crate) fn system_now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// A clock that moves only when told to ([`ManualClock::advance`], [`ManualClock::set`]): for
/// tests and simulations that drive a runtime through hours of protocol time in milliseconds.
/// Cheap to clone; clones are the same clock.
///
/// ```
/// use voip::clock::{Clock, ManualClock};
/// use voip::core::Timestamp;
/// let clock = ManualClock::new(Timestamp(1_000));
/// clock.advance(500);
/// assert_eq!(clock.now(), Timestamp(1_500));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self { now: Arc::new(watch::channel(start).0) }
    }

    /// Moves the clock forward by `ms`; sleeps that are due resolve.
    pub fn advance(&self, ms: u64) {
        self.now.send_modify(|t| *t = t.plus(ms));
    }

    /// Moves the clock to `at` (never backwards: an earlier `at` is ignored).
    pub fn set(&self, at: Timestamp) {
        self.now.send_if_modified(|t| {
            let later = at > *t;
            if later {
                *t = at;
            }
            later
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; a clock that is gone never wakes us.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_resolves_when_the_clock_reaches_it() {
        let clock = ManualClock::new(Timestamp(100));
        let mut sleep = clock.sleep_until(Timestamp(150));
        assert!(futures_util::poll!(&mut sleep).is_pending());
        clock.advance(49);
        assert!(futures_util::poll!(&mut sleep).is_pending());
        clock.set(Timestamp(10));
        assert_eq!(clock.now(), Timestamp(149), "never backwards");
        clock.advance(1);
        assert!(futures_util::poll!(&mut sleep).is_ready());
    }

    #[test]
    fn system_time_is_wall_clock() {
        let now = SystemClock.now();
        assert!(now.0 > 1_700_000_000_000, "{now:?}");
    }
}
