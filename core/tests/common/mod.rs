//! Shared helpers for tether-core's integration tests.
#![allow(dead_code)]

use tether_core::scram::{
    ClientConfig, ClientCredentials, ClientLogin, ServerCredentials, ServerLogin,
};
use tether_core::session::SessionKeys;

pub use tether_test_support::TestRng;

/// A cheap verifier (4096 iterations) for password "pw".
pub fn credentials() -> ServerCredentials {
    tether_core::django::credentials(&django_row("pw", "saltsaltsalt", 4096)).unwrap()
}

/// A Django pbkdf2_sha256 row, computed here (tests only).
pub fn django_row(pw: &str, salt: &str, iterations: u32) -> String {
    use base64::Engine as _;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(pw.as_bytes(), salt.as_bytes(), iterations, &mut out);
    format!(
        "pbkdf2_sha256${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

/// Runs a full login and returns (client session keys, server session keys).
pub fn logged_in_pair(seed: u64) -> (SessionKeys, SessionKeys) {
    let mut rng = TestRng(seed);
    let creds = credentials();
    let client = ClientLogin::<256>::new(
        "alice",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let server = ServerLogin::<512>::new(client.client_first())
        .unwrap()
        .challenge(&creds, &mut rng)
        .unwrap();
    let client = client
        .handle_challenge(creds.mechanism, server.server_first())
        .unwrap();
    let done = server.verify(client.client_final()).unwrap();
    let client = client.handle_server_final(done.server_final()).unwrap();
    (client.session, done.session)
}
