//! A device over a tokio stream driven by tether-core's client machines
//! ([`ClientHandshake`] for v1, [`ClientHandshakeV2`] for v2 with NN or
//! NK): log in, call, say goodbye. For tests and the benchmark, which need
//! a real client of either protocol version against a real server, with
//! nothing of its own between the machines and the socket.
//!
//! The receive buffer is the caller's (`rx`, at least 512 bytes): the
//! connection borrows it, so a login costs no allocation.

use std::time::Duration;

use tether_core::connection::{
    ClientConfig, ClientConnection, ClientHandshake, ClientHandshakeV2, ConnectionError,
    Established, Event, Instant,
};
use tether_core::message::GoodbyeReason;
use tether_core::method::{self, Method};
use tether_core::rand_core::CryptoRng;
use tether_core::scram::ClientCredentials;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Which protocol a login speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Version 1: SCRAM in clear frames, then sealed frames.
    V1,
    /// Version 2: `Noise_NK` towards this pinned server key, or `Noise_NN`
    /// with `None`.
    V2(Option<[u8; 32]>),
}

/// Why a login or a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed.
    Io(std::io::Error),
    /// The machine ended the connection (a refusal is
    /// [`ConnectionError::Refused`]).
    Connection(ConnectionError),
    /// The call's answer was an error or timed out.
    Call(String),
}

impl ClientError {
    /// The refusal code's wire name (`unknown_key`, `unauthorized`...), if
    /// the server refused the login.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::Connection(ConnectionError::Refused(r)) => Some(r.code.as_str()),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket: {e}"),
            Self::Connection(e) => write!(f, "{e}"),
            Self::Call(e) => write!(f, "call failed: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ConnectionError> for ClientError {
    fn from(e: ConnectionError) -> Self {
        Self::Connection(e)
    }
}

/// Milliseconds since the first call in this process: the machines' clock.
fn now() -> Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    Instant::from_millis(start.elapsed().as_millis() as u64)
}

/// What the two client handshakes have in common.
trait Handshake<'b> {
    fn receive_buffer(&mut self) -> &mut [u8];
    fn commit(&mut self, n: usize);
    fn handle_eof(&mut self) -> ConnectionError;
    fn poll_transmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<&'o [u8]>;
    fn poll(&mut self, now: Instant) -> Result<Option<Established<'b>>, ConnectionError>;
}

macro_rules! handshake {
    ($t:ident) => {
        impl<'b> Handshake<'b> for $t<'b, '_> {
            fn receive_buffer(&mut self) -> &mut [u8] {
                $t::receive_buffer(self)
            }
            fn commit(&mut self, n: usize) {
                $t::commit(self, n)
            }
            fn handle_eof(&mut self) -> ConnectionError {
                $t::handle_eof(self)
            }
            fn poll_transmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<&'o [u8]> {
                $t::poll_transmit(self, now, out)
            }
            fn poll(&mut self, now: Instant) -> Result<Option<Established<'b>>, ConnectionError> {
                $t::poll(self, now)
            }
        }
    };
}
handshake!(ClientHandshake);
handshake!(ClientHandshakeV2);

/// Logs in as `username` over `stream` with `protocol`; the connection
/// borrows `rx` (its length is the largest frame the device accepts).
pub async fn login<'b, S, R>(
    stream: &mut S,
    rx: &'b mut [u8],
    username: &str,
    credentials: ClientCredentials<'_>,
    protocol: Protocol,
    rng: &mut R,
) -> Result<ClientConnection<'b>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRng + ?Sized,
{
    let config = ClientConfig::default().with_handshake_timeout(Duration::from_secs(30));
    match protocol {
        Protocol::V1 => {
            let hs = ClientHandshake::new(rx, username, credentials, &config, rng)?;
            drive(stream, hs).await
        }
        Protocol::V2(key) => {
            let hs = ClientHandshakeV2::new(rx, username, credentials, key.as_ref(), &config, rng)?;
            drive(stream, hs).await
        }
    }
}

async fn drive<'b, S, H>(stream: &mut S, mut hs: H) -> Result<ClientConnection<'b>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handshake<'b>,
{
    let mut out = [0u8; 1024];
    loop {
        // What is owed goes out before anything is awaited: frame 1 first,
        // then what handling a frame made owed (NN's hello, the proof).
        while let Some(frame) = hs.poll_transmit(now(), &mut out) {
            stream.write_all(frame).await?;
        }
        if let Some(done) = hs.poll(now())? {
            return Ok(done.connection);
        }
        if let Some(frame) = hs.poll_transmit(now(), &mut out) {
            stream.write_all(frame).await?;
            continue;
        }
        let n = stream.read(hs.receive_buffer()).await?;
        if n == 0 {
            return Err(hs.handle_eof().into());
        }
        hs.commit(n);
    }
}

/// Calls `M` and waits for its reply; `check` gets the reply's postcard
/// bytes (borrowed from the connection: nothing is copied). `out` is the
/// scratch buffer frames are sealed in (the call's frame must fit).
pub async fn call<M: Method, S, T>(
    stream: &mut S,
    conn: &mut ClientConnection<'_>,
    args: &M::Args<'_>,
    out: &mut [u8],
    check: impl FnOnce(&[u8]) -> T,
) -> Result<T, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, frame) = conn
        .call::<M>(now(), args, Duration::from_secs(30), out)
        .map_err(|e| ClientError::Call(format!("{e:?}")))?;
    stream.write_all(frame).await?;
    loop {
        // Events are polled until there is none (another event may wait
        // in the same read), what is owed goes out, then more is read.
        let idle = match conn.poll_event(now())? {
            Some(Event::Reply(reply)) if reply.id == id => {
                return reply
                    .result
                    .map(check)
                    .map_err(|e| ClientError::Call(e.to_string()));
            }
            Some(_) => false,
            None => true,
        };
        while let Some(frame) = conn.poll_transmit(now(), out) {
            stream.write_all(frame).await?;
        }
        if !idle {
            continue;
        }
        let n = stream.read(conn.receive_buffer()).await?;
        if n == 0 {
            return Err(conn.handle_eof().into());
        }
        conn.commit(n);
    }
}

/// [`call`] and decode the reply as `M`'s result, turned owned by `owned`.
pub async fn call_typed<M: Method, S, T>(
    stream: &mut S,
    conn: &mut ClientConnection<'_>,
    args: &M::Args<'_>,
    owned: impl FnOnce(&M::Reply<'_>) -> T,
) -> Result<T, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = vec![0u8; 4096];
    call::<M, S, _>(stream, conn, args, &mut out, |bytes| {
        method::decode_reply::<M>(bytes)
            .map(|reply| owned(&reply))
            .map_err(|e| ClientError::Call(format!("the reply does not decode: {e}")))
    })
    .await?
}

/// Says goodbye (`Goodbye(normal)`) and shuts the stream's write half.
pub async fn close<S>(stream: &mut S, conn: &mut ClientConnection<'_>) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.close(GoodbyeReason::Normal);
    let mut out = [0u8; 128];
    while let Some(frame) = conn.poll_transmit(now(), &mut out) {
        stream.write_all(frame).await?;
    }
    stream.shutdown().await?;
    Ok(())
}
