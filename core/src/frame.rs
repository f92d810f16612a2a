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
    // (Checked: no panic path is flashed.)
    let frame = out.get_mut(..HEADER_LEN + len).ok_or(FrameError::Encode)?;
    if let Some(prefix) = frame.first_chunk_mut::<HEADER_LEN>() {
        *prefix = (len as u16).to_be_bytes();
    }
    Ok(frame)
}

/// Incremental frame decoder over a caller-provided body buffer: the one
/// frame reader of every Tether peer.
///
/// Two ways to feed it:
/// - **pull** (minimq's `PacketReader` is the model): read from the
///   transport straight into [`receive_buffer`](Self::receive_buffer), which
///   is exactly the bytes still missing from the length prefix or the body,
///   then [`commit`](Self::commit) how many arrived; once
///   [`has_frame`](Self::has_frame), [`take_frame`](Self::take_frame) hands
///   the body out. No byte is copied and none is read ahead, so a frame
///   never waits in a buffer behind another.
/// - **push**: [`push`](Self::push) copies from bytes the caller already
///   holds (a read-ahead buffer, a test vector).
///
/// `B` is the body storage: a `&mut [u8]` on a device, anything that
/// dereferences to bytes elsewhere (a `Vec<u8>`).
///
/// ```
/// use tether_core::frame::{FrameDecoder, write_frame};
/// let mut wire = [0u8; 16];
/// let n = write_frame(b"hello", &mut wire).unwrap().len();
///
/// let mut buf = [0u8; 512];
/// let mut decoder = FrameDecoder::new(&mut buf[..], 512);
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
///
/// // The same frame pulled: the decoder says where the next bytes go.
/// let mut input = &wire[..n];
/// while !decoder.has_frame() {
///     let dest = decoder.receive_buffer();
///     let k = dest.len().min(input.len()); // a transport's `read(dest)`
///     dest[..k].copy_from_slice(&input[..k]);
///     input = &input[k..];
///     decoder.commit(k).unwrap();
/// }
/// assert_eq!(decoder.take_frame(), Some(&b"hello"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder<B> {
    buf: B,
    max: usize,
    header: [u8; HEADER_LEN],
    /// Bytes received of the length prefix (while `len` is 0) or of the body.
    filled: usize,
    /// Body length of the frame being read; 0 until its prefix is complete
    /// (a valid prefix is never 0).
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> FrameDecoder<B> {
    /// A decoder accepting bodies up to `max` bytes (capped by the buffer's
    /// size) into `buf`.
    pub fn new(buf: B, max: usize) -> Self {
        let max = max.min(buf.as_ref().len()).min(u16::MAX as usize);
        Self {
            buf,
            max,
            header: [0; HEADER_LEN],
            filled: 0,
            len: 0,
        }
    }

    /// The largest body this decoder accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the largest accepted body (after the handshake negotiated
    /// one); capped by the buffer's size.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.min(self.buf.as_ref().len()).min(u16::MAX as usize);
    }

    /// The size of the body buffer.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// The body buffer (the last frame's body is at its start until the
    /// next one's length prefix is complete).
    pub(crate) fn buffer(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// True when no partial frame is pending.
    pub fn is_idle(&self) -> bool {
        self.filled == 0 && self.len == 0
    }

    /// The body storage, while no frame is partly received
    /// ([`is_idle`](Self::is_idle)); `None` otherwise. A driver that lends
    /// buffers only while bytes are in flight takes its storage back here
    /// between frames (the storage must keep its size: the decoder's
    /// maximum was capped by it).
    pub fn idle_storage(&mut self) -> Option<&mut B> {
        self.is_idle().then_some(&mut self.buf)
    }

    /// True when a whole frame waits for [`take_frame`](Self::take_frame).
    pub fn has_frame(&self) -> bool {
        self.len != 0 && self.filled == self.len
    }

    /// Where the next received bytes go: exactly what is still missing from
    /// the length prefix or from the body. Read into it, then
    /// [`commit`](Self::commit). Empty only while a whole frame waits for
    /// [`take_frame`](Self::take_frame) (or after a bad length prefix): a
    /// transport read into an empty slice returns 0, which is not the end
    /// of the stream.
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        if self.len == 0 {
            self.header.get_mut(self.filled..).unwrap_or_default()
        } else {
            let (filled, len) = (self.filled, self.len);
            self.buf.as_mut().get_mut(filled..len).unwrap_or_default()
        }
    }

    /// Records that `n` bytes were written at the start of
    /// [`receive_buffer`](Self::receive_buffer) (more than it holds counts
    /// as all of it). A length prefix of 0 or above the maximum is an error
    /// as soon as its second byte is committed; the stream is then out of
    /// sync and the connection must close.
    pub fn commit(&mut self, n: usize) -> Result<(), FrameError> {
        self.filled += n.min(self.receive_buffer().len());
        if self.len == 0 && self.filled == HEADER_LEN {
            self.len = parse_header(self.header, self.max)?;
            self.filled = 0;
        }
        Ok(())
    }

    /// The body of the frame received whole, if any. The decoder then waits
    /// for the next frame's length prefix, which it keeps apart from the
    /// body buffer: the body stays valid as long as it is borrowed.
    pub fn take_frame(&mut self) -> Option<&[u8]> {
        if !self.has_frame() {
            return None;
        }
        let len = self.len;
        self.len = 0;
        self.filled = 0;
        self.buf.as_ref().get(..len)
    }

    /// [`take_frame`](Self::take_frame), mutable: for a body that is
    /// decrypted in place (protocol v2).
    #[cfg(feature = "v2")]
    pub(crate) fn take_frame_mut(&mut self) -> Option<&mut [u8]> {
        if !self.has_frame() {
            return None;
        }
        let len = self.len;
        self.len = 0;
        self.filled = 0;
        self.buf.as_mut().get_mut(..len)
    }

    /// Consumes bytes from `input` up to the end of the next frame. Returns
    /// how many bytes were used and, when a frame completed, its body (valid
    /// until the next call). Call again with the rest of `input` until it is
    /// used up.
    ///
    /// After an error the stream is out of sync: the connection must close.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<&[u8]>), FrameError> {
        let mut used = 0;
        while !self.has_frame() && used < input.len() {
            let dest = self.receive_buffer();
            let take = dest.len().min(input.len() - used);
            dest[..take].copy_from_slice(&input[used..used + take]);
            used += take;
            self.commit(take)?;
        }
        Ok((used, self.take_frame()))
    }

    /// Call when the input has ended: an error if a frame was left unfinished.
    pub fn finish(&self) -> Result<(), FrameError> {
        match (self.len, self.filled) {
            (0, 0) => Ok(()),
            (0, filled) => Err(FrameError::Truncated {
                missing: HEADER_LEN - filled,
            }),
            (len, filled) if filled < len => Err(FrameError::Truncated {
                missing: len - filled,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_is_rejected_at_the_header() {
        let mut buf = [0u8; 600];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        assert_eq!(d.push(&[0, 0, 1]), Err(FrameError::EmptyFrame));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut buf = [0u8; 600];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        assert_eq!(d.push(&[0x02]), Ok((1, None)));
        assert_eq!(
            d.push(&[0x01]),
            Err(FrameError::TooLong { len: 513, max: 512 })
        );
    }

    #[test]
    fn max_is_capped_by_the_buffer() {
        let mut buf = [0u8; 100];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        assert_eq!(d.max(), 100);
        assert_eq!(
            d.push(&[0, 101]),
            Err(FrameError::TooLong { len: 101, max: 100 })
        );
    }

    #[test]
    fn truncated_input_is_reported_at_finish() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        assert_eq!(d.push(&[0, 5, 1, 2]).unwrap().0, 4);
        assert_eq!(d.finish(), Err(FrameError::Truncated { missing: 3 }));
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        d.push(&[0]).unwrap();
        assert_eq!(d.finish(), Err(FrameError::Truncated { missing: 1 }));
    }

    #[test]
    fn several_frames_in_one_chunk() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        let input = [0, 1, b'a', 0, 2, b'b', b'c', 0];
        let (n, f) = d.push(&input).unwrap();
        assert_eq!((n, f), (3, Some(&b"a"[..])));
        let (m, f) = d.push(&input[n..]).unwrap();
        assert_eq!((m, f), (4, Some(&b"bc"[..])));
        assert_eq!(d.push(&input[n + m..]).unwrap(), (1, None));
        assert!(!d.is_idle());
    }

    #[test]
    fn pull_reads_exactly_the_missing_bytes() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        assert_eq!(d.receive_buffer().len(), 2);
        d.receive_buffer()[0] = 0;
        d.commit(1).unwrap();
        assert_eq!(d.receive_buffer().len(), 1);
        d.receive_buffer()[0] = 3;
        d.commit(1).unwrap();
        // The body: exactly 3 bytes asked for, never more.
        assert_eq!(d.receive_buffer().len(), 3);
        d.receive_buffer()[..2].copy_from_slice(b"ab");
        d.commit(2).unwrap();
        assert!(!d.has_frame());
        assert_eq!(d.take_frame(), None);
        d.receive_buffer()[0] = b'c';
        // Committing more than was asked for counts as all of it.
        d.commit(9).unwrap();
        assert!(d.has_frame());
        assert!(d.receive_buffer().is_empty(), "a whole frame waits");
        assert_eq!(d.finish(), Ok(()));
        assert_eq!(d.take_frame(), Some(&b"abc"[..]));
        assert!(d.is_idle());
        assert_eq!(d.receive_buffer().len(), 2);
    }

    #[test]
    fn pull_rejects_bad_prefixes_at_the_second_byte() {
        let mut buf = [0u8; 512];
        let mut d = FrameDecoder::new(&mut buf[..], 512);
        d.receive_buffer().copy_from_slice(&[0, 0]);
        assert_eq!(d.commit(2), Err(FrameError::EmptyFrame));
        let mut d = FrameDecoder::new(&mut buf[..], 100);
        d.receive_buffer()[0] = 0;
        d.commit(1).unwrap();
        d.receive_buffer()[0] = 101;
        assert_eq!(d.commit(1), Err(FrameError::TooLong { len: 101, max: 100 }));
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
