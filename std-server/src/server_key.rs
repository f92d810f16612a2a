//! The server's static X25519 key for protocol v2 (docs/PROTOCOL.md v2.4):
//! what devices pin for `Noise_NK`.
//!
//! Kept like the decoy secret ([`crate::secret`]): a file (default
//! `.tether-server-key` in the working directory), mode 0600, created with
//! a fresh key on first start. It holds the current key and, after a
//! rotation, the previous one, which the server still accepts until the
//! operator drops it:
//!
//! ```text
//! current 6f2c...(64 hex digits: the private key)
//! previous 0a91...
//! ```
//!
//! `tether keys --server` prints the public half of the current key.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tether_core::connection::ServerKeys;
use tether_core::noise::StaticKeypair;

fn to_hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The default key file name.
pub const DEFAULT_SERVER_KEY_FILE: &str = ".tether-server-key";

/// Where the key came from (for the startup log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from this file.
    File(PathBuf),
    /// Generated and written to this file.
    Generated(PathBuf),
}

fn invalid(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Reads the key file: the current key and the previous one, if any.
pub fn load(path: &Path) -> std::io::Result<ServerKeys> {
    let text = std::fs::read_to_string(path)?;
    let mut keys = ServerKeys::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| invalid(path, "a line is not `current HEX` or `previous HEX`"))?;
        let secret: [u8; 32] = from_hex(value.trim())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid(path, "a key is not 64 hex digits"))?;
        let pair = StaticKeypair::from_secret(secret);
        let slot = match name {
            "current" => &mut keys.current,
            "previous" => &mut keys.previous,
            _ => {
                return Err(invalid(
                    path,
                    "a line is not `current HEX` or `previous HEX`",
                ));
            }
        };
        if slot.replace(pair).is_some() {
            return Err(invalid(path, "a key is given twice"));
        }
    }
    if keys.current.is_none() {
        return Err(invalid(path, "no `current` key"));
    }
    Ok(keys)
}

/// Reads the key file, or creates it (mode 0600) with a fresh key.
pub fn load_or_create(path: &Path) -> std::io::Result<(ServerKeys, KeyOrigin)> {
    match load(path) {
        Ok(keys) => Ok((keys, KeyOrigin::File(path.to_path_buf()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = ServerKeys {
                current: Some(StaticKeypair::generate(&mut rand::rng())),
                ..ServerKeys::default()
            };
            write(path, &keys, true)?;
            Ok((keys, KeyOrigin::Generated(path.to_path_buf())))
        }
        Err(e) => Err(e),
    }
}

/// Rotation: a fresh current key; the current one becomes the previous
/// (the one before is dropped). Returns the new keys. A server reading the
/// file (at start, on SIGHUP) then serves both, so that devices pinning
/// the old key still log in until [`retire_previous`].
pub fn rotate(path: &Path) -> std::io::Result<ServerKeys> {
    let old = load(path)?;
    let keys = ServerKeys {
        current: Some(StaticKeypair::generate(&mut rand::rng())),
        previous: old.current,
        require_encryption: false,
    };
    replace(path, &keys)?;
    Ok(keys)
}

/// The end of a rotation: drops the previous key, so that devices still
/// pinning it are refused `unknown_key`. Returns the remaining keys and
/// whether there was a previous key to drop.
pub fn retire_previous(path: &Path) -> std::io::Result<(ServerKeys, bool)> {
    let mut keys = load(path)?;
    let dropped = keys.previous.take().is_some();
    if dropped {
        replace(path, &keys)?;
    }
    Ok((keys, dropped))
}

/// Writes `keys` beside `path`, then renames over it: never a half-written
/// key file.
fn replace(path: &Path, keys: &ServerKeys) -> std::io::Result<()> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    write(&tmp, keys, true)?;
    std::fs::rename(&tmp, path)
}

fn write(path: &Path, keys: &ServerKeys, create_new: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(create_new);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(
        file,
        "# tether server static key (X25519, protocol v2); keep secret"
    )?;
    for (name, key) in [("current", &keys.current), ("previous", &keys.previous)] {
        if let Some(key) = key {
            writeln!(file, "{name} {}", to_hex(key.secret()))?;
        }
    }
    file.sync_all()
}

/// The public half of the current key, in hex: what devices pin.
pub fn public_hex(keys: &ServerKeys) -> Option<String> {
    keys.current.as_ref().map(|k| to_hex(k.public()))
}

/// The public half of the previous key, in hex, if the file holds one.
pub fn previous_public_hex(keys: &ServerKeys) -> Option<String> {
    keys.previous.as_ref().map(|k| to_hex(k.public()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_reread_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (a, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, origin) = load_or_create(&path).unwrap();
        assert_eq!(origin, KeyOrigin::File(path.clone()));
        assert_eq!(public_hex(&a), public_hex(&b));
        assert!(b.previous.is_none());

        let c = rotate(&path).unwrap();
        assert_ne!(public_hex(&c), public_hex(&a));
        assert_eq!(
            c.previous.as_ref().map(|k| *k.public()),
            a.current.as_ref().map(|k| *k.public())
        );
        let d = load(&path).unwrap();
        assert_eq!(public_hex(&d), public_hex(&c));
        assert_eq!(
            d.previous.as_ref().map(|k| *k.public()),
            a.current.as_ref().map(|k| *k.public())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let (e, dropped) = retire_previous(&path).unwrap();
        assert!(dropped);
        assert!(e.previous.is_none());
        assert_eq!(public_hex(&e), public_hex(&c));
        let f = load(&path).unwrap();
        assert!(f.previous.is_none());
        assert_eq!(public_hex(&f), public_hex(&c));
        let (_, dropped) = retire_previous(&path).unwrap();
        assert!(!dropped, "nothing left to retire");

        std::fs::write(&path, "current 00\n").unwrap();
        assert!(load(&path).is_err());
        std::fs::write(&path, "previous ".to_string() + &"00".repeat(32)).unwrap();
        assert!(load(&path).is_err(), "no current key");
    }
}
