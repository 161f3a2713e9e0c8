//! Resource limits of the HTTP server (`[web]` in the TOML config): how many connections
//! at once, how long a client may take to send its request head (slowloris), how long a
//! connection may sit without any byte moving, and how large a request may be.
//!
//! hyper enforces the head deadline and size for HTTP/1; [`IdleTimeout`] closes any
//! connection (HTTP/1, HTTP/2, TLS or not) on which no byte moved for `idle_timeout`,
//! which also bounds a client that stops reading its response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time allowed for a request head (HTTP/1) and for the TLS handshake, from the
    /// moment the server waits for it. Also ends an idle HTTP/1 keep-alive connection.
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
}
