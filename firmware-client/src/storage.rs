//! Keys kept in flash (feature `storage`): the device's username and its
//! [`CachedKeys`] in a small region of NOR flash, so that later boots log in
//! without PBKDF2 and a factory can provision a device without its password.
//!
//! [`KeyStore`] is a [`sequential-storage`](sequential_storage) map over any
//! `embedded-storage-async` [`NorFlash`] (embassy-stm32's and embassy-rp's
//! flash drivers, esp-storage through `BlockingAsync`), in at least two
//! erase pages of its own. Every record carries sequential-storage's CRC-32
//! of its bytes and a CRC-16 of its length; writes only append, and a page
//! is erased only after its live record was copied forward. So a power cut
//! at any point of [`KeyStore::save`] leaves either the previous record or
//! the new one: a half-written record fails its CRC and is never returned
//! (`tests/storage.rs` cuts the power at every word written and at every
//! erase, then reboots and checks this).
//!
//! The record is one byte of format version ([`FORMAT`]), then the
//! username (a length byte and UTF-8) and, when there are keys, a byte 1,
//! the mechanism (0 SCRAM-SHA-256, 1 SCRAM-SHA-1), the iteration count
//! (u32, little-endian), and the salt, ClientKey and ServerKey (each a
//! length byte and the bytes); a byte 0 when there are none. About 110
//! bytes for a Django salt of 22 characters. It is written by hand rather
//! than with postcard: serde's decoder for the two 32-byte keys alone was
//! 1 KiB of flash.
//!
//! ```no_run
//! # async fn boot<F: embedded_storage_async::nor_flash::NorFlash>(flash: F) {
//! use tether_firmware::storage::KeyStore;
//! // The last two 4 KiB sectors of a 2 MiB flash, as offsets into `flash`.
//! let mut store = KeyStore::new(flash, 0x1F_E000..0x20_0000).unwrap();
//! match store.load().await {
//!     Ok(Some(stored)) => { /* log in as stored.username with stored.keys */ }
//!     Ok(None) => { /* not provisioned: derive keys from a password, then save them */ }
//!     Err(e) => { /* the flash driver failed, or a record of another format */ }
//! }
//! # }
//! ```
//!
//! Cost, measured on the NUCLEO-F429ZI example (`mcu/nucleo-f429zi/size`):
//! 13 KiB of flash (sequential-storage's map with its CRCs and repair about
//! 7 KiB, this module's record codec, embassy-stm32's flash driver) and
//! 816 bytes of static RAM (the store's [`RECORD_BUFFER`]-byte buffer and
//! the [`Stored`] record the example keeps).

use core::fmt;
use core::ops::Range;

use embedded_storage_async::nor_flash::NorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapConfigError, MapStorage, SerializationError, Value};
use tether_core::scram::{CachedKeys, Key, Mechanism, Salt};

#[cfg(feature = "std")]
mod ram;
#[cfg(feature = "std")]
pub use ram::{PowerCut, RamFlash, RamFlashError};

/// Format version of the record (its first byte). A record of another
/// version is reported as [`StorageError::UnknownFormat`], never guessed at.
pub const FORMAT: u8 = 1;

/// The longest username a record holds, in bytes (Django's `username` is at
/// most 150 characters; this many bytes covers every ASCII one).
pub const MAX_USERNAME_LEN: usize = 150;

/// Size of the store's record buffer: the key, the longest record (format,
/// username, keys with a 64-byte salt) and room to round it up to a flash
/// word of up to 32 bytes.
pub const RECORD_BUFFER: usize = 352;

/// The map key of the one record.
const ACCOUNT: u8 = 0;

/// `SerializationError::Custom` code for a record of another format version.
const OTHER_FORMAT: i32 = 1;

/// The username of a stored account.
pub type Username = heapless::String<MAX_USERNAME_LEN>;

/// What a [`KeyStore`] holds: who the device is and, once derived or
/// provisioned, its keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    /// The Django username the device logs in as.
    pub username: Username,
    /// Keys for [`ClientCredentials::Keys`](tether_core::scram::ClientCredentials::Keys);
    /// `None` after [`KeyStore::forget_keys`] (stale keys dropped, username kept).
    pub keys: Option<CachedKeys>,
}

impl fmt::Debug for Stored {
    // No key bytes in logs: `CachedKeys`' own Debug shows none either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("username", &self.username.as_str())
            .field("keys", &self.keys)
            .finish()
    }
}

/// Why the store could not load or save.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError<E> {
    /// The flash driver failed (`E` is its error).
    Flash(E),
    /// The flash range does not fit the flash: it must start and end on
    /// erase-page boundaries and span at least two pages.
    Range(MapConfigError),
    /// The region holds data sequential-storage could not repair (not a
    /// key store, or written by an incompatible version of it). Erase the
    /// region ([`KeyStore::erase_all`]) and provision the device again.
    Corrupted,
    /// The record was written in another format version (the byte given):
    /// firmware and provisioning tool disagree.
    UnknownFormat(u8),
    /// The record passed its CRC but does not decode as a username and
    /// keys: it was not written by this module.
    Invalid,
    /// The username is longer than [`MAX_USERNAME_LEN`] bytes.
    UsernameTooLong,
    /// The region is too small for the record (sequential-storage needs
    /// room for a record in each of two pages).
    TooSmall,
}

impl<E: fmt::Debug> fmt::Display for StorageError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flash(e) => write!(f, "key store: flash error: {e:?}"),
            Self::Range(e) => write!(f, "key store: bad flash range: {e:?}"),
            Self::Corrupted => f.write_str(
                "key store: the region holds unrepairable data; erase it and provision again",
            ),
            Self::UnknownFormat(v) => write!(
                f,
                "key store: record format {v}, this firmware reads format {FORMAT}"
            ),
            Self::Invalid => f.write_str("key store: the record does not decode"),
            Self::UsernameTooLong => write!(
                f,
                "key store: username longer than {MAX_USERNAME_LEN} bytes"
            ),
            Self::TooSmall => f.write_str("key store: the flash region is too small"),
        }
    }
}

#[cfg(feature = "defmt")]
impl<E> defmt::Format for StorageError<E> {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Self::Flash(_) => defmt::write!(f, "key store: flash error"),
            Self::Range(_) => defmt::write!(f, "key store: bad flash range"),
            Self::Corrupted => defmt::write!(f, "key store: unrepairable data in the region"),
            Self::UnknownFormat(v) => defmt::write!(f, "key store: record format {}", v),
            Self::Invalid => defmt::write!(f, "key store: the record does not decode"),
            Self::UsernameTooLong => defmt::write!(f, "key store: username too long"),
            Self::TooSmall => defmt::write!(f, "key store: region too small"),
        }
    }
}

impl<E> From<sequential_storage::Error<E>> for StorageError<E> {
    fn from(e: sequential_storage::Error<E>) -> Self {
        use sequential_storage::Error as S;
        match e {
            S::Storage { value, .. } => Self::Flash(value),
            // `load` reports a record of another version itself, with the
            // version byte it found.
            S::SerializationError(_) => Self::Invalid,
            S::FullStorage | S::ItemTooBig | S::BufferTooSmall(_) | S::BufferTooBig => {
                Self::TooSmall
            }
            _ => Self::Corrupted,
        }
    }
}

/// The record as sequential-storage sees it: encoded on save, decoded
/// (borrowing the username from the read buffer) on load.
struct Record<'a> {
    username: &'a str,
    keys: Option<CachedKeys>,
}

/// Appends `bytes`.
fn put(out: &mut [u8], at: &mut usize, bytes: &[u8]) -> Result<(), SerializationError> {
    let end = *at + bytes.len();
    out.get_mut(*at..end)
        .ok_or(SerializationError::BufferTooSmall)?
        .copy_from_slice(bytes);
    *at = end;
    Ok(())
}

/// Appends `bytes` after a length byte.
fn put_bytes(out: &mut [u8], at: &mut usize, bytes: &[u8]) -> Result<(), SerializationError> {
    let len = u8::try_from(bytes.len()).map_err(|_| SerializationError::InvalidData)?;
    put(out, at, &[len])?;
    put(out, at, bytes)
}

/// Reads a length byte and that many bytes.
fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], SerializationError> {
    let (&len, rest) = input
        .split_first()
        .ok_or(SerializationError::InvalidFormat)?;
    if rest.len() < len as usize {
        return Err(SerializationError::InvalidFormat);
    }
    let (bytes, rest) = rest.split_at(len as usize);
    *input = rest;
    Ok(bytes)
}

fn take_byte(input: &mut &[u8]) -> Result<u8, SerializationError> {
    let (&b, rest) = input
        .split_first()
        .ok_or(SerializationError::InvalidFormat)?;
    *input = rest;
    Ok(b)
}

impl<'a> Value<'a> for Record<'a> {
    fn serialize_into(&self, buffer: &mut [u8]) -> Result<usize, SerializationError> {
        let mut at = 0;
        put(buffer, &mut at, &[FORMAT])?;
        put_bytes(buffer, &mut at, self.username.as_bytes())?;
        match &self.keys {
            None => put(buffer, &mut at, &[0])?,
            Some(k) => {
                let mechanism = match k.mechanism {
                    Mechanism::ScramSha256 => 0,
                    Mechanism::ScramSha1 => 1,
                };
                put(buffer, &mut at, &[1, mechanism])?;
                put(buffer, &mut at, &k.iterations.to_le_bytes())?;
                put_bytes(buffer, &mut at, &k.salt)?;
                put_bytes(buffer, &mut at, k.client_key.as_bytes())?;
                put_bytes(buffer, &mut at, k.server_key.as_bytes())?;
            }
        }
        Ok(at)
    }

    fn deserialize_from(buffer: &'a [u8]) -> Result<(Self, usize), SerializationError> {
        let mut input = buffer;
        if take_byte(&mut input)? != FORMAT {
            return Err(SerializationError::Custom(OTHER_FORMAT));
        }
        let username = core::str::from_utf8(take_bytes(&mut input)?)
            .map_err(|_| SerializationError::InvalidFormat)?;
        let keys = match take_byte(&mut input)? {
            0 => None,
            1 => {
                let mechanism = match take_byte(&mut input)? {
                    0 => Mechanism::ScramSha256,
                    1 => Mechanism::ScramSha1,
                    _ => return Err(SerializationError::InvalidFormat),
                };
                let mut iterations = [0u8; 4];
                for b in &mut iterations {
                    *b = take_byte(&mut input)?;
                }
                let salt = Salt::from_slice(take_bytes(&mut input)?)
                    .map_err(|_| SerializationError::InvalidFormat)?;
                let mut key = || {
                    Key::from_slice(take_bytes(&mut input)?)
                        .ok_or(SerializationError::InvalidFormat)
                };
                let (client_key, server_key) = (key()?, key()?);
                Some(CachedKeys {
                    mechanism,
                    iterations: u32::from_le_bytes(iterations),
                    salt,
                    client_key,
                    server_key,
                })
            }
            _ => return Err(SerializationError::InvalidFormat),
        };
        if !input.is_empty() {
            return Err(SerializationError::InvalidFormat);
        }
        Ok((Record { username, keys }, buffer.len()))
    }
}

/// A word-aligned record buffer (internal flash drivers may need aligned
/// source data).
#[repr(C, align(32))]
struct RecordBuffer([u8; RECORD_BUFFER]);

/// The device's account in flash: see the [module docs](self).
pub struct KeyStore<F: NorFlash> {
    map: MapStorage<u8, F, Cache<Uncached, Uncached, Uncached, u8>>,
    buf: RecordBuffer,
}

impl<F: NorFlash> KeyStore<F> {
    /// A store in `range` of `flash` (offsets as the driver takes them):
    /// whole erase pages, at least two, used by nothing else. Nothing is
    /// read or written until the first call.
    pub fn new(flash: F, range: Range<u32>) -> Result<Self, StorageError<F::Error>> {
        let config = MapConfig::try_new(range).map_err(StorageError::Range)?;
        Ok(Self {
            map: MapStorage::new(flash, config, Cache::new_uncached()),
            buf: RecordBuffer([0; RECORD_BUFFER]),
        })
    }

    /// The stored account, or `None` when the region holds no record yet
    /// (erased flash). Only a record whose CRC checks is returned.
    pub async fn load(&mut self) -> Result<Option<Stored>, StorageError<F::Error>> {
        let record = match self
            .map
            .fetch_item::<Record<'_>>(&mut self.buf.0, &ACCOUNT)
            .await
        {
            Ok(record) => record,
            // The key byte comes first in the buffer, then the record:
            // report the version that was found.
            Err(sequential_storage::Error::SerializationError(SerializationError::Custom(
                OTHER_FORMAT,
            ))) => return Err(StorageError::UnknownFormat(self.buf.0[1])),
            Err(e) => return Err(e.into()),
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let username =
            Username::try_from(record.username).map_err(|_| StorageError::UsernameTooLong)?;
        Ok(Some(Stored {
            username,
            keys: record.keys,
        }))
    }

    /// Saves `username` and `keys` (replacing what was there). When it
    /// returns `Ok` the record is in flash; if the power fails before, the
    /// previous record stays the one [`load`](Self::load) returns.
    pub async fn save(
        &mut self,
        username: &str,
        keys: Option<&CachedKeys>,
    ) -> Result<(), StorageError<F::Error>> {
        if username.len() > MAX_USERNAME_LEN {
            return Err(StorageError::UsernameTooLong);
        }
        let record = Record {
            username,
            keys: keys.cloned(),
        };
        self.map
            .store_item(&mut self.buf.0, &ACCOUNT, &record)
            .await
            .map_err(Into::into)
    }

    /// Drops the keys and keeps the username: for keys that went stale
    /// (the account's password was changed or Django re-hashed it), so that
    /// the next boot does not try them again.
    pub async fn forget_keys(&mut self) -> Result<(), StorageError<F::Error>> {
        let Some(stored) = self.load().await? else {
            return Ok(());
        };
        if stored.keys.is_none() {
            return Ok(());
        }
        self.save(&stored.username, None).await
    }

    /// Erases the whole region: the device is unprovisioned afterwards.
    pub async fn erase_all(&mut self) -> Result<(), StorageError<F::Error>> {
        self.map.erase_all().await.map_err(Into::into)
    }

    /// The flash driver back.
    pub fn into_inner(self) -> F {
        self.map.destroy().0
    }
}
