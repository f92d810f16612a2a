use base64::Engine as _;

use super::*;
use crate::django;

/// The RFC 5802 section 5 example (SCRAM-SHA-1), byte for byte.
#[cfg(feature = "sha1")]
#[test]
fn rfc5802_sha1_example() {
    exchange_vector(
        Mechanism::ScramSha1,
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "QSXCR+Q6sek8bf92",
        "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    );
}

/// The RFC 7677 section 3 example (SCRAM-SHA-256), byte for byte.
#[test]
fn rfc7677_sha256_example() {
    exchange_vector(
        Mechanism::ScramSha256,
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    );
}

#[allow(clippy::too_many_arguments)]
fn exchange_vector(
    m: Mechanism,
    cnonce: &str,
    snonce: &str,
    salt_b64: &str,
    client_first: &str,
    server_first: &str,
    client_final: &str,
    server_final: &str,
) {
    let mut salt = [0u8; 64];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(salt_b64, &mut salt)
        .unwrap();
    let salted = salted_password(m, b"pencil", &salt[..n], 4096);
    let creds = ServerCredentials::from_salted_password(m, &salted, &salt[..n], 4096).unwrap();

    let client = ClientLogin::<256>::with_nonce(
        "user",
        ClientCredentials::Password("pencil"),
        ClientConfig::default(),
        cnonce,
    )
    .unwrap();
    assert_eq!(client.client_first(), client_first);
    let server = ServerLogin::<512>::new(client_first).unwrap();
    assert_eq!(server.username(), "user");
    let server = server.challenge_with_nonce(&creds, snonce).unwrap();
    assert_eq!(server.server_first(), server_first);
    let client = client.handle_challenge(m, server_first).unwrap();
    assert_eq!(client.client_final(), client_final);
    let done = server.verify(client_final).unwrap();
    assert_eq!(done.server_final(), server_final);
    let ok = client.handle_server_final(server_final).unwrap();
    assert!(ok.derived);

    // The same exchange with the cached keys: no password, same bytes.
    let client = ClientLogin::<256>::with_nonce(
        "user",
        ClientCredentials::Keys(&ok.keys),
        ClientConfig::default(),
        cnonce,
    )
    .unwrap()
    .handle_challenge(m, server_first)
    .unwrap();
    assert_eq!(client.client_final(), client_final);
    assert!(!client.handle_server_final(server_final).unwrap().derived);
}

pub(crate) use tether_test_support::TestRng;

/// A genuine Django 5.2 hash (made with `make_password("correct horse")`
/// in Django 5.2.19, pbkdf2_sha256 at its default 1,000,000 iterations).
pub(crate) const DJANGO_52_HASH: &str =
    "pbkdf2_sha256$1000000$56ryAKpSnLAXlMYo5d2L5x$hPjabwIwfFzX6LEaxIt5cCa4001RIC/45BitWAzM4dA=";
pub(crate) const DJANGO_52_PASSWORD: &str = "correct horse";

#[test]
fn fresh_nonces_pass_the_given_nonce_check() {
    // `new` skips the check `with_nonce` makes: its nonces always pass it.
    for seed in 0..64 {
        let creds = ClientCredentials::Password("pw");
        let config = ClientConfig::default();
        let login = ClientLogin::<256>::new("u", creds, config, &mut TestRng(seed)).unwrap();
        let nonce = login.client_first().strip_prefix("n,,n=u,r=").unwrap();
        let again = ClientLogin::<256>::with_nonce("u", creds, config, nonce).unwrap();
        assert_eq!(again.client_first(), login.client_first());
    }
}

/// Runs a whole login; returns the client's or the server's error.
fn login(
    row: &str,
    user: &str,
    creds: ClientCredentials<'_>,
    config: ClientConfig,
) -> Result<ClientSuccess, ScramError> {
    let mut rng = TestRng(1);
    let server_creds = django::credentials(row).unwrap();
    let client = ClientLogin::<256>::new(user, creds, config, &mut rng)?;
    let server = ServerLogin::<512>::new(client.client_first())?;
    assert_eq!(server.username(), user);
    let server = server.challenge(&server_creds, &mut rng)?;
    let client = client.handle_challenge(server_creds.mechanism, server.server_first())?;
    let done = server.verify(client.client_final())?;
    client.handle_server_final(done.server_final())
}

#[test]
fn django_52_hash_logs_in_with_its_password_only() {
    let ok = login(
        DJANGO_52_HASH,
        "alice",
        ClientCredentials::Password(DJANGO_52_PASSWORD),
        ClientConfig::default(),
    )
    .unwrap();
    assert_eq!(ok.keys.iterations, 1_000_000);
    assert_eq!(
        login(
            DJANGO_52_HASH,
            "alice",
            ClientCredentials::Password("Correct horse"),
            ClientConfig::default()
        )
        .err(),
        Some(ScramError::InvalidProof)
    );
    // Cached keys log in without the password.
    login(
        DJANGO_52_HASH,
        "alice",
        ClientCredentials::Keys(&ok.keys),
        ClientConfig::default(),
    )
    .unwrap();
}

/// A `scram_sha256` row (django-tether's hasher) for the same inputs.
fn scram_row(pw: &str, salt: &str, iterations: u32) -> std::string::String {
    std::string::String::from(
        django::make_scram_sha256(pw, salt, iterations)
            .unwrap()
            .as_str(),
    )
}

#[test]
fn scram_sha256_rows_log_in_with_the_password_and_cached_keys() {
    let r = scram_row("pässwörd", "saltsaltsaltsalt", 4096);
    let ok = login(
        &r,
        "zoë",
        ClientCredentials::Password("pässwörd"),
        ClientConfig::default(),
    )
    .unwrap();
    login(
        &r,
        "zoë",
        ClientCredentials::Keys(&ok.keys),
        ClientConfig::default(),
    )
    .unwrap();
    // The keys a device cached against the pbkdf2 row work against its
    // conversion (same salt and count).
    let pbkdf2 = row("pbkdf2_sha256", "pässwörd", "saltsaltsaltsalt", 4096);
    let cached = login(
        &pbkdf2,
        "zoë",
        ClientCredentials::Password("pässwörd"),
        ClientConfig::default(),
    )
    .unwrap()
    .keys;
    login(
        &r,
        "zoë",
        ClientCredentials::Keys(&cached),
        ClientConfig::default(),
    )
    .unwrap();
    assert_eq!(
        login(
            &r,
            "zoë",
            ClientCredentials::Password("passwörd"),
            ClientConfig::default()
        )
        .err(),
        Some(ScramError::InvalidProof)
    );
}

/// Everything 32 bytes long a thief can read from a row, or get from it by
/// one hash or HMAC, tried as the ClientKey of cached keys (with the row's
/// true ServerKey, so only the proof can fail).
fn keys_from_row(encoded: &str) -> std::vec::Vec<CachedKeys> {
    let parsed = django::parse(encoded).unwrap();
    let creds = django::credentials(encoded).unwrap();
    let mut material = std::vec::Vec::new();
    match parsed.keys {
        django::RowKeys::SaltedPassword(k) => material.push(k),
        django::RowKeys::Verifier {
            stored_key,
            server_key,
        } => material.extend([stored_key, server_key]),
    }
    material.push(hash(Mechanism::ScramSha256, parsed.salt.as_bytes()));
    let mut candidates = std::vec::Vec::new();
    for k in material {
        candidates.push(k);
        candidates.push(hash(Mechanism::ScramSha256, k.as_bytes()));
        candidates.push(hmac(Mechanism::ScramSha256, k.as_bytes(), &[b"Client Key"]));
        candidates.push(hmac(Mechanism::ScramSha256, k.as_bytes(), &[b"Server Key"]));
    }
    candidates
        .into_iter()
        .map(|client_key| CachedKeys {
            mechanism: Mechanism::ScramSha256,
            iterations: parsed.iterations,
            salt: Salt::from_slice(parsed.salt.as_bytes()).unwrap(),
            client_key,
            server_key: creds.server_key,
        })
        .collect()
}

#[test]
fn nothing_in_a_scram_sha256_row_logs_a_client_in() {
    let pbkdf2 = row("pbkdf2_sha256", "pw", "saltsaltsaltsalt", 4096);
    let scram = scram_row("pw", "saltsaltsaltsalt", 4096);
    let try_all = |encoded: &str| {
        keys_from_row(encoded)
            .iter()
            .filter(|k| {
                login(
                    encoded,
                    "alice",
                    ClientCredentials::Keys(k),
                    ClientConfig::default(),
                )
                .is_ok()
            })
            .count()
    };
    // A pbkdf2 row is password-equivalent: HMAC(SaltedPassword, "Client Key")
    // logs in (the attack this test would miss if it were broken).
    assert_eq!(try_all(&pbkdf2), 1);
    // Nothing in the scram_sha256 row of the same password does.
    assert_eq!(try_all(&scram), 0);
    // The password still does.
    login(
        &scram,
        "alice",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
    )
    .unwrap();
}

#[test]
fn malformed_scram_sha256_rows_are_errors() {
    let good = scram_row("pw", "salt", 4096);
    let keys = std::string::String::from(good.splitn(4, '$').nth(3).unwrap());
    let cases = [
        ("scram_sha256$1000$salt".into(), "missing keys"),
        (format!("scram_sha256$0$salt${keys}"), "iterations"),
        (format!("scram_sha256$1000$${keys}"), "empty salt"),
        (
            format!("scram_sha256$1000$salt${}", &keys[..75]),
            "keys are not 80 base85 characters",
        ),
        (
            format!("scram_sha256$1000$salt${keys}$"),
            "keys are not 80 base85 characters",
        ),
        (
            format!("scram_sha256$1000$salt$\"{}", &keys[1..]),
            "keys are not base85",
        ),
        (
            format!("scram_sha256$1000$salt$~~~~~{}", &keys[5..]),
            "keys are not base85",
        ),
    ];
    for (encoded, what) in cases {
        assert_eq!(
            django::credentials(&encoded).unwrap_err(),
            django::DjangoHashError::Malformed(what),
            "{encoded}"
        );
    }
}

fn row(m: &str, pw: &str, salt: &str, iterations: u32) -> std::string::String {
    let mech = if m == "pbkdf2_sha1" {
        Mechanism::ScramSha1
    } else {
        Mechanism::ScramSha256
    };
    let sp = salted_password(mech, pw.as_bytes(), salt.as_bytes(), iterations);
    format!(
        "{m}${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(sp.as_bytes())
    )
}

#[cfg(feature = "sha1")]
#[test]
fn sha1_rows_and_escaped_non_ascii_names() {
    let r = row("pbkdf2_sha1", "pässwörd", "abcdefghijkl", 4096);
    login(
        &r,
        "o,dd=näme",
        ClientCredentials::Password("pässwörd"),
        ClientConfig::default(),
    )
    .unwrap();
    let client = ClientLogin::<256>::with_nonce(
        "o,dd=näme",
        ClientCredentials::Password("x"),
        ClientConfig::default(),
        "abc",
    )
    .unwrap();
    assert_eq!(client.client_first(), "n,,n=o=2Cdd=3Dnäme,r=abc");
}

#[test]
fn iteration_floor_is_enforced() {
    let r = row("pbkdf2_sha256", "pw", "saltsaltsalt", 1000);
    assert_eq!(
        login(
            &r,
            "u",
            ClientCredentials::Password("pw"),
            ClientConfig::default()
        )
        .err(),
        Some(ScramError::IterationsTooLow {
            offered: 1000,
            minimum: 4096
        })
    );
    let low = ClientConfig {
        min_iterations: 1000,
        ..ClientConfig::default()
    };
    login(&r, "u", ClientCredentials::Password("pw"), low).unwrap();
    let capped = ClientConfig {
        max_iterations: 999,
        min_iterations: 1,
    };
    assert_eq!(
        login(&r, "u", ClientCredentials::Password("pw"), capped).err(),
        Some(ScramError::IterationsTooHigh {
            offered: 1000,
            maximum: 999
        })
    );
}

#[test]
fn cached_keys_for_another_salt_are_refused() {
    let a = row("pbkdf2_sha256", "pw", "saltA", 4096);
    let b = row("pbkdf2_sha256", "pw", "saltB", 4096);
    let ok = login(
        &a,
        "u",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
    )
    .unwrap();
    assert_eq!(
        login(
            &b,
            "u",
            ClientCredentials::Keys(&ok.keys),
            ClientConfig::default()
        )
        .err(),
        Some(ScramError::CachedKeysMismatch)
    );
}

#[test]
fn impostor_server_is_detected() {
    // A server that knows StoredKey but not ServerKey (or a wrong verifier)
    // cannot produce the signature.
    let mut rng = TestRng(9);
    let good = django::credentials(&row("pbkdf2_sha256", "pw", "salty", 4096)).unwrap();
    let client = ClientLogin::<256>::new(
        "u",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let server = ServerLogin::<512>::new(client.client_first())
        .unwrap()
        .challenge(&good, &mut rng)
        .unwrap();
    let client = client
        .handle_challenge(Mechanism::ScramSha256, server.server_first())
        .unwrap();
    let fake = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    assert_eq!(
        client.handle_server_final(fake).err(),
        Some(ScramError::InvalidServerSignature)
    );
}

#[test]
fn decoy_is_stable_plausible_and_unpassable() {
    let a = ServerCredentials::decoy(Mechanism::ScramSha256, b"secret", "ghost", 1_000_000);
    let b = ServerCredentials::decoy(Mechanism::ScramSha256, b"secret", "ghost", 1_000_000);
    let c = ServerCredentials::decoy(Mechanism::ScramSha256, b"secret", "ghost2", 1_000_000);
    assert_eq!(a, b);
    assert_ne!(a.salt, c.salt);
    assert_eq!(a.salt.len(), 22);
    assert!(a.salt.iter().all(u8::is_ascii_alphanumeric));
    let mut rng = TestRng(3);
    let client = ClientLogin::<256>::new(
        "ghost",
        ClientCredentials::Password("guess"),
        ClientConfig {
            min_iterations: 1,
            ..ClientConfig::default()
        },
        &mut rng,
    )
    .unwrap();
    // Use a cheap decoy for speed: same code path.
    let cheap = ServerCredentials::decoy(Mechanism::ScramSha256, b"secret", "ghost", 4096);
    let server = ServerLogin::<512>::new(client.client_first())
        .unwrap()
        .challenge(&cheap, &mut rng)
        .unwrap();
    let client = client
        .handle_challenge(Mechanism::ScramSha256, server.server_first())
        .unwrap();
    assert_eq!(
        server.verify(client.client_final()).err(),
        Some(ScramError::InvalidProof)
    );
}

#[test]
fn malformed_and_hostile_messages_are_typed_errors() {
    type S = ServerLogin<512>;
    assert_eq!(
        S::new("p=tls-unique,,n=u,r=abc").err(),
        Some(ScramError::ChannelBindingUnsupported)
    );
    assert_eq!(
        S::new("n,a=admin,n=u,r=abc").err(),
        Some(ScramError::AuthzidUnsupported)
    );
    assert_eq!(
        S::new("n,,m=ext,n=u,r=abc").err(),
        Some(ScramError::ExtensionUnsupported)
    );
    assert_eq!(
        S::new("x,,n=u,r=abc").err(),
        Some(ScramError::Malformed("GS2 header"))
    );
    assert_eq!(
        S::new("n,,n=,r=abc").err(),
        Some(ScramError::Malformed("empty username"))
    );
    assert_eq!(
        S::new("n,,n=a=2Xb,r=abc").err(),
        Some(ScramError::Malformed("bad escape in username"))
    );
    assert_eq!(S::new("n,,n=u,r=a,bc").err(), None); // r=a then an extension "bc": allowed
    assert_eq!(
        S::new("n,,n=u").err(),
        Some(ScramError::Malformed("client nonce"))
    );
    assert_eq!(
        S::new("n,,n=u,r=").err(),
        Some(ScramError::Malformed("client nonce"))
    );
    let long = format!("n,,n={},r=abc", "x".repeat(600));
    assert_eq!(S::new(&long).err(), Some(ScramError::TooLong));

    let creds = django::credentials(&row("pbkdf2_sha256", "pw", "salty", 4096)).unwrap();
    let server = || {
        S::new("n,,n=u,r=abc")
            .unwrap()
            .challenge_with_nonce(&creds, "XYZ")
            .unwrap()
    };
    assert_eq!(server().server_first(), "r=abcXYZ,s=c2FsdHk=,i=4096");
    assert_eq!(
        server().verify("c=biws,r=abcXYZ").err(),
        Some(ScramError::Malformed("client proof"))
    );
    assert_eq!(
        server().verify("c=eSws,r=abcXYZ,p=AAAA").err(),
        Some(ScramError::ChannelBindingMismatch)
    );
    assert_eq!(
        server().verify("c=biws,r=abcXYQ,p=AAAA").err(),
        Some(ScramError::NonceMismatch)
    );
    assert_eq!(
        server().verify("c=biws,r=abcXYZ,p=!!!").err(),
        Some(ScramError::Malformed("client proof"))
    );
    assert_eq!(
        server().verify("c=biws,r=abcXYZ,p=AAAA").err(),
        Some(ScramError::Malformed("client proof length"))
    );
    let zero_proof = "c=biws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        server().verify(zero_proof).err(),
        Some(ScramError::InvalidProof)
    );

    let client = || {
        ClientLogin::<256>::with_nonce(
            "u",
            ClientCredentials::Password("pw"),
            ClientConfig::default(),
            "abc",
        )
        .unwrap()
    };
    let m = Mechanism::ScramSha256;
    assert_eq!(
        client()
            .handle_challenge(m, "r=abc,s=c2FsdHk=,i=4096")
            .err(),
        Some(ScramError::NonceMismatch)
    );
    assert_eq!(
        client()
            .handle_challenge(m, "r=xyzabc,s=c2FsdHk=,i=4096")
            .err(),
        Some(ScramError::NonceMismatch)
    );
    assert_eq!(
        client()
            .handle_challenge(m, "r=abcX,s=c2FsdHk=,i=04096")
            .err(),
        Some(ScramError::Malformed("iteration count"))
    );
    assert_eq!(
        client()
            .handle_challenge(m, "r=abcX,s=c2FsdHk=,i=99999999999")
            .err(),
        Some(ScramError::Malformed("iteration count"))
    );
    assert_eq!(
        client().handle_challenge(m, "r=abcX,s=***,i=4096").err(),
        Some(ScramError::Malformed("salt"))
    );
    assert_eq!(
        client()
            .handle_challenge(m, "m=x,r=abcX,s=c2FsdHk=,i=4096")
            .err(),
        Some(ScramError::ExtensionUnsupported)
    );
    assert_eq!(
        client().handle_challenge(m, "r=abcX,i=4096").err(),
        Some(ScramError::Malformed("salt"))
    );
}

#[cfg(not(feature = "sha1"))]
#[test]
fn without_the_sha1_feature_sha1_is_refused_cleanly() {
    let row = "pbkdf2_sha1$4096$salt$ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWU=";
    assert_eq!(
        django::credentials(row).unwrap_err(),
        django::DjangoHashError::Unsupported(django::HashAlgorithm::Pbkdf2Sha1)
    );
    assert_eq!(
        CachedKeys::derive(Mechanism::ScramSha1, "pw", b"salt", 4096).err(),
        Some(ScramError::MechanismDisabled)
    );
    let client = ClientLogin::<256>::with_nonce(
        "u",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
        "abc",
    )
    .unwrap();
    assert_eq!(
        client.mechanisms(),
        Mechanisms::only(Mechanism::ScramSha256)
    );
    assert_eq!(
        client
            .handle_challenge(Mechanism::ScramSha1, "r=abcX,s=c2FsdHk=,i=4096")
            .err(),
        Some(ScramError::MechanismDisabled)
    );
    let decoy = ServerCredentials::decoy(Mechanism::ScramSha1, b"k", "u", 4096);
    assert_eq!(
        ServerLogin::<512>::new("n,,n=u,r=abc")
            .unwrap()
            .challenge_with_nonce(&decoy, "X")
            .err(),
        Some(ScramError::MechanismDisabled)
    );
}

#[test]
fn iteration_counts_parse_strictly() {
    use super::client::parse_iterations;
    assert_eq!(parse_iterations("4096"), Ok(4096));
    assert_eq!(parse_iterations("1"), Ok(1));
    assert_eq!(parse_iterations("4294967295"), Ok(u32::MAX));
    for bad in [
        "",
        "0",
        "01",
        "4294967296",
        "99999999999",
        "12a",
        "+1",
        "-1",
        " 1",
        "1 ",
    ] {
        assert_eq!(
            parse_iterations(bad),
            Err(ScramError::Malformed("iteration count")),
            "{bad}"
        );
    }
}

#[test]
fn decoy_keys_keep_the_given_salt_and_count() {
    let salt = ServerCredentials::decoy_salt(b"secret", "ghost");
    let a = ServerCredentials::decoy(Mechanism::ScramSha1, b"secret", "ghost", 4096);
    let b = ServerCredentials::decoy_keys(Mechanism::ScramSha1, b"secret", "ghost", &salt, 4096)
        .unwrap();
    assert_eq!(a, b);
    // A row's salt and count, in another mechanism: keys of that length.
    let c = ServerCredentials::decoy_keys(
        Mechanism::ScramSha256,
        b"secret",
        "ghost",
        b"BKm2OBEbOcSJtNh8TdWdOy",
        260_000,
    )
    .unwrap();
    assert_eq!(
        (
            c.salt.as_slice(),
            c.iterations,
            c.stored_key.as_bytes().len()
        ),
        (&b"BKm2OBEbOcSJtNh8TdWdOy"[..], 260_000, 32)
    );
    assert_eq!(
        ServerCredentials::decoy_keys(Mechanism::ScramSha256, b"s", "g", &[b'a'; 65], 1),
        Err(ScramError::SaltTooLong)
    );
}

/// A first login that fits a microcontroller: a probe fetches the salt and
/// iteration count (the challenge checked as for a password: floor,
/// nonce), PBKDF2 runs offline in steps, and the derived keys log in; a
/// proof sent by mistake after a probe is refused as malformed, not as a
/// wrong password.
#[cfg(feature = "probe")]
#[test]
fn a_probe_then_an_offline_derivation_logs_in_with_the_derived_keys() {
    let r = row("pbkdf2_sha256", "pw", "saltA", 5000);
    let server_creds = django::credentials(&r).unwrap();
    let mut rng = TestRng(3);
    let client = ClientLogin::<256>::new(
        "u",
        ClientCredentials::Probe,
        ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    assert_eq!(client.mechanisms(), Mechanisms::ENABLED);
    let server = ServerLogin::<512>::new(client.client_first()).unwrap();
    let server = server.challenge(&server_creds, &mut rng).unwrap();
    let probed = client
        .handle_challenge(server_creds.mechanism, server.server_first())
        .unwrap();
    assert!(probed.is_probe());
    assert!(!probed.derived());
    assert_eq!(probed.client_final(), "");
    let template = probed.keys().clone();
    assert_eq!(
        (
            template.mechanism,
            template.iterations,
            template.salt.as_slice()
        ),
        (Mechanism::ScramSha256, 5000, &b"saltA"[..])
    );
    // A proof sent by mistake is malformed, never a wrong password.
    let refused = server.verify(probed.client_final()).err().unwrap();
    assert!(matches!(refused, ScramError::Malformed(_)), "{refused:?}");

    // Offline, in steps of 1,000 iterations.
    let mut d = Derivation::new(
        template.mechanism,
        "pw",
        &template.salt,
        template.iterations,
    )
    .unwrap();
    let mut steps = 0;
    while !d.run(1000) {
        steps += 1;
        assert_eq!(d.remaining(), 4999 - 1000 * steps);
    }
    assert_eq!(steps, 4);
    let keys = d.finish().unwrap();
    assert!(keys.matches(Mechanism::ScramSha256, b"saltA", 5000));
    let direct = login(
        &r,
        "u",
        ClientCredentials::Password("pw"),
        ClientConfig::default(),
    )
    .unwrap();
    assert_eq!(keys, direct.keys);
    let ok = login(
        &r,
        "u",
        ClientCredentials::Keys(&keys),
        ClientConfig::default(),
    )
    .unwrap();
    assert!(!ok.derived);

    // A probe is checked as a password login is: the iteration floor holds.
    let floor = ClientConfig {
        min_iterations: 10_000,
        ..ClientConfig::default()
    };
    assert!(matches!(
        login(&r, "u", ClientCredentials::Probe, floor).err(),
        Some(ScramError::IterationsTooLow { offered: 5000, .. })
    ));
}
