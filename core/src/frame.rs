//! Framing: every message travels as a `u16` big-endian body length (never 0)
//! followed by that many bytes of body.
//!
//! [`FrameDecoder`] takes input in whatever chunks the transport delivers and
//! hands back whole frame bodies from a caller-provided buffer; [`write_frame`]
//! and [`encode_message`] write frames into a caller slice. A length of zero or
//! one above the receiver's maximum is rejected as soon as the two header bytes
//! arrive, so a peer can never make the receiver wait for bytes that it would
//! refuse anyway.

use core::fmt;

use serde::Serialize;

use crate::message::{EncodeError, Handshake};

/// Bytes taken by the length prefix.
pub const HEADER_LEN: usize = 2;

/// The smallest maximum body length a peer may announce; every handshake
/// message fits in it, so it is the limit before the handshake negotiates one.
pub const MIN_MAX_FRAME: u16 = 512;

/// The wire default port of Tether.
pub const DEFAULT_PORT: u16 = 7420;

/// What went wrong with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix was 0: every frame carries at least one byte.
    EmptyFrame,
    /// The length prefix announced more than the receiver accepts.
    TooLong {
        /// The announced body length.
        len: usize,
        /// The receiver's maximum body length.
        max: usize,
    },
    /// The input ended in the middle of a frame.
    Truncated {
        /// Bytes the frame still needed.
        missing: usize,
    },
    /// The caller's buffer cannot hold a frame of the allowed size.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The message could not be encoded (postcard serialization failed).
    Encode,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyFrame => f.write_str("frame with length 0"),
            Self::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            Self::Truncated { missing } => {
                write!(f, "input ended {missing} bytes before the end of a frame")
            }
            Self::BufferTooSmall { needed, available } => {
                write!(f, "buffer of {available} bytes, {needed} needed")
            }
            Self::Encode => f.write_str("message could not be encoded"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Checks a length prefix against the receiver's maximum and returns the body
/// length it announces.
pub fn parse_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u16::from_be_bytes(header) as usize;
    if len == 0 {
        Err(FrameError::EmptyFrame)
    } else if len > max {
        Err(FrameError::TooLong { len, max })
    } else {
        Ok(len)
    }
}

/// Writes `body` as one frame (length prefix + body) at the start of `out` and
/// returns the written frame.
pub fn write_frame<'o>(body: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], FrameError> {
    let len = body.len();
    if len == 0 {
        return Err(FrameError::EmptyFrame);
    }
    if len > u16::MAX as usize {
        return Err(FrameError::TooLong {
            len,
            max: u16::MAX as usize,
        });
    }
    let total = HEADER_LEN + len;
    let available = out.len();
    let out = out.get_mut(..total).ok_or(FrameError::BufferTooSmall {
        needed: total,
        available,
    })?;
    out[..HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
    out[HEADER_LEN..].copy_from_slice(body);
    Ok(out)
}

/// Encodes `msg` with postcard directly into a frame at the start of `out`
/// (no intermediate copy) and returns the frame. `max` is the peer's maximum
/// body length.
pub fn encode_message<'o, T: Serialize + ?Sized>(
    msg: &T,
    out: &'o mut [u8],
    max: usize,
) -> Result<&'o [u8], FrameError> {
    encode_frame(out, max, |body| {
        crate::message::encode(msg, body).map(|b| b.len())
    })
}

/// [`encode_message`] for a handshake message, through its hand-written
/// encoder ([`Handshake::encode`]): the same bytes with less code, for
/// devices.
pub fn encode_handshake<'o>(
    msg: &Handshake<'_>,
    out: &'o mut [u8],
    max: usize,
) -> Result<&'o [u8], FrameError> {
    encode_frame(out, max, |body| msg.encode(body).map(|b| b.len()))
}

/// Runs `encode` on the body part of `out` and finishes the frame.
fn encode_frame(
    out: &mut [u8],
    max: usize,
    encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<&[u8], FrameError> {
    let available = out.len();
    let body_room = available
        .checked_sub(HEADER_LEN)
        .ok_or(FrameError::BufferTooSmall {
            needed: HEADER_LEN + 1,
            available,
        })?;
    let len = encode(&mut out[HEADER_LEN..]).map_err(|e| match e {
        EncodeError::BufferFull => FrameError::BufferTooSmall {
            needed: available + 1,
            available: body_room,
        },
        EncodeError::Unencodable => FrameError::Encode,
    })?;
    finish_frame(out, len, max)
}

/// Fills in the length prefix of a frame whose `len`-byte body was already
/// written at `out[HEADER_LEN..]`.
pub(crate) fn finish_frame(out: &mut [u8], len: usize, max: usize) -> Result<&[u8], FrameError> {
    if len == 0 {
        return Err(FrameError::EmptyFrame);
    }
    let max = max.min(u16::MAX as usize);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
    Ok(&out[..HEADER_LEN + len])
}

/// Incremental frame decoder over a caller-provided body buffer.
///
/// ```
/// use tether_core::frame::{FrameDecoder, write_frame};
/// let mut wire = [0u8; 16];
/// let n = write_frame(b"hello", &mut wire).unwrap().len();
///
/// let mut buf = [0u8; 512];
/// let mut decoder = FrameDecoder::new(&mut buf, 512);
/// // Bytes may arrive one at a time: the decoder keeps what it has.
/// let mut frames = 0;
/// for byte in &wire[..n] {
///     let (used, frame) = decoder.push(core::slice::from_ref(byte)).unwrap();
///     assert_eq!(used, 1);
///     if let Some(body) = frame {
///         assert_eq!(body, b"hello");
///         frames += 1;
///     }
/// }
/// assert_eq!(frames, 1);
/// assert!(decoder.finish().is_ok());
/// ```
#[derive(Debug)]
pub struct FrameDecoder<'b> {
    buf: &'b mut [u8],
    max: usize,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    /// Body length of the frame being read, once its header is complete.
    body_len: Option<usize>,
    body_filled: usize,
}

impl<'b> FrameDecoder<'b> {
    /// A decoder accepting bodies up to `max` bytes (capped by the buffer's
    /// size) into `buf`.
    pub fn new(buf: &'b mut [u8], max: usize) -> Self {
        let max = max.min(buf.len()).min(u16::MAX as usize);
        Self {
            buf,
            max,
            header: [0; HEADER_LEN],
            header_filled: 0,
            body_len: None,
            body_filled: 0,
        }
    }

    /// The largest body this decoder accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the largest accepted body (after the handshake negotiated
    /// one); capped by the buffer's size.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(self.buf.len()).min(u16::MAX as usize);
    }

    /// True when no partial frame is pending.
    pub fn is_idle(&self) -> bool {
        self.header_filled == 0 && self.body_len.is_none()
    }

    /// Consumes bytes from `input` up to the end of the next frame. Returns
    /// how many bytes were used and, when a frame completed, its body (valid
    /// until the next call). Call again with the rest of `input` until it is
    /// used up.
    ///
    /// After an error the stream is out of sync: the connection must close.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<&[u8]>), FrameError> {
        let mut used = 0;
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let take = (HEADER_LEN - self.header_filled).min(input.len());
                self.header[self.header_filled..self.header_filled + take]
                    .copy_from_slice(&input[..take]);
                self.header_filled += take;
                used += take;
                if self.header_filled < HEADER_LEN {
                    return Ok((used, None));
                }
                let len = parse_header(self.header, self.max)?;
                self.body_len = Some(len);
                self.body_filled = 0;
                len
            }
        };
        let take = (len - self.body_filled).min(input.len() - used);
        self.buf[self.body_filled..self.body_filled + take]
            .copy_from_slice(&input[used..used + take]);
        self.body_filled += take;
        used += take;
        if self.body_filled < len {
            return Ok((used, None));
        }
        self.header_filled = 0;
        self.body_len = None;
        Ok((used, Some(&self.buf[..len])))
    }

    /// Call when the input has ended: an error if a frame was left unfinished.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.body_len {
            Some(len) => Err(FrameError::Truncated {
                missing: len - self.body_filled,
            }),
            None if self.header_filled > 0 => Err(FrameError::Truncated {
                missing: HEADER_LEN - self.header_filled,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_is_rejected_at_the_header() {
        let mut buf = [0u8; 600];
        let mut d = FrameDecoder::new(&mut buf, 512);
        assert_eq!(d.push(&[0, 0, 1]), Err(FrameError::EmptyFrame));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut buf = [0u8; 600];
        let mut d = FrameDecoder::new(&mut buf, 512);
        assert_eq!(d.push(&[0x02]), Ok((1, None)));
        assert_eq!(
            d.push(&[0x01]),
            Err(FrameError::TooLong { len: 513, max: 512 })
        );
    }

    #[test]
    fn max_is_capped_by_the_buffer() {
        let mut buf = [0u8; 100];
        let mut d = FrameDecoder::new(&mut buf, 512);
        assert_eq!(d.max(), 100);
        assert_eq!(
            d.push(&[0, 101]),
            Err(FrameError::TooLong { len: 101, max: 100 })
        );
    }

    #[test]
    fn truncated_input_is_reported_at_finish() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf, 512);
        assert_eq!(d.push(&[0, 5, 1, 2]).unwrap().0, 4);
        assert_eq!(d.finish(), Err(FrameError::Truncated { missing: 3 }));
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf, 512);
        d.push(&[0]).unwrap();
        assert_eq!(d.finish(), Err(FrameError::Truncated { missing: 1 }));
    }

    #[test]
    fn several_frames_in_one_chunk() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf, 512);
        let input = [0, 1, b'a', 0, 2, b'b', b'c', 0];
        let (n, f) = d.push(&input).unwrap();
        assert_eq!((n, f), (3, Some(&b"a"[..])));
        let (m, f) = d.push(&input[n..]).unwrap();
        assert_eq!((m, f), (4, Some(&b"bc"[..])));
        assert_eq!(d.push(&input[n + m..]).unwrap(), (1, None));
        assert!(!d.is_idle());
    }

    #[test]
    fn write_frame_checks_sizes() {
        let mut out = [0u8; 4];
        assert_eq!(write_frame(b"", &mut out), Err(FrameError::EmptyFrame));
        assert_eq!(
            write_frame(b"abc", &mut out),
            Err(FrameError::BufferTooSmall {
                needed: 5,
                available: 4
            })
        );
        assert_eq!(write_frame(b"ab", &mut out).unwrap(), &[0, 2, b'a', b'b']);
    }
}
