//! Fixtures shared by the fuzz targets: the RFC 7677 exchange that
//! docs/PROTOCOL.md carries in its vectors (user "user", password "pencil"),
//! so that seeds taken from the document reach deep states, and a reference
//! tag computation independent of `tether_core::session`.

use std::borrow::Cow;
use std::sync::LazyLock;

use hmac::{KeyInit, Mac};
use tether_core::rand_core::{TryCryptoRng, TryRng};
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, Mechanism, ServerCredentials,
    ServerLogin,
};
use tether_core::session::SessionKeys;

pub const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
pub const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
pub const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
pub const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
pub const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
pub const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
/// base64-decoded `W22ZaJ0SNY7soEsUEjb6gQ==`.
pub const SALT: [u8; 16] = [
    91, 109, 153, 104, 157, 18, 53, 142, 236, 160, 75, 20, 18, 54, 250, 129,
];
pub const ITERATIONS: u32 = 4096;

/// Directional session keys of the exchange (docs/PROTOCOL.md section 5).
pub const K_C2S: [u8; 32] =
    hex32("51d56b5e76b59e9c4529c428bb9a23c782c41edc314a1f87fd654e16e615c774");
pub const K_S2C: [u8; 32] =
    hex32("f6e964890f3bb631b5e9dc2e09c5a4b2c591a4e7a95b853e2d9732a83e228329");

const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("hex"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// The client's keys for "pencil" (one PBKDF2 run of 4096, once per process).
pub static CLIENT_KEYS: LazyLock<CachedKeys> = LazyLock::new(|| {
    CachedKeys::derive(Mechanism::ScramSha256, "pencil", &SALT, ITERATIONS).expect("derive")
});

/// The server's verifier for the same account.
pub static SERVER_CREDENTIALS: LazyLock<ServerCredentials> = LazyLock::new(|| {
    ServerCredentials::from_cached_keys(&CLIENT_KEYS).expect("SCRAM-SHA-256 is always enabled")
});

/// Client and server session keys of a real exchange with the vectors'
/// nonces (so they are K_c2s / K_s2c above).
pub static SESSION: LazyLock<(SessionKeys, SessionKeys)> = LazyLock::new(|| {
    let login = ClientLogin::<256>::with_nonce(
        "user",
        ClientCredentials::Keys(&CLIENT_KEYS),
        ClientConfig::default(),
        CLIENT_NONCE,
    )
    .expect("client-first");
    assert_eq!(login.client_first(), CLIENT_FIRST);
    let server = ServerLogin::<512>::new(CLIENT_FIRST)
        .expect("server")
        .challenge_with_nonce(&SERVER_CREDENTIALS, SERVER_NONCE)
        .expect("challenge");
    assert_eq!(server.server_first(), SERVER_FIRST);
    let proof = login
        .handle_challenge(Mechanism::ScramSha256, SERVER_FIRST)
        .expect("proof");
    assert_eq!(proof.client_final(), CLIENT_FINAL);
    let done = server.verify(CLIENT_FINAL).expect("verify");
    assert_eq!(done.server_final(), SERVER_FINAL);
    let client = proof
        .handle_server_final(SERVER_FINAL)
        .expect("server final");
    (client.session, done.session)
});

/// `first 16 bytes of HMAC-SHA256(key, seq_be || message)`, computed here
/// rather than by tether-core.
pub fn reference_tag(key: &[u8; 32], seq: u64, message: &[u8]) -> [u8; 16] {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key");
    mac.update(&seq.to_be_bytes());
    mac.update(message);
    let out = mac.finalize().into_bytes();
    out[..16].try_into().expect("16")
}

/// A session frame body (seq || message || tag) with a reference tag.
pub fn reference_body(key: &[u8; 32], seq: u64, message: &[u8]) -> Vec<u8> {
    let mut body = seq.to_be_bytes().to_vec();
    body.extend_from_slice(message);
    body.extend_from_slice(&reference_tag(key, seq, message));
    body
}

/// Splits fuzz input into text fields at 0xFF bytes (which never occur in
/// UTF-8, so mutations of seeds stay aligned); invalid UTF-8 is replaced.
pub fn fields(data: &[u8]) -> Vec<Cow<'_, str>> {
    data.split(|&b| b == 0xFF)
        .map(String::from_utf8_lossy)
        .collect()
}

/// A small deterministic generator for chunk sizes and the like.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Counter "randomness" (a Weyl sequence): nonces and keys only need to be
/// printable and fresh, and a fixed start makes every run's login the same,
/// which lets the fuzzer reach deep states by editing a genuine exchange.
pub struct Counter(pub u64);

impl TryRng for Counter {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = self.try_next_u64()? as u8;
        }
        Ok(())
    }
}

impl TryCryptoRng for Counter {}
