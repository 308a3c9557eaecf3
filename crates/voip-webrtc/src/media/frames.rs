//! The reader side of a remote track's decoded frames, shared by audio and video.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// Frames from a track's broadcast channel; a reader that falls behind skips the oldest frames
/// and counts them.
pub(crate) struct Frames<T> {
    rx: BroadcastStream<T>,
    lagged: u64,
}

impl<T> std::fmt::Debug for Frames<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames").field("lagged", &self.lagged).finish_non_exhaustive()
    }
}

impl<T: Clone + Send + 'static> Frames<T> {
    pub(crate) fn new(rx: broadcast::Receiver<T>) -> Self {
        Frames { rx: BroadcastStream::new(rx), lagged: 0 }
    }

    pub(crate) fn lagged(&self) -> u64 {
        self.lagged
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.rx).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(frame)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => self.lagged += n,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub(crate) async fn next(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }
}
