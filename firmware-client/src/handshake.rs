//! Login: drives tether-core's `ClientHandshake` over the transport.

use embassy_futures::select::{Either, select};
use embedded_io_async::{Read, ReadReady, Write};
use tether_core::connection::{ClientHandshake, ConnectionError};
use tether_core::rand_core::CryptoRng;
use tether_core::scram::{CachedKeys, ClientCredentials};

use crate::buffers::Buffers;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::io::Io;
use crate::session::{MAX_CALLS_IN_FLIGHT, Session, ms};

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

/// Runs a login machine (v1's `ClientHandshake`, or with the feature `v2`
/// the `Machine` of either version) to its end over `$io`
/// (docs/CONNECTION.md): what it owes is written, the server's answers
/// read, its deadline kept. Evaluates to the login's result. A macro, so
/// that the probe's loop and the v1 build stay as they were.
macro_rules! drive {
    ($handshake:ident, $io:ident, $tx:ident, $config:ident) => {{
        let established = loop {
            let now = $io.now();
            match $handshake.poll(now) {
                Ok(Some(established)) => break established,
                Ok(None) => {}
                Err(e) => {
                    if let ConnectionError::Refused(r) = e {
                        warn!("tether: login refused: {}", r.code.as_str());
                    }
                    return Err(e.into());
                }
            }
            if let Some(frame) = $handshake.poll_transmit(now, $tx) {
                $io.send(frame, true).await?;
            }
            let wake = $handshake
                .poll_timeout()
                .map_or(u64::MAX, |t| t.as_millis());
            let read = $io.transport.read($handshake.receive_buffer());
            match select(read, $io.clock.sleep_until_ms(wake)).await {
                Either::First(Ok(0)) => return Err($handshake.handle_eof().into()),
                Either::First(Ok(n)) => $handshake.commit(n),
                Either::First(Err(e)) => return Err(Error::Transport(e)),
                Either::Second(()) => $handshake.handle_timeout($io.now()),
            }
        };
        let conn = established.connection;
        info!(
            "tether: logged in, session {}, heartbeat {} s",
            conn.session_id(),
            conn.heartbeat_secs()
        );
        Ok(Established {
            session: Session {
                io: $io,
                conn,
                tx: $tx,
                call_timeout_ms: ms($config.call_timeout),
            },
            keys: established.keys,
            derived: established.derived,
        })
    }};
}

impl<'b, T: Read + Write + ReadReady, C: Clock> Session<'b, T, C> {
    /// Logs in over `transport` (connected) as `username`.
    ///
    /// Follows docs/CONNECTION.md: hello, challenge (nonce, iteration floor
    /// and cached keys checked; with a password this runs PBKDF2 once),
    /// proof, welcome (the server's signature checked: a server that cannot
    /// prove itself is refused with [`Error::Login`] and nothing more is
    /// sent). A refusal is [`Error::Refused`] with its code.
    ///
    /// With the feature `v2` and `Config::protocol` set to v2 (see
    /// `Config::with_server_key`), the login is protocol v2's: a Noise
    /// handshake (`Noise_NK` towards the pinned key, or `Noise_NN`), then
    /// the same SCRAM exchange bound to it in sealed frames; the session is
    /// sealed. A server that does not hold the pinned key refuses
    /// `unknown_key` ([`Error::Refused`]); an answer that fails the Noise
    /// handshake is `Error::Noise`. It never falls back to v1.
    ///
    /// `rng` provides the SCRAM nonce (and with v2 the ephemeral key); it
    /// must be a real CSPRNG (the MCU's TRNG, `getrandom` on a host).
    pub async fn login<R: CryptoRng + ?Sized>(
        transport: T,
        buffers: Buffers<'b>,
        clock: C,
        username: &str,
        credentials: ClientCredentials<'_>,
        rng: &mut R,
        config: &Config,
    ) -> Result<Established<'b, T, C>, Error<T::Error>> {
        let Buffers { rx, tx } = buffers;
        // v1's machine alone without the feature, so that the v1 build is
        // what it was; with it, either machine in one local (an enum: the
        // login's state holds the larger, not both).
        #[cfg(feature = "v2")]
        let mut handshake = match v2_server_key(&config.protocol) {
            Some(server_key) => Machine::V2(
                tether_core::connection::ClientHandshakeV2::<MAX_CALLS_IN_FLIGHT>::new(
                    rx,
                    username,
                    credentials,
                    server_key,
                    &config.connection(),
                    rng,
                )
                .map_err(buffer_error)?,
            ),
            None => Machine::V1(
                ClientHandshake::<MAX_CALLS_IN_FLIGHT>::new(
                    rx,
                    username,
                    credentials,
                    &config.connection(),
                    rng,
                )
                .map_err(buffer_error)?,
            ),
        };
        #[cfg(not(feature = "v2"))]
        let mut handshake = ClientHandshake::<MAX_CALLS_IN_FLIGHT>::new(
            rx,
            username,
            credentials,
            &config.connection(),
            rng,
        )
        .map_err(buffer_error)?;
        let mut io = Io {
            transport,
            clock,
            write_timeout_ms: ms(config.write_timeout),
            unflushed: false,
        };
        drive!(handshake, io, tx, config)
    }
}

/// The login machine of a `v2` build: v1's or v2's (the same methods).
#[cfg(feature = "v2")]
#[allow(clippy::large_enum_variant)]
enum Machine<'b, 'c> {
    V1(ClientHandshake<'b, 'c, MAX_CALLS_IN_FLIGHT>),
    V2(tether_core::connection::ClientHandshakeV2<'b, 'c, MAX_CALLS_IN_FLIGHT>),
}

/// Forwards each method the login uses to the machine.
#[cfg(feature = "v2")]
impl<'b> Machine<'b, '_> {
    fn poll(
        &mut self,
        now: tether_core::connection::Instant,
    ) -> Result<
        Option<tether_core::connection::Established<'b, MAX_CALLS_IN_FLIGHT>>,
        ConnectionError,
    > {
        match self {
            Self::V1(h) => h.poll(now),
            Self::V2(h) => h.poll(now),
        }
    }

    fn poll_transmit<'o>(
        &mut self,
        now: tether_core::connection::Instant,
        out: &'o mut [u8],
    ) -> Option<&'o [u8]> {
        match self {
            Self::V1(h) => h.poll_transmit(now, out),
            Self::V2(h) => h.poll_transmit(now, out),
        }
    }

    fn poll_timeout(&self) -> Option<tether_core::connection::Instant> {
        match self {
            Self::V1(h) => h.poll_timeout(),
            Self::V2(h) => h.poll_timeout(),
        }
    }

    fn receive_buffer(&mut self) -> &mut [u8] {
        match self {
            Self::V1(h) => h.receive_buffer(),
            Self::V2(h) => h.receive_buffer(),
        }
    }

    fn commit(&mut self, n: usize) {
        match self {
            Self::V1(h) => h.commit(n),
            Self::V2(h) => h.commit(n),
        }
    }

    fn handle_eof(&mut self) -> ConnectionError {
        match self {
            Self::V1(h) => h.handle_eof(),
            Self::V2(h) => h.handle_eof(),
        }
    }

    fn handle_timeout(&mut self, now: tether_core::connection::Instant) {
        match self {
            Self::V1(h) => h.handle_timeout(now),
            Self::V2(h) => h.handle_timeout(now),
        }
    }
}

/// A v2 login's server key: `Some(Some(key))` for NK, `Some(None)` for NN,
/// `None` for v1.
#[cfg(feature = "v2")]
fn v2_server_key(protocol: &crate::config::Protocol) -> Option<Option<&[u8; 32]>> {
    use crate::config::Protocol;
    match protocol {
        Protocol::V1 => None,
        Protocol::Pinned(key) => Some(Some(key)),
        Protocol::Unpinned => Some(None),
    }
}

/// The login machine's error for a receive buffer it cannot use.
fn buffer_error<E>(e: ConnectionError) -> Error<E> {
    match e {
        ConnectionError::Frame(_) => Error::Buffer("rx must hold at least 512 bytes"),
        e => Error::from(e),
    }
}

/// What a probe found (feature `first-login`): the account's mechanism,
/// salt and iteration count, from which the device derives its keys
/// offline.
#[cfg(feature = "first-login")]
#[derive(Debug, Clone)]
pub struct Probed {
    /// Keys without secret (an empty password's): only their mechanism,
    /// salt and count are used.
    template: CachedKeys,
}

#[cfg(feature = "first-login")]
impl Probed {
    /// The account's PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.template.iterations
    }

    /// Starts deriving the keys of `password` for this account: run it
    /// with [`derive_keys`] (no connection open).
    pub fn derivation(
        &self,
        password: &str,
    ) -> Result<tether_core::scram::Derivation, tether_core::scram::ScramError> {
        let t = &self.template;
        tether_core::scram::Derivation::new(t.mechanism, password, &t.salt, t.iterations)
    }
}

/// A first login's first step (feature `first-login`): a hello as
/// `username` over `transport` (connected), the server's challenge checked
/// as for a password (nonce, [`Config::scram`](crate::Config::scram)'s
/// iteration bounds, salt), and no proof: the transport is handed back to
/// be closed politely (a TCP FIN: `close()` on embassy-net's socket, drop
/// a tokio stream). The server counts the probe neither as a failed login
/// nor against its throttle. Then derive the keys with [`derive_keys`], with
/// no connection open, and log in with
/// [`ClientCredentials::Keys`].
#[cfg(feature = "first-login")]
pub async fn probe<'b, T, C, R>(
    transport: T,
    buffers: Buffers<'b>,
    clock: C,
    username: &str,
    rng: &mut R,
    config: &Config,
) -> Result<(Probed, T), Error<T::Error>>
where
    T: Read + Write + ReadReady,
    C: Clock,
    R: CryptoRng + ?Sized,
{
    let Buffers { rx, tx } = buffers;
    let mut handshake = ClientHandshake::<MAX_CALLS_IN_FLIGHT>::new(
        rx,
        username,
        ClientCredentials::Probe,
        &config.connection(),
        rng,
    )
    .map_err(buffer_error)?;
    let mut io = Io {
        transport,
        clock,
        write_timeout_ms: ms(config.write_timeout),
        unflushed: false,
    };
    loop {
        let now = io.now();
        match handshake.poll(now) {
            Ok(None) => {}
            // (A welcome without a proof cannot be.)
            Ok(Some(_)) => return Err(Error::Ended),
            Err(e) => return Err(e.into()),
        }
        if let Some(template) = handshake.keys() {
            info!("tether: probed: {} iterations", template.iterations);
            let probed = Probed {
                template: template.clone(),
            };
            return Ok((probed, io.transport));
        }
        if let Some(frame) = handshake.poll_transmit(now, tx) {
            io.send(frame, true).await?;
        }
        let wake = handshake.poll_timeout().map_or(u64::MAX, |t| t.as_millis());
        let read = io.transport.read(handshake.receive_buffer());
        match select(read, io.clock.sleep_until_ms(wake)).await {
            Either::First(Ok(0)) => return Err(handshake.handle_eof().into()),
            Either::First(Ok(n)) => handshake.commit(n),
            Either::First(Err(e)) => return Err(Error::Transport(e)),
            Either::Second(()) => handshake.handle_timeout(io.now()),
        }
    }
}

/// Runs a [`Derivation`](tether_core::scram::Derivation) to its end
/// (feature `first-login`), `step` iterations at a time; after each step
/// `progress(done, total)` is called and the task yields, so that the
/// executor's other tasks (the network stack, a watchdog) run in between.
/// Hold no connection open meanwhile: at 1,000,000 iterations this takes
/// one to six minutes on a microcontroller (firmware-client/README.md).
#[cfg(feature = "first-login")]
pub async fn derive_keys(
    mut derivation: tether_core::scram::Derivation,
    step: u32,
    mut progress: impl FnMut(u32, u32),
) -> Result<CachedKeys, tether_core::scram::ScramError> {
    let total = derivation.iterations();
    while !derivation.run(step.max(1)) {
        progress(total - derivation.remaining(), total);
        embassy_futures::yield_now().await;
    }
    progress(total, total);
    derivation.finish()
}
