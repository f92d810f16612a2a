//! PostgreSQL and MariaDB/MySQL, with the schema and users made by Django's
//! own `migrate` (`scripts/django/migrate-url URL`). Ignored by default; run
//! with the URLs set:
//!
//! ```sh
//! scripts/django/migrate-url postgres://postgres@127.0.0.1:5432/tether_server_pg
//! scripts/django/migrate-url mysql://root@127.0.0.1:3306/tether_server_my
//! TETHER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/tether_server_pg \
//! TETHER_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/tether_server_my \
//!     cargo test -p tether-server --test server -- --include-ignored databases::
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::Row as _;
use tether_core::message::RefusalCode;
use tether_core::method::builtin::WhoAmI;
use tether_core::scram::{Mechanism, Mechanisms};
use tether_server::{DefaultRealm, StoreConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::common::*;

// Passwords are those of default.sqlite3 (migrate-url makes the same users).
const DB: &str = "default.sqlite3";

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("set {var} (see scripts/django/migrate-url)"))
}

async fn sql(url: &str, statement: &str) -> Vec<i64> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0).unwrap_or(0))
        .collect()
}

async fn code(addr: SocketAddr, name: &str, password: &str) -> Result<(), RefusalCode> {
    match login(addr, name, password).await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code().unwrap_or_else(|| panic!("{name}: {e:?}"))),
    }
}

async fn django_semantics(url: &str) {
    let _shared = shared_database().await;
    sql(url, "UPDATE auth_user SET last_login = NULL").await;
    let server = start_with(StoreConfig::new(url), test_config(), DefaultRealm::new()).await;
    let addr = server.addr;
    // Each row's own mechanism and iterations.
    let mut hs = Handshaking::hello(addr, "bob", Mechanisms::ALL).await;
    let c = hs.challenge().await.unwrap();
    assert_eq!(c.mechanism, Mechanism::ScramSha1);
    hs.prove(password(DB, "bob")).await.unwrap();
    let mut hs = Handshaking::hello(addr, "henry", Mechanisms::ALL).await;
    assert_eq!(hs.challenge().await.unwrap().iterations, 260_000);
    hs.prove(password(DB, "henry")).await.unwrap();
    // sam: a scram_sha256 row (django-tether's hasher), read from the server's text column.
    for name in ["alice", "sam", "root", "o,dd=name", "zoë", "saslprep"] {
        let mut s = login(addr, name, password(DB, name)).await.unwrap();
        let me = s.call::<WhoAmI>(&()).await.unwrap();
        let me = tether_core::method::decode_reply::<WhoAmI>(&me).unwrap();
        assert_eq!(me.username, name);
    }
    // Refusals.
    assert_eq!(
        code(addr, "alice", "wrong").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(
        code(addr, "nobody", "x").await,
        Err(RefusalCode::Unauthorized)
    );
    assert_eq!(
        code(addr, "eve", password(DB, "eve")).await,
        Err(RefusalCode::Unauthorized)
    );
    // Rows that cannot do SCRAM: a decoy challenge, then unauthorized.
    for name in ["carol", "dave", "erin", "mallory", "frank"] {
        let mut hs = Handshaking::hello(addr, name, Mechanisms::ALL).await;
        hs.challenge().await.unwrap();
        assert_eq!(
            hs.prove("guess").await.err().and_then(|e| e.code()),
            Some(RefusalCode::Unauthorized),
            "{name}"
        );
    }
    // The census query in this dialect counts what Django wrote.
    assert_eq!(
        server.store.census(Duration::from_secs(5)).await.unwrap(),
        expected_census(DB)
    );
    // last_login: written for alice, by Django's rule only.
    eventually_async(|| async {
        sql(url, "SELECT CASE WHEN last_login IS NULL THEN 0 ELSE 1 END FROM auth_user WHERE username = 'alice'")
            .await
            == vec![1]
    })
    .await;
    assert_eq!(
        sql(url, "SELECT CASE WHEN last_login IS NULL THEN 0 ELSE 1 END FROM auth_user WHERE username = 'eve'").await,
        vec![0]
    );
    // The timestamp is UTC "now".
    let age = sql(
        url,
        if url.starts_with("postgres") {
            "SELECT CAST(EXTRACT(EPOCH FROM (now() - last_login)) AS BIGINT) FROM auth_user WHERE username = 'alice'"
        } else {
            "SELECT TIMESTAMPDIFF(SECOND, last_login, UTC_TIMESTAMP()) FROM auth_user WHERE username = 'alice'"
        },
    )
    .await;
    assert!(age[0].abs() < 60, "last_login is {} s off", age[0]);

    // Permission and group gates.
    let mut store = StoreConfig::new(url);
    store.require_perm = Some("devices.connect".parse().unwrap());
    let gated = start_with(store, test_config(), DefaultRealm::new()).await;
    for name in ["alice", "bob", "root", "nogroup", "eve"] {
        let expected = user(DB, name)["has_connect_perm"].as_bool().unwrap();
        let got = code(gated.addr, name, password(DB, name)).await;
        assert_eq!(got.is_ok(), expected, "{name}: {got:?}");
    }
    let mut store = StoreConfig::new(url);
    store.require_group = Some("devices".into());
    let gated = start_with(store, test_config(), DefaultRealm::new()).await;
    assert_eq!(
        code(gated.addr, "alice", password(DB, "alice")).await,
        Ok(())
    );
    assert_eq!(
        code(gated.addr, "bob", password(DB, "bob")).await,
        Err(RefusalCode::Unauthorized)
    );
}

async fn eventually_async<F: Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy to the database that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    upstream: String,
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let mut p = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            upstream: upstream.to_string(),
            tasks: JoinSet::new(),
        };
        p.up().await;
        p
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let upstream = self.upstream.clone();
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    /// Closes the listener and every proxied connection.
    async fn down(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// `scheme://user@host:port/db` -> (`host:port`, the URL through `proxy`).
fn via_proxy(url: &str, proxy: SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    (
        hostport.to_string(),
        format!("{scheme}://{userinfo}@{proxy}/{path}"),
    )
}

async fn down_and_back(url: &str) {
    let (upstream, _) = via_proxy(url, "127.0.0.1:1".parse().unwrap());
    let mut proxy = Proxy::start(&upstream).await;
    let (_, proxied) = via_proxy(url, proxy.addr);
    let mut store = StoreConfig::new(proxied);
    store.lookup_timeout = Duration::from_millis(500);
    let server = start_with(store, test_config(), DefaultRealm::new()).await;
    let mut live = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    proxy.down().await;
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
    assert_eq!(live.echo("still here").await, "still here");
    proxy.up().await;
    // The pool reconnects by itself.
    login(server.addr, "bob", password(DB, "bob"))
        .await
        .unwrap();
    assert_eq!(live.echo("and now").await, "and now");
}

#[tokio::test]
#[ignore = "needs PostgreSQL (scripts/django/migrate-url; TETHER_TEST_POSTGRES_URL)"]
async fn postgres_django_semantics() {
    django_semantics(&url("TETHER_TEST_POSTGRES_URL")).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (scripts/django/migrate-url; TETHER_TEST_POSTGRES_URL)"]
async fn postgres_down_and_back() {
    down_and_back(&url("TETHER_TEST_POSTGRES_URL")).await;
}

#[tokio::test]
#[ignore = "needs MariaDB/MySQL (scripts/django/migrate-url; TETHER_TEST_MYSQL_URL)"]
async fn mysql_django_semantics() {
    django_semantics(&url("TETHER_TEST_MYSQL_URL")).await;
}

#[tokio::test]
#[ignore = "needs MariaDB/MySQL (scripts/django/migrate-url; TETHER_TEST_MYSQL_URL)"]
async fn mysql_down_and_back() {
    down_and_back(&url("TETHER_TEST_MYSQL_URL")).await;
}

#[tokio::test]
#[ignore = "needs MariaDB/MySQL (scripts/django/migrate-url; TETHER_TEST_MYSQL_URL)"]
async fn mysql_case_insensitive_collation_takes_the_identity_from_the_row() {
    let url = url("TETHER_TEST_MYSQL_URL");
    let server = start_with(StoreConfig::new(url), test_config(), DefaultRealm::new()).await;
    // utf8mb4_general_ci finds alice for ALICE, as Django's own login does.
    let mut s = login(server.addr, "ALICE", password(DB, "alice"))
        .await
        .unwrap();
    let me = s.call::<WhoAmI>(&()).await.unwrap();
    let me = tether_core::method::decode_reply::<WhoAmI>(&me).unwrap();
    assert_eq!(me.username, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs MariaDB/MySQL (scripts/django/migrate-url; TETHER_TEST_MYSQL_URL)"]
async fn mysql_another_spelling_of_a_throttled_account_gets_a_challenge_not_a_refusal() {
    // The collation finds bob for `bób` (accent-insensitive): when bob's
    // account is throttled and `bób`'s name is not, refusing at the hello
    // would tell that the row exists. The login goes on with a decoy of
    // bob's shape and ends unauthorized, like any login that cannot succeed.
    let url = url("TETHER_TEST_MYSQL_URL");
    let mut config = test_config();
    config.throttle = tether_server::ThrottleConfig {
        user_free_failures: 2,
        ..Default::default()
    };
    let server = start_with(StoreConfig::new(url), config, DefaultRealm::new()).await;
    let addr = server.addr;
    // bob's own address, where his row's challenge stays visible.
    let home = Some([127, 0, 3, 100].into());
    let mut hs = Handshaking::hello_from(home, addr, "bob", Mechanisms::ALL).await;
    let bobs = hs.challenge().await.unwrap();
    hs.prove(password(DB, "bob")).await.unwrap();
    for k in 1..=2u8 {
        let mut hs =
            Handshaking::hello_from(Some([127, 0, 3, k].into()), addr, "bob", Mechanisms::ALL)
                .await;
        hs.challenge().await.unwrap();
        assert_eq!(
            hs.prove("wrong").await.err().and_then(|e| e.code()),
            Some(RefusalCode::Unauthorized)
        );
    }
    let fresh = Some([127, 0, 3, 9].into());
    let mut hs = Handshaking::hello_from(fresh, addr, "bob", Mechanisms::ALL).await;
    assert_eq!(
        hs.challenge().await.err().and_then(|e| e.code()),
        Some(RefusalCode::Throttled)
    );
    let mut hs = Handshaking::hello_from(fresh, addr, "bób", Mechanisms::ALL).await;
    let c = hs.challenge().await.unwrap();
    assert_eq!(
        (c.mechanism, c.salt, c.iterations),
        (bobs.mechanism, bobs.salt, bobs.iterations),
        "bob's row's shape"
    );
    assert_eq!(
        hs.prove(password(DB, "bob"))
            .await
            .err()
            .and_then(|e| e.code()),
        Some(RefusalCode::Unauthorized)
    );
}
