//! Django semantics of the credential store: permission and group gates,
//! custom user model, last_login, the cache TTL bound, database down and back.

use std::time::{Duration, Instant};

use tether_core::message::RefusalCode;
use tether_core::method::builtin::WhoAmI;
use tether_core::scram::Mechanism;
use tether_server::{DefaultRealm, Store, StoreConfig};

use crate::common::*;

const DB: &str = "default.sqlite3";

async fn outcome(addr: std::net::SocketAddr, db: &str, name: &str) -> Result<(), RefusalCode> {
    match login(addr, name, password(db, name)).await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code().unwrap_or_else(|| panic!("{name}: {e:?}"))),
    }
}

#[tokio::test]
async fn permission_gate_matches_djangos_has_perm() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.require_perm = Some("devices.connect".parse().unwrap());
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    // Every PBKDF2 user with a usable password: the outcome is Django's has_perm.
    for name in ["alice", "bob", "eve", "root", "henry", "nogroup", "zoë"] {
        let expected = user(DB, name)["has_connect_perm"].as_bool().unwrap();
        let got = outcome(server.addr, DB, name).await;
        if expected {
            assert_eq!(got, Ok(()), "{name}");
        } else {
            assert_eq!(got, Err(RefusalCode::Unauthorized), "{name}");
        }
    }
    // The lookup answers the gate in the same single query.
    let sql = server.store.lookup_sql();
    assert_eq!(sql.matches("SELECT").count(), 3, "{sql}"); // the row + 2 EXISTS
    assert!(!sql.contains(';'));
    // Identity carries the permission.
    let mut s = login(server.addr, "bob", password(DB, "bob"))
        .await
        .unwrap();
    s.call::<WhoAmI>(&()).await.unwrap();
    let entry = &server.realm.registry().list()[0];
    assert_eq!(
        entry.info.user.permission.as_deref(),
        Some("devices.connect")
    );
}

#[tokio::test]
async fn unknown_permission_lets_only_superusers_in() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.require_perm = Some("devices.launch_missiles".parse().unwrap());
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    assert_eq!(
        outcome(server.addr, DB, "alice").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(outcome(server.addr, DB, "root").await, Ok(()));
}

#[tokio::test]
async fn group_gate() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.require_group = Some("devices".into());
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    assert_eq!(outcome(server.addr, DB, "alice").await, Ok(()));
    assert_eq!(outcome(server.addr, DB, "henry").await, Ok(()));
    // bob has the permission directly but is in no group; root is a superuser in no group.
    assert_eq!(
        outcome(server.addr, DB, "bob").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(
        outcome(server.addr, DB, "root").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(
        outcome(server.addr, DB, "eve").await,
        Err(RefusalCode::Unauthorized)
    );
}

#[tokio::test]
async fn custom_user_model_with_email_username_field() {
    const C: &str = "custom_user.sqlite3";
    let db = Db::copy(C);
    let mut store = StoreConfig::new(db.url());
    store.user_table = "accounts_emailuser".into();
    store.username_column = "email".into();
    store.require_perm = Some("devices.connect".parse().unwrap());
    store.require_group = Some("devices".into());
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let mut s = login(
        server.addr,
        "alice@example.com",
        password(C, "alice@example.com"),
    )
    .await
    .unwrap();
    let me = s.call::<WhoAmI>(&()).await.unwrap();
    let me = tether_core::method::decode_reply::<WhoAmI>(&me).unwrap();
    assert_eq!((me.user_id, me.username), (1, "alice@example.com"));
    assert_eq!(
        outcome(server.addr, C, "inactive@example.com").await,
        Err(RefusalCode::Unauthorized)
    );
    eventually(Duration::from_secs(3), || {
        !db.sql("SELECT last_login FROM accounts_emailuser WHERE id = 1")
            .is_empty()
    })
    .await;
}

#[tokio::test]
async fn last_login_is_written_like_update_last_login() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    let before = db.sql("SELECT id, password, is_active, date_joined FROM auth_user ORDER BY id");
    login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    login(server.addr, "bob", "wrong").await.unwrap_err();
    eventually(Duration::from_secs(3), || {
        !db.sql("SELECT last_login FROM auth_user WHERE username = 'alice'")
            .is_empty()
    })
    .await;
    let stamp = db.sql("SELECT last_login FROM auth_user WHERE username = 'alice'");
    // Django's SQLite format: 'YYYY-MM-DD HH:MM:SS.ffffff', UTC.
    assert_eq!(stamp.len(), 26, "{stamp}");
    assert_eq!(&stamp[10..11], " ");
    let year: i32 = stamp[..4].parse().unwrap();
    assert!(year >= 2026);
    // Nothing else changed; failed logins write nothing.
    assert_eq!(
        db.sql("SELECT count(*) FROM auth_user WHERE last_login IS NOT NULL"),
        "1"
    );
    assert_eq!(
        db.sql("SELECT id, password, is_active, date_joined FROM auth_user ORDER BY id"),
        before
    );
}

#[tokio::test]
async fn last_login_is_left_alone_with_the_flag() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.update_last_login = false;
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        db.sql("SELECT count(*) FROM auth_user WHERE last_login IS NOT NULL"),
        "0"
    );
}

#[tokio::test]
async fn cache_never_outlives_its_ttl() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.cache_ttl = Duration::from_millis(800);
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let addr = server.addr;
    login(addr, "alice", password(DB, "alice")).await.unwrap();
    // Deactivate alice and change bob's password behind the server's back.
    db.sql("UPDATE auth_user SET is_active = 0 WHERE username = 'alice'");
    // Both entries are at least as old as this instant (bob's is the newer).
    let cached_at = Instant::now();
    login(addr, "bob", password(DB, "bob")).await.unwrap();
    let alice_hash = user(DB, "alice")["password_hash"].as_str().unwrap();
    // bob's row gets a SHA-256 hash of alice's password.
    db.sql(&format!(
        "UPDATE auth_user SET password = '{alice_hash}' WHERE username = 'bob'"
    ));
    // Within the TTL the cache may still answer...
    let _ = login(addr, "alice", password(DB, "alice")).await;
    // ...but never after it.
    let wait = Duration::from_millis(850).saturating_sub(cached_at.elapsed());
    tokio::time::sleep(wait).await;
    assert_eq!(
        login(addr, "alice", password(DB, "alice"))
            .await
            .unwrap_err()
            .code(),
        Some(RefusalCode::Unauthorized)
    );
    let e = login(addr, "bob", password(DB, "bob")).await.unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Unauthorized));
    login(addr, "bob", password(DB, "alice")).await.unwrap();
}

#[tokio::test]
async fn idle_server_holds_no_lock() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.update_last_login = false;
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let _s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    login(server.addr, "nobody", "x").await.unwrap_err();
    // Django must be able to write at once (no busy wait).
    let out = std::process::Command::new("sqlite3")
        .arg(&db.path)
        .arg("BEGIN EXCLUSIVE; UPDATE auth_user SET first_name = 'y' WHERE id = 2; COMMIT;")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn cache_is_off_by_default() {
    let db = Db::copy(DB);
    let server = start(&db).await;
    login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    db.sql("UPDATE auth_user SET is_active = 0 WHERE username = 'alice'");
    let e = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Unauthorized));
}

#[tokio::test]
async fn database_missing_then_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let mut store = StoreConfig::new(format!("sqlite://{}", path.display()));
    store.lookup_timeout = Duration::from_millis(500);
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let started = Instant::now();
    let e = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap_err();
    match e {
        LoginError::Refused(r) => {
            assert_eq!(r.code, RefusalCode::Unavailable);
            assert!(r.retry_after_secs > 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    std::fs::copy(fixtures_dir().join(DB), &path).unwrap();
    login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
}

#[tokio::test]
async fn database_locked_then_back_while_sessions_live_on() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.lookup_timeout = Duration::from_millis(500);
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let mut live = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    // Another process takes an exclusive lock (a migration, a long write).
    let mut locker = std::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(&db.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = locker.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "BEGIN EXCLUSIVE; UPDATE auth_user SET first_name = 'x' WHERE id = 1;"
        )
        .unwrap();
        writeln!(stdin, "SELECT 1;").unwrap();
        stdin.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let e = login(server.addr, "bob", password(DB, "bob"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RefusalCode::Unavailable), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The live session does not need the database.
    assert_eq!(live.echo("still here").await, "still here");
    // The lock goes away: logins resume by themselves.
    {
        use std::io::Write;
        let stdin = locker.stdin.as_mut().unwrap();
        writeln!(stdin, "ROLLBACK;").unwrap();
    }
    drop(locker.stdin.take());
    locker.wait().unwrap();
    login(server.addr, "bob", password(DB, "bob"))
        .await
        .unwrap();
    assert_eq!(live.echo("and now").await, "and now");
}

#[tokio::test]
async fn queued_last_logins_are_written_by_close() {
    let db = Db::copy(DB);
    let store = Store::open(StoreConfig::new(db.url())).unwrap();
    let ids = user_ids(&db);
    assert!(ids.len() >= 3);
    for &id in &ids {
        store.record_login(id);
    }
    // Sooner than the writer's own round (1 s).
    store.close().await;
    assert_eq!(
        db.sql("SELECT count(*) FROM auth_user WHERE last_login IS NOT NULL"),
        ids.len().to_string()
    );
}

#[tokio::test]
async fn a_flush_of_several_batches_writes_every_login() {
    // More logins than one UPDATE takes (500): the flush's transaction
    // has three statements, and the real rows are among the first and
    // the last logins queued.
    let db = Db::copy(DB);
    let store = Store::open(StoreConfig::new(db.url())).unwrap();
    let ids = user_ids(&db);
    let (first, last) = ids.split_at(ids.len() / 2);
    for &id in first {
        store.record_login(id);
    }
    for missing in 1_000_000..1_001_200 {
        store.record_login(missing);
    }
    for &id in last {
        store.record_login(id);
    }
    store.flush_last_logins().await.unwrap();
    assert_eq!(
        db.sql("SELECT count(*) FROM auth_user WHERE last_login IS NOT NULL"),
        ids.len().to_string()
    );
    store.close().await;
}

#[tokio::test]
async fn last_logins_wait_out_a_locked_database() {
    let db = Db::copy(DB);
    let mut config = StoreConfig::new(db.url());
    config.lookup_timeout = Duration::from_millis(100);
    let store = Store::open(config).unwrap();
    let alice = db_id(&db, "alice");
    let mut locker = std::process::Command::new("sqlite3")
        .arg(&db.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = locker.stdin.as_mut().unwrap();
    {
        use std::io::{BufRead as _, Write as _};
        writeln!(stdin, "BEGIN EXCLUSIVE; SELECT 'locked';").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(locker.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    store.record_login(alice);
    // The writes fail while the lock is held (each gives up within 200 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(store.flush_last_logins().await.is_err());
    {
        use std::io::Write as _;
        writeln!(locker.stdin.as_mut().unwrap(), "ROLLBACK;").unwrap();
    }
    drop(locker.stdin.take());
    locker.wait().unwrap();
    eventually(Duration::from_secs(3), || {
        db.sql("SELECT count(*) FROM auth_user WHERE last_login IS NOT NULL") == "1"
    })
    .await;
    assert!(
        !db.sql(&format!(
            "SELECT last_login FROM auth_user WHERE id = {alice}"
        ))
        .is_empty()
    );
    store.close().await;
}

#[tokio::test]
async fn census_counts_every_pbkdf2_row_by_mechanism_and_iterations() {
    // Inactive rows too (eve): an outsider sees their shape as well.
    let db = Db::copy(DB);
    let store = Store::open(StoreConfig::new(db.url())).unwrap();
    let counts = store.census(Duration::from_secs(5)).await.unwrap();
    assert_eq!(counts, expected_census(DB));
    let n = |m, i| counts.get(&(m, i)).copied().unwrap_or(0);
    assert_eq!(n(Mechanism::ScramSha256, 260_000), 1);
    assert_eq!(n(Mechanism::ScramSha1, 1_000_000), 1);
    assert!(n(Mechanism::ScramSha256, 1_000_000) >= 7);
    let custom = Db::copy("custom_user.sqlite3");
    let mut config = StoreConfig::new(custom.url());
    config.user_table = "accounts_emailuser".into();
    let store = Store::open(config).unwrap();
    assert_eq!(
        store.census(Duration::from_secs(5)).await.unwrap(),
        expected_census("custom_user.sqlite3")
    );
}

/// Every user's id, in order.
fn user_ids(db: &Db) -> Vec<i64> {
    db.sql("SELECT id FROM auth_user ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn db_id(db: &Db, username: &str) -> i64 {
    db.sql(&format!(
        "SELECT id FROM auth_user WHERE username = '{username}'"
    ))
    .parse()
    .unwrap()
}

/// `mv new.sqlite3 db.sqlite3` (a restore, an rsync): the very next login
/// reads the new file, and revalidation (the sqlx pool) sees it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_replaced_by_rename_is_read_fresh() {
    let db = Db::copy(DB);
    let mut store = StoreConfig::new(db.url());
    store.update_last_login = false;
    let config = tether_server::ServerConfig {
        revalidate: Some(Duration::from_millis(100)),
        ..test_config()
    };
    let server = start_with(store, config, DefaultRealm::new()).await;
    // Both lookup threads have the old file open.
    for _ in 0..4 {
        assert_eq!(outcome(server.addr, DB, "henry").await, Ok(()));
    }
    let mut live = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();

    // The new file: alice deactivated, henry deleted, eve active.
    let new = db.dir.path().join("restored.sqlite3");
    std::fs::copy(&db.path, &new).unwrap();
    let status = std::process::Command::new("sqlite3")
        .arg(&new)
        .arg(
            "UPDATE auth_user SET is_active = 0 WHERE username = 'alice'; \
             DELETE FROM auth_user WHERE username = 'henry'; \
             UPDATE auth_user SET is_active = 1 WHERE username = 'eve';",
        )
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(&new, &db.path).unwrap();

    assert_eq!(
        outcome(server.addr, DB, "henry").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(
        outcome(server.addr, DB, "alice").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(outcome(server.addr, DB, "eve").await, Ok(()));
    assert_eq!(
        live.expect_close().await,
        Some(tether_core::message::GoodbyeReason::Revoked)
    );
    server.handle.shutdown();
}
