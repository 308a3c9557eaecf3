//! Event feeds with history: every subscriber sees everything a call (or group call) reported,
//! from its first event on, however late it subscribes. Feeds are [`futures_core::Stream`]s; use
//! [`crate::StreamExt::next`] for `while let Some(x) = feed.next().await`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// How many events a slow subscriber may fall behind before it misses some (it is told with a
/// warning in the log). Calls report a few dozen events in their lifetime.
const LAG: usize = 1024;

/// The sending side, kept by the driver per call or group call (in the shared feed registry).
#[derive(Debug)]
pub(crate) struct Feed<T: Clone> {
    history: Vec<T>,
    /// `None` once the runtime stopped: subscribers get the history, then the end.
    tx: Option<broadcast::Sender<T>>,
}

impl<T: Clone> Default for Feed<T> {
    fn default() -> Self {
        Self { history: Vec::new(), tx: Some(broadcast::channel(LAG).0) }
    }
}

impl<T: Clone + Send + 'static> Feed<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.history.push(item.clone());
        // No subscriber is fine: the history keeps it.
        if let Some(tx) = &self.tx {
            let _ = tx.send(item);
        }
    }

    /// Ends the live part for every subscriber (the runtime stopped).
    pub(crate) fn close(&mut self) {
        self.tx = None;
    }

    /// A subscription that first replays the history. Called under the feed registry's lock
    /// (never held across anything but this and [`Feed::push`]), so no event is missed or seen
    /// twice between the replay and the live part.
    pub(crate) fn subscribe(&self) -> Subscription<T> {
        Subscription {
            backlog: self.history.iter().cloned().collect(),
            rx: self.tx.as_ref().map(|tx| BroadcastStream::new(tx.subscribe())),
        }
    }
}

/// A stream of events: past ones first, then live ones. Ends once the source is gone (the call
/// record was dropped or the runtime stopped) and everything was read.
pub struct Subscription<T: Clone> {
    backlog: VecDeque<T>,
    rx: Option<BroadcastStream<T>>,
}

impl<T: Clone> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("backlog", &self.backlog.len())
            .field("live", &self.rx.is_some())
            .finish()
    }
}

// Never pinned structurally: the items are only moved in and out.
impl<T: Clone> Unpin for Subscription<T> {}

impl<T: Clone + Send + 'static> Subscription<T> {
    /// A subscription to a broadcast channel without history.
    pub(crate) fn live(rx: Option<broadcast::Receiver<T>>) -> Self {
        Self { backlog: VecDeque::new(), rx: rx.map(BroadcastStream::new) }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        let waker = std::task::Waker::noop();
        match Pin::new(self).poll_next(&mut Context::from_waker(waker)) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }
}

impl<T: Clone + Send + 'static> Stream for Subscription<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.backlog.pop_front() {
            return Poll::Ready(Some(item));
        }
        loop {
            let Some(rx) = self.rx.as_mut() else { return Poll::Ready(None) };
            match Pin::new(rx).poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => return Poll::Ready(Some(item)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    tracing::warn!(missed = n, "event subscriber fell behind; events were skipped");
                }
                Poll::Ready(None) => {
                    self.rx = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

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

    #[tokio::test]
    async fn a_closed_feed_replays_its_history_then_ends() {
        let mut feed = Feed::default();
        feed.push("a");
        let mut live = feed.subscribe();
        feed.close();
        let after = feed.subscribe();
        assert_eq!(live.next().await, Some("a"));
        assert_eq!(live.next().await, None, "the live part ended with the runtime");
        assert_eq!(after.collect::<Vec<_>>().await, vec!["a"]);
    }
}
