//! Host adapter (feature `std`): the same client over a tokio `TcpStream`
//! with read and write buffers. This is what `tether call` and the device
//! of `tether demo` use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tether_core::method::builtin::WhoAmI;
//! use tether_core::scram::ClientCredentials;
//! use tether_firmware::{BufferStore, Config, host};
//! // A CSPRNG for rand_core 0.10 (tether_core::rand_core): getrandom 0.4's
//! // SysRng (feature `sys_rng`) behind `UnwrapErr`, or rand 0.10's `rand::rng()`.
//! let mut rng = tether_core::rand_core::UnwrapErr(getrandom::SysRng);
//!
//! let mut store: BufferStore = BufferStore::new();
//! let mut login = host::connect("127.0.0.1:7420", store.buffers(), "alice",
//!     ClientCredentials::Password("wonderland"), &mut rng, &Config::default()).await?;
//! let me = login.session.call::<WhoAmI, _>(&(), &mut ()).await.map_err(|e| e.into_owned())?;
//! println!("logged in as {} (session {})", me.username, me.session_id);
//! login.session.close().await?;
//! # Ok(()) }
//! ```

use embedded_io_async::{ErrorType, Read, ReadReady, Write};
use tether_core::rand_core::CryptoRng;
use tether_core::scram::ClientCredentials;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::buffers::Buffers;
use crate::clock::TokioClock;
use crate::config::Config;
use crate::error::Error;
use crate::handshake::Established;
use crate::session::Session;

/// Read and write buffer sizes of [`TcpTransport`].
pub const BUFFER: usize = 4096;

/// The transport of a host session: a tokio `TcpStream` with a read and a
/// write buffer, as `embedded_io_async::{Read, Write, ReadReady}`. A burst
/// of frames from the server is read with one system call, and the answers
/// to it leave with one (the session flushes once no received byte is left
/// to handle).
#[derive(Debug)]
pub struct TcpTransport {
    stream: BufReader<BufWriter<TcpStream>>,
}

impl TcpTransport {
    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        self.stream.get_ref().get_ref()
    }

    /// The socket back; bytes read ahead or not yet flushed are dropped.
    pub fn into_inner(self) -> TcpStream {
        self.stream.into_inner().into_inner()
    }
}

impl ErrorType for TcpTransport {
    type Error = std::io::Error;
}

impl Read for TcpTransport {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.stream.read(buf).await
    }
}

impl ReadReady for TcpTransport {
    /// Whether received bytes are buffered (the socket itself is not asked).
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.stream.buffer().is_empty())
    }
}

impl Write for TcpTransport {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.stream.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.stream.flush().await
    }
}

/// A host session.
pub type HostSession<'b> = Session<'b, TcpTransport, TokioClock>;

/// Wraps a connected tokio stream for [`Session::login`] (sets `TCP_NODELAY`:
/// the session flushes whole frames or bursts of them).
pub fn transport(stream: TcpStream) -> TcpTransport {
    let _ = stream.set_nodelay(true);
    TcpTransport {
        stream: BufReader::with_capacity(BUFFER, BufWriter::with_capacity(BUFFER, stream)),
    }
}

/// Connects to `addr` (default port 7420, [`tether_core::frame::DEFAULT_PORT`])
/// and logs in. Connection errors are [`Error::Transport`].
pub async fn connect<'b, A: ToSocketAddrs, R: CryptoRng + ?Sized>(
    addr: A,
    buffers: Buffers<'b>,
    username: &str,
    credentials: ClientCredentials<'_>,
    rng: &mut R,
    config: &Config,
) -> Result<Established<'b, TcpTransport, TokioClock>, Error<std::io::Error>> {
    let stream = TcpStream::connect(addr).await.map_err(Error::Transport)?;
    Session::login(
        transport(stream),
        buffers,
        TokioClock::new(),
        username,
        credentials,
        rng,
        config,
    )
    .await
}
