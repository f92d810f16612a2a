//! A connection's bytes: a TCP socket the server accepted, or any
//! `AsyncRead + AsyncWrite` handed to [`crate::ServerHandle::serve_connection`]
//! (in-process TLS, a test transport).
//!
//! The session reads only when bytes have arrived ([`Stream::readable`],
//! then [`Stream::try_read`]) so that an idle session holds no read buffer
//! (lease.rs). A socket says it is readable without reading; any other
//! stream is asked for one byte, kept until the next read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What [`Stream::Other`] holds: any byte stream.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}

/// A byte stream with the one byte read to learn that it is readable.
pub(crate) struct Other<T: ?Sized> {
    peeked: Option<u8>,
    eof: bool,
    io: T,
}

/// A connection's bytes.
pub(crate) enum Stream {
    /// A socket the server accepted.
    Tcp(TcpStream),
    /// Any other stream.
    Other(Box<Other<dyn AsyncIo>>),
}

impl Stream {
    /// Any `AsyncRead + AsyncWrite`.
    pub(crate) fn other(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) -> Self {
        let boxed: Box<Other<dyn AsyncIo>> = Box::new(Other {
            peeked: None,
            eof: false,
            io,
        });
        Self::Other(boxed)
    }

    /// Resolves once bytes (or the end of the stream) can be read.
    ///
    /// Cancel safety: a byte read from a stream other than a socket is
    /// kept in the stream, so dropping this future loses nothing.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// [`readable`](Self::readable) as a poll: a socket's readiness is
    /// its registration's (the last task to poll is woken), so waiting
    /// holds no waiter of its own (`TcpStream::readable`'s future is 152
    /// bytes of every idle session's task).
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_read_ready(cx),
            Self::Other(o) => o.poll_peek(cx),
        }
    }

    /// Reads what has arrived without waiting: `WouldBlock` when nothing
    /// has, `Ok(0)` at the end of the stream.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_read(buf),
            Self::Other(o) => {
                let mut cx = Context::from_waker(Waker::noop());
                match o.poll_read_into(&mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl Other<dyn AsyncIo> {
    /// Reads one byte into `peeked`, unless one is there or the stream
    /// has ended.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.peeked.is_some() || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                match rb.filled().first() {
                    Some(&b) => self.peeked = Some(b),
                    None => self.eof = true,
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The peeked byte, then what the stream has: `Ready` as soon as
    /// anything (or the end) is there.
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = 0;
        if let Some(b) = this.peeked.take() {
            buf[0] = b;
            n = 1;
        }
        if this.eof {
            return Poll::Ready(Ok(n));
        }
        let mut rb = ReadBuf::new(&mut buf[n..]);
        match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let more = rb.filled().len();
                if more == 0 && rb.capacity() > 0 {
                    this.eof = true;
                }
                Poll::Ready(Ok(n + more))
            }
            // The connection is broken: the peeked byte does not matter.
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if n > 0 => Poll::Ready(Ok(n)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Other(o) => {
                let dest = buf.initialize_unfilled();
                match o.poll_read_into(cx, dest) {
                    Poll::Ready(Ok(n)) => {
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Other(o) => Pin::new(&mut o.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Other(o) => Pin::new(&mut o.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Other(o) => Pin::new(&mut o.io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn other_streams_are_readable_without_losing_the_byte_read() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut s = Stream::other(far);
        let mut buf = [0u8; 8];
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        near.write_all(b"hello").await.unwrap();
        s.readable().await.unwrap();
        // Readable again at once: the byte is kept.
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        near.write_all(b"abc").await.unwrap();
        s.readable().await.unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        assert_eq!(s.try_read(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'c');
        s.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        near.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(near);
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut buf).unwrap(), 0);
        assert_eq!(s.try_read(&mut buf).unwrap(), 0);
    }
}
