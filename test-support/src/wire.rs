//! A test peer's frame reader over a tokio stream, built on tether-core's
//! [`FrameDecoder`] (the one that checks length prefixes), with a
//! read-ahead so that [`FrameReader::next`] is cancel-safe: no byte is lost
//! if its future is dropped before it completes.

use std::io;

use tether_core::frame::{FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Why no frame could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// The length prefix is invalid (zero or above the maximum).
    Frame(FrameError),
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("connection closed"),
            Self::Truncated => f.write_str("connection closed in the middle of a frame"),
            Self::Frame(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads whole frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder<Vec<u8>>,
    ahead: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frame bodies up to `capacity` bytes.
    pub fn new(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(vec![0; capacity], capacity),
            ahead: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Changes the largest accepted body (capped by the capacity).
    pub fn set_max(&mut self, max: usize) {
        self.decoder.set_max(max);
    }

    /// The next frame's body. A bad length prefix is an error as soon as
    /// its two bytes arrive.
    pub async fn next(&mut self) -> Result<&[u8], ReadError> {
        loop {
            if self.decoder.has_frame() {
                return Ok(self.decoder.take_frame().unwrap_or_default());
            }
            if self.start < self.end {
                let dest = self.decoder.receive_buffer();
                let k = dest.len().min(self.end - self.start);
                dest[..k].copy_from_slice(&self.ahead[self.start..self.start + k]);
                self.start += k;
                self.decoder.commit(k).map_err(ReadError::Frame)?;
                continue;
            }
            let n = self
                .inner
                .read(&mut self.ahead)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(match self.decoder.finish() {
                    Ok(()) => ReadError::Closed,
                    Err(_) => ReadError::Truncated,
                });
            }
            (self.start, self.end) = (0, n);
        }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}
