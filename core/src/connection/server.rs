//! The server's side of the handshake.

use core::time::Duration;

use rand_core::CryptoRng;

use super::calls::{Fixed, Tables};
use super::established::{Connection, Start};
use super::{ConnectionError, Instant, RefusalCause, SendError, Violation, millis};
#[cfg(not(feature = "v2"))]
use crate::frame::encode_handshake;
use crate::frame::{FrameDecoder, FrameError, MIN_MAX_FRAME};
use crate::message::{Challenge, Handshake, PROTOCOL_VERSION, Refusal, RefusalCode, Welcome};
use crate::scram::{
    Mechanism, Mechanisms, ScramError, ServerChallengeSent, ServerCredentials, ServerLogin,
    ServerSuccess,
};
use crate::session::Role;

/// A server's established connection: `CALLS` of its calls to the device
/// may wait at once, and the device may have `ANSWERS` calls running; `T`
/// is where those two tables live ([`Fixed`], or with the `alloc` feature
/// `Growable`, which holds no table once released while no call is in
/// flight).
pub type ServerConnection<B, const CALLS: usize = 32, const ANSWERS: usize = 32, T = Fixed> =
    Connection<B, CALLS, ANSWERS, T>;

/// Bytes of the client-first-message the server accepts (usernames up to
/// about 450 bytes).
const CLIENT_FIRST_LEN: usize = 512;

/// Server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest frame body this side accepts after login, announced in
    /// the welcome (at least 512; capped by the receive buffer).
    pub max_frame: u16,
    /// The heartbeat announced in the welcome, in seconds: the device pings
    /// after that long without traffic, and the server closes a session it
    /// heard nothing from for three intervals. 0: no heartbeat.
    pub heartbeat_secs: u16,
    /// The whole handshake's time limit (default 10 s); past it the
    /// connection ends with [`ConnectionError::HandshakeTimeout`], nothing
    /// sent.
    pub handshake_timeout: Duration,
    /// How many calls of the device may run at once (default 32, at most
    /// the connection's `ANSWERS`); more are answered `busy`.
    pub max_calls_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame: 8192,
            heartbeat_secs: 30,
            handshake_timeout: Duration::from_secs(10),
            max_calls_in_flight: 32,
        }
    }
}

impl ServerConfig {
    /// These settings with another max frame.
    pub fn with_max_frame(self, max_frame: u16) -> Self {
        Self { max_frame, ..self }
    }

    /// These settings with another heartbeat.
    pub fn with_heartbeat_secs(self, heartbeat_secs: u16) -> Self {
        Self {
            heartbeat_secs,
            ..self
        }
    }

    /// These settings with another handshake timeout.
    pub fn with_handshake_timeout(self, handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            ..self
        }
    }

    /// These settings with another limit of the device's calls in flight.
    pub fn with_max_calls_in_flight(self, max_calls_in_flight: usize) -> Self {
        Self {
            max_calls_in_flight,
            ..self
        }
    }
}

/// Where the handshake pauses for the server's own decisions.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerStep<'h> {
    /// The hello is in: look `username` up (and check throttles and
    /// limits), then go on with [`ServerHandshake::challenge`] or
    /// [`ServerHandshake::refuse`].
    Login(LoginRequest<'h>),
    /// The proof is good: admit the device with
    /// [`ServerHandshake::welcome`], or [`ServerHandshake::refuse`].
    Verified(Verified<'h>),
}

/// Who wants to log in.
#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'h> {
    /// The username, unescaped (any UTF-8, not checked against anything).
    pub username: &'h str,
    /// The offered mechanisms this server can run (never empty).
    pub mechanisms: Mechanisms,
    /// The largest frame body the device accepts.
    pub max_frame: u16,
}

/// A device that proved it holds the account's keys.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'h> {
    /// The username it logged in as.
    pub username: &'h str,
    /// The mechanism of the login.
    pub mechanism: Mechanism,
}

/// What a decoy challenge is made of: a server secret (so that the same
/// username always gets the same salt) and the iterations real rows have.
#[derive(Debug, Clone, Copy)]
pub struct Decoy<'s> {
    /// The server's secret.
    pub secret: &'s [u8],
    /// The iteration count announced (the deployment's default).
    pub iterations: u32,
    /// The mechanism a real row for this username would most likely have
    /// (the driver's choice, weighted as its rows are): used when the hello
    /// offers it, else the offered one.
    pub mechanism: Mechanism,
}

/// Whether the challenge is the account's or a decoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenged {
    /// The account's own: the right password logs in.
    Account,
    /// A decoy: the login will end `unauthorized` whatever the proof.
    Decoy(DecoyReason),
}

/// Why a login goes on with a decoy (for the server's log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoyReason {
    /// No account may log in under this name (unknown, inactive,
    /// unauthorised, or a hash that cannot do SCRAM): the driver said so.
    NoAccount,
    /// The account's mechanism is not among those offered (or not enabled
    /// in this build).
    MechanismNotOffered(Mechanism),
}

#[allow(clippy::large_enum_variant)] // one of them at a time is the point
enum State {
    /// Waiting for the hello.
    Hello,
    /// Paused: the driver looks the username up.
    Lookup {
        login: ServerLogin<CLIENT_FIRST_LEN>,
        offered: Mechanisms,
        peer_max: u16,
    },
    /// The challenge is out (or owed); waiting for the proof.
    Challenged {
        login: ServerChallengeSent<CLIENT_FIRST_LEN>,
        mechanism: Mechanism,
        decoy: bool,
        peer_max: u16,
    },
    /// Paused: the driver admits the device or not.
    Verified {
        success: ServerSuccess<CLIENT_FIRST_LEN>,
        mechanism: Mechanism,
        peer_max: u16,
    },
    Done,
}

/// What the handshake owes the client.
#[derive(Debug, Clone, Copy)]
enum Owed {
    Challenge,
    Refusal(Refusal),
}

/// The server's side of the login, in the order docs/CONNECTION.md gives:
/// it reads the hello, refuses what the hello alone decides (`protocol`,
/// `version`, `unsupported`), pauses for the driver's credential lookup
/// ([`ServerStep::Login`]), challenges with the account's verifier or a
/// decoy, verifies the proof (`unauthorized` for a wrong one or a decoy),
/// pauses for the driver's admission ([`ServerStep::Verified`]) and becomes
/// a [`ServerConnection`] with the welcome.
pub struct ServerHandshake<B, const CALLS: usize = 32, const ANSWERS: usize = 32, T = Fixed> {
    rx: FrameDecoder<B>,
    /// The tables of the connection it turns into.
    tables: core::marker::PhantomData<fn() -> T>,
    config: ServerConfig,
    state: State,
    owed: Option<Owed>,
    deadline: u64,
    error: Option<ConnectionError>,
    #[cfg(feature = "v2")]
    v2: super::server_v2::V2,
}

impl<B, const CALLS: usize, const ANSWERS: usize, T> core::fmt::Debug
    for ServerHandshake<B, CALLS, ANSWERS, T>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("owed", &self.owed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]> + Default, const CALLS: usize, const ANSWERS: usize, T: Tables>
    ServerHandshake<B, CALLS, ANSWERS, T>
{
    /// A handshake for a connection accepted at `now`. `rx` holds one
    /// frame body: at least 512 bytes; its size caps `config.max_frame`.
    pub fn new(rx: B, config: ServerConfig, now: Instant) -> Result<Self, ConnectionError> {
        let min = MIN_MAX_FRAME as usize;
        let available = rx.as_ref().len();
        if available < min {
            return Err(ConnectionError::Frame(FrameError::BufferTooSmall {
                needed: min,
                available,
            }));
        }
        Ok(Self {
            rx: FrameDecoder::new(rx, min),
            tables: core::marker::PhantomData,
            config,
            state: State::Hello,
            owed: None,
            deadline: now
                .as_millis()
                .saturating_add(millis(config.handshake_timeout)),
            error: None,
            #[cfg(feature = "v2")]
            v2: super::server_v2::V2::off(),
        })
    }

    /// A handshake that also speaks protocol v2 (a first byte of 2): Noise
    /// NN, and NK with `keys`' static keys, then SCRAM bound to the Noise
    /// session in sealed frames. v1 devices go on as with
    /// [`new`](Self::new) unless `keys.require_encryption`. `rng` makes the
    /// server's ephemeral key.
    #[cfg(feature = "v2")]
    pub fn new_v2<R: CryptoRng + ?Sized>(
        rx: B,
        config: ServerConfig,
        now: Instant,
        keys: super::ServerKeys,
        rng: &mut R,
    ) -> Result<Self, ConnectionError> {
        let mut hs = Self::new(rx, config, now)?;
        hs.v2 = super::server_v2::V2::new(keys, rng);
        Ok(hs)
    }

    /// The protocol version the device speaks: 1, or 2 once its first
    /// frame is read as v2.
    #[cfg(feature = "v2")]
    pub fn protocol_version(&self) -> u8 {
        if self.v2.is_v2() { 2 } else { 1 }
    }

    /// The Noise pattern of a v2 login.
    #[cfg(feature = "v2")]
    pub fn noise_pattern(&self) -> Option<crate::noise::Pattern> {
        self.v2.pattern()
    }

    /// Which static key an NK login used (for rotation: count the logins
    /// still on the previous key).
    #[cfg(feature = "v2")]
    pub fn key_used(&self) -> Option<super::KeyUsed> {
        self.v2.key_used()
    }

    /// The Noise handshake hash of a v2 login, once message 2 is out.
    #[cfg(feature = "v2")]
    pub fn handshake_hash(&self) -> Option<&[u8; 32]> {
        self.v2.handshake_hash()
    }

    /// Where the next received bytes go; then [`commit`](Self::commit).
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        self.rx.receive_buffer()
    }

    /// Records `n` bytes received. A bad length prefix is refused
    /// `protocol` at once.
    pub fn commit(&mut self, n: usize) {
        if let Err(e) = self.rx.commit(n) {
            let _ = self.reject(RefusalCode::Protocol, RefusalCause::Frame(e));
        }
    }

    /// The input ended: the client went away (the error is returned, and
    /// by every later poll).
    pub fn handle_eof(&mut self) -> ConnectionError {
        let e = match self.rx.finish() {
            Ok(()) => ConnectionError::Disconnected,
            Err(e) => ConnectionError::Frame(e),
        };
        self.owed = None;
        self.state = State::Done;
        *self.error.get_or_insert(e)
    }

    /// When the handshake times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.error
            .is_none()
            .then(|| Instant::from_millis(self.deadline))
    }

    /// Ends the handshake with [`ConnectionError::HandshakeTimeout`] (and
    /// nothing sent) once its time is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.error.is_none() && now.as_millis() >= self.deadline {
            self.owed = None;
            self.state = State::Done;
            self.error = Some(ConnectionError::HandshakeTimeout);
        }
    }

    /// Handles a received frame, or says where the handshake waits for the
    /// driver ([`ServerStep`], returned again until the driver acts).
    /// `Ok(None)`: waiting for input (or for the challenge to be sent).
    /// An error is final; a refusal it names is the last frame
    /// [`poll_transmit`](Self::poll_transmit) gives out.
    pub fn poll(&mut self) -> Result<Option<ServerStep<'_>>, ConnectionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            #[cfg(not(feature = "v2"))]
            State::Hello => {
                let Some(body) = self.rx.take_frame() else {
                    return Ok(None);
                };
                if let Err((code, cause)) = hello(body).map(|next| self.state = next) {
                    return Err(self.reject(code, cause));
                }
            }
            #[cfg(feature = "v2")]
            State::Hello => {
                if self.v2.owes_reply() {
                    return Ok(None);
                }
                let Some(body) = self.rx.take_frame_mut() else {
                    return Ok(None);
                };
                let read = if self.v2.is_sealed() {
                    // NN: the hello comes sealed after message 2.
                    self.v2.open(body).and_then(|plain| hello_v2(plain, true))
                } else {
                    match self.v2.first_frame(body) {
                        Ok(Some(plain)) => hello_v2(plain, self.v2.is_v2()).map(Some),
                        Ok(None) => Ok(None),
                        Err(e) => Err(e),
                    }
                    .map(|next| next.unwrap_or(State::Hello))
                };
                match read {
                    Ok(next) => self.state = next,
                    Err((code, cause)) => return Err(self.reject(code, cause)),
                }
            }
            State::Challenged { .. } if self.owed.is_none() => {
                #[cfg(not(feature = "v2"))]
                let Some(body) = self.rx.take_frame() else {
                    return Ok(None);
                };
                #[cfg(feature = "v2")]
                let Some(body) = self.rx.take_frame_mut() else {
                    return Ok(None);
                };
                #[cfg(feature = "v2")]
                let h = self.v2.handshake_hash().copied();
                #[cfg(feature = "v2")]
                let body = match self.v2.open(body) {
                    Ok(plain) => plain,
                    Err((code, cause)) => return Err(self.reject(code, cause)),
                };
                let State::Challenged {
                    login,
                    mechanism,
                    decoy,
                    peer_max,
                } = core::mem::replace(&mut self.state, State::Done)
                else {
                    unreachable!("matched above")
                };
                #[cfg(not(feature = "v2"))]
                let checked = proof(body, login, decoy);
                #[cfg(feature = "v2")]
                let checked = proof_v2(body, login, decoy, h.as_ref());
                match checked {
                    Ok(success) => {
                        self.state = State::Verified {
                            success,
                            mechanism,
                            peer_max,
                        }
                    }
                    Err((code, cause)) => return Err(self.reject(code, cause)),
                }
            }
            State::Challenged { .. } => return Ok(None),
            State::Lookup { .. } | State::Verified { .. } => {}
            State::Done => return Err(ConnectionError::Ended),
        }
        Ok(match &self.state {
            State::Lookup {
                login,
                offered,
                peer_max,
            } => Some(ServerStep::Login(LoginRequest {
                username: login.username(),
                mechanisms: *offered,
                max_frame: *peer_max,
            })),
            State::Verified {
                success, mechanism, ..
            } => Some(ServerStep::Verified(Verified {
                username: success.username(),
                mechanism: *mechanism,
            })),
            _ => None,
        })
    }

    /// Goes on after [`ServerStep::Login`]: challenges with `account`'s
    /// verifier when it can log in with an offered mechanism, else with a
    /// decoy made from `decoy` (pass `None` for an unknown, inactive or
    /// unauthorised user, or a hash that cannot do SCRAM). The client cannot
    /// tell the two apart; the result says which it was, for the log.
    pub fn challenge<R: CryptoRng + ?Sized>(
        &mut self,
        account: Option<ServerCredentials>,
        decoy: &Decoy<'_>,
        rng: &mut R,
    ) -> Result<Challenged, SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        if !matches!(self.state, State::Lookup { .. }) {
            return Err(SendError::NotExpected);
        }
        let State::Lookup {
            login,
            offered,
            peer_max,
        } = core::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("checked above")
        };
        let (credentials, challenged) = match account {
            Some(c) if offered.contains(c.mechanism) => (c, Challenged::Account),
            other => {
                let reason = match other {
                    Some(c) => DecoyReason::MechanismNotOffered(c.mechanism),
                    None => DecoyReason::NoAccount,
                };
                let mechanism = if offered.contains(decoy.mechanism) {
                    decoy.mechanism
                } else if offered.contains(Mechanism::ScramSha256) {
                    Mechanism::ScramSha256
                } else {
                    Mechanism::ScramSha1
                };
                let c = ServerCredentials::decoy(
                    mechanism,
                    decoy.secret,
                    login.username(),
                    decoy.iterations,
                );
                (c, Challenged::Decoy(reason))
            }
        };
        let decoy = challenged != Challenged::Account;
        self.challenge_sent(login, &credentials, decoy, peer_max, rng)
            .map(|()| challenged)
    }

    /// Challenges with `credentials`; the proof is then awaited.
    fn challenge_sent<R: CryptoRng + ?Sized>(
        &mut self,
        login: ServerLogin<CLIENT_FIRST_LEN>,
        credentials: &ServerCredentials,
        decoy: bool,
        peer_max: u16,
        rng: &mut R,
    ) -> Result<(), SendError> {
        match login.challenge(credentials, rng) {
            Ok(login) => {
                self.state = State::Challenged {
                    login,
                    mechanism: credentials.mechanism,
                    decoy,
                    peer_max,
                };
                self.owed = Some(Owed::Challenge);
                Ok(())
            }
            Err(e) => {
                let _ = self.reject(RefusalCode::Protocol, RefusalCause::Scram(e));
                Err(SendError::Closed)
            }
        }
    }

    /// Goes on after [`ServerStep::Login`] with credentials the driver
    /// planned itself: a server that shapes its decoys from its own rows
    /// (salt and iteration count of a real row, a mix of mechanisms) passes
    /// the account's verifier with `decoy: false`, or decoy keys with
    /// `decoy: true` — then every proof ends `unauthorized`, as with
    /// [`challenge`](Self::challenge)'s decoys. Credentials in a mechanism
    /// the hello did not offer are [`SendError::NotExpected`], the handshake
    /// untouched (a driver's bug: refuse, or challenge again).
    pub fn challenge_with<R: CryptoRng + ?Sized>(
        &mut self,
        credentials: &ServerCredentials,
        decoy: bool,
        rng: &mut R,
    ) -> Result<(), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        match &self.state {
            State::Lookup { offered, .. } if offered.contains(credentials.mechanism) => {}
            _ => return Err(SendError::NotExpected),
        }
        let State::Lookup {
            login, peer_max, ..
        } = core::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("checked above")
        };
        self.challenge_sent(login, credentials, decoy, peer_max, rng)
    }

    /// Refuses the login with `code` (throttled, busy, unavailable, or the
    /// realm's code); `retry_after_secs` is sent with the transient codes
    /// only. The refusal is the last frame.
    pub fn refuse(&mut self, code: RefusalCode, retry_after_secs: u16) -> Result<(), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let retry_after_secs = if code.is_transient() {
            retry_after_secs
        } else {
            0
        };
        self.owed = Some(Owed::Refusal(Refusal {
            code,
            retry_after_secs,
        }));
        self.state = State::Done;
        self.error = Some(ConnectionError::Rejected {
            code,
            cause: RefusalCause::Server,
        });
        Ok(())
    }

    /// The challenge or the refusal, written at the start of `out` (512
    /// bytes hold either); `None` when nothing is due.
    pub fn poll_transmit<'o>(&mut self, out: &'o mut [u8]) -> Option<&'o [u8]> {
        #[cfg(feature = "v2")]
        if self.v2.owes_reply() {
            let reply = self.v2.poll_reply(out)?;
            return match reply {
                Ok(frame) => Some(frame),
                Err(e) => {
                    self.state = State::Done;
                    self.error.get_or_insert(e);
                    None
                }
            };
        }
        let owed = self.owed.take()?;
        let msg = match (owed, &self.state) {
            (Owed::Refusal(r), _) => Handshake::Refused(r),
            (
                Owed::Challenge,
                State::Challenged {
                    login, mechanism, ..
                },
            ) => Handshake::Challenge(Challenge {
                mechanism: *mechanism,
                server_first: login.server_first(),
            }),
            _ => return None,
        };
        #[cfg(not(feature = "v2"))]
        let encoded =
            encode_handshake(&msg, out, MIN_MAX_FRAME as usize).map_err(ConnectionError::Frame);
        #[cfg(feature = "v2")]
        let encoded = self.v2.encode(&msg, out);
        match encoded {
            Ok(frame) => Some(frame),
            Err(e) => {
                self.state = State::Done;
                self.error.get_or_insert(e);
                None
            }
        }
    }

    /// Admits the device after [`ServerStep::Verified`]: writes the welcome
    /// (with `session_id`, this side's max frame and the heartbeat) at the
    /// start of `out` and returns the established connection with it. The
    /// handshake is spent.
    pub fn welcome<'o>(
        &mut self,
        session_id: u64,
        now: Instant,
        out: &'o mut [u8],
    ) -> Result<(ServerConnection<B, CALLS, ANSWERS, T>, &'o [u8]), SendError> {
        if self.error.is_some() {
            return Err(SendError::Closed);
        }
        let State::Verified {
            success, peer_max, ..
        } = &self.state
        else {
            return Err(SendError::NotExpected);
        };
        let max_frame = self.rx.capacity().min(self.config.max_frame.into());
        let max_frame = max_frame.max(MIN_MAX_FRAME.into()) as u16;
        let welcome = Handshake::Welcome(Welcome {
            server_final: success.server_final(),
            session_id,
            max_frame,
            heartbeat_secs: self.config.heartbeat_secs,
        });
        let peer_max = *peer_max;
        let max = out.len();
        #[cfg(not(feature = "v2"))]
        let frame = encode_handshake(&welcome, out, MIN_MAX_FRAME as usize)
            .map_err(|_| SendError::TooLarge { max })?;
        #[cfg(feature = "v2")]
        let frame = self
            .v2
            .encode(&welcome, out)
            .map_err(|_| SendError::TooLarge { max })?;
        let State::Verified { success, .. } = core::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!("matched above")
        };
        let mut rx = core::mem::replace(&mut self.rx, FrameDecoder::new(B::default(), 0));
        rx.set_max(max_frame.into());
        #[cfg(not(feature = "v2"))]
        let (sealer, opener) = success.session.into_halves(Role::Server);
        #[cfg(feature = "v2")]
        let (sealer, opener) = match self.v2.take_halves() {
            Some(halves) => halves,
            None => success.session.into_halves(Role::Server),
        };
        self.error = Some(ConnectionError::Ended);
        let start = Start {
            role: Role::Server,
            sealer,
            opener,
            peer_max,
            session_id,
            heartbeat_secs: self.config.heartbeat_secs,
            max_answers: self.config.max_calls_in_flight,
            now,
        };
        Ok((Connection::new(rx, start), frame))
    }

    /// Owes the client a refusal and ends the handshake with its error.
    fn reject(&mut self, code: RefusalCode, cause: RefusalCause) -> ConnectionError {
        self.owed = Some(Owed::Refusal(Refusal {
            code,
            retry_after_secs: 0,
        }));
        self.state = State::Done;
        *self
            .error
            .get_or_insert(ConnectionError::Rejected { code, cause })
    }
}

type Refuse = (RefusalCode, RefusalCause);

/// The checks the hello alone decides, in order.
#[cfg(not(feature = "v2"))]
fn hello(body: &[u8]) -> Result<State, Refuse> {
    hello_with(body, PROTOCOL_VERSION, ServerLogin::new)
}

/// [`hello`] for a server that speaks v2 too: a hello inside a Noise
/// session (`bound`) says version 2 and carries the GS2 header of the
/// Noise channel binding; a clear one is v1's.
#[cfg(feature = "v2")]
fn hello_v2(body: &[u8], bound: bool) -> Result<State, Refuse> {
    if bound {
        hello_with(
            body,
            crate::message::PROTOCOL_VERSION_2,
            ServerLogin::new_bound,
        )
    } else {
        hello_with(body, PROTOCOL_VERSION, ServerLogin::new)
    }
}

/// The checks the hello alone decides, in order, for `version` and a
/// client-first-message parsed by `parse`.
fn hello_with(
    body: &[u8],
    version: u8,
    parse: fn(&str) -> Result<ServerLogin<CLIENT_FIRST_LEN>, ScramError>,
) -> Result<State, Refuse> {
    let protocol = |v| (RefusalCode::Protocol, RefusalCause::Violation(v));
    let hello = match Handshake::decode(body) {
        Ok(Handshake::Hello(hello)) => hello,
        Ok(_) => return Err(protocol(Violation::UnexpectedMessage)),
        Err(e) => return Err(protocol(Violation::Undecodable(e))),
    };
    if hello.version != version {
        return Err((RefusalCode::Version, RefusalCause::Version(hello.version)));
    }
    if hello.max_frame < MIN_MAX_FRAME {
        return Err(protocol(Violation::MaxFrameTooSmall(hello.max_frame)));
    }
    let login =
        parse(hello.client_first).map_err(|e| (RefusalCode::Protocol, RefusalCause::Scram(e)))?;
    let offered = Mechanisms::from_bits(hello.mechanisms.bits() & Mechanisms::ENABLED.bits());
    if offered.bits() == 0 {
        return Err((RefusalCode::Unsupported, RefusalCause::NoMechanism));
    }
    Ok(State::Lookup {
        login,
        offered,
        peer_max: hello.max_frame,
    })
}

/// Verifies the proof of a login that may be v2: bound to the Noise
/// handshake hash `h` when there is one. A `c=` that does not carry `h` (a
/// relay between two Noise sessions) is `unauthorized`.
#[cfg(feature = "v2")]
fn proof_v2(
    body: &[u8],
    login: ServerChallengeSent<CLIENT_FIRST_LEN>,
    decoy: bool,
    h: Option<&[u8; 32]>,
) -> Result<ServerSuccess<CLIENT_FIRST_LEN>, Refuse> {
    let Some(h) = h else {
        return proof(body, login, decoy);
    };
    let protocol = |v| (RefusalCode::Protocol, RefusalCause::Violation(v));
    let proof = match Handshake::decode(body) {
        Ok(Handshake::Proof(proof)) => proof,
        Ok(_) => return Err(protocol(Violation::UnexpectedMessage)),
        Err(e) => return Err(protocol(Violation::Undecodable(e))),
    };
    match login.verify_bound(proof.client_final, h) {
        Ok(_) if decoy => Err((RefusalCode::Unauthorized, RefusalCause::InvalidProof)),
        Ok(success) => Ok(success),
        Err(ScramError::InvalidProof) => {
            Err((RefusalCode::Unauthorized, RefusalCause::InvalidProof))
        }
        Err(e @ ScramError::ChannelBindingMismatch) => {
            Err((RefusalCode::Unauthorized, RefusalCause::Scram(e)))
        }
        Err(e) => Err((RefusalCode::Protocol, RefusalCause::Scram(e))),
    }
}

/// Verifies the proof; a decoy never logs in.
fn proof(
    body: &[u8],
    login: ServerChallengeSent<CLIENT_FIRST_LEN>,
    decoy: bool,
) -> Result<ServerSuccess<CLIENT_FIRST_LEN>, Refuse> {
    let protocol = |v| (RefusalCode::Protocol, RefusalCause::Violation(v));
    let proof = match Handshake::decode(body) {
        Ok(Handshake::Proof(proof)) => proof,
        Ok(_) => return Err(protocol(Violation::UnexpectedMessage)),
        Err(e) => return Err(protocol(Violation::Undecodable(e))),
    };
    let unauthorized = (RefusalCode::Unauthorized, RefusalCause::InvalidProof);
    match login.verify(proof.client_final) {
        Ok(_) if decoy => Err(unauthorized),
        Ok(success) => Ok(success),
        Err(ScramError::InvalidProof) => Err(unauthorized),
        Err(e) => Err((RefusalCode::Protocol, RefusalCause::Scram(e))),
    }
}
