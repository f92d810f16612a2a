//! tether-firmware's client, unmodified, over std sockets (tokio,
//! `tether_firmware::host`) against the real
//! tether-server reading the Django-made fixture database
//! fixtures/django/default.sqlite3: logins (password, cached keys, SHA-1,
//! refusals), calls both ways, notifications, kick and shutdown.

mod firmware_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_support::*;
use tether_core::message::{GoodbyeReason, RefusalCode};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, Echo, ServerTime, WhoAmI};
use tether_core::scram::{ClientCredentials, Mechanism, ScramError};
use tether_firmware::{BufferStore, CallError, Config, Error, host};
use tether_server::SessionEnd;
use tether_server::default_realm::RealmEvent;

const DB: &str = "default.sqlite3";

/// A device -> server notification type.
struct Reading;
impl Method for Reading {
    const NAME: &'static str = "reading";
    type Args<'a> = (f32, &'a str);
    type Reply<'a> = ();
}
impl tether_core::method::ToServer for Reading {}

fn config() -> Config {
    // Django 5.2 rows use 1,000,000 iterations; henry's old row 260,000.
    Config::default().with_min_iterations(200_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_logs_in_to_tether_server_and_calls_both_ways() {
    let db = Db::copy(DB);
    let mut server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
    let addr = server.addr;
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let mut mind = DeviceMind {
        report: move |e| log.lock().unwrap().push(e),
    };
    let mut store: BufferStore = BufferStore::new();
    let login = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(password(DB, "alice")),
        &mut TestRng(1),
        &config(),
    )
    .await
    .unwrap();
    assert!(login.derived);
    assert_eq!(login.keys.iterations, 1_000_000);
    assert_eq!(login.keys.mechanism, Mechanism::ScramSha256);
    let keys = login.keys.clone();
    let mut session = login.session;
    let id = session.session_id();
    assert!(
        matches!(server.event().await, RealmEvent::Connected { session, ref username, .. }
        if session == id && username == "alice")
    );

    // Device -> server.
    let me = session.call::<WhoAmI, _>(&(), &mut mind).await.unwrap();
    assert_eq!((me.username, me.session_id), ("alice", id));
    assert!(!me.is_superuser);
    assert_eq!(
        session
            .call::<Echo, _>(&"hello tether", &mut mind)
            .await
            .unwrap(),
        "hello tether"
    );
    let t = session.call::<ServerTime, _>(&(), &mut mind).await.unwrap();
    assert!(t > 1_700_000_000_000);
    match session.call::<Reading, _>(&(1.0, "x"), &mut mind).await {
        Err(CallError::Remote { code, .. }) => {
            assert_eq!(code, tether_core::message::ErrorCode::UNKNOWN_METHOD)
        }
        other => panic!("{other:?}"),
    }
    // The realm asked device_info at attach; the mind answers it while the
    // device is busy with its own calls or, if the call came after them,
    // while it serves here.
    let info = session
        .serve_until(&mut mind, server.event())
        .await
        .unwrap();
    assert!(
        matches!(info, RealmEvent::DeviceInfo { session, ref firmware, .. }
        if session == id && firmware == "tether-firmware e2e"),
        "{info:?}"
    );

    // Several device calls in flight.
    let t5 = Duration::from_secs(5);
    let a = session.send_call::<Echo>(&"one", t5).await.unwrap();
    let b = session.send_call::<WhoAmI>(&(), t5).await.unwrap();
    let c = session.send_call::<Echo>(&"three", t5).await.unwrap();
    let mut seen = 0;
    for _ in 0..3 {
        let reply = session.next_reply(&mut mind).await.unwrap();
        if let Some(r) = a.take(&reply) {
            assert_eq!(r, Ok("one"));
            seen |= 1;
        }
        if let Some(r) = b.take(&reply) {
            assert_eq!(r.unwrap().username, "alice");
            seen |= 2;
        }
        if let Some(r) = c.take(&reply) {
            assert_eq!(r, Ok("three"));
            seen |= 4;
        }
    }
    assert_eq!(seen, 7);

    // Server -> device, several in flight, while the device serves.
    let device = server.registry.mind(id).expect("mind of the session");
    let server_side = tokio::spawn(async move {
        let calls = (0..3).map(|i| {
            let d = device.clone();
            async move {
                let text = format!("from server {i}");
                let r = d.call::<Echo>(&text.as_str()).await.unwrap();
                assert_eq!(r.get(), text);
            }
        });
        let all: Vec<_> = calls.map(tokio::spawn).collect();
        for h in all {
            h.await.unwrap();
        }
        let info = device.call::<DeviceInfo>(&()).await.unwrap();
        assert_eq!(info.get().uptime_secs, 3);
        device.notify::<Echo>(&"heads up").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        device.close(GoodbyeReason::Kicked);
    });
    session.notify::<Reading>(&(21.5, "celsius")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), session.serve(&mut mind))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(end, Error::Closed(GoodbyeReason::Kicked)),
        "{end:?}"
    );
    server_side.await.unwrap();
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|e| **e == DeviceEvent::Called("echo".into()))
            .count(),
        3
    );
    assert!(seen.contains(&DeviceEvent::Notified(
        "echo".into(),
        vec![8, b'h', b'e', b'a', b'd', b's', b' ', b'u', b'p']
    )));
    assert!(
        matches!(server.event().await, RealmEvent::Disconnected { session, .. } if session == id)
    );

    // Cached keys: no PBKDF2, same account. Then a clean goodbye.
    let login = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut TestRng(2),
        &config(),
    )
    .await
    .unwrap();
    assert!(!login.derived);
    let mut session = login.session;
    let id2 = session.session_id();
    assert_ne!(id, id2);
    assert_eq!(
        session.call::<Echo, _>(&"again", &mut mind).await.unwrap(),
        "again"
    );
    session.close().await.unwrap();
    drop(session);
    loop {
        if let RealmEvent::Disconnected { session, end, .. } = server.event().await {
            assert_eq!(session, id2);
            assert_eq!(end, SessionEnd::Goodbye(GoodbyeReason::Normal));
            break;
        }
    }

    // Graceful shutdown reaches a serving device as Goodbye(Shutdown).
    let login = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut TestRng(3),
        &config(),
    )
    .await
    .unwrap();
    let mut session = login.session;
    let handle = server.handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.shutdown();
    });
    let end = tokio::time::timeout(Duration::from_secs(30), session.serve(&mut mind))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(end, Error::Closed(GoodbyeReason::Shutdown)),
        "{end:?}"
    );
    server.join.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_accounts_log_in_or_are_refused_with_the_right_code() {
    let db = Db::copy(DB);
    let server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
    let addr = server.addr;
    let mut store: BufferStore = BufferStore::new();
    let mut rng = TestRng(10);
    let mut login = async |user: &str, pw: &str, cfg: Config| {
        host::connect(
            addr,
            store.buffers(),
            user,
            ClientCredentials::Password(pw),
            &mut rng,
            &cfg,
        )
        .await
        .map(|l| (l.keys.mechanism, l.session.session_id()))
    };
    // bob's row is pbkdf2_sha1: SCRAM-SHA-1.
    let (mech, _) = login("bob", password(DB, "bob"), config()).await.unwrap();
    assert_eq!(mech, Mechanism::ScramSha1);
    let refused = |r: Result<_, Error<std::io::Error>>| match r {
        Err(Error::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(login("alice", "not-her-password", config()).await),
        RefusalCode::Unauthorized
    );
    assert_eq!(
        refused(login("nobody", "whatever", config()).await),
        RefusalCode::Unauthorized
    );
    // Inactive, and active without the devices.connect permission.
    assert_eq!(
        refused(login("eve", password(DB, "eve"), config()).await),
        RefusalCode::Unauthorized
    );
    assert_eq!(
        refused(login("nogroup", password(DB, "nogroup"), config()).await),
        RefusalCode::Unauthorized
    );
    // argon2 cannot do SCRAM: refused like a wrong password, so that no
    // outsider learns what the row holds.
    assert_eq!(
        refused(login("carol", password(DB, "carol"), config()).await),
        RefusalCode::Unauthorized
    );
    // henry's row predates Django 4.2 (260,000 iterations): a device whose
    // floor is Django 5.2's refuses it before sending a proof.
    match login(
        "henry",
        password(DB, "henry"),
        Config::default().with_min_iterations(1_000_000),
    )
    .await
    {
        Err(Error::Login(ScramError::IterationsTooLow {
            offered: 260_000, ..
        })) => {}
        other => panic!("{other:?}"),
    }
    login("henry", password(DB, "henry"), config())
        .await
        .unwrap();
    server.handle.shutdown();
}

/// A row of fixtures/django/users.json.
fn password_hash(username: &str) -> String {
    let text = std::fs::read_to_string(fixtures().join("users.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["databases"][DB]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == username)
        .unwrap()["password_hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Cached keys built from nothing but a stolen row: every 32-byte value in
/// it, and each one hash or HMAC away, as ClientKey (the row's ServerKey as
/// ServerKey, so only the proof can fail).
fn keys_from_stolen_row(row: &str) -> Vec<tether_core::scram::CachedKeys> {
    use tether_core::django::{self, RowKeys};
    use tether_core::scram::{CachedKeys, Key, Salt};
    let parsed = django::parse(row).unwrap();
    let creds = django::credentials(row).unwrap();
    let material: Vec<Key> = match parsed.keys {
        RowKeys::SaltedPassword(k) => vec![k],
        RowKeys::Verifier {
            stored_key,
            server_key,
        } => vec![stored_key, server_key],
    };
    let mut candidates = Vec::new();
    for k in material {
        use hmac::{KeyInit as _, Mac as _};
        use sha2::Digest as _;
        let hmac = |label: &[u8]| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(k.as_bytes()).unwrap();
            mac.update(label);
            Key::from_slice(&mac.finalize().into_bytes()).unwrap()
        };
        candidates.push(k);
        candidates.push(Key::from_slice(&sha2::Sha256::digest(k.as_bytes())).unwrap());
        candidates.push(hmac(b"Client Key"));
        candidates.push(hmac(b"Server Key"));
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

/// Issue 12: a copy of a pbkdf2_sha256 row logs its device in (the caveat of
/// the README); a copy of django-tether's scram_sha256 row does not, while
/// the password still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_scram_sha256_row_logs_no_device_in() {
    let db = Db::copy(DB);
    let server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
    let addr = server.addr;
    let mut store: BufferStore = BufferStore::new();
    let mut rng = TestRng(11);
    let mut accepted = async |user: &str, creds: ClientCredentials<'_>| match host::connect(
        addr,
        store.buffers(),
        user,
        creds,
        &mut rng,
        &config(),
    )
    .await
    {
        Ok(mut login) => {
            login.session.close().await.ok();
            true
        }
        Err(Error::Refused {
            code: RefusalCode::Unauthorized,
            ..
        }) => false,
        Err(e) => panic!("{user}: {e:?}"),
    };
    let mut stolen = 0;
    for keys in keys_from_stolen_row(&password_hash("alice")) {
        stolen += usize::from(accepted("alice", ClientCredentials::Keys(&keys)).await);
    }
    assert_eq!(
        stolen, 1,
        "HMAC(SaltedPassword, \"Client Key\") of a pbkdf2 row"
    );
    let sam = password_hash("sam");
    assert!(sam.starts_with("scram_sha256$"), "{sam}");
    for keys in keys_from_stolen_row(&sam) {
        assert!(!accepted("sam", ClientCredentials::Keys(&keys)).await);
    }
    assert!(accepted("sam", ClientCredentials::Password(password(DB, "sam"))).await);
    server.handle.shutdown();
}
