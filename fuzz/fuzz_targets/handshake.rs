//! The handshake messages and every SCRAM parser of tether-core, on
//! arbitrary input.
//!
//! Input: `[mode] [flags] fields...` where fields are separated by 0xFF
//! (never part of UTF-8, so seeds made of SCRAM text stay aligned under
//! mutation). Modes:
//! 0. the rest as a `Handshake` body, decoded, then handed to the state
//!    machine that would receive it (Hello -> ServerLogin, Challenge ->
//!    ClientLogin, Proof -> verify, Welcome -> handle_server_final);
//! 1. `ServerLogin::new(field 0)`, then challenge (server nonce field 1),
//!    then `verify(field 2)`;
//! 2. `ClientLogin::handle_challenge(field 0)`, then
//!    `handle_server_final(field 1)`;
//! 3. `ServerChallengeSent::verify(field 0)` in the state of the RFC 7677
//!    exchange (docs/PROTOCOL.md's vectors);
//! 4. `ClientProofSent::handle_server_final(field 0)` in that state;
//! 5. `tether_core::django::{credentials, parse}` on field 0.
//!
//! Beyond "no panic": only the genuine client-final is accepted in mode 3
//! (no second spelling of a valid proof), only a server-final starting
//! with the genuine `v=` in mode 4, and Django parsing is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_core::django;
use tether_core::message::{self, Handshake};
use tether_core::scram::{
    ClientConfig, ClientCredentials, ClientLogin, MAX_SALT_LEN, Mechanism, ServerLogin,
};
use tether_fuzz::{
    CLIENT_FINAL, CLIENT_FIRST, CLIENT_KEYS, CLIENT_NONCE, SERVER_CREDENTIALS, SERVER_FINAL,
    SERVER_FIRST, SERVER_NONCE, fields,
};

/// A client that never runs more than 64 PBKDF2 iterations.
#[allow(clippy::needless_update)] // ClientConfig may grow fields
fn cheap_config() -> ClientConfig {
    ClientConfig {
        min_iterations: 1,
        max_iterations: 64,
        ..ClientConfig::default()
    }
}

fn mechanism(flags: u8) -> Mechanism {
    if flags & 2 == 0 {
        Mechanism::ScramSha256
    } else {
        Mechanism::ScramSha1
    }
}

/// Server side from an arbitrary client-first.
fn server_side(client_first: &str, server_nonce: Option<&str>, client_final: Option<&str>) {
    // A small N reaches the "does not fit" paths.
    let _ = ServerLogin::<40>::new(client_first);
    let Ok(login) = ServerLogin::<512>::new(client_first) else {
        return;
    };
    assert!(!login.username().is_empty());
    let sent = match login
        .challenge_with_nonce(&SERVER_CREDENTIALS, server_nonce.unwrap_or(SERVER_NONCE))
    {
        Ok(sent) => sent,
        Err(_) => return,
    };
    let first = sent.server_first();
    assert!(first.starts_with("r="), "{first:?}");
    if let Some(client_final) = client_final
        && let Ok(done) = sent.verify(client_final)
    {
        assert!(done.server_final().starts_with("v="));
    }
}

/// Client side from an arbitrary server-first.
fn client_side(flags: u8, username: &str, server_first: &str, server_final: Option<&str>) {
    let creds = if flags & 1 == 0 {
        ClientCredentials::Keys(&CLIENT_KEYS)
    } else {
        ClientCredentials::Password("pencil")
    };
    let Ok(login) = ClientLogin::<256>::with_nonce(username, creds, cheap_config(), CLIENT_NONCE)
    else {
        return;
    };
    let Ok(proof) = login.handle_challenge(mechanism(flags), server_first) else {
        return;
    };
    assert!(proof.client_final().starts_with("c=biws,r="));
    if let Some(server_final) = server_final {
        let _ = proof.handle_server_final(server_final);
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, rest @ ..] = data else {
        return;
    };
    let f = fields(rest);
    let field = |i: usize| f.get(i).map(|s| &**s);
    match mode % 6 {
        0 => match message::decode::<Handshake>(rest) {
            Ok(Handshake::Hello(h)) => server_side(h.client_first, None, Some(CLIENT_FINAL)),
            Ok(Handshake::Challenge(c)) => {
                let flags = if c.mechanism == Mechanism::ScramSha1 {
                    flags | 3
                } else {
                    *flags
                };
                client_side(flags, "user", c.server_first, Some(SERVER_FINAL));
            }
            Ok(Handshake::Proof(p)) => server_side(CLIENT_FIRST, None, Some(p.client_final)),
            Ok(Handshake::Welcome(w)) => {
                client_side(0, "user", SERVER_FIRST, Some(w.server_final));
            }
            Ok(Handshake::Refused(r)) => {
                let _ = (r.code.as_str(), r.code.is_transient());
            }
            Err(_) => {}
        },
        1 => server_side(field(0).unwrap_or(""), field(1), field(2)),
        2 => client_side(*flags, "user", field(0).unwrap_or(""), field(1)),
        3 => {
            let client_final = field(0).unwrap_or("");
            let sent = ServerLogin::<512>::new(CLIENT_FIRST)
                .expect("vector")
                .challenge_with_nonce(&SERVER_CREDENTIALS, SERVER_NONCE)
                .expect("vector");
            match sent.verify(client_final) {
                Ok(done) => {
                    assert_eq!(
                        client_final, CLIENT_FINAL,
                        "a second spelling of the proof was accepted"
                    );
                    assert_eq!(done.server_final(), SERVER_FINAL);
                }
                Err(e) => assert_ne!(client_final, CLIENT_FINAL, "the genuine proof failed: {e}"),
            }
        }
        4 => {
            let server_final = field(0).unwrap_or("");
            let login = ClientLogin::<256>::with_nonce(
                "user",
                ClientCredentials::Keys(&CLIENT_KEYS),
                ClientConfig::default(),
                CLIENT_NONCE,
            )
            .expect("vector");
            let proof = login
                .handle_challenge(Mechanism::ScramSha256, SERVER_FIRST)
                .expect("vector");
            match proof.handle_server_final(server_final) {
                Ok(_) => assert!(
                    server_final.starts_with(SERVER_FINAL),
                    "accepted server-final {server_final:?}"
                ),
                Err(e) => assert_ne!(
                    server_final, SERVER_FINAL,
                    "the genuine server-final failed: {e}"
                ),
            }
        }
        _ => {
            let encoded = field(0).unwrap_or("");
            let _ = django::HashAlgorithm::identify(encoded);
            let parsed = django::parse(encoded);
            let creds = django::credentials(encoded);
            assert_eq!(
                parsed.is_ok(),
                creds.is_ok(),
                "parse and credentials disagree"
            );
            if let (Ok(p), Ok(c)) = (parsed, creds) {
                assert!(p.iterations > 0);
                assert!(!p.salt.is_empty() && p.salt.len() <= MAX_SALT_LEN);
                match p.keys {
                    django::RowKeys::SaltedPassword(k) => {
                        assert_eq!(k.as_bytes().len(), p.mechanism.key_len())
                    }
                    django::RowKeys::Verifier {
                        stored_key,
                        server_key,
                    } => {
                        assert_eq!(stored_key, c.stored_key);
                        assert_eq!(server_key, c.server_key);
                    }
                }
                assert_eq!((c.mechanism, c.iterations), (p.mechanism, p.iterations));
                assert_eq!(c.salt.as_slice(), p.salt.as_bytes());
            }
        }
    }
});
