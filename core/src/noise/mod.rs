//! Noise handshakes for protocol v2 (feature `v2`):
//! `Noise_NN_25519_ChaChaPoly_SHA256` and `Noise_NK_25519_ChaChaPoly_SHA256`,
//! initiator and responder, as the Noise Protocol Framework (revision 34)
//! specifies them.
//!
//! The objects are the specification's: [`CipherState`] (section 5.1), a
//! `SymmetricState` with `HKDF` over HMAC-SHA-256 (5.2), and a
//! `HandshakeState` (5.3) processing the patterns' tokens. The primitives are
//! X25519 from `x25519-dalek` (a public key is `X25519(private, 9)`),
//! ChaCha20-Poly1305 from `chacha20poly1305` with the nonce `0^32 || n` in
//! little-endian, and the core's own SHA-256 (section 12). Checked against
//! the published cacophony and snow test vectors and against Python's
//! `noiseprotocol` (tests/interop).
//!
//! Both patterns have two messages, so the API is typed by step; each step
//! consumes the state, so a message cannot be written twice or out of turn,
//! and a failed step ends the handshake (as section 5 requires):
//!
//! ```text
//! initiator: Initiator --write_message--> AwaitingResponse --read_message--> Transport
//! responder: Responder --read_message--> ReadyToRespond --write_message--> Transport
//! ```
//!
//! Buffers are the caller's: a message is written into a slice, and a
//! received message is decrypted in place, its payload returned as a part of
//! it. Ephemeral keys come from the caller's RNG. Private keys, chaining
//! keys and cipher keys are wiped when their state is dropped.
//!
//! ```
//! use tether_core::noise::{Initiator, Responder, StaticKeypair};
//! # struct Rng(u8);
//! # impl rand_core::TryRng for Rng {
//! #     type Error = core::convert::Infallible;
//! #     fn try_next_u32(&mut self) -> Result<u32, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u32) }
//! #     fn try_next_u64(&mut self) -> Result<u64, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u64) }
//! #     fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), Self::Error> { for b in d { self.0 = self.0.wrapping_add(7); *b = self.0 } Ok(()) }
//! # }
//! # impl rand_core::TryCryptoRng for Rng {}
//! # let (mut device_rng, mut server_rng) = (Rng(0), Rng(100));
//! // The server's static key; devices know its public half.
//! let server_key = StaticKeypair::generate(&mut server_rng);
//! let pinned = *server_key.public();
//!
//! // Device: message 1 carries its first payload, encrypted to the server.
//! let mut msg = [0u8; 128];
//! let (device, m1) = Initiator::nk(b"prologue", &pinned)
//!     .write_message(b"hello", &mut msg, &mut device_rng)
//!     .unwrap();
//! let mut received = [0u8; 128];
//! received[..m1.len()].copy_from_slice(m1);
//! let len = m1.len();
//!
//! // Server: reads it in place, answers with message 2.
//! let (server, payload) = Responder::nk(b"prologue", &server_key)
//!     .read_message(&mut received[..len])
//!     .unwrap();
//! assert_eq!(payload, b"hello");
//! let (mut server, m2) = server.write_message(b"welcome", &mut msg, &mut server_rng).unwrap();
//! received[..m2.len()].copy_from_slice(m2);
//! let len = m2.len();
//!
//! // Device: the handshake is done; both hold the same transport keys.
//! let (mut device, payload) = device.read_message(&mut received[..len]).unwrap();
//! assert_eq!(payload, b"welcome");
//! assert_eq!(device.handshake_hash(), server.handshake_hash());
//!
//! let mut frame = [0u8; 64];
//! frame[..4].copy_from_slice(b"ping");
//! let n = device.send.encrypt_with_ad(&[], &mut frame, 4).unwrap();
//! assert_eq!(server.recv.decrypt_with_ad(&[], &mut frame[..n]).unwrap(), b"ping");
//! ```

mod cipher;
mod handshake;
mod symmetric;

use core::fmt;

use rand_core::CryptoRng;
#[cfg(not(feature = "precomputed-tables"))]
use x25519_dalek::{X25519_BASEPOINT_BYTES, x25519};
use zeroize::Zeroize;

pub use cipher::CipherState;
use handshake::HandshakeState;

/// Bytes of an X25519 public key, private key and shared secret (`DHLEN`).
pub const DHLEN: usize = 32;

/// Bytes of the authentication tag an encrypted payload carries.
pub const TAG_LEN: usize = 16;

/// The longest Noise message, handshake or transport (section 3).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Bytes of the handshake hash (`HASHLEN` of SHA-256).
pub const HASH_LEN: usize = symmetric::HASHLEN;

/// Where a handshake message's payload starts (after its one public key):
/// for the `write_message_in_place` methods.
pub const PAYLOAD_AT: usize = DHLEN;

/// A handshake pattern this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `NN`: no static keys. Confidential against a passive eavesdropper
    /// only; the peers authenticate each other afterwards (Tether: SCRAM
    /// bound to the handshake hash).
    ///
    /// ```text
    /// -> e
    /// <- e, ee
    /// ```
    Nn,
    /// `NK`: the initiator knows the responder's static public key, so
    /// message 1's payload is already encrypted to the responder and
    /// message 2 authenticates it.
    ///
    /// ```text
    /// <- s
    /// ...
    /// -> e, es
    /// <- e, ee
    /// ```
    Nk,
}

impl Pattern {
    /// The full Noise protocol name (section 8).
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::Nn => "Noise_NN_25519_ChaChaPoly_SHA256",
            Self::Nk => "Noise_NK_25519_ChaChaPoly_SHA256",
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol_name())
    }
}

/// What went wrong in a handshake or with a transport message. Every
/// handshake error ends that handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseError {
    /// The caller's output buffer cannot hold the message.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A handshake message shorter than its public keys (and tag).
    TooShort {
        /// The message's length.
        len: usize,
        /// The shortest this message can be.
        min: usize,
    },
    /// A message longer than Noise allows.
    TooLong {
        /// The message's length.
        len: usize,
        /// The longest allowed ([`MAX_MESSAGE_LEN`]).
        max: usize,
    },
    /// Authentication failed: the message was altered, forged, replayed or
    /// reordered, or encrypted to another key (with NK: the initiator pinned
    /// a key the responder does not hold).
    Decrypt,
    /// The nonce reached 2^64 - 1: this direction can carry no more
    /// messages, and the session must end.
    NonceExhausted,
}

impl fmt::Display for NoiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed, available } => {
                write!(f, "buffer of {available} bytes, {needed} needed")
            }
            Self::TooShort { len, min } => write!(
                f,
                "handshake message of {len} bytes is shorter than its minimum of {min}"
            ),
            Self::TooLong { len, max } => {
                write!(
                    f,
                    "Noise message of {len} bytes exceeds the maximum of {max}"
                )
            }
            Self::Decrypt => f.write_str("Noise message failed authentication"),
            Self::NonceExhausted => f.write_str("Noise nonces exhausted"),
        }
    }
}

impl core::error::Error for NoiseError {}

/// `X25519(private, 9)`, the public key of `private`, computed on the
/// Edwards form from curve25519-dalek's precomputed basepoint table: the
/// same value as the ladder's, about 3x faster (feature
/// `precomputed-tables`, servers). Without the feature (firmware) the
/// callers run the ladder `x25519(private, X25519_BASEPOINT_BYTES)` as
/// they always did, and no table is in flash.
#[cfg(feature = "precomputed-tables")]
pub(crate) fn public_key(private: [u8; DHLEN]) -> [u8; DHLEN] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(private).to_bytes()
}

/// An X25519 static key pair: a server's identity for NK. The private key
/// is wiped when the pair is dropped.
#[derive(Clone)]
pub struct StaticKeypair {
    secret: [u8; DHLEN],
    public: [u8; DHLEN],
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Drop for StaticKeypair {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl StaticKeypair {
    /// A fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = [0u8; DHLEN];
        rng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// The pair of a stored private key (any 32 bytes; X25519 clamps them).
    pub fn from_secret(secret: [u8; DHLEN]) -> Self {
        Self {
            #[cfg(not(feature = "precomputed-tables"))]
            public: x25519(secret, X25519_BASEPOINT_BYTES),
            #[cfg(feature = "precomputed-tables")]
            public: public_key(secret),
            secret,
        }
    }

    /// The public key, for provisioning initiators.
    pub fn public(&self) -> &[u8; DHLEN] {
        &self.public
    }

    /// The private key, for storing it.
    pub fn secret(&self) -> &[u8; DHLEN] {
        &self.secret
    }
}

/// An initiator before message 1.
pub struct Initiator(HandshakeState);

/// An initiator that sent message 1 and waits for message 2.
pub struct AwaitingResponse(HandshakeState);

/// A responder before message 1.
pub struct Responder(HandshakeState);

/// A responder that read message 1 and writes message 2.
pub struct ReadyToRespond(HandshakeState);

macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("pattern", &self.0.pattern())
                    .finish_non_exhaustive()
            }
        }
    )*};
}
redacted_debug!(Initiator, AwaitingResponse, Responder, ReadyToRespond);

impl Initiator {
    /// `Noise_NN`: no keys known in advance. `prologue` is data both sides
    /// must agree on (a mismatch fails message 2).
    pub fn nn(prologue: &[u8]) -> Self {
        Self(HandshakeState::new(Pattern::Nn, true, prologue, None, None))
    }

    /// `Noise_NK` towards the responder whose static public key is
    /// `responder`.
    pub fn nk(prologue: &[u8], responder: &[u8; DHLEN]) -> Self {
        Self(HandshakeState::new(
            Pattern::Nk,
            true,
            prologue,
            None,
            Some(responder),
        ))
    }

    /// The pattern of this handshake.
    pub fn pattern(&self) -> Pattern {
        self.0.pattern()
    }

    /// Writes message 1 with `payload` into `out` and returns it. With NN
    /// the payload travels in the clear (it is authenticated only by
    /// message 2); with NK it is encrypted to the responder.
    ///
    /// # Errors
    /// [`NoiseError::BufferTooSmall`] or [`NoiseError::TooLong`].
    pub fn write_message<'o, R: CryptoRng + ?Sized>(
        mut self,
        payload: &[u8],
        out: &'o mut [u8],
        rng: &mut R,
    ) -> Result<(AwaitingResponse, &'o [u8]), NoiseError> {
        let n = self.0.write_message(payload, out, rng)?;
        Ok((AwaitingResponse(self.0), out.get(..n).unwrap_or_default()))
    }

    /// [`write_message`](Self::write_message) with the payload already in
    /// place: its `payload_len` bytes at `out[PAYLOAD_AT..]`.
    ///
    /// # Errors
    /// As [`write_message`](Self::write_message).
    pub fn write_message_in_place<'o, R: CryptoRng + ?Sized>(
        mut self,
        payload_len: usize,
        out: &'o mut [u8],
        rng: &mut R,
    ) -> Result<(AwaitingResponse, &'o [u8]), NoiseError> {
        let n = self.0.write_in_place(payload_len, out, rng)?;
        Ok((AwaitingResponse(self.0), out.get(..n).unwrap_or_default()))
    }
}

impl AwaitingResponse {
    /// Reads message 2, decrypting its payload in place; returns the
    /// transport states and the payload (a part of `message`).
    ///
    /// # Errors
    /// [`NoiseError::TooShort`], [`NoiseError::TooLong`], or
    /// [`NoiseError::Decrypt`] (altered message, a responder without the
    /// pinned key, a different prologue).
    pub fn read_message(mut self, message: &mut [u8]) -> Result<(Transport, &[u8]), NoiseError> {
        let payload = self.0.read_message(message)?;
        let (c1, c2) = self.0.split();
        Ok((Transport::new(c1, c2, &self.0), payload))
    }
}

impl Responder {
    /// `Noise_NN`, responder side.
    pub fn nn(prologue: &[u8]) -> Self {
        Self(HandshakeState::new(
            Pattern::Nn,
            false,
            prologue,
            None,
            None,
        ))
    }

    /// `Noise_NK`, responder side, with the static key pair initiators
    /// pinned. To hold several keys (rotation), read message 1 with a
    /// responder for each in turn until one succeeds: a failed read leaves
    /// the message untouched.
    pub fn nk(prologue: &[u8], keypair: &StaticKeypair) -> Self {
        Self(HandshakeState::new(
            Pattern::Nk,
            false,
            prologue,
            Some(keypair),
            None,
        ))
    }

    /// The pattern of this handshake.
    pub fn pattern(&self) -> Pattern {
        self.0.pattern()
    }

    /// Reads message 1, decrypting its payload in place (NK; NN's is in
    /// the clear) and returns the payload, a part of `message`. On error
    /// `message` is unchanged.
    ///
    /// # Errors
    /// [`NoiseError::TooShort`], [`NoiseError::TooLong`], or with NK
    /// [`NoiseError::Decrypt`] (encrypted to another key, altered, or a
    /// different prologue).
    pub fn read_message(
        mut self,
        message: &mut [u8],
    ) -> Result<(ReadyToRespond, &[u8]), NoiseError> {
        let payload = self.0.read_message(message)?;
        Ok((ReadyToRespond(self.0), payload))
    }
}

impl ReadyToRespond {
    /// Writes message 2 with `payload` (encrypted) into `out`; returns the
    /// transport states and the message.
    ///
    /// # Errors
    /// [`NoiseError::BufferTooSmall`] or [`NoiseError::TooLong`].
    pub fn write_message<'o, R: CryptoRng + ?Sized>(
        mut self,
        payload: &[u8],
        out: &'o mut [u8],
        rng: &mut R,
    ) -> Result<(Transport, &'o [u8]), NoiseError> {
        let n = self.0.write_message(payload, out, rng)?;
        let (c1, c2) = self.0.split();
        Ok((
            Transport::new(c2, c1, &self.0),
            out.get(..n).unwrap_or_default(),
        ))
    }

    /// [`write_message`](Self::write_message) with the payload already in
    /// place: its `payload_len` bytes at `out[PAYLOAD_AT..]`.
    ///
    /// # Errors
    /// As [`write_message`](Self::write_message).
    pub fn write_message_in_place<'o, R: CryptoRng + ?Sized>(
        mut self,
        payload_len: usize,
        out: &'o mut [u8],
        rng: &mut R,
    ) -> Result<(Transport, &'o [u8]), NoiseError> {
        let n = self.0.write_in_place(payload_len, out, rng)?;
        let (c1, c2) = self.0.split();
        Ok((
            Transport::new(c2, c1, &self.0),
            out.get(..n).unwrap_or_default(),
        ))
    }
}

/// The result of a completed handshake: one [`CipherState`] per direction
/// and the handshake hash.
#[derive(Debug)]
pub struct Transport {
    /// Encrypts what this side sends.
    pub send: CipherState,
    /// Decrypts what this side receives.
    pub recv: CipherState,
    handshake_hash: [u8; HASH_LEN],
}

impl Transport {
    fn new(send: CipherState, recv: CipherState, hs: &HandshakeState) -> Self {
        Self {
            send,
            recv,
            handshake_hash: hs.handshake_hash(),
        }
    }

    /// `GetHandshakeHash()`: identifies this session (both sides hold the
    /// same value only if they saw the same messages, with the same
    /// prologue and keys). For channel binding.
    pub fn handshake_hash(&self) -> &[u8; HASH_LEN] {
        &self.handshake_hash
    }
}
