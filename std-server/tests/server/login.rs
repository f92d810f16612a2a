//! Logins against the Django-made fixture databases: every refusal code.

use std::net::IpAddr;
use std::time::Duration;

use tether_core::message::{Handshake, Hello, RefusalCode};
use tether_core::method::builtin::{Identity, ServerTime, WhoAmI};
use tether_core::scram::{Mechanism, Mechanisms};

use crate::common::*;

const DB: &str = "default.sqlite3";

fn whoami(bytes: &[u8]) -> Identity<'_> {
    tether_core::method::decode_reply::<WhoAmI>(bytes).unwrap()
}

#[tokio::test]
async fn alice_logs_in_and_calls_the_builtins() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    assert_eq!(s.heartbeat_secs, 30);
    assert_eq!(s.echo("hello").await, "hello");
    let me = s.call::<WhoAmI>(&()).await.unwrap();
    let me = whoami(&me);
    assert_eq!(
        (me.user_id, me.username, me.is_superuser),
        (1, "alice", false)
    );
    assert_eq!(me.session_id, s.session_id);
    let t = s.call::<ServerTime>(&()).await.unwrap();
    let t = tether_core::method::decode_reply::<ServerTime>(&t).unwrap();
    let now = tether_server::default_realm::unix_millis(std::time::SystemTime::now());
    assert!(t <= now && now - t < 5_000);
    assert_eq!(server.realm.registry().len(), 1);
    s.send(&tether_core::message::Message::Goodbye {
        reason: tether_core::message::GoodbyeReason::Normal,
    })
    .await;
    assert_eq!(s.expect_close().await, None);
    eventually(Duration::from_secs(2), || {
        server.realm.registry().is_empty()
    })
    .await;
}

#[tokio::test]
async fn every_pbkdf2_user_logs_in_with_its_own_mechanism_and_iterations() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    for (name, mechanism, iterations) in [
        ("bob", Mechanism::ScramSha1, 1_000_000),
        ("henry", Mechanism::ScramSha256, 260_000),
        ("root", Mechanism::ScramSha256, 1_000_000),
        ("o,dd=name", Mechanism::ScramSha256, 1_000_000),
        ("zoë", Mechanism::ScramSha256, 1_000_000),
        ("saslprep", Mechanism::ScramSha256, 1_000_000),
    ] {
        let mut hs = Handshaking::hello(server.addr, name, Mechanisms::ALL).await;
        let c = hs.challenge().await.unwrap();
        assert_eq!(
            (c.mechanism, c.iterations),
            (mechanism, iterations),
            "{name}"
        );
        assert_eq!(c.salt, user(DB, name)["salt"].as_str().unwrap().as_bytes());
        let mut s = hs.prove(password(DB, name)).await.unwrap();
        let me = s.call::<WhoAmI>(&()).await.unwrap();
        let me = whoami(&me);
        assert_eq!(me.username, name);
        assert_eq!(me.user_id, user(DB, name)["id"].as_i64().unwrap());
        assert_eq!(me.is_superuser, name == "root");
    }
}

#[tokio::test]
async fn other_django_versions_log_in_at_their_default_iterations() {
    for (fixture, iterations) in [
        ("django-4.2.sqlite3", 600_000),
        ("django-latest.sqlite3", 1_500_000),
    ] {
        let db = Db::copy(fixture);
        let server = start(&db).await;
        let mut hs = Handshaking::hello(server.addr, "alice", Mechanisms::ALL).await;
        assert_eq!(hs.challenge().await.unwrap().iterations, iterations);
        hs.prove(password(fixture, "alice")).await.unwrap();
        login(server.addr, "bob", password(fixture, "bob"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn refusal_codes() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    let addr = server.addr;
    let code = |r: Result<Session, LoginError>| r.err().and_then(|e| e.code());

    // unauthorized: wrong password, unknown user, inactive user (right password).
    assert_eq!(
        code(login(addr, "alice", "wrong").await),
        Some(RefusalCode::Unauthorized)
    );
    assert_eq!(
        code(login(addr, "nobody", "x").await),
        Some(RefusalCode::Unauthorized)
    );
    assert_eq!(
        code(login(addr, "eve", password(DB, "eve")).await),
        Some(RefusalCode::Unauthorized)
    );

    // Rows whose hash cannot do SCRAM, and a row needing the mechanism the
    // client did not offer: a challenge, then unauthorized (decoy.rs), like
    // a wrong password.
    for (name, offered) in [
        ("carol", Mechanisms::ALL),
        ("dave", Mechanisms::ALL),
        ("erin", Mechanisms::ALL),
        ("mallory", Mechanisms::ALL),
        ("frank", Mechanisms::ALL),
        ("bob", Mechanisms::only(Mechanism::ScramSha256)),
        ("alice", Mechanisms::only(Mechanism::ScramSha1)),
    ] {
        let mut hs = Handshaking::hello(addr, name, offered).await;
        hs.challenge()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // The right password where there is one (frank's is unusable).
        let pw = user(DB, name)["password"].as_str().unwrap_or("guess");
        let refusal = match hs.prove(pw).await {
            Err(LoginError::Refused(r)) => r,
            other => panic!("{name}: {:?}", other.err()),
        };
        assert_eq!(refusal.code, RefusalCode::Unauthorized, "{name}");
        assert_eq!(refusal.retry_after_secs, 0);
    }
    // unsupported: a hello offering no mechanism the server runs, whoever
    // the user (decided before the lookup).
    for (name, bits) in [("alice", 0), ("nobody", 4), ("carol", 0x80)] {
        let mut hs = Handshaking::hello(addr, name, Mechanisms::from_bits(bits)).await;
        assert_eq!(
            hs.challenge().await.unwrap_err().code(),
            Some(RefusalCode::Unsupported),
            "{name}"
        );
    }

    // version.
    let (mut r, mut w) = connect(addr).await;
    send_handshake(
        &mut w,
        &Handshake::Hello(Hello {
            version: 2,
            mechanisms: Mechanisms::ALL,
            max_frame: 512,
            client_first: "n,,n=alice,r=abcdefgh",
        }),
    )
    .await;
    assert_eq!(
        read_handshake(&mut r).await,
        Some(OwnedHandshake::Refused(tether_core::message::Refusal {
            code: RefusalCode::Version,
            retry_after_secs: 0
        }))
    );

    // protocol: garbage, a bad client-first-message, a proof instead of a hello,
    // a frame above 512 bytes, a max_frame below 512.
    let bad_hellos: Vec<Vec<u8>> = vec![
        vec![0xff, 0x00, 0x13],
        encode(&Handshake::Hello(Hello {
            version: 1,
            mechanisms: Mechanisms::ALL,
            max_frame: 512,
            client_first: "x,,n=alice,r=abc",
        })),
        encode(&Handshake::Proof(tether_core::message::Proof {
            client_final: "c=biws,r=abc,p=AAAA",
        })),
        encode(&Handshake::Hello(Hello {
            version: 1,
            mechanisms: Mechanisms::ALL,
            max_frame: 100,
            client_first: "n,,n=alice,r=abcdefgh",
        })),
    ];
    for body in bad_hellos {
        let (mut r, mut w) = connect(addr).await;
        send_raw_frame(&mut w, &body).await;
        match read_handshake(&mut r).await {
            Some(OwnedHandshake::Refused(refusal)) => {
                assert_eq!(refusal.code, RefusalCode::Protocol, "{body:?}")
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
    let (mut r, mut w) = connect(addr).await;
    use tokio::io::AsyncWriteExt;
    w.write_all(&[0x02, 0x01]).await.unwrap(); // 513 bytes announced
    match read_handshake(&mut r).await {
        Some(OwnedHandshake::Refused(refusal)) => assert_eq!(refusal.code, RefusalCode::Protocol),
        other => panic!("{other:?}"),
    }
    // A broken proof after a real challenge.
    let mut hs = Handshaking::hello(addr, "alice", Mechanisms::ALL).await;
    hs.challenge().await.unwrap();
    send_raw_frame(&mut hs.writer, &[9, 9, 9]).await;
    match read_handshake(&mut hs.reader).await {
        Some(OwnedHandshake::Refused(refusal)) => assert_eq!(refusal.code, RefusalCode::Protocol),
        other => panic!("{other:?}"),
    }

    // The server still serves.
    login(addr, "alice", password(DB, "alice")).await.unwrap();
}

fn encode(msg: &Handshake<'_>) -> Vec<u8> {
    let mut buf = [0u8; 600];
    tether_core::message::encode(msg, &mut buf)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    let addr = server.addr;
    // An unknown user's challenge has the shape of a real row: a mechanism
    // and iteration count some row has, a salt like Django's.
    let mut real = Handshaking::hello(addr, "alice", Mechanisms::ALL).await;
    let real_c = real.challenge().await.unwrap();
    let mut fake = Handshaking::hello(addr, "nobody", Mechanisms::ALL).await;
    let fake_c = fake.challenge().await.unwrap();
    assert!(
        [
            (Mechanism::ScramSha256, 1_000_000),
            (Mechanism::ScramSha256, 260_000),
            (Mechanism::ScramSha1, 1_000_000)
        ]
        .contains(&(fake_c.mechanism, fake_c.iterations)),
        "{fake_c:?}"
    );
    assert_eq!(fake_c.salt.len(), real_c.salt.len());
    assert!(fake_c.salt.iter().all(u8::is_ascii_alphanumeric));
    // The decoy salt is stable per username (like a real row's) and differs between names.
    let mut again = Handshaking::hello(addr, "nobody", Mechanisms::ALL).await;
    assert_eq!(again.challenge().await.unwrap().salt, fake_c.salt);
    let mut other = Handshaking::hello(addr, "nobody2", Mechanisms::ALL).await;
    assert_ne!(other.challenge().await.unwrap().salt, fake_c.salt);
    // Inactive and unauthorised users show their row's shape (so that
    // deactivating an account changes nothing an outsider sees), with keys
    // no proof matches.
    let mut eve = Handshaking::hello(addr, "eve", Mechanisms::ALL).await;
    let eve_c = eve.challenge().await.unwrap();
    assert_eq!(
        eve_c.salt,
        user(DB, "eve")["salt"].as_str().unwrap().as_bytes()
    );
    // Both end with the same refusal, same retry hint.
    let a = real.prove("wrong password").await.unwrap_err();
    let b = fake.prove("wrong password").await.unwrap_err();
    let c = eve.prove(password(DB, "eve")).await.unwrap_err();
    match (a, b, c) {
        (LoginError::Refused(a), LoginError::Refused(b), LoginError::Refused(c)) => {
            assert_eq!(a, b);
            assert_eq!(b, c);
            assert_eq!(a.code, RefusalCode::Unauthorized);
        }
        other => panic!("{other:?}"),
    }
    // A client offering only SCRAM-SHA-1 gets a SHA-1 challenge, whoever
    // the user: same salt and count as when it offers both.
    for name in ["nobody", "alice", "bob"] {
        let mut both = Handshaking::hello(addr, name, Mechanisms::ALL).await;
        let both = both.challenge().await.unwrap();
        for m in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let mut one = Handshaking::hello(addr, name, Mechanisms::only(m)).await;
            let one = one.challenge().await.unwrap();
            assert_eq!(one.mechanism, m, "{name}");
            assert_eq!(
                (one.salt, one.iterations),
                (both.salt.clone(), both.iterations)
            );
        }
    }
}

#[tokio::test]
async fn throttle_per_username_and_address_pair_account_and_address() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.throttle = tether_server::ThrottleConfig {
        pair_free_failures: 2,
        user_free_failures: 3,
        addr_free_failures: 5,
        refill: Duration::from_millis(1500),
        addr_refill: Duration::from_secs(10),
        ..Default::default()
    };
    let server = start_configured(&db, config).await;
    let addr = server.addr;
    let (one, two): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    for _ in 0..2 {
        let e = login(addr, "alice", "wrong").await.unwrap_err();
        assert_eq!(e.code(), Some(RefusalCode::Unauthorized));
    }
    // This address is blocked for alice now, even with the right password,
    // and under another spelling.
    for name in ["alice", "ALICE"] {
        let mut hs = Handshaking::hello_from(Some(one), addr, name, Mechanisms::ALL).await;
        match hs.challenge().await {
            Err(LoginError::Refused(r)) => {
                assert_eq!(r.code, RefusalCode::Throttled);
                assert!((1..=2).contains(&r.retry_after_secs), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // alice from another address is not (the account has 2 of its 3
    // failures), nor are other users from this one (2 of its 5).
    let mut hs = Handshaking::hello_from(Some(two), addr, "alice", Mechanisms::ALL).await;
    hs.challenge().await.unwrap();
    hs.prove(password(DB, "alice")).await.unwrap();
    login(addr, "bob", password(DB, "bob")).await.unwrap();
    // The pair's next failure comes back after the refill.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    login(addr, "alice", password(DB, "alice")).await.unwrap();
    // The address: failures over several usernames.
    for name in ["x1", "x2", "x3"] {
        login(addr, name, "wrong").await.unwrap_err();
    }
    let e = login(addr, "henry", password(DB, "henry"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Throttled));
}

#[tokio::test]
async fn busy_when_sessions_or_handshakes_are_at_their_limit() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.max_sessions = 1;
    config.max_handshakes = 1;
    let server = start_configured(&db, config).await;
    let addr = server.addr;
    let mut first = login(addr, "alice", password(DB, "alice")).await.unwrap();
    let e = login(addr, "bob", password(DB, "bob")).await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Busy));
    first
        .send(&tether_core::message::Message::Goodbye {
            reason: tether_core::message::GoodbyeReason::Normal,
        })
        .await;
    first.expect_close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A login past its hello holding the only handshake slot makes the
    // next one busy.
    let mut holder = Handshaking::hello(addr, "alice", Mechanisms::ALL).await;
    holder.challenge().await.unwrap();
    let mut hs = Handshaking::hello(addr, "bob", Mechanisms::ALL).await;
    assert_eq!(
        hs.challenge().await.unwrap_err().code(),
        Some(RefusalCode::Busy)
    );
    drop(holder);
    tokio::time::sleep(Duration::from_millis(100)).await;
    login(addr, "bob", password(DB, "bob")).await.unwrap();
}

/// Whether the server closed `r` without sending anything (within 5 s).
async fn closed_silently(
    r: &mut tether_test_support::wire::FrameReader<tokio::net::tcp::OwnedReadHalf>,
) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), r.next()).await,
        Ok(Err(tether_test_support::wire::ReadError::Closed))
    )
}

#[tokio::test]
async fn a_full_server_gives_a_silent_connections_slot_to_a_newcomer() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.max_handshakes = 2;
    config.max_handshakes_per_address = Some(0);
    config.early_drop_start = Some(2); // no random drop
    let server = start_configured(&db, config).await;
    let addr = server.addr;
    // Both slots held by connections that never send their hello.
    let (mut r1, _w1) = connect(addr).await;
    let (mut r2, _w2) = connect(addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A device gets in all the same; one silent connection is closed.
    login(addr, "alice", password(DB, "alice")).await.unwrap();
    let closed = [
        closed_silently(&mut r1).await,
        closed_silently(&mut r2).await,
    ];
    assert_eq!(closed.iter().filter(|c| **c).count(), 2, "{closed:?}");
    assert_eq!(
        store_metric(&server.store, r#"tether_logins_total{outcome="evicted"}"#),
        1.0
    );
    // Logins past their hello are never pushed out: full, nothing silent,
    // the newcomer is refused busy.
    let mut a = Handshaking::hello(addr, "alice", Mechanisms::ALL).await;
    let mut b = Handshaking::hello(addr, "bob", Mechanisms::ALL).await;
    a.challenge().await.unwrap();
    b.challenge().await.unwrap();
    let mut c = Handshaking::hello(addr, "root", Mechanisms::ALL).await;
    assert_eq!(
        c.challenge().await.unwrap_err().code(),
        Some(RefusalCode::Busy)
    );
    a.prove(password(DB, "alice")).await.unwrap();
    b.prove(password(DB, "bob")).await.unwrap();
}

#[tokio::test]
async fn random_early_drop_closes_newcomers_from_start_on() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.max_handshakes = 4;
    config.max_handshakes_per_address = Some(0);
    // MaxStartups 1:100:4: from one handshake on, every newcomer is dropped.
    config.early_drop_start = Some(1);
    config.early_drop_rate = 100;
    let server = start_configured(&db, config).await;
    let addr = server.addr;
    let mut holder = Handshaking::hello(addr, "alice", Mechanisms::ALL).await;
    holder.challenge().await.unwrap();
    let mut hs = Handshaking::hello(addr, "bob", Mechanisms::ALL).await;
    assert!(matches!(hs.challenge().await, Err(LoginError::Closed)));
    assert_eq!(
        store_metric(&server.store, r#"tether_logins_total{outcome="dropped"}"#),
        1.0
    );
    holder.prove(password(DB, "alice")).await.unwrap();
    // Below start, nobody is dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    login(addr, "bob", password(DB, "bob")).await.unwrap();
}

#[tokio::test]
async fn a_connection_without_a_hello_is_closed_at_the_hello_timeout() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.handshake_timeout = Duration::from_secs(30);
    config.hello_timeout = Duration::from_millis(300);
    let server = start_configured(&db, config).await;
    let (mut r, _w) = connect(server.addr).await;
    // Long before the handshake timeout, without a word.
    assert!(closed_silently(&mut r).await);
    eventually(Duration::from_secs(2), || {
        store_metric(&server.store, r#"tether_logins_total{outcome="timeout"}"#) == 1.0
    })
    .await;
    // A hello that comes in time is served.
    login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_slot() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.max_handshakes = 16;
    config.early_drop_start = Some(16); // no random drop
    assert_eq!(config.per_address_cap(), 2, "an eighth of max_handshakes");
    let unlimited = tether_server::ServerConfig {
        max_handshakes_per_address: Some(0),
        ..config
    };
    assert_eq!(
        unlimited.per_address_cap(),
        16,
        "0: only the server's limit"
    );
    let server = start_configured(&db, config).await;
    let addr = server.addr;
    let (one, two): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    // Two silent connections from one address take its two slots...
    let silent = [
        connect_from(Some(one), addr).await,
        connect_from(Some(one), addr).await,
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so its next login is refused `busy` (it may not evict: the
    // address has its share)...
    let mut hs = Handshaking::hello_from(Some(one), addr, "bob", Mechanisms::ALL).await;
    match hs.challenge().await.unwrap_err() {
        LoginError::Refused(r) => {
            assert_eq!(r.code, RefusalCode::Busy);
            assert_eq!(r.retry_after_secs, 1);
        }
        e => panic!("{e:?}"),
    }
    // ...while another address logs in, twice at once.
    let mut a = Handshaking::hello_from(Some(two), addr, "alice", Mechanisms::ALL).await;
    let mut b = Handshaking::hello_from(Some(two), addr, "bob", Mechanisms::ALL).await;
    a.challenge().await.unwrap();
    b.challenge().await.unwrap();
    a.prove(password(DB, "alice")).await.unwrap();
    b.prove(password(DB, "bob")).await.unwrap();
    // The slots come back when the silent ones go.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut hs = Handshaking::hello_from(Some(one), addr, "bob", Mechanisms::ALL).await;
    hs.challenge().await.unwrap();
    hs.prove(password(DB, "bob")).await.unwrap();
}

#[tokio::test]
async fn handshake_timeout_closes_silent_connections() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = start_configured(&db, config).await;
    let (mut r, _w) = connect(server.addr).await;
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(3), r.next())
        .await
        .unwrap();
    assert!(end.is_err());
    assert!(started.elapsed() >= Duration::from_millis(250));
}
