//! The library's API as a Rust application uses it (issue 18): one
//! `Result` per call with replies borrowed or owned, the drop guard of a
//! call whose caller gave up, `Mind::closed`, the newest session of a user.

use std::time::Duration;

use tether_core::message::{GoodbyeReason, Message, RefusalCode};
use tether_core::method::Method;
use tether_core::method::builtin::Echo;
use tether_server::StoreConfig;

use crate::common::*;

const DB: &str = "default.sqlite3";

/// A server -> device method whose reply borrows nothing.
struct Double;
impl Method for Double {
    const NAME: &'static str = "double";
    type Args<'a> = u64;
    type Reply<'a> = u64;
}
impl tether_core::method::ToDevice for Double {}

async fn server(db: &Db) -> TestServer<TestRealm> {
    start_with(
        StoreConfig::new(db.url()),
        test_config(),
        TestRealm::default(),
    )
    .await
}

#[tokio::test]
async fn replies_are_borrowed_or_owned_from_one_result() {
    let db = Db::copy(DB);
    let server = server(&db).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), || {
        !server.realm.minds.lock().unwrap().is_empty()
    })
    .await;
    let mind = server.realm.minds.lock().unwrap()[0].clone();

    let m = mind.clone();
    let call = tokio::spawn(async move { m.call::<Double>(&21).await });
    let Some(Msg::Call { id, method, .. }) = s.recv().await else {
        panic!()
    };
    assert_eq!(method, "double");
    let mut buf = [0u8; 16];
    let result = tether_core::method::encode_reply::<Double>(&42, &mut buf).unwrap();
    s.send(&Message::Reply { id, result }).await;
    let owned: u64 = call.await.unwrap().unwrap().into_owned();
    assert_eq!(owned, 42);

    let m = mind.clone();
    let call = tokio::spawn(async move { m.call::<Echo>(&"borrowed").await });
    let Some(Msg::Call { id, args, .. }) = s.recv().await else {
        panic!()
    };
    s.send(&Message::Reply { id, result: &args }).await;
    let reply = call.await.unwrap().unwrap();
    let text: &str = reply.get();
    assert_eq!(text, "borrowed");

    // A reply that does not decode fails the call, in the same Result.
    let m = mind.clone();
    let call = tokio::spawn(async move { m.call::<Double>(&1).await });
    let Some(Msg::Call { id, .. }) = s.recv().await else {
        panic!()
    };
    s.send(&Message::Reply { id, result: &[] }).await;
    assert!(matches!(
        call.await.unwrap(),
        Err(tether_server::CallError::BadReply(_))
    ));
}

#[tokio::test]
async fn a_dropped_call_frees_its_slot_and_its_late_answer_is_ignored() {
    let db = Db::copy(DB);
    let server = server(&db).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), || {
        !server.realm.minds.lock().unwrap().is_empty()
    })
    .await;
    let mind = server.realm.minds.lock().unwrap()[0].clone();

    // The caller gives up (an HTTP client hung up): its future is dropped
    // while the device has not answered.
    let m = mind.clone();
    let call = tokio::spawn(async move { m.call::<Echo>(&"given up").await });
    let Some(Msg::Call { id, args, .. }) = s.recv().await else {
        panic!()
    };
    assert_eq!(mind.calls_in_flight(), 1);
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(mind.calls_in_flight(), 0);

    // Dropped inside a select! that took another branch.
    tokio::select! {
        _ = mind.call::<Echo>(&"raced") => panic!("the device does not answer"),
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    let Some(Msg::Call { id: raced, .. }) = s.recv().await else {
        panic!()
    };
    assert_eq!(mind.calls_in_flight(), 0);

    // The device answers late: ignored, not a protocol error.
    s.send(&Message::Reply { id, result: &args }).await;
    s.send(&Message::Reply {
        id: raced,
        result: &args,
    })
    .await;
    assert_eq!(s.echo("still up").await, "still up");
    assert!(!mind.is_closed());
}

#[tokio::test]
async fn mind_closed_completes_when_the_session_ends() {
    let db = Db::copy(DB);
    let server = server(&db).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), || {
        !server.realm.minds.lock().unwrap().is_empty()
    })
    .await;
    let mind = server.realm.minds.lock().unwrap()[0].clone();
    let m = mind.clone();
    let waiter = tokio::spawn(async move { m.closed().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    s.send(&Message::Goodbye {
        reason: GoodbyeReason::Normal,
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("closed() completes")
        .unwrap();
    assert!(mind.is_closed());
    // At once once ended.
    tokio::time::timeout(Duration::from_millis(100), mind.closed())
        .await
        .unwrap();
}

#[tokio::test]
async fn newest_of_finds_the_latest_live_session_of_a_user() {
    let db = Db::copy(DB);
    let server = server(&db).await;
    let registry = server.realm.inner.registry();
    assert!(registry.newest_of("alice").is_none());
    let _first = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), || registry.len() == 1).await;
    let first = registry.newest_of("alice").unwrap();
    let _second = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    eventually(Duration::from_secs(2), || registry.len() == 2).await;
    let second = registry.newest_of("alice").unwrap();
    assert!(second.session_id() > first.session_id());
    // One closing is skipped.
    second.close(GoodbyeReason::Kicked);
    assert_eq!(
        registry.newest_of("alice").unwrap().session_id(),
        first.session_id()
    );
    assert!(registry.newest_of("bob").is_none());
}

#[tokio::test]
async fn a_nested_admin_router_needs_a_token_or_an_explicit_opt_out() {
    use tether_server::admin::AdminError;
    use tether_server::default_realm::Registry;
    use tether_server::{Admin, AdminConfig, AdminToken, Store};

    let db = Db::copy(DB);
    let store = std::sync::Arc::new(Store::open(StoreConfig::new(db.url())).unwrap());
    let admin = Admin::from_parts(Registry::new(), store.clone(), AdminConfig::default());
    assert!(matches!(admin.router(), Err(AdminError::Unauthenticated)));
    assert!(admin.allow_unauthenticated().router().is_ok());

    // With a token, the nested router asks for it.
    let config = AdminConfig {
        token: Some(AdminToken::new("a-token-long-enough-for-the-test").unwrap()),
        ..Default::default()
    };
    let router = Admin::from_parts(Registry::new(), store, config)
        .router()
        .unwrap();
    let app = axum::Router::new().nest("/tether", router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get_status(addr, "/tether/sessions", None).await, 401);
    let token = "a-token-long-enough-for-the-test";
    assert_eq!(get_status(addr, "/tether/sessions", Some(token)).await, 200);
}

/// The status code of a `GET` over a fresh HTTP/1.1 connection.
async fn get_status(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A tokio byte stream as the device client's transport (embedded-io-async).
struct DuplexTransport(tokio::io::BufReader<tokio::io::DuplexStream>);

impl tether_firmware::embedded_io_async::ErrorType for DuplexTransport {
    type Error = std::io::Error;
}

impl tether_firmware::embedded_io_async::Read for DuplexTransport {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        tokio::io::AsyncReadExt::read(&mut self.0, buf).await
    }
}

impl tether_firmware::embedded_io_async::ReadReady for DuplexTransport {
    fn read_ready(&mut self) -> std::io::Result<bool> {
        Ok(!self.0.buffer().is_empty())
    }
}

impl tether_firmware::embedded_io_async::Write for DuplexTransport {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        tokio::io::AsyncWriteExt::write(&mut self.0, buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::flush(&mut self.0).await
    }
}

/// Logs `username` in over a `tokio::io::duplex` pipe whose server end is
/// handed to the server as a connection from `peer`.
async fn login_over_duplex<'b>(
    handle: &tether_server::ServerHandle,
    peer: std::net::SocketAddr,
    buffers: tether_firmware::Buffers<'b>,
    username: &str,
    password: &str,
) -> Result<
    tether_firmware::Established<'b, DuplexTransport, tether_firmware::TokioClock>,
    tether_firmware::Error<std::io::Error>,
> {
    let (device_end, server_end) = tokio::io::duplex(8 * 1024);
    handle.serve_connection(server_end, peer);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    tether_firmware::Session::login(
        DuplexTransport(tokio::io::BufReader::new(device_end)),
        buffers,
        tether_firmware::TokioClock::new(),
        username,
        tether_core::scram::ClientCredentials::Password(password),
        &mut rng,
        &tether_firmware::Config::default(),
    )
    .await
}

#[tokio::test]
async fn a_connection_over_any_byte_stream_logs_in_and_calls_both_ways() {
    let db = Db::copy(DB);
    let server = start_with(
        StoreConfig::new(db.url()),
        tether_server::ServerConfig {
            throttle: tether_server::ThrottleConfig {
                pair_free_failures: 1,
                ..tether_server::ThrottleConfig::default()
            },
            ..test_config()
        },
        TestRealm::default(),
    )
    .await;
    let peer: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let mut store: tether_firmware::BufferStore = tether_firmware::BufferStore::new();
    let mut login = login_over_duplex(
        &server.handle,
        peer,
        store.buffers(),
        "alice",
        password(DB, "alice"),
    )
    .await
    .unwrap();
    // Device -> server.
    let echoed = login
        .session
        .call::<Echo, _>(&"over a pipe", &mut ())
        .await
        .map(|s| s.to_string())
        .map_err(|e| e.into_owned())
        .unwrap();
    assert_eq!(echoed, "over a pipe");
    // The server sees the peer it was given.
    let registry = server.realm.inner.registry();
    let mind = registry.newest_of("alice").unwrap();
    assert_eq!(mind.peer(), peer);
    // Server -> device: the device answers while it serves.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let device = async {
        let mut double = tether_firmware::Methods::new(()).method::<Double>(|_, n| Ok(n * 2));
        let r = login.session.serve_until(&mut double, stop_rx).await;
        (r.is_ok(), login)
    };
    let server_side = async {
        let reply = mind.call::<Double>(&21).await.unwrap();
        assert_eq!(reply.into_owned(), 42);
        let _ = stop_tx.send(());
    };
    let ((served, mut login), ()) = tokio::join!(device, server_side);
    assert!(served);
    // The throttle keys on the peer given: one wrong password from it, and
    // the next is throttled; another peer is not.
    let mut other: tether_firmware::BufferStore = tether_firmware::BufferStore::new();
    let bad = "192.0.2.8:40000".parse().unwrap();
    for expected in [RefusalCode::Unauthorized, RefusalCode::Throttled] {
        match login_over_duplex(&server.handle, bad, other.buffers(), "bob", "wrong").await {
            Err(tether_firmware::Error::Refused { code, .. }) => assert_eq!(code, expected),
            other => panic!("{other:?}"),
        }
    }
    // Graceful shutdown waits for the connection handed in, and ends it.
    server.handle.shutdown();
    tokio::time::timeout(Duration::from_secs(15), server.join)
        .await
        .unwrap()
        .unwrap();
    let end = login
        .session
        .call::<Echo, _>(&"late", &mut ())
        .await
        .map(|s| s.to_string())
        .map_err(|e| e.into_owned());
    assert!(end.is_err(), "{end:?}");
    // Handed in after shutdown: closed at once.
    let (mut device_end, server_end) = tokio::io::duplex(1024);
    server.handle.serve_connection(server_end, peer);
    let mut byte = [0u8; 1];
    assert_eq!(
        tokio::io::AsyncReadExt::read(&mut device_end, &mut byte)
            .await
            .unwrap(),
        0
    );
}

/// `tether_server::listen` (what `Server::bind` uses) asks for a listen
/// queue of `LISTEN_BACKLOG`: 600 connections complete before the first
/// accept. With std's and tokio's 128 the rest of the SYNs are dropped and
/// those connects complete only after the client's retry, a second later.
#[tokio::test]
async fn a_listener_takes_hundreds_of_connections_before_its_first_accept() {
    const CONNECTIONS: usize = 600;
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn <= CONNECTIONS {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, the kernel caps the queue there");
        return;
    }
    let listener = tether_server::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        connects.spawn(async move {
            // Kept open until every connect is counted.
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
    }
    let mut open = Vec::new();
    while let Some(result) = connects.join_next().await {
        if let Ok(Ok(stream)) = result.unwrap() {
            open.push(stream);
        }
    }
    assert_eq!(
        open.len(),
        CONNECTIONS,
        "connects completed before any accept"
    );
    drop(listener);
}
