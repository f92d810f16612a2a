//! Sessions: calls both ways, several in flight, heartbeat, hostile frames,
//! graceful shutdown.

use std::time::{Duration, Instant};

use tether_core::message::{ErrorCode, GoodbyeReason, Message};
use tether_core::method::Method as _;
use tether_core::method::builtin::{DeviceInfo, Echo};
use tether_server::realm::CallError;
use tether_server::{SessionEnd, StoreConfig};

use crate::common::*;

const DB: &str = "default.sqlite3";

async fn test_server(
    db: &Db,
    f: impl FnOnce(&mut tether_server::ServerConfig),
) -> TestServer<TestRealm> {
    let mut config = test_config();
    f(&mut config);
    start_with(StoreConfig::new(db.url()), config, TestRealm::default()).await
}

#[tokio::test]
async fn calls_run_concurrently_and_errors_are_typed() {
    let db = Db::copy(DB);
    let server = test_server(&db, |_| {}).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    let slow = s.start_call::<Slow>(&400).await;
    let fast = s.start_call::<Echo>(&"fast").await;
    let started = Instant::now();
    let mut order = Vec::new();
    while order.len() < 2 {
        match s.recv_timeout(Duration::from_secs(5)).await.unwrap() {
            Msg::Reply { id, .. } => order.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(order, vec![fast, slow]);
    assert!(started.elapsed() >= Duration::from_millis(350));
    // Unknown method, bad arguments.
    let mut buf = [0u8; 16];
    s.send(&Message::Call {
        id: 50,
        method: "nope",
        args: &[],
    })
    .await;
    match s.recv().await.unwrap() {
        Msg::Error { id: 50, code, .. } => assert_eq!(code, ErrorCode::UNKNOWN_METHOD),
        other => panic!("{other:?}"),
    }
    let args = tether_core::message::encode(&(1u8, 2u8, 3u8), &mut buf)
        .unwrap()
        .to_vec();
    s.send(&Message::Call {
        id: 51,
        method: "echo",
        args: &args,
    })
    .await;
    match s.recv().await.unwrap() {
        Msg::Error { id: 51, code, .. } => assert_eq!(code, ErrorCode::BAD_ARGUMENTS),
        other => panic!("{other:?}"),
    }
    // A handler that panics answers FAILED; the session goes on.
    s.send(&Message::Call {
        id: 52,
        method: "panic",
        args: &[],
    })
    .await;
    match s.recv().await.unwrap() {
        Msg::Error { id: 52, code, .. } => assert_eq!(code, ErrorCode::FAILED),
        other => panic!("{other:?}"),
    }
    // Ping -> pong.
    s.send(&Message::Ping { nonce: 77 }).await;
    assert_eq!(s.recv().await.unwrap(), Msg::Pong { nonce: 77 });
}

fn encoded_args<M: tether_core::method::Method>(args: &M::Args<'_>) -> Vec<u8> {
    let mut buf = [0u8; 64];
    tether_core::method::encode_args::<M>(args, &mut buf)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_burst_of_frames_is_answered_as_each_answer_is_ready() {
    let db = Db::copy(DB);
    let server = test_server(&db, |_| {}).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    // One write: handlers that answer at once are answered in frame order,
    // around the pong; the waiting ones when they are done.
    let slow400 = encoded_args::<Slow>(&400);
    let slow100 = encoded_args::<Slow>(&100);
    let echo = encoded_args::<Echo>(&"e");
    let call = |id, method, args: &[u8]| (id, method, args.to_vec());
    let burst = [
        call(1, Slow::NAME, &slow400),
        call(2, Echo::NAME, &echo),
        call(3, Echo::NAME, &echo),
        call(4, "nope", &[]),
        call(5, Slow::NAME, &slow100),
        call(6, Echo::NAME, &echo),
    ];
    let mut bytes = Vec::new();
    for (i, (id, method, args)) in burst.iter().enumerate() {
        bytes.extend(s.seal(&Message::Call {
            id: *id,
            method,
            args,
        }));
        if i == 1 {
            bytes.extend(s.seal(&Message::Ping { nonce: 9 }));
        }
    }
    s.send_raw(&bytes).await;
    let mut seen = Vec::new();
    while seen.len() < 7 {
        seen.push(
            match s.recv_timeout(Duration::from_secs(5)).await.unwrap() {
                Msg::Reply { id, result } => {
                    eprintln!(
                        "reply {id} {:?} at {:?}",
                        result,
                        std::time::SystemTime::now()
                    );
                    format!("reply {id}")
                }
                Msg::Error { id, code, .. } => format!("error {id} {code}"),
                Msg::Pong { nonce } => format!("pong {nonce}"),
                other => panic!("{other:?}"),
            },
        );
    }
    let unknown = ErrorCode::UNKNOWN_METHOD;
    assert_eq!(
        seen,
        [
            "reply 2".to_string(),
            "pong 9".into(),
            "reply 3".into(),
            format!("error 4 {unknown}"),
            "reply 6".into(),
            "reply 5".into(),
            "reply 1".into(),
        ]
    );
    // The session goes on.
    assert_eq!(s.echo("after").await, "after");
}

#[tokio::test]
async fn a_session_is_listed_by_the_time_the_device_has_its_welcome() {
    let db = Db::copy(DB);
    let server = test_server(&db, |_| {}).await;
    let registry = server.realm.inner.registry();
    for _ in 0..20 {
        let s = login(server.addr, "alice", password(DB, "alice"))
            .await
            .unwrap();
        assert!(registry.mind(s.session_id).is_some());
    }
}

#[tokio::test]
async fn attached_is_stopped_before_detached_runs() {
    let db = Db::copy(DB);
    let realm = TestRealm {
        hang_in_attached: true,
        ..TestRealm::default()
    };
    let server = start_with(StoreConfig::new(db.url()), test_config(), realm).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    s.echo("x").await;
    s.send(&Message::Goodbye {
        reason: GoodbyeReason::Normal,
    })
    .await;
    let ended = Instant::now();
    eventually(Duration::from_secs(5), || {
        server.realm.hooks.lock().unwrap().len() == 2
    })
    .await;
    // It had its grace of a second to return by itself, then was stopped.
    assert!(ended.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        *server.realm.hooks.lock().unwrap(),
        ["attached ended", "detached"]
    );
}

#[tokio::test]
async fn too_many_calls_in_flight_are_busy() {
    let db = Db::copy(DB);
    let server = test_server(&db, |c| c.session.max_calls_in_flight = 2).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    s.start_call::<Slow>(&300).await;
    s.start_call::<Slow>(&300).await;
    let third = s.start_call::<Slow>(&1).await;
    match s.recv_timeout(Duration::from_secs(2)).await.unwrap() {
        Msg::Error { id, code, .. } => assert_eq!((id, code), (third, ErrorCode::BUSY)),
        other => panic!("{other:?}"),
    }
    // Refused by the machine without running: counted before it is sent.
    assert_eq!(store_metric(&server.store, REJECTED_FROM_DEVICE), 1.0);
}

const REJECTED_FROM_DEVICE: &str =
    r#"tether_calls_total{direction="from_device",outcome="rejected"}"#;

#[tokio::test]
async fn the_server_calls_the_device_through_its_mind() {
    let db = Db::copy(DB);
    let mut config = test_config();
    config.session.call_timeout = Duration::from_millis(500);
    let realm = TestRealm {
        ask_device_info: true,
        ..Default::default()
    };
    let server = start_with(StoreConfig::new(db.url()), config, realm).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    // The attached hook calls device_info; the device answers.
    match s.recv_timeout(Duration::from_secs(2)).await.unwrap() {
        Msg::Call { id, method, args } => {
            assert_eq!(method, "device_info");
            assert_eq!(args, vec![] as Vec<u8>);
            s.answer_device_info(id).await;
        }
        other => panic!("{other:?}"),
    }
    eventually(Duration::from_secs(2), || {
        !server.realm.device_info.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        server.realm.device_info.lock().unwrap()[0],
        "test-device 1.0"
    );

    // Any task can call through the mind; several calls in flight; errors and timeouts.
    let mind = server.realm.minds.lock().unwrap()[0].clone();
    let (m1, m2) = (mind.clone(), mind.clone());
    let a = tokio::spawn(async move { m1.call::<Echo>(&"one").await });
    let b = tokio::spawn(async move { m2.call::<Echo>(&"two").await });
    let mut calls = Vec::new();
    for _ in 0..2 {
        match s.recv_timeout(Duration::from_secs(2)).await.unwrap() {
            Msg::Call { id, method, args } => {
                assert_eq!(method, "echo");
                calls.push((id, args));
            }
            other => panic!("{other:?}"),
        }
    }
    // Answer in reverse order.
    for (id, args) in calls.iter().rev() {
        s.send(&Message::Reply {
            id: *id,
            result: args,
        })
        .await;
    }
    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    assert_eq!(a.get(), "one");
    assert_eq!(b.get(), "two");

    let m = mind.clone();
    let c = tokio::spawn(async move { m.call::<Echo>(&"x").await });
    let Msg::Call { id, .. } = s.recv().await.unwrap() else {
        panic!()
    };
    s.send(&Message::Error {
        id,
        code: ErrorCode(1001),
        message: "nope",
    })
    .await;
    match c.await.unwrap() {
        Err(CallError::Remote(e)) => {
            assert_eq!((e.code, e.message.as_str()), (ErrorCode(1001), "nope"))
        }
        other => panic!("{other:?}"),
    }
    // No answer: timeout. A late answer is then ignored, not a protocol error.
    let m = mind.clone();
    let d = tokio::spawn(async move { m.call::<Echo>(&"late").await });
    let Msg::Call { id, args, .. } = s.recv().await.unwrap() else {
        panic!()
    };
    assert_eq!(d.await.unwrap().unwrap_err(), CallError::Timeout);
    s.send(&Message::Reply { id, result: &args }).await;
    assert_eq!(s.echo("alive").await, "alive");
    // An answer to a call never made is a protocol error.
    s.send(&Message::Reply {
        id: 9999,
        result: &[],
    })
    .await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::ProtocolError));
    assert_eq!(
        mind.call::<DeviceInfo>(&()).await.unwrap_err(),
        CallError::Closed
    );
    eventually(Duration::from_secs(2), || {
        !server.realm.ends.lock().unwrap().is_empty()
    })
    .await;
    assert!(matches!(
        server.realm.ends.lock().unwrap()[0],
        SessionEnd::ProtocolError(_)
    ));
}

#[tokio::test]
async fn hostile_frames_close_only_their_connection() {
    let db = Db::copy(DB);
    let server = test_server(&db, |c| c.max_frame = 1024).await;
    let addr = server.addr;
    let mut bystander = login(addr, "bob", password(DB, "bob")).await.unwrap();

    // A flipped bit in the tag.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    let mut frame = s.seal(&Message::Ping { nonce: 1 });
    let last = frame.len() - 1;
    frame[last] ^= 1;
    s.send_raw(&frame).await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::BadTag));

    // A replayed frame.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    let frame = s.seal(&Message::Ping { nonce: 2 });
    s.send_raw(&frame).await;
    assert_eq!(s.recv().await.unwrap(), Msg::Pong { nonce: 2 });
    s.send_raw(&frame).await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::BadTag));

    // A frame longer than the server's max.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    assert_eq!(s.server_max, 1024);
    s.send_raw(&[0x04, 0x01]).await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::ProtocolError));

    // A zero-length frame.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    s.send_raw(&[0, 0]).await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::ProtocolError));

    // A call id already in flight.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    s.start_call::<Slow>(&300).await;
    s.next_id -= 1;
    s.start_call::<Slow>(&300).await;
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::ProtocolError));

    // Truncated garbage, then close.
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    s.send_raw(&[0, 50, 1, 2, 3]).await;
    s.writer.shutdown_for_test().await;
    assert_eq!(s.expect_close().await, None);

    // The bystander never noticed.
    assert_eq!(bystander.echo("fine").await, "fine");
}

trait ShutdownForTest {
    async fn shutdown_for_test(&mut self);
}

impl ShutdownForTest for tokio::net::tcp::OwnedWriteHalf {
    async fn shutdown_for_test(&mut self) {
        use tokio::io::AsyncWriteExt;
        self.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn idle_sessions_are_closed_after_three_heartbeats() {
    let db = Db::copy(DB);
    let server = test_server(&db, |c| c.session.heartbeat = Duration::from_millis(200)).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    assert_eq!(s.heartbeat_secs, 1);
    // Pings keep it alive.
    for nonce in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send(&Message::Ping { nonce }).await;
        assert_eq!(s.recv().await.unwrap(), Msg::Pong { nonce });
    }
    let started = Instant::now();
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::IdleTimeout));
    assert!(started.elapsed() >= Duration::from_millis(500));
    eventually(Duration::from_secs(2), || {
        server.realm.ends.lock().unwrap().first() == Some(&SessionEnd::IdleTimeout)
    })
    .await;
}

#[tokio::test]
async fn mind_close_kicks_the_device() {
    let db = Db::copy(DB);
    let server = test_server(&db, |_| {}).await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    s.echo("x").await;
    let mind = server.realm.minds.lock().unwrap()[0].clone();
    mind.close(GoodbyeReason::Kicked);
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::Kicked));
    assert!(
        mind.is_closed() || {
            tokio::time::sleep(Duration::from_millis(200)).await;
            mind.is_closed()
        }
    );
}

#[tokio::test]
async fn a_kick_right_after_a_notification_still_says_goodbye() {
    let db = Db::copy(DB);
    let server = test_server(&db, |_| {}).await;
    for round in 0..20 {
        let mut s = login(server.addr, "alice", password(DB, "alice"))
            .await
            .unwrap();
        s.echo("x").await;
        let mind = server.realm.minds.lock().unwrap()[round].clone();
        // Queued and kicked at once: the write must not lose to the kick.
        mind.notify::<Echo>(&"last words").await.unwrap();
        mind.close(GoodbyeReason::Kicked);
        let mut buf = [0u8; 32];
        let note = tether_core::method::encode_args::<Echo>(&"last words", &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(
            s.recv_timeout(Duration::from_secs(5)).await,
            Some(Msg::Notify {
                method: "echo".into(),
                args: note
            }),
            "round {round}"
        );
        assert_eq!(
            s.expect_close().await,
            Some(GoodbyeReason::Kicked),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_calls_finish_then_says_goodbye() {
    let db = Db::copy(DB);
    let server = test_server(&db, |c| {
        c.session.shutdown_deadline = Duration::from_secs(5)
    })
    .await;
    let addr = server.addr;
    let mut s = login(addr, "alice", password(DB, "alice")).await.unwrap();
    let mut idle = login(addr, "bob", password(DB, "bob")).await.unwrap();
    let slow = s.start_call::<Slow>(&500).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are no longer accepted.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // A new call is refused politely while the old one finishes.
    let late = s.start_call::<Echo>(&"late").await;
    let mut got = Vec::new();
    loop {
        match s.recv_timeout(Duration::from_secs(5)).await {
            Some(Msg::Error { id, code, .. }) => {
                assert_eq!((id, code), (late, ErrorCode::SHUTTING_DOWN));
                assert_eq!(store_metric(&server.store, REJECTED_FROM_DEVICE), 1.0);
                got.push("refused");
            }
            Some(Msg::Reply { id, .. }) => {
                assert_eq!(id, slow);
                got.push("reply");
            }
            Some(Msg::Goodbye { reason }) => {
                assert_eq!(reason, GoodbyeReason::Shutdown);
                got.push("goodbye");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, vec!["refused", "reply", "goodbye"]);
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_eq!(idle.expect_close().await, Some(GoodbyeReason::Shutdown));
    tokio::time::timeout(Duration::from_secs(5), server.join)
        .await
        .unwrap()
        .unwrap();
    let ends = server.realm.ends.lock().unwrap().clone();
    assert_eq!(ends, vec![SessionEnd::Shutdown, SessionEnd::Shutdown]);
}

#[tokio::test]
async fn shutdown_deadline_cuts_calls_that_take_too_long() {
    let db = Db::copy(DB);
    let server = test_server(&db, |c| {
        c.session.shutdown_deadline = Duration::from_millis(300)
    })
    .await;
    let mut s = login(server.addr, "alice", password(DB, "alice"))
        .await
        .unwrap();
    s.start_call::<Slow>(&10_000).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.handle.shutdown();
    assert_eq!(s.expect_close().await, Some(GoodbyeReason::Shutdown));
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::timeout(Duration::from_secs(5), server.join)
        .await
        .unwrap()
        .unwrap();
}
