//! Event feeds with history: every subscriber sees everything a call (or group call) reported,
//! from its first event on, however late it subscribes.

use std::collections::VecDeque;

use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it misses some (it is told with a
/// warning in the log). Calls report a few dozen events in their lifetime.
const LAG: usize = 1024;

/// The sending side, kept by the runtime per call or group call.
#[derive(Debug)]
pub(crate) struct Feed<T: Clone> {
    history: Vec<T>,
    tx: broadcast::Sender<T>,
}

impl<T: Clone> Default for Feed<T> {
    fn default() -> Self {
        Self { history: Vec::new(), tx: broadcast::channel(LAG).0 }
    }
}

impl<T: Clone> Feed<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.history.push(item.clone());
        // No subscriber is fine: the history keeps it.
        let _ = self.tx.send(item);
    }

    /// A subscription that first replays the history. Called under the runtime's lock, so no
    /// event is missed or seen twice between the replay and the live part.
    pub(crate) fn subscribe(&self) -> Subscription<T> {
        Subscription { backlog: self.history.iter().cloned().collect(), rx: self.tx.subscribe() }
    }
}

/// A stream of events: past ones first, then live ones. `None` once the source is gone (the call
/// record was dropped or the runtime stopped) and everything was read.
#[derive(Debug)]
pub struct Subscription<T: Clone> {
    backlog: VecDeque<T>,
    rx: broadcast::Receiver<T>,
}

impl<T: Clone> Subscription<T> {
    /// The next event; waits for one.
    pub async fn next(&mut self) -> Option<T> {
        if let Some(item) = self.backlog.pop_front() {
            return Some(item);
        }
        loop {
            match self.rx.recv().await {
                Ok(item) => return Some(item),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event subscriber fell behind; events were skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        if let Some(item) = self.backlog.pop_front() {
            return Some(item);
        }
        loop {
            match self.rx.try_recv() {
                Ok(item) => return Some(item),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_subscribers_get_the_history_then_live_events() {
        let mut feed = Feed::default();
        feed.push(1);
        feed.push(2);
        let mut early = feed.subscribe();
        feed.push(3);
        let mut late = feed.subscribe();
        feed.push(4);
        for sub in [&mut early, &mut late] {
            let mut got = Vec::new();
            while let Some(x) = sub.try_next() {
                got.push(x);
            }
            assert_eq!(got, vec![1, 2, 3, 4]);
        }
        drop(feed);
        assert_eq!(early.next().await, None, "closed once the feed is gone");
    }
}
