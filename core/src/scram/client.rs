//! The client side: what a device runs.

use rand_core::CryptoRng;

use super::{
    CachedKeys, Key, MAX_NONCE_LEN, Mechanism, Mechanisms, NONCE_BYTES, ScramError, attr,
    auth_message, decode_b64, hash, hmac, is_printable, push, push_b64, push_escaped, session_key,
    xor,
};
use crate::session::SessionKeys;

/// GS2 header: no channel binding, no authorization identity.
const GS2_HEADER: &str = "n,,";
/// base64("n,,"), the `c=` value of the client-final-message.
const GS2_HEADER_B64: &str = "biws";
/// Protocol v2's GS2 header: channel binding of type `tether-noise` (the
/// Noise handshake hash), no authorization identity.
#[cfg(feature = "v2")]
pub const GS2_NOISE: &str = "p=tether-noise,,";

/// The `c=` value of a v2 client-final-message:
/// base64(`p=tether-noise,,` || `h`), `h` the Noise handshake hash.
#[cfg(feature = "v2")]
pub fn noise_binding(h: &[u8; 32]) -> heapless::String<64> {
    let mut data = [0u8; 48];
    data[..16].copy_from_slice(GS2_NOISE.as_bytes());
    data[16..].copy_from_slice(h);
    let mut out = heapless::String::new();
    // 48 bytes are 64 characters of base64: always fits.
    let _ = push_b64(&mut out, &data);
    out
}

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Fewest iterations the client accepts from a server (default 4096).
    pub min_iterations: u32,
    /// Most iterations the client accepts (default 100,000,000, a hundred
    /// times Django 5.2's default): an impostor must not be able to keep a
    /// device busy in PBKDF2 for hours.
    pub max_iterations: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            min_iterations: super::DEFAULT_MIN_ITERATIONS,
            max_iterations: super::DEFAULT_MAX_ITERATIONS,
        }
    }
}

/// How the client proves itself.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum ClientCredentials<'a> {
    /// The password (raw UTF-8, no SASLprep). Costs one PBKDF2 run.
    Password(&'a str),
    /// Keys from an earlier password login (see [`ClientSuccess::keys`]).
    Keys(&'a CachedKeys),
    /// None yet: the login only fetches the account's salt and iteration
    /// count, for a first login that runs PBKDF2 offline, with no
    /// connection open ([`Derivation`](super::Derivation)), and then logs in
    /// with the derived keys. The challenge is checked as for a password
    /// (nonce, iteration bounds, salt); then [`ClientProofSent::keys`] holds
    /// the mechanism, salt and count (its keys are those of an empty
    /// password at one iteration: no secret), and
    /// [`ClientProofSent::is_probe`] is true: close the connection instead
    /// of sending the proof (it is empty, so a server refuses it as a
    /// protocol error, never as a wrong password). A server counts such a
    /// probe neither as a failed login nor against its throttle. Feature
    /// `probe`.
    #[cfg(feature = "probe")]
    Probe,
}

impl core::fmt::Debug for ClientCredentials<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::Keys(k) => f.debug_tuple("Keys").field(k).finish(),
            #[cfg(feature = "probe")]
            Self::Probe => f.write_str("Probe"),
        }
    }
}

/// A client login, first state: holds the client-first-message to send.
///
/// `N` bounds the client-first-message (`n,,n=<escaped user>,r=<nonce>`);
/// the default 256 leaves room for a 200-byte username.
pub struct ClientLogin<'a, const N: usize = 256> {
    config: ClientConfig,
    credentials: ClientCredentials<'a>,
    /// `n,,` + client-first-message-bare.
    first: heapless::String<N>,
    /// Offset of the nonce in `first`.
    nonce_at: usize,
}

impl<'a, const N: usize> ClientLogin<'a, N> {
    /// Starts a login for `username` with a fresh nonce from `rng`.
    pub fn new<R: CryptoRng + ?Sized>(
        username: &str,
        credentials: ClientCredentials<'a>,
        config: ClientConfig,
        rng: &mut R,
    ) -> Result<Self, ScramError> {
        let mut raw = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut raw);
        let mut nonce = heapless::String::<32>::new();
        push_b64(&mut nonce, &raw)?;
        // Base64 of NONCE_BYTES: printable, and short enough.
        Self::start(GS2_HEADER, username, credentials, config, &nonce)
    }

    /// Starts a protocol v2 login, bound to the Noise session: the GS2
    /// header is [`GS2_NOISE`], and the proof is made with
    /// [`handle_challenge_bound`](Self::handle_challenge_bound).
    #[cfg(feature = "v2")]
    pub fn new_bound<R: CryptoRng + ?Sized>(
        username: &str,
        credentials: ClientCredentials<'a>,
        config: ClientConfig,
        rng: &mut R,
    ) -> Result<Self, ScramError> {
        let mut raw = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut raw);
        let mut nonce = heapless::String::<32>::new();
        push_b64(&mut nonce, &raw)?;
        Self::start(GS2_NOISE, username, credentials, config, &nonce)
    }

    /// [`new_bound`](Self::new_bound) with a given nonce: for test vectors
    /// and interop tests only.
    #[cfg(feature = "v2")]
    pub fn bound_with_nonce(
        username: &str,
        credentials: ClientCredentials<'a>,
        config: ClientConfig,
        nonce: &str,
    ) -> Result<Self, ScramError> {
        if !is_printable(nonce) || nonce.len() > MAX_NONCE_LEN / 2 {
            return Err(ScramError::Malformed("client nonce"));
        }
        Self::start(GS2_NOISE, username, credentials, config, nonce)
    }

    /// Starts a login with a given nonce: for test vectors and interop
    /// tests only; a real login must use a fresh random nonce ([`Self::new`]).
    pub fn with_nonce(
        username: &str,
        credentials: ClientCredentials<'a>,
        config: ClientConfig,
        nonce: &str,
    ) -> Result<Self, ScramError> {
        if !is_printable(nonce) || nonce.len() > MAX_NONCE_LEN / 2 {
            return Err(ScramError::Malformed("client nonce"));
        }
        Self::start(GS2_HEADER, username, credentials, config, nonce)
    }

    /// Starts a login with a checked nonce.
    fn start(
        gs2: &str,
        username: &str,
        credentials: ClientCredentials<'a>,
        config: ClientConfig,
        nonce: &str,
    ) -> Result<Self, ScramError> {
        if username.is_empty() {
            return Err(ScramError::Malformed("empty username"));
        }
        let mut first = heapless::String::new();
        push(&mut first, &[gs2, "n="])?;
        push_escaped(&mut first, username)?;
        push(&mut first, &[",r="])?;
        let nonce_at = first.len();
        push(&mut first, &[nonce])?;
        Ok(Self {
            config,
            credentials,
            first,
            nonce_at,
        })
    }

    /// The RFC 5802 client-first-message to send in the hello.
    pub fn client_first(&self) -> &str {
        &self.first
    }

    /// The mechanisms these credentials can complete: both with a password,
    /// the keys' own with cached keys.
    pub fn mechanisms(&self) -> Mechanisms {
        match self.credentials {
            ClientCredentials::Password(_) => Mechanisms::ENABLED,
            #[cfg(feature = "probe")]
            ClientCredentials::Probe => Mechanisms::ENABLED,
            ClientCredentials::Keys(k) => Mechanisms::only(k.mechanism),
        }
    }

    /// Takes the server-first-message (and the mechanism the server chose),
    /// checks nonce and iteration floor, derives or checks the keys, and
    /// computes the proof. With a password this runs PBKDF2 once.
    pub fn handle_challenge(
        self,
        mechanism: Mechanism,
        server_first: &str,
    ) -> Result<ClientProofSent, ScramError> {
        #[cfg(feature = "v2")]
        if self.first.starts_with(GS2_NOISE) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        self.prove(mechanism, server_first, GS2_HEADER_B64)
    }

    /// [`handle_challenge`](Self::handle_challenge) for a v2 login
    /// ([`new_bound`](Self::new_bound)): the proof covers `c=` with the
    /// Noise handshake hash `h`, so it is good only in this Noise session.
    #[cfg(feature = "v2")]
    pub fn handle_challenge_bound(
        self,
        mechanism: Mechanism,
        server_first: &str,
        h: &[u8; 32],
    ) -> Result<ClientProofSent, ScramError> {
        if !self.first.starts_with(GS2_NOISE) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        self.prove(mechanism, server_first, &noise_binding(h))
    }

    /// Checks the challenge and computes the proof with `cbind` as `c=`
    /// (inlined into v1's only caller: no call, `c=` a constant).
    #[cfg_attr(not(feature = "v2"), inline(always))]
    fn prove(
        self,
        mechanism: Mechanism,
        server_first: &str,
        cbind: &str,
    ) -> Result<ClientProofSent, ScramError> {
        if !mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        if !self.mechanisms().contains(mechanism) {
            return Err(ScramError::MechanismNotOffered);
        }
        let mut rest = server_first;
        if rest.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let nonce = attr(&mut rest, b'r', "server nonce")?;
        let salt_b64 = attr(&mut rest, b's', "salt")?;
        let iterations = attr(&mut rest, b'i', "iteration count")?;
        // Anything after i= is an extension we ignore (RFC 5802 section 7).
        let client_nonce = self.first.get(self.nonce_at..).unwrap_or_default();
        if !is_printable(nonce)
            || nonce.len() > MAX_NONCE_LEN
            || nonce.len() <= client_nonce.len()
            || !nonce.starts_with(client_nonce)
        {
            return Err(ScramError::NonceMismatch);
        }
        let iterations: u32 = parse_iterations(iterations)?;
        if iterations < self.config.min_iterations {
            return Err(ScramError::IterationsTooLow {
                offered: iterations,
                minimum: self.config.min_iterations,
            });
        }
        if iterations > self.config.max_iterations {
            return Err(ScramError::IterationsTooHigh {
                offered: iterations,
                maximum: self.config.max_iterations,
            });
        }
        let mut salt = [0u8; 96];
        let salt_len = decode_b64(salt_b64, &mut salt, "salt")?;
        let salt = &salt[..salt_len];

        let (keys, derived) = match self.credentials {
            ClientCredentials::Keys(k) => {
                if !k.matches(mechanism, salt, iterations) {
                    return Err(ScramError::CachedKeysMismatch);
                }
                (k.clone(), false)
            }
            ClientCredentials::Password(pw) => {
                (CachedKeys::derive(mechanism, pw, salt, iterations)?, true)
            }
            // Public keys (an empty password at one iteration) that only
            // carry the mechanism, salt and count.
            #[cfg(feature = "probe")]
            ClientCredentials::Probe => {
                let mut keys = CachedKeys::derive(mechanism, "", salt, 1)?;
                keys.iterations = iterations;
                (keys, false)
            }
        };

        let mut client_final = heapless::String::<256>::new();
        push(&mut client_final, &["c=", cbind, ",r=", nonce])?;
        let stored_key = hash(mechanism, keys.client_key.as_bytes());
        let bare = self.bare();
        let auth = auth_message(bare, server_first, &client_final);
        let client_signature = hmac(mechanism, stored_key.as_bytes(), &auth);
        let server_signature = hmac(mechanism, keys.server_key.as_bytes(), &auth);
        let session = session_key(&keys.client_key, &auth);
        let proof: Key = xor(&keys.client_key, &client_signature);
        push(&mut client_final, &[",p="])?;
        push_b64(&mut client_final, proof.as_bytes())?;
        #[cfg(feature = "probe")]
        if let ClientCredentials::Probe = self.credentials {
            // Nothing to prove with: a proof sent by mistake is refused as
            // malformed, never counted as a wrong password.
            client_final.clear();
        }
        Ok(ClientProofSent {
            client_final,
            server_signature,
            session: SessionKeys::from_master(&session),
            keys,
            derived,
        })
    }
}

impl<const N: usize> ClientLogin<'_, N> {
    /// The client-first-message-bare (without the GS2 header).
    fn bare(&self) -> &str {
        #[cfg(feature = "v2")]
        if let Some(bare) = self.first.strip_prefix(GS2_NOISE) {
            return bare;
        }
        self.first.strip_prefix(GS2_HEADER).unwrap_or_default()
    }
}

pub(super) fn parse_iterations(text: &str) -> Result<u32, ScramError> {
    // Decimal digits without a leading zero, fitting a u32 (by hand: the
    // generic `str::parse` costs a device a few hundred bytes).
    let value = if text.is_empty() || text.len() > 10 || text.starts_with('0') {
        None
    } else {
        text.bytes().try_fold(0u32, |n, b| {
            let digit = b.is_ascii_digit().then(|| u32::from(b - b'0'))?;
            n.checked_mul(10)?.checked_add(digit)
        })
    };
    value.ok_or(ScramError::Malformed("iteration count"))
}

/// Second client state: the proof is computed; waiting for the server's
/// signature.
pub struct ClientProofSent {
    client_final: heapless::String<256>,
    server_signature: Key,
    session: SessionKeys,
    keys: CachedKeys,
    derived: bool,
}

impl ClientProofSent {
    /// The RFC 5802 client-final-message to send.
    pub fn client_final(&self) -> &str {
        &self.client_final
    }

    /// The keys the proof was made with. After a password login they are
    /// new (see [`Self::derived`]): a device may persist them now, before
    /// the server answers, so that a first login whose PBKDF2 outlasted the
    /// server's handshake timeout can be retried with the keys at once.
    pub fn keys(&self) -> &CachedKeys {
        &self.keys
    }

    /// True when this login ran PBKDF2 (password credentials).
    pub fn derived(&self) -> bool {
        self.derived
    }

    /// True for [`ClientCredentials::Probe`]: [`keys`](Self::keys) holds
    /// the account's mechanism, salt and iteration count without key
    /// material, and there is no proof to send: close the connection.
    #[cfg(feature = "probe")]
    pub fn is_probe(&self) -> bool {
        self.client_final.is_empty()
    }

    /// Verifies the server-final-message. Only a server holding the
    /// account's verifier can produce it: on success the session is
    /// mutually authenticated.
    pub fn handle_server_final(self, server_final: &str) -> Result<ClientSuccess, ScramError> {
        if server_final.starts_with("e=") {
            return Err(ScramError::ServerError);
        }
        let mut rest = server_final;
        let v = attr(&mut rest, b'v', "server signature")?;
        let mut sig = [0u8; 48];
        let n = decode_b64(v, &mut sig, "server signature")?;
        let got = sig
            .get(..n)
            .and_then(Key::from_slice)
            .ok_or(ScramError::Malformed("server signature"))?;
        if !got.ct_eq(&self.server_signature) {
            return Err(ScramError::InvalidServerSignature);
        }
        Ok(ClientSuccess {
            keys: self.keys,
            session: self.session,
            derived: self.derived,
        })
    }
}

/// A finished, mutually authenticated client login.
pub struct ClientSuccess {
    /// The keys to cache for the next login (skips PBKDF2).
    pub keys: CachedKeys,
    /// Keys for the session's frame tags.
    pub session: SessionKeys,
    /// True when PBKDF2 ran (a password login): `keys` are new and worth
    /// persisting.
    pub derived: bool,
}
