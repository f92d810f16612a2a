//! The messages inside frames, as serde types with borrowed fields, encoded
//! with postcard.
//!
//! Before login a frame body is exactly one [`Handshake`]; after login it is
//! an authenticated [`Message`] (see [`crate::session`]). The variant order of
//! every enum here is part of the wire format: append, never reorder.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::scram::{Mechanism, Mechanisms};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Protocol version 2 (Noise, then SCRAM bound to it; docs/PROTOCOL.md):
/// the first byte of a v2 device's first frame, and its `Hello.version`.
#[cfg(feature = "v2")]
pub const PROTOCOL_VERSION_2: u8 = 2;

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended in the middle of the message.
    Truncated,
    /// The message was complete but bytes followed it inside the body.
    TrailingBytes {
        /// How many bytes followed the message.
        extra: usize,
    },
    /// A string field was not valid UTF-8.
    InvalidUtf8,
    /// An enum tag that this version does not know.
    UnknownVariant,
    /// Any other malformed postcard encoding (bad varint, bool, option...).
    Malformed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("message truncated"),
            Self::TrailingBytes { extra } => write!(f, "{extra} trailing bytes after the message"),
            Self::InvalidUtf8 => f.write_str("string field is not valid UTF-8"),
            Self::UnknownVariant => f.write_str("unknown message or field variant"),
            Self::Malformed => f.write_str("malformed postcard encoding"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        use postcard::Error as E;
        match e {
            E::DeserializeUnexpectedEnd => Self::Truncated,
            E::DeserializeBadUtf8 | E::DeserializeBadChar => Self::InvalidUtf8,
            E::DeserializeBadEnum | E::SerdeDeCustom => Self::UnknownVariant,
            _ => Self::Malformed,
        }
    }
}

/// Decodes exactly one postcard value filling all of `bytes`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes { extra: rest.len() })
    }
}

/// Encodes a value with postcard into `out`, returning the used part.
pub fn encode<'o, T: Serialize + ?Sized>(
    value: &T,
    out: &'o mut [u8],
) -> Result<&'o mut [u8], EncodeError> {
    postcard::to_slice(value, out).map_err(|e| match e {
        postcard::Error::SerializeBufferFull => EncodeError::BufferFull,
        _ => EncodeError::Unencodable,
    })
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small.
    BufferFull,
    /// The value cannot be represented (a serde error).
    Unencodable,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferFull => f.write_str("output buffer too small"),
            Self::Unencodable => f.write_str("value cannot be encoded"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// A message of the login handshake (frame body before login).
///
/// Flow: client [`Hello`] -> server [`Challenge`] or [`Refusal`] -> client
/// [`Proof`] -> server [`Welcome`] or [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handshake<'a> {
    /// Client -> server: opens the login.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Server -> client: the SCRAM server-first-message.
    #[serde(borrow)]
    Challenge(Challenge<'a>),
    /// Client -> server: the SCRAM client-final-message.
    #[serde(borrow)]
    Proof(Proof<'a>),
    /// Server -> client: login succeeded; the server proves itself.
    #[serde(borrow)]
    Welcome(Welcome<'a>),
    /// Server -> client: login refused; the server closes the connection.
    Refused(Refusal),
}

/// The client's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub version: u8,
    /// SCRAM mechanisms the client can complete; the server picks the one
    /// the account's hash supports.
    pub mechanisms: Mechanisms,
    /// Largest frame body the client accepts (at least 512).
    pub max_frame: u16,
    /// RFC 5802 client-first-message (`n,,n=user,r=nonce`).
    pub client_first: &'a str,
}

/// The server's SCRAM challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge<'a> {
    /// The mechanism the rest of the exchange uses.
    pub mechanism: Mechanism,
    /// RFC 5802 server-first-message (`r=nonce,s=salt,i=iterations`).
    pub server_first: &'a str,
}

/// The client's proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof<'a> {
    /// RFC 5802 client-final-message (`c=biws,r=nonce,p=proof`).
    pub client_final: &'a str,
}

/// The server's acceptance and the session's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// RFC 5802 server-final-message (`v=signature`); the client must
    /// verify it before trusting the session.
    pub server_final: &'a str,
    /// The server's identifier for this session (for logs).
    pub session_id: u64,
    /// Largest frame body the server accepts (at least 512).
    pub max_frame: u16,
    /// Seconds between pings the server expects when the session is idle;
    /// it closes sessions silent for about three intervals.
    pub heartbeat_secs: u16,
}

/// A refused login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why.
    pub code: RefusalCode,
    /// For `Throttled`, `Unavailable` and `Busy`: seconds before trying
    /// again is worth it (0 when unknown or not applicable).
    pub retry_after_secs: u16,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The login cannot succeed: wrong password, unknown user, inactive
    /// user, missing permission, a hash that cannot do challenge-response
    /// (argon2, bcrypt, scrypt, md5, unusable) or a row needing a mechanism
    /// the client did not offer. One code for all, sent after the proof, so
    /// a client learns nothing about which.
    Unauthorized,
    /// The hello offers no mechanism the server runs (decided from the
    /// hello alone). Retrying will not help.
    Unsupported,
    /// Too many failed attempts for this user or address; retry later.
    Throttled,
    /// The credential store cannot be reached; retry later.
    Unavailable,
    /// The client speaks a protocol version the server does not.
    Version,
    /// The client broke the handshake protocol (malformed or unexpected
    /// message).
    Protocol,
    /// The server is at its limit of handshakes or sessions; retry later.
    Busy,
    /// Protocol v2, NK: the first message decrypts under none of the
    /// server's static keys (the device pinned a wrong or retired key).
    /// Sent in the clear; retrying will not help.
    #[cfg(feature = "v2")]
    UnknownKey,
}

impl RefusalCode {
    /// Short lowercase name as used in logs and documentation.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Unsupported => "unsupported",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Version => "version",
            Self::Protocol => "protocol",
            Self::Busy => "busy",
            #[cfg(feature = "v2")]
            Self::UnknownKey => "unknown_key",
        }
    }

    /// Whether trying again later can succeed without anyone changing the
    /// account.
    pub const fn is_transient(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable | Self::Busy)
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session message (post-login frame body, inside the authentication
/// envelope of [`crate::session`]). Both directions use the same set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Calls `method` on the peer; it answers with `Reply` or `Error`
    /// carrying the same `id`. Ids are chosen by the caller, unique among its
    /// calls in flight.
    Call {
        /// Caller-chosen call id.
        id: u32,
        /// Method name.
        method: &'a str,
        /// Postcard-encoded arguments.
        args: &'a [u8],
    },
    /// Successful result of call `id`.
    Reply {
        /// The call's id.
        id: u32,
        /// Postcard-encoded result.
        result: &'a [u8],
    },
    /// Failed result of call `id`.
    Error {
        /// The call's id.
        id: u32,
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
    },
    /// A one-way message; no reply.
    Notify {
        /// Method (topic) name.
        method: &'a str,
        /// Postcard-encoded arguments.
        args: &'a [u8],
    },
    /// Liveness probe; the peer answers `Pong` with the same nonce.
    Ping {
        /// Echoed in the pong.
        nonce: u32,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u32,
    },
    /// The sender is closing the session.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
    },
}

/// The failure code of an error reply. Codes below 1000 are Tether's; an
/// application uses its own from [`ErrorCode::APPLICATION`] up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// No method of that name.
    pub const UNKNOWN_METHOD: Self = Self(1);
    /// The arguments did not decode as the method's argument type.
    pub const BAD_ARGUMENTS: Self = Self(2);
    /// The method ran and failed.
    pub const FAILED: Self = Self(3);
    /// The callee gave up waiting on something it needed.
    pub const TIMEOUT: Self = Self(4);
    /// The callee is shutting down and takes no more calls.
    pub const SHUTTING_DOWN: Self = Self(5);
    /// The caller may not call this method.
    pub const FORBIDDEN: Self = Self(6);
    /// The callee has too many calls in flight.
    pub const BUSY: Self = Self(7);
    /// First code free for applications.
    pub const APPLICATION: Self = Self(1000);

    /// Name of a Tether code, or "application".
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "unknown_method",
            2 => "bad_arguments",
            3 => "failed",
            4 => "timeout",
            5 => "shutting_down",
            6 => "forbidden",
            7 => "busy",
            _ => "application",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// The sender is done.
    Normal,
    /// The server is shutting down.
    Shutdown,
    /// No traffic for too long.
    IdleTimeout,
    /// An operator ended the session.
    Kicked,
    /// The peer broke the protocol (bad message, unknown reply id...).
    ProtocolError,
    /// A frame failed authentication.
    BadTag,
    /// The same account logged in again elsewhere.
    Replaced,
    /// The account may no longer log in: deactivated or deleted, its
    /// password changed, or it lost the permission or group the server
    /// requires (checked while the session runs), or an application
    /// revoked it. Logging in again succeeds only if the account still may.
    /// A device built before this reason existed cannot decode it and
    /// treats the frame as undecodable: the session ends all the same.
    Revoked,
}

impl GoodbyeReason {
    /// Short lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Shutdown => "shutdown",
            Self::IdleTimeout => "idle_timeout",
            Self::Kicked => "kicked",
            Self::ProtocolError => "protocol_error",
            Self::BadTag => "bad_tag",
            Self::Replaced => "replaced",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for GoodbyeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut buf = [0u8; 64];
        let n = encode(&Message::Ping { nonce: 7 }, &mut buf).unwrap().len();
        buf[n] = 0;
        assert_eq!(
            decode::<Message>(&buf[..n + 1]),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        assert_eq!(decode::<Message>(&buf[..n]), Ok(Message::Ping { nonce: 7 }));
    }

    #[test]
    fn invalid_utf8_and_unknown_variant_are_typed() {
        // Notify, method of length 1 with a lone continuation byte, no args.
        assert_eq!(
            decode::<Message>(&[3, 1, 0x80, 0]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(decode::<Message>(&[42]), Err(DecodeError::UnknownVariant));
        // Goodbye reasons: 7 is `revoked`; a reason added later is what a
        // device that predates it cannot decode (the session ends).
        assert_eq!(
            decode::<Message>(&[6, 7]),
            Ok(Message::Goodbye {
                reason: GoodbyeReason::Revoked
            })
        );
        assert_eq!(decode::<Message>(&[6, 8]), Err(DecodeError::UnknownVariant));
        assert_eq!(decode::<Message>(&[0, 1]), Err(DecodeError::Truncated));
    }
}
