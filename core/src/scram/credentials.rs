//! The keys each side holds: the client's cached keys (so a device runs
//! PBKDF2 once) and the server's verifier for an account.

use serde::{Deserialize, Serialize};

use super::{Key, Mechanism, ScramError, hash, hmac};

/// Longest salt accepted, in bytes. Django's salts are 22 characters (12 in
/// releases before 3.1).
pub const MAX_SALT_LEN: usize = 64;

/// A salt: the raw bytes fed to PBKDF2 (for a Django row, the bytes of its
/// salt string; SCRAM carries them base64-encoded).
pub type Salt = heapless::Vec<u8, MAX_SALT_LEN>;

/// Keys a client derived from its password for one salt and iteration
/// count (RFC 5802 section 5.1 allows caching them). Logging in with them
/// skips PBKDF2. They are password-equivalent for this protocol: store them
/// as carefully as the password. `Serialize`/`Deserialize` (postcard, about
/// 140 bytes) let a device keep them in flash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedKeys {
    /// The mechanism the keys belong to.
    pub mechanism: Mechanism,
    /// The iteration count they were derived with.
    pub iterations: u32,
    /// The salt they were derived with.
    pub salt: Salt,
    /// ClientKey = HMAC(SaltedPassword, "Client Key").
    pub client_key: Key,
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: Key,
}

impl core::fmt::Debug for CachedKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CachedKeys")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl CachedKeys {
    /// Derives the keys from a password: runs PBKDF2 with `iterations`,
    /// which is slow by design (seconds on a microcontroller).
    pub fn derive(
        mechanism: Mechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        if !mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        let salted = super::salted_password(mechanism, password.as_bytes(), salt, iterations);
        Self::from_salted_password(mechanism, &salted, salt, iterations)
    }

    /// The keys from a known SaltedPassword.
    pub fn from_salted_password(
        mechanism: Mechanism,
        salted: &Key,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        if !mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        Ok(Self {
            mechanism,
            iterations,
            salt: Salt::from_slice(salt).map_err(|_| ScramError::SaltTooLong)?,
            client_key: hmac(mechanism, salted.as_bytes(), &[b"Client Key"]),
            server_key: hmac(mechanism, salted.as_bytes(), &[b"Server Key"]),
        })
    }

    /// Whether these keys fit a server's challenge.
    pub fn matches(&self, mechanism: Mechanism, salt: &[u8], iterations: u32) -> bool {
        self.mechanism == mechanism && self.iterations == iterations && self.salt.as_slice() == salt
    }
}

/// PBKDF2 in steps, with no connection open: a device's first login
/// fetches the salt and iteration count (`ClientCredentials::Probe`, feature `probe`),
/// derives its keys with this a few iterations at a time (reporting
/// progress, feeding a watchdog, letting its network stack run), then logs
/// in with [`ClientCredentials::Keys`](super::ClientCredentials::Keys).
///
/// ```
/// use tether_core::scram::{Derivation, Mechanism};
/// let mut d = Derivation::new(Mechanism::ScramSha256, "pencil", b"salt", 4096).unwrap();
/// while !d.run(1000) {
///     let _progress = (d.iterations() - d.remaining(), d.iterations());
/// }
/// let keys = d.finish().unwrap();
/// assert_eq!(keys, tether_core::scram::CachedKeys::derive(
///     Mechanism::ScramSha256, "pencil", b"salt", 4096).unwrap());
/// ```
///
/// SCRAM-SHA-1 (feature `sha1`) runs whole in [`new`](Self::new).
#[derive(Clone)]
pub struct Derivation {
    mechanism: Mechanism,
    iterations: u32,
    salt: Salt,
    state: DerivationState,
}

#[derive(Clone)]
enum DerivationState {
    Sha256(crate::sha256::Pbkdf2Sha256),
    Salted(Key),
}

impl core::fmt::Debug for Derivation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Derivation")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("remaining", &self.remaining())
            .finish_non_exhaustive()
    }
}

impl Derivation {
    /// Starts deriving the keys of `password` for a salt and iteration
    /// count (a probe's: [`CachedKeys::matches`] them afterwards).
    pub fn new(
        mechanism: Mechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        if !mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        let salt = Salt::from_slice(salt).map_err(|_| ScramError::SaltTooLong)?;
        let state =
            match mechanism {
                Mechanism::ScramSha256 => DerivationState::Sha256(
                    crate::sha256::Pbkdf2Sha256::new(password.as_bytes(), &salt, iterations),
                ),
                Mechanism::ScramSha1 => DerivationState::Salted(super::salted_password(
                    mechanism,
                    password.as_bytes(),
                    &salt,
                    iterations,
                )),
            };
        Ok(Self {
            mechanism,
            iterations,
            salt,
            state,
        })
    }

    /// Runs at most `n` more iterations; true when the derivation is done.
    pub fn run(&mut self, n: u32) -> bool {
        match &mut self.state {
            DerivationState::Sha256(p) => p.run(n),
            DerivationState::Salted(_) => true,
        }
    }

    /// The iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Iterations still to run.
    pub fn remaining(&self) -> u32 {
        match &self.state {
            DerivationState::Sha256(p) => p.left(),
            DerivationState::Salted(_) => 0,
        }
    }

    /// Runs what is left and returns the keys.
    pub fn finish(mut self) -> Result<CachedKeys, ScramError> {
        self.run(u32::MAX);
        let salted = match &self.state {
            DerivationState::Sha256(p) => super::key_from(&p.output()),
            DerivationState::Salted(k) => *k,
        };
        CachedKeys::from_salted_password(self.mechanism, &salted, &self.salt, self.iterations)
    }
}

/// What a server needs to verify an account: StoredKey and ServerKey with
/// the salt and iteration count (RFC 5802's verifier; RFC 5803 stores the
/// same). Never the password, and no PBKDF2 to verify a login.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCredentials {
    /// The mechanism the verifier belongs to.
    pub mechanism: Mechanism,
    /// Iteration count announced to the client.
    pub iterations: u32,
    /// Salt announced to the client.
    pub salt: Salt,
    /// StoredKey = H(ClientKey).
    pub stored_key: Key,
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: Key,
}

impl core::fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// The characters of Django's salts (`get_random_string`'s default).
const SALT_ALPHABET: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl ServerCredentials {
    /// The verifier from a SaltedPassword (what a Django pbkdf2 row stores).
    pub fn from_salted_password(
        mechanism: Mechanism,
        salted: &Key,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        Self::from_cached_keys(&CachedKeys::from_salted_password(
            mechanism, salted, salt, iterations,
        )?)
    }

    /// The verifier matching a client's keys (StoredKey = H(ClientKey)): what
    /// a server must hold for a device provisioned with these keys.
    pub fn from_cached_keys(keys: &CachedKeys) -> Result<Self, ScramError> {
        if !keys.mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        Ok(Self {
            mechanism: keys.mechanism,
            iterations: keys.iterations,
            salt: keys.salt.clone(),
            stored_key: hash(keys.mechanism, keys.client_key.as_bytes()),
            server_key: keys.server_key,
        })
    }

    /// A stand-in verifier for a username that does not exist (or may not
    /// log in), so that its challenge looks like a real account's: a
    /// Django-style 22-character salt and keys derived from `secret` and the
    /// username (stable across attempts, unguessable without the secret), at
    /// the server's default iteration count. No proof can match it.
    pub fn decoy(mechanism: Mechanism, secret: &[u8], username: &str, iterations: u32) -> Self {
        let salt = Self::decoy_salt(secret, username);
        Self::decoy_keys(mechanism, secret, username, &salt, iterations).expect("a decoy salt fits")
    }

    /// The salt of [`Self::decoy`]: 22 characters of Django's salt alphabet
    /// from `secret` and the username.
    pub fn decoy_salt(secret: &[u8], username: &str) -> Salt {
        let mut salt = Salt::new();
        for b in decoy_derive(secret, b"salt", username).iter().take(22) {
            // 256 % 62 bias is irrelevant: the salt only has to look plausible.
            let _ = salt.push(SALT_ALPHABET[*b as usize % SALT_ALPHABET.len()]);
        }
        salt
    }

    /// A verifier no proof can match, announcing `salt` and `iterations`:
    /// for an account that cannot complete `mechanism` (its row needs the
    /// other one, or it may not log in), so that its challenge shows the
    /// same salt and count whatever the client offers, as a real row's
    /// does. The keys come from `secret` and the username.
    pub fn decoy_keys(
        mechanism: Mechanism,
        secret: &[u8],
        username: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        let len = mechanism.key_len();
        let stored = decoy_derive(secret, b"stored", username);
        let server = decoy_derive(secret, b"server", username);
        Ok(Self {
            mechanism,
            iterations,
            salt: Salt::from_slice(salt).map_err(|_| ScramError::SaltTooLong)?,
            stored_key: Key::from_slice(&stored[..len]).expect("key_len <= 32"),
            server_key: Key::from_slice(&server[..len]).expect("key_len <= 32"),
        })
    }
}

/// HMAC-SHA256(secret, "tether/1 decoy " || label || 0 || username).
fn decoy_derive(secret: &[u8], label: &[u8], username: &str) -> [u8; 32] {
    crate::sha256::hmac_sha256(
        secret,
        &[b"tether/1 decoy ", label, &[0], username.as_bytes()],
    )
}
