//! tether-firmware's protocol v2 (feature `v2`) over std sockets against the
//! real tether-server (the binary's realm, the Django-made fixture database):
//! a device that pins the server's static key (Noise_NK) logs in, calls and
//! is called; so does one that asks for Noise_NN; a wrong pinned key is
//! refused `unknown_key` and the device stops; a server that requires
//! encryption (`tether serve --require-encryption`) refuses a v1 device; a
//! v2 device never falls back to v1. A recording transport shows that what
//! v1 leaves readable on the wire (username, method names, arguments,
//! replies) is not in a v2 session's bytes.

mod firmware_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_support::*;
use tether_core::connection::ServerKeys;
use tether_core::message::{GoodbyeReason, RefusalCode};
use tether_core::method::builtin::{Echo, WhoAmI};
use tether_core::noise::StaticKeypair;
use tether_core::scram::{CachedKeys, ClientCredentials};
use tether_firmware::embedded_io_async::{ErrorType, Read, ReadReady, Write};
use tether_firmware::{BufferStore, Config, Error, Protocol, Retry, Session, TokioClock, host};
use tether_server::default_realm::RealmEvent;

const DB: &str = "default.sqlite3";

/// The server's static key (fixed, for the test only).
fn server_keys(require_encryption: bool) -> ServerKeys {
    ServerKeys {
        current: Some(StaticKeypair::from_secret([0x42; 32])),
        previous: None,
        require_encryption,
    }
}

fn public(keys: &ServerKeys) -> [u8; 32] {
    *keys.current.as_ref().unwrap().public()
}

fn config() -> Config {
    Config::default().with_min_iterations(200_000)
}

/// A transport that records every byte both ways (the wire, as a capture
/// on the device's side sees it).
struct Recorder<T> {
    inner: T,
    wire: Arc<Mutex<Vec<u8>>>,
}

impl<T: ErrorType> ErrorType for Recorder<T> {
    type Error = T::Error;
}

impl<T: Read> Read for Recorder<T> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.inner.read(buf).await?;
        self.wire.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<T: ReadReady> ReadReady for Recorder<T> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.inner.read_ready()
    }
}

impl<T: Write> Write for Recorder<T> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let n = self.inner.write(buf).await?;
        self.wire.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.inner.flush().await
    }
}

/// alice logs in to `addr` with her password (`seed` for the client's
/// nonce and Noise keys) over what `config` asks for.
async fn alice_connects<'b>(
    addr: std::net::SocketAddr,
    store: &'b mut BufferStore,
    seed: u64,
    config: &Config,
) -> Result<tether_firmware::Established<'b, host::TcpTransport, TokioClock>, Error<std::io::Error>>
{
    host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password(password(DB, "alice")),
        &mut TestRng(seed),
        config,
    )
    .await
}

fn found(wire: &[u8], needle: &str) -> bool {
    wire.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Logs in as alice over a recording transport, calls the server (whoami,
/// echo), is called by it (echo), and says goodbye; returns the recorded
/// bytes and the keys. `keys`: log in with them (no PBKDF2).
async fn session_on_the_wire(
    server: &mut RealServer,
    config: &Config,
    keys: Option<&CachedKeys>,
) -> (Vec<u8>, CachedKeys) {
    let wire = Arc::new(Mutex::new(Vec::new()));
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let transport = Recorder {
        inner: host::transport(stream),
        wire: wire.clone(),
    };
    let credentials = match keys {
        Some(keys) => ClientCredentials::Keys(keys),
        None => ClientCredentials::Password(password(DB, "alice")),
    };
    let mut store: BufferStore = BufferStore::new();
    let login = Session::login(
        transport,
        store.buffers(),
        TokioClock::new(),
        "alice",
        credentials,
        &mut TestRng(7),
        config,
    )
    .await
    .unwrap();
    let mut session = login.session;
    let id = session.session_id();
    let mut mind = DeviceMind { report: |_| {} };
    let me = session.call::<WhoAmI, _>(&(), &mut mind).await.unwrap();
    assert_eq!((me.username, me.session_id), ("alice", id));
    assert_eq!(
        session
            .call::<Echo, _>(&"device secret argument", &mut mind)
            .await
            .unwrap(),
        "device secret argument"
    );
    // Server -> device.
    let device = server.registry.mind(id).expect("mind of the session");
    let server_side = tokio::spawn(async move {
        let r = device
            .call::<Echo>(&"server secret argument")
            .await
            .unwrap();
        assert_eq!(r.get(), "server secret argument");
        device.close(GoodbyeReason::Kicked);
    });
    let end = tokio::time::timeout(Duration::from_secs(30), session.serve(&mut mind))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(end, Error::Closed(GoodbyeReason::Kicked)),
        "{end:?}"
    );
    server_side.await.unwrap();
    let wire = wire.lock().unwrap().clone();
    (wire, login.keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_device_pinning_the_server_key_logs_in_calls_and_is_called_and_nothing_is_readable() {
    let db = Db::copy(DB);
    let keys = server_keys(false);
    let pinned = public(&keys);
    let mut server =
        start_server_with(&db, "127.0.0.1:0", Duration::from_secs(30), Some(keys)).await;

    // NK, with the password (PBKDF2 once).
    let nk = config().with_server_key(pinned);
    assert_eq!(nk.protocol, Protocol::Pinned(pinned));
    let (wire, keys) = session_on_the_wire(&mut server, &nk, None).await;
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"2\"}"),
        1.0
    );
    assert_eq!(wire[2..4], [2, 1], "frame 1 starts version 2, pattern NK");
    for secret in [
        "alice",
        "whoami",
        "echo",
        "device secret argument",
        "server secret argument",
        "tether-noise",
    ] {
        assert!(
            !found(&wire, secret),
            "{secret:?} is readable in a v2 session"
        );
    }

    // NN, asked for explicitly, with the keys: same session, encrypted too.
    let nn = config().with_unpinned_v2();
    let (wire, _) = session_on_the_wire(&mut server, &nn, Some(&keys)).await;
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"2\"}"),
        2.0
    );
    assert_eq!(wire[2..4], [2, 0], "frame 1 starts version 2, pattern NN");
    for secret in [
        "alice",
        "echo",
        "device secret argument",
        "server secret argument",
    ] {
        assert!(
            !found(&wire, secret),
            "{secret:?} is readable in a v2 session"
        );
    }

    // The same session in v1 (a device's default; a host asks for it) is
    // readable, by design: this is what v2 is for, and proves the search
    // finds them.
    let v1 = config().with_protocol(Protocol::V1);
    let (wire, _) = session_on_the_wire(&mut server, &v1, Some(&keys)).await;
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"1\"}"),
        1.0
    );
    for visible in [
        "alice",
        "whoami",
        "echo",
        "device secret argument",
        "server secret argument",
    ] {
        assert!(
            found(&wire, visible),
            "{visible:?} should be readable in v1"
        );
    }
    assert!(matches!(server.event().await, RealmEvent::Connected { .. }));
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_device_pinning_a_wrong_server_key_is_refused_and_stops() {
    let db = Db::copy(DB);
    let server = start_server_with(
        &db,
        "127.0.0.1:0",
        Duration::from_secs(30),
        Some(server_keys(false)),
    )
    .await;
    let wrong = *StaticKeypair::from_secret([0x17; 32]).public();
    let mut store: BufferStore = BufferStore::new();
    let e = alice_connects(server.addr, &mut store, 3, &config().with_server_key(wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                code: RefusalCode::UnknownKey,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert_eq!(e.retry(), Retry::Never);
    let text = e.to_string();
    assert!(
        text.contains("unknown_key") && text.contains("pinned server key"),
        "{text}"
    );
    // (The server counts the refusal as it closes: wait for it.)
    let series = "tether_login_refusals_total{code=\"unknown_key\"}";
    for _ in 0..100 {
        if server.metric(series) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metric(series), 1.0);
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"2\"}"),
        0.0
    );
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_encryption_refuses_a_v1_device_and_admits_v2() {
    let db = Db::copy(DB);
    let keys = server_keys(true);
    let pinned = public(&keys);
    let server = start_server_with(&db, "127.0.0.1:0", Duration::from_secs(30), Some(keys)).await;
    let mut store: BufferStore = BufferStore::new();
    let e = alice_connects(
        server.addr,
        &mut store,
        4,
        &config().with_protocol(Protocol::V1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                code: RefusalCode::Version,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.retry(), Retry::Never);
    let mut login = alice_connects(
        server.addr,
        &mut store,
        5,
        &config().with_server_key(pinned),
    )
    .await
    .unwrap();
    assert_eq!(
        login
            .session
            .call::<Echo, _>(&"encrypted", &mut ())
            .await
            .unwrap(),
        "encrypted"
    );
    login.session.close().await.unwrap();
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_logs_in_over_v2_nn_by_default_to_a_server_with_no_key_file() {
    // A host's default (feature std) is v2 over NN, and a server embedded
    // with no keys configured speaks it: the two meet encrypted.
    assert_eq!(Config::default().protocol, Protocol::Unpinned);
    let db = Db::copy(DB);
    let server = start_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
    let mut store: BufferStore = BufferStore::new();
    let mut login = alice_connects(
        server.addr,
        &mut store,
        7,
        &Config::default().with_min_iterations(200_000),
    )
    .await
    .unwrap();
    assert_eq!(
        login
            .session
            .call::<Echo, _>(&"sealed", &mut ())
            .await
            .unwrap(),
        "sealed"
    );
    login.session.close().await.unwrap();
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"2\"}"),
        1.0
    );
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"1\"}"),
        0.0
    );
    // A device that pins a key this server does not hold is refused.
    let e = alice_connects(
        server.addr,
        &mut store,
        8,
        &config().with_server_key([9; 32]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused {
                code: RefusalCode::UnknownKey,
                ..
            }
        ),
        "{e:?}"
    );
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_device_does_not_fall_back_to_v1_on_a_v1_only_server() {
    let db = Db::copy(DB);
    let server = start_v1_only_server(&db, "127.0.0.1:0", Duration::from_secs(30)).await;
    let mut store: BufferStore = BufferStore::new();
    for config in [
        config().with_server_key([9; 32]),
        config().with_unpinned_v2(),
    ] {
        let e = alice_connects(server.addr, &mut store, 6, &config)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Refused {
                    code: RefusalCode::Protocol,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    assert_eq!(
        server.metric("tether_logins_by_protocol_total{version=\"1\"}"),
        0.0
    );
    server.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_answering_the_noise_handshake_fails_it_and_the_device_sends_nothing_more() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Answers frame 1 with a Noise message 2 of its own making (a key and
    // a tag it cannot compute without the pinned key's private half).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let impostor = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut frame1 = vec![0u8; u16::from_be_bytes(len).into()];
        stream.read_exact(&mut frame1).await.unwrap();
        assert_eq!(frame1[..2], [2, 1], "an NK frame 1");
        let mut answer = vec![0, 64];
        answer.extend((0..64u8).map(|i| i.wrapping_mul(37)));
        stream.write_all(&answer).await.unwrap();
        // The device sends nothing more: it closes.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let mut store: BufferStore = BufferStore::new();
    let e = host::connect(
        addr,
        store.buffers(),
        "alice",
        ClientCredentials::Password("never sent"),
        &mut TestRng(8),
        &config().with_server_key(public(&server_keys(false))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::Noise(tether_core::noise::NoiseError::Decrypt)),
        "{e:?}"
    );
    assert!(e.to_string().contains("does not hold it"), "{e}");
    assert!(impostor.await.unwrap().is_empty());
}
