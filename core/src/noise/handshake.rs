//! The Noise `HandshakeState` (section 5.3) for the patterns of
//! [`Pattern`], processing their tokens as the specification's
//! `WriteMessage` and `ReadMessage` do.

use rand_core::CryptoRng;
#[cfg(not(feature = "precomputed-tables"))]
use x25519_dalek::X25519_BASEPOINT_BYTES;
use x25519_dalek::x25519;
use zeroize::Zeroize;

use super::cipher::CipherState;
use super::symmetric::SymmetricState;
use super::{DHLEN, MAX_MESSAGE_LEN, NoiseError, Pattern, StaticKeypair};

/// A message pattern token (only those of NN and NK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    E,
    Ee,
    Es,
}

impl Pattern {
    /// The tokens of message `index` (0 or 1): [`messages`](Self::messages)
    /// without indexing (so no panic path is flashed).
    fn tokens(self, index: usize) -> &'static [Token] {
        use Token::*;
        match (self, index) {
            (Self::Nn, 0) => &[E],
            (Self::Nk, 0) => &[E, Es],
            _ => &[E, Ee],
        }
    }

    /// The message patterns, after the pre-messages.
    fn messages(self) -> &'static [&'static [Token]] {
        use Token::*;
        match self {
            // -> e
            // <- e, ee
            Self::Nn => &[&[E], &[E, Ee]],
            // <- s
            // ...
            // -> e, es
            // <- e, ee
            Self::Nk => &[&[E, Es], &[E, Ee]],
        }
    }
}

/// The transport states `Split()` returns: initiator to responder first.
pub(crate) type Split = (CipherState, CipherState);

/// A Noise `HandshakeState`.
pub(crate) struct HandshakeState {
    symmetric: SymmetricState,
    pattern: Pattern,
    initiator: bool,
    /// The local static private key (an NK responder's), else zeros.
    s: [u8; DHLEN],
    /// The local ephemeral private key, once generated.
    e: [u8; DHLEN],
    /// The remote static public key (an NK initiator's `rs`), else zeros.
    rs: [u8; DHLEN],
    /// The remote ephemeral public key, once read.
    re: [u8; DHLEN],
    /// Index of the next message pattern.
    next: usize,
}

impl Drop for HandshakeState {
    fn drop(&mut self) {
        self.s.zeroize();
        self.e.zeroize();
    }
}

impl HandshakeState {
    /// `Initialize(handshake_pattern, initiator, prologue, s, e = empty, rs,
    /// re = empty)`. `s` is the responder's key pair for NK; `rs` the
    /// initiator's copy of its public key.
    pub(crate) fn new(
        pattern: Pattern,
        initiator: bool,
        prologue: &[u8],
        s: Option<&StaticKeypair>,
        rs: Option<&[u8; DHLEN]>,
    ) -> Self {
        let mut symmetric = SymmetricState::new(pattern.protocol_name().as_bytes());
        symmetric.mix_hash(prologue);
        // NK's pre-message `<- s`: the responder's static public key (its
        // own for the responder, the pinned copy for the initiator; NN's
        // constructors pass neither).
        if let Some(responder_static) = s.map(StaticKeypair::public).or(rs) {
            symmetric.mix_hash(responder_static);
        }
        Self {
            symmetric,
            pattern,
            initiator,
            s: s.map_or([0; DHLEN], |s| s.secret),
            e: [0; DHLEN],
            rs: rs.copied().unwrap_or([0; DHLEN]),
            re: [0; DHLEN],
            next: 0,
        }
    }

    /// `WriteMessage(payload, message_buffer)`: writes the next message to
    /// `out` and returns its length. After the last message the caller
    /// takes the transport states with [`split`](Self::split).
    pub(crate) fn write_message<R: CryptoRng + ?Sized>(
        &mut self,
        payload: &[u8],
        out: &mut [u8],
        rng: &mut R,
    ) -> Result<usize, NoiseError> {
        self.check_len(payload.len(), out.len())?;
        if let Some(dest) = out.get_mut(DHLEN..DHLEN + payload.len()) {
            dest.copy_from_slice(payload);
        }
        self.write_in_place(payload.len(), out, rng)
    }

    /// The next message's length, if it fits `out_len` bytes and Noise.
    fn check_len(&self, payload_len: usize, out_len: usize) -> Result<usize, NoiseError> {
        let len = self.pattern.message_len(self.next, payload_len);
        if len > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLong {
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        if out_len < len {
            return Err(NoiseError::BufferTooSmall {
                needed: len,
                available: out_len,
            });
        }
        Ok(len)
    }

    /// `WriteMessage` with the payload already at `out[DHLEN..][..payload_len]`
    /// (each message of NN and NK writes one public key, then the payload).
    pub(crate) fn write_in_place<R: CryptoRng + ?Sized>(
        &mut self,
        payload_len: usize,
        out: &mut [u8],
        rng: &mut R,
    ) -> Result<usize, NoiseError> {
        let len = self.check_len(payload_len, out.len())?;
        // Each message of NN and NK starts with `e` (its one public key),
        // then its DH tokens. (`out` holds `len` bytes, checked above: the
        // splits cannot fail, and no panic path is flashed for them.)
        let Some((public, rest)) = out.split_first_chunk_mut::<DHLEN>() else {
            return Err(NoiseError::BufferTooSmall {
                needed: len,
                available: 0,
            });
        };
        for token in self.pattern.tokens(self.next) {
            match token {
                Token::E => {
                    rng.fill_bytes(&mut self.e);
                    // The firmware's line is the ladder as it always was
                    // (no table in flash); servers use the table.
                    #[cfg(not(feature = "precomputed-tables"))]
                    {
                        *public = x25519(self.e, X25519_BASEPOINT_BYTES);
                    }
                    #[cfg(feature = "precomputed-tables")]
                    {
                        *public = super::public_key(self.e);
                    }
                    self.symmetric.mix_hash(public);
                }
                Token::Ee => self.mix_dh(self.e, self.re),
                Token::Es => self.mix_es(),
            }
        }
        let n = DHLEN + self.symmetric.encrypt_and_hash(rest, payload_len)?;
        debug_assert_eq!(n, len);
        self.next += 1;
        Ok(n)
    }

    /// `ReadMessage(message, payload_buffer)`, decrypting the payload in
    /// place: returns the payload (a suffix of `message`). After the last
    /// message the caller takes the transport states with
    /// [`split`](Self::split). On failure nothing in `message` has changed.
    pub(crate) fn read_message<'m>(
        &mut self,
        message: &'m mut [u8],
    ) -> Result<&'m [u8], NoiseError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLong {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let min = self.pattern.message_len(self.next, 0);
        let too_short = NoiseError::TooShort {
            len: message.len(),
            min,
        };
        if message.len() < min {
            return Err(too_short);
        }
        // Each message of NN and NK starts with `e`.
        let Some((re, rest)) = message.split_first_chunk_mut::<DHLEN>() else {
            return Err(too_short);
        };
        for token in self.pattern.tokens(self.next) {
            match token {
                Token::E => {
                    self.re = *re;
                    self.symmetric.mix_hash(re);
                }
                Token::Ee => self.mix_dh(self.e, self.re),
                Token::Es => self.mix_es(),
            }
        }
        let payload = self.symmetric.decrypt_and_hash(rest)?;
        self.next += 1;
        Ok(payload)
    }

    /// The pattern being run.
    pub(crate) fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// `GetHandshakeHash()`.
    pub(crate) fn handshake_hash(&self) -> [u8; 32] {
        self.symmetric.handshake_hash()
    }

    /// For `"es"`: `DH(e, rs)` for the initiator, `DH(s, re)` for the
    /// responder.
    fn mix_es(&mut self) {
        if self.initiator {
            self.mix_dh(self.e, self.rs);
        } else {
            self.mix_dh(self.s, self.re);
        }
    }

    /// `MixKey(DH(private, public))`.
    fn mix_dh(&mut self, mut private: [u8; DHLEN], public: [u8; DHLEN]) {
        let mut shared = x25519(private, public);
        self.symmetric.mix_key(&shared);
        shared.zeroize();
        private.zeroize();
    }

    /// `Split()`, once the last message is written or read (the typed
    /// steps of `noise` call it only then).
    pub(crate) fn split(&self) -> Split {
        debug_assert_eq!(self.next, self.pattern.messages().len());
        self.symmetric.split()
    }
}

impl Pattern {
    /// Bytes of handshake message `index` (0 or 1) carrying a payload of
    /// `payload_len` bytes: its public keys, the payload, and a tag when the
    /// payload is encrypted.
    pub const fn message_len(self, index: usize, payload_len: usize) -> usize {
        let encrypted = !matches!((self, index), (Self::Nn, 0));
        DHLEN + payload_len + if encrypted { super::TAG_LEN } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_the_message_patterns() {
        for pattern in [Pattern::Nn, Pattern::Nk] {
            let messages = pattern.messages();
            assert_eq!(messages.len(), 2);
            for (index, tokens) in messages.iter().enumerate() {
                assert_eq!(
                    pattern.tokens(index),
                    *tokens,
                    "{pattern:?} message {index}"
                );
            }
        }
    }
}
