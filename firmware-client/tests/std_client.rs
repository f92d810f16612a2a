//! The client over std sockets (`tether_firmware::host`) against a
//! tether-core-based test server.

mod common;

use std::cell::RefCell;
use std::time::Duration;

use common::*;
use tether_core::message::{ErrorCode, GoodbyeReason, Message, Refusal, RefusalCode};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo, Identity, WhoAmI};
use tether_core::scram::{CachedKeys, ClientCredentials, ScramError};
use tether_core::session::SessionError;
use tether_firmware::{
    BufferStore, CallError, Config, Error, Failure, Handler, Request, Responded, Responder,
    TimeoutKind, host,
};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The device's mind in these tests: echo, device_info, counts
/// notifications.
#[derive(Default)]
struct Mind {
    calls: RefCell<Vec<String>>,
    notes: Vec<(String, Vec<u8>)>,
}

impl Handler for Mind {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        self.calls.borrow_mut().push(req.method().to_string());
        if req.is::<Echo>() {
            answer_echo(req, reply)
        } else if req.is::<DeviceInfo>() {
            reply.ok::<DeviceInfo>(&DeviceStatus {
                firmware: "test 1.0",
                uptime_secs: 5,
            })
        } else {
            reply.unknown_method()
        }
    }

    async fn on_notify(&mut self, method: &str, args: &[u8]) {
        self.notes.push((method.to_string(), args.to_vec()));
    }
}

/// The scripted server speaks v1 (a host's default is v2).
fn config() -> Config {
    Config::default().with_protocol(tether_firmware::Protocol::V1)
}

fn identity(session_id: u64) -> Vec<u8> {
    enc(&Identity {
        user_id: 1,
        username: "alice",
        session_id,
        is_superuser: false,
    })
}

/// Spawns a server that logs alice in and then runs `script`.
fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    mode: Mode,
    params: Params,
    script: F,
) -> tokio::task::JoinHandle<Result<(), RefusalCode>>
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let peer = server_login(stream, "alice", ALICE_ROW, mode, params).await?;
        script(peer).await;
        Ok(())
    })
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("test timed out")
}

/// Serves until the scripted server says goodbye `Shutdown`, as most end.
async fn serve_until_shutdown<T, C, H>(
    session: &mut tether_firmware::Session<'_, T, C>,
    mind: &mut H,
) where
    T: embedded_io_async::Read + embedded_io_async::Write + embedded_io_async::ReadReady,
    T::Error: std::fmt::Debug,
    C: tether_firmware::Clock,
    H: Handler,
{
    let err = with_timeout(session.serve(mind)).await.unwrap_err();
    assert!(
        matches!(err, Error::Closed(GoodbyeReason::Shutdown)),
        "{err:?}"
    );
}

#[tokio::test]
async fn password_login_returns_keys_and_keys_log_in_without_password() {
    let (l, addr) = listen().await;
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (s, _) = l.accept().await.unwrap();
            let mut peer = server_login(s, "alice", ALICE_ROW, Mode::Honest, Params::default())
                .await
                .unwrap();
            assert_eq!(
                peer.recv().await,
                Some(Msg::Goodbye {
                    reason: GoodbyeReason::Normal
                })
            );
            assert!(peer.eof_within(Duration::from_secs(5)).await);
        }
    });
    let mut store: BufferStore = BufferStore::new();
    let mut rng = TestRng(1);
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut rng,
        &config(),
    ))
    .await
    .unwrap();
    assert!(login.derived);
    assert_eq!(login.session.session_id(), 77);
    assert_eq!(login.session.heartbeat_secs(), 30);
    assert_eq!(login.session.peer_max_frame(), 512);
    let keys: CachedKeys = login.keys.clone();
    assert_eq!(keys.iterations, 4096);
    let mut session = login.session;
    session.close().await.unwrap();
    drop(session);

    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut rng,
        &config(),
    ))
    .await
    .unwrap();
    assert!(!login.derived);
    assert!(login.keys == keys);
    let mut session = login.session;
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_refused_unauthorized() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |_| async {});
    let mut store: BufferStore = BufferStore::new();
    let err = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password("Wonderland"),
        &mut TestRng(2),
        &config(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                code: RefusalCode::Unauthorized,
                retry_after_secs: 0
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(err.to_string(), "login refused: unauthorized");
    assert_eq!(
        with_timeout(server).await.unwrap().unwrap_err(),
        RefusalCode::Unauthorized
    );
}

#[tokio::test]
async fn unknown_user_is_refused_like_a_wrong_password() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |_| async {});
    let mut store: BufferStore = BufferStore::new();
    let err = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "mallory",
        ClientCredentials::Password("x"),
        &mut TestRng(2),
        &config(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        Error::Refused {
            code: RefusalCode::Unauthorized,
            ..
        }
    ));
    let _ = server.await;
}

#[tokio::test]
async fn transient_refusal_carries_retry_after() {
    let (l, addr) = listen().await;
    let refusal = Refusal {
        code: RefusalCode::Throttled,
        retry_after_secs: 30,
    };
    let server = serve(l, Mode::Refuse(refusal), Params::default(), |_| async {});
    let mut store: BufferStore = BufferStore::new();
    let err = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(3),
        &config(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        Error::Refused {
            code: RefusalCode::Throttled,
            retry_after_secs: 30
        }
    ));
    assert!(err.is_transient());
    assert_eq!(err.retry_after_secs(), Some(30));
    let _ = server.await;
}

#[tokio::test]
async fn impostor_server_is_refused_and_hears_nothing_more() {
    let (l, addr) = listen().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = serve(
        l,
        Mode::Impostor,
        Params::default(),
        |mut peer| async move {
            // The client must close without another byte.
            tx.send(peer.eof_within(Duration::from_secs(5)).await)
                .unwrap();
        },
    );
    let mut store: BufferStore = BufferStore::new();
    let result = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(4),
        &config(),
    ))
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Login(ScramError::InvalidServerSignature)),
        "{err:?}"
    );
    assert!(err.to_string().contains("could not prove"));
    assert!(with_timeout(rx).await.unwrap());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn iteration_floor_and_ceiling_are_enforced() {
    for (cfg, expect_low) in [
        (config().with_min_iterations(10_000), true),
        (
            {
                let mut c = config();
                c.scram.max_iterations = 1000;
                c.scram.min_iterations = 1;
                c
            },
            false,
        ),
    ] {
        let (l, addr) = listen().await;
        let server = serve(l, Mode::Honest, Params::default(), |_| async {});
        let mut store: BufferStore = BufferStore::new();
        let err = with_timeout(host::connect(
            &addr,
            store.buffers(),
            "alice",
            ClientCredentials::Password(ALICE_PASSWORD),
            &mut TestRng(5),
            &cfg,
        ))
        .await
        .unwrap_err();
        if expect_low {
            assert!(matches!(
                err,
                Error::Login(ScramError::IterationsTooLow {
                    offered: 4096,
                    minimum: 10_000
                })
            ));
        } else {
            assert!(matches!(
                err,
                Error::Login(ScramError::IterationsTooHigh { offered: 4096, .. })
            ));
        }
        // The client sent no proof.
        assert_eq!(server.await.unwrap().unwrap_err(), RefusalCode::Protocol);
    }
}

#[tokio::test]
async fn calls_both_ways_with_several_in_flight() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        // Three device calls arrive before any reply.
        let mut ids = vec![];
        for _ in 0..3 {
            match peer.recv().await.unwrap() {
                Msg::Call { id, method, args } => {
                    assert_eq!(method, "echo");
                    ids.push((id, args));
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        // The server calls the device twice (both in flight) before
        // answering, then answers in reverse order, one as an error.
        peer.call_echo(100, "ping from server").await;
        peer.send(&Message::Call {
            id: 101,
            method: DeviceInfo::NAME,
            args: &enc(&()),
        })
        .await;
        let (id2, args2) = ids.pop().unwrap();
        peer.send(&Message::Reply {
            id: id2,
            result: &args2,
        })
        .await;
        let (id1, _) = ids.pop().unwrap();
        peer.send(&Message::Error {
            id: id1,
            code: ErrorCode::FORBIDDEN,
            message: "not you",
        })
        .await;
        let (id0, args0) = ids.pop().unwrap();
        peer.send(&Message::Reply {
            id: id0,
            result: &args0,
        })
        .await;
        // The device's answers to the server's calls.
        let mut answers = vec![peer.recv().await.unwrap(), peer.recv().await.unwrap()];
        answers.sort_by_key(|m| match m {
            Msg::Reply { id, .. } => *id,
            _ => 0,
        });
        assert_eq!(
            answers,
            vec![
                Msg::Reply {
                    id: 100,
                    result: enc(&"ping from server")
                },
                Msg::Reply {
                    id: 101,
                    result: enc(&DeviceStatus {
                        firmware: "test 1.0",
                        uptime_secs: 5
                    })
                },
            ]
        );
        assert_eq!(
            peer.recv().await,
            Some(Msg::Goodbye {
                reason: GoodbyeReason::Normal
            })
        );
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(6),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = Mind::default();
    let t = Duration::from_secs(10);
    let a = session.send_call::<Echo>(&"a", t).await.unwrap();
    let b = session.send_call::<Echo>(&"b", t).await.unwrap();
    let c = session.send_call::<Echo>(&"c", t).await.unwrap();
    assert_eq!(session.calls_in_flight(), 3);
    assert!(matches!(
        session.call::<Echo, _>(&"d", &mut mind).await,
        Err(CallError::CallsPending)
    ));
    let mut order = vec![];
    for _ in 0..3 {
        let reply = with_timeout(session.next_reply(&mut mind)).await.unwrap();
        if let Some(r) = a.take(&reply) {
            assert_eq!(r, Ok("a"));
            order.push('a');
        }
        if let Some(r) = b.take(&reply) {
            assert_eq!(
                r,
                Err(Failure::Remote {
                    code: ErrorCode::FORBIDDEN,
                    message: "not you"
                })
            );
            order.push('b');
        }
        if let Some(r) = c.take(&reply) {
            assert_eq!(r, Ok("c"));
            order.push('c');
        }
    }
    assert_eq!(order, vec!['c', 'b', 'a']);
    assert_eq!(session.calls_in_flight(), 0);
    assert_eq!(*mind.calls.borrow(), vec!["echo", "device_info"]);
    assert!(matches!(
        session.next_reply(&mut mind).await,
        Err(Error::NoCallInFlight)
    ));
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn server_calls_the_device_while_it_waits_for_its_reply() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        let Some(Msg::Call { id, method, .. }) = peer.recv().await else {
            panic!()
        };
        assert_eq!(method, "whoami");
        // Before answering, ask the device something and notify it.
        peer.send(&Message::Call {
            id: 1,
            method: DeviceInfo::NAME,
            args: &enc(&()),
        })
        .await;
        let Some(Msg::Reply { id: 1, result }) = peer.recv().await else {
            panic!()
        };
        let status: DeviceStatus = tether_core::message::decode(&result).unwrap();
        assert_eq!(status.firmware, "test 1.0");
        peer.send(&Message::Notify {
            method: "config_changed",
            args: &enc(&7u32),
        })
        .await;
        peer.send(&Message::Call {
            id: 2,
            method: "no_such_method",
            args: &[],
        })
        .await;
        let Some(Msg::Error { id: 2, code, .. }) = peer.recv().await else {
            panic!()
        };
        assert_eq!(code, ErrorCode::UNKNOWN_METHOD);
        peer.send(&Message::Reply {
            id,
            result: &identity(77),
        })
        .await;
        // A second device call gets a remote error.
        let Some(Msg::Call { id, .. }) = peer.recv().await else {
            panic!()
        };
        peer.send(&Message::Error {
            id,
            code: ErrorCode::UNKNOWN_METHOD,
            message: "no such method",
        })
        .await;
        assert_eq!(
            peer.recv().await,
            Some(Msg::Goodbye {
                reason: GoodbyeReason::Normal
            })
        );
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(7),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = Mind::default();
    let me = with_timeout(session.call::<WhoAmI, _>(&(), &mut mind))
        .await
        .unwrap();
    assert_eq!(me.username, "alice");
    assert_eq!(me.session_id, 77);
    assert_eq!(*mind.calls.borrow(), vec!["device_info", "no_such_method"]);
    assert_eq!(mind.notes, vec![("config_changed".to_string(), enc(&7u32))]);
    struct Missing;
    impl Method for Missing {
        const NAME: &'static str = "missing";
        type Args<'a> = ();
        type Reply<'a> = ();
    }
    impl tether_core::method::ToServer for Missing {}
    match with_timeout(session.call::<Missing, _>(&(), &mut mind)).await {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::UNKNOWN_METHOD);
            assert_eq!(message, "no such method");
        }
        other => panic!("{other:?}"),
    }
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn serving_while_idle_and_notifications_to_the_server() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        let Some(Msg::Notify { method, args }) = peer.recv().await else {
            panic!()
        };
        assert_eq!((method.as_str(), args), ("temperature", enc(&21.5f32)));
        for id in 1..=3 {
            peer.call_echo(id, "idle?").await;
        }
        for id in 1..=3 {
            peer.expect_echo_reply(id, "idle?").await;
        }
        peer.say_shutdown().await;
    });
    struct Temperature;
    impl Method for Temperature {
        const NAME: &'static str = "temperature";
        type Args<'a> = f32;
        type Reply<'a> = ();
    }
    impl tether_core::method::ToServer for Temperature {}
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(8),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = Mind::default();
    session.notify::<Temperature>(&21.5).await.unwrap();
    serve_until_shutdown(&mut session, &mut mind).await;
    assert_eq!(mind.calls.borrow().len(), 3);
    assert!(session.is_ended());
    assert!(matches!(
        session.call::<Echo, _>(&"x", &mut mind).await,
        Err(CallError::Session(Error::Ended))
    ));
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_until_returns_the_applications_event() {
    let (l, addr) = listen().await;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<u32>();
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        peer.call_echo(9, "x").await;
        assert!(matches!(peer.recv().await, Some(Msg::Reply { id: 9, .. })));
        go_tx.send(42).unwrap();
        assert!(matches!(peer.recv().await, Some(Msg::Goodbye { .. })));
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(9),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = Mind::default();
    let got = with_timeout(session.serve_until(&mut mind, go_rx))
        .await
        .unwrap();
    assert_eq!(got, Ok(42));
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn heartbeat_pings_when_idle_and_answers_pings() {
    let (l, addr) = listen().await;
    let params = Params {
        heartbeat_secs: 1,
        ..Params::default()
    };
    let server = serve(l, Mode::Honest, params, |mut peer| async move {
        // Idle device: a ping about every second.
        let start = tokio::time::Instant::now();
        let Some(Msg::Ping { nonce }) = peer.recv().await else {
            panic!()
        };
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
            "{waited:?}"
        );
        peer.send(&Message::Pong { nonce }).await;
        // The server pings; the device answers.
        peer.send(&Message::Ping { nonce: 4242 }).await;
        loop {
            match peer.recv().await.unwrap() {
                Msg::Pong { nonce: 4242 } => break,
                Msg::Ping { nonce } => peer.send(&Message::Pong { nonce }).await,
                m => panic!("{m:?}"),
            }
        }
        peer.send(&Message::Goodbye {
            reason: GoodbyeReason::Kicked,
        })
        .await;
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(10),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let err = with_timeout(session.serve(&mut ())).await.unwrap_err();
    assert!(matches!(err, Error::Closed(GoodbyeReason::Kicked)));
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_silent_server_is_detected_after_three_heartbeats() {
    let (l, addr) = listen().await;
    let params = Params {
        heartbeat_secs: 1,
        ..Params::default()
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(l, Mode::Honest, params, |mut peer| async move {
        // Read (and ignore) everything until the client goes away.
        let mut pings = 0;
        while let Some(m) = peer.recv().await {
            assert!(matches!(m, Msg::Ping { .. }));
            pings += 1;
        }
        assert!(pings >= 2, "{pings} pings");
        let _ = done_rx.await;
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(11),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let start = tokio::time::Instant::now();
    let err = with_timeout(session.serve(&mut ())).await.unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Heartbeat)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    drop(session);
    done_tx.send(()).unwrap();
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn call_timeout_leaves_the_session_usable_and_late_replies_are_dropped() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        let Some(Msg::Call { id: late, .. }) = peer.recv().await else {
            panic!()
        };
        // Too late: the device gave up after 200 ms.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let Some(Msg::Call { id, args, .. }) = peer.recv().await else {
            panic!()
        };
        peer.send(&Message::Reply {
            id: late,
            result: &enc(&"late"),
        })
        .await;
        peer.send(&Message::Reply { id, result: &args }).await;
        assert!(matches!(peer.recv().await, Some(Msg::Goodbye { .. })));
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(12),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let start = tokio::time::Instant::now();
    let r = session
        .call_with_timeout::<Echo, _>(&"first", &mut (), Duration::from_millis(200))
        .await;
    assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2));
    assert_eq!(session.calls_in_flight(), 0);
    let r = with_timeout(session.call::<Echo, _>(&"second", &mut ())).await;
    assert_eq!(r.unwrap(), "second");
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_forged_frame_ends_the_session_with_a_tag_mismatch() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        let mut frame = peer.seal_frame(&Message::Ping { nonce: 1 });
        let last = frame.len() - 1;
        frame[last] ^= 1;
        peer.send_raw(&frame).await;
        assert!(peer.eof_within(Duration::from_secs(5)).await);
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(13),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let err = with_timeout(session.serve(&mut ())).await.unwrap_err();
    assert!(
        matches!(err, Error::Session(SessionError::BadTag)),
        "{err:?}"
    );
    assert!(err.to_string().contains("tag mismatch"));
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reply_to_no_call_is_a_protocol_error() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        peer.send(&Message::Reply {
            id: 999,
            result: &[0],
        })
        .await;
        assert_eq!(
            peer.recv().await,
            Some(Msg::Goodbye {
                reason: GoodbyeReason::ProtocolError
            })
        );
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(14),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let err = with_timeout(session.serve(&mut ())).await.unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    drop(session);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn server_disconnect_and_oversized_calls_are_reported() {
    let (l, addr) = listen().await;
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        // The 600-byte call never arrives (too large for max_frame 512);
        // the next one does, then the server vanishes.
        let Some(Msg::Call { args, .. }) = peer.recv().await else {
            panic!()
        };
        assert_eq!(args, enc(&"small"));
    });
    let mut store: BufferStore<512, 1024> = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(15),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let big = "x".repeat(600);
    let r = session.call::<Echo, _>(&big.as_str(), &mut ()).await;
    assert!(matches!(r, Err(CallError::TooLarge { .. })), "{r:?}");
    let r = session
        .send_call::<Echo>(&"small", Duration::from_secs(5))
        .await;
    assert!(r.is_ok());
    let err = with_timeout(session.next_reply(&mut ())).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_too_small_receive_buffer_is_rejected() {
    let (l, addr) = listen().await;
    let _server = tokio::spawn(async move { l.accept().await });
    let mut store: BufferStore<256, 512> = BufferStore::new();
    let err = host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(16),
        &config(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Buffer(_)));
}

/// `host::TcpTransport`, counting flushes.
struct CountingFlushes {
    inner: host::TcpTransport,
    flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl embedded_io_async::ErrorType for CountingFlushes {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for CountingFlushes {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.inner.read(buf).await
    }
}

impl embedded_io_async::ReadReady for CountingFlushes {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.inner.read_ready()
    }
}

impl embedded_io_async::Write for CountingFlushes {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.flush().await
    }
}

#[tokio::test]
async fn a_burst_of_server_frames_is_answered_with_one_flush() {
    let (l, addr) = listen().await;
    let (burst_answered, answered) = tokio::sync::oneshot::channel::<()>();
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        // Eight calls and a ping in one write.
        let mut burst = Vec::new();
        for id in 1..=8 {
            burst.extend(peer.echo_call_frame(id, "burst"));
        }
        burst.extend(peer.seal_frame(&Message::Ping { nonce: 5 }));
        peer.send_raw(&burst).await;
        for id in 1..=8 {
            peer.expect_echo_reply(id, "burst").await;
        }
        assert_eq!(peer.recv().await, Some(Msg::Pong { nonce: 5 }));
        let _ = burst_answered.send(());
        // A lone call afterwards is answered at once (nothing held back).
        peer.call_echo(9, "alone").await;
        peer.expect_echo_reply(9, "alone").await;
        peer.say_shutdown().await;
    });
    let flushes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let transport = CountingFlushes {
        inner: host::transport(stream),
        flushes: flushes.clone(),
    };
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(tether_firmware::Session::login(
        transport,
        store.buffers(),
        tether_firmware::TokioClock::new(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(11),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let after_login = flushes.load(std::sync::atomic::Ordering::Relaxed);
    let mut mind = Mind::default();
    let served = with_timeout(session.serve_until(&mut mind, answered))
        .await
        .unwrap();
    assert!(served.is_ok());
    let burst_flushes = flushes.load(std::sync::atomic::Ordering::Relaxed) - after_login;
    // One burst, one flush (two if TCP split it; nine without batching).
    assert!((1..=2).contains(&burst_flushes), "{burst_flushes} flushes");
    serve_until_shutdown(&mut session, &mut mind).await;
    assert_eq!(mind.calls.borrow().len(), 9);
    with_timeout(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn answers_and_notifications_leave_before_control_returns_to_the_application() {
    let (l, addr) = listen().await;
    let (answer_tx, answer_seen) = tokio::sync::oneshot::channel::<()>();
    let (note_tx, note_seen) = tokio::sync::oneshot::channel::<()>();
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        let Some(Msg::Call { id, method, args }) = peer.recv().await else {
            panic!("the device's call")
        };
        assert_eq!((method.as_str(), args.clone()), (Echo::NAME, enc(&"mine")));
        // A server call, the device's reply and a ping in one write: the
        // device reads them in one go, so its answer to 7 waits for the
        // burst, and the ping is still unread when the call returns.
        let mut burst = peer.echo_call_frame(7, "yours");
        burst.extend(peer.seal_frame(&Message::Reply { id, result: &args }));
        burst.extend(peer.seal_frame(&Message::Ping { nonce: 9 }));
        peer.send_raw(&burst).await;
        // The application does not wait on the session again until the end:
        // the answer and the notification must arrive without it.
        peer.expect_echo_reply(7, "yours").await;
        let _ = answer_tx.send(());
        assert_eq!(
            peer.recv().await,
            Some(Msg::Notify {
                method: Echo::NAME.into(),
                args: enc(&"note")
            })
        );
        let _ = note_tx.send(());
        assert_eq!(peer.recv().await, Some(Msg::Pong { nonce: 9 }));
        peer.say_shutdown().await;
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(17),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = Mind::default();
    let mine = with_timeout(session.call::<Echo, _>(&"mine", &mut mind))
        .await
        .unwrap();
    assert_eq!(mine, "mine");
    assert_eq!(*mind.calls.borrow(), ["echo"]);
    with_timeout(answer_seen).await.unwrap();
    session.notify::<Echo>(&"note").await.unwrap();
    with_timeout(note_seen).await.unwrap();
    serve_until_shutdown(&mut session, &mut mind).await;
    with_timeout(server).await.unwrap().unwrap();
}

/// A clock the test moves by hand (its sleeps only end when they are
/// polled again after the time has passed).
#[derive(Clone, Default)]
struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl tether_firmware::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sleep_until_ms(&self, deadline_ms: u64) -> impl std::future::Future<Output = ()> {
        std::future::poll_fn(move |_| {
            if self.now_ms() >= deadline_ms {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// Answers `echo` and moves the clock 20 s on while doing it.
struct SlowEcho(ManualClock);

impl Handler for SlowEcho {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        self.0
            .0
            .fetch_add(20_000, std::sync::atomic::Ordering::Relaxed);
        answer_echo(req, reply)
    }
}

/// Answers an `echo` call.
fn answer_echo(req: Request<'_>, reply: Responder<'_>) -> Responded {
    match req.args::<Echo>() {
        Ok(text) => reply.ok::<Echo>(&text),
        Err(_) => reply.bad_arguments(),
    }
}

#[tokio::test]
async fn serve_for_sends_held_answers_before_it_returns_at_its_deadline() {
    let (l, addr) = listen().await;
    let (answer_tx, answer_seen) = tokio::sync::oneshot::channel::<()>();
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        // A call and a ping in one write: the answer to the call waits for
        // the ping, and the deadline passes while the call is answered.
        let mut burst = peer.echo_call_frame(3, "tick");
        burst.extend(peer.seal_frame(&Message::Ping { nonce: 4 }));
        peer.send_raw(&burst).await;
        peer.expect_echo_reply(3, "tick").await;
        let _ = answer_tx.send(());
        assert_eq!(peer.recv().await, Some(Msg::Pong { nonce: 4 }));
        peer.say_shutdown().await;
    });
    let clock = ManualClock::default();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(tether_firmware::Session::login(
        host::transport(stream),
        store.buffers(),
        clock.clone(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(18),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let mut mind = SlowEcho(clock);
    with_timeout(session.serve_for(&mut mind, Duration::from_secs(10)))
        .await
        .unwrap();
    // The application has the session back and does not touch it: the
    // answer must already be on its way.
    with_timeout(answer_seen).await.unwrap();
    serve_until_shutdown(&mut session, &mut mind).await;
    with_timeout(server).await.unwrap().unwrap();
}

/// Answers `echo`, and tells the test it did.
struct TellingEcho(Option<tokio::sync::oneshot::Sender<()>>);

impl Handler for TellingEcho {
    async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
        if let Some(tell) = self.0.take() {
            let _ = tell.send(());
        }
        answer_echo(req, reply)
    }
}

#[tokio::test]
async fn flush_sends_answers_held_for_a_frame_still_arriving() {
    let (l, addr) = listen().await;
    let (answer_tx, answer_seen) = tokio::sync::oneshot::channel::<()>();
    let (rest_tx, rest_wanted) = tokio::sync::oneshot::channel::<()>();
    let server = serve(l, Mode::Honest, Params::default(), |mut peer| async move {
        // A call, then the first 3 bytes of a ping: the device answers the
        // call and holds the answer for the rest of the burst.
        let mut burst = peer.echo_call_frame(5, "part");
        let call_len = burst.len();
        burst.extend(peer.seal_frame(&Message::Ping { nonce: 6 }));
        peer.send_raw(&burst[..call_len + 3]).await;
        peer.expect_echo_reply(5, "part").await;
        let _ = answer_tx.send(());
        rest_wanted.await.unwrap();
        peer.send_raw(&burst[call_len + 3..]).await;
        assert_eq!(peer.recv().await, Some(Msg::Pong { nonce: 6 }));
        peer.say_shutdown().await;
    });
    let mut store: BufferStore = BufferStore::new();
    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(ALICE_PASSWORD),
        &mut TestRng(19),
        &config(),
    ))
    .await
    .unwrap();
    let mut session = login.session;
    let (told, answered) = tokio::sync::oneshot::channel();
    let mut mind = TellingEcho(Some(told));
    // `until` completes once the call is answered, while the ping is cut.
    with_timeout(session.serve_until(&mut mind, answered))
        .await
        .unwrap()
        .unwrap();
    with_timeout(session.flush()).await.unwrap();
    with_timeout(answer_seen).await.unwrap();
    rest_tx.send(()).unwrap();
    serve_until_shutdown(&mut session, &mut mind).await;
    with_timeout(server).await.unwrap().unwrap();
}

/// Issue 16's first login that fits a microcontroller: a probe (hello,
/// challenge, close: no proof), PBKDF2 offline in steps with progress
/// reports and no connection open, then a login with the derived keys,
/// which equal a password login's.
#[tokio::test]
async fn probe_then_offline_derivation_then_login_with_the_keys() {
    let (l, addr) = listen().await;
    let server = tokio::spawn(async move {
        // The probe: the client closes after the challenge.
        let (s, _) = l.accept().await.unwrap();
        let probe = server_login(s, "alice", ALICE_ROW, Mode::Honest, Params::default()).await;
        assert_eq!(probe.err(), Some(RefusalCode::Protocol), "no proof came");
        // The login with the derived keys.
        let (s, _) = l.accept().await.unwrap();
        let mut peer = server_login(s, "alice", ALICE_ROW, Mode::Honest, Params::default())
            .await
            .unwrap();
        assert_eq!(
            peer.recv().await,
            Some(Msg::Goodbye {
                reason: GoodbyeReason::Normal
            })
        );
    });
    let mut store: BufferStore = BufferStore::new();
    let mut rng = TestRng(5);
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (probed, transport) = with_timeout(tether_firmware::probe(
        host::transport(stream),
        store.buffers(),
        tether_firmware::TokioClock::new(),
        "alice",
        &mut rng,
        &config(),
    ))
    .await
    .unwrap();
    drop(transport); // closed politely: FIN
    assert_eq!(probed.iterations(), 4096);

    let mut reports = Vec::new();
    let derivation = probed.derivation(ALICE_PASSWORD).unwrap();
    let keys =
        tether_firmware::derive_keys(derivation, 1000, |done, total| reports.push((done, total)))
            .await
            .unwrap();
    assert_eq!(
        reports,
        [
            (1001, 4096),
            (2001, 4096),
            (3001, 4096),
            (4001, 4096),
            (4096, 4096)
        ]
    );
    let expected = tether_core::scram::CachedKeys::derive(
        tether_core::scram::Mechanism::ScramSha256,
        ALICE_PASSWORD,
        &keys.salt,
        4096,
    )
    .unwrap();
    assert!(keys == expected);

    let login = with_timeout(host::connect(
        &addr,
        store.buffers(),
        "alice",
        ClientCredentials::Keys(&keys),
        &mut rng,
        &config(),
    ))
    .await
    .unwrap();
    assert!(!login.derived);
    let mut session = login.session;
    session.close().await.unwrap();
    drop(session);
    with_timeout(server).await.unwrap();
}
