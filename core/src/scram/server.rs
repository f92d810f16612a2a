//! The server side: what tether-server runs for each login, from the
//! verifier it read from the credential store.

use core::fmt::Write as _;

use rand_core::CryptoRng;

use super::{
    Key, MAX_NONCE_LEN, NONCE_BYTES, ScramError, ServerCredentials, attr, auth_message, decode_b64,
    hash, hmac, is_printable, push, push_b64, session_key, unescape, xor,
};
use crate::session::SessionKeys;

/// First server state: the client-first-message is parsed; the username is
/// known and the caller looks up its credentials.
///
/// `N` bounds the client-first-message-bare and the username.
pub struct ServerLogin<const N: usize = 512> {
    bare: heapless::String<N>,
    username: heapless::String<N>,
    /// base64 of the GS2 header the client sent (`c=` must echo it).
    gs2_b64: &'static str,
    /// Byte range of the client nonce in `bare`.
    nonce: (usize, usize),
}

impl<const N: usize> ServerLogin<N> {
    /// Parses a v2 client-first-message, which must carry the GS2 header
    /// [`GS2_NOISE`](super::GS2_NOISE) (any other is
    /// [`ScramError::ChannelBindingUnsupported`]); its proof is checked
    /// with [`ServerChallengeSent::verify_bound`].
    #[cfg(feature = "v2")]
    pub fn new_bound(client_first: &str) -> Result<Self, ScramError> {
        let bare = client_first
            .strip_prefix(super::GS2_NOISE)
            .ok_or(ScramError::ChannelBindingUnsupported)?;
        let mut login = Self::parse(bare)?;
        // Empty: bound to a Noise session, which `verify` never accepts.
        login.gs2_b64 = "";
        Ok(login)
    }

    /// Parses the client-first-message.
    pub fn new(client_first: &str) -> Result<Self, ScramError> {
        let (gs2_b64, rest) = if let Some(rest) = client_first.strip_prefix("n,") {
            ("biws", rest)
        } else if let Some(rest) = client_first.strip_prefix("y,") {
            // The client could bind but believes we cannot: fine without TLS.
            ("eSws", rest)
        } else if client_first.starts_with("p=") {
            return Err(ScramError::ChannelBindingUnsupported);
        } else {
            return Err(ScramError::Malformed("GS2 header"));
        };
        let bare = if let Some(bare) = rest.strip_prefix(',') {
            bare
        } else if rest.starts_with("a=") {
            return Err(ScramError::AuthzidUnsupported);
        } else {
            return Err(ScramError::Malformed("GS2 header"));
        };
        let mut login = Self::parse(bare)?;
        login.gs2_b64 = gs2_b64;
        Ok(login)
    }

    /// Parses a client-first-message-bare.
    fn parse(bare: &str) -> Result<Self, ScramError> {
        if bare.starts_with("m=") {
            return Err(ScramError::ExtensionUnsupported);
        }
        let mut fields = bare;
        let escaped = attr(&mut fields, b'n', "username")?;
        let nonce = attr(&mut fields, b'r', "client nonce")?;
        if escaped.is_empty() {
            return Err(ScramError::Malformed("empty username"));
        }
        if !is_printable(nonce) || nonce.len() > MAX_NONCE_LEN / 2 {
            return Err(ScramError::Malformed("client nonce"));
        }
        let mut username = heapless::String::new();
        unescape(escaped, &mut username)?;
        let start = nonce.as_ptr() as usize - bare.as_ptr() as usize;
        let mut owned = heapless::String::new();
        push(&mut owned, &[bare])?;
        Ok(Self {
            bare: owned,
            username,
            gs2_b64: "biws",
            nonce: (start, start + nonce.len()),
        })
    }

    /// The username the client logs in as (unescaped).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Answers with a server-first-message for `credentials` (the account's
    /// verifier, or a decoy for an unknown user) and a fresh server nonce.
    pub fn challenge<R: CryptoRng + ?Sized>(
        self,
        credentials: &ServerCredentials,
        rng: &mut R,
    ) -> Result<ServerChallengeSent<N>, ScramError> {
        let mut raw = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut raw);
        let mut nonce = heapless::String::<32>::new();
        push_b64(&mut nonce, &raw)?;
        self.challenge_with_nonce(credentials, &nonce)
    }

    /// As [`Self::challenge`] with a given server nonce: for test vectors
    /// only.
    pub fn challenge_with_nonce(
        self,
        credentials: &ServerCredentials,
        server_nonce: &str,
    ) -> Result<ServerChallengeSent<N>, ScramError> {
        if !credentials.mechanism.is_enabled() {
            return Err(ScramError::MechanismDisabled);
        }
        if !is_printable(server_nonce) || server_nonce.len() > MAX_NONCE_LEN / 2 {
            return Err(ScramError::Malformed("server nonce"));
        }
        let mut first = heapless::String::<256>::new();
        push(
            &mut first,
            &[
                "r=",
                &self.bare[self.nonce.0..self.nonce.1],
                server_nonce,
                ",s=",
            ],
        )?;
        let nonce_end = 2 + self.nonce.1 - self.nonce.0 + server_nonce.len();
        push_b64(&mut first, &credentials.salt)?;
        write!(first, ",i={}", credentials.iterations).map_err(|_| ScramError::TooLong)?;
        Ok(ServerChallengeSent {
            login: self,
            server_first: first,
            nonce_end,
            credentials: credentials.clone(),
        })
    }
}

/// Second server state: the challenge is out; waiting for the proof.
pub struct ServerChallengeSent<const N: usize = 512> {
    login: ServerLogin<N>,
    server_first: heapless::String<256>,
    nonce_end: usize,
    credentials: ServerCredentials,
}

impl<const N: usize> ServerChallengeSent<N> {
    /// The RFC 5802 server-first-message to send.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// The username the client logs in as.
    pub fn username(&self) -> &str {
        self.login.username()
    }

    /// Checks the client-final-message. On success returns the
    /// server-final-message (the server's proof) and the session keys.
    pub fn verify(self, client_final: &str) -> Result<ServerSuccess<N>, ScramError> {
        let gs2_b64 = self.login.gs2_b64;
        #[cfg(feature = "v2")]
        if gs2_b64.is_empty() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        self.check(client_final, gs2_b64)
    }

    /// Checks the client-final-message of a v2 login
    /// ([`ServerLogin::new_bound`]): its `c=` must carry this side's Noise
    /// handshake hash `h` ([`ScramError::ChannelBindingMismatch`] if not: a
    /// relay between two Noise sessions), and its proof must be good.
    #[cfg(feature = "v2")]
    pub fn verify_bound(
        self,
        client_final: &str,
        h: &[u8; 32],
    ) -> Result<ServerSuccess<N>, ScramError> {
        if !self.login.gs2_b64.is_empty() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        self.check(client_final, &super::client::noise_binding(h))
    }

    fn check(
        self,
        client_final: &str,
        expected_cbind: &str,
    ) -> Result<ServerSuccess<N>, ScramError> {
        let m = self.credentials.mechanism;
        let split = client_final
            .rfind(",p=")
            .ok_or(ScramError::Malformed("client proof"))?;
        let without_proof = &client_final[..split];
        let proof_b64 = &client_final[split + 3..];
        let mut rest = without_proof;
        let cbind = attr(&mut rest, b'c', "channel binding")?;
        let nonce = attr(&mut rest, b'r', "nonce")?;
        if cbind != expected_cbind {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if nonce != &self.server_first[2..self.nonce_end] {
            return Err(ScramError::NonceMismatch);
        }
        let mut proof = [0u8; 48];
        let n = decode_b64(proof_b64, &mut proof, "client proof")?;
        if n != m.key_len() {
            return Err(ScramError::Malformed("client proof length"));
        }
        let proof = Key::from_slice(&proof[..n]).ok_or(ScramError::Malformed("client proof"))?;
        let auth = auth_message(&self.login.bare, &self.server_first, without_proof);
        let client_signature = hmac(m, self.credentials.stored_key.as_bytes(), &auth);
        let server_signature = hmac(m, self.credentials.server_key.as_bytes(), &auth);
        // ClientKey = ClientProof XOR ClientSignature; valid iff H(ClientKey) = StoredKey.
        let client_key = xor(&proof, &client_signature);
        if !hash(m, client_key.as_bytes()).ct_eq(&self.credentials.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let mut server_final = heapless::String::new();
        push(&mut server_final, &["v="])?;
        push_b64(&mut server_final, server_signature.as_bytes())?;
        let k = session_key(&client_key, &auth);
        Ok(ServerSuccess {
            server_final,
            session: SessionKeys::from_master(&k),
            username: self.login.username,
        })
    }
}

/// A verified login on the server.
pub struct ServerSuccess<const N: usize = 512> {
    server_final: heapless::String<64>,
    /// Keys for the session's frame tags.
    pub session: SessionKeys,
    username: heapless::String<N>,
}

impl<const N: usize> ServerSuccess<N> {
    /// The RFC 5802 server-final-message to send in the welcome.
    pub fn server_final(&self) -> &str {
        &self.server_final
    }

    /// The authenticated username.
    pub fn username(&self) -> &str {
        &self.username
    }
}
