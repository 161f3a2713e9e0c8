//! The response body type of the web layer: shared byte chunks sent as they are.
//!
//! `/metrics` hands out the cached exposition's chunks (one reference-count increment);
//! every other answer is a single chunk. The exact length is known up front, so HTTP/1
//! responses carry `Content-Length` rather than chunked encoding. [`Tracked`] holds a
//! value for as long as the body is being sent.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::Exposition;

#[derive(Debug)]
pub struct ChunksBody {
    chunks: Arc<[Bytes]>,
    next: usize,
    remaining: u64,
}

impl ChunksBody {
    pub fn exposition(e: &Exposition) -> Self {
        Self {
            chunks: e.shared_chunks(),
            next: 0,
            remaining: e.len() as u64,
        }
    }
}

impl From<Bytes> for ChunksBody {
    fn from(b: Bytes) -> Self {
        let remaining = b.len() as u64;
        Self {
            chunks: Arc::from(vec![b]),
            next: 0,
            remaining,
        }
    }
}

impl Body for ChunksBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        while let Some(chunk) = self.chunks.get(self.next).cloned() {
            self.next += 1;
            if !chunk.is_empty() {
                self.remaining -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A response body that keeps `guard` alive until the body has been sent in full (or
/// the connection ended): the server learns when a request is really finished.
#[derive(Debug)]
pub struct Tracked<G> {
    body: ChunksBody,
    _guard: G,
}

impl ChunksBody {
    pub fn tracked<G>(self, guard: G) -> Tracked<G> {
        Tracked {
            body: self,
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for Tracked<G> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn sends_every_chunk_in_order_with_an_exact_length() {
        let mut text = crate::metrics::chunked::ChunkedText::default();
        let mut i = 0;
        while text.len() < 2 * crate::metrics::chunked::CHUNK_BYTES + 100 {
            text.push_str(&format!("line {i}\n"));
            i += 1;
        }
        let e = text.finish();
        assert!(e.chunks().len() > 1);
        let body = ChunksBody::exposition(&e);
        assert_eq!(body.size_hint().exact(), Some(e.len() as u64));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(collected.as_ref(), e.to_vec().as_slice());

        let one = ChunksBody::from(Bytes::from_static(b"Ready\n"));
        assert_eq!(one.size_hint().exact(), Some(6));
        let empty = ChunksBody::from(Bytes::new());
        assert!(empty.is_end_stream());
    }
}
