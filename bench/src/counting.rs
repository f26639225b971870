//! A TCP stream that counts the bytes read from it: what a subscriber's socket received,
//! WebSocket framing included (the payload of the TCP segments, not their headers), so a
//! scenario can report bytes on the wire per delivery for each system alike.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read by every stream that shares it.
pub type ReadCounter = Arc<AtomicU64>;

pub struct CountingStream {
    inner: TcpStream,
    read: ReadCounter,
}

impl CountingStream {
    pub fn new(inner: TcpStream, read: ReadCounter) -> Self {
        Self { inner, read }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            self.read.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bytes per delivery between two samples of a counter; `None` without deliveries.
pub fn bytes_per_delivery(before: u64, after: u64, deliveries: usize) -> Option<f64> {
    (deliveries > 0).then(|| after.saturating_sub(before) as f64 / deliveries as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_what_is_read_not_what_is_written() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&[7; 300]).await.unwrap();
            let mut got = [0; 5];
            socket.read_exact(&mut got).await.unwrap();
        });
        let counter = ReadCounter::default();
        let mut stream =
            CountingStream::new(TcpStream::connect(address).await.unwrap(), counter.clone());
        stream.write_all(b"hello").await.unwrap();
        let mut got = vec![0; 300];
        stream.read_exact(&mut got).await.unwrap();
        server.await.unwrap();
        assert_eq!(counter.load(Ordering::Relaxed), 300);
        assert_eq!(bytes_per_delivery(100, 400, 2), Some(150.0));
        assert_eq!(bytes_per_delivery(0, 0, 0), None);
    }
}
