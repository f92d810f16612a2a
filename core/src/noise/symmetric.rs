//! The Noise `SymmetricState` (section 5.2) over `SHA256` (section 12.5),
//! with `HKDF` (section 4.3) over the core's HMAC-SHA-256.

use zeroize::Zeroize;

use super::NoiseError;
use super::cipher::CipherState;
use crate::sha256::{hmac_sha256 as hmac, sha256};

/// `HASHLEN` of SHA-256.
pub(crate) const HASHLEN: usize = 32;

/// A Noise `SymmetricState`: the chaining key `ck`, the handshake hash `h`
/// and the handshake's `CipherState`.
#[derive(Clone)]
pub(crate) struct SymmetricState {
    ck: [u8; HASHLEN],
    h: [u8; HASHLEN],
    cipher: CipherState,
}

impl Drop for SymmetricState {
    fn drop(&mut self) {
        self.ck.zeroize();
    }
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`.
    pub(crate) fn new(protocol_name: &[u8]) -> Self {
        let mut h = [0u8; HASHLEN];
        if protocol_name.len() <= HASHLEN {
            h[..protocol_name.len()].copy_from_slice(protocol_name);
        } else {
            h = sha256(&[protocol_name]);
        }
        Self {
            ck: h,
            h,
            cipher: CipherState::empty(),
        }
    }

    /// `MixKey(input_key_material)`.
    pub(crate) fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, temp_k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        // HASHLEN is 32: nothing to truncate.
        self.cipher.initialize_key(temp_k);
    }

    /// `MixHash(data)`.
    pub(crate) fn mix_hash(&mut self, data: &[u8]) {
        self.h = sha256(&[&self.h, data]);
    }

    /// `GetHandshakeHash()`.
    pub(crate) fn handshake_hash(&self) -> [u8; HASHLEN] {
        self.h
    }

    /// `EncryptAndHash(plaintext)` in place: the plaintext is `buf[..len]`;
    /// returns the ciphertext's length.
    pub(crate) fn encrypt_and_hash(
        &mut self,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, NoiseError> {
        let h = self.h;
        let n = self.cipher.encrypt_with_ad(&h, buf, len)?;
        // (`n` <= `buf.len()`: the `get` cannot fail, and no panic path is
        // flashed for it.)
        self.mix_hash(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    /// `DecryptAndHash(ciphertext)` in place: `buf` is the ciphertext;
    /// returns the plaintext, a prefix of `buf`. `h` changes only on
    /// success, so a failed attempt leaves the state as it was.
    pub(crate) fn decrypt_and_hash<'b>(
        &mut self,
        buf: &'b mut [u8],
    ) -> Result<&'b mut [u8], NoiseError> {
        // MixHash hashes the ciphertext, which decryption overwrites.
        let next_h = sha256(&[&self.h, buf]);
        let h = self.h;
        let plaintext = self.cipher.decrypt_with_ad(&h, buf)?;
        self.h = next_h;
        Ok(plaintext)
    }

    /// `Split()`: the initiator-to-responder and responder-to-initiator
    /// transport states.
    pub(crate) fn split(&self) -> (CipherState, CipherState) {
        let (k1, k2) = hkdf2(&self.ck, &[]);
        let mut c1 = CipherState::empty();
        let mut c2 = CipherState::empty();
        c1.initialize_key(k1);
        c2.initialize_key(k2);
        (c1, c2)
    }
}

/// `HKDF(chaining_key, input_key_material, 2)`.
fn hkdf2(ck: &[u8; HASHLEN], ikm: &[u8]) -> ([u8; HASHLEN], [u8; HASHLEN]) {
    let mut temp_key = hmac(ck, &[ikm]);
    let out1 = hmac(&temp_key, &[&[0x01]]);
    let out2 = hmac(&temp_key, &[&out1, &[0x02]]);
    temp_key.zeroize();
    (out1, out2)
}
