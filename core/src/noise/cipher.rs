//! The Noise `CipherState` (section 5.1) over `ChaChaPoly` (section 12.3).

use core::fmt;

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit};
use zeroize::Zeroize;

use super::{NoiseError, TAG_LEN};

/// A Noise `CipherState`: a ChaCha20-Poly1305 key `k` and a 64-bit nonce
/// `n` (revision 34, section 5.1).
///
/// After the handshake each side holds two, one per direction; they encrypt
/// transport messages with zero-length associated data. The key is wiped
/// when the state is dropped. A clone shares the key and the nonce: encrypt
/// with only one of them.
#[derive(Clone)]
pub struct CipherState {
    /// `None` is the specification's `empty`: before the first `MixKey`.
    k: Option<[u8; 32]>,
    n: u64,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("k", &self.k.as_ref().map(|_| "<redacted>"))
            .field("n", &self.n)
            .finish()
    }
}

impl Drop for CipherState {
    fn drop(&mut self) {
        self.k.zeroize();
    }
}

impl CipherState {
    /// `InitializeKey(empty)`.
    pub(crate) const fn empty() -> Self {
        Self { k: None, n: 0 }
    }

    /// `InitializeKey(key)`: sets `k = key`, `n = 0`.
    pub(crate) fn initialize_key(&mut self, key: [u8; 32]) {
        self.k.zeroize();
        self.k = Some(key);
        self.n = 0;
    }

    /// The nonce the next encryption or decryption uses (for a transport
    /// state: how many messages went through it so far).
    pub fn nonce(&self) -> u64 {
        self.n
    }

    /// `SetNonce(nonce)`: for a protocol that carries each message's
    /// nonce explicitly (section 11.4). On a receiving state, the caller
    /// must reject nonces that already decrypted a message, or replays go
    /// through; on a sending state, moving the nonce back reuses a nonce
    /// under the same key, which breaks ChaCha20-Poly1305: never do that.
    pub fn set_nonce(&mut self, nonce: u64) {
        self.n = nonce;
    }

    /// `EncryptWithAd(ad, plaintext)` in place: the plaintext is
    /// `buf[..len]`, and the ciphertext and its 16-byte tag replace it in
    /// `buf[..len + 16]`; returns `len + 16`. Without a key (handshake only)
    /// the plaintext is left as it is and `len` returned.
    ///
    /// # Errors
    /// [`NoiseError::BufferTooSmall`] when `buf` has no room for the tag,
    /// [`NoiseError::NonceExhausted`] when `n` reached 2^64 - 1.
    pub fn encrypt_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, NoiseError> {
        let Some(k) = &self.k else {
            return Ok(len);
        };
        let needed = len + TAG_LEN;
        let too_small = NoiseError::BufferTooSmall {
            needed,
            available: buf.len(),
        };
        // (Checked splits: no panic path is flashed.)
        let Some((text, tag_out)) = buf
            .get_mut(..needed)
            .and_then(|b| b.split_last_chunk_mut::<TAG_LEN>())
        else {
            return Err(too_small);
        };
        let n = self.next_nonce()?;
        let tag = aead(k)
            .encrypt_inout_detached(&nonce(n), ad, text.into())
            // Only for plaintexts over 256 GiB, which no buffer here holds.
            .map_err(|_| NoiseError::TooLong {
                len,
                max: super::MAX_MESSAGE_LEN,
            })?;
        *tag_out = tag.into();
        self.n = n + 1;
        Ok(needed)
    }

    /// `DecryptWithAd(ad, ciphertext)` in place: `buf` is the ciphertext
    /// with its tag; returns the plaintext, a prefix of `buf`. On failure `n`
    /// is not incremented and `buf` is left as it was (the tag is checked
    /// before anything is decrypted). Without a key (handshake only) `buf`
    /// is returned as it is.
    ///
    /// # Errors
    /// [`NoiseError::Decrypt`] when the ciphertext is not authentic under
    /// this key and nonce (including one shorter than a tag),
    /// [`NoiseError::NonceExhausted`] when `n` reached 2^64 - 1.
    pub fn decrypt_with_ad<'b>(
        &mut self,
        ad: &[u8],
        buf: &'b mut [u8],
    ) -> Result<&'b mut [u8], NoiseError> {
        let Some(k) = &self.k else {
            return Ok(buf);
        };
        let n = self.next_nonce()?;
        let Some((text, tag)) = buf.split_last_chunk_mut::<TAG_LEN>() else {
            return Err(NoiseError::Decrypt);
        };
        let tag: &[u8; TAG_LEN] = tag;
        aead(k)
            .decrypt_inout_detached(&nonce(n), ad, (&mut *text).into(), tag.into())
            .map_err(|_| NoiseError::Decrypt)?;
        self.n = n + 1;
        Ok(text)
    }

    /// The current nonce, unless it is the reserved 2^64 - 1.
    fn next_nonce(&self) -> Result<u64, NoiseError> {
        if self.n == u64::MAX {
            Err(NoiseError::NonceExhausted)
        } else {
            Ok(self.n)
        }
    }
}

fn aead(k: &[u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(k.into())
}

/// ChaChaPoly's 96-bit nonce: 32 bits of zeros, then `n` little-endian.
fn nonce(n: u64) -> chacha20poly1305::Nonce {
    let mut out = [0u8; 12];
    out[4..].copy_from_slice(&n.to_le_bytes());
    out.into()
}
