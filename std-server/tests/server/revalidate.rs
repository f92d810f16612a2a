//! Revocation: live sessions end with `Goodbye(Revoked)` when their user is
//! deactivated, deleted, changes password or loses the required
//! permission (revalidated every 100 ms here), or at once through the admin
//! API's `POST /revoke`. PostgreSQL and MariaDB are ignored tests (run
//! with the URLs of databases.rs).

use std::time::Duration;

use serde_json::{Value, json};
use tether_core::message::{GoodbyeReason, RefusalCode};
use tether_server::store::Permission;
use tether_server::{Admin, AdminConfig, DefaultRealm, ServerConfig, StoreConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::*;

const DB: &str = "default.sqlite3";

fn config() -> ServerConfig {
    ServerConfig {
        revalidate: Some(Duration::from_millis(100)),
        ..test_config()
    }
}

fn store(url: String) -> StoreConfig {
    let mut store = StoreConfig::new(url);
    store.update_last_login = false;
    store.require_perm = Some(Permission {
        app_label: "devices".into(),
        codename: "connect".into(),
    });
    store
}

async fn session(addr: std::net::SocketAddr, name: &str) -> Session {
    login(addr, name, password(DB, name)).await.unwrap()
}

fn metric(server: &TestServer<DefaultRealm>, series: &str) -> f64 {
    let text = server.store.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_users_who_may_no_longer_log_in_are_revoked() {
    let db = Db::copy(DB);
    let server = start_with(store(db.url()), config(), DefaultRealm::new()).await;
    let addr = server.addr;
    let mut alice = session(addr, "alice").await;
    let mut bob = session(addr, "bob").await;
    let mut root = session(addr, "root").await;
    let mut zoe = session(addr, "zoë").await;
    let mut henry = session(addr, "henry").await;
    // Several rounds pass: nobody who may log in is disturbed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for s in [&mut alice, &mut bob, &mut root, &mut zoe, &mut henry] {
        assert_eq!(s.echo("still here").await, "still here");
    }

    db.sql("UPDATE auth_user SET is_active = 0 WHERE username = 'alice'");
    assert_eq!(alice.expect_close().await, Some(GoodbyeReason::Revoked));
    // bob's password hash changes (Django's set_password writes a new one).
    db.sql(
        "UPDATE auth_user SET password = (SELECT password FROM auth_user WHERE username = 'root') \
         WHERE username = 'bob'",
    );
    assert_eq!(bob.expect_close().await, Some(GoodbyeReason::Revoked));
    // zoë loses devices.connect (it came through her group).
    db.sql(
        "DELETE FROM auth_user_groups WHERE user_id = (SELECT id FROM auth_user WHERE username = 'zoë')",
    );
    assert_eq!(zoe.expect_close().await, Some(GoodbyeReason::Revoked));
    db.sql("DELETE FROM auth_user WHERE username = 'henry'");
    assert_eq!(henry.expect_close().await, Some(GoodbyeReason::Revoked));
    // The superuser passes the permission gate without a group.
    assert_eq!(root.echo("root stays").await, "root stays");
    for (cause, n) in [
        ("inactive", 1.0),
        ("password", 1.0),
        ("permission", 1.0),
        ("deleted", 1.0),
        ("admin", 0.0),
    ] {
        assert_eq!(
            metric(
                &server,
                &format!("tether_revocations_total{{cause=\"{cause}\"}}")
            ),
            n,
            "{cause}"
        );
    }
    assert!(metric(&server, "tether_revalidations_total{outcome=\"ok\"}") >= 4.0);
    // And they stay out.
    assert_eq!(
        login(addr, "alice", password(DB, "alice"))
            .await
            .unwrap_err()
            .code(),
        Some(RefusalCode::Unauthorized)
    );
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_rewritten_as_the_same_verifier_is_not_a_password_change() {
    let db = Db::copy(DB);
    let server = start_with(store(db.url()), config(), DefaultRealm::new()).await;
    let mut alice = session(server.addr, "alice").await;
    // What `manage.py tether_convert_hashes` does: the pbkdf2_sha256 row
    // becomes a scram_sha256 row with the same salt and iterations.
    let row = db.sql("SELECT password FROM auth_user WHERE username = 'alice'");
    let parts: Vec<&str> = row.split('$').collect();
    assert_eq!(parts[0], "pbkdf2_sha256", "{row}");
    let converted = tether_core::django::make_scram_sha256(
        password(DB, "alice"),
        parts[2],
        parts[1].parse().unwrap(),
    )
    .unwrap();
    db.sql(&format!(
        "UPDATE auth_user SET password = '{converted}' WHERE username = 'alice'"
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alice.echo("same verifier").await, "same verifier");
    // Another salt is another verifier: that is a password change.
    let rehashed = tether_core::django::make_scram_sha256(
        password(DB, "alice"),
        "anothersalt0123456789a",
        parts[1].parse().unwrap(),
    )
    .unwrap();
    db.sql(&format!(
        "UPDATE auth_user SET password = '{rehashed}' WHERE username = 'alice'"
    ));
    assert_eq!(alice.expect_close().await, Some(GoodbyeReason::Revoked));
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_answer_revokes_nobody() {
    let db = Db::copy(DB);
    let server = start_with(store(db.url()), config(), DefaultRealm::new()).await;
    let mut alice = session(server.addr, "alice").await;
    // The table the query needs is gone: every round fails.
    db.sql("ALTER TABLE auth_user RENAME TO auth_user_gone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alice.echo("not revoked").await, "not revoked");
    assert!(metric(&server, "tether_revalidations_total{outcome=\"error\"}") >= 2.0);
    assert_eq!(
        metric(&server, "tether_revocations_total{cause=\"deleted\"}"),
        0.0
    );
    server.handle.shutdown();
}

/// One request to the admin API; (status, JSON body).
async fn admin(addr: std::net::SocketAddr, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /revoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_revokes_a_user_at_once_and_forgets_its_cached_row() {
    let db = Db::copy(DB);
    // A long cache and no periodic revalidation: only the API acts.
    let mut store = store(db.url());
    store.cache_ttl = Duration::from_secs(600);
    let config = ServerConfig {
        revalidate: None,
        ..test_config()
    };
    let server = start_with(store, config, DefaultRealm::new()).await;
    let api = Admin::from_parts(
        server.realm.registry(),
        server.store.clone(),
        AdminConfig::default(),
    )
    .bind("127.0.0.1:0")
    .await
    .unwrap();
    let api_addr = api.local_addr();
    tokio::spawn(api.run(std::future::pending()));

    let mut first = session(server.addr, "alice").await;
    let mut second = session(server.addr, "alice").await;
    let mut bob = session(server.addr, "bob").await;
    // Deactivated in Django; the cached row (600 s) still says active.
    db.sql("UPDATE auth_user SET is_active = 0 WHERE username = 'alice'");
    let (status, body) = admin(api_addr, &json!({"username": "alice"}).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<u64> = serde_json::from_value(body["revoked"].clone()).unwrap();
    ids.sort_unstable();
    assert_eq!(ids, vec![first.session_id, second.session_id]);
    assert_eq!(first.expect_close().await, Some(GoodbyeReason::Revoked));
    assert_eq!(second.expect_close().await, Some(GoodbyeReason::Revoked));
    // The next login reads the database, not the cache.
    assert_eq!(
        login(server.addr, "alice", password(DB, "alice"))
            .await
            .unwrap_err()
            .code(),
        Some(RefusalCode::Unauthorized)
    );
    // By user id; nobody else is touched.
    let bob_id = user(DB, "bob")["id"].as_i64().unwrap();
    let (status, body) = admin(api_addr, &json!({"user_id": bob_id}).to_string()).await;
    assert_eq!((status, body), (200, json!({"revoked": [bob.session_id]})));
    assert_eq!(bob.expect_close().await, Some(GoodbyeReason::Revoked));
    // No live session: an empty list.
    let (status, body) = admin(api_addr, r#"{"username": "root"}"#).await;
    assert_eq!((status, body), (200, json!({"revoked": []})));
    for bad in [
        "",
        "{}",
        r#"{"user_id": "7"}"#,
        r#"{"user_id": 1, "username": "a"}"#,
    ] {
        let (status, body) = admin(api_addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(
        metric(&server, "tether_revocations_total{cause=\"admin\"}"),
        3.0
    );
    server.handle.shutdown();
}

/// On a shared database (the other ignored tests use its users): a user
/// of its own, a copy of alice's row.
async fn revoked_on(url: &str) {
    let _shared = shared_database().await;
    let db_sql = |statement: &'static str| {
        let url = url.to_string();
        async move {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            sqlx::query(statement).execute(&pool).await.unwrap();
            pool.close().await;
        }
    };
    db_sql("DELETE FROM auth_user WHERE username = 'revoked-here'").await;
    db_sql(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, \
           is_staff, is_active, date_joined) \
         SELECT password, is_superuser, 'revoked-here', first_name, last_name, email, is_staff, \
           TRUE, date_joined FROM auth_user WHERE username = 'alice'",
    )
    .await;
    let mut store = StoreConfig::new(url);
    store.update_last_login = false;
    let server = start_with(store, config(), DefaultRealm::new()).await;
    let mut revoked = login(server.addr, "revoked-here", password(DB, "alice"))
        .await
        .unwrap();
    let mut root = session(server.addr, "root").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(revoked.echo("here").await, "here");
    db_sql("UPDATE auth_user SET is_active = FALSE WHERE username = 'revoked-here'").await;
    assert_eq!(revoked.expect_close().await, Some(GoodbyeReason::Revoked));
    assert_eq!(root.echo("root stays").await, "root stays");
    db_sql("DELETE FROM auth_user WHERE username = 'revoked-here'").await;
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TETHER_TEST_POSTGRES_URL (scripts/django/migrate-url)"]
async fn revocation_on_postgres() {
    revoked_on(&std::env::var("TETHER_TEST_POSTGRES_URL").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TETHER_TEST_MYSQL_URL (scripts/django/migrate-url)"]
async fn revocation_on_mariadb() {
    revoked_on(&std::env::var("TETHER_TEST_MYSQL_URL").unwrap()).await;
}
