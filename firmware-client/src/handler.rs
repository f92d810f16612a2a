//! The mind: how the application answers the server's calls.

use core::future::Future;

use tether_core::connection::REPLY_TOO_LARGE;
use tether_core::message::{DecodeError, EncodeError, ErrorCode};
use tether_core::method::{self, Method, ToDevice};

/// Answers the server's calls and receives its notifications.
///
/// The session runs the handler whenever a call or notification arrives:
/// while it serves ([`Session::serve`](crate::Session::serve) and friends)
/// and while it waits for the reply to one of the device's own calls. It runs
/// one call at a time, to completion; while it runs, the session reads
/// nothing, so keep it short (reading a sensor is fine; a minute-long job
/// should be started here and reported later with a notification).
///
/// ```
/// use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
/// use tether_firmware::{Handler, Request, Responded, Responder};
///
/// struct Mind { boots: u32 }
///
/// impl Handler for Mind {
///     async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
///         if req.is::<Echo>() {
///             match req.args::<Echo>() {
///                 Ok(text) => reply.ok::<Echo>(&text),
///                 Err(_) => reply.bad_arguments(),
///             }
///         } else if req.is::<DeviceInfo>() {
///             reply.ok::<DeviceInfo>(&DeviceStatus { firmware: "demo 1.0", uptime_secs: 42 })
///         } else {
///             reply.unknown_method()
///         }
///     }
///
///     async fn on_notify(&mut self, method: &str, _args: &[u8]) {
///         if method == "reboot_counter_reset" { self.boots = 0 }
///     }
/// }
/// ```
pub trait Handler {
    /// Answers one call from the server through `reply`.
    fn on_call(
        &mut self,
        req: Request<'_>,
        reply: Responder<'_>,
    ) -> impl Future<Output = Responded>;

    /// Receives a notification (a one-way message) from the server. The
    /// default ignores it.
    fn on_notify(&mut self, method: &str, args: &[u8]) -> impl Future<Output = ()> {
        let _ = (method, args);
        core::future::ready(())
    }
}

/// A device that serves nothing: every call is answered `unknown_method`,
/// notifications are dropped.
impl Handler for () {
    fn on_call(
        &mut self,
        _req: Request<'_>,
        reply: Responder<'_>,
    ) -> impl Future<Output = Responded> {
        core::future::ready(reply.unknown_method())
    }
}

impl<H: Handler + ?Sized> Handler for &mut H {
    fn on_call(
        &mut self,
        req: Request<'_>,
        reply: Responder<'_>,
    ) -> impl Future<Output = Responded> {
        (**self).on_call(req, reply)
    }

    fn on_notify(&mut self, method: &str, args: &[u8]) -> impl Future<Output = ()> {
        (**self).on_notify(method, args)
    }
}

/// A call from the server. Its fields borrow the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub(crate) id: u32,
    pub(crate) method: &'a str,
    pub(crate) args: &'a [u8],
}

impl<'a> Request<'a> {
    /// The server's id for the call.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The method name.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The postcard-encoded arguments.
    pub fn raw_args(&self) -> &'a [u8] {
        self.args
    }

    /// Whether this is a call of `M`.
    pub fn is<M: Method>(&self) -> bool {
        self.method == M::NAME
    }

    /// The arguments decoded as `M`'s (on error answer
    /// [`Responder::bad_arguments`]).
    pub fn args<M: ToDevice>(&self) -> Result<M::Args<'a>, DecodeError> {
        method::decode_args::<M>(self.args)
    }
}

/// The answer in the answer buffer's first `len` bytes: the reply, or
/// with `code` an error's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) code: Option<ErrorCode>,
    pub(crate) len: usize,
}

/// Writes the answer to one call straight into its place in the session's
/// transmit buffer (sized to what the server accepts); each method consumes
/// it and returns the [`Responded`] token the handler hands back.
#[derive(Debug)]
pub struct Responder<'o> {
    pub(crate) out: &'o mut [u8],
}

/// Proof that a [`Responder`] answered (returned by [`Handler::on_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "return it from Handler::on_call"]
pub struct Responded(pub(crate) Outcome);

impl Responder<'_> {
    /// Answers with `M`'s reply. A reply too large for the server (or the
    /// transmit buffer) becomes the error `FAILED` "reply too large".
    pub fn ok<M: ToDevice>(self, reply: &M::Reply<'_>) -> Responded {
        match method::encode_reply::<M>(reply, self.out) {
            Ok(bytes) => Responded(Outcome {
                code: None,
                len: bytes.len(),
            }),
            Err(EncodeError::BufferFull) => self.error(ErrorCode::FAILED, REPLY_TOO_LARGE),
            Err(EncodeError::Unencodable) => self.error(ErrorCode::FAILED, "reply unencodable"),
        }
    }

    /// Answers with already postcard-encoded reply bytes.
    pub fn ok_raw(self, bytes: &[u8]) -> Responded {
        match self.out.get_mut(..bytes.len()) {
            Some(out) => {
                out.copy_from_slice(bytes);
                Responded(Outcome {
                    code: None,
                    len: bytes.len(),
                })
            }
            None => self.error(ErrorCode::FAILED, REPLY_TOO_LARGE),
        }
    }

    /// Answers with an error; `message` is cut (at a character boundary) to
    /// what fits.
    pub fn error(self, code: ErrorCode, message: &str) -> Responded {
        let mut len = message.len().min(self.out.len());
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        self.out[..len].copy_from_slice(&message.as_bytes()[..len]);
        Responded(Outcome {
            code: Some(code),
            len,
        })
    }

    /// Answers `UNKNOWN_METHOD`.
    pub fn unknown_method(self) -> Responded {
        self.error(ErrorCode::UNKNOWN_METHOD, "unknown method")
    }

    /// Answers `BAD_ARGUMENTS`.
    pub fn bad_arguments(self) -> Responded {
        self.error(ErrorCode::BAD_ARGUMENTS, "bad arguments")
    }
}
