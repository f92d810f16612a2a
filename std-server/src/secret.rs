//! The server secret behind decoy challenges.
//!
//! An unknown (or inactive, or unauthorised) username gets a challenge
//! whose salt is derived from this secret and the username
//! ([`tether_core::scram::ServerCredentials::decoy`]), so it is the same on
//! every attempt, like a real account's, and cannot be predicted without
//! the secret. It must therefore survive restarts: a decoy salt that
//! changed on restart would tell unknown users from real ones.
//!
//! Where it comes from, in this order:
//! 1. a configured value (`--secret` / `TETHER_SECRET`): its bytes are the
//!    key, used as is (Django's `SECRET_KEY` is a fine choice);
//! 2. a secret file (`--secret-file`, default `.tether-secret` in the
//!    working directory): 32 random bytes, hex-encoded; generated and
//!    written (mode 0600) on first start when missing;
//! 3. if the file cannot be written, a random in-memory secret, with a
//!    warning (decoys then change on restart).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::Rng as _;

/// The default secret file name.
pub const DEFAULT_SECRET_FILE: &str = ".tether-secret";

/// The decoy secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSecret(Vec<u8>);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

/// Where a secret came from (for the startup log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    /// A configured value.
    Configured,
    /// Read from this file.
    File(PathBuf),
    /// Generated and written to this file.
    Generated(PathBuf),
    /// Random, kept in memory only.
    Ephemeral,
}

impl ServerSecret {
    /// A secret from a configured value (at least 16 bytes).
    pub fn from_value(value: &str) -> Result<Self, String> {
        if value.len() < 16 {
            return Err("the server secret must be at least 16 characters".into());
        }
        Ok(Self(value.as_bytes().to_vec()))
    }

    /// A fresh random secret.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Reads the secret file, or creates it with a fresh secret.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, SecretOrigin)> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} does not hold a hex secret", path.display()),
                    )
                })?;
                if bytes.len() < 16 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} holds fewer than 16 bytes", path.display()),
                    ));
                }
                Ok((Self(bytes), SecretOrigin::File(path.to_path_buf())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = Self::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    options.mode(0o600);
                }
                let mut file = options.open(path)?;
                writeln!(file, "{}", hex::encode(&secret.0))?;
                Ok((secret, SecretOrigin::Generated(path.to_path_buf())))
            }
            Err(e) => Err(e),
        }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_is_created_once_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (a, origin) = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(origin, SecretOrigin::Generated(path.clone()));
        let (b, origin) = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(origin, SecretOrigin::File(path.clone()));
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(ServerSecret::from_value("short").is_err());
    }
}
