//! What can go wrong, said precisely.
//!
//! [`Error`] ends the session (or the login); [`CallError`] and [`Failure`]
//! are about one call, after which the session goes on unless the error is
//! [`CallError::Session`].

use core::fmt;

use tether_core::connection::{ConnectionError, Violation};
use tether_core::frame::FrameError;
use tether_core::message::{DecodeError, EncodeError, ErrorCode, GoodbyeReason, RefusalCode};
use tether_core::scram::ScramError;
use tether_core::session::SessionError;

/// What the client was waiting for when time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TimeoutKind {
    /// The server's next handshake message ([`Config::handshake_timeout`](crate::Config::handshake_timeout)).
    Handshake,
    /// A frame could not be written ([`Config::write_timeout`](crate::Config::write_timeout));
    /// the stream is now out of sync.
    Write,
    /// Nothing arrived from the server for three heartbeat intervals,
    /// pings included: the connection is dead.
    Heartbeat,
}

/// An error that ends the login or the session. `E` is the transport's
/// error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The server refused the login. `Unauthorized` (wrong password, or an
    /// account that cannot log in: the server's log says why),
    /// `Unsupported` (no mechanism offered that the server runs) and
    /// `Version` will not change by retrying; `Throttled`, `Unavailable`
    /// and `Busy` may, after `retry_after_secs` (0: unknown).
    Refused {
        /// Why.
        code: RefusalCode,
        /// Seconds to wait before trying again (0 when not given).
        retry_after_secs: u16,
    },
    /// The client's own SCRAM checks failed, and it sent nothing more:
    /// [`ScramError::InvalidServerSignature`] means the server could not
    /// prove it holds the account's verifier (an impostor), and
    /// [`ScramError::IterationsTooLow`] / [`ScramError::IterationsTooHigh`]
    /// that it asked for a PBKDF2 iteration count outside
    /// [`Config::scram`](crate::Config::scram)'s bounds.
    /// [`ScramError::CachedKeysMismatch`]: the cached keys are for another
    /// salt or iteration count (the password was changed or re-hashed), so
    /// log in with the password again.
    Login(ScramError),
    /// The server ended the session with a goodbye: `Shutdown`,
    /// `IdleTimeout`, `Kicked` (an operator ended it), `Revoked` (the
    /// account may no longer log in: deactivated or deleted in Django, its
    /// password changed, or it lost the permission or group the server
    /// requires) or `ProtocolError`. The session is over; the application
    /// decides whether to log in again. After `Revoked` the next login
    /// tells: it is refused `Unauthorized` (retrying will not help) unless
    /// the account may still log in, and cached keys stop fitting after a
    /// password change ([`ScramError::CachedKeysMismatch`]).
    Closed(GoodbyeReason),
    /// The connection ended (EOF) without a goodbye.
    Disconnected,
    /// A session frame failed authentication: [`SessionError::BadTag`] (tag
    /// mismatch: forged, altered or corrupted), a replayed or reordered
    /// frame, or an authentic message that does not decode.
    Session(SessionError),
    /// Framing failed: a length of 0 or above our maximum, or the
    /// connection ended inside a frame.
    Frame(FrameError),
    /// The server broke the protocol (the [`Violation`] says how: an
    /// undecodable handshake message, a reply to a call not in flight...);
    /// the client said goodbye with `ProtocolError` where the contract asks
    /// for it.
    Protocol(Violation),
    /// Time ran out.
    Timeout(TimeoutKind),
    /// The transport failed.
    Transport(E),
    /// A buffer passed to the client cannot do its job (the detail says
    /// which and why).
    Buffer(&'static str),
    /// [`Session::next_reply`](crate::Session::next_reply) was called with
    /// no call in flight. The session goes on.
    NoCallInFlight,
    /// The session already ended (an earlier error or goodbye); log in again.
    Ended,
    /// Protocol v2 (feature `v2`): the server's Noise answer failed. With
    /// a pinned key ([`Protocol::Pinned`](crate::Protocol::Pinned)),
    /// [`NoiseError::Decrypt`](tether_core::noise::NoiseError::Decrypt)
    /// means that whoever answered does not hold that key (an impostor) or
    /// altered the answer. Nothing more was sent.
    #[cfg(feature = "v2")]
    Noise(tether_core::noise::NoiseError),
}

impl<E> Error<E> {
    /// Whether reconnecting later can succeed without anyone changing the
    /// account, the server or the firmware: everything but the refusals
    /// `Unauthorized`, `Unsupported`, `Version` and `Protocol`, and cached
    /// keys that no longer fit.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { code, .. } => code.is_transient(),
            Self::Login(ScramError::CachedKeysMismatch) => false,
            Self::Buffer(_) => false,
            _ => true,
        }
    }

    /// The delay the server asked for, in seconds (refusals only).
    pub fn retry_after_secs(&self) -> Option<u16> {
        match self {
            Self::Refused {
                retry_after_secs, ..
            } if *retry_after_secs > 0 => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The same error with the transport error mapped by `f`.
    pub fn map_transport<F, G: FnOnce(E) -> F>(self, f: G) -> Error<F> {
        match self {
            Self::Refused {
                code,
                retry_after_secs,
            } => Error::Refused {
                code,
                retry_after_secs,
            },
            Self::Login(e) => Error::Login(e),
            Self::Closed(r) => Error::Closed(r),
            Self::Disconnected => Error::Disconnected,
            Self::Session(e) => Error::Session(e),
            Self::Frame(e) => Error::Frame(e),
            Self::Protocol(d) => Error::Protocol(d),
            Self::Timeout(k) => Error::Timeout(k),
            Self::Transport(e) => Error::Transport(f(e)),
            Self::Buffer(d) => Error::Buffer(d),
            Self::NoCallInFlight => Error::NoCallInFlight,
            Self::Ended => Error::Ended,
            #[cfg(feature = "v2")]
            Self::Noise(e) => Error::Noise(e),
        }
    }
}

impl<E> From<FrameError> for Error<E> {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl<E> From<ConnectionError> for Error<E> {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Refused(r) => Self::Refused {
                code: r.code,
                retry_after_secs: r.retry_after_secs,
            },
            ConnectionError::Scram(e) => Self::Login(e),
            ConnectionError::Protocol(v) => Self::Protocol(v),
            ConnectionError::Frame(e) => Self::Frame(e),
            ConnectionError::Session(e) => Self::Session(e),
            ConnectionError::Closed(reason) => Self::Closed(reason),
            ConnectionError::Disconnected => Self::Disconnected,
            ConnectionError::HandshakeTimeout => Self::Timeout(TimeoutKind::Handshake),
            ConnectionError::IdleTimeout => Self::Timeout(TimeoutKind::Heartbeat),
            #[cfg(feature = "v2")]
            ConnectionError::Noise(e) => Self::Noise(e),
            _ => Self::Ended,
        }
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "v2")]
            Self::Refused {
                code: RefusalCode::UnknownKey,
                ..
            } => f.write_str(
                "login refused: unknown_key (the server holds no key matching the pinned server key: wrong or retired)",
            ),
            Self::Refused {
                code,
                retry_after_secs: 0,
            } => write!(f, "login refused: {code}"),
            Self::Refused {
                code,
                retry_after_secs,
            } => write!(
                f,
                "login refused: {code} (retry after {retry_after_secs} s)"
            ),
            Self::Login(ScramError::InvalidServerSignature) => f.write_str(
                "login aborted: the server could not prove it holds the account's verifier",
            ),
            Self::Login(e) => write!(f, "login aborted: {e}"),
            Self::Closed(reason) => write!(f, "server closed the session: {reason}"),
            Self::Disconnected => f.write_str("connection closed without a goodbye"),
            Self::Session(SessionError::BadTag) => {
                f.write_str("session frame tag mismatch (forged or corrupted frame)")
            }
            Self::Session(e) => write!(f, "session frame rejected: {e}"),
            Self::Frame(e) => write!(f, "framing: {e}"),
            Self::Protocol(what) => write!(f, "server broke the protocol: {what}"),
            Self::Timeout(TimeoutKind::Handshake) => {
                f.write_str("timed out waiting for the server's handshake")
            }
            Self::Timeout(TimeoutKind::Write) => f.write_str("timed out writing a frame"),
            Self::Timeout(TimeoutKind::Heartbeat) => {
                f.write_str("server silent for three heartbeat intervals")
            }
            Self::Transport(e) => write!(f, "transport error: {e:?}"),
            Self::Buffer(what) => write!(f, "buffer: {what}"),
            Self::NoCallInFlight => f.write_str("no call in flight"),
            Self::Ended => f.write_str("the session has ended"),
            #[cfg(feature = "v2")]
            Self::Noise(tether_core::noise::NoiseError::Decrypt) => f.write_str(
                "Noise handshake failed: the server's answer does not authenticate (with a pinned key: whoever answered does not hold it)",
            ),
            #[cfg(feature = "v2")]
            Self::Noise(e) => write!(f, "Noise handshake failed: {e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// How one call failed, with the session still up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The server answered with an error.
    Remote {
        /// Its code (`ErrorCode::UNKNOWN_METHOD`, `BAD_ARGUMENTS`, ... or an
        /// application code).
        code: ErrorCode,
        /// Its human-readable detail.
        message: &'a str,
    },
    /// No answer within the call's timeout. A late answer is ignored.
    Timeout,
    /// The answer does not decode as the method's reply type.
    BadReply(DecodeError),
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote { code, message } => write!(f, "remote error {code}: {message}"),
            Self::Timeout => f.write_str("call timed out"),
            Self::BadReply(e) => write!(f, "reply does not decode: {e}"),
        }
    }
}

impl core::error::Error for Failure<'_> {}

/// Why a call (or notification) did not produce a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError<'a, E> {
    /// The server answered with an error.
    Remote {
        /// Its code.
        code: ErrorCode,
        /// Its human-readable detail.
        message: &'a str,
    },
    /// No answer within the timeout; the session goes on.
    Timeout,
    /// The answer does not decode as the method's reply type.
    BadReply(DecodeError),
    /// The arguments cannot be encoded (a serde error).
    Encode(EncodeError),
    /// The arguments do not fit the server's largest frame or the transmit
    /// buffer, whichever is smaller; nothing was sent.
    TooLarge {
        /// The most argument bytes that fit.
        max: usize,
    },
    /// [`MAX_CALLS_IN_FLIGHT`](crate::MAX_CALLS_IN_FLIGHT) calls are already
    /// waiting for replies.
    TooManyCalls,
    /// [`Session::call`](crate::Session::call) needs every earlier
    /// [`Session::send_call`](crate::Session::send_call) to be answered
    /// first (collect them with [`Session::next_reply`](crate::Session::next_reply)).
    CallsPending,
    /// The session ended.
    Session(Error<E>),
}

impl<E> CallError<'_, E> {
    /// Whether the session is over (reconnect); otherwise only this call
    /// failed.
    pub fn ends_session(&self) -> bool {
        matches!(self, Self::Session(_))
    }
}

impl<E> From<Error<E>> for CallError<'_, E> {
    fn from(e: Error<E>) -> Self {
        Self::Session(e)
    }
}

impl<'a, E> From<Failure<'a>> for CallError<'a, E> {
    fn from(f: Failure<'a>) -> Self {
        match f {
            Failure::Remote { code, message } => Self::Remote { code, message },
            Failure::Timeout => Self::Timeout,
            Failure::BadReply(e) => Self::BadReply(e),
        }
    }
}

impl<E: fmt::Debug> fmt::Display for CallError<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote { code, message } => write!(f, "remote error {code}: {message}"),
            Self::Timeout => f.write_str("call timed out"),
            Self::BadReply(e) => write!(f, "reply does not decode: {e}"),
            Self::Encode(e) => write!(f, "arguments: {e}"),
            Self::TooLarge { max } => write!(f, "arguments too large: at most {max} bytes fit"),
            Self::TooManyCalls => f.write_str("too many calls in flight"),
            Self::CallsPending => f.write_str("earlier calls still pending"),
            Self::Session(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for CallError<'_, E> {}

impl<'a, E> CallError<'a, E> {
    /// The same error owning its message, free of the receive buffer's
    /// borrow (feature `alloc`, on by `std`): what `?` into `anyhow` or
    /// `Box<dyn Error>` needs.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use tether_core::message::ErrorCode;
    /// use tether_firmware::{CallError, OwnedCallError};
    ///
    /// fn app(buffer: &str) -> Result<(), Box<dyn std::error::Error>> {
    ///     let e: CallError<'_, std::io::Error> =
    ///         CallError::Remote { code: ErrorCode::FAILED, message: buffer };
    ///     Err(e.into_owned())?
    /// }
    /// let e = app("sensor offline").unwrap_err();
    /// assert_eq!(e.to_string(), "remote error failed (3): sensor offline");
    /// # }
    /// ```
    #[cfg(feature = "alloc")]
    pub fn into_owned(self) -> OwnedCallError<E> {
        self.into()
    }
}

/// [`CallError`] owning its remote message (feature `alloc`): `'static`
/// whenever the transport error is, so it goes into `anyhow`,
/// `Box<dyn Error>` and across tasks. Made by [`CallError::into_owned`]
/// or returned by [`Session::call_owned`](crate::Session::call_owned).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedCallError<E> {
    /// The server answered with an error.
    Remote {
        /// Its code.
        code: ErrorCode,
        /// Its human-readable detail.
        message: alloc::string::String,
    },
    /// No answer within the timeout; the session goes on.
    Timeout,
    /// The answer does not decode as the method's reply type.
    BadReply(DecodeError),
    /// The arguments cannot be encoded (a serde error).
    Encode(EncodeError),
    /// The arguments do not fit; nothing was sent.
    TooLarge {
        /// The most argument bytes that fit.
        max: usize,
    },
    /// [`MAX_CALLS_IN_FLIGHT`](crate::MAX_CALLS_IN_FLIGHT) calls are already
    /// waiting for replies.
    TooManyCalls,
    /// Earlier [`Session::send_call`](crate::Session::send_call)s wait for
    /// their replies.
    CallsPending,
    /// The session ended.
    Session(Error<E>),
}

#[cfg(feature = "alloc")]
impl<E> OwnedCallError<E> {
    /// Whether the session is over (reconnect); otherwise only this call
    /// failed.
    pub fn ends_session(&self) -> bool {
        matches!(self, Self::Session(_))
    }
}

#[cfg(feature = "alloc")]
impl<E> From<CallError<'_, E>> for OwnedCallError<E> {
    fn from(e: CallError<'_, E>) -> Self {
        match e {
            CallError::Remote { code, message } => Self::Remote {
                code,
                message: message.into(),
            },
            CallError::Timeout => Self::Timeout,
            CallError::BadReply(e) => Self::BadReply(e),
            CallError::Encode(e) => Self::Encode(e),
            CallError::TooLarge { max } => Self::TooLarge { max },
            CallError::TooManyCalls => Self::TooManyCalls,
            CallError::CallsPending => Self::CallsPending,
            CallError::Session(e) => Self::Session(e),
        }
    }
}

#[cfg(feature = "alloc")]
impl<E> From<Error<E>> for OwnedCallError<E> {
    fn from(e: Error<E>) -> Self {
        Self::Session(e)
    }
}

#[cfg(feature = "alloc")]
impl<E> From<Failure<'_>> for OwnedCallError<E> {
    fn from(f: Failure<'_>) -> Self {
        CallError::<E>::from(f).into()
    }
}

#[cfg(feature = "alloc")]
impl<E: fmt::Debug> fmt::Display for OwnedCallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote { code, message } => write!(f, "remote error {code}: {message}"),
            Self::Timeout => f.write_str("call timed out"),
            Self::BadReply(e) => write!(f, "reply does not decode: {e}"),
            Self::Encode(e) => write!(f, "arguments: {e}"),
            Self::TooLarge { max } => write!(f, "arguments too large: at most {max} bytes fit"),
            Self::TooManyCalls => f.write_str("too many calls in flight"),
            Self::CallsPending => f.write_str("earlier calls still pending"),
            Self::Session(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "alloc")]
impl<E: fmt::Debug> core::error::Error for OwnedCallError<E> {}
