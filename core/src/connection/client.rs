//! The device's side of the handshake.

use core::time::Duration;

use rand_core::CryptoRng;

use super::established::{Connection, Start};
use super::{ConnectionError, Instant, LOGIN_MESSAGE_LEN, Violation, millis};
use crate::frame::{FrameDecoder, FrameError, HEADER_LEN, MIN_MAX_FRAME, finish_frame};
use crate::message::{Handshake, Hello, PROTOCOL_VERSION, Proof, Welcome};
use crate::scram::{self, CachedKeys, ClientCredentials, ClientLogin, ClientProofSent};
use crate::session::{Opener, Role, Sealer};

/// A client's established connection: `CALLS` of its own calls may wait
/// for replies at once (each slot 16 bytes); the server's calls are
/// answered one at a time (a second one meanwhile is answered `busy`).
pub type ClientConnection<'b, const CALLS: usize = 4> = Connection<&'b mut [u8], CALLS, 1>;

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The SCRAM checks: the PBKDF2 iteration floor and ceiling.
    pub scram: scram::ClientConfig,
    /// How long to wait for each of the server's handshake messages
    /// (default 10 s). PBKDF2 on the device does not count.
    pub handshake_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            scram: scram::ClientConfig::default(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ClientConfig {
    /// These settings with other SCRAM checks.
    pub fn with_scram(self, scram: scram::ClientConfig) -> Self {
        Self { scram, ..self }
    }

    /// These settings with another handshake timeout.
    pub fn with_handshake_timeout(self, handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            ..self
        }
    }
}

/// The login succeeded: the connection, and what the device may keep.
#[derive(Debug)]
pub struct Established<'b, const CALLS: usize = 4> {
    /// The logged-in connection.
    pub connection: ClientConnection<'b, CALLS>,
    /// The account's SCRAM keys. After a password login, store them and
    /// log in with [`ClientCredentials::Keys`] from then on: no PBKDF2.
    /// They are password-equivalent for this protocol: protect them.
    pub keys: CachedKeys,
    /// True when PBKDF2 ran (a password login): `keys` are new.
    pub derived: bool,
}

/// Where the client's SCRAM exchange stands (one slot for both states:
/// the device holds the larger, not both).
#[allow(clippy::large_enum_variant)]
enum Step<'c> {
    /// The hello is to be sent, then the challenge awaited.
    Hello(ClientLogin<'c, LOGIN_MESSAGE_LEN>),
    /// The proof is to be sent, then the welcome awaited.
    Proof(ClientProofSent),
    /// Logged in or failed.
    Done,
}

/// The device's side of the login: builds the hello and the proof, checks
/// the challenge (nonce, iteration bounds, cached keys) and the server's
/// signature, and becomes a [`ClientConnection`] at the welcome.
///
/// `'b` is the receive buffer (at least 512 bytes; its length, up to
/// 65535, is the `max_frame` the hello announces), `'c` the credentials
/// (borrowed for the handshake only).
pub struct ClientHandshake<'b, 'c, const CALLS: usize = 4> {
    rx: FrameDecoder<&'b mut [u8]>,
    step: Step<'c>,
    /// The step's message is still to be sent.
    owed: bool,
    timeout_ms: u64,
    /// When the server's answer is due (ms); `u64::MAX` while none is awaited.
    deadline: u64,
    error: Option<ConnectionError>,
}

impl<const CALLS: usize> core::fmt::Debug for ClientHandshake<'_, '_, CALLS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("owed", &self.owed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<'b, 'c, const CALLS: usize> ClientHandshake<'b, 'c, CALLS> {
    /// Starts a login as `username`. `rng` makes the SCRAM nonce: a real
    /// CSPRNG (the MCU's TRNG, `getrandom`). Fails when `rx` holds fewer
    /// than 512 bytes ([`FrameError::BufferTooSmall`]) or the username does
    /// not fit a client-first-message ([`ConnectionError::Scram`]).
    pub fn new<R: CryptoRng + ?Sized>(
        rx: &'b mut [u8],
        username: &str,
        credentials: ClientCredentials<'c>,
        config: &ClientConfig,
        rng: &mut R,
    ) -> Result<Self, ConnectionError> {
        let min = MIN_MAX_FRAME as usize;
        if rx.len() < min {
            return Err(ConnectionError::Frame(FrameError::BufferTooSmall {
                needed: min,
                available: rx.len(),
            }));
        }
        let login = ClientLogin::new(username, credentials, config.scram, rng)
            .map_err(ConnectionError::Scram)?;
        Ok(Self {
            rx: FrameDecoder::new(rx, min),
            step: Step::Hello(login),
            owed: true,
            timeout_ms: millis(config.handshake_timeout),
            deadline: u64::MAX,
            error: None,
        })
    }

    /// Where the next received bytes go; then [`commit`](Self::commit).
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        self.rx.receive_buffer()
    }

    /// Records `n` bytes received into [`receive_buffer`](Self::receive_buffer).
    pub fn commit(&mut self, n: usize) {
        if let Err(e) = self.rx.commit(n) {
            self.fail(ConnectionError::Frame(e));
        }
    }

    /// The input ended before the welcome: the handshake is over with the
    /// error returned.
    pub fn handle_eof(&mut self) -> ConnectionError {
        let e = match self.rx.finish() {
            Ok(()) => ConnectionError::Disconnected,
            Err(e) => ConnectionError::Frame(e),
        };
        self.fail(e)
    }

    /// The hello, then (after the challenge) the proof, written at the
    /// start of `out` (512 bytes hold either); `None` when nothing is due.
    /// The server's answer is due within the handshake timeout from `now`.
    pub fn poll_transmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<&'o [u8]> {
        if !self.owed || self.error.is_some() {
            return None;
        }
        let body = out.get_mut(HEADER_LEN..).unwrap_or_default();
        let encoded = match &self.step {
            Step::Hello(login) => Hello {
                version: PROTOCOL_VERSION,
                mechanisms: login.mechanisms(),
                max_frame: self.rx.capacity().min(u16::MAX as usize) as u16,
                client_first: login.client_first(),
            }
            .encode(body),
            Step::Proof(proof) => Proof {
                client_final: proof.client_final(),
            }
            .encode(body),
            Step::Done => return None,
        };
        let frame = encoded
            .map_err(|_| FrameError::Encode)
            .and_then(|n| finish_frame(out, n, MIN_MAX_FRAME as usize));
        match frame {
            Ok(frame) => {
                self.owed = false;
                self.deadline = now.as_millis().saturating_add(self.timeout_ms);
                Some(frame)
            }
            Err(e) => {
                self.fail(ConnectionError::Frame(e));
                None
            }
        }
    }

    /// When the server's answer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.error.is_none() && self.deadline != u64::MAX)
            .then(|| Instant::from_millis(self.deadline))
    }

    /// Ends the login with [`ConnectionError::HandshakeTimeout`] when the
    /// server's answer is overdue at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now.as_millis() >= self.deadline {
            self.fail(ConnectionError::HandshakeTimeout);
        }
    }

    /// Handles the server's answer, once received whole: a challenge (runs
    /// SCRAM, and PBKDF2 with a password: seconds on a microcontroller) or
    /// the welcome (checks the server's signature), which ends the
    /// handshake with the [`Established`] connection. An error ends the
    /// handshake (later calls return [`ConnectionError::Ended`]): a refusal
    /// ([`ConnectionError::Refused`]), a server that cannot prove itself
    /// ([`ConnectionError::Scram`]), a broken protocol, or what
    /// [`commit`](Self::commit) or [`handle_timeout`](Self::handle_timeout)
    /// found; the client sends nothing after any of them.
    pub fn poll(
        &mut self,
        now: Instant,
    ) -> Result<Option<Established<'b, CALLS>>, ConnectionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(answer) = self.rx.take_frame() else {
            return Ok(None);
        };
        // Only what a server sends is decoded (a hello or a proof is None).
        let msg = match Handshake::decode_from_server(answer) {
            Ok(msg) => msg,
            Err(e) => return Err(self.end(ConnectionError::Protocol(Violation::Undecodable(e)))),
        };
        self.deadline = u64::MAX;
        let step = core::mem::replace(&mut self.step, Step::Done);
        let welcomed = match (step, msg) {
            (_, Some(Handshake::Refused(r))) => Err(ConnectionError::Refused(r)),
            (Step::Hello(login), Some(Handshake::Challenge(c))) => {
                match login.handle_challenge(c.mechanism, c.server_first) {
                    Ok(proof) => {
                        self.step = Step::Proof(proof);
                        self.owed = true;
                        return Ok(None);
                    }
                    Err(e) => Err(ConnectionError::Scram(e)),
                }
            }
            (Step::Proof(proof), Some(Handshake::Welcome(w))) => welcomed(proof, &w),
            _ => Err(ConnectionError::Protocol(Violation::UnexpectedMessage)),
        };
        let welcomed = welcomed.map_err(|e| self.end(e))?;
        self.error = Some(ConnectionError::Ended);
        Ok(Some(established(&mut self.rx, welcomed, None, now)))
    }

    /// The keys the proof was made with, once it is (after the challenge):
    /// a device may persist keys it just derived before the server answers,
    /// so that a first login whose PBKDF2 outlasted the server's handshake
    /// timeout can be retried with them.
    pub fn keys(&self) -> Option<&CachedKeys> {
        match &self.step {
            Step::Proof(proof) => Some(proof.keys()),
            _ => None,
        }
    }

    /// Ends the handshake with `e`, returned now: later calls get `Ended`.
    fn end(&mut self, e: ConnectionError) -> ConnectionError {
        self.error = Some(ConnectionError::Ended);
        e
    }

    fn fail(&mut self, e: ConnectionError) -> ConnectionError {
        *self.error.get_or_insert(e)
    }
}

/// A welcome that passed [`welcomed`]'s checks: what the connection
/// starts with.
pub(super) struct Welcomed {
    done: scram::ClientSuccess,
    peer_max: u16,
    session_id: u64,
    heartbeat_secs: u16,
}

/// The welcome, after the proof: checks the server's signature and the
/// welcome's `max_frame`. One copy for the v1 and v2 logins (a v1-only
/// build inlines it into its one caller), as [`established`].
pub(super) fn welcomed(
    proof: ClientProofSent,
    w: &Welcome<'_>,
) -> Result<Welcomed, ConnectionError> {
    let done = proof
        .handle_server_final(w.server_final)
        .map_err(ConnectionError::Scram)?;
    if w.max_frame < MIN_MAX_FRAME {
        return Err(ConnectionError::Protocol(Violation::MaxFrameTooSmall(
            w.max_frame,
        )));
    }
    Ok(Welcomed {
        done,
        peer_max: w.max_frame,
        session_id: w.session_id,
        heartbeat_secs: w.heartbeat_secs,
    })
}

/// The connection a [`welcomed`] login starts, over the login's receive
/// buffer (`rx` is left empty). `halves` are protocol v2's sealed frame
/// halves; v1's come from the SCRAM session key.
pub(super) fn established<'b, const CALLS: usize>(
    rx: &mut FrameDecoder<&'b mut [u8]>,
    welcomed: Welcomed,
    halves: Option<(Sealer, Opener)>,
    now: Instant,
) -> Established<'b, CALLS> {
    let Welcomed {
        done,
        peer_max,
        session_id,
        heartbeat_secs,
    } = welcomed;
    let mut rx = core::mem::replace(rx, FrameDecoder::new(&mut [], 0));
    rx.set_max(u16::MAX.into());
    let (sealer, opener) = match halves {
        Some(halves) => halves,
        None => done.session.into_halves(Role::Client),
    };
    let start = Start {
        role: Role::Client,
        sealer,
        opener,
        peer_max,
        session_id,
        heartbeat_secs,
        max_answers: 1,
        now,
    };
    Established {
        connection: Connection::new(rx, start),
        keys: done.keys,
        derived: done.derived,
    }
}
