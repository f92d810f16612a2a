//! SCRAM-SHA-256 (RFC 7677) and SCRAM-SHA-1 (RFC 5802), client and server,
//! as typed state machines over the RFC's text messages.
//!
//! No SASLprep: passwords are raw UTF-8 bytes, as Django hashes them. The
//! client nonce comes from the caller's RNG. Comparisons of secrets are
//! constant-time. Neither side ever stores the whole AuthMessage: each part
//! is fed to the MACs as it becomes known.
//!
//! Client: [`ClientLogin`] -> [`ClientProofSent`] -> [`ClientSuccess`].
//! Server: [`ServerLogin`] -> [`ServerChallengeSent`] -> [`ServerSuccess`].

mod client;
mod credentials;
mod server;

use core::fmt;

#[cfg(feature = "sha1")]
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

pub use client::{ClientConfig, ClientCredentials, ClientLogin, ClientProofSent, ClientSuccess};
#[cfg(feature = "v2")]
pub use client::{GS2_NOISE, noise_binding};
pub use credentials::{CachedKeys, MAX_SALT_LEN, Salt, ServerCredentials};
pub use server::{ServerChallengeSent, ServerLogin, ServerSuccess};

/// The iteration floor a client enforces unless configured otherwise (RFC
/// 7677's minimum); a server offering fewer is refused, so an impostor
/// cannot make a device do cheap work that would expose its password.
pub const DEFAULT_MIN_ITERATIONS: u32 = 4096;

/// The iteration ceiling a client enforces unless configured otherwise.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100_000_000;

/// Bytes of randomness in a nonce (24 base64 characters).
pub const NONCE_BYTES: usize = 18;

/// Longest combined nonce accepted (client + server part).
pub const MAX_NONCE_LEN: usize = 128;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 7677), for Django's `pbkdf2_sha256` rows.
    ScramSha256,
    /// SCRAM-SHA-1 (RFC 5802), for Django's legacy `pbkdf2_sha1` rows.
    ScramSha1,
}

impl Mechanism {
    /// The IANA mechanism name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha1 => "SCRAM-SHA-1",
        }
    }

    /// Length of the hash output and so of every key and proof.
    pub const fn key_len(self) -> usize {
        match self {
            Self::ScramSha256 => 32,
            Self::ScramSha1 => 20,
        }
    }

    /// Whether this build can run the mechanism (SCRAM-SHA-1 needs the
    /// `sha1` feature).
    pub const fn is_enabled(self) -> bool {
        match self {
            Self::ScramSha256 => true,
            Self::ScramSha1 => cfg!(feature = "sha1"),
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Self::ScramSha256 => 1,
            Self::ScramSha1 => 2,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of mechanisms, as offered in the client's hello (one byte on the
/// wire: bit 0 SCRAM-SHA-256, bit 1 SCRAM-SHA-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mechanisms(u8);

impl Mechanisms {
    /// Both mechanisms.
    pub const ALL: Self = Self(3);

    /// Every mechanism this build can run (without the `sha1` feature, only
    /// SCRAM-SHA-256).
    pub const ENABLED: Self = if cfg!(feature = "sha1") {
        Self::ALL
    } else {
        Self::only(Mechanism::ScramSha256)
    };

    /// Exactly one mechanism.
    pub const fn only(m: Mechanism) -> Self {
        Self(m.bit())
    }

    /// Whether `m` is in the set.
    pub const fn contains(self, m: Mechanism) -> bool {
        self.0 & m.bit() != 0
    }

    /// The raw bit set.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set from raw bits (unknown bits are kept and ignored).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }
}

/// A SCRAM key, proof or signature: 32 bytes for SHA-256, 20 for SHA-1.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    bytes: [u8; 32],
    len: u8,
}

impl Key {
    /// A key from bytes (at most 32).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; 32];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(Self {
            bytes,
            len: b.len() as u8,
        })
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for Key {
    // Keys are secrets: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.len)
    }
}

/// What went wrong in a SCRAM exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramError {
    /// A message did not follow RFC 5802's syntax; the detail says which part.
    Malformed(&'static str),
    /// The client asked for channel binding (`p=`), which Tether does not do.
    ChannelBindingUnsupported,
    /// The client sent an authorization identity (`a=`), which Tether does
    /// not do.
    AuthzidUnsupported,
    /// A mandatory extension (`m=`) that nobody supports.
    ExtensionUnsupported,
    /// The server's nonce does not extend the client's, or the client-final
    /// nonce differs from the combined one.
    NonceMismatch,
    /// The channel-binding echo (`c=`) differs from the GS2 header sent.
    ChannelBindingMismatch,
    /// The server asked for fewer iterations than the client's floor.
    IterationsTooLow {
        /// Offered by the server.
        offered: u32,
        /// The client's floor.
        minimum: u32,
    },
    /// The server asked for more iterations than the client's ceiling.
    IterationsTooHigh {
        /// Offered by the server.
        offered: u32,
        /// The client's ceiling.
        maximum: u32,
    },
    /// The salt is longer than [`MAX_SALT_LEN`] bytes.
    SaltTooLong,
    /// Cached keys were made for another mechanism, salt or iteration count
    /// (the password or its hash changed): log in with the password again.
    CachedKeysMismatch,
    /// The server chose a mechanism the client did not offer.
    MechanismNotOffered,
    /// The mechanism is not compiled in (SCRAM-SHA-1 without the `sha1`
    /// feature).
    MechanismDisabled,
    /// The client's proof is wrong: wrong password, or unknown user.
    InvalidProof,
    /// The server's signature is wrong: the server does not hold the
    /// account's verifier (an impostor or a changed password).
    InvalidServerSignature,
    /// The server answered with a SCRAM `e=` error.
    ServerError,
    /// A message does not fit the state machine's fixed buffer.
    TooLong,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            Self::ChannelBindingUnsupported => f.write_str("channel binding is not supported"),
            Self::AuthzidUnsupported => f.write_str("authorization identity is not supported"),
            Self::ExtensionUnsupported => f.write_str("mandatory SCRAM extension not supported"),
            Self::NonceMismatch => f.write_str("nonce mismatch"),
            Self::ChannelBindingMismatch => f.write_str("channel binding data mismatch"),
            Self::IterationsTooLow { offered, minimum } => {
                write!(
                    f,
                    "server offered {offered} iterations, below the floor of {minimum}"
                )
            }
            Self::IterationsTooHigh { offered, maximum } => {
                write!(
                    f,
                    "server offered {offered} iterations, above the ceiling of {maximum}"
                )
            }
            Self::SaltTooLong => write!(f, "salt longer than {MAX_SALT_LEN} bytes"),
            Self::CachedKeysMismatch => {
                f.write_str("cached keys do not match the server's salt, iterations or mechanism")
            }
            Self::MechanismDisabled => f.write_str("mechanism not enabled in this build"),
            Self::MechanismNotOffered => {
                f.write_str("server chose a mechanism the client did not offer")
            }
            Self::InvalidProof => f.write_str("invalid client proof"),
            Self::InvalidServerSignature => f.write_str("invalid server signature"),
            Self::ServerError => f.write_str("server reported a SCRAM error"),
            Self::TooLong => f.write_str("SCRAM message too long for the buffer"),
        }
    }
}

impl core::error::Error for ScramError {}

// ---- crypto primitives, dispatched on the mechanism ----

#[cfg(feature = "sha1")]
type HmacSha1 = hmac::Hmac<sha1::Sha1>;

// Every public entry point refuses a disabled mechanism with
// `ScramError::MechanismDisabled` before any of the primitives below runs.
#[cfg(not(feature = "sha1"))]
const SHA1_DISABLED: &str = "SCRAM-SHA-1 disabled: entry points refuse it before any crypto runs";

fn key_from(b: &[u8]) -> Key {
    Key::from_slice(b).expect("digests are at most 32 bytes")
}

/// HMAC of the concatenated `parts`.
pub(crate) fn hmac(m: Mechanism, key: &[u8], parts: &[&[u8]]) -> Key {
    match m {
        Mechanism::ScramSha256 => key_from(&crate::sha256::hmac_sha256(key, parts)),
        #[cfg(feature = "sha1")]
        Mechanism::ScramSha1 => {
            let mut h =
                <HmacSha1 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            for p in parts {
                h.update(p);
            }
            key_from(&h.finalize().into_bytes())
        }
        #[cfg(not(feature = "sha1"))]
        Mechanism::ScramSha1 => unreachable!("{}", SHA1_DISABLED),
    }
}

pub(crate) fn hash(m: Mechanism, data: &[u8]) -> Key {
    match m {
        Mechanism::ScramSha256 => key_from(&crate::sha256::sha256(&[data])),
        #[cfg(feature = "sha1")]
        Mechanism::ScramSha1 => {
            use sha1::Digest;
            key_from(&sha1::Sha1::digest(data))
        }
        #[cfg(not(feature = "sha1"))]
        Mechanism::ScramSha1 => unreachable!("{}", SHA1_DISABLED),
    }
}

/// SaltedPassword := Hi(password, salt, i): the one expensive step, run by a
/// client logging in with its password and never by the server.
pub(crate) fn salted_password(m: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Key {
    match m {
        Mechanism::ScramSha256 => {
            key_from(&crate::sha256::pbkdf2_sha256(password, salt, iterations))
        }
        #[cfg(feature = "sha1")]
        Mechanism::ScramSha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
            key_from(&out)
        }
        #[cfg(not(feature = "sha1"))]
        Mechanism::ScramSha1 => unreachable!("{}", SHA1_DISABLED),
    }
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = *a;
    for (o, x) in out.bytes.iter_mut().zip(b.bytes.iter()) {
        *o ^= x;
    }
    out
}

/// The AuthMessage, `client_first_bare "," server_first ","
/// client_final_without_proof`, in parts: it is never held whole.
pub(crate) fn auth_message<'a>(
    client_first_bare: &'a str,
    server_first: &'a str,
    without_proof: &'a str,
) -> [&'a [u8]; 5] {
    [
        client_first_bare.as_bytes(),
        b",",
        server_first.as_bytes(),
        b",",
        without_proof.as_bytes(),
    ]
}

/// The session master key `K` from ClientKey and the AuthMessage; see
/// [`crate::session`].
pub(crate) fn session_key(client_key: &Key, auth_message: &[&[u8]; 5]) -> [u8; 32] {
    let [a, b, c, d, e] = *auth_message;
    let label = crate::session::SESSION_LABEL;
    crate::sha256::hmac_sha256(client_key.as_bytes(), &[label, &[0], a, b, c, d, e])
}

// ---- text helpers ----

/// Appends base64 of `data` (at most 64 bytes) to `s`.
fn push_b64<const N: usize>(s: &mut heapless::String<N>, data: &[u8]) -> Result<(), ScramError> {
    let mut buf = [0u8; 88];
    let text = crate::b64::encode(data, &mut buf).ok_or(ScramError::TooLong)?;
    s.push_str(text).map_err(|_| ScramError::TooLong)
}

/// Decodes base64 into `out`, returning the decoded length. Non-canonical
/// encodings (stray bits, missing padding) are malformed.
fn decode_b64(text: &str, out: &mut [u8], what: &'static str) -> Result<usize, ScramError> {
    crate::b64::decode(text, out).ok_or(ScramError::Malformed(what))
}

fn push<const N: usize>(s: &mut heapless::String<N>, parts: &[&str]) -> Result<(), ScramError> {
    for p in parts {
        s.push_str(p).map_err(|_| ScramError::TooLong)?;
    }
    Ok(())
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (no comma).
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Splits off the next `x=value` attribute with the expected letter.
fn attr<'a>(rest: &mut &'a str, letter: u8, what: &'static str) -> Result<&'a str, ScramError> {
    // Byte positions and `str::get`: no str indexing (its char-boundary
    // panic path) and no memchr, which cost a device flash; `,` and `=`
    // never occur inside a UTF-8 sequence.
    let s = *rest;
    let end = s.bytes().position(|b| b == b',').unwrap_or(s.len());
    if !s.as_bytes()[..end].starts_with(&[letter, b'=']) {
        return Err(ScramError::Malformed(what));
    }
    *rest = s.get(end + 1..).unwrap_or_default();
    s.get(2..end).ok_or(ScramError::Malformed(what))
}

/// Escapes a username for `n=`: `=` -> `=3D`, `,` -> `=2C`.
fn push_escaped<const N: usize>(
    s: &mut heapless::String<N>,
    username: &str,
) -> Result<(), ScramError> {
    // Bytes, not chars: `=` and `,` never occur inside a UTF-8 sequence.
    let mut start = 0;
    for (i, b) in username.bytes().enumerate() {
        let escaped = match b {
            b'=' => "=3D",
            b',' => "=2C",
            _ => continue,
        };
        push(s, &[username.get(start..i).unwrap_or_default(), escaped])?;
        start = i + 1;
    }
    push(s, &[username.get(start..).unwrap_or_default()])
}

/// Reverses [`push_escaped`]; any other `=` sequence is malformed.
fn unescape<const N: usize>(
    escaped: &str,
    out: &mut heapless::String<N>,
) -> Result<(), ScramError> {
    let mut rest = escaped;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]).map_err(|_| ScramError::TooLong)?;
        let c = match rest.get(i + 1..i + 3) {
            Some("3D") => '=',
            Some("2C") => ',',
            _ => return Err(ScramError::Malformed("bad escape in username")),
        };
        out.push(c).map_err(|_| ScramError::TooLong)?;
        rest = &rest[i + 3..];
    }
    out.push_str(rest).map_err(|_| ScramError::TooLong)
}

#[cfg(test)]
pub(crate) mod tests;
