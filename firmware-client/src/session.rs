//! The logged-in session: a driver of tether-core's `ClientConnection`
//! (reading, writing, timers); the connection's rules are the machine's.

use core::convert::Infallible;
use core::future::{Future, pending};
use core::marker::PhantomData;
use core::pin::{Pin, pin};
use core::time::Duration;

use embassy_futures::select::{Either3, select3};
use embedded_io_async::{Read, ReadReady, Write};
use tether_core::connection::{ClientConnection, ConnectionError, Event, SendError};
use tether_core::message::GoodbyeReason;
use tether_core::method::ToServer;

use crate::calls::{Pending, Reply};
use crate::clock::Clock;
use crate::error::{CallError, Error};
use crate::handler::{Handler, Outcome, Request, Responder};
use crate::io::Io;

/// How many of the device's own calls may wait for replies at once. Each
/// slot costs 16 bytes of session RAM.
pub const MAX_CALLS_IN_FLIGHT: usize = 4;

/// Whole milliseconds of `d`, saturating: tether-core's conversion, so
/// that flash holds one copy (152 B less on a Cortex-M4 than a second one).
pub(crate) fn ms(d: Duration) -> u64 {
    tether_core::connection::Instant::from_millis(0)
        .saturating_add(d)
        .as_millis()
}

/// What one turn of the session came to.
enum Step<U> {
    /// Something was handled (or a timer woke us); look again.
    Continue,
    /// A call of ours completed (the reply is the machine's last one).
    Reply(u32),
    /// The caller's deadline passed.
    Deadline,
    /// The caller's future completed.
    User(U),
}

/// A logged-in session: typed calls to the server, notifications both ways,
/// the application's [`Handler`] answering the server, heartbeats.
///
/// One task drives it (`&mut self`): whatever method is running reads the
/// connection, answers pings, sends a ping when the device has been quiet
/// for the server's heartbeat interval, and runs the handler for the
/// server's calls. Between method calls nothing happens: call
/// [`serve`](Self::serve), [`serve_for`](Self::serve_for) or
/// [`serve_until`](Self::serve_until) when idle.
///
/// The transport's `read` must be cancel-safe (tether-firmware's
/// `host::TcpTransport` and embassy-net's `TcpSocket` are): timers and
/// [`serve_until`](Self::serve_until) interrupt it between reads.
///
/// # Cancel safety
///
/// Dropping one of the session's futures (a `select` took another branch)
/// while it **waits for input** loses nothing: what was read stays in the
/// receive buffer. Dropped while it **writes** a frame, the stream may hold
/// half a frame: the session is unusable and must be dropped (the next
/// frame the server reads fails its tag). Each method says which it is;
/// to wait for something else while staying reachable, use
/// [`serve_until`](Self::serve_until) rather than a `select` around the
/// session.
pub struct Session<'b, T, C> {
    pub(crate) io: Io<T, C>,
    pub(crate) conn: ClientConnection<'b, MAX_CALLS_IN_FLIGHT>,
    pub(crate) tx: &'b mut [u8],
    pub(crate) call_timeout_ms: u64,
}

impl<T, C> core::fmt::Debug for Session<'_, T, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.conn.session_id())
            .field("heartbeat_secs", &self.conn.heartbeat_secs())
            .field("peer_max_frame", &self.conn.peer_max_frame())
            .field("calls_in_flight", &self.conn.calls_in_flight())
            .field("ended", &self.conn.is_closed())
            .finish_non_exhaustive()
    }
}

impl<'b, T: Read + Write + ReadReady, C: Clock> Session<'b, T, C> {
    /// The server's id for this session (for logs).
    pub fn session_id(&self) -> u64 {
        self.conn.session_id()
    }

    /// The heartbeat interval the server asked for (0: none).
    pub fn heartbeat_secs(&self) -> u16 {
        self.conn.heartbeat_secs()
    }

    /// The largest frame body the server accepts.
    pub fn peer_max_frame(&self) -> usize {
        self.conn.peer_max_frame()
    }

    /// How many calls of the device wait for replies.
    pub fn calls_in_flight(&self) -> usize {
        self.conn.calls_in_flight()
    }

    /// Whether the session has ended (every method now fails with
    /// [`Error::Ended`]).
    pub fn is_ended(&self) -> bool {
        self.conn.is_closed()
    }

    /// Calls `M` on the server and waits (at most
    /// [`Config::call_timeout`](crate::Config::call_timeout)) for its reply,
    /// serving the server's calls and pings meanwhile. The reply borrows the
    /// receive buffer.
    ///
    /// For several calls in flight use [`send_call`](Self::send_call) and
    /// [`next_reply`](Self::next_reply); `call` fails with
    /// [`CallError::CallsPending`] while such calls wait.
    ///
    /// Not cancel-safe while it sends the call (a dropped write leaves half
    /// a frame); dropped while it waits for the reply, the call stays in
    /// flight: collect its reply with [`next_reply`](Self::next_reply)
    /// (until then `call` fails with [`CallError::CallsPending`]).
    pub async fn call<M: ToServer, H: Handler + ?Sized>(
        &mut self,
        args: &M::Args<'_>,
        handler: &mut H,
    ) -> Result<M::Reply<'_>, CallError<'_, T::Error>> {
        let timeout = Duration::from_millis(self.call_timeout_ms);
        self.call_with_timeout::<M, H>(args, handler, timeout).await
    }

    /// [`call`](Self::call) with its own timeout (cancel safety as `call`).
    pub async fn call_with_timeout<M: ToServer, H: Handler + ?Sized>(
        &mut self,
        args: &M::Args<'_>,
        handler: &mut H,
        timeout: Duration,
    ) -> Result<M::Reply<'_>, CallError<'_, T::Error>> {
        if self.conn.is_closed() {
            return Err(CallError::Session(Error::Ended));
        }
        if self.calls_in_flight() > 0 {
            return Err(CallError::CallsPending);
        }
        let pending = self.send_call::<M>(args, timeout).await?;
        let reply = self.next_reply(handler).await?;
        debug_assert_eq!(reply.id, pending.id);
        Ok(reply.decode::<M>()?)
    }

    /// [`call`](Self::call) with the reply decoded into an owned value and
    /// an [`OwnedCallError`](crate::OwnedCallError) (feature `alloc`): free
    /// of the session's borrow, for methods whose reply type borrows nothing
    /// (`u64`, a struct of owned fields). For a borrowing reply (`&str`) use
    /// [`call`](Self::call) and copy what you keep.
    ///
    /// Cancel safety as [`call`](Self::call).
    #[cfg(feature = "alloc")]
    pub async fn call_owned<M, H>(
        &mut self,
        args: &M::Args<'_>,
        handler: &mut H,
    ) -> Result<M::Reply<'static>, crate::OwnedCallError<T::Error>>
    where
        M: ToServer,
        H: Handler + ?Sized,
        M::Reply<'static>: serde::de::DeserializeOwned,
    {
        if self.conn.is_closed() {
            return Err(Error::Ended.into());
        }
        if self.calls_in_flight() > 0 {
            return Err(CallError::<T::Error>::CallsPending.into());
        }
        let timeout = Duration::from_millis(self.call_timeout_ms);
        let _pending = self.send_call::<M>(args, timeout).await?;
        let reply = self.next_reply(handler).await?;
        let bytes = reply.raw()?;
        tether_core::message::decode::<M::Reply<'static>>(bytes)
            .map_err(crate::OwnedCallError::BadReply)
    }

    /// Sends a call of `M` without waiting for its reply (collect it with
    /// [`next_reply`](Self::next_reply)); up to [`MAX_CALLS_IN_FLIGHT`] may
    /// wait at once. The reply is due within `timeout`.
    ///
    /// Not cancel-safe: a dropped write leaves half a frame.
    ///
    /// When input from the server is already waiting, the call stays in the
    /// transport's write buffer until the session next waits
    /// ([`next_reply`](Self::next_reply), [`serve`](Self::serve), ...), so
    /// that calls sent back to back leave together.
    pub async fn send_call<M: ToServer>(
        &mut self,
        args: &M::Args<'_>,
        timeout: Duration,
    ) -> Result<Pending<M>, CallError<'static, T::Error>> {
        let now = self.io.now();
        let (id, frame) = self
            .conn
            .call::<M>(now, args, timeout, self.tx)
            .map_err(call_error)?;
        let len = frame.len();
        self.send(len, false).await?;
        trace!("tether: call {} sent", id);
        Ok(Pending {
            id,
            _method: PhantomData,
        })
    }

    /// Waits for the next reply to any call in flight (or the first call
    /// timeout: a [`Reply`] whose result is [`Failure::Timeout`](crate::Failure::Timeout)),
    /// serving the server meanwhile. Match it to its call with
    /// [`Pending::take`].
    ///
    /// Cancel-safe while it waits for input (nothing is lost: the next
    /// `next_reply` returns the reply); not while it writes answers to the
    /// server's calls.
    pub async fn next_reply<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
    ) -> Result<Reply<'_>, Error<T::Error>> {
        let mut never = pin!(pending::<Infallible>());
        loop {
            if !self.conn.is_closed() && self.conn.calls_in_flight() == 0 {
                return Err(Error::NoCallInFlight);
            }
            if let Step::Reply(_) = self.step(handler, u64::MAX, never.as_mut()).await? {
                break;
            }
        }
        // Answers to server calls read in the same burst as this reply
        // leave now: the application may not wait on the session again soon.
        self.flush().await?;
        let reply = self.conn.last_reply().ok_or(Error::Ended)?;
        Ok(Reply::from_core(reply))
    }

    /// [`send_call`](Self::send_call) by name, with the postcard-encoded
    /// `args` as they are (host tools that reach any method, such as
    /// `tether call`); returns the call's id, which [`Reply::id`] matches. Not cancel-safe,
    /// as [`send_call`](Self::send_call).
    pub async fn send_call_raw(
        &mut self,
        method: &str,
        args: &[u8],
        timeout: Duration,
    ) -> Result<u32, CallError<'static, T::Error>> {
        let now = self.io.now();
        let (id, frame) = self
            .conn
            .call_with(now, method, timeout, self.tx, |buf| copy_args(args, buf))
            .map_err(call_error)?;
        let len = frame.len();
        self.send(len, false).await?;
        Ok(id)
    }

    /// [`notify`](Self::notify) by name, with the postcard-encoded `args`
    /// as they are. Not cancel-safe, as [`notify`](Self::notify).
    pub async fn notify_raw(
        &mut self,
        method: &str,
        args: &[u8],
    ) -> Result<(), CallError<'static, T::Error>> {
        let now = self.io.now();
        let len = self
            .conn
            .notify_with(now, method, self.tx, |buf| copy_args(args, buf))
            .map_err(call_error)?
            .len();
        Ok(self.send(len, true).await?)
    }

    /// Sends a notification (a one-way message, no reply) of `M`. Not
    /// cancel-safe: a dropped write leaves half a frame.
    pub async fn notify<M: ToServer>(
        &mut self,
        args: &M::Args<'_>,
    ) -> Result<(), CallError<'static, T::Error>> {
        let now = self.io.now();
        let len = self
            .conn
            .notify::<M>(now, args, self.tx)
            .map_err(call_error)?
            .len();
        // Flushed: nothing obliges the application to wait on the session
        // after a notification.
        Ok(self.send(len, true).await?)
    }

    /// Serves the server (its calls, notifications, pings; heartbeats) until
    /// the session ends, which is always an error: [`Error::Closed`] when the
    /// server says goodbye.
    ///
    /// Replies to calls still in flight that arrive meanwhile are dropped;
    /// collect them with [`next_reply`](Self::next_reply) instead.
    ///
    /// Cancel-safe while it waits for input; not while it writes (pongs,
    /// heartbeats, answers): prefer [`serve_until`](Self::serve_until) to
    /// a `select` around it.
    pub async fn serve<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
    ) -> Result<Infallible, Error<T::Error>> {
        match self.serve_until(handler, pending::<Infallible>()).await {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }

    /// Serves the server for `duration` (cancel safety as
    /// [`serve`](Self::serve)).
    pub async fn serve_for<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        duration: Duration,
    ) -> Result<(), Error<T::Error>> {
        let deadline = self.io.clock.now_ms().saturating_add(ms(duration));
        let mut never = pin!(pending::<Infallible>());
        loop {
            match self.step(handler, deadline, never.as_mut()).await? {
                // Answers held back for a burst still being read leave
                // before the application gets control back.
                Step::Deadline => return self.flush().await,
                Step::Reply(id) => dropped_reply(id),
                Step::Continue | Step::User(_) => {}
            }
        }
    }

    /// Serves the server until `until` completes, and returns its output:
    /// the way to wait for something else (a button, a channel from another
    /// task, a timer) while staying reachable.
    ///
    /// Answers to a burst of server calls are written together once the
    /// burst is read. If `until` completes while the burst's last frame is
    /// still arriving, the answers so far leave with the session's next
    /// write (any method here); call [`flush`](Self::flush) if the
    /// application will not use the session again soon.
    ///
    /// `until` is polled only while the session waits for input, so its
    /// completion never cuts a write: the way to stop serving safely.
    pub async fn serve_until<H: Handler + ?Sized, F: Future>(
        &mut self,
        handler: &mut H,
        until: F,
    ) -> Result<F::Output, Error<T::Error>> {
        let mut until = pin!(until);
        loop {
            match outlined!(self.step(handler, u64::MAX, until.as_mut()))? {
                Step::User(out) => return Ok(out),
                Step::Reply(id) => dropped_reply(id),
                Step::Continue | Step::Deadline => {}
            }
        }
    }

    /// Sends what the session holds back (answers to a burst of server
    /// calls still being read), if anything. Not cancel-safe (a write).
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        if self.conn.is_closed() {
            return Err(Error::Ended);
        }
        self.send(0, true).await
    }

    /// Says goodbye (`Normal`); the session has ended afterwards. Then
    /// close the transport: drop a tokio stream, or take it back with
    /// [`into_inner`](Self::into_inner) and call `close()` on an embassy-net
    /// socket. Not cancel-safe (a write); dropped, the session has ended
    /// anyway.
    pub async fn close(&mut self) -> Result<(), Error<T::Error>> {
        if self.conn.is_closed() {
            return Err(Error::Ended);
        }
        self.conn.close(GoodbyeReason::Normal);
        info!("tether: goodbye sent");
        self.send(0, true).await
    }

    /// Gives the transport back (after [`close`](Self::close), or to drop
    /// the connection without a goodbye).
    pub fn into_inner(self) -> T {
        self.io.transport
    }

    /// The one write path of the session: the first `len` bytes of the
    /// transmit buffer (a frame the application sealed there), then every
    /// frame the connection owes (pong, ping, goodbye, an answer it gives
    /// itself), then what was held back; flushed if `flush` or no input
    /// waits. A write that fails ends the session.
    async fn send(&mut self, first: usize, flush: bool) -> Result<(), Error<T::Error>> {
        let now = self.io.now();
        let mut len = first;
        loop {
            if len == 0 {
                len = self.conn.poll_transmit(now, self.tx).map_or(0, <[u8]>::len);
            }
            // Nothing left to write: only what is held back, to flush.
            let frame = self.tx.get(..len).unwrap_or_default();
            if let Err(e) = self.io.send(frame, flush).await {
                self.conn.abort();
                return Err(e);
            }
            if len == 0 {
                return Ok(());
            }
            len = 0;
        }
    }

    /// One turn of the session: timers, one event, what is owed; then wait
    /// for input, a timer, the caller's deadline or the caller's future.
    async fn step<H: Handler + ?Sized, F: Future>(
        &mut self,
        handler: &mut H,
        deadline: u64,
        user: Pin<&mut F>,
    ) -> Result<Step<F::Output>, Error<T::Error>> {
        if self.conn.is_closed() {
            return Err(Error::Ended);
        }
        let now = self.io.now();
        self.conn.handle_timeout(now);
        // The length of an answer sealed in `tx`, to write first.
        let mut answer = 0;
        let (handled, ended) = match self.conn.poll_event(now) {
            Ok(None) => (false, None),
            Ok(Some(Event::Call(call))) => {
                trace!("tether: server calls {} ({})", call.method(), call.id());
                let req = Request {
                    id: call.id(),
                    method: call.method(),
                    args: call.args(),
                };
                let reply = Responder {
                    out: call.answer_buffer(self.tx),
                };
                let responded = outlined!(handler.on_call(req, reply));
                let token = call.into_token();
                let Outcome { code, len } = responded.0;
                let sealed = self.conn.answer_in_place(token, now, self.tx, code, len);
                // (An answer that cannot be sealed is the machine's to give.)
                answer = sealed.map_or(0, <[u8]>::len);
                (true, None)
            }
            Ok(Some(Event::Notify(n))) => {
                trace!("tether: notification {}", n.method);
                handler.on_notify(n.method, n.args).await;
                (true, None)
            }
            Ok(Some(Event::Reply(r))) => return Ok(Step::Reply(r.id)),
            Ok(Some(_)) => (true, None),
            Err(e) => (true, Some(e)),
        };
        // The one write of a turn: the answer, pongs, pings, and answers held
        // back while a burst was read (held back while more input is already
        // received); once the session ended, the goodbye it owes, flushed.
        let sent = self.send(answer, ended.is_some()).await;
        if let Some(e) = ended {
            if let ConnectionError::Closed(reason) = e {
                info!("tether: server said goodbye: {}", reason.as_str());
            } else {
                warn!("tether: session ended");
            }
            return Err(e.into());
        }
        sent?;
        if handled {
            return Ok(Step::Continue);
        }
        if now.as_millis() >= deadline {
            return Ok(Step::Deadline);
        }
        let wake = self
            .conn
            .poll_timeout()
            .map_or(deadline, |t| t.as_millis().min(deadline));
        let read = self.io.transport.read(self.conn.receive_buffer());
        match select3(read, self.io.clock.sleep_until_ms(wake), user).await {
            // (Nothing is owed after the end of the stream.)
            Either3::First(Ok(0)) => Err(self.conn.handle_eof().into()),
            Either3::First(Ok(n)) => {
                self.conn.commit(n);
                Ok(Step::Continue)
            }
            Either3::First(Err(e)) => {
                self.conn.abort();
                Err(Error::Transport(e))
            }
            Either3::Second(()) => Ok(Step::Continue),
            Either3::Third(out) => Ok(Step::User(out)),
        }
    }
}

/// The error of a call the connection would not send.
fn copy_args(args: &[u8], buf: &mut [u8]) -> Result<usize, tether_core::message::EncodeError> {
    let dst = buf
        .get_mut(..args.len())
        .ok_or(tether_core::message::EncodeError::BufferFull)?;
    dst.copy_from_slice(args);
    Ok(args.len())
}

fn call_error<E>(e: SendError) -> CallError<'static, E> {
    match e {
        SendError::TooLarge { max } => CallError::TooLarge { max },
        SendError::TooManyCalls => CallError::TooManyCalls,
        SendError::Encode(e) => CallError::Encode(e),
        _ => CallError::Session(Error::Ended),
    }
}

fn dropped_reply(id: u32) {
    warn!(
        "tether: reply to call {} dropped (collect replies with next_reply)",
        id
    );
}
