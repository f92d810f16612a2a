//! The logged-in connection, the same machine on both sides: session
//! frames in and out, calls both ways, heartbeat, goodbye.

use core::time::Duration;

use super::calls::{Admission, Answers, Calls, Completion, Fixed, Tables, notice_text};
use super::{ConnectionError, IDLE_HEARTBEATS, Instant, SendError, Violation, millis};
use crate::codec::{Head, small};
use crate::frame::{FrameDecoder, HEADER_LEN};
use crate::message::{EncodeError, ErrorCode, GoodbyeReason, Message};
use crate::method::{self, Method};
use crate::session::{Opener, Role, SEQ_LEN, Sealer, SessionError, TAG_LEN};

/// The message of the error that replaces a reply too large for the peer
/// (code [`ErrorCode::FAILED`]): the call still gets an answer.
pub const REPLY_TOO_LARGE: &str = "reply too large";

/// A received frame body: decrypted in place with v2.
#[cfg(feature = "v2")]
type FrameBody<'c> = &'c mut [u8];
/// A received frame body.
#[cfg(not(feature = "v2"))]
type FrameBody<'c> = &'c [u8];

/// Which owed message `poll_transmit` sealed.
#[derive(Clone, Copy)]
enum Owed {
    Pong,
    Notice,
    Ping,
    Goodbye,
}

/// Where an answer's payload starts in a transmit buffer: after the
/// length prefix, the sequence number and the largest head of a `Reply` or
/// an `Error` (variant, id, code, payload length).
const ANSWER_AT: usize = HEADER_LEN + SEQ_LEN + 12;

/// Something that happened on an established connection, for the
/// application. Borrowed from the connection's receive buffer: handle it
/// before polling again.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'c> {
    /// The peer calls a method: answer it through its [`ReplyToken`].
    Call(IncomingCall<'c>),
    /// The peer sent a notification (no answer).
    Notify(Notification<'c>),
    /// One of this side's calls is answered, or timed out.
    Reply(Reply<'c>),
}

/// A call from the peer. Take its [`ReplyToken`] with
/// [`into_token`](Self::into_token) and answer with
/// [`Connection::reply`] (or `reply_in_place`, `error`, ...), now or later.
/// A call whose token is never taken is answered
/// `FAILED "call not answered"` by the connection at the next
/// [`poll_event`](Connection::poll_event): every call gets an answer.
#[derive(Debug)]
#[must_use = "take its token and answer the call"]
pub struct IncomingCall<'c> {
    id: u32,
    method: &'c str,
    args: &'c [u8],
    /// End of an answer's payload room in a transmit buffer (exclusive),
    /// from the peer's max frame.
    room_end: usize,
    fresh: &'c mut Option<u32>,
}

impl<'c> IncomingCall<'c> {
    /// The peer's id for the call.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The method name.
    pub fn method(&self) -> &'c str {
        self.method
    }

    /// The postcard-encoded arguments.
    pub fn args(&self) -> &'c [u8] {
        self.args
    }

    /// Whether this is a call of `M`.
    pub fn is<M: Method>(&self) -> bool {
        self.method == M::NAME
    }

    /// Where to encode the answer's payload (the reply, or an error's
    /// message) in `out`, the buffer the answer will be sealed in: then
    /// answer with [`Connection::reply_in_place`] or
    /// [`Connection::error_in_place`], no copy. Its size is what the peer
    /// accepts.
    pub fn answer_buffer<'o>(&self, out: &'o mut [u8]) -> &'o mut [u8] {
        answer_room(out, self.room_end)
    }

    /// The right, and duty, to answer this call.
    pub fn into_token(self) -> ReplyToken {
        *self.fresh = None;
        ReplyToken { id: self.id }
    }
}

/// The answer owed to one call of the peer: spent by the method that
/// answers it. Not `Clone`: a call is answered once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "answer the call with Connection::reply or Connection::error"]
pub struct ReplyToken {
    id: u32,
}

impl ReplyToken {
    /// The id of the call it answers.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A notification from the peer.
#[derive(Debug, Clone, Copy)]
pub struct Notification<'c> {
    /// Method (topic) name.
    pub method: &'c str,
    /// Postcard-encoded arguments.
    pub args: &'c [u8],
}

/// The outcome of one of this side's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'c> {
    /// The id the call was sent with.
    pub id: u32,
    /// The postcard-encoded result, or how the call failed.
    pub result: Result<&'c [u8], CallFailure<'c>>,
}

/// How a call failed with the connection still up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure<'c> {
    /// The peer answered with an error.
    Remote {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: &'c str,
    },
    /// No answer before the call's deadline. A late answer is dropped.
    TimedOut,
}

impl core::fmt::Display for CallFailure<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Remote { code, message } => write!(f, "remote error {code}: {message}"),
            Self::TimedOut => f.write_str("call timed out"),
        }
    }
}

impl core::error::Error for CallFailure<'_> {}

/// A logged-in connection (see the [module docs](super)): what
/// [`ClientHandshake`](super::ClientHandshake) and
/// [`ServerHandshake`](super::ServerHandshake) turn into.
///
/// `B` is the receive buffer (the largest frame this side accepts),
/// `CALLS` the size of this side's table of calls in flight, `ANSWERS` of
/// the peer's calls it may owe an answer at once; `T` says where the two
/// tables live: [`Fixed`] arrays of those sizes (the default, no
/// allocation), or with the `alloc` feature `Growable` vectors that grow
/// to those bounds on demand and are freed by
/// [`release_tables`](Self::release_tables).
#[derive(Debug)]
// Fuzzing starts many inputs from one logged-in connection; elsewhere a
// copy would send frames the peer takes for replays.
#[cfg_attr(fuzzing, derive(Clone))]
pub struct Connection<B, const CALLS: usize, const ANSWERS: usize, T: Tables = Fixed> {
    rx: FrameDecoder<B>,
    core: Core<CALLS, ANSWERS, T>,
}

/// Everything but the receive buffer: the rules, independent of `B`.
#[derive(Debug)]
#[cfg_attr(fuzzing, derive(Clone))]
struct Core<const CALLS: usize, const ANSWERS: usize, T: Tables> {
    role: Role,
    sealer: Sealer,
    opener: Opener,
    peer_max: usize,
    session_id: u64,
    heartbeat_secs: u16,
    /// Milliseconds of the last frame received and sent.
    last_recv: u64,
    last_sent: u64,
    /// A ping was sent and nothing came since.
    ping_outstanding: bool,
    ping_owed: bool,
    next_nonce: u32,
    shutting_down: bool,
    /// Owed to the peer, sent by `poll_transmit` in this order.
    pong: Option<u32>,
    notice: Option<(u32, ErrorCode)>,
    goodbye: Option<GoodbyeReason>,
    /// Set once the connection is over; returned by every later poll.
    error: Option<ConnectionError>,
    calls: Calls<T::Slots<CALLS>, CALLS>,
    answers: Answers<T::Ids<ANSWERS>, ANSWERS>,
    /// The reply `poll_event` returned last (its bytes as offsets in the
    /// receive buffer), until the connection is polled or given input.
    last_reply: Option<LastReply>,
}

/// Where the last reply's bytes are in the receive buffer.
#[derive(Debug, Clone, Copy)]
struct LastReply {
    id: u32,
    /// `None`: timed out; else the error code (`None` inside: a result).
    code: Option<Option<ErrorCode>>,
    start: usize,
    len: usize,
}

/// How an established connection starts (from a handshake).
pub(crate) struct Start {
    pub(crate) role: Role,
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    pub(crate) peer_max: u16,
    pub(crate) session_id: u64,
    pub(crate) heartbeat_secs: u16,
    pub(crate) max_answers: usize,
    pub(crate) now: Instant,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const CALLS: usize, const ANSWERS: usize, T: Tables>
    Connection<B, CALLS, ANSWERS, T>
{
    pub(crate) fn new(rx: FrameDecoder<B>, s: Start) -> Self {
        let now = s.now.as_millis();
        Self {
            rx,
            core: Core {
                role: s.role,
                sealer: s.sealer,
                opener: s.opener,
                peer_max: s.peer_max.into(),
                session_id: s.session_id,
                heartbeat_secs: s.heartbeat_secs,
                last_recv: now,
                last_sent: now,
                ping_outstanding: false,
                ping_owed: false,
                next_nonce: 1,
                shutting_down: false,
                pong: None,
                notice: None,
                goodbye: None,
                error: None,
                calls: Calls::new(),
                answers: Answers::new(s.max_answers),
                last_reply: None,
            },
        }
    }

    /// Where the next received bytes go (exactly what the current frame
    /// still misses); then [`commit`](Self::commit) them. Empty only when
    /// a frame waits for [`poll_event`](Self::poll_event): poll first.
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        self.rx.receive_buffer()
    }

    /// Records `n` bytes received into [`receive_buffer`](Self::receive_buffer).
    /// A bad length prefix ends the connection (`Goodbye(protocol_error)`,
    /// then [`ConnectionError::Frame`] from [`poll_event`](Self::poll_event)).
    pub fn commit(&mut self, n: usize) {
        self.core.last_reply = None;
        if let Err(e) = self.rx.commit(n) {
            self.core.fail(
                ConnectionError::Frame(e),
                Some(GoodbyeReason::ProtocolError),
            );
        }
    }

    /// The input ended (the transport read 0 bytes): the connection is
    /// over, [`ConnectionError::Disconnected`] between frames or
    /// [`FrameError::Truncated`](crate::frame::FrameError::Truncated) inside
    /// one (the error is returned, and by every later poll).
    pub fn handle_eof(&mut self) -> ConnectionError {
        let e = match self.rx.finish() {
            Ok(()) => ConnectionError::Disconnected,
            Err(e) => ConnectionError::Frame(e),
        };
        self.core.fail(e, None)
    }

    /// The next event. Handles at most one received frame per call, and
    /// none while an answer the connection owes (a pong, a `busy` error) is
    /// still to be sent: call [`poll_transmit`](Self::poll_transmit) until
    /// it returns `None` before polling, and wait for input only once this
    /// returns `Ok(None)`.
    ///
    /// An error ends the connection: it is returned again by every later
    /// call, and [`poll_transmit`](Self::poll_transmit) may still hold the
    /// goodbye that says so.
    pub fn poll_event(&mut self, now: Instant) -> Result<Option<Event<'_>>, ConnectionError> {
        self.core.last_reply = None;
        self.core.settle()?;
        if self.core.pong.is_some() || self.core.notice.is_some() {
            return Ok(None);
        }
        // v1-only builds open frames in place of nothing: the shared
        // immutable `take_frame` (one copy in a device's flash).
        #[cfg(not(feature = "v2"))]
        let frame = self.rx.take_frame();
        #[cfg(feature = "v2")]
        let frame = self.rx.take_frame_mut();
        self.core.handle(frame, now.as_millis())
    }

    /// The next frame the connection itself owes the peer (a pong, a
    /// heartbeat ping, an error answer, the goodbye), written at the start
    /// of `out`, or `None`. `out` must hold 64 bytes.
    pub fn poll_transmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<&'o [u8]> {
        self.core.poll_transmit(now.as_millis(), out)
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: a
    /// heartbeat ping, the idle limit, a call's deadline. `None`: nothing
    /// is timed (or the connection is over).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout().map(Instant::from_millis)
    }

    /// Runs the timers due at `now`: a ping to send, calls past their
    /// deadline (reported by [`poll_event`](Self::poll_event) as timed-out
    /// replies), a peer silent for three heartbeats (the connection ends
    /// with [`ConnectionError::IdleTimeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now.as_millis());
    }

    /// Frees the storage of `Growable` call tables (feature `alloc`)
    /// where no call is in flight: a driver calls it when the connection
    /// has gone quiet. Until then a growable table keeps what it grew to
    /// (at most its bound), so that a busy connection does not allocate
    /// per call. Nothing to free with [`Fixed`] tables.
    pub fn release_tables(&mut self) {
        self.core.calls.release_if_empty();
        self.core.answers.release_if_empty();
    }

    /// Calls `M` on the peer: seals the call into `out`, its arguments
    /// encoded in place, and returns its id and the frame to send. The
    /// reply (or [`CallFailure::TimedOut`] after `timeout`) comes as an
    /// [`Event::Reply`] with that id.
    pub fn call<'o, M: Method>(
        &mut self,
        now: Instant,
        args: &M::Args<'_>,
        timeout: Duration,
        out: &'o mut [u8],
    ) -> Result<(u32, &'o [u8]), SendError> {
        self.call_with(now, M::NAME, timeout, out, |buf| {
            method::encode_args::<M>(args, buf).map(|b| b.len())
        })
    }

    /// [`call`](Self::call) by name: `encode` writes the postcard-encoded
    /// arguments at the start of the slice it gets and returns their
    /// length.
    pub fn call_with<'o>(
        &mut self,
        now: Instant,
        method: &str,
        timeout: Duration,
        out: &'o mut [u8],
        mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<(u32, &'o [u8]), SendError> {
        let now = now.as_millis();
        self.core.call(
            now,
            method,
            now.saturating_add(millis(timeout)),
            out,
            &mut encode,
        )
    }

    /// Sends the notification `M` (no reply), its arguments encoded in
    /// place in `out`; returns the frame to send.
    pub fn notify<'o, M: Method>(
        &mut self,
        now: Instant,
        args: &M::Args<'_>,
        out: &'o mut [u8],
    ) -> Result<&'o [u8], SendError> {
        self.notify_with(now, M::NAME, out, |buf| {
            method::encode_args::<M>(args, buf).map(|b| b.len())
        })
    }

    /// [`notify`](Self::notify) by name, as [`call_with`](Self::call_with).
    pub fn notify_with<'o>(
        &mut self,
        now: Instant,
        method: &str,
        out: &'o mut [u8],
        mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<&'o [u8], SendError> {
        self.core
            .seal_with(Head::Notify { method }, now.as_millis(), out, &mut encode)
    }

    /// Answers a call with its postcard-encoded `result`. A result larger
    /// than the peer accepts is answered `FAILED` [`REPLY_TOO_LARGE`]
    /// instead.
    pub fn reply<'o>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        result: &[u8],
    ) -> Result<&'o [u8], SendError> {
        let room = answer_room(out, self.core.answer_room_end()).len();
        if result.len() > room {
            return self.error(token, now, out, ErrorCode::FAILED, REPLY_TOO_LARGE);
        }
        if let Some(dest) = out.get_mut(ANSWER_AT..ANSWER_AT + result.len()) {
            dest.copy_from_slice(result);
        }
        self.reply_in_place(token, now, out, result.len())
    }

    /// Answers `M`'s call with `reply`, encoded in place (`FAILED`
    /// [`REPLY_TOO_LARGE`] if it does not fit).
    pub fn reply_typed<'o, M: Method>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        reply: &M::Reply<'_>,
    ) -> Result<&'o [u8], SendError> {
        let room = answer_room(out, self.core.answer_room_end());
        match method::encode_reply::<M>(reply, room) {
            Ok(bytes) => {
                let n = bytes.len();
                self.reply_in_place(token, now, out, n)
            }
            Err(EncodeError::BufferFull) => {
                self.error(token, now, out, ErrorCode::FAILED, REPLY_TOO_LARGE)
            }
            Err(EncodeError::Unencodable) => {
                self.error(token, now, out, ErrorCode::FAILED, "reply unencodable")
            }
        }
    }

    /// Answers a call whose postcard-encoded result the application wrote
    /// in the first `len` bytes of [`IncomingCall::answer_buffer`] (or
    /// [`answer_buffer`](Self::answer_buffer)) of `out`. A `len` beyond
    /// that buffer is [`SendError::TooLarge`], and the connection answers
    /// the call `FAILED` itself.
    pub fn reply_in_place<'o>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        len: usize,
    ) -> Result<&'o [u8], SendError> {
        self.answer_in_place(token, now, out, None, len)
    }

    /// Answers a call with an error. `message` is cut (at a character
    /// boundary) to what the peer accepts: the call always gets its answer.
    pub fn error<'o>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        code: ErrorCode,
        message: &str,
    ) -> Result<&'o [u8], SendError> {
        let room = answer_room(out, self.core.answer_room_end());
        let mut n = message.len().min(room.len());
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        room[..n].copy_from_slice(&message.as_bytes()[..n]);
        self.error_in_place(token, now, out, code, n)
    }

    /// Answers a call with an error whose message the application wrote in
    /// the first `len` bytes of the answer buffer of `out` (cut to its
    /// valid UTF-8 prefix).
    pub fn error_in_place<'o>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        code: ErrorCode,
        len: usize,
    ) -> Result<&'o [u8], SendError> {
        self.answer_in_place(token, now, out, Some(code), len)
    }

    /// [`reply_in_place`](Self::reply_in_place) (`error` is `None`) or
    /// [`error_in_place`](Self::error_in_place) (`Some(code)`), for a driver
    /// that learns which from the application.
    pub fn answer_in_place<'o>(
        &mut self,
        token: ReplyToken,
        now: Instant,
        out: &'o mut [u8],
        error: Option<ErrorCode>,
        mut len: usize,
    ) -> Result<&'o [u8], SendError> {
        if error.is_some() {
            // An error's message is cut to what fits, and to valid UTF-8.
            len = len.min(answer_room(out, self.core.answer_room_end()).len());
            let text = out.get(ANSWER_AT..ANSWER_AT + len).unwrap_or_default();
            if let Err(e) = core::str::from_utf8(text) {
                len = e.valid_up_to();
            }
        }
        self.core.answer(token, error, now.as_millis(), out, len)
    }

    /// Where an answer's payload goes in `out` (see
    /// [`IncomingCall::answer_buffer`]).
    pub fn answer_buffer<'o>(&self, out: &'o mut [u8]) -> &'o mut [u8] {
        answer_room(out, self.core.answer_room_end())
    }

    /// The reply the last [`poll_event`](Self::poll_event) returned, again,
    /// until the connection is polled or given input: a driver can finish
    /// other work (write what it held back) before it hands the reply out.
    pub fn last_reply(&self) -> Option<Reply<'_>> {
        let last = self.core.last_reply?;
        let bytes = self.rx.buffer().get(last.start..last.start + last.len)?;
        let result = match last.code {
            None => Err(CallFailure::TimedOut),
            Some(None) => Ok(bytes),
            Some(Some(code)) => Err(CallFailure::Remote {
                code,
                message: core::str::from_utf8(bytes).unwrap_or_default(),
            }),
        };
        Some(Reply {
            id: last.id,
            result,
        })
    }

    /// The receive buffer's storage, while no frame is partly received or
    /// waiting to be polled (`None` otherwise): a driver that lends
    /// buffers only while bytes are in flight (a server holding thousands
    /// of idle sessions) takes its storage back here, and gives it again
    /// before the next frame's body arrives. The storage keeps its size.
    /// [`last_reply`](Self::last_reply) is `None` afterwards.
    pub fn idle_receive_storage(&mut self) -> Option<&mut B> {
        self.core.last_reply = None;
        self.rx.idle_storage()
    }

    /// Gives up waiting for call `id`: its late reply will be dropped.
    /// False when no such call is in flight.
    pub fn cancel(&mut self, id: u32) -> bool {
        self.core.calls.cancel(id)
    }

    /// Ends the connection: [`poll_transmit`](Self::poll_transmit) gives
    /// out `Goodbye(reason)`, the last frame; nothing is sent after it, and
    /// every poll then returns [`ConnectionError::Ended`].
    pub fn close(&mut self, reason: GoodbyeReason) {
        self.core.fail(ConnectionError::Ended, Some(reason));
    }

    /// The transport failed: the connection ends at once, nothing more is
    /// sent (every poll then returns [`ConnectionError::Ended`]).
    pub fn abort(&mut self) {
        self.core.fail(ConnectionError::Ended, None);
    }

    /// From now on the peer's calls are answered
    /// [`ErrorCode::SHUTTING_DOWN`] by the connection; calls in flight
    /// both ways go on. Close with `Goodbye(shutdown)` once
    /// [`calls_in_flight`](Self::calls_in_flight) and
    /// [`answers_owed`](Self::answers_owed) are 0 (or a deadline passed).
    pub fn start_shutdown(&mut self) {
        self.core.shutting_down = true;
    }

    /// Whether the connection is over (or closing).
    pub fn is_closed(&self) -> bool {
        self.core.error.is_some()
    }

    /// The server's id for the session.
    pub fn session_id(&self) -> u64 {
        self.core.session_id
    }

    /// The heartbeat interval of the session, in seconds (0: none).
    pub fn heartbeat_secs(&self) -> u16 {
        self.core.heartbeat_secs
    }

    /// The largest frame body the peer accepts.
    pub fn peer_max_frame(&self) -> usize {
        self.core.peer_max
    }

    /// The largest frame body this side accepts.
    pub fn max_frame(&self) -> usize {
        self.rx.max()
    }

    /// This side's calls waiting for a reply.
    pub fn calls_in_flight(&self) -> usize {
        self.core.calls.in_flight()
    }

    /// The peer's calls this side has not answered yet.
    pub fn answers_owed(&self) -> usize {
        self.core.answers.len()
    }

    /// The peer's call this side is refusing by itself, without an event:
    /// its id and [`ErrorCode::BUSY`] (the answer table is full) or
    /// [`ErrorCode::SHUTTING_DOWN`] (after
    /// [`start_shutdown`](Self::start_shutdown)). Set by the
    /// [`poll_event`](Self::poll_event) that returned `Ok(None)` for that
    /// call, until [`poll_transmit`](Self::poll_transmit) sends the answer:
    /// a driver that counts refused calls asks after each `Ok(None)`.
    pub fn refusing(&self) -> Option<(u32, ErrorCode)> {
        self.core
            .notice
            .filter(|&(_, code)| code == ErrorCode::BUSY || code == ErrorCode::SHUTTING_DOWN)
    }

    /// The most argument bytes a call of `method` can carry to the peer
    /// (whatever its id): the one rule for "does this call fit", exact up
    /// to the few bytes of the id and length varints.
    pub fn max_args_len(&self, method: &str) -> usize {
        max_args_len(self.core.peer_max, method)
    }
}

/// The most argument bytes a call (or notification) of `method` can carry
/// to a peer whose largest frame body is `peer_max_frame`: the rule
/// [`Connection::max_args_len`] applies, for a driver that checks a call
/// before it hands it to the task that owns the connection.
pub fn max_args_len(peer_max_frame: usize, method: &str) -> usize {
    let head = Head::Call { id: 0, method }.max_len();
    peer_max_frame.saturating_sub(SEQ_LEN + head + TAG_LEN)
}

/// The payload room of an answer in `out`, up to `end`.
fn answer_room(out: &mut [u8], end: usize) -> &mut [u8] {
    let end = end.min(out.len()).max(ANSWER_AT);
    out.get_mut(ANSWER_AT..end).unwrap_or_default()
}

impl<const CALLS: usize, const ANSWERS: usize, T: Tables> Core<CALLS, ANSWERS, T> {
    /// Ends the connection with `e` (the first error wins) and owes the
    /// goodbye, if any; nothing else is sent any more.
    fn fail(&mut self, e: ConnectionError, goodbye: Option<GoodbyeReason>) -> ConnectionError {
        if self.error.is_none() {
            self.error = Some(e);
            self.goodbye = goodbye;
        }
        e
    }

    /// The error of a connection that is over; answers a call whose
    /// token was never taken.
    fn settle(&mut self) -> Result<(), ConnectionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if let Some(id) = self.answers.fresh.take()
            && self.answers.remove(id)
        {
            self.notice = Some((id, ErrorCode::FAILED));
        }
        Ok(())
    }

    fn handle<'c>(
        &'c mut self,
        frame: Option<FrameBody<'c>>,
        now: u64,
    ) -> Result<Option<Event<'c>>, ConnectionError> {
        let Some(body) = frame else {
            return Ok(self.calls.take_expired(now).map(|id| {
                self.last_reply = Some(LastReply {
                    id,
                    code: None,
                    start: 0,
                    len: 0,
                });
                Event::Reply(Reply {
                    id,
                    result: Err(CallFailure::TimedOut),
                })
            }));
        };
        // Every failure ends here, in one place: the error and the goodbye
        // that says so.
        let protocol = Some(GoodbyeReason::ProtocolError);
        let (error, goodbye) = 'failed: {
            let body_at = body.as_ptr() as usize;
            #[cfg(not(feature = "v2"))]
            let opened = self.opener.open(body);
            #[cfg(feature = "v2")]
            let opened = self.opener.open_in_place(body);
            let msg = match opened {
                Ok(msg) => msg,
                Err(e) => {
                    // The client says nothing to what may not be the server;
                    // the server tells a device whose link corrupts frames.
                    let reason = e.goodbye_reason();
                    let goodbye = (self.role == Role::Server || reason != GoodbyeReason::BadTag)
                        .then_some(reason);
                    break 'failed (ConnectionError::Session(e), goodbye);
                }
            };
            self.last_recv = now;
            self.ping_outstanding = false;
            let (id, result) = match msg {
                Message::Call { id, method, args } => {
                    let admission = if self.shutting_down {
                        Admission::Busy
                    } else {
                        self.answers.admit(id)
                    };
                    match admission {
                        Admission::Admitted => {
                            let room_end = self.answer_room_end();
                            self.answers.fresh = Some(id);
                            return Ok(Some(Event::Call(IncomingCall {
                                id,
                                method,
                                args,
                                room_end,
                                fresh: &mut self.answers.fresh,
                            })));
                        }
                        Admission::Busy => {
                            let code = if self.shutting_down {
                                ErrorCode::SHUTTING_DOWN
                            } else {
                                ErrorCode::BUSY
                            };
                            self.notice = Some((id, code));
                            return Ok(None);
                        }
                        Admission::Duplicate => {
                            break 'failed (
                                ConnectionError::Protocol(Violation::DuplicateCall(id)),
                                protocol,
                            );
                        }
                    }
                }
                Message::Reply { id, result } => (id, Ok(result)),
                Message::Error { id, code, message } => {
                    (id, Err(CallFailure::Remote { code, message }))
                }
                Message::Notify { method, args } => {
                    return Ok(Some(Event::Notify(Notification { method, args })));
                }
                Message::Ping { nonce } => {
                    self.pong = Some(nonce);
                    return Ok(None);
                }
                Message::Pong { .. } => return Ok(None),
                Message::Goodbye { reason } => {
                    break 'failed (ConnectionError::Closed(reason), None);
                }
            };
            match self.calls.complete(id) {
                Completion::Delivered => {
                    let (code, bytes) = match result {
                        Ok(bytes) => (None, bytes),
                        Err(CallFailure::Remote { code, message }) => {
                            (Some(code), message.as_bytes())
                        }
                        Err(CallFailure::TimedOut) => (None, &[][..]),
                    };
                    self.last_reply = Some(LastReply {
                        id,
                        code: Some(code),
                        start: (bytes.as_ptr() as usize).wrapping_sub(body_at),
                        len: bytes.len(),
                    });
                    return Ok(Some(Event::Reply(Reply { id, result })));
                }
                Completion::Late => return Ok(None),
                Completion::Unknown => {
                    let violation = match result {
                        Ok(_) => Violation::UnknownReply(id),
                        Err(_) => Violation::UnknownError(id),
                    };
                    break 'failed (ConnectionError::Protocol(violation), protocol);
                }
            }
        };
        Err(self.fail(error, goodbye))
    }

    fn poll_transmit<'o>(&mut self, now: u64, out: &'o mut [u8]) -> Option<&'o [u8]> {
        // The owed message is encoded where the sealer wants it (these are
        // a few bytes: no general message encoder needed).
        let body = out.get_mut(HEADER_LEN + SEQ_LEN..).unwrap_or_default();
        // Once the connection is over, only its goodbye is left to send.
        let open = self.error.is_none();
        // (One call of the small encoder for the three small messages.)
        let (kind, small_message) = if let Some(nonce) = self.pong.filter(|_| open) {
            (Owed::Pong, Some((5, nonce.into())))
        } else if self.notice.is_some() && open {
            (Owed::Notice, None)
        } else if self.ping_owed && open {
            (Owed::Ping, Some((4, self.next_nonce.into())))
        } else if let Some(reason) = self.goodbye {
            (Owed::Goodbye, Some((6, reason as u64)))
        } else {
            return None;
        };
        let encoded = match (small_message, self.notice) {
            (Some((variant, value)), _) => small(variant, value, body),
            (None, Some((id, code))) => {
                crate::codec::error_message(id, code, notice_text(code), body)
            }
            (None, None) => return None,
        };
        let available = out.len();
        let sealed = match encoded {
            Ok(n) => self.sealer.seal_in_place(out, n, self.peer_max),
            Err(_) => None,
        };
        match sealed {
            Some(frame) => {
                self.last_sent = now;
                match kind {
                    Owed::Pong => self.pong = None,
                    Owed::Notice => self.notice = None,
                    Owed::Ping => {
                        self.ping_owed = false;
                        self.ping_outstanding = true;
                        self.next_nonce = self.next_nonce.wrapping_add(1);
                    }
                    Owed::Goodbye => {
                        self.goodbye = None;
                        self.sealer.close();
                    }
                }
                Some(frame)
            }
            None => {
                // `out` cannot hold even this: nothing more can be said.
                self.goodbye = None;
                let e = SessionError::Frame(crate::frame::FrameError::BufferTooSmall {
                    needed: 64,
                    available,
                });
                self.fail(ConnectionError::Session(e), None);
                None
            }
        }
    }

    /// When a client pings, and when the peer counts as gone (`u64::MAX`:
    /// never). A client pings after a heartbeat interval without sending,
    /// or without receiving (once per silence: not while its ping is
    /// unanswered); either side gives up after three intervals of silence.
    fn heartbeat(&self) -> (u64, u64) {
        let h = u64::from(u32::from(self.heartbeat_secs) * 1000);
        if h == 0 {
            return (u64::MAX, u64::MAX);
        }
        // (Milliseconds since boot plus at most 65,535 s: no overflow.)
        let ping = if self.role == Role::Client && !self.ping_owed {
            let since = if self.ping_outstanding {
                self.last_sent
            } else {
                self.last_sent.min(self.last_recv)
            };
            since + h
        } else {
            u64::MAX
        };
        (ping, self.last_recv + u64::from(IDLE_HEARTBEATS) * h)
    }

    fn poll_timeout(&self) -> Option<u64> {
        let (ping, dead) = self.heartbeat();
        let next = ping.min(dead).min(self.calls.next_deadline());
        (self.error.is_none() && next != u64::MAX).then_some(next)
    }

    fn handle_timeout(&mut self, now: u64) {
        if self.error.is_some() {
            return;
        }
        let (ping, dead) = self.heartbeat();
        if now >= dead {
            // The server says why; a client's server is presumably gone.
            let goodbye = (self.role == Role::Server).then_some(GoodbyeReason::IdleTimeout);
            self.fail(ConnectionError::IdleTimeout, goodbye);
        } else if now >= ping {
            self.ping_owed = true;
        }
    }

    fn call<'o>(
        &mut self,
        now: u64,
        method: &str,
        deadline: u64,
        out: &'o mut [u8],
        encode: &mut dyn FnMut(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<(u32, &'o [u8]), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let (slot, id) = self.calls.reserve().ok_or(SendError::TooManyCalls)?;
        let frame = self.seal_with(Head::Call { id, method }, now, out, encode)?;
        self.calls.commit(slot, id, deadline);
        Ok((id, frame))
    }

    /// End (exclusive) of an answer's payload room: the peer's largest
    /// frame, without the tag.
    fn answer_room_end(&self) -> usize {
        HEADER_LEN + self.peer_max - TAG_LEN
    }

    /// Seals the answer to `token`'s call whose payload (a result, or with
    /// `error` an error's message) is the `len` bytes at `out[ANSWER_AT..]`.
    fn answer<'o>(
        &mut self,
        token: ReplyToken,
        error: Option<ErrorCode>,
        now: u64,
        out: &'o mut [u8],
        len: usize,
    ) -> Result<&'o [u8], SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let id = token.id;
        if !self.answers.remove(id) {
            return Err(SendError::NotOwed);
        }
        let head = match error {
            Some(code) => Head::Error { id, code },
            None => Head::Reply { id },
        };
        let max = out
            .len()
            .min(self.answer_room_end())
            .saturating_sub(ANSWER_AT);
        let sealed = if len <= max && out.len() > ANSWER_AT {
            self.finish(head, now, out, ANSWER_AT, len)
        } else {
            Err(SendError::TooLarge { max })
        };
        if sealed.is_err() && self.error.is_none() {
            // `out` cannot hold the answer (a payload longer than its
            // answer buffer, or a tiny buffer): the connection answers the
            // call itself (every call gets an answer).
            self.notice = Some((id, ErrorCode::FAILED));
        }
        sealed
    }

    /// Seals a payload message: `encode` writes the payload where it will
    /// stay, then the head goes before it.
    fn seal_with<'o>(
        &mut self,
        head: Head<'_>,
        now: u64,
        out: &'o mut [u8],
        encode: &mut dyn FnMut(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<&'o [u8], SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let at = HEADER_LEN + SEQ_LEN + head.max_len();
        let end = out
            .len()
            .min(HEADER_LEN + self.peer_max)
            .saturating_sub(TAG_LEN);
        if at > end {
            return Err(SendError::TooLarge { max: 0 });
        }
        let max = end - at;
        let room = out.get_mut(at..end).unwrap_or_default();
        let n = match encode(room) {
            Ok(n) if n <= max => n,
            Ok(_) | Err(EncodeError::BufferFull) => return Err(SendError::TooLarge { max }),
            Err(e) => return Err(SendError::Encode(e)),
        };
        self.finish(head, now, out, at, n)
    }

    /// Writes `head` before the `n`-byte payload at `out[at..]`, moves the
    /// payload up to it, and seals the frame.
    fn finish<'o>(
        &mut self,
        head: Head<'_>,
        now: u64,
        out: &'o mut [u8],
        at: usize,
        n: usize,
    ) -> Result<&'o [u8], SendError> {
        let start = HEADER_LEN + SEQ_LEN;
        let too_large = SendError::TooLarge { max: 0 };
        let h = head
            .encode(n, out.get_mut(start..at).unwrap_or_default())
            .map_err(|_| too_large)?;
        // (Bounds checked here, where the compiler sees them: no panic path
        // is flashed for copy_within.)
        let end = at.checked_add(n).filter(|&end| end <= out.len());
        let dest = start + h;
        match end {
            Some(end) if dest <= at => out.copy_within(at..end, dest),
            _ => return Err(too_large),
        }
        let frame = self.sealer.seal_in_place(out, h + n, self.peer_max);
        if frame.is_some() {
            self.last_sent = now;
        }
        frame.ok_or(too_large)
    }
}
