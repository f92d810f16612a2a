//! embassy-net helper (feature `embassy-net`): connect a `TcpSocket` to the
//! server, log in, and keep the session, reconnecting with exponential
//! backoff and jitter and logging in again with the cached keys.
//!
//! The server is an [`IpEndpoint`], or (feature `dns`) a `HostName`
//! looked up through the stack's DNS servers (from DHCP) before every
//! connection attempt, so that a server that moved is found again.
//!
//! Policy ([`Error::retry`]): `unauthorized`, `unsupported`, `version` and
//! `protocol` refusals stop retrying ([`Link::run`] returns the error);
//! `throttled`, `unavailable` and `busy` retry after the backoff delay, and
//! no sooner than the server's `retry_after_secs`; connection failures,
//! timeouts, lost sessions and impostor servers retry after the backoff
//! delay. Cached keys that no longer fit (the account's password was changed
//! or re-hashed) are dropped and the password is used, if the application
//! gave one; without a password [`Link::run`] returns
//! `Err(Error::Login(ScramError::CachedKeysMismatch))`: the keys are stale,
//! provision the device again.
//!
//! A first login with a password (no keys yet), with feature `first-login`:
//! the link probes (a hello, the challenge's salt and iteration count, a
//! polite close: the server counts it neither as a failure nor against its
//! throttle), runs PBKDF2 with no connection open, reporting progress to
//! `Link::on_derivation`'s callback, then reconnects and logs in with the
//! derived keys and hands them to the closure ([`Connected::new_keys`]) to
//! be stored. The server's handshake timeout is never in the way, however
//! long PBKDF2 takes. Without the feature the password's PBKDF2 runs inside
//! the login, which fits a host, not a microcontroller at Django's
//! iteration counts.
//!
//! ```no_run
//! use core::ops::ControlFlow;
//! use embassy_net::{IpEndpoint, Ipv4Address, Stack};
//! use tether_firmware::embassy::{Account, Link};
//! use tether_firmware::{Backoff, BufferStore, Config, Handler};
//!
//! async fn device(stack: Stack<'static>, mind: &mut impl Handler,
//!                 rng: &mut impl tether_core::rand_core::CryptoRng) {
//!     let (mut sock_rx, mut sock_tx) = ([0u8; 1024], [0u8; 1024]);
//!     let mut store: BufferStore = BufferStore::new();
//!     let server = IpEndpoint::new(Ipv4Address::new(10, 0, 0, 1).into(), 7420);
//!     let account = Account { username: "sensor-7", password: Some("wonderland"), keys: None };
//!     // (Settings known at build time can be a `static` in flash:
//!     // `static CONFIG: Config = Config::new()...;`.)
//!     let config = Config::default();
//!     let mut link = Link::new(stack, server, &mut sock_rx, &mut sock_tx, store.buffers(),
//!         account, &config, Backoff::default());
//!     let fatal = link
//!         .run(rng, async |connected| {
//!             if let Some(keys) = connected.new_keys {
//!                 let _ = keys; // persist to flash: later boots skip PBKDF2
//!             }
//!             // Serve until the session is lost; `run` then reconnects.
//!             match connected.session.serve(&mut *mind).await {
//!                 Ok(never) => match never {},
//!                 Err(lost) => ControlFlow::<(), _>::Continue(lost),
//!             }
//!         })
//!         .await;
//!     let _ = fatal; // e.g. Err(Refused { code: Unauthorized, .. }): needs a human
//! }
//! ```

use core::ops::ControlFlow;
use core::time::Duration;

use embassy_futures::select::{Either, select};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_time::Timer;
use tether_core::rand_core::CryptoRng;
use tether_core::scram::{CachedKeys, ClientCredentials, ScramError};

use crate::backoff::{Backoff, Retry};
use crate::buffers::Buffers;
use crate::clock::EmbassyClock;
use crate::config::Config;
use crate::error::Error;
use crate::handshake::Established;
#[cfg(feature = "first-login")]
use crate::handshake::{derive_keys, probe};
use crate::session::{Session, ms};

/// The transport error of an embassy-net session.
pub type TcpError = embassy_net::tcp::Error;

/// A session over an embassy-net `TcpSocket`.
pub type TcpSession<'s> = Session<'s, TcpSocket<'s>, EmbassyClock>;

/// Where the server is: asked again before every connection attempt.
#[allow(async_fn_in_trait)] // used by the link's own future only
pub trait Remote {
    /// The address to connect to now, or `None` when it cannot be found
    /// (the link backs off and asks again).
    async fn resolve(&mut self, stack: Stack<'_>) -> Option<IpEndpoint>;
}

impl Remote for IpEndpoint {
    async fn resolve(&mut self, _stack: Stack<'_>) -> Option<IpEndpoint> {
        Some(*self)
    }
}

/// The server by name (feature `dns`): an IPv4 address from the stack's DNS
/// servers (embassy-net's `dns` feature; DHCP provides the servers). A
/// dotted IPv4 address in `host` is used as it is, without a query.
#[cfg(feature = "dns")]
#[derive(Debug, Clone, Copy)]
pub struct HostName<'a> {
    /// The server's name, e.g. `"tether.example.com"`.
    pub host: &'a str,
    /// Its port (`tether_core::frame::DEFAULT_PORT` is 7420).
    pub port: u16,
}

#[cfg(feature = "dns")]
impl Remote for HostName<'_> {
    async fn resolve(&mut self, stack: Stack<'_>) -> Option<IpEndpoint> {
        match stack
            .dns_query(self.host, embassy_net::dns::DnsQueryType::A)
            .await
        {
            Ok(found) => Some(IpEndpoint::new(*found.first()?, self.port)),
            Err(_) => {
                warn!("tether: no address for the server's name");
                None
            }
        }
    }
}

/// Who logs in, and with what.
#[derive(Debug, Clone)]
pub struct Account<'a> {
    /// The Django username.
    pub username: &'a str,
    /// The password, if the device has it: needed for the first login, and
    /// again when the cached keys stop fitting. `None` once keys are
    /// provisioned keeps it out of the firmware.
    pub password: Option<&'a str>,
    /// Keys from an earlier password login (loaded from flash): no PBKDF2.
    pub keys: Option<CachedKeys>,
}

/// A logged-in session handed to [`Link::run`]'s closure.
pub struct Connected<'s> {
    /// The session.
    pub session: TcpSession<'s>,
    /// `Some` on the first session after the keys were derived from the
    /// password (a first login, or stale keys replaced): the keys to
    /// persist (`storage::KeyStore::save`) so that later boots log in
    /// without PBKDF2.
    pub new_keys: Option<&'s CachedKeys>,
}

/// Iterations of PBKDF2 run between two progress reports (feature
/// `first-login`): about 60 ms on a Cortex-M4 at 168 MHz, so that the
/// executor's other tasks (the network stack, a watchdog) run in between.
#[cfg(feature = "first-login")]
pub const DERIVATION_STEP: u32 = 1000;

/// Called during an offline key derivation with `(iterations done,
/// total)` (feature `first-login`): feed a watchdog, blink a LED, show
/// progress.
#[cfg(feature = "first-login")]
pub type DerivationProgress<'a> = &'a mut dyn FnMut(u32, u32);

/// Connects, logs in and reconnects: one server, one account.
///
/// RAM: the socket buffers (`TcpSocket`'s, caller-sized) and the session
/// [`Buffers`], plus the cached keys (~140 bytes) and the backoff state.
pub struct Link<'a, S: Remote = IpEndpoint> {
    stack: Stack<'a>,
    remote: S,
    socket_rx: &'a mut [u8],
    socket_tx: &'a mut [u8],
    buffers: Buffers<'a>,
    account: Account<'a>,
    config: &'a Config,
    backoff: Backoff,
    #[cfg(feature = "first-login")]
    progress: Option<DerivationProgress<'a>>,
}

impl<'a, S: Remote> Link<'a, S> {
    /// A link to `remote` (an [`IpEndpoint`], or a `HostName` with the
    /// `dns` feature) through `stack`. `socket_rx`/`socket_tx` are the
    /// `TcpSocket`'s buffers (1 KiB each is plenty for 512-byte frames).
    /// `config` is borrowed: settings fixed at build time can be a
    /// `static` in flash ([`Config::new`] and its `with_` methods are
    /// `const`), which no RAM holds a copy of.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stack: Stack<'a>,
        remote: S,
        socket_rx: &'a mut [u8],
        socket_tx: &'a mut [u8],
        buffers: Buffers<'a>,
        account: Account<'a>,
        config: &'a Config,
        backoff: Backoff,
    ) -> Self {
        Self {
            stack,
            remote,
            socket_rx,
            socket_tx,
            buffers,
            account,
            config,
            backoff,
            #[cfg(feature = "first-login")]
            progress: None,
        }
    }

    /// Reports the progress of offline key derivations (feature
    /// `first-login`) to `progress`, called every [`DERIVATION_STEP`]
    /// iterations with `(done, total)` and once at the end. It is never
    /// called when the link logs in with keys.
    #[cfg(feature = "first-login")]
    pub fn on_derivation(mut self, progress: DerivationProgress<'a>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The cached keys (after a password login, the derived ones).
    pub fn keys(&self) -> Option<&CachedKeys> {
        self.account.keys.as_ref()
    }

    /// Keeps a session up: connects, logs in (backing off between failed
    /// attempts) and hands each session to `on_session`. When the closure
    /// returns `Continue(error)` (normally the error that ended the
    /// session) the link reconnects; `Break(value)` says goodbye, closes the
    /// socket and returns `Ok(value)`. Returns `Err` only for what retrying
    /// cannot fix ([`Retry::Never`]), among them stale keys without a
    /// password to derive new ones from:
    /// `Err(Error::Login(ScramError::CachedKeysMismatch))`.
    ///
    /// With a password and no keys (feature `first-login`), the link first
    /// probes and derives the keys offline (see the module docs).
    pub async fn run<R, B, F>(
        &mut self,
        rng: &mut R,
        mut on_session: F,
    ) -> Result<B, Error<TcpError>>
    where
        R: CryptoRng + ?Sized,
        F: AsyncFnMut(&mut Connected<'_>) -> ControlFlow<B, Error<TcpError>>,
    {
        // The backoff floor before the next attempt; `None`: at once.
        let mut retry: Option<Duration> = None;
        // The keys were derived from the password and not yet handed over.
        let mut fresh = false;
        loop {
            if let Some(floor) = retry {
                let delay = self.backoff.next_delay_ms(rng, ms(floor));
                info!("tether: reconnecting in {} ms", delay);
                Timer::after_millis(delay).await;
            }
            let Self {
                stack,
                remote,
                socket_rx,
                socket_tx,
                buffers,
                account,
                config,
                backoff,
                #[cfg(feature = "first-login")]
                progress,
            } = self;
            // The server's address: a DNS query for a HostName (which gives
            // up by itself), the endpoint itself otherwise.
            let Some(endpoint) = remote.resolve(*stack).await else {
                retry = Some(Duration::ZERO);
                continue;
            };
            let mut socket = TcpSocket::new(*stack, socket_rx, socket_tx);
            let connect = select(
                socket.connect(endpoint),
                // (A connection attempt waits as long as a handshake step.)
                Timer::after_millis(ms(config.handshake_timeout)),
            )
            .await;
            match connect {
                Either::First(Ok(())) => {}
                Either::First(Err(_)) | Either::Second(()) => {
                    warn!("tether: cannot connect to the server");
                    socket.abort();
                    retry = Some(Duration::ZERO);
                    continue;
                }
            }
            let session_buffers = Buffers {
                rx: &mut *buffers.rx,
                tx: &mut *buffers.tx,
            };
            // A first login (or stale keys) with the password: probe for the
            // salt and iteration count, close, derive the keys offline, and
            // log in with them on the next connection.
            #[cfg(feature = "first-login")]
            if let (None, Some(password)) = (&account.keys, account.password) {
                let keys = outlined!(first_login(
                    socket,
                    session_buffers,
                    account.username,
                    password,
                    progress,
                    rng,
                    config,
                ));
                match keys {
                    Ok(keys) => {
                        account.keys = Some(keys);
                        fresh = true;
                        retry = None;
                    }
                    Err(e) => match e.retry() {
                        Retry::Never => return Err(e),
                        Retry::Later(floor) => retry = Some(floor),
                    },
                }
                continue;
            }
            let credentials = match (&account.keys, account.password) {
                (Some(keys), _) => ClientCredentials::Keys(keys),
                #[cfg(not(feature = "first-login"))]
                (None, Some(password)) => ClientCredentials::Password(password),
                _ => return Err(Error::Login(ScramError::CachedKeysMismatch)),
            };
            // Each block ends its values' storage before the next await: the
            // future (static RAM) holds the largest step, not their sum.
            let Established {
                session,
                keys,
                derived,
            } = {
                let login = outlined!(Session::login(
                    socket,
                    session_buffers,
                    EmbassyClock,
                    account.username,
                    credentials,
                    rng,
                    config,
                ));
                // Move every part out at once: nothing of the login result stays
                // alive (and in the future's state) during the session.
                match login {
                    Ok(login) => login,
                    Err(Error::Login(ScramError::CachedKeysMismatch))
                        if account.keys.is_some() && account.password.is_some() =>
                    {
                        warn!("tether: the cached keys are stale; new ones from the password");
                        account.keys = None;
                        fresh = false;
                        retry = None;
                        continue;
                    }
                    Err(e) => match e.retry() {
                        Retry::Never => return Err(e),
                        Retry::Later(floor) => {
                            retry = Some(floor);
                            continue;
                        }
                    },
                }
            };
            backoff.reset();
            if derived {
                account.keys = Some(keys);
                fresh = true;
            } else {
                drop(keys);
            }
            let (session, flow) = {
                let mut connected = Connected {
                    session,
                    new_keys: if fresh { account.keys.as_ref() } else { None },
                };
                fresh = false;
                let flow = outlined!(on_session(&mut connected));
                (connected.session, flow)
            };
            // Goodbye and FIN after Break, RST after a lost session.
            let (mut socket, closed) = {
                let mut session = session;
                let closed = flow.is_break() && session.close().await.is_ok();
                (session.into_inner(), closed)
            };
            if closed {
                socket.close();
            } else {
                socket.abort();
            }
            let _ = select(socket.flush(), Timer::after_secs(2)).await;
            if let ControlFlow::Break(value) = flow {
                return Ok(value);
            }
            retry = Some(Duration::ZERO);
        }
    }
}

/// A first login's probe and offline derivation (feature `first-login`):
/// the challenge's salt and iteration count over `socket`, a polite close
/// (neither a failure nor a throttle hit on the server), then PBKDF2 with
/// no connection open, `DERIVATION_STEP` iterations at a time with
/// `progress` reports. Returns the keys to log in with.
#[cfg(feature = "first-login")]
async fn first_login<R: CryptoRng + ?Sized>(
    socket: TcpSocket<'_>,
    buffers: Buffers<'_>,
    username: &str,
    password: &str,
    progress: &mut Option<DerivationProgress<'_>>,
    rng: &mut R,
    config: &Config,
) -> Result<CachedKeys, Error<TcpError>> {
    let (probed, mut socket) = probe(socket, buffers, EmbassyClock, username, rng, config).await?;
    socket.close();
    let _ = select(socket.flush(), Timer::after_secs(2)).await;
    drop(socket);
    info!(
        "tether: deriving the keys offline ({} iterations)",
        probed.iterations()
    );
    let derivation = probed.derivation(password).map_err(Error::Login)?;
    derive_keys(derivation, DERIVATION_STEP, |done, total| {
        if let Some(progress) = progress.as_mut() {
            progress(done, total);
        }
    })
    .await
    .map_err(Error::Login)
}
