//! What can end a connection, what can stop one message, said exactly.

use core::fmt;

use crate::frame::FrameError;
use crate::message::{DecodeError, EncodeError, GoodbyeReason, Refusal, RefusalCode};
use crate::scram::ScramError;
use crate::session::SessionError;

/// Why a connection ended (or never got going). Every variant says which
/// side decided and whether anything was sent about it; see the module
/// docs for the table of what each one sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Client: the server refused the login (the last frame it sends).
    Refused(Refusal),
    /// Server: this side refused the login; the refusal is the last frame
    /// [`poll_transmit`](super::ServerHandshake::poll_transmit) gives out.
    Rejected {
        /// The code sent.
        code: RefusalCode,
        /// Why, for the server's log (never sent: `unauthorized` says the
        /// same for a wrong password and an unknown user).
        cause: RefusalCause,
    },
    /// Client: its own SCRAM checks failed and it sends nothing more:
    /// [`ScramError::InvalidServerSignature`] (an impostor), an iteration
    /// count outside the configured bounds, cached keys that no longer fit.
    Scram(ScramError),
    /// The peer broke the protocol (the violation says how).
    Protocol(Violation),
    /// A length prefix of 0 or above the maximum, or the stream ended in
    /// the middle of a frame.
    Frame(FrameError),
    /// A session frame failed to open: forged, altered, replayed,
    /// reordered, or an authentic frame that does not decode.
    Session(SessionError),
    /// The peer said goodbye.
    Closed(GoodbyeReason),
    /// The stream ended between frames without a goodbye.
    Disconnected,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// Nothing arrived for three heartbeat intervals.
    IdleTimeout,
    /// This side closed the connection ([`close`](super::Connection::close),
    /// or the handshake handed over to the established connection).
    Ended,
    /// Protocol v2, client: the server's Noise message 2 failed (with NK:
    /// the server does not hold the pinned key, or the message was
    /// altered). Nothing more is sent.
    #[cfg(feature = "v2")]
    Noise(crate::noise::NoiseError),
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "login refused: {}", r.code),
            Self::Rejected { code, cause } => write!(f, "login refused {code}: {cause}"),
            Self::Scram(e) => write!(f, "login aborted: {e}"),
            Self::Protocol(v) => write!(f, "protocol violation: {v}"),
            Self::Frame(e) => write!(f, "framing: {e}"),
            Self::Session(e) => write!(f, "{e}"),
            Self::Closed(r) => write!(f, "peer said goodbye: {r}"),
            Self::Disconnected => f.write_str("connection closed without a goodbye"),
            Self::HandshakeTimeout => f.write_str("handshake timed out"),
            Self::IdleTimeout => f.write_str("nothing received for three heartbeat intervals"),
            Self::Ended => f.write_str("the connection has ended"),
            #[cfg(feature = "v2")]
            Self::Noise(e) => write!(f, "Noise handshake: {e}"),
        }
    }
}

impl core::error::Error for ConnectionError {}

/// How the peer broke the protocol with a frame that was well formed (or
/// authentic, after login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A handshake message that does not decode.
    Undecodable(DecodeError),
    /// A handshake message out of place (a second hello, a welcome before
    /// the proof, a server message sent by a client...).
    UnexpectedMessage,
    /// A `max_frame` below 512 in a hello or a welcome.
    MaxFrameTooSmall(u16),
    /// A `Reply` or `Error` for an id that is not in flight (and was not
    /// abandoned: see the module docs on late replies).
    UnknownReply(u32),
    /// An `Error` for an id that is not in flight (as
    /// [`UnknownReply`](Self::UnknownReply), for the other kind of answer).
    UnknownError(u32),
    /// A `Call` whose id is already in flight.
    DuplicateCall(u32),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Undecodable(e) => write!(f, "undecodable handshake message: {e}"),
            Self::MaxFrameTooSmall(m) => write!(f, "max_frame {m} below 512"),
            Self::UnknownReply(id) => write!(f, "reply to call {id}, not in flight"),
            Self::UnknownError(id) => write!(f, "error for call {id}, not in flight"),
            Self::DuplicateCall(id) => write!(f, "call id {id} already in flight"),
            Self::UnexpectedMessage => f.write_str("unexpected handshake message"),
        }
    }
}

/// Why the server refused a login (for its log; the client only sees the
/// [`RefusalCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCause {
    /// A length prefix of 0 or above 512 (`protocol`).
    Frame(FrameError),
    /// A malformed or unexpected handshake message (`protocol`).
    Violation(Violation),
    /// The client speaks another protocol version (`version`).
    Version(u8),
    /// A SCRAM message that breaks RFC 5802, or a nonce or channel-binding
    /// mismatch (`protocol`).
    Scram(ScramError),
    /// The hello offers no mechanism this server can run (`unsupported`).
    NoMechanism,
    /// The proof does not match: a wrong password, or a decoy challenge
    /// (unknown, inactive or unauthorised user, unusable hash) (`unauthorized`).
    InvalidProof,
    /// The driver refused: throttled, busy, database unavailable, the
    /// realm said no.
    Server,
    /// Protocol v2: Noise message 1 failed (`protocol`; with NK
    /// `unknown_key` when it decrypts under none of the server's keys),
    /// or a sealed handshake frame failed to open (`protocol`): too short
    /// ([`NoiseError::TooShort`](crate::noise::NoiseError::TooShort)), or
    /// not the authentic next Noise transport message (altered, forged,
    /// replayed, reordered: [`NoiseError::Decrypt`](crate::noise::NoiseError::Decrypt)).
    /// (Not the frame's [`SessionError`]: its two sequence numbers would
    /// make every `ConnectionError` 8 bytes larger, which a device holds
    /// in its session.)
    #[cfg(feature = "v2")]
    Noise(crate::noise::NoiseError),
    /// `--require-encryption`: a v1 hello (`version`).
    #[cfg(feature = "v2")]
    EncryptionRequired,
}

impl fmt::Display for RefusalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Violation(v) => write!(f, "{v}"),
            Self::Version(v) => write!(f, "client speaks protocol version {v}"),
            Self::Scram(e) => write!(f, "SCRAM: {e}"),
            Self::NoMechanism => f.write_str("no mechanism offered that the server runs"),
            Self::InvalidProof => f.write_str("invalid proof"),
            Self::Server => f.write_str("refused by the server"),
            #[cfg(feature = "v2")]
            Self::Noise(e) => write!(f, "Noise: {e}"),
            #[cfg(feature = "v2")]
            Self::EncryptionRequired => f.write_str("v1 login while encryption is required"),
        }
    }
}

/// Why one message could not be sent. The connection is untouched unless
/// the error is [`SendError::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The payload (arguments, result) does not fit the peer's largest
    /// frame or the transmit buffer, whichever is smaller: at most `max`
    /// bytes of it do. Nothing was sent.
    TooLarge {
        /// The most payload bytes that fit.
        max: usize,
    },
    /// The arguments cannot be encoded (a serde error). Nothing was sent.
    Encode(EncodeError),
    /// Every slot of the call table holds a call waiting for its reply.
    TooManyCalls,
    /// The token answers no call this connection owes (answered already,
    /// or another connection's).
    NotOwed,
    /// The handshake is not at the step this method belongs to.
    NotExpected,
    /// The connection is closed or closing: nothing more is sent.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { max } => write!(f, "payload too large: at most {max} bytes fit"),
            Self::Encode(e) => write!(f, "payload: {e}"),
            Self::TooManyCalls => f.write_str("too many calls in flight"),
            Self::NotOwed => f.write_str("no such call is owed an answer"),
            Self::NotExpected => f.write_str("not at this step of the handshake"),
            Self::Closed => f.write_str("the connection is closed"),
        }
    }
}

impl core::error::Error for SendError {}
