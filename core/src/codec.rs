//! Hand-written postcard encoding of the protocol's own messages
//! ([`Handshake`], [`Message`]): the same bytes and the same errors as
//! postcard through their serde derives, without serde's generic visitor
//! code, which costs a device several hundred bytes of flash per message
//! type. The serde derives stay for applications and tools; the tests check
//! both ways against postcard.
//!
//! postcard's rules used here: enum variants and integers above `u8` are
//! LEB128 varints (at most `ceil(bits / 7)` bytes, the last one holding only
//! the remaining bits), `u8` is one raw byte, byte strings and strings are a
//! varint length and the bytes.

use crate::message::{Challenge, Hello, Proof, Welcome};
use crate::message::{
    DecodeError, EncodeError, ErrorCode, GoodbyeReason, Handshake, Message, Refusal, RefusalCode,
};
use crate::scram::{Mechanism, Mechanisms};

/// Reads postcard values from the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    /// A varint of an integer type with `bits` bits.
    fn varint(&mut self, bits: u32) -> Result<u64, DecodeError> {
        let max_len = bits.div_ceil(7);
        let mut value = 0u64;
        for i in 0..max_len {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max_len - 1 && u32::from(b) >> (bits - 7 * i) != 0 {
                    break;
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(self.varint(16)? as u16)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.varint(32)? as u32)
    }

    /// An enum's variant from the list of all variants in wire order.
    fn variant<T: Copy>(&mut self, all: &[T]) -> Result<T, DecodeError> {
        let i = self.u32()?;
        all.get(i as usize)
            .copied()
            .ok_or(DecodeError::UnknownVariant)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(usize::BITS)?;
        if len > self.0.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        let (bytes, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        Ok(bytes)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// `value` if nothing follows it.
    fn end<T>(self, value: T) -> Result<T, DecodeError> {
        match self.0.len() {
            0 => Ok(value),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

/// Writes postcard values into a slice.
struct Writer<'o> {
    out: &'o mut [u8],
    len: usize,
}

/// A variant tag and one varint: `Ping`, `Pong`, `Goodbye` (whose reason
/// index is below 128, so its one byte is its varint).
pub(crate) fn small(tag: u8, value: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut w = Writer { out, len: 0 };
    w.byte(tag)?;
    w.varint(value)?;
    Ok(w.len)
}

/// An `Error` answering call `id` with `message`, at the start of `out`;
/// returns its length.
pub(crate) fn error_message(
    id: u32,
    code: ErrorCode,
    message: &str,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut w = Writer { out, len: 0 };
    w.byte(2)?;
    w.varint(id.into())?;
    w.varint(code.0.into())?;
    w.bytes(message.as_bytes())?;
    Ok(w.len)
}

fn small_message(tag: u8, value: u64, out: &mut [u8]) -> Result<&mut [u8], EncodeError> {
    let n = small(tag, value, out)?;
    Ok(&mut out[..n])
}

impl<'o> Writer<'o> {
    fn byte(&mut self, b: u8) -> Result<(), EncodeError> {
        *self.out.get_mut(self.len).ok_or(EncodeError::BufferFull)? = b;
        self.len += 1;
        Ok(())
    }

    fn varint(&mut self, mut v: u64) -> Result<(), EncodeError> {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.varint(b.len() as u64)?;
        let end = self.len + b.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(EncodeError::BufferFull)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

const MECHANISMS: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha1];

#[cfg(not(feature = "v2"))]
const REFUSAL_CODES: [RefusalCode; 7] = [
    RefusalCode::Unauthorized,
    RefusalCode::Unsupported,
    RefusalCode::Throttled,
    RefusalCode::Unavailable,
    RefusalCode::Version,
    RefusalCode::Protocol,
    RefusalCode::Busy,
];
#[cfg(feature = "v2")]
const REFUSAL_CODES: [RefusalCode; 8] = [
    RefusalCode::Unauthorized,
    RefusalCode::Unsupported,
    RefusalCode::Throttled,
    RefusalCode::Unavailable,
    RefusalCode::Version,
    RefusalCode::Protocol,
    RefusalCode::Busy,
    RefusalCode::UnknownKey,
];

const GOODBYE_REASONS: [GoodbyeReason; 8] = [
    GoodbyeReason::Normal,
    GoodbyeReason::Shutdown,
    GoodbyeReason::IdleTimeout,
    GoodbyeReason::Kicked,
    GoodbyeReason::ProtocolError,
    GoodbyeReason::BadTag,
    GoodbyeReason::Replaced,
    GoodbyeReason::Revoked,
];

impl Hello<'_> {
    /// Encodes `Handshake::Hello(self)` at the start of `out`; returns its
    /// length (a device encodes no other handshake message but the proof).
    pub(crate) fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer { out, len: 0 };
        w.byte(0)?;
        w.byte(self.version)?;
        w.byte(self.mechanisms.bits())?;
        w.varint(self.max_frame.into())?;
        w.bytes(self.client_first.as_bytes())?;
        Ok(w.len)
    }
}

impl Proof<'_> {
    /// Encodes `Handshake::Proof(self)` at the start of `out`; returns its
    /// length.
    pub(crate) fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer { out, len: 0 };
        w.byte(2)?;
        w.bytes(self.client_final.as_bytes())?;
        Ok(w.len)
    }
}

impl<'a> Handshake<'a> {
    /// Encodes the message into the start of `out` (exactly postcard's
    /// bytes) and returns the used part.
    pub fn encode<'o>(&self, out: &'o mut [u8]) -> Result<&'o mut [u8], EncodeError> {
        let n = match self {
            Self::Hello(h) => h.encode(out)?,
            Self::Proof(p) => p.encode(out)?,
            _ => self.encode_server_message(out)?,
        };
        Ok(&mut out[..n])
    }

    /// The messages only a server sends.
    fn encode_server_message(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer { out, len: 0 };
        match *self {
            Self::Hello(_) | Self::Proof(_) => return Err(EncodeError::Unencodable),
            Self::Challenge(c) => {
                w.byte(1)?;
                w.byte(c.mechanism as u8)?;
                w.bytes(c.server_first.as_bytes())?;
            }
            Self::Welcome(v) => {
                w.byte(3)?;
                w.bytes(v.server_final.as_bytes())?;
                w.varint(v.session_id)?;
                w.varint(v.max_frame.into())?;
                w.varint(v.heartbeat_secs.into())?;
            }
            Self::Refused(r) => {
                w.byte(4)?;
                w.byte(r.code as u8)?;
                w.varint(r.retry_after_secs.into())?;
            }
        }
        Ok(w.len)
    }

    /// Decodes exactly one message filling all of `bytes` (the same result
    /// as [`decode`](crate::message::decode) through serde).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let msg = match r.u32()? {
            0 => Self::Hello(Hello {
                version: r.byte()?,
                mechanisms: Mechanisms::from_bits(r.byte()?),
                max_frame: r.u16()?,
                client_first: r.str()?,
            }),
            2 => Self::Proof(Proof {
                client_final: r.str()?,
            }),
            tag => Self::server_message(tag, &mut r)?.ok_or(DecodeError::UnknownVariant)?,
        };
        r.end(msg)
    }

    /// Decodes what a client receives: a challenge, a welcome or a refusal
    /// filling all of `bytes`, with the same result as [`Self::decode`].
    /// A hello or a proof (only a client sends those) is `Ok(None)`, its
    /// body not decoded: a device needs no decoder for them.
    pub fn decode_from_server(bytes: &'a [u8]) -> Result<Option<Self>, DecodeError> {
        let mut r = Reader(bytes);
        let tag = r.u32()?;
        match Self::server_message(tag, &mut r)? {
            Some(msg) => r.end(msg).map(Some),
            None => Ok(None),
        }
    }

    /// The body of the message `tag` when a server sends it; `None` for the
    /// client's messages (hello, proof).
    fn server_message(tag: u32, r: &mut Reader<'a>) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match tag {
            0 | 2 => return Ok(None),
            1 => Self::Challenge(Challenge {
                mechanism: r.variant(&MECHANISMS)?,
                server_first: r.str()?,
            }),
            3 => Self::Welcome(Welcome {
                server_final: r.str()?,
                session_id: r.varint(64)?,
                max_frame: r.u16()?,
                heartbeat_secs: r.u16()?,
            }),
            4 => Self::Refused(Refusal {
                code: r.variant(&REFUSAL_CODES)?,
                retry_after_secs: r.u16()?,
            }),
            _ => return Err(DecodeError::UnknownVariant),
        }))
    }
}

/// The fields of a session message that carries a payload (`Call`,
/// `Reply`, `Error`, `Notify`), up to and including the payload's length:
/// the connection writes the payload in place first, then this head before
/// it, so arguments and replies are never copied through a scratch buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Head<'a> {
    Call { id: u32, method: &'a str },
    Reply { id: u32 },
    Error { id: u32, code: ErrorCode },
    Notify { method: &'a str },
}

/// Most bytes of a varint `u16`, `u32`.
const VARINT_U16: usize = 3;
const VARINT_U32: usize = 5;

impl Head<'_> {
    /// The most bytes this head takes for a payload of up to 65535 bytes.
    pub(crate) fn max_len(&self) -> usize {
        1 + VARINT_U16
            + match self {
                Self::Call { method, .. } => VARINT_U32 + VARINT_U16 + method.len(),
                Self::Reply { .. } => VARINT_U32,
                Self::Error { .. } => VARINT_U32 + VARINT_U16,
                Self::Notify { method } => VARINT_U16 + method.len(),
            }
    }

    /// Writes the head of a message whose payload is `len` bytes at the
    /// start of `out`; returns its length.
    pub(crate) fn encode(&self, len: usize, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer { out, len: 0 };
        match *self {
            Self::Call { id, method } => {
                w.byte(0)?;
                w.varint(id.into())?;
                w.bytes(method.as_bytes())?;
            }
            Self::Reply { id } => {
                w.byte(1)?;
                w.varint(id.into())?;
            }
            Self::Error { id, code } => {
                w.byte(2)?;
                w.varint(id.into())?;
                w.varint(code.0.into())?;
            }
            Self::Notify { method } => {
                w.byte(3)?;
                w.bytes(method.as_bytes())?;
            }
        }
        w.varint(len as u64)?;
        Ok(w.len)
    }
}

impl<'a> Message<'a> {
    /// Encodes the message into the start of `out` (exactly postcard's
    /// bytes) and returns the used part.
    pub fn encode<'o>(&self, out: &'o mut [u8]) -> Result<&'o mut [u8], EncodeError> {
        let (head, payload) = match *self {
            Self::Call { id, method, args } => (Head::Call { id, method }, args),
            Self::Reply { id, result } => (Head::Reply { id }, result),
            Self::Error { id, code, message } => (Head::Error { id, code }, message.as_bytes()),
            Self::Notify { method, args } => (Head::Notify { method }, args),
            Self::Ping { nonce } => return small_message(4, nonce.into(), out),
            Self::Pong { nonce } => return small_message(5, nonce.into(), out),
            Self::Goodbye { reason } => return small_message(6, reason as u64, out),
        };
        let n = head.encode(payload.len(), out)?;
        let end = n + payload.len();
        out.get_mut(n..end)
            .ok_or(EncodeError::BufferFull)?
            .copy_from_slice(payload);
        Ok(&mut out[..end])
    }

    /// Decodes exactly one message filling all of `bytes` (the same result
    /// as [`decode`](crate::message::decode) through serde).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let msg = match r.u32()? {
            0 => Self::Call {
                id: r.u32()?,
                method: r.str()?,
                args: r.bytes()?,
            },
            1 => Self::Reply {
                id: r.u32()?,
                result: r.bytes()?,
            },
            2 => Self::Error {
                id: r.u32()?,
                code: ErrorCode(r.u16()?),
                message: r.str()?,
            },
            3 => Self::Notify {
                method: r.str()?,
                args: r.bytes()?,
            },
            4 => Self::Ping { nonce: r.u32()? },
            5 => Self::Pong { nonce: r.u32()? },
            6 => Self::Goodbye {
                reason: r.variant(&GOODBYE_REASONS)?,
            },
            _ => return Err(DecodeError::UnknownVariant),
        };
        r.end(msg)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    use super::*;
    use crate::message::{decode, encode};

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    fn check_message(m: Message<'_>) -> Result<(), TestCaseError> {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        let ours = m.encode(&mut a).map(|s| s.to_vec());
        let theirs = encode(&m, &mut b).map(|s| s.to_vec());
        prop_assert_eq!(&ours, &theirs);
        if let Ok(bytes) = &ours {
            prop_assert_eq!(Message::decode(bytes), Ok(m));
            // Every shorter buffer fails the same way as postcard.
            for n in 0..bytes.len() {
                prop_assert_eq!(
                    m.encode(&mut a[..n]).map(|s| s.to_vec()),
                    encode(&m, &mut b[..n]).map(|s| s.to_vec())
                );
            }
        }
        Ok(())
    }

    /// `decode_from_server` agrees with `decode` except that hello and
    /// proof (and any body after their tags) are `Ok(None)`.
    fn check_from_server(bytes: &[u8]) -> Result<(), TestCaseError> {
        let expected = match (Reader(bytes).u32(), Handshake::decode(bytes)) {
            (Ok(0 | 2), _) => Ok(None),
            (_, decoded) => decoded.map(Some),
        };
        prop_assert_eq!(Handshake::decode_from_server(bytes), expected);
        Ok(())
    }

    fn check_handshake(h: Handshake<'_>) -> Result<(), TestCaseError> {
        let (mut a, mut b) = ([0u8; 80], [0u8; 80]);
        let ours = h.encode(&mut a).map(|s| s.to_vec());
        let theirs = encode(&h, &mut b).map(|s| s.to_vec());
        prop_assert_eq!(&ours, &theirs);
        if let Ok(bytes) = &ours {
            prop_assert_eq!(Handshake::decode(bytes), Ok(h));
            check_from_server(bytes)?;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn messages_encode_like_postcard(
            kind in 0..7u8, id: u32, code: u16, s in text(), t in bytes(), reason in 0..8usize,
        ) {
            let m = match kind {
                0 => Message::Call { id, method: &s, args: &t },
                1 => Message::Reply { id, result: &t },
                2 => Message::Error { id, code: ErrorCode(code), message: &s },
                3 => Message::Notify { method: &s, args: &t },
                4 => Message::Ping { nonce: id },
                5 => Message::Pong { nonce: id },
                _ => Message::Goodbye { reason: GOODBYE_REASONS[reason] },
            };
            check_message(m)?;
        }

        #[test]
        fn handshakes_encode_like_postcard(
            kind in 0..5u8, a: u8, b: u8, c: u16, d: u16, e: u64, s in text(), i in 0..7usize,
        ) {
            let h = match kind {
                0 => Handshake::Hello(Hello {
                    version: a, mechanisms: Mechanisms::from_bits(b), max_frame: c, client_first: &s,
                }),
                1 => Handshake::Challenge(Challenge { mechanism: MECHANISMS[i % 2], server_first: &s }),
                2 => Handshake::Proof(Proof { client_final: &s }),
                3 => Handshake::Welcome(Welcome {
                    server_final: &s, session_id: e, max_frame: c, heartbeat_secs: d,
                }),
                _ => Handshake::Refused(Refusal { code: REFUSAL_CODES[i], retry_after_secs: d }),
            };
            check_handshake(h)?;
        }

        #[test]
        fn arbitrary_bytes_decode_like_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            prop_assert_eq!(Message::decode(&bytes), decode::<Message>(&bytes));
            prop_assert_eq!(Handshake::decode(&bytes), decode::<Handshake>(&bytes));
            check_from_server(&bytes)?;
        }

        #[test]
        fn near_valid_bytes_decode_like_postcard(
            prefix in proptest::collection::vec(prop_oneof![0..8u8, Just(0x80u8), Just(0xffu8), any::<u8>()], 0..16),
        ) {
            prop_assert_eq!(Message::decode(&prefix), decode::<Message>(&prefix));
            prop_assert_eq!(Handshake::decode(&prefix), decode::<Handshake>(&prefix));
            check_from_server(&prefix)?;
        }
    }

    #[test]
    fn varint_limits_match_postcard() {
        for bytes in [
            &[4, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[4, 0xff, 0xff, 0xff, 0xff, 0x10],
            &[4, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
            &[2, 0x80, 0x00, 0x03, 0x80, 0x80, 0x03, 0x00],
            &[2, 0x00, 0xff, 0xff, 0x04, 0x00],
            &[
                3, 0x01, 0x41, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x80, 0x80, 0x80, 0x80, 0x10],
            &[6, 7],
            &[6, 0x86, 0x00],
        ] {
            assert_eq!(
                Message::decode(bytes),
                decode::<Message>(bytes),
                "{bytes:?}"
            );
            assert_eq!(
                Handshake::decode(bytes),
                decode::<Handshake>(bytes),
                "{bytes:?}"
            );
        }
        let welcome = [
            3, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x80, 0x04, 0,
        ];
        assert_eq!(Handshake::decode(&welcome), decode::<Handshake>(&welcome));
        let welcome = [
            3, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0,
        ];
        assert_eq!(Handshake::decode(&welcome), decode::<Handshake>(&welcome));
    }
}
