//! Moving frames over a byte stream: the length prefix is checked by
//! tether-core's [`parse_header`]; this module only buffers bytes.

use std::io;

use tether_core::frame::{FrameError, HEADER_LEN, parse_header};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The length prefix is invalid (zero or above the maximum).
    #[error("{0}")]
    Frame(FrameError),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads whole frames from a stream. [`FrameReader::next`] is cancel-safe:
/// no byte is lost if its future is dropped before it completes. The buffer
/// starts small and grows to the largest frame actually received (at most
/// the capacity), so idle connections cost about 1 KiB.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
    capacity: usize,
}

/// Initial buffer size: the handshake's 512-byte frames plus room to read ahead.
const INITIAL_BUFFER: usize = 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader whose frames may be up to `capacity` bytes of body; the
    /// accepted maximum starts at `capacity` (see [`Self::set_max`]).
    pub fn new(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            buf: vec![0; INITIAL_BUFFER.min(HEADER_LEN + capacity)],
            start: 0,
            end: 0,
            max: capacity,
            capacity,
        }
    }

    /// Changes the largest accepted body (capped by the capacity).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(self.capacity);
    }

    /// The largest accepted body.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a whole frame (or a bad length prefix) is already buffered,
    /// so that the next [`Self::next`] returns without reading. The session
    /// answers every such frame before it writes, so that the replies to a
    /// burst of calls leave in one write.
    pub fn has_frame(&self) -> bool {
        let avail = self.end - self.start;
        if avail < HEADER_LEN {
            return false;
        }
        let header = [self.buf[self.start], self.buf[self.start + 1]];
        match parse_header(header, self.max) {
            Ok(len) => avail >= HEADER_LEN + len,
            Err(_) => true,
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next frame's body. A bad length prefix is an error as soon as
    /// its two bytes arrive.
    pub async fn next(&mut self) -> Result<&[u8], ReadError> {
        loop {
            let avail = self.end - self.start;
            let mut needed = HEADER_LEN;
            if avail >= HEADER_LEN {
                let header = [self.buf[self.start], self.buf[self.start + 1]];
                let len = parse_header(header, self.max).map_err(ReadError::Frame)?;
                if avail >= HEADER_LEN + len {
                    let body = self.start + HEADER_LEN..self.start + HEADER_LEN + len;
                    self.start = body.end;
                    return Ok(&self.buf[body]);
                }
                needed = HEADER_LEN + len;
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() < needed {
                self.buf.resize(needed, 0);
            }
            let n = self.inner.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(if self.end == self.start {
                    ReadError::Closed
                } else {
                    ReadError::Truncated
                });
            }
            self.end += n;
        }
    }

    /// Reads and discards input until the peer closes or `limit` bytes
    /// went by; used after a refusal so that closing does not reset the
    /// connection before the peer read the refusal.
    pub async fn drain(&mut self, limit: usize) {
        let mut seen = 0;
        while seen < limit {
            match self.inner.read(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_and_joined_arbitrarily() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 512);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in [
                &[0u8, 3, b'a'][..],
                b"bc",
                &[0, 1, b'x', 0],
                &[2, b'y', b'z'],
            ] {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(r.next().await.unwrap(), b"abc");
        assert_eq!(r.next().await.unwrap(), b"x");
        assert_eq!(r.next().await.unwrap(), b"yz");
        assert!(matches!(r.next().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn has_frame_says_whether_next_needs_the_socket() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 512);
        assert!(!r.has_frame());
        use tokio::io::AsyncWriteExt;
        // One whole frame and the first byte of the next one's body.
        a.write_all(&[0, 1, b'x', 0, 2, b'y']).await.unwrap();
        assert_eq!(r.next().await.unwrap(), b"x");
        assert!(!r.has_frame(), "half a frame is not a frame");
        a.write_all(b"z").await.unwrap();
        assert_eq!(r.next().await.unwrap(), b"yz");
        assert!(!r.has_frame());
        // A bad length is reported by next() without reading: it counts.
        a.write_all(&[0, 0]).await.unwrap();
        assert!(matches!(r.next().await, Err(ReadError::Frame(_))));
        assert!(r.has_frame());
    }

    #[tokio::test]
    async fn the_buffer_grows_to_large_frames_only() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 8192);
        assert!(r.buf.len() <= INITIAL_BUFFER);
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut frame = vec![0u8; body.len() + 2];
        tether_core::frame::write_frame(&body, &mut frame).unwrap();
        use tokio::io::AsyncWriteExt;
        a.write_all(&frame).await.unwrap();
        a.write_all(&[0, 1, 7]).await.unwrap();
        assert_eq!(r.next().await.unwrap(), &body[..]);
        assert_eq!(r.next().await.unwrap(), &[7]);
        assert!(r.buf.len() < 5000 + 16);
    }

    #[tokio::test]
    async fn bad_lengths_fail_at_the_header() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 512);
        r.set_max(10);
        use tokio::io::AsyncWriteExt;
        a.write_all(&[0, 11]).await.unwrap();
        assert!(matches!(
            r.next().await,
            Err(ReadError::Frame(FrameError::TooLong { len: 11, max: 10 }))
        ));
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 512);
        a.write_all(&[0, 0]).await.unwrap();
        assert!(matches!(
            r.next().await,
            Err(ReadError::Frame(FrameError::EmptyFrame))
        ));
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, 512);
        a.write_all(&[0, 5, 1]).await.unwrap();
        drop(a);
        assert!(matches!(r.next().await, Err(ReadError::Truncated)));
    }
}
