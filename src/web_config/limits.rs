//! Resource limits of the HTTP server (`[web]` in the TOML config): how many connections
//! at once, how long a client may take to send its request head (slowloris), how long a
//! connection may sit without any byte moving, and how large a request may be.
//!
//! The server closes a connection that has not sent a complete first request head within
//! `header_read_timeout` of being accepted (the TLS handshake included); hyper enforces
//! the same deadline for each later HTTP/1 head, and the head size. [`IdleTimeout`]
//! closes any connection (HTTP/1, HTTP/2, TLS or not) on which no byte moved for
//! `idle_timeout`, which also bounds a client that stops reading its response.
//!
//! [`ConnectionTable`] holds the `max_connections` cap. A new client is always accepted:
//! at the cap the connection that is cheapest to lose is closed to make room (one that
//! has not finished its first request head, else the longest idle, else the longest
//! busy), so silent or trickling sockets can delay a fresh scrape by nothing, and can
//! never keep it waiting in the kernel's accept queue.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Connections served at once; a new one beyond this closes the connection that is
    /// cheapest to lose (see [`ConnectionTable`]).
    pub max_connections: usize,
    /// Time allowed for the first request head from the moment the connection is
    /// accepted (TLS handshake included), and for each later HTTP/1 head from the moment
    /// the server waits for it. Also ends an idle HTTP/1 keep-alive connection.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (request line + headers); larger gets 431 (HTTP/1) or a
    /// stream error (HTTP/2). At least 8 KiB (hyper's smallest read buffer).
    pub max_header_bytes: usize,
    /// Largest request body; every endpoint is GET, so bodies are refused with 413
    /// above this and never read into memory.
    pub max_request_body_bytes: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            max_request_body_bytes: 64 * 1024,
        }
    }
}

/// hyper's HTTP/1 read buffer cannot be smaller than this.
pub const MIN_HEADER_BYTES: usize = 8192;

/// An IO stream that fails with `TimedOut` once a read or write has been pending, with
/// no byte moved in either direction, for the idle timeout.
pub struct IdleTimeout<I> {
    io: I,
    idle: Duration,
    last_progress: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<I> IdleTimeout<I> {
    pub fn new(io: I, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            idle,
            last_progress: now,
            sleep: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when the inner IO is pending: times out once nothing moved for `idle`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = self.last_progress + self.idle;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.stalled(cx),
        }
    }
}

/// Where a connection is in its life, in the order connections are closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Accepted, first request head not complete yet (TLS handshake, HTTP/2 preface or
    /// head still coming): nothing has been served, so nothing is lost by closing it.
    Opening,
    /// Between requests (keep-alive): the client reconnects when it needs to.
    Idle,
    /// A request is being answered.
    Busy,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Opening => "without a complete request head",
            Stage::Idle => "idle",
            Stage::Busy => "busy",
        }
    }
}

struct Entry {
    stage: Stage,
    /// When the connection entered its stage.
    since: Instant,
    in_flight: usize,
    close: CancellationToken,
}

/// The connections being served, at most `cap` of them.
pub struct ConnectionTable {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
}

impl ConnectionTable {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections currently counted against the cap.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a newly accepted connection. At the cap, first closes the connection that
    /// is cheapest to lose: the lowest [`Stage`], and within it the one that has been in
    /// that stage longest. Returns the new connection's slot and the stage of the one
    /// closed, if any.
    pub fn admit(self: &Arc<Self>) -> (Arc<ConnectionSlot>, Option<Stage>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut evicted = None;
        while inner.conns.len() >= self.cap {
            let victim = inner
                .conns
                .iter()
                .min_by_key(|(_, e)| (e.stage, e.since))
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            if let Some(e) = inner.conns.remove(&id) {
                e.close.cancel();
                evicted = Some(e.stage);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let close = CancellationToken::new();
        inner.conns.insert(
            id,
            Entry {
                stage: Stage::Opening,
                since: now,
                in_flight: 0,
                close: close.clone(),
            },
        );
        let slot = Arc::new(ConnectionSlot {
            table: self.clone(),
            id,
            close,
        });
        (slot, evicted)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().conns.get_mut(&id) {
            f(e);
        }
    }
}

/// One connection's place in the [`ConnectionTable`]; freed when dropped.
pub struct ConnectionSlot {
    table: Arc<ConnectionTable>,
    id: u64,
    close: CancellationToken,
}

impl ConnectionSlot {
    /// Completes when the connection has been chosen to make room for a new one.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.close.clone().cancelled_owned()
    }

    /// Whether a complete request head has arrived on this connection.
    pub fn head_seen(&self) -> bool {
        let inner = self.table.lock();
        inner
            .conns
            .get(&self.id)
            .is_none_or(|e| e.stage != Stage::Opening)
    }

    /// A request head arrived: the connection is busy until the returned guard (kept
    /// with the response body) is dropped.
    pub fn request_started(&self) -> RequestGuard {
        self.table.update(self.id, |e| {
            e.in_flight += 1;
            if e.stage != Stage::Busy {
                e.stage = Stage::Busy;
                e.since = Instant::now();
            }
        });
        RequestGuard {
            table: self.table.clone(),
            id: self.id,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.table.lock().conns.remove(&self.id);
    }
}

/// One request in flight; the connection turns idle when its last one is dropped.
pub struct RequestGuard {
    table: Arc<ConnectionTable>,
    id: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.table.update(self.id, |e| {
            e.in_flight = e.in_flight.saturating_sub(1);
            if e.in_flight == 0 {
                e.stage = Stage::Idle;
                e.since = Instant::now();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let idle = Duration::from_millis(400);
        let mut io = IdleTimeout::new(a, idle);
        let mut buf = [0u8; 8];
        // A byte every 150 ms: never idle for 400 ms, though the whole exchange
        // takes longer than that.
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = b.write_all(b"x").await;
            }
            // Then silence, with the peer still connected.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(b);
        });
        let started = Instant::now();
        for _ in 0..4 {
            assert_eq!(io.read(&mut buf).await.expect("byte"), 1);
        }
        assert!(started.elapsed() > idle);
        let silent_from = Instant::now();
        let err = io.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = silent_from.elapsed();
        assert!(waited >= idle - Duration::from_millis(10), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        writer.abort();
    }

    #[tokio::test]
    async fn at_the_cap_the_cheapest_connection_makes_room() {
        let table = ConnectionTable::new(3);
        let (busy, _) = table.admit();
        let (idle, _) = table.admit();
        let (opening, _) = table.admit();
        let _request = busy.request_started();
        drop(idle.request_started());
        assert_eq!(table.len(), 3);
        assert!(busy.head_seen() && idle.head_seen() && !opening.head_seen());

        // The newest connection, but the only one without a request: closed first.
        let (fourth, evicted) = table.admit();
        assert_eq!(evicted, Some(Stage::Opening));
        assert!(opening.close.is_cancelled());
        assert_eq!(table.len(), 3);
        // Without one, the longest idle; the busy ones last, the longest busy first.
        let _fourth_request = fourth.request_started();
        let (fifth, evicted) = table.admit();
        assert_eq!(evicted, Some(Stage::Idle));
        assert!(idle.close.is_cancelled());
        let _fifth_request = fifth.request_started();
        let (_sixth, evicted) = table.admit();
        assert_eq!(evicted, Some(Stage::Busy));
        assert!(busy.close.is_cancelled(), "the longest busy goes first");
        assert!(!fourth.close.is_cancelled() && !fifth.close.is_cancelled());

        // A slot dropped frees its place; an evicted one is not counted twice.
        assert_eq!(table.len(), 3);
        drop((opening, busy, idle));
        assert_eq!(table.len(), 3);
        drop(fourth);
        assert_eq!(table.len(), 2);
    }
}
