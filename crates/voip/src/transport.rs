//! The signalling side of the runtime: where the core's sends go and where its inputs come from.

use tokio::sync::mpsc;
use voip_core::{Input, SendRequest};

/// Executes the core's sends against a homeserver.
///
/// Implemented for `voip_matrix::MatrixAdapter` (feature `matrix`) and for
/// [`crate::local::LocalTransport`] (the in-process homeserver of the demo and of tests); an app
/// with its own Matrix stack implements it too.
///
/// # Contract
///
/// * [`Transport::submit`] never blocks: it queues the request.
/// * Every request's outcome comes back exactly once as [`Input::SendResult`] on the input
///   channel handed to [`crate::VoipBuilder`] together with the transport, including failures
///   (retrying is the transport's job; the core decides what a final failure means).
/// * Requests to the same room are executed in submission order.
pub trait Transport: Send + Sync + 'static {
    /// Queue `request` for execution.
    fn submit(&self, request: SendRequest);
}

/// Where the runtime reads its inputs from (homeserver events and send results).
#[derive(Debug)]
pub enum Inputs {
    /// A bounded channel (back-pressure on the sync loop, as `voip_matrix::MatrixAdapter` does).
    Bounded(mpsc::Receiver<Input>),
    /// An unbounded channel.
    Unbounded(mpsc::UnboundedReceiver<Input>),
}

impl Inputs {
    pub(crate) async fn recv(&mut self) -> Option<Input> {
        match self {
            Inputs::Bounded(rx) => rx.recv().await,
            Inputs::Unbounded(rx) => rx.recv().await,
        }
    }
}

impl Inputs {
    pub(crate) fn try_recv(&mut self) -> Option<Input> {
        match self {
            Inputs::Bounded(rx) => rx.try_recv().ok(),
            Inputs::Unbounded(rx) => rx.try_recv().ok(),
        }
    }
}

impl From<mpsc::Receiver<Input>> for Inputs {
    fn from(rx: mpsc::Receiver<Input>) -> Self {
        Inputs::Bounded(rx)
    }
}

impl From<mpsc::UnboundedReceiver<Input>> for Inputs {
    fn from(rx: mpsc::UnboundedReceiver<Input>) -> Self {
        Inputs::Unbounded(rx)
    }
}
