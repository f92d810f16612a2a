//! The device's side of a protocol v2 login (feature `v2`): a Noise
//! handshake, then SCRAM bound to it in sealed frames (docs/PROTOCOL.md,
//! "Protocol version 2").

use rand_core::CryptoRng;

use super::client::{ClientConfig, Established, established, welcomed};
use super::{ConnectionError, Instant, LOGIN_MESSAGE_LEN, Violation, millis};
use crate::frame::{FrameDecoder, FrameError, HEADER_LEN, MIN_MAX_FRAME, finish_frame};
use crate::message::{Handshake, Hello, PROTOCOL_VERSION_2, Proof};
use crate::noise::{AwaitingResponse, CipherState, DHLEN, Initiator, PAYLOAD_AT, Pattern, TAG_LEN};
use crate::scram::{CachedKeys, ClientCredentials, ClientLogin, ClientProofSent};
use crate::session::{self, Opener, SEQ_LEN, Sealer};

/// The first 8 bytes of every v2 prologue.
pub(crate) const PROLOGUE_LABEL: &[u8; 8] = b"tether/2";

/// The pattern byte of frame 1.
pub(crate) const fn pattern_byte(pattern: Pattern) -> u8 {
    match pattern {
        Pattern::Nn => 0,
        Pattern::Nk => 1,
    }
}

/// The prologue: `tether/2`, the version byte, the pattern byte.
pub(crate) fn prologue(pattern: Pattern) -> [u8; 10] {
    let mut p = [0u8; 10];
    p[..8].copy_from_slice(PROLOGUE_LABEL);
    p[8] = PROTOCOL_VERSION_2;
    p[9] = pattern_byte(pattern);
    p
}

/// An ephemeral private key drawn when the handshake starts and used once
/// when its message is written; wiped when dropped.
pub(crate) struct Ephemeral(pub(crate) [u8; DHLEN]);

impl Drop for Ephemeral {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Ephemeral {
    pub(crate) fn draw<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = [0u8; DHLEN];
        rng.fill_bytes(&mut key);
        Self(key)
    }
}

/// Hands out an [`Ephemeral`]'s bytes to the Noise handshake (which asks
/// its RNG for exactly one key).
impl rand_core::TryRng for Ephemeral {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(0)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(0)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        let n = dest.len().min(DHLEN);
        dest[..n].copy_from_slice(&self.0[..n]);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Ephemeral {}

/// Where a v2 login stands.
#[allow(clippy::large_enum_variant)]
enum Step<'c> {
    /// Frame 1 is to be sent.
    Start {
        noise: Initiator,
        ephemeral: Ephemeral,
        login: ClientLogin<'c, LOGIN_MESSAGE_LEN>,
    },
    /// Frame 1 is out; Noise message 2 is awaited.
    Responded {
        noise: AwaitingResponse,
        login: ClientLogin<'c, LOGIN_MESSAGE_LEN>,
    },
    /// NN: the sealed hello is to be sent, then the challenge awaited.
    Hello {
        sealed: Sealed,
        /// The handshake hash, which the proof will be bound to.
        h: [u8; 32],
        login: ClientLogin<'c, LOGIN_MESSAGE_LEN>,
    },
    /// The sealed proof is to be sent, then the welcome awaited.
    Proof {
        sealed: Sealed,
        proof: ClientProofSent,
    },
    /// Logged in or failed.
    Done,
}

/// The Noise session's transport keys. The login seals and opens its
/// frames with the two `CipherState`s (48 bytes each on a Cortex-M4) and
/// turns them into the session's [`Sealer`] and [`Opener`] (152 bytes
/// each, sized for v1's HMAC state) only at the welcome; the handshake
/// hash is kept only until the proof is bound to it. So the login's state,
/// which a device holds in a static, stays within the session's.
struct Sealed {
    send: CipherState,
    recv: CipherState,
}

/// The device's side of a protocol v2 login: the same entry points and
/// the same result as [`ClientHandshake`](super::ClientHandshake), over a
/// Noise channel. With the server's static public key pinned it runs
/// `Noise_NK` (the hello travels encrypted in frame 1; two round trips to
/// the welcome), else `Noise_NN` (three round trips).
///
/// Nothing the device sends after frame 1's public key is readable on the
/// wire, and the SCRAM proof is bound to this Noise session (`c=` carries
/// the handshake hash), so a relay running Noise with both ends fails. It
/// never falls back to v1 or from NK to NN: a refusal ends the login.
pub struct ClientHandshakeV2<'b, 'c, const CALLS: usize = 4> {
    rx: FrameDecoder<&'b mut [u8]>,
    step: Step<'c>,
    pattern: Pattern,
    owed: bool,
    timeout_ms: u64,
    deadline: u64,
    error: Option<ConnectionError>,
}

impl<const CALLS: usize> core::fmt::Debug for ClientHandshakeV2<'_, '_, CALLS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshakeV2")
            .field("pattern", &self.pattern)
            .field("owed", &self.owed)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<'b, 'c, const CALLS: usize> ClientHandshakeV2<'b, 'c, CALLS> {
    /// Starts a v2 login as `username`: `Noise_NK` towards `server_key`
    /// (the server's static public key, pinned), or `Noise_NN` with
    /// `None`. `rng` makes the ephemeral key and the SCRAM nonce: a real
    /// CSPRNG. Fails as [`ClientHandshake::new`](super::ClientHandshake::new).
    pub fn new<R: CryptoRng + ?Sized>(
        rx: &'b mut [u8],
        username: &str,
        credentials: ClientCredentials<'c>,
        server_key: Option<&[u8; 32]>,
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
        let login = ClientLogin::new_bound(username, credentials, config.scram, rng)
            .map_err(ConnectionError::Scram)?;
        let (noise, pattern) = match server_key {
            Some(key) => (Initiator::nk(&prologue(Pattern::Nk), key), Pattern::Nk),
            None => (Initiator::nn(&prologue(Pattern::Nn)), Pattern::Nn),
        };
        Ok(Self {
            rx: FrameDecoder::new(rx, min),
            step: Step::Start {
                noise,
                ephemeral: Ephemeral::draw(rng),
                login,
            },
            pattern,
            owed: true,
            timeout_ms: millis(config.handshake_timeout),
            deadline: u64::MAX,
            error: None,
        })
    }

    /// The Noise pattern of this login.
    pub fn pattern(&self) -> Pattern {
        self.pattern
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

    /// The input ended before the welcome.
    pub fn handle_eof(&mut self) -> ConnectionError {
        let e = match self.rx.finish() {
            Ok(()) => ConnectionError::Disconnected,
            Err(e) => ConnectionError::Frame(e),
        };
        self.fail(e)
    }

    /// The next frame of the login (frame 1, then the sealed hello with
    /// NN, then the sealed proof), written at the start of `out` (512
    /// bytes hold any); `None` when nothing is due.
    pub fn poll_transmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Option<&'o [u8]> {
        if !self.owed || self.error.is_some() {
            return None;
        }
        let max = MIN_MAX_FRAME as usize;
        let max_frame = self.rx.capacity().min(u16::MAX as usize) as u16;
        let frame = match core::mem::replace(&mut self.step, Step::Done) {
            Step::Start {
                noise,
                mut ephemeral,
                login,
            } => {
                let at = HEADER_LEN + 2;
                let payload_len = match self.pattern {
                    // NK: the hello rides in message 1, encrypted.
                    Pattern::Nk => {
                        let room = out.get_mut(at + PAYLOAD_AT..).unwrap_or_default();
                        match hello(&login, max_frame, room) {
                            Ok(n) => n,
                            Err(e) => return self.failed(e),
                        }
                    }
                    Pattern::Nn => 0,
                };
                let Some(head) = out.get_mut(HEADER_LEN..at) else {
                    return self.failed(FrameError::Encode);
                };
                head.copy_from_slice(&[PROTOCOL_VERSION_2, pattern_byte(self.pattern)]);
                let written = noise.write_message_in_place(
                    payload_len,
                    out.get_mut(at..).unwrap_or_default(),
                    &mut ephemeral,
                );
                match written {
                    Ok((noise, m1)) => {
                        let n = m1.len();
                        self.step = Step::Responded { noise, login };
                        finish_frame(out, 2 + n, max)
                    }
                    Err(_) => return self.failed(FrameError::Encode),
                }
            }
            Step::Hello {
                mut sealed,
                h,
                login,
            } => {
                let body = out.get_mut(HEADER_LEN + SEQ_LEN..).unwrap_or_default();
                let n = match hello(&login, max_frame, body) {
                    Ok(n) => n,
                    Err(e) => return self.failed(e),
                };
                let frame = session::seal_v2(&mut sealed.send, out, n, max);
                self.step = Step::Hello { sealed, h, login };
                frame.ok_or(FrameError::Encode)
            }
            Step::Proof { mut sealed, proof } => {
                let body = out.get_mut(HEADER_LEN + SEQ_LEN..).unwrap_or_default();
                let encoded = Proof {
                    client_final: proof.client_final(),
                }
                .encode(body);
                let frame = match encoded {
                    Ok(n) => session::seal_v2(&mut sealed.send, out, n, max),
                    Err(_) => None,
                };
                self.step = Step::Proof { sealed, proof };
                frame.ok_or(FrameError::Encode)
            }
            step => {
                self.step = step;
                return None;
            }
        };
        match frame {
            Ok(frame) => {
                self.owed = false;
                self.deadline = now.as_millis().saturating_add(self.timeout_ms);
                Some(frame)
            }
            Err(e) => self.failed(e),
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

    /// Handles the server's answer, once received whole: Noise message 2
    /// (or a clear-text refusal), then sealed frames: the challenge (runs
    /// SCRAM bound to the handshake hash; PBKDF2 with a password) and the
    /// welcome (checks the server's signature), which ends the login with
    /// the [`Established`] connection. Errors as
    /// [`ClientHandshake::poll`](super::ClientHandshake::poll), and
    /// [`ConnectionError::Noise`] when message 2 fails (with NK: the
    /// server does not hold the pinned key).
    pub fn poll(
        &mut self,
        now: Instant,
    ) -> Result<Option<Established<'b, CALLS>>, ConnectionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(body) = self.rx.take_frame_mut() else {
            return Ok(None);
        };
        self.deadline = u64::MAX;
        let unexpected = ConnectionError::Protocol(Violation::UnexpectedMessage);
        let step = core::mem::replace(&mut self.step, Step::Done);
        let next = match step {
            Step::Responded { noise, login } => 'm2: {
                // Shorter than a key and a tag: a clear-text refusal (or
                // nothing this device accepts).
                if body.len() < DHLEN + TAG_LEN {
                    break 'm2 server_message(body).and(Err(unexpected));
                }
                let (transport, payload) = match noise.read_message(body) {
                    Ok(read) => read,
                    Err(e) => break 'm2 Err(ConnectionError::Noise(e)),
                };
                let h = *transport.handshake_hash();
                let crate::noise::Transport { send, recv, .. } = transport;
                let sealed = Sealed { send, recv };
                match self.pattern {
                    Pattern::Nn if payload.is_empty() => Ok(Step::Hello { sealed, h, login }),
                    Pattern::Nn => Err(unexpected),
                    Pattern::Nk => challenged(payload, sealed, &h, login),
                }
            }
            Step::Hello {
                mut sealed,
                h,
                login,
            } => match session::open_v2(&mut sealed.recv, body) {
                Ok(plain) => challenged(plain, sealed, &h, login),
                Err(e) => Err(ConnectionError::Session(e)),
            },
            Step::Proof { sealed, proof } => {
                let Sealed { send, mut recv, .. } = sealed;
                let welcomed = match session::open_v2(&mut recv, body) {
                    Ok(plain) => match server_message(plain) {
                        Ok(Handshake::Welcome(w)) => welcomed(proof, &w),
                        Ok(_) => Err(unexpected),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(ConnectionError::Session(e)),
                };
                let welcomed = welcomed.map_err(|e| self.end(e))?;
                self.error = Some(ConnectionError::Ended);
                let halves = (Sealer::v2(send), Opener::v2(recv));
                return Ok(Some(established(&mut self.rx, welcomed, Some(halves), now)));
            }
            Step::Start { .. } | Step::Done => Err(unexpected),
        };
        match next {
            Ok(step) => {
                // The sealed hello (NN) or the proof is due.
                self.step = step;
                self.owed = true;
                Ok(None)
            }
            Err(e) => Err(self.end(e)),
        }
    }

    /// The keys the proof was made with, once it is (see
    /// [`ClientHandshake::keys`](super::ClientHandshake::keys)).
    pub fn keys(&self) -> Option<&CachedKeys> {
        match &self.step {
            Step::Proof { proof, .. } => Some(proof.keys()),
            _ => None,
        }
    }

    /// The Noise handshake hash, from message 2 until the SCRAM proof is
    /// bound to it: NN's sealed hello step (with NK the proof is made as
    /// message 2 is read, and the hash not kept).
    pub fn handshake_hash(&self) -> Option<&[u8; 32]> {
        match &self.step {
            Step::Hello { h, .. } => Some(h),
            _ => None,
        }
    }

    fn failed<T>(&mut self, e: FrameError) -> Option<T> {
        self.fail(ConnectionError::Frame(e));
        None
    }

    fn end(&mut self, e: ConnectionError) -> ConnectionError {
        self.error = Some(ConnectionError::Ended);
        e
    }

    fn fail(&mut self, e: ConnectionError) -> ConnectionError {
        *self.error.get_or_insert(e)
    }
}

/// Encodes the v2 hello at the start of `out`.
fn hello(
    login: &ClientLogin<'_, LOGIN_MESSAGE_LEN>,
    max_frame: u16,
    out: &mut [u8],
) -> Result<usize, FrameError> {
    Hello {
        version: PROTOCOL_VERSION_2,
        mechanisms: login.mechanisms(),
        max_frame,
        client_first: login.client_first(),
    }
    .encode(out)
    .map_err(|_| FrameError::Encode)
}

/// The server's answer to the hello: a challenge (the proof is computed,
/// bound to the handshake hash) or a refusal.
fn challenged<'c>(
    plain: &[u8],
    sealed: Sealed,
    h: &[u8; 32],
    login: ClientLogin<'c, LOGIN_MESSAGE_LEN>,
) -> Result<Step<'c>, ConnectionError> {
    match server_message(plain)? {
        Handshake::Challenge(c) => {
            match login.handle_challenge_bound(c.mechanism, c.server_first, h) {
                Ok(proof) => Ok(Step::Proof { sealed, proof }),
                Err(e) => Err(ConnectionError::Scram(e)),
            }
        }
        _ => Err(ConnectionError::Protocol(Violation::UnexpectedMessage)),
    }
}

/// A message from the server: a refusal is [`ConnectionError::Refused`],
/// a body that does not decode (or that a server does not send) a
/// protocol error.
fn server_message(body: &[u8]) -> Result<Handshake<'_>, ConnectionError> {
    match Handshake::decode_from_server(body) {
        Ok(Some(Handshake::Refused(r))) => Err(ConnectionError::Refused(r)),
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(ConnectionError::Protocol(Violation::UnexpectedMessage)),
        Err(e) => Err(ConnectionError::Protocol(Violation::Undecodable(e))),
    }
}
