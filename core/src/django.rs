//! Django password hashes (`auth_user.password`) as SCRAM verifiers.
//!
//! `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>` stores
//! `PBKDF2-HMAC-SHA256(password, salt_string_bytes, iterations, 32)`, which
//! is exactly SCRAM-SHA-256's SaltedPassword; `pbkdf2_sha1$...` likewise for
//! SCRAM-SHA-1. Such a row is password-equivalent for SCRAM: ClientKey
//! follows from it.
//!
//! `scram_sha256$<iterations>$<salt>$<base85(StoredKey || ServerKey)>`
//! (django-tether's `ScramSHA256PasswordHasher`, docs/DJANGO.md section 4)
//! stores the verifier only: a copy of it does not log anyone in.
//!
//! Every other form Django writes is recognised and reported as
//! unsupported, never guessed at.
//!
//! ```
//! use tether_core::django::{self, HashAlgorithm, DjangoHashError};
//! let creds = django::credentials(
//!     "pbkdf2_sha256$4096$c2FsdHNhbHQ$ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWVmZGVhZGJlZWY=").unwrap();
//! assert_eq!(creds.iterations, 4096);
//! assert_eq!(creds.salt.as_slice(), b"c2FsdHNhbHQ");
//! assert_eq!(
//!     django::credentials("argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA").unwrap_err(),
//!     DjangoHashError::Unsupported(HashAlgorithm::Argon2));
//! ```

use core::fmt;

use crate::scram::{Key, Mechanism, ServerCredentials};

/// The algorithm of a Django password hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// `scram_sha256` (django-tether's hasher): the SCRAM-SHA-256 verifier,
    /// not password-equivalent.
    ScramSha256,
    /// `pbkdf2_sha256` (Django's default): SCRAM-SHA-256.
    Pbkdf2Sha256,
    /// `pbkdf2_sha1`: SCRAM-SHA-1.
    Pbkdf2Sha1,
    /// `argon2`.
    Argon2,
    /// `bcrypt_sha256`.
    BcryptSha256,
    /// `bcrypt`.
    Bcrypt,
    /// `scrypt`.
    Scrypt,
    /// `md5` (salted).
    Md5,
    /// `unsalted_md5` (also bare 32 hex digits or `md5$$...`).
    UnsaltedMd5,
    /// `unsalted_sha1` (`sha1$$...`).
    UnsaltedSha1,
    /// `sha1` (salted).
    Sha1,
    /// `crypt`.
    Crypt,
    /// An unusable password (`set_unusable_password()`: starts with `!`, or
    /// empty).
    Unusable,
    /// Something Django does not write by default (a custom hasher).
    Unknown,
}

impl HashAlgorithm {
    /// Identifies the algorithm of an encoded hash as Django's
    /// `identify_hasher` does.
    pub fn identify(encoded: &str) -> Self {
        if encoded.is_empty() || encoded.starts_with('!') {
            return Self::Unusable;
        }
        if (encoded.len() == 32 && !encoded.contains('$'))
            || (encoded.len() == 37 && encoded.starts_with("md5$$"))
        {
            return Self::UnsaltedMd5;
        }
        if encoded.len() == 46 && encoded.starts_with("sha1$$") {
            return Self::UnsaltedSha1;
        }
        match encoded.split('$').next().unwrap_or("") {
            "scram_sha256" => Self::ScramSha256,
            "pbkdf2_sha256" => Self::Pbkdf2Sha256,
            "pbkdf2_sha1" => Self::Pbkdf2Sha1,
            "argon2" => Self::Argon2,
            "bcrypt_sha256" => Self::BcryptSha256,
            "bcrypt" => Self::Bcrypt,
            "scrypt" => Self::Scrypt,
            "md5" => Self::Md5,
            "unsalted_md5" => Self::UnsaltedMd5,
            "unsalted_sha1" => Self::UnsaltedSha1,
            "sha1" => Self::Sha1,
            "crypt" => Self::Crypt,
            _ => Self::Unknown,
        }
    }

    /// Django's name for the algorithm.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram_sha256",
            Self::Pbkdf2Sha256 => "pbkdf2_sha256",
            Self::Pbkdf2Sha1 => "pbkdf2_sha1",
            Self::Argon2 => "argon2",
            Self::BcryptSha256 => "bcrypt_sha256",
            Self::Bcrypt => "bcrypt",
            Self::Scrypt => "scrypt",
            Self::Md5 => "md5",
            Self::UnsaltedMd5 => "unsalted_md5",
            Self::UnsaltedSha1 => "unsalted_sha1",
            Self::Sha1 => "sha1",
            Self::Crypt => "crypt",
            Self::Unusable => "unusable",
            Self::Unknown => "unknown",
        }
    }

    /// The SCRAM mechanism for this algorithm, if it has one.
    pub const fn mechanism(self) -> Option<Mechanism> {
        match self {
            Self::ScramSha256 | Self::Pbkdf2Sha256 => Some(Mechanism::ScramSha256),
            Self::Pbkdf2Sha1 => Some(Mechanism::ScramSha1),
            _ => None,
        }
    }

    /// Whether a copy of such a row lets someone log a device in (it holds
    /// SaltedPassword, from which ClientKey follows). `scram_sha256` rows
    /// hold only H(ClientKey).
    pub const fn is_password_equivalent(self) -> bool {
        matches!(self, Self::Pbkdf2Sha256 | Self::Pbkdf2Sha1)
    }

    /// What an operator can do about an account with this algorithm.
    pub const fn advice(self) -> &'static str {
        match self {
            Self::ScramSha256 | Self::Pbkdf2Sha256 | Self::Pbkdf2Sha1 => "supported",
            Self::Unusable => "the account has no usable password; set one in Django",
            _ => {
                "challenge-response needs a scram_sha256 or PBKDF2 hash: put \
                 django_tether.hashers.ScramSHA256PasswordHasher first in PASSWORD_HASHERS \
                 and have the user log in to the Django site once (Django re-hashes on login), \
                 or set the password again"
            }
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a Django hash cannot be used for a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DjangoHashError {
    /// A real Django algorithm that cannot do challenge-response (including
    /// unusable passwords).
    Unsupported(HashAlgorithm),
    /// A `pbkdf2_*` or `scram_sha256` hash that is not well-formed; the
    /// detail says which part.
    Malformed(&'static str),
}

impl fmt::Display for DjangoHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(a) => write!(
                f,
                "{a} hashes cannot be used for challenge-response: {}",
                a.advice()
            ),
            Self::Malformed(what) => write!(f, "malformed password hash: {what}"),
        }
    }
}

impl core::error::Error for DjangoHashError {}

/// The secret part of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKeys {
    /// `pbkdf2_*`: SaltedPassword (password-equivalent for SCRAM).
    SaltedPassword(Key),
    /// `scram_sha256`: the verifier alone.
    Verifier {
        /// StoredKey = H(ClientKey).
        stored_key: Key,
        /// ServerKey = HMAC(SaltedPassword, "Server Key").
        server_key: Key,
    },
}

/// The parts of a Django hash that SCRAM can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DjangoHash<'a> {
    /// `scram_sha256`, `pbkdf2_sha256` or `pbkdf2_sha1`.
    pub algorithm: HashAlgorithm,
    /// The SCRAM mechanism it serves.
    pub mechanism: Mechanism,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt string (its UTF-8 bytes are the PBKDF2 salt).
    pub salt: &'a str,
    /// SaltedPassword or the verifier.
    pub keys: RowKeys,
}

/// Splits a Django `scram_sha256` / `pbkdf2_*` hash into its parts.
pub fn parse(encoded: &str) -> Result<DjangoHash<'_>, DjangoHashError> {
    let algorithm = HashAlgorithm::identify(encoded);
    let mechanism = algorithm
        .mechanism()
        .filter(|m| m.is_enabled())
        .ok_or(DjangoHashError::Unsupported(algorithm))?;
    let verifier = algorithm == HashAlgorithm::ScramSha256;
    // A scram_sha256 row has 4 fields, the last in base85, which may hold
    // '$'; a pbkdf2 row has 4 fields and no '$' in the last.
    let mut parts = encoded.splitn(if verifier { 4 } else { usize::MAX }, '$');
    let _name = parts.next();
    let iterations = parts
        .next()
        .ok_or(DjangoHashError::Malformed("missing iterations"))?;
    let salt = parts
        .next()
        .ok_or(DjangoHashError::Malformed("missing salt"))?;
    let last = parts.next().ok_or(DjangoHashError::Malformed(if verifier {
        "missing keys"
    } else {
        "missing hash"
    }))?;
    if parts.next().is_some() {
        return Err(DjangoHashError::Malformed("too many fields"));
    }
    let iterations = if !iterations.is_empty()
        && iterations.len() <= 10
        && iterations.bytes().all(|b| b.is_ascii_digit())
    {
        iterations.parse::<u32>().ok().filter(|&i| i > 0)
    } else {
        None
    }
    .ok_or(DjangoHashError::Malformed("iterations"))?;
    if salt.is_empty() {
        return Err(DjangoHashError::Malformed("empty salt"));
    }
    if salt.len() > crate::scram::MAX_SALT_LEN {
        return Err(DjangoHashError::Malformed("salt longer than 64 bytes"));
    }
    let keys = if verifier {
        let mut raw = [0u8; 2 * 32];
        if last.len() != KEYS_B85_LEN {
            return Err(DjangoHashError::Malformed(
                "keys are not 80 base85 characters",
            ));
        }
        crate::b85::decode(last, &mut raw)
            .ok_or(DjangoHashError::Malformed("keys are not base85"))?;
        let (stored, server) = raw.split_at(32);
        RowKeys::Verifier {
            stored_key: Key::from_slice(stored).ok_or(DjangoHashError::Malformed("keys"))?,
            server_key: Key::from_slice(server).ok_or(DjangoHashError::Malformed("keys"))?,
        }
    } else {
        let mut raw = [0u8; 48];
        let n = crate::b64::decode(last, &mut raw)
            .ok_or(DjangoHashError::Malformed("hash is not base64"))?;
        if n != mechanism.key_len() {
            return Err(DjangoHashError::Malformed(
                "hash length does not match its algorithm",
            ));
        }
        RowKeys::SaltedPassword(
            Key::from_slice(&raw[..n]).ok_or(DjangoHashError::Malformed("hash"))?,
        )
    };
    Ok(DjangoHash {
        algorithm,
        mechanism,
        iterations,
        salt,
        keys,
    })
}

/// Longest hash [`make_password`] writes.
pub const MAX_ENCODED_LEN: usize = 160;

/// Makes a Django `pbkdf2_sha256` / `pbkdf2_sha1` hash exactly as Django's
/// `make_password` with that hasher does (runs PBKDF2: slow by design). For
/// provisioning and demos; Django itself remains the normal way to set
/// passwords. `salt` must not contain `$` (Django's salts are alphanumeric).
pub fn make_password(
    mechanism: Mechanism,
    password: &str,
    salt: &str,
    iterations: u32,
) -> Result<heapless::String<MAX_ENCODED_LEN>, DjangoHashError> {
    use core::fmt::Write as _;
    if salt.is_empty() || salt.contains('$') || salt.len() > crate::scram::MAX_SALT_LEN {
        return Err(DjangoHashError::Malformed("salt"));
    }
    if iterations == 0 {
        return Err(DjangoHashError::Malformed("iterations"));
    }
    if !mechanism.is_enabled() {
        return Err(DjangoHashError::Unsupported(HashAlgorithm::Pbkdf2Sha1));
    }
    let salted =
        crate::scram::salted_password(mechanism, password.as_bytes(), salt.as_bytes(), iterations);
    let name = match mechanism {
        Mechanism::ScramSha256 => HashAlgorithm::Pbkdf2Sha256,
        Mechanism::ScramSha1 => HashAlgorithm::Pbkdf2Sha1,
    };
    let mut b64 = [0u8; 44];
    let encoded = crate::b64::encode(salted.as_bytes(), &mut b64)
        .ok_or(DjangoHashError::Malformed("hash"))?;
    let mut out = heapless::String::new();
    write!(out, "{}${iterations}${salt}${}", name.name(), encoded)
        .map_err(|_| DjangoHashError::Malformed("too long"))?;
    Ok(out)
}

/// Characters of a `scram_sha256` row's keys field (64 bytes in base85).
const KEYS_B85_LEN: usize = 80;

/// Makes a `scram_sha256` row exactly as django-tether's
/// `ScramSHA256PasswordHasher` does (runs PBKDF2: slow by design). For
/// provisioning, demos and tests. `salt` must not contain `$`.
pub fn make_scram_sha256(
    password: &str,
    salt: &str,
    iterations: u32,
) -> Result<heapless::String<MAX_ENCODED_LEN>, DjangoHashError> {
    use core::fmt::Write as _;
    if salt.is_empty() || salt.contains('$') || salt.len() > crate::scram::MAX_SALT_LEN {
        return Err(DjangoHashError::Malformed("salt"));
    }
    if iterations == 0 {
        return Err(DjangoHashError::Malformed("iterations"));
    }
    let creds = ServerCredentials::from_salted_password(
        Mechanism::ScramSha256,
        &crate::scram::salted_password(
            Mechanism::ScramSha256,
            password.as_bytes(),
            salt.as_bytes(),
            iterations,
        ),
        salt.as_bytes(),
        iterations,
    )
    .map_err(|_| DjangoHashError::Malformed("salt"))?;
    let mut raw = [0u8; 64];
    raw[..32].copy_from_slice(creds.stored_key.as_bytes());
    raw[32..].copy_from_slice(creds.server_key.as_bytes());
    let mut text = [0u8; KEYS_B85_LEN];
    let keys = crate::b85::encode(&raw, &mut text).ok_or(DjangoHashError::Malformed("keys"))?;
    let mut out = heapless::String::new();
    write!(
        out,
        "{}${iterations}${salt}${keys}",
        HashAlgorithm::ScramSha256.name()
    )
    .map_err(|_| DjangoHashError::Malformed("too long"))?;
    Ok(out)
}

/// The SCRAM verifier for a Django hash: for a `pbkdf2_*` row two HMACs and
/// one hash, for a `scram_sha256` row the stored keys; no PBKDF2 either way.
pub fn credentials(encoded: &str) -> Result<ServerCredentials, DjangoHashError> {
    let h = parse(encoded)?;
    match h.keys {
        RowKeys::SaltedPassword(salted) => ServerCredentials::from_salted_password(
            h.mechanism,
            &salted,
            h.salt.as_bytes(),
            h.iterations,
        )
        .map_err(|_| DjangoHashError::Malformed("salt")),
        RowKeys::Verifier {
            stored_key,
            server_key,
        } => Ok(ServerCredentials {
            mechanism: h.mechanism,
            iterations: h.iterations,
            salt: crate::scram::Salt::from_slice(h.salt.as_bytes())
                .map_err(|_| DjangoHashError::Malformed("salt"))?,
            stored_key,
            server_key,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_django_form_is_identified() {
        let cases = [
            (
                "argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA",
                HashAlgorithm::Argon2,
            ),
            (
                "bcrypt_sha256$$2b$12$abcdefghijklmnopqrstuu",
                HashAlgorithm::BcryptSha256,
            ),
            (
                "bcrypt$$2b$12$abcdefghijklmnopqrstuu",
                HashAlgorithm::Bcrypt,
            ),
            ("scrypt$salt$16384$8$1$aGFzaA==", HashAlgorithm::Scrypt),
            (
                "md5$salt$0123456789abcdef0123456789abcdef",
                HashAlgorithm::Md5,
            ),
            (
                "0123456789abcdef0123456789abcdef",
                HashAlgorithm::UnsaltedMd5,
            ),
            (
                "md5$$0123456789abcdef0123456789abcdef",
                HashAlgorithm::UnsaltedMd5,
            ),
            (
                "sha1$$0123456789abcdef0123456789abcdef01234567",
                HashAlgorithm::UnsaltedSha1,
            ),
            (
                "sha1$salt$0123456789abcdef0123456789abcdef01234567",
                HashAlgorithm::Sha1,
            ),
            ("crypt$$abN/qM.L/H8EQ", HashAlgorithm::Crypt),
            (
                "!Zx1unusablerandomstring0123456789abcdefgh",
                HashAlgorithm::Unusable,
            ),
            ("", HashAlgorithm::Unusable),
            ("whatever$1$2", HashAlgorithm::Unknown),
        ];
        for (encoded, algorithm) in cases {
            assert_eq!(HashAlgorithm::identify(encoded), algorithm, "{encoded}");
            assert_eq!(
                credentials(encoded).unwrap_err(),
                DjangoHashError::Unsupported(algorithm)
            );
        }
    }

    #[test]
    fn scram_sha256_rows_are_verifiers() {
        // django-tether's hasher; its keys hold a '$'.
        let row = "scram_sha256$4096$W22ZaJ0SNY7soEsUEjb6gQ$\
                   vt_+SOVtCQ)lJttKV7ep`)pbrr;5~OJ)YsSqovb@x)itPB5j|lm)9~1>Z-A&$0-jotk%0(fzCZ8V}p;h";
        assert_eq!(HashAlgorithm::identify(row), HashAlgorithm::ScramSha256);
        assert_eq!(HashAlgorithm::ScramSha256.name(), "scram_sha256");
        assert!(!HashAlgorithm::ScramSha256.is_password_equivalent());
        assert!(HashAlgorithm::Pbkdf2Sha256.is_password_equivalent());
        let parsed = parse(row).unwrap();
        assert_eq!(
            (parsed.mechanism, parsed.iterations, parsed.salt),
            (Mechanism::ScramSha256, 4096, "W22ZaJ0SNY7soEsUEjb6gQ")
        );
        let creds = credentials(row).unwrap();
        assert_eq!(
            parsed.keys,
            RowKeys::Verifier {
                stored_key: creds.stored_key,
                server_key: creds.server_key
            }
        );
        assert_eq!(
            make_scram_sha256("pencil", "W22ZaJ0SNY7soEsUEjb6gQ", 4096)
                .unwrap()
                .as_str(),
            row
        );
        assert_eq!(
            credentials(
                &make_password(
                    Mechanism::ScramSha256,
                    "pencil",
                    "W22ZaJ0SNY7soEsUEjb6gQ",
                    4096
                )
                .unwrap()
            )
            .unwrap(),
            creds
        );
        // Django's varchar(128) column holds the row at the largest count.
        let keys = row.rsplit("gQ$").next().unwrap();
        let longest = format!("scram_sha256${}$W22ZaJ0SNY7soEsUEjb6gQ${keys}", u32::MAX);
        assert_eq!(longest.len(), 127);
        assert_eq!(parse(&longest).unwrap().iterations, u32::MAX);
        assert_eq!(
            make_scram_sha256("pw", "a$b", 1),
            Err(DjangoHashError::Malformed("salt"))
        );
    }

    #[cfg(feature = "sha1")]
    #[test]
    fn make_password_matches_django() {
        // Django 5.2.19: make_password("correct horse", "56ryAKpSnLAXlMYo5d2L5x")
        assert_eq!(
            make_password(
                Mechanism::ScramSha256,
                "correct horse",
                "56ryAKpSnLAXlMYo5d2L5x",
                1_000_000
            )
            .unwrap()
            .as_str(),
            crate::scram::tests::DJANGO_52_HASH
        );
        assert_eq!(
            make_password(Mechanism::ScramSha1, "pw", "a$b", 1),
            Err(DjangoHashError::Malformed("salt"))
        );
        let sha1 = make_password(Mechanism::ScramSha1, "pw", "salt", 10).unwrap();
        assert_eq!(credentials(&sha1).unwrap().mechanism, Mechanism::ScramSha1);
    }

    #[cfg(feature = "sha1")]
    #[test]
    fn malformed_pbkdf2_rows_are_errors() {
        let good_hash = "ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWVmZGVhZGJlZWY=";
        let cases = [
            ("pbkdf2_sha256".into(), "missing iterations"),
            ("pbkdf2_sha256$1000".into(), "missing salt"),
            ("pbkdf2_sha256$1000$salt".into(), "missing hash"),
            (
                format!("pbkdf2_sha256$1000$salt${good_hash}$x"),
                "too many fields",
            ),
            (format!("pbkdf2_sha256$0$salt${good_hash}"), "iterations"),
            (format!("pbkdf2_sha256$-1$salt${good_hash}"), "iterations"),
            (
                format!("pbkdf2_sha256$99999999999$salt${good_hash}"),
                "iterations",
            ),
            (format!("pbkdf2_sha256$1000$${good_hash}"), "empty salt"),
            (
                "pbkdf2_sha256$1000$salt$not*base64".into(),
                "hash is not base64",
            ),
            (
                format!("pbkdf2_sha1$1000$salt${good_hash}"),
                "hash length does not match its algorithm",
            ),
        ];
        for (encoded, what) in cases {
            assert_eq!(
                credentials(&encoded).unwrap_err(),
                DjangoHashError::Malformed(what),
                "{encoded}"
            );
        }
    }
}
