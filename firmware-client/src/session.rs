//! Login and the session: the whole client, over any
//! `embedded_io_async::{Read, Write}` transport.

use core::convert::Infallible;
use core::future::{Future, pending};
use core::marker::PhantomData;
use core::ops::Range;
use core::pin::{Pin, pin};
use core::time::Duration;

use embassy_futures::select::{Either, Either3, select, select3};
use embedded_io_async::{Read, ReadReady, Write};
use tether_core::frame::{self, FrameError, HEADER_LEN, MIN_MAX_FRAME};
use tether_core::message::{
    ErrorCode, GoodbyeReason, Handshake, Hello, Message, PROTOCOL_VERSION, Proof, Refusal,
};
use tether_core::method::{self, Method};
use tether_core::rand_core::CryptoRng;
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, ClientProofSent, ClientSuccess,
};
use tether_core::session::{Opener, Role, Sealer, SessionError};

use crate::clock::Clock;
use crate::error::{CallError, Error, Failure, TimeoutKind};
use crate::handler::{Handler, Outcome, Request, Responder};

/// How many of the device's own calls may wait for replies at once. Each
/// slot costs 16 bytes of session RAM.
pub const MAX_CALLS_IN_FLIGHT: usize = 4;

/// Bytes of the SCRAM client-first-message buffer (`n,,n=<user>,r=<nonce>`):
/// usernames up to about 200 bytes (escaped) fit.
pub const LOGIN_MESSAGE_LEN: usize = 256;

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The SCRAM checks: `min_iterations`, the fewest PBKDF2 iterations
    /// accepted from a server (default
    /// [`DEFAULT_MIN_ITERATIONS`](tether_core::scram::DEFAULT_MIN_ITERATIONS), 4096; a
    /// server asking for fewer is refused before the device sends a proof,
    /// so an impostor cannot make the proof cheap to attack; raise it to what
    /// your Django deployment uses: 600,000 for Django 4.2, 1,000,000 for
    /// 5.2), and `max_iterations`, the most (an impostor cannot pin the
    /// device in PBKDF2 for hours).
    pub scram: ClientConfig,
    /// How long to wait for each handshake message of the server (default
    /// 10 s). PBKDF2 on the device does not count.
    pub handshake_timeout: Duration,
    /// Timeout of [`Session::call`] (default 10 s).
    pub call_timeout: Duration,
    /// How long writing one frame may take before the session is given up
    /// (default 10 s).
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scram: ClientConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// These settings with another iteration floor.
    pub fn with_min_iterations(mut self, min_iterations: u32) -> Self {
        self.scram.min_iterations = min_iterations;
        self
    }

    /// These settings with another handshake timeout.
    pub fn with_handshake_timeout(self, handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            ..self
        }
    }

    /// These settings with another call timeout.
    pub fn with_call_timeout(self, call_timeout: Duration) -> Self {
        Self {
            call_timeout,
            ..self
        }
    }

    /// These settings with another write timeout.
    pub fn with_write_timeout(self, write_timeout: Duration) -> Self {
        Self {
            write_timeout,
            ..self
        }
    }
}

/// The three buffers a session works in, provided by the application (a
/// `static`, a task's locals, or a [`BufferStore`]). Their sizes are the
/// client's main RAM cost:
///
/// | buffer | holds | size |
/// |---|---|---|
/// | `rx` | one received frame body | at least 512 bytes; its length (up to 65535) is the largest frame the device announces and accepts |
/// | `tx` | one frame being sent, with its 2-byte length, 8-byte sequence number and 16-byte tag | 512 is plenty for the handshake; a call needs 26 + 10 + method name + arguments |
/// | `scratch` | encoded arguments of an outgoing call or notification, or the reply the handler writes | the largest arguments or reply the application sends |
///
/// The session itself adds 576 bytes on a 64-bit host, less on 32-bit
/// (two HMAC-SHA-256 states, the call table, the buffer references); see
/// the crate docs for figures measured on a Cortex-M4.
#[derive(Debug)]
pub struct Buffers<'b> {
    /// Receive buffer: one frame body.
    pub rx: &'b mut [u8],
    /// Transmit buffer: one whole frame.
    pub tx: &'b mut [u8],
    /// Scratch buffer: encoded arguments and replies.
    pub scratch: &'b mut [u8],
}

/// Owned buffers of fixed sizes, for a `static` (with `static_cell`) or a
/// task's state: `RX + TX + SCRATCH` bytes.
///
/// ```
/// use tether_firmware::BufferStore;
/// let mut store: BufferStore = BufferStore::new(); // 512 + 512 + 256 bytes
/// let buffers = store.buffers();
/// assert_eq!(buffers.rx.len(), 512);
/// ```
#[derive(Debug)]
pub struct BufferStore<const RX: usize = 512, const TX: usize = 512, const SCRATCH: usize = 256> {
    rx: [u8; RX],
    tx: [u8; TX],
    scratch: [u8; SCRATCH],
}

impl<const RX: usize, const TX: usize, const SCRATCH: usize> BufferStore<RX, TX, SCRATCH> {
    /// Zeroed buffers (usable in a `static` initializer).
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
            scratch: [0; SCRATCH],
        }
    }

    /// Borrows the three buffers for a session.
    pub fn buffers(&mut self) -> Buffers<'_> {
        Buffers {
            rx: &mut self.rx,
            tx: &mut self.tx,
            scratch: &mut self.scratch,
        }
    }
}

impl<const RX: usize, const TX: usize, const SCRATCH: usize> Default
    for BufferStore<RX, TX, SCRATCH>
{
    fn default() -> Self {
        Self::new()
    }
}

/// A successful login.
pub struct Established<'b, T, C> {
    /// The authenticated session.
    pub session: Session<'b, T, C>,
    /// The account's SCRAM keys. After a password login, store them (flash)
    /// and log in with [`ClientCredentials::Keys`] from then on: no PBKDF2.
    /// They are password-equivalent for this protocol: protect them.
    pub keys: CachedKeys,
    /// True when PBKDF2 ran (a password login): `keys` are new.
    pub derived: bool,
}

impl<T, C> core::fmt::Debug for Established<'_, T, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Established")
            .field("session", &self.session)
            .field("keys", &self.keys)
            .field("derived", &self.derived)
            .finish()
    }
}

/// Whole milliseconds of `d`, saturating (no 128-bit arithmetic).
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// Incremental, cancel-safe frame reader: reads the length prefix, then
/// exactly the body into the caller's buffer, keeping its progress across
/// cancelled reads.
#[derive(Debug)]
struct Rx<'b> {
    buf: &'b mut [u8],
    max: usize,
    header: [u8; HEADER_LEN],
    filled: usize,
    len: Option<usize>,
}

impl<'b> Rx<'b> {
    /// Reads until a whole frame body is in `buf[..len]`; returns `len`.
    /// Only `io.read` is awaited and progress is saved after each, so the
    /// future may be dropped and called again if `io.read` is cancel-safe.
    async fn read_frame<T: Read>(&mut self, io: &mut T) -> Result<usize, Error<T::Error>> {
        loop {
            let (dest, missing) = match self.len {
                None => (&mut self.header[self.filled..], HEADER_LEN - self.filled),
                Some(len) => (&mut self.buf[self.filled..len], len - self.filled),
            };
            let n = io.read(dest).await.map_err(Error::Transport)?;
            if n == 0 {
                return Err(if self.len.is_none() && self.filled == 0 {
                    Error::Disconnected
                } else {
                    Error::Frame(FrameError::Truncated { missing })
                });
            }
            self.filled += n;
            match self.len {
                None if self.filled == HEADER_LEN => {
                    self.len = Some(frame::parse_header(self.header, self.max)?);
                    self.filled = 0;
                }
                Some(len) if self.filled == len => {
                    self.len = None;
                    self.filled = 0;
                    return Ok(len);
                }
                _ => {}
            }
        }
    }

    /// Where `part` (a slice of the last frame) sits in the buffer.
    fn range_of(&self, part: &[u8]) -> Range<usize> {
        let start = (part.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize);
        start..start + part.len()
    }
}

/// Writes one whole frame, and flushes if `flush`, within `timeout_ms`.
async fn write_frame<T: Write, C: Clock>(
    io: &mut T,
    clock: &C,
    mut frame: &[u8],
    flush: bool,
    timeout_ms: u64,
) -> Result<(), Error<T::Error>> {
    let deadline = clock.now_ms().saturating_add(timeout_ms);
    let write = async {
        while !frame.is_empty() {
            match io.write(frame).await {
                Ok(0) => return Err(Error::Disconnected),
                Ok(n) => frame = &frame[n..],
                Err(e) => return Err(Error::Transport(e)),
            }
        }
        if flush {
            io.flush().await.map_err(Error::Transport)?;
        }
        Ok(())
    };
    match select(write, clock.sleep_until_ms(deadline)).await {
        Either::First(r) => r,
        Either::Second(()) => Err(Error::Timeout(TimeoutKind::Write)),
    }
}

/// The client's SCRAM state during the handshake.
#[allow(clippy::large_enum_variant)] // one slot for all states is the point
enum Scram<'a> {
    /// Hello to send, challenge to come.
    First(ClientLogin<'a, LOGIN_MESSAGE_LEN>),
    /// Proof to send, welcome to come.
    Final(ClientProofSent),
    /// Logged in, or failed.
    Over,
}

/// An error of the handshake's transport-independent part.
type LoginError = Error<Infallible>;

/// Session parameters from the welcome: id, heartbeat, the server's max frame.
type WelcomeParams = (u64, u16, usize);

// The handshake's synchronous steps are plain functions over byte slices,
// outside the async state machine and independent of the transport and
// clock types: one copy of the SCRAM and message code.
impl Scram<'_> {
    /// Writes the next handshake frame into `tx`.
    #[inline(never)]
    fn next_frame<'t>(&self, tx: &'t mut [u8], max_frame: u16) -> Result<&'t [u8], FrameError> {
        let msg = match self {
            Scram::First(login) => Handshake::Hello(Hello {
                version: PROTOCOL_VERSION,
                mechanisms: login.mechanisms(),
                max_frame,
                client_first: login.client_first(),
            }),
            Scram::Final(proof) => Handshake::Proof(Proof {
                client_final: proof.client_final(),
            }),
            Scram::Over => return Err(FrameError::Encode),
        };
        frame::encode_handshake(&msg, tx, MIN_MAX_FRAME as usize)
    }

    /// Takes the server's answer: the challenge (runs SCRAM, and PBKDF2 with
    /// a password) or the welcome (checks the server's signature).
    #[inline(never)]
    fn on_answer(
        &mut self,
        answer: &[u8],
    ) -> Result<Option<(WelcomeParams, ClientSuccess)>, LoginError> {
        // Only what a server sends is decoded (a hello or a proof is None).
        let msg = Handshake::decode_from_server(answer).map_err(Error::Decode)?;
        // Any error ends the login: the state is taken out for good.
        match (core::mem::replace(self, Scram::Over), msg) {
            (_, Some(Handshake::Refused(r))) => Err(refused(r)),
            (Scram::First(login), Some(Handshake::Challenge(c))) => {
                let proof = login
                    .handle_challenge(c.mechanism, c.server_first)
                    .map_err(Error::Login)?;
                *self = Scram::Final(proof);
                Ok(None)
            }
            (Scram::Final(proof), Some(Handshake::Welcome(w))) => {
                let done = proof.handle_server_final(w.server_final).map_err(|e| {
                    warn!("tether: the server could not prove itself; login aborted");
                    Error::Login(e)
                })?;
                if w.max_frame < MIN_MAX_FRAME {
                    return Err(Error::Protocol("server's max_frame below 512"));
                }
                let params = (w.session_id, w.heartbeat_secs, w.max_frame as usize);
                Ok(Some((params, done)))
            }
            (Scram::First(_), _) => Err(Error::Protocol("expected a challenge or a refusal")),
            _ => Err(Error::Protocol("expected a welcome or a refusal")),
        }
    }
}

/// Sends one handshake frame and reads the answer (waiting at most
/// `timeout_ms` for it); returns the answer's length in `rx`.
async fn round_trip<T: Read + Write, C: Clock>(
    io: &mut T,
    rx: &mut Rx<'_>,
    clock: &C,
    frame: &[u8],
    write_ms: u64,
    timeout_ms: u64,
) -> Result<usize, Error<T::Error>> {
    write_frame(io, clock, frame, true, write_ms).await?;
    let deadline = clock.now_ms().saturating_add(timeout_ms);
    match select(rx.read_frame(io), clock.sleep_until_ms(deadline)).await {
        Either::First(r) => r,
        Either::Second(()) => Err(Error::Timeout(TimeoutKind::Handshake)),
    }
}

fn refused(r: Refusal) -> LoginError {
    warn!(
        "tether: login refused: {} (retry after {} s)",
        r.code.as_str(),
        r.retry_after_secs
    );
    Error::Refused {
        code: r.code,
        retry_after_secs: r.retry_after_secs,
    }
}

enum SendError<E> {
    /// The message does not fit (the frame was not sent; the session is
    /// intact).
    TooLarge(FrameError),
    /// The session is over.
    Fatal(Error<E>),
}

impl<E> SendError<E> {
    /// The error that ends the session when nothing can be done about it.
    fn into_error(self) -> Error<E> {
        match self {
            Self::TooLarge(e) => Error::Frame(e),
            Self::Fatal(e) => e,
        }
    }
}

/// The sending half's state.
struct Link<'b, T, C> {
    io: T,
    clock: C,
    sealer: Sealer,
    tx: &'b mut [u8],
    peer_max: usize,
    write_timeout_ms: u64,
    last_sent: u64,
    /// Written but not flushed (see [`Link::send`]).
    unflushed: bool,
}

impl<T: Write + ReadReady, C: Clock> Link<'_, T, C> {
    /// Seals and writes `msg`, if any, then flushes what is written
    /// unless `flush` is false and more input is already received: the
    /// answers to a burst of server frames leave together (on a host, one
    /// system call instead of one per frame), and [`Session::step`] calls
    /// this without a message to flush before it waits for input again.
    /// The one write path of the session.
    async fn send(
        &mut self,
        msg: Option<&Message<'_>>,
        flush: bool,
    ) -> Result<(), SendError<T::Error>> {
        let frame: &[u8] = match msg {
            None => &[],
            Some(msg) => match self.sealer.seal(msg, self.tx, self.peer_max) {
                Ok(frame) => frame,
                Err(SessionError::Frame(e)) => return Err(SendError::TooLarge(e)),
                Err(e) => return Err(SendError::Fatal(Error::Session(e))),
            },
        };
        let flush = flush || !self.io.read_ready().unwrap_or(false);
        if !frame.is_empty() || (flush && self.unflushed) {
            write_frame(
                &mut self.io,
                &self.clock,
                frame,
                flush,
                self.write_timeout_ms,
            )
            .await
            .map_err(SendError::Fatal)?;
            self.unflushed = !flush;
        }
        if msg.is_some() {
            self.last_sent = self.clock.now_ms();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u32,
    deadline: u64,
}

enum DoneOutcome {
    Ok(Range<usize>),
    Err(ErrorCode, Range<usize>),
    Timeout,
}

struct Done {
    id: u32,
    outcome: DoneOutcome,
}

enum Step<U> {
    /// Something was handled (or a timer woke us); look again.
    Continue,
    /// A call of ours completed.
    Reply(Done),
    /// The caller's deadline passed.
    Deadline,
    /// The caller's future completed.
    User(U),
}

/// A call sent with [`Session::send_call`], waiting for its reply.
#[derive(Debug)]
#[must_use = "collect the reply with Session::next_reply"]
pub struct Pending<M> {
    id: u32,
    _method: PhantomData<fn() -> M>,
}

impl<M: Method> Pending<M> {
    /// The call's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// If `reply` answers this call, its decoded result.
    pub fn take<'a>(&self, reply: &Reply<'a>) -> Option<Result<M::Reply<'a>, Failure<'a>>> {
        (reply.id == self.id).then(|| reply.decode::<M>())
    }
}

/// The answer to one of the device's calls, borrowed from the receive
/// buffer (drop it before using the session again).
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    id: u32,
    outcome: Result<&'a [u8], Failure<'a>>,
}

impl<'a> Reply<'a> {
    /// The id of the call it answers.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The postcard-encoded result, or how the call failed.
    pub fn raw(&self) -> Result<&'a [u8], Failure<'a>> {
        self.outcome
    }

    /// The result decoded as `M`'s reply.
    pub fn decode<M: Method>(&self) -> Result<M::Reply<'a>, Failure<'a>> {
        method::decode_reply::<M>(self.outcome?).map_err(Failure::BadReply)
    }
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
/// [`serve_until`](Self::serve_until) interrupt it between frames.
pub struct Session<'b, T, C> {
    link: Link<'b, T, C>,
    rx: Rx<'b>,
    opener: Opener,
    scratch: &'b mut [u8],
    calls: [Option<InFlight>; MAX_CALLS_IN_FLIGHT],
    next_id: u32,
    next_nonce: u32,
    last_recv: u64,
    ping_outstanding: bool,
    heartbeat_ms: u64,
    call_timeout_ms: u64,
    session_id: u64,
    heartbeat_secs: u16,
    ended: bool,
}

impl<T, C> core::fmt::Debug for Session<'_, T, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("peer_max_frame", &self.link.peer_max)
            .field("calls_in_flight", &self.calls.iter().flatten().count())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<'b, T: Read + Write + ReadReady, C: Clock> Session<'b, T, C> {
    /// Logs in over `io` (a connected transport) as `username`.
    ///
    /// Follows docs/CONNECTION.md: hello, challenge (nonce, iteration floor
    /// and cached keys checked; with a password this runs PBKDF2 once),
    /// proof, welcome (the server's signature checked: a server that cannot
    /// prove itself is refused with [`Error::Login`] and nothing more is
    /// sent). A refusal is [`Error::Refused`] with its code.
    ///
    /// `rng` provides the SCRAM nonce; it must be a real CSPRNG (the MCU's
    /// TRNG, `getrandom` on a host).
    pub async fn login<R: CryptoRng + ?Sized>(
        mut io: T,
        buffers: Buffers<'b>,
        clock: C,
        username: &str,
        credentials: ClientCredentials<'_>,
        rng: &mut R,
        config: &Config,
    ) -> Result<Established<'b, T, C>, Error<T::Error>> {
        let Buffers { rx, tx, scratch } = buffers;
        let min = MIN_MAX_FRAME as usize;
        if rx.len() < min {
            return Err(Error::Buffer("rx must hold at least 512 bytes"));
        }
        let max_frame = rx.len().min(u16::MAX as usize);
        let mut rx = Rx {
            buf: rx,
            max: min,
            header: [0; HEADER_LEN],
            filled: 0,
            len: None,
        };
        let handshake_ms = ms(config.handshake_timeout);
        let write_ms = ms(config.write_timeout);

        // One slot for the SCRAM state across both round trips: the future
        // (static RAM on a device) holds the larger state, not both.
        let mut scram = Scram::First(
            ClientLogin::<LOGIN_MESSAGE_LEN>::new(username, credentials, config.scram, rng)
                .map_err(Error::Login)?,
        );
        let (welcome, done) = loop {
            let frame = scram.next_frame(tx, max_frame as u16)?;
            let len = outlined!(round_trip(
                &mut io,
                &mut rx,
                &clock,
                frame,
                write_ms,
                handshake_ms
            ))?;
            match scram.on_answer(&rx.buf[..len]) {
                Ok(None) => {}
                Ok(Some(welcome)) => break welcome,
                Err(e) => return Err(e.widen()),
            }
        };
        let (session_id, heartbeat_secs, peer_max) = welcome;
        let (sealer, opener) = done.session.into_halves(Role::Client);
        rx.max = max_frame;
        let now = clock.now_ms();
        info!(
            "tether: logged in, session {}, heartbeat {} s",
            session_id, heartbeat_secs
        );
        Ok(Established {
            session: Session {
                link: Link {
                    io,
                    clock,
                    sealer,
                    tx,
                    peer_max,
                    write_timeout_ms: write_ms,
                    last_sent: now,
                    unflushed: false,
                },
                rx,
                opener,
                scratch,
                calls: [None; MAX_CALLS_IN_FLIGHT],
                next_id: 1,
                next_nonce: 1,
                last_recv: now,
                ping_outstanding: false,
                heartbeat_ms: u64::from(heartbeat_secs) * 1000,
                call_timeout_ms: ms(config.call_timeout),
                session_id,
                heartbeat_secs,
                ended: false,
            },
            keys: done.keys,
            derived: done.derived,
        })
    }

    /// The server's id for this session (for logs).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The heartbeat interval the server asked for (0: none).
    pub fn heartbeat_secs(&self) -> u16 {
        self.heartbeat_secs
    }

    /// The largest frame body the server accepts.
    pub fn peer_max_frame(&self) -> usize {
        self.link.peer_max
    }

    /// How many calls of the device wait for replies.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.iter().filter(|c| c.is_some()).count()
    }

    /// Whether the session has ended (every method now fails with
    /// [`Error::Ended`]).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Calls `M` on the server and waits (at most
    /// [`Config::call_timeout`]) for its reply, serving the server's calls
    /// and pings meanwhile. The reply borrows the receive buffer.
    ///
    /// For several calls in flight use [`send_call`](Self::send_call) and
    /// [`next_reply`](Self::next_reply); `call` fails with
    /// [`CallError::CallsPending`] while such calls wait.
    pub async fn call<M: Method, H: Handler + ?Sized>(
        &mut self,
        args: &M::Args<'_>,
        handler: &mut H,
    ) -> Result<M::Reply<'_>, CallError<'_, T::Error>> {
        let timeout = Duration::from_millis(self.call_timeout_ms);
        self.call_with_timeout::<M, H>(args, handler, timeout).await
    }

    /// [`call`](Self::call) with its own timeout.
    pub async fn call_with_timeout<M: Method, H: Handler + ?Sized>(
        &mut self,
        args: &M::Args<'_>,
        handler: &mut H,
        timeout: Duration,
    ) -> Result<M::Reply<'_>, CallError<'_, T::Error>> {
        if self.ended {
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

    /// Sends a call of `M` without waiting for its reply (collect it with
    /// [`next_reply`](Self::next_reply)); up to [`MAX_CALLS_IN_FLIGHT`] may
    /// wait at once. The reply is due within `timeout`.
    ///
    /// When input from the server is already waiting, the call stays in the
    /// transport's write buffer until the session next waits
    /// ([`next_reply`](Self::next_reply), [`serve`](Self::serve), ...), so
    /// that calls sent back to back leave together.
    pub async fn send_call<M: Method>(
        &mut self,
        args: &M::Args<'_>,
        timeout: Duration,
    ) -> Result<Pending<M>, CallError<'static, T::Error>> {
        if self.ended {
            return Err(CallError::Session(Error::Ended));
        }
        let slot = self
            .calls
            .iter()
            .position(Option::is_none)
            .ok_or(CallError::TooManyCalls)?;
        let n = method::encode_args::<M>(args, self.scratch)
            .map_err(CallError::Encode)?
            .len();
        let id = self.next_id;
        let msg = Message::Call {
            id,
            method: M::NAME,
            args: &self.scratch[..n],
        };
        match self.link.send(Some(&msg), false).await {
            Ok(()) => {}
            Err(SendError::TooLarge(e)) => return Err(CallError::TooLarge(e)),
            Err(SendError::Fatal(e)) => {
                self.ended = true;
                return Err(CallError::Session(e));
            }
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let deadline = self.link.clock.now_ms().saturating_add(ms(timeout));
        self.calls[slot] = Some(InFlight { id, deadline });
        trace!("tether: call {} sent", id);
        Ok(Pending {
            id,
            _method: PhantomData,
        })
    }

    /// Waits for the next reply to any call in flight (or the first call
    /// timeout: a [`Reply`] whose result is [`Failure::Timeout`]), serving
    /// the server meanwhile. Match it to its call with [`Pending::take`].
    pub async fn next_reply<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
    ) -> Result<Reply<'_>, Error<T::Error>> {
        if self.ended {
            return Err(Error::Ended);
        }
        let mut never = pin!(pending::<Infallible>());
        let done = loop {
            let deadline = self
                .calls
                .iter()
                .flatten()
                .map(|c| c.deadline)
                .min()
                .ok_or(Error::NoCallInFlight)?;
            match self.step(handler, deadline, never.as_mut()).await? {
                Step::Reply(done) => break done,
                Step::Deadline => {
                    let now = self.link.clock.now_ms();
                    let expired = self
                        .calls
                        .iter_mut()
                        .find(|c| c.is_some_and(|c| c.deadline <= now));
                    if let Some(slot) = expired {
                        let id = slot.take().map_or(0, |c| c.id);
                        debug!("tether: call {} timed out", id);
                        break Done {
                            id,
                            outcome: DoneOutcome::Timeout,
                        };
                    }
                }
                Step::Continue | Step::User(_) => {}
            }
        };
        // Answers to server calls read in the same burst as this reply
        // leave now: the application may not wait on the session again soon.
        self.flush().await?;
        let buf = &*self.rx.buf;
        let outcome = match done.outcome {
            DoneOutcome::Ok(r) => Ok(&buf[r]),
            DoneOutcome::Err(code, r) => Err(Failure::Remote {
                code,
                message: core::str::from_utf8(&buf[r]).unwrap_or(""),
            }),
            DoneOutcome::Timeout => Err(Failure::Timeout),
        };
        Ok(Reply {
            id: done.id,
            outcome,
        })
    }

    /// Sends a notification (a one-way message, no reply) of `M`.
    pub async fn notify<M: Method>(
        &mut self,
        args: &M::Args<'_>,
    ) -> Result<(), CallError<'static, T::Error>> {
        if self.ended {
            return Err(CallError::Session(Error::Ended));
        }
        let n = method::encode_args::<M>(args, self.scratch)
            .map_err(CallError::Encode)?
            .len();
        let msg = Message::Notify {
            method: M::NAME,
            args: &self.scratch[..n],
        };
        // Flushed: nothing obliges the application to wait on the session
        // after a notification.
        match self.link.send(Some(&msg), true).await {
            Ok(()) => Ok(()),
            Err(SendError::TooLarge(e)) => Err(CallError::TooLarge(e)),
            Err(SendError::Fatal(e)) => {
                self.ended = true;
                Err(CallError::Session(e))
            }
        }
    }

    /// Serves the server (its calls, notifications, pings; heartbeats) until
    /// the session ends, which is always an error: [`Error::Closed`] when the
    /// server says goodbye.
    ///
    /// Replies to calls still in flight that arrive meanwhile are dropped;
    /// collect them with [`next_reply`](Self::next_reply) instead.
    pub async fn serve<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
    ) -> Result<Infallible, Error<T::Error>> {
        match self.serve_until(handler, pending::<Infallible>()).await {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }

    /// Serves the server for `duration`.
    pub async fn serve_for<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        duration: Duration,
    ) -> Result<(), Error<T::Error>> {
        let deadline = self.link.clock.now_ms().saturating_add(ms(duration));
        let mut never = pin!(pending::<Infallible>());
        loop {
            match self.step(handler, deadline, never.as_mut()).await? {
                // Answers held back for a burst still being read leave
                // before the application gets control back.
                Step::Deadline => return self.flush().await,
                Step::Reply(done) => dropped_reply(&done),
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
    pub async fn serve_until<H: Handler + ?Sized, F: Future>(
        &mut self,
        handler: &mut H,
        until: F,
    ) -> Result<F::Output, Error<T::Error>> {
        let mut until = pin!(until);
        loop {
            match outlined!(self.step(handler, u64::MAX, until.as_mut()))? {
                Step::User(out) => return Ok(out),
                Step::Reply(done) => dropped_reply(&done),
                Step::Continue | Step::Deadline => {}
            }
        }
    }

    /// Sends what the session holds back (answers to a burst of server
    /// calls still being read), if anything.
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        if self.ended {
            return Err(Error::Ended);
        }
        if self.link.unflushed
            && let Err(e) = self.link.send(None, true).await
        {
            return Err(self.fail(e.into_error()));
        }
        Ok(())
    }

    /// Says goodbye (`Normal`); the session has ended afterwards. Then
    /// close the transport: drop a tokio stream, or take it back with
    /// [`into_inner`](Self::into_inner) and call `close()` on an embassy-net
    /// socket.
    pub async fn close(&mut self) -> Result<(), Error<T::Error>> {
        if self.ended {
            return Err(Error::Ended);
        }
        let goodbye = Message::Goodbye {
            reason: GoodbyeReason::Normal,
        };
        let sent = self.link.send(Some(&goodbye), true).await;
        self.ended = true;
        info!("tether: goodbye sent");
        sent.map_err(SendError::into_error)
    }

    /// Gives the transport back (after [`close`](Self::close), or to drop
    /// the connection without a goodbye).
    pub fn into_inner(self) -> T {
        self.link.io
    }

    fn heartbeat_due(&self) -> Option<u64> {
        if self.heartbeat_ms == 0 {
            return None;
        }
        let by_sent = self.link.last_sent.saturating_add(self.heartbeat_ms);
        // Also ping when nothing came in for an interval (the device may be
        // sending notifications only), once per silence.
        let by_recv = if self.ping_outstanding {
            u64::MAX
        } else {
            self.last_recv.saturating_add(self.heartbeat_ms)
        };
        Some(by_sent.min(by_recv))
    }

    fn dead_at(&self) -> Option<u64> {
        (self.heartbeat_ms > 0).then(|| self.last_recv.saturating_add(3 * self.heartbeat_ms))
    }

    fn fail(&mut self, e: Error<T::Error>) -> Error<T::Error> {
        self.ended = true;
        e
    }

    /// One turn of the session: timers, then wait for a frame, a timer, the
    /// caller's deadline or the caller's future, and handle what came.
    async fn step<H: Handler + ?Sized, F: Future>(
        &mut self,
        handler: &mut H,
        deadline: u64,
        user: Pin<&mut F>,
    ) -> Result<Step<F::Output>, Error<T::Error>> {
        if self.ended {
            return Err(Error::Ended);
        }
        let now = self.link.clock.now_ms();
        if self.dead_at().is_some_and(|t| now >= t) {
            warn!("tether: server silent for three heartbeats");
            return Err(self.fail(Error::Timeout(TimeoutKind::Heartbeat)));
        }
        let ping = self.heartbeat_due().is_some_and(|t| now >= t).then(|| {
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            trace!("tether: ping {}", nonce);
            Message::Ping { nonce }
        });
        // Answers held back while a burst was being read go out before
        // waiting for more (a frame already received is handled first).
        if ping.is_some() || self.link.unflushed {
            if let Err(e) = self.link.send(ping.as_ref(), false).await {
                return Err(self.fail(e.into_error()));
            }
            self.ping_outstanding |= ping.is_some();
        }
        if now >= deadline {
            return Ok(Step::Deadline);
        }
        let wake = deadline
            .min(self.heartbeat_due().unwrap_or(u64::MAX))
            .min(self.dead_at().unwrap_or(u64::MAX));
        let clock = &self.link.clock;
        let sleep = async move {
            if wake == u64::MAX {
                pending::<()>().await
            } else {
                clock.sleep_until_ms(wake).await
            }
        };
        match select3(self.rx.read_frame(&mut self.link.io), sleep, user).await {
            Either3::First(Ok(len)) => outlined!(self.on_frame(len, handler)),
            Either3::First(Err(e)) => Err(self.fail(e)),
            Either3::Second(()) => Ok(Step::Continue),
            Either3::Third(out) => Ok(Step::User(out)),
        }
    }

    /// Handles one received frame body (`rx.buf[..len]`).
    async fn on_frame<H: Handler + ?Sized, U>(
        &mut self,
        len: usize,
        handler: &mut H,
    ) -> Result<Step<U>, Error<T::Error>> {
        let msg = match self.opener.open(&self.rx.buf[..len]) {
            Ok(msg) => msg,
            Err(e) => {
                // Contract: close at once, send nothing more.
                warn!("tether: session frame rejected; closing");
                self.ended = true;
                return Err(Error::Session(e));
            }
        };
        self.last_recv = self.link.clock.now_ms();
        self.ping_outstanding = false;
        // What to send, and what to return once it is sent (an error: the
        // session ends after the message, flushed).
        let (mut out, mut then) = match msg {
            Message::Call { id, method, args } => {
                trace!("tether: server calls {} ({})", method, id);
                let req = Request { id, method, args };
                let reply = Responder {
                    out: &mut *self.scratch,
                };
                let responded = outlined!(handler.on_call(req, reply));
                let reply = match responded.0 {
                    Outcome::Ok(n) => Message::Reply {
                        id,
                        result: &self.scratch[..n],
                    },
                    Outcome::Err(code, n) => Message::Error {
                        id,
                        code,
                        message: core::str::from_utf8(&self.scratch[..n]).unwrap_or(""),
                    },
                };
                (reply, Ok(Step::Continue))
            }
            Message::Reply { id, result } => {
                let range = self.rx.range_of(result);
                match self.complete(id, DoneOutcome::Ok(range)) {
                    Some(step) => return Ok(step),
                    None => unasked(),
                }
            }
            Message::Error { id, code, message } => {
                let range = self.rx.range_of(message.as_bytes());
                match self.complete(id, DoneOutcome::Err(code, range)) {
                    Some(step) => return Ok(step),
                    None => unasked(),
                }
            }
            Message::Notify { method, args } => {
                trace!("tether: notification {}", method);
                handler.on_notify(method, args).await;
                return Ok(Step::Continue);
            }
            Message::Ping { nonce } => (Message::Pong { nonce }, Ok(Step::Continue)),
            Message::Pong { .. } => return Ok(Step::Continue),
            Message::Goodbye { reason } => {
                info!("tether: server said goodbye: {}", reason.as_str());
                self.ended = true;
                return Err(Error::Closed(reason));
            }
        };
        let mut retried = false;
        loop {
            let sent = self.link.send(Some(&out), then.is_err()).await;
            return match (sent, then) {
                (_, Err(e)) => Err(self.fail(e)),
                (Ok(()), step) => step,
                (Err(SendError::TooLarge(e)), step) => match out {
                    // A reply that does not fit: the server gets a failure.
                    Message::Reply { id, .. } | Message::Error { id, .. } if !retried => {
                        retried = true;
                        out = Message::Error {
                            id,
                            code: ErrorCode::FAILED,
                            message: "reply too large",
                        };
                        then = step;
                        continue;
                    }
                    _ => Err(self.fail(Error::Frame(e))),
                },
                (Err(e), _) => Err(self.fail(e.into_error())),
            };
        }
    }

    /// A reply or error for call `id` arrived: the step to return, or
    /// `None` for a call that was never made.
    fn complete<U>(&mut self, id: u32, outcome: DoneOutcome) -> Option<Step<U>> {
        if let Some(slot) = self
            .calls
            .iter_mut()
            .find(|c| c.is_some_and(|c| c.id == id))
        {
            *slot = None;
            return Some(Step::Reply(Done { id, outcome }));
        }
        // Ids are issued in order from 1: an older one is a late answer to a
        // call that timed out; anything else was never asked.
        let age = self.next_id.wrapping_sub(id);
        if id != 0 && (1..=1 << 31).contains(&age) {
            debug!("tether: late reply to call {} dropped", id);
            return Some(Step::Continue);
        }
        warn!("tether: reply to call {} that was never made", id);
        None
    }
}

/// The goodbye for a reply to a call that was never made, and the error
/// the session ends with.
fn unasked<'m, U, E>() -> (Message<'m>, Result<Step<U>, Error<E>>) {
    (
        Message::Goodbye {
            reason: GoodbyeReason::ProtocolError,
        },
        Err(Error::Protocol("reply to a call that is not in flight")),
    )
}

fn dropped_reply(done: &Done) {
    warn!(
        "tether: reply to call {} dropped (collect replies with next_reply)",
        done.id
    );
}
