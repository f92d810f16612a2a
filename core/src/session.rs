//! Authenticated session frames after login.
//!
//! Both sides derive, from ClientKey and the SCRAM AuthMessage:
//!
//! ```text
//! K     = HMAC-SHA256(ClientKey, "tether/1 session" || 0x00 || AuthMessage)
//! K_c2s = HMAC-SHA256(K, "c2s")        K_s2c = HMAC-SHA256(K, "s2c")
//! ```
//!
//! A post-login frame body is `seq (u64 BE) || postcard(Message) || tag`,
//! with `tag = HMAC-SHA256(K_dir, seq || postcard(Message))[..16]` and `seq`
//! counting from 0 in each direction. The receiver checks the tag first (in
//! constant time), then that `seq` is exactly the next one. So a forged,
//! altered, truncated or other-direction frame fails the tag, and an authentic
//! frame played again or out of order fails the sequence. This gives
//! integrity and replay protection, not secrecy.

use core::fmt;

use subtle::ConstantTimeEq as _;

use crate::frame::{FrameError, HEADER_LEN};
use crate::message::{DecodeError, EncodeError, ErrorCode, GoodbyeReason, Message};
use crate::sha256::{HmacSha256, hmac_sha256};

pub(crate) const SESSION_LABEL: &[u8] = b"tether/1 session";

/// Bytes of the sequence number at the start of each session frame body.
pub const SEQ_LEN: usize = 8;
/// Bytes of the tag at the end of each session frame body.
pub const TAG_LEN: usize = 16;
/// Bytes a session frame body carries besides the message.
pub const OVERHEAD: usize = SEQ_LEN + TAG_LEN;

/// The longest start of `message`, cut at a character boundary, with which
/// `Message::Error { id, code, message }` fits a session frame body of at
/// most `max` bytes (the peer's maximum). An error repeats nothing it must
/// keep whole, so a sender cuts its text rather than leave a call without
/// an answer.
pub fn error_message_that_fits(id: u32, code: ErrorCode, message: &str, max: usize) -> &str {
    // Variant, id and code, then the text's length and bytes.
    let fixed = OVERHEAD + 1 + varint_len(id as u64) + varint_len(code.0 as u64);
    let fits = |len: usize| fixed + varint_len(len as u64) + len <= max;
    let mut len = message.len();
    if !fits(len) {
        // A length varint takes at most 5 bytes: from where any length
        // fits, step up to the longest that does.
        len = max.saturating_sub(fixed + 5).min(len);
        while len < message.len() && fits(len + 1) {
            len += 1;
        }
        while len > 0 && !fits(len) {
            len -= 1;
        }
    }
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    &message[..len]
}

/// Bytes of `n` as a postcard varint.
const fn varint_len(n: u64) -> usize {
    match n {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The device side (sends with K_c2s).
    Client,
    /// The server side (sends with K_s2c).
    Server,
}

/// The two directional keys of a session.
#[derive(Clone)]
pub struct SessionKeys {
    c2s: [u8; 32],
    s2c: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    pub(crate) fn from_master(k: &[u8; 32]) -> Self {
        Self {
            c2s: hmac_sha256(k, &[b"c2s"]),
            s2c: hmac_sha256(k, &[b"s2c"]),
        }
    }

    /// The sending and receiving halves for `role`; they can live in
    /// different tasks.
    pub fn into_halves(self, role: Role) -> (Sealer, Opener) {
        let (send, recv) = match role {
            Role::Client => (&self.c2s, &self.s2c),
            Role::Server => (&self.s2c, &self.c2s),
        };
        (
            Sealer {
                mac: FrameKey::Mac {
                    mac: HmacSha256::new(send),
                    #[cfg(feature = "v2")]
                    closed: false,
                },
                seq: 0,
                #[cfg(not(feature = "v2"))]
                closed: false,
            },
            Opener {
                mac: FrameKey::Mac {
                    mac: HmacSha256::new(recv),
                    #[cfg(feature = "v2")]
                    closed: false,
                },
                next: 0,
                #[cfg(not(feature = "v2"))]
                closed: false,
            },
        )
    }
}

/// What went wrong with a session frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The body is too short to hold a sequence number, a message and a tag.
    TooShort {
        /// The body's length.
        len: usize,
    },
    /// The tag does not authenticate the frame: forged, altered, truncated,
    /// or sent in the other direction.
    BadTag,
    /// An authentic frame whose sequence number was already received.
    Replayed {
        /// The frame's sequence number.
        seq: u64,
        /// The one expected.
        expected: u64,
    },
    /// An authentic frame from further ahead: frames were dropped or
    /// reordered.
    OutOfOrder {
        /// The frame's sequence number.
        seq: u64,
        /// The one expected.
        expected: u64,
    },
    /// An authentic frame whose message does not decode.
    Decode(DecodeError),
    /// The frame could not be written.
    Frame(FrameError),
    /// 2^64 frames were sent: the session must end.
    SequenceExhausted,
    /// This half is closed: an earlier frame failed to open (an [`Opener`]
    /// accepts nothing after a failure), or a `Goodbye` went through it
    /// (the last frame in its direction).
    Closed,
}

impl SessionError {
    /// The `Goodbye` reason a peer that says why it closes gives for this
    /// error: `BadTag` for a frame that is not authentic or not the next
    /// one (forged, altered, truncated, replayed, reordered), else
    /// `ProtocolError` (an authentic frame whose message does not decode).
    pub const fn goodbye_reason(&self) -> GoodbyeReason {
        match self {
            Self::TooShort { .. }
            | Self::BadTag
            | Self::Replayed { .. }
            | Self::OutOfOrder { .. }
            | Self::Closed => GoodbyeReason::BadTag,
            Self::Decode(_) | Self::Frame(_) | Self::SequenceExhausted => {
                GoodbyeReason::ProtocolError
            }
        }
    }

    /// Whether the frame failed authentication or sequencing (as opposed to
    /// an authentic frame with a bad message).
    pub const fn is_inauthentic(&self) -> bool {
        matches!(self.goodbye_reason(), GoodbyeReason::BadTag)
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "session frame of {len} bytes is too short"),
            Self::BadTag => f.write_str("session frame failed authentication"),
            Self::Replayed { seq, expected } => {
                write!(f, "replayed session frame (seq {seq}, expected {expected})")
            }
            Self::OutOfOrder { seq, expected } => {
                write!(
                    f,
                    "session frame out of order (seq {seq}, expected {expected})"
                )
            }
            Self::Decode(e) => write!(f, "session message: {e}"),
            Self::Frame(e) => write!(f, "session frame: {e}"),
            Self::SequenceExhausted => f.write_str("sequence numbers exhausted"),
            Self::Closed => f.write_str("session half closed (earlier failure or goodbye)"),
        }
    }
}

impl core::error::Error for SessionError {}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

/// Seals outgoing session messages. After it sealed a `Goodbye` (the last
/// frame in its direction) it seals nothing more.
#[derive(Clone)]
pub struct Sealer {
    mac: FrameKey,
    seq: u64,
    /// (With `v2`, in [`FrameKey`]'s variants.)
    #[cfg(not(feature = "v2"))]
    closed: bool,
}

/// How a direction's frames are protected: v1's HMAC tag, or (protocol
/// v2) ChaCha20-Poly1305 under a Noise transport key, the frame's `seq`
/// being the nonce. With `v2` each variant also holds the half's `closed`
/// flag: a `bool`'s unused values then serve as the enum's tag, so a
/// Sealer or Opener of a v2 build is no larger than v1's (152 bytes on a
/// Cortex-M4, where a separate tag would add 8). A v1-only build keeps
/// the flag beside the key, as its code is 12 bytes smaller that way.
#[derive(Clone)]
enum FrameKey {
    Mac {
        mac: HmacSha256,
        #[cfg(feature = "v2")]
        closed: bool,
    },
    #[cfg(feature = "v2")]
    Aead {
        cipher: crate::noise::CipherState,
        closed: bool,
    },
}

/// `closed()`: the half's closed flag, wherever the build keeps it.
macro_rules! closed_flag {
    ($half:ty) => {
        impl $half {
            fn closed(&mut self) -> &mut bool {
                #[cfg(not(feature = "v2"))]
                return &mut self.closed;
                #[cfg(feature = "v2")]
                match &mut self.mac {
                    FrameKey::Mac { closed, .. } | FrameKey::Aead { closed, .. } => closed,
                }
            }
        }
    };
}
closed_flag!(Sealer);
closed_flag!(Opener);

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Writes `msg` as a whole authenticated frame (length prefix included)
    /// at the start of `out` and returns it. `max` is the peer's maximum body
    /// length. The sequence number advances only on success.
    pub fn seal<'o>(
        &mut self,
        msg: &Message<'_>,
        out: &'o mut [u8],
        max: usize,
    ) -> Result<&'o [u8], SessionError> {
        let available = out.len();
        let start = HEADER_LEN + SEQ_LEN;
        let room = available.saturating_sub(HEADER_LEN + OVERHEAD);
        let body = out.get_mut(start..start + room).unwrap_or_default();
        let n = match msg.encode(body) {
            Ok(m) => m.len(),
            Err(EncodeError::BufferFull) => {
                return Err(FrameError::BufferTooSmall {
                    needed: available + 1,
                    available,
                }
                .into());
            }
            Err(EncodeError::Unencodable) => return Err(FrameError::Encode.into()),
        };
        if *self.closed() {
            return Err(SessionError::Closed);
        }
        let body_len = SEQ_LEN + n + TAG_LEN;
        let max = max.min(u16::MAX as usize);
        if body_len > max {
            return Err(FrameError::TooLong { len: body_len, max }.into());
        }
        if self.seq == u64::MAX {
            return Err(SessionError::SequenceExhausted);
        }
        let frame = self
            .seal_in_place(out, n, max)
            .ok_or(FrameError::BufferTooSmall {
                needed: HEADER_LEN + body_len,
                available,
            })?;
        if matches!(msg, Message::Goodbye { .. }) {
            *self.closed() = true;
        }
        Ok(frame)
    }

    /// Seals the `n`-byte message already encoded at
    /// `out[HEADER_LEN + SEQ_LEN..]`: writes the length prefix, the sequence
    /// number and the tag around it and returns the whole frame. `max` is
    /// the peer's maximum body length. `None`: too long for it or for `out`,
    /// sealer closed or sequence numbers exhausted ([`Sealer::seal`] says
    /// which).
    pub(crate) fn seal_in_place<'o>(
        &mut self,
        out: &'o mut [u8],
        n: usize,
        max: usize,
    ) -> Option<&'o [u8]> {
        if *self.closed() {
            return None;
        }
        #[cfg(feature = "v2")]
        if let FrameKey::Aead { cipher, .. } = &mut self.mac {
            // The cipher's nonce is this sealer's `seq`.
            let frame = seal_v2(cipher, out, n, max)?;
            self.seq = cipher.nonce();
            return Some(frame);
        }
        let body_len = SEQ_LEN + n + TAG_LEN;
        let end = HEADER_LEN + body_len;
        let out = out.get_mut(..end)?;
        if body_len > max.min(u16::MAX as usize) {
            return None;
        }
        // (Split by chunks: no index can fail, so no panic path is
        // flashed.)
        let (signed, tag) = out.split_last_chunk_mut::<TAG_LEN>()?;
        let (prefix, body) = signed.split_first_chunk_mut::<HEADER_LEN>()?;
        let (seq_bytes, _) = body.split_first_chunk_mut::<SEQ_LEN>()?;
        let seq = self.seq;
        self.seq = seq.checked_add(1)?;
        *prefix = (body_len as u16).to_be_bytes();
        *seq_bytes = seq.to_be_bytes();
        #[allow(clippy::infallible_destructuring_match)] // one variant without v2
        let mac = match &self.mac {
            FrameKey::Mac { mac, .. } => mac,
            #[cfg(feature = "v2")]
            FrameKey::Aead { .. } => return None,
        };
        let mut mac = mac.clone();
        mac.update(body);
        if let Some(digest) = mac.finish().first_chunk::<TAG_LEN>() {
            *tag = *digest;
        }
        Some(out)
    }

    /// A v2 sealer: ChaCha20-Poly1305 under a Noise transport
    /// `CipherState`, its nonce the next `seq` (kept in step with it).
    #[cfg(feature = "v2")]
    pub(crate) fn v2(cipher: crate::noise::CipherState) -> Self {
        Self {
            seq: cipher.nonce(),
            mac: FrameKey::Aead {
                cipher,
                closed: false,
            },
        }
    }

    /// The sequence number of the next frame.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Seals nothing more (a goodbye was sealed in place).
    pub(crate) fn close(&mut self) {
        *self.closed() = true;
    }
}

/// Checks and decodes incoming session frames. After a frame fails, or
/// after a `Goodbye`, it opens nothing more ([`SessionError::Closed`]).
#[derive(Clone)]
pub struct Opener {
    mac: FrameKey,
    next: u64,
    /// (With `v2`, in [`FrameKey`]'s variants.)
    #[cfg(not(feature = "v2"))]
    closed: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Authenticates a frame body and decodes its message, which borrows
    /// from `body`. Any error means the session must close, and closes this
    /// opener: every later frame fails with [`SessionError::Closed`].
    ///
    /// A v2 opener (inside the connection machine) decrypts in place and
    /// opens nothing through this method ([`SessionError::Closed`]).
    pub fn open<'b>(&mut self, body: &'b [u8]) -> Result<Message<'b>, SessionError> {
        if *self.closed() {
            return Err(SessionError::Closed);
        }
        // Closed until the frame proves good.
        *self.closed() = true;
        let msg = self.check(body)?;
        *self.closed() = matches!(msg, Message::Goodbye { .. });
        Ok(msg)
    }

    /// [`open`](Self::open) a body that may be decrypted in place (v2).
    #[cfg(feature = "v2")]
    pub(crate) fn open_in_place<'b>(
        &mut self,
        body: &'b mut [u8],
    ) -> Result<Message<'b>, SessionError> {
        if let FrameKey::Aead { closed, .. } = &mut self.mac {
            if *closed {
                return Err(SessionError::Closed);
            }
            *closed = true;
            let plain = self.open_v2(body)?;
            let msg = Message::decode(plain).map_err(SessionError::Decode)?;
            *self.closed() = matches!(msg, Message::Goodbye { .. });
            return Ok(msg);
        }
        self.open(body)
    }

    /// Authenticates and decrypts a v2 body in place, checks its `seq`,
    /// and returns the plaintext message bytes (not decoded: the login's
    /// frames carry handshake messages). A failure leaves the opener closed.
    #[cfg(feature = "v2")]
    pub(crate) fn open_v2<'b>(&mut self, body: &'b mut [u8]) -> Result<&'b [u8], SessionError> {
        let FrameKey::Aead { cipher, closed } = &mut self.mac else {
            return Err(SessionError::Closed);
        };
        *closed = true;
        // The cipher's nonce is this opener's `next`.
        let plain = open_v2(cipher, body)?;
        self.next = cipher.nonce();
        *closed = false;
        Ok(plain)
    }

    /// A v2 opener: ChaCha20-Poly1305 under a Noise transport
    /// `CipherState`, expecting its next nonce as the next `seq`.
    #[cfg(feature = "v2")]
    pub(crate) fn v2(cipher: crate::noise::CipherState) -> Self {
        Self {
            next: cipher.nonce(),
            mac: FrameKey::Aead {
                cipher,
                closed: false,
            },
        }
    }

    /// Checks that an authentic frame's `seq` is the next one.
    fn sequence(&mut self, seq: u64) -> Result<(), SessionError> {
        sequence(seq, self.next)
    }

    fn check<'b>(&mut self, body: &'b [u8]) -> Result<Message<'b>, SessionError> {
        if body.len() < OVERHEAD + 1 {
            return Err(SessionError::TooShort { len: body.len() });
        }
        #[allow(clippy::infallible_destructuring_match)] // one variant without v2
        let mac = match &self.mac {
            FrameKey::Mac { mac, .. } => mac,
            #[cfg(feature = "v2")]
            FrameKey::Aead { .. } => return Err(SessionError::Closed),
        };
        let (signed, tag) = body.split_at(body.len() - TAG_LEN);
        let mut mac = mac.clone();
        mac.update(signed);
        if !bool::from(mac.finish()[..TAG_LEN].ct_eq(tag)) {
            return Err(SessionError::BadTag);
        }
        // (At least OVERHEAD bytes: the split cannot fail, and no panic
        // path is flashed for it.)
        let Some((seq, message)) = signed.split_first_chunk::<SEQ_LEN>() else {
            return Err(SessionError::TooShort { len: body.len() });
        };
        self.sequence(u64::from_be_bytes(*seq))?;
        let msg = Message::decode(message).map_err(SessionError::Decode)?;
        self.next = self
            .next
            .checked_add(1)
            .ok_or(SessionError::SequenceExhausted)?;
        Ok(msg)
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}

/// Checks that an authentic frame's `seq` is the `expected` one.
fn sequence(seq: u64, expected: u64) -> Result<(), SessionError> {
    if seq < expected {
        return Err(SessionError::Replayed { seq, expected });
    }
    if seq > expected {
        return Err(SessionError::OutOfOrder { seq, expected });
    }
    Ok(())
}

/// Seals the `n`-byte message at `out[HEADER_LEN + SEQ_LEN..]` as a v2
/// frame under `cipher`, its nonce the frame's `seq` (the sealer's, and
/// the login's frames before there is a sealer); returns the whole frame.
/// `None` when it is too long for `max` or for `out`, or the nonces are
/// exhausted.
#[cfg(feature = "v2")]
pub(crate) fn seal_v2<'o>(
    cipher: &mut crate::noise::CipherState,
    out: &'o mut [u8],
    n: usize,
    max: usize,
) -> Option<&'o [u8]> {
    let body_len = SEQ_LEN + n + TAG_LEN;
    if body_len > max.min(u16::MAX as usize) {
        return None;
    }
    let out = out.get_mut(..HEADER_LEN + body_len)?;
    // (Split by chunks: no index can fail, so no panic path is flashed.)
    let (prefix, body) = out.split_first_chunk_mut::<HEADER_LEN>()?;
    let (seq_bytes, sealed) = body.split_first_chunk_mut::<SEQ_LEN>()?;
    *prefix = (body_len as u16).to_be_bytes();
    *seq_bytes = cipher.nonce().to_be_bytes();
    // Fails at nonce 2^64 - 1 (nothing more can be sealed).
    cipher.encrypt_with_ad(&[], sealed, n).ok()?;
    Some(out)
}

/// Authenticates and decrypts a v2 frame body in place under `cipher`:
/// the tag first, then that its `seq` is the cipher's next nonce. Returns
/// the plaintext message bytes. After a failure `cipher` is not to be
/// used again (its nonce may have moved).
#[cfg(feature = "v2")]
pub(crate) fn open_v2<'b>(
    cipher: &mut crate::noise::CipherState,
    body: &'b mut [u8],
) -> Result<&'b [u8], SessionError> {
    let len = body.len();
    let expected = cipher.nonce();
    let (seq, sealed) = match body.split_first_chunk_mut::<SEQ_LEN>() {
        Some(split) if len > OVERHEAD => split,
        _ => return Err(SessionError::TooShort { len }),
    };
    let seq = u64::from_be_bytes(*seq);
    cipher.set_nonce(seq);
    let plain = cipher
        .decrypt_with_ad(&[], sealed)
        .map_err(|_| SessionError::BadTag)?;
    sequence(seq, expected)?;
    Ok(plain)
}
