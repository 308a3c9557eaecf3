//! The async runtime given to webrtc-rs: tokio, plus accounting and a network switch.
//!
//! Every task webrtc-rs spawns and every UDP socket it opens for this engine goes through
//! [`EngineRuntime`], which counts them (so tests and apps can check that a hangup leaves
//! nothing behind: [`crate::WebrtcEngine::resources`]) and can black-hole all datagrams of the
//! engine ([`NetworkSwitch`], used to force an ICE failure in tests).

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Blocks or passes all UDP traffic of one engine. Cheap to clone; clones share the state.
///
/// While blocked, datagrams the engine sends are dropped and datagrams that arrive are
/// discarded, as if the network had gone away. Meant for tests (forcing ICE to fail) and for
/// simulating network loss in apps.
#[derive(Clone, Debug, Default)]
pub struct NetworkSwitch(Arc<AtomicBool>);

impl NetworkSwitch {
    /// A switch that lets traffic through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop all traffic (`true`) or let it through again (`false`).
    pub fn set_blocked(&self, blocked: bool) {
        self.0.store(blocked, Ordering::SeqCst);
    }

    /// Whether traffic is being dropped.
    pub fn is_blocked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Live resources of an engine: tasks (webrtc-rs drivers, the engine's own call, source and
/// sink tasks) and UDP sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Tasks spawned through the engine and still alive.
    pub tasks: usize,
    /// UDP sockets opened by webrtc-rs and not yet dropped.
    pub udp_sockets: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    tasks: AtomicUsize,
    sockets: AtomicUsize,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Resources {
        Resources {
            tasks: self.tasks.load(Ordering::SeqCst),
            udp_sockets: self.sockets.load(Ordering::SeqCst),
        }
    }
}

/// Decrements a counter when dropped (a task finished or was aborted, a socket was dropped).
#[derive(Debug)]
pub(crate) struct Guard(Arc<Counters>, bool);

impl Guard {
    pub(crate) fn task(counters: &Arc<Counters>) -> Self {
        counters.tasks.fetch_add(1, Ordering::SeqCst);
        Guard(counters.clone(), true)
    }

    fn socket(counters: &Arc<Counters>) -> Self {
        counters.sockets.fetch_add(1, Ordering::SeqCst);
        Guard(counters.clone(), false)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let c = if self.1 { &self.0.tasks } else { &self.0.sockets };
        c.fetch_sub(1, Ordering::SeqCst);
    }
}

/// tokio for webrtc-rs, with task/socket accounting and a [`NetworkSwitch`].
pub(crate) struct EngineRuntime {
    inner: TokioRuntime,
    counters: Arc<Counters>,
    switch: NetworkSwitch,
}

impl fmt::Debug for EngineRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineRuntime").field("resources", &self.counters.snapshot()).finish()
    }
}

impl EngineRuntime {
    pub(crate) fn new(counters: Arc<Counters>, switch: NetworkSwitch) -> Self {
        Self { inner: TokioRuntime, counters, switch }
    }
}

impl Runtime for EngineRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        let guard = Guard::task(&self.counters);
        self.inner.spawn(Box::pin(async move {
            let _guard = guard;
            future.await;
        }))
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = self.inner.wrap_udp_socket(socket)?;
        Ok(Arc::new(SwitchedSocket {
            inner,
            switch: self.switch.clone(),
            _guard: Guard::socket(&self.counters),
        }))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "voip-webrtc (tokio)"
    }
}

#[derive(Debug)]
struct SwitchedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    switch: NetworkSwitch,
    _guard: Guard,
}

impl AsyncUdpSocket for SwitchedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.switch.is_blocked() {
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Discard and poll again, so the waker stays registered with the socket.
                Poll::Ready(Ok(_)) if self.switch.is_blocked() => continue,
                other => return other,
            }
        }
    }
}
