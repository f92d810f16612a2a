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

impl<'b, T: Read + Write + ReadReady, C: Clock> Session<'b, T, C> {
    /// Logs in over `transport` (connected) as `username`.
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
        transport: T,
        buffers: Buffers<'b>,
        clock: C,
        username: &str,
        credentials: ClientCredentials<'_>,
        rng: &mut R,
        config: &Config,
    ) -> Result<Established<'b, T, C>, Error<T::Error>> {
        let Buffers { rx, tx } = buffers;
        let mut handshake = ClientHandshake::<MAX_CALLS_IN_FLIGHT>::new(
            rx,
            username,
            credentials,
            &config.connection(),
            rng,
        )
        .map_err(|e| match e {
            ConnectionError::Frame(_) => Error::Buffer("rx must hold at least 512 bytes"),
            e => Error::from(e),
        })?;
        let mut io = Io {
            transport,
            clock,
            write_timeout_ms: ms(config.write_timeout),
            unflushed: false,
        };
        let established = loop {
            let now = io.now();
            match handshake.poll(now) {
                Ok(Some(established)) => break established,
                Ok(None) => {}
                Err(e) => {
                    if let ConnectionError::Refused(r) = e {
                        warn!("tether: login refused: {}", r.code.as_str());
                    }
                    return Err(e.into());
                }
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
        };
        let conn = established.connection;
        info!(
            "tether: logged in, session {}, heartbeat {} s",
            conn.session_id(),
            conn.heartbeat_secs()
        );
        Ok(Established {
            session: Session {
                io,
                conn,
                tx,
                call_timeout_ms: ms(config.call_timeout),
            },
            keys: established.keys,
            derived: established.derived,
        })
    }
}
