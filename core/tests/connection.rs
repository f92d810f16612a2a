//! tether-core's connection machines without sockets: a [`Pair`] of real
//! machines (or one machine and a raw peer holding the session keys)
//! exchanging bytes through in-memory wires, on a manual clock. The
//! protocol cases of tests/tests/hostile.rs (zero-length frame, bad tag,
//! replay, reorder, unknown reply id, idle, oversize) and the rest of the
//! connection rules (docs/CONNECTION.md).

mod common;

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::Duration;

use common::TestRng;
use tether_core::connection::{
    CallFailure, ClientConfig, ClientConnection, ClientHandshake, Connection, ConnectionError,
    Decoy, DecoyReason, Event, Instant, REPLY_TOO_LARGE, RefusalCause, ReplyToken, SendError,
    ServerConfig, ServerConnection, ServerHandshake, ServerStep, Violation,
};
use tether_core::frame::{FrameDecoder, FrameError, HEADER_LEN, encode_message};
use tether_core::message::{
    self, Challenge, DecodeError, ErrorCode, GoodbyeReason, Handshake, Hello, Message, Proof,
    Refusal, RefusalCode, Welcome,
};
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo};
use tether_core::scram::{
    self, CachedKeys, ClientCredentials, ClientLogin, Mechanism, Mechanisms, ScramError,
    ServerCredentials, ServerLogin,
};
use tether_core::session::{Opener, Role, Sealer, SessionError};

const PASSWORD: &str = "pw";
const ROW_ITERATIONS: u32 = 4096;

/// alice's row (SCRAM-SHA-256) and carol's (SCRAM-SHA-1).
static ALICE: LazyLock<ServerCredentials> = LazyLock::new(common::credentials);
static CAROL: LazyLock<ServerCredentials> = LazyLock::new(|| {
    let keys =
        CachedKeys::derive(Mechanism::ScramSha1, PASSWORD, b"carolsalt", ROW_ITERATIONS).unwrap();
    ServerCredentials::from_cached_keys(&keys).unwrap()
});
/// alice's keys as a device caches them (no PBKDF2 per test).
static ALICE_KEYS: LazyLock<CachedKeys> = LazyLock::new(|| {
    CachedKeys::derive(
        Mechanism::ScramSha256,
        PASSWORD,
        &ALICE.salt,
        ALICE.iterations,
    )
    .unwrap()
});

const DECOY: Decoy<'static> = Decoy {
    secret: b"a server secret of 16+ bytes",
    iterations: ROW_ITERATIONS,
    mechanism: Mechanism::ScramSha256,
};

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// The server's user table.
fn lookup(username: &str) -> Option<ServerCredentials> {
    match username {
        "alice" => Some(ALICE.clone()),
        "carol" => Some(CAROL.clone()),
        _ => None,
    }
}

/// Bytes in flight in one direction.
type Wire = VecDeque<u8>;

/// The input side shared by the machines (they have no trait in common:
/// each is driven on its own).
trait Input {
    fn receive_buffer(&mut self) -> &mut [u8];
    fn commit(&mut self, n: usize);
}

impl Input for ClientHandshake<'_, '_> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}

impl<const C: usize, const A: usize> Input for ServerHandshake<Vec<u8>, C, A> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const C: usize, const A: usize> Input for Connection<B, C, A> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}

/// Moves bytes from `wire` into the machine, at most `chunk` per read (as a
/// transport would), as long as it asks for them. True if any moved.
fn feed(machine: &mut impl Input, wire: &mut Wire, chunk: usize) -> bool {
    let mut moved = false;
    while !wire.is_empty() {
        let dest = machine.receive_buffer();
        if dest.is_empty() {
            break;
        }
        let n = dest.len().min(wire.len()).min(chunk);
        for (d, b) in dest.iter_mut().zip(wire.drain(..n)) {
            *d = b;
        }
        machine.commit(n);
        moved = true;
    }
    moved
}

/// What an application saw, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Call {
        id: u32,
        method: String,
        args: Vec<u8>,
    },
    Notify {
        method: String,
        args: Vec<u8>,
    },
    Reply {
        id: u32,
        result: Vec<u8>,
    },
    Failed {
        id: u32,
        code: ErrorCode,
        message: String,
    },
    TimedOut {
        id: u32,
    },
}

/// How a side's application answers calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Replies with the arguments.
    Echo,
    /// Keeps the tokens in `held`, answers later.
    Hold,
    /// Drops the call without taking its token.
    Ignore,
}

/// One established machine, its inbox, and what its application saw.
struct Side<B, const C: usize, const A: usize> {
    conn: Connection<B, C, A>,
    inbox: Wire,
    seen: Vec<Seen>,
    held: Vec<ReplyToken>,
    /// The calls the machine refused by itself (`Connection::refusing`).
    refused: Vec<(u32, ErrorCode)>,
    policy: Policy,
    error: Option<ConnectionError>,
    /// Bytes per read.
    chunk: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const C: usize, const A: usize> Side<B, C, A> {
    fn new(conn: Connection<B, C, A>) -> Self {
        Self {
            conn,
            inbox: Wire::new(),
            seen: Vec::new(),
            held: Vec::new(),
            refused: Vec::new(),
            policy: Policy::Echo,
            error: None,
            chunk: usize::MAX,
        }
    }

    /// Runs the driver loop (events until none, then what is owed, then
    /// input) until nothing moves without more input; what the machine
    /// sends goes to `out`. True if anything happened.
    fn run(&mut self, now: Instant, out: &mut Wire) -> bool {
        let mut tx = vec![0u8; 70_000];
        let mut any = false;
        loop {
            if self.error.is_none() {
                match self.conn.poll_event(now) {
                    Err(e) => self.error = Some(e),
                    Ok(Some(event)) => {
                        any = true;
                        let ignore = self.policy == Policy::Ignore;
                        let call = event_owned(event, &mut self.seen, ignore);
                        self.handle(call, now, out, &mut tx);
                        continue;
                    }
                    Ok(None) => self.refused.extend(self.conn.refusing()),
                }
            }
            let mut sent = false;
            while let Some(frame) = self.conn.poll_transmit(now, &mut tx) {
                out.extend(frame);
                sent = true;
            }
            any |= sent;
            if sent {
                continue;
            }
            if self.error.is_none() && feed(&mut self.conn, &mut self.inbox, self.chunk) {
                any = true;
                continue;
            }
            return any;
        }
    }

    /// Answers a call the application saw, by its policy.
    fn handle(
        &mut self,
        call: Option<(ReplyToken, Vec<u8>)>,
        now: Instant,
        out: &mut Wire,
        tx: &mut [u8],
    ) {
        let Some((token, args)) = call else { return };
        match self.policy {
            Policy::Echo => out.extend(self.conn.reply(token, now, tx, &args).unwrap()),
            Policy::Hold => self.held.push(token),
            Policy::Ignore => unreachable!("ignored calls keep no token"),
        }
    }

    /// Answers the held call `id` with `result`; returns the frame.
    fn answer_held(&mut self, id: u32, now: Instant, result: &[u8]) -> Vec<u8> {
        let i = self.held.iter().position(|t| t.id() == id).unwrap();
        let token = self.held.remove(i);
        let mut tx = vec![0u8; 70_000];
        self.conn
            .reply(token, now, &mut tx, result)
            .unwrap()
            .to_vec()
    }
}

/// Records `event` in `seen`; for a call the application answers, its
/// token and arguments (ignored calls are dropped without a token).
fn event_owned(
    event: Event<'_>,
    seen: &mut Vec<Seen>,
    ignore_calls: bool,
) -> Option<(ReplyToken, Vec<u8>)> {
    match event {
        Event::Call(call) => {
            let args = call.args().to_vec();
            seen.push(Seen::Call {
                id: call.id(),
                method: call.method().into(),
                args: args.clone(),
            });
            if ignore_calls {
                drop(call);
                None
            } else {
                Some((call.into_token(), args))
            }
        }
        Event::Notify(n) => {
            seen.push(Seen::Notify {
                method: n.method.into(),
                args: n.args.to_vec(),
            });
            None
        }
        Event::Reply(r) => {
            seen.push(match r.result {
                Ok(result) => Seen::Reply {
                    id: r.id,
                    result: result.to_vec(),
                },
                Err(CallFailure::Remote { code, message }) => Seen::Failed {
                    id: r.id,
                    code,
                    message: message.into(),
                },
                Err(CallFailure::TimedOut) => Seen::TimedOut { id: r.id },
            });
            None
        }
        other => panic!("{other:?}"),
    }
}

type DeviceSide = Side<&'static mut [u8], 4, 1>;
type ServerSide = Side<Vec<u8>, 4, 2>;

/// A device and a server, both real machines, on one manual clock.
struct Pair {
    now: u64,
    device: DeviceSide,
    server: ServerSide,
    /// device -> server, server -> device.
    up: Wire,
    down: Wire,
}

impl Pair {
    /// alice logs in with cached keys at time 0.
    fn new() -> Self {
        Self::with(ServerConfig::default().with_max_calls_in_flight(2), 512)
    }

    fn with(config: ServerConfig, device_rx: usize) -> Self {
        let attempt = Attempt::run("alice", ClientCredentials::Keys(&ALICE_KEYS), config, |h| {
            ClientHandshake::new(
                leak(device_rx),
                "alice",
                h,
                &ClientConfig::default(),
                &mut TestRng(1),
            )
        });
        let (device, server) = attempt.established.expect("alice logs in");
        Self {
            now: 0,
            device: Side::new(device),
            server: Side::new(server),
            up: Wire::new(),
            down: Wire::new(),
        }
    }

    fn now(&self) -> Instant {
        at(self.now)
    }

    /// Both sides run until neither can go on.
    fn settle(&mut self) {
        let now = self.now();
        loop {
            let a = self.device.run(now, &mut self.up);
            self.server.inbox.append(&mut self.up);
            let b = self.server.run(now, &mut self.down);
            self.device.inbox.append(&mut self.down);
            if !a && !b && self.device.inbox.is_empty() && self.server.inbox.is_empty() {
                return;
            }
            if !a && !b {
                // Input waits that neither took: a machine refuses it.
                return;
            }
        }
    }

    /// The clock moves `ms` on; both sides run their timers.
    #[allow(dead_code)]
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now();
        self.device.conn.handle_timeout(now);
        self.server.conn.handle_timeout(now);
        self.settle();
    }

    /// The device calls `M`; returns the call id.
    fn device_calls<M: Method>(&mut self, args: &M::Args<'_>, timeout_ms: u64) -> u32 {
        let mut tx = [0u8; 512];
        let (id, frame) = self
            .device
            .conn
            .call::<M>(self.now(), args, Duration::from_millis(timeout_ms), &mut tx)
            .unwrap();
        self.server.inbox.extend(frame);
        id
    }

    /// The server calls `M` on the device; returns the call id.
    fn server_calls<M: Method>(&mut self, args: &M::Args<'_>, timeout_ms: u64) -> u32 {
        let mut tx = [0u8; 512];
        let (id, frame) = self
            .server
            .conn
            .call::<M>(self.now(), args, Duration::from_millis(timeout_ms), &mut tx)
            .unwrap();
        self.device.inbox.extend(frame);
        id
    }
}

/// A buffer that lives for the test (the device's receive buffer).
fn leak(len: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; len].into_boxed_slice())
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = message::encode(v, &mut buf).unwrap().len();
    buf.truncate(n);
    buf
}

/// How a test's server goes on at [`ServerStep::Login`] (the username is
/// given).
type Challenger = dyn Fn(
    &mut ServerHandshake<Vec<u8>, 4, 2>,
    &str,
    &mut TestRng,
) -> tether_core::connection::Challenged;

/// A login between two real machines, and how it ended on each side.
struct Attempt {
    established: Option<(ClientConnection<'static>, ServerConnection<Vec<u8>, 4, 2>)>,
    client_error: Option<ConnectionError>,
    server_error: Option<ConnectionError>,
    /// Every handshake message the server sent.
    from_server: Vec<Handshake<'static>>,
    /// How the server's challenge was made.
    challenged: Option<tether_core::connection::Challenged>,
}

impl Attempt {
    fn run(
        username: &str,
        credentials: ClientCredentials<'static>,
        config: ServerConfig,
        start: impl FnOnce(
            ClientCredentials<'static>,
        ) -> Result<ClientHandshake<'static, 'static>, ConnectionError>,
    ) -> Self {
        Self::run_planned(
            username,
            credentials,
            config,
            start,
            &|server, name, rng| server.challenge(lookup(name), &DECOY, rng).unwrap(),
        )
    }

    /// [`run`](Self::run) with the driver's challenge made by `challenger`.
    fn run_planned(
        username: &str,
        credentials: ClientCredentials<'static>,
        config: ServerConfig,
        start: impl FnOnce(
            ClientCredentials<'static>,
        ) -> Result<ClientHandshake<'static, 'static>, ConnectionError>,
        challenger: &Challenger,
    ) -> Self {
        let _ = username;
        let mut client = start(credentials).unwrap();
        let mut server =
            ServerHandshake::<Vec<u8>, 4, 2>::new(vec![0; 4096], config, at(0)).unwrap();
        let mut rng = TestRng(2);
        let (mut up, mut down) = (Wire::new(), Wire::new());
        let mut tx = vec![0u8; 512];
        let mut result = Self {
            established: None,
            client_error: None,
            server_error: None,
            from_server: Vec::new(),
            challenged: None,
        };
        let mut server_conn = None;
        for _ in 0..20 {
            while let Some(frame) = client.poll_transmit(at(0), &mut tx) {
                up.extend(frame);
            }
            feed(&mut server, &mut up, usize::MAX);
            if result.server_error.is_none() && server_conn.is_none() {
                match server.poll() {
                    Ok(Some(ServerStep::Login(req))) => {
                        let name = req.username.to_string();
                        result.challenged = Some(challenger(&mut server, &name, &mut rng));
                    }
                    Ok(Some(ServerStep::Verified(_))) => {
                        let (conn, frame) = server.welcome(7, at(0), &mut tx).unwrap();
                        down.extend(frame);
                        server_conn = Some(conn);
                    }
                    Ok(Some(other)) => panic!("{other:?}"),
                    Ok(None) => {}
                    Err(e) => result.server_error = Some(e),
                }
            }
            while let Some(frame) = server.poll_transmit(&mut tx) {
                down.extend(frame);
            }
            record_handshakes(&down, &mut result.from_server);
            feed(&mut client, &mut down, usize::MAX);
            match client.poll(at(0)) {
                Ok(Some(est)) => {
                    result.established = Some((est.connection, server_conn.take().unwrap()));
                    return result;
                }
                Ok(None) => {}
                Err(e) => {
                    result.client_error = Some(e);
                    return result;
                }
            }
        }
        result
    }
}

/// Decodes the handshake frames in `wire` (without consuming them).
fn record_handshakes(wire: &Wire, into: &mut Vec<Handshake<'static>>) {
    let bytes: Vec<u8> = wire.iter().copied().collect();
    let mut buf = vec![0u8; 512];
    let mut d = FrameDecoder::new(&mut buf[..], 512);
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (used, body) = d.push(rest).unwrap();
        rest = &rest[used..];
        if let Some(body) = body {
            let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
            into.push(Handshake::decode(body).unwrap());
        }
    }
}

fn try_login(username: &str, credentials: ClientCredentials<'static>) -> Attempt {
    let name = username.to_string();
    Attempt::run(username, credentials, ServerConfig::default(), move |c| {
        ClientHandshake::new(
            leak(512),
            &name,
            c,
            &ClientConfig::default(),
            &mut TestRng(3),
        )
    })
}

fn refusal(code: RefusalCode) -> Handshake<'static> {
    Handshake::Refused(Refusal {
        code,
        retry_after_secs: 0,
    })
}

// ------------------------------------------------------------ the flow

#[test]
fn login_then_calls_both_ways_with_replies_in_any_order() {
    let mut p = Pair::new();
    assert_eq!(p.device.conn.session_id(), 7);
    assert_eq!(p.device.conn.heartbeat_secs(), 30);
    assert_eq!(p.device.conn.peer_max_frame(), 4096);
    assert_eq!(p.server.conn.peer_max_frame(), 512);
    // Two device calls; the server answers the second first.
    p.server.policy = Policy::Hold;
    let a = p.device_calls::<Echo>(&"a", 5000);
    let b = p.device_calls::<Echo>(&"b", 5000);
    assert_eq!((a, b), (1, 2));
    assert_eq!(p.device.conn.calls_in_flight(), 2);
    p.settle();
    assert_eq!(p.server.held.len(), 2);
    assert_eq!(p.server.conn.answers_owed(), 2);
    let now = p.now();
    let frame = p.server.answer_held(b, now, &enc(&"B"));
    p.device.inbox.extend(frame);
    let frame = p.server.answer_held(a, now, &enc(&"A"));
    p.device.inbox.extend(frame);
    p.settle();
    assert_eq!(
        p.device.seen,
        [
            Seen::Reply {
                id: b,
                result: enc(&"B")
            },
            Seen::Reply {
                id: a,
                result: enc(&"A")
            },
        ]
    );
    assert_eq!(p.device.conn.calls_in_flight(), 0);
    // The server calls the device, which echoes.
    let id = p.server_calls::<DeviceInfo>(&(), 5000);
    p.settle();
    assert_eq!(
        p.server.seen,
        [
            Seen::Call {
                id: 1,
                method: "echo".into(),
                args: enc(&"a")
            },
            Seen::Call {
                id: 2,
                method: "echo".into(),
                args: enc(&"b")
            },
            Seen::Reply {
                id,
                result: Vec::new()
            },
        ]
    );
    // Notifications both ways.
    let mut tx = [0u8; 512];
    let now = p.now();
    let frame = p.device.conn.notify::<Echo>(now, &"note", &mut tx).unwrap();
    p.server.inbox.extend(frame);
    p.settle();
    assert_eq!(
        p.server.seen.last(),
        Some(&Seen::Notify {
            method: "echo".into(),
            args: enc(&"note")
        })
    );
    // Goodbye: the last frame; the server says nothing back.
    p.device.conn.close(GoodbyeReason::Normal);
    p.settle();
    assert_eq!(p.device.error, Some(ConnectionError::Ended));
    assert_eq!(
        p.server.error,
        Some(ConnectionError::Closed(GoodbyeReason::Normal))
    );
    assert!(p.up.is_empty() && p.down.is_empty());
    let mut tx = [0u8; 512];
    assert_eq!(p.server.conn.poll_transmit(now, &mut tx), None);
}

#[test]
fn call_frames_are_the_canonical_encoding_sealed() {
    // A raw server holds the keys: it opens the machine's call and
    // re-encodes it with the message codec; the bytes are the same.
    let (mut server, mut device) = raw_server_login(Welcome512::default());
    let mut tx = [0u8; 512];
    for args in ["", "hi", &"x".repeat(127), &"y".repeat(300)] {
        let (id, frame) = device
            .conn
            .call::<Echo>(at(0), &args, Duration::from_secs(1), &mut tx)
            .unwrap();
        let frame = frame.to_vec();
        let body = &frame[HEADER_LEN..];
        let msg = server.opener.open(body).unwrap();
        assert_eq!(
            msg,
            Message::Call {
                id,
                method: "echo",
                args: &enc(&args)
            }
        );
        let canonical = enc(&msg);
        assert_eq!(&body[8..body.len() - 16], &canonical[..]);
    }
}

#[test]
fn password_login_derives_keys_that_log_in_later() {
    let mut hs = ClientHandshake::<4>::new(
        leak(600),
        "alice",
        ClientCredentials::Password(PASSWORD),
        &ClientConfig::default(),
        &mut TestRng(4),
    )
    .unwrap();
    let mut server =
        ServerHandshake::<Vec<u8>>::new(vec![0; 1024], ServerConfig::default(), at(0)).unwrap();
    let mut tx = [0u8; 512];
    let (mut up, mut down) = (Wire::new(), Wire::new());
    let est = loop {
        while let Some(f) = hs.poll_transmit(at(0), &mut tx) {
            up.extend(f);
        }
        // The keys are known as soon as the proof is made.
        if hs.keys().is_some() {
            assert_eq!(hs.keys(), Some(&*ALICE_KEYS));
        }
        feed(&mut server, &mut up, 3);
        match server.poll().unwrap() {
            Some(ServerStep::Login(req)) => {
                assert_eq!(req.username, "alice");
                assert_eq!(req.max_frame, 600);
                assert_eq!(req.mechanisms, Mechanisms::ALL);
                let account = lookup(req.username);
                assert_eq!(
                    server.challenge(account, &DECOY, &mut TestRng(5)),
                    Ok(tether_core::connection::Challenged::Account)
                );
            }
            Some(ServerStep::Verified(v)) => {
                assert_eq!((v.username, v.mechanism), ("alice", Mechanism::ScramSha256));
                let (conn, f) = server.welcome(9, at(0), &mut tx).unwrap();
                assert_eq!(conn.max_frame(), 1024);
                down.extend(f);
            }
            _ => {}
        }
        while let Some(f) = server.poll_transmit(&mut tx) {
            down.extend(f);
        }
        feed(&mut hs, &mut down, 1);
        if let Some(est) = hs.poll(at(0)).unwrap() {
            break est;
        }
    };
    assert!(est.derived);
    assert_eq!(est.keys, *ALICE_KEYS);
    assert_eq!(est.connection.max_frame(), 600);
    assert_eq!(est.connection.session_id(), 9);
    // The spent handshake says so.
    assert_eq!(hs.poll(at(0)).err(), Some(ConnectionError::Ended));
    let again = try_login("alice", ClientCredentials::Keys(&ALICE_KEYS));
    assert!(again.established.is_some());
}

// ---------------------------------------------------------- refusals

#[test]
fn wrong_password_and_unknown_user_end_alike_unauthorized() {
    for user in ["alice", "mallory"] {
        let a = try_login(user, ClientCredentials::Password("wrong"));
        assert_eq!(
            a.client_error,
            Some(ConnectionError::Refused(Refusal {
                code: RefusalCode::Unauthorized,
                retry_after_secs: 0
            })),
            "{user}"
        );
        assert_eq!(
            a.server_error,
            Some(ConnectionError::Rejected {
                code: RefusalCode::Unauthorized,
                cause: RefusalCause::InvalidProof
            })
        );
        assert!(matches!(a.from_server[0], Handshake::Challenge(_)));
        assert_eq!(a.from_server[1], refusal(RefusalCode::Unauthorized));
    }
    // mallory's challenge was a decoy, and says nothing about it.
    let a = try_login("mallory", ClientCredentials::Password(PASSWORD));
    assert_eq!(
        a.challenged,
        Some(tether_core::connection::Challenged::Decoy(
            DecoyReason::NoAccount
        ))
    );
    let Handshake::Challenge(c) = a.from_server[0] else {
        panic!()
    };
    assert_eq!(c.mechanism, Mechanism::ScramSha256);
    assert!(c.server_first.ends_with(",i=4096"));
}

#[test]
fn an_account_whose_mechanism_is_not_offered_gets_a_decoy_in_an_offered_one() {
    // carol's row is SCRAM-SHA-1; a hello offering only SCRAM-SHA-256 (a
    // device with cached SHA-256 keys) gets a SHA-256 decoy and ends
    // `unauthorized`, as an unknown user would: no `unsupported` that would
    // tell her account apart.
    let a = try_login("carol", ClientCredentials::Keys(&ALICE_KEYS));
    assert_eq!(
        a.challenged,
        Some(tether_core::connection::Challenged::Decoy(
            DecoyReason::MechanismNotOffered(Mechanism::ScramSha1)
        ))
    );
    let Handshake::Challenge(c) = a.from_server[0] else {
        panic!()
    };
    assert_eq!(c.mechanism, Mechanism::ScramSha256);
    // The device's cached keys do not fit the decoy's salt: it stops there.
    assert_eq!(
        a.client_error,
        Some(ConnectionError::Scram(ScramError::CachedKeysMismatch))
    );
    // With her password and both mechanisms offered, carol logs in (SHA-1).
    let a = try_login("carol", ClientCredentials::Password(PASSWORD));
    assert!(a.established.is_some());
    let Handshake::Challenge(c) = a.from_server[0] else {
        panic!()
    };
    assert_eq!(c.mechanism, Mechanism::ScramSha1);
}

#[test]
fn a_driver_planned_challenge_logs_in_with_the_account_and_never_with_a_decoy() {
    use tether_core::connection::Challenged;
    let planned = |user: &'static str, credentials, decoy: bool| {
        let name = user.to_string();
        Attempt::run_planned(
            user,
            credentials,
            ServerConfig::default(),
            move |c| {
                ClientHandshake::new(
                    leak(512),
                    &name,
                    c,
                    &ClientConfig::default(),
                    &mut TestRng(3),
                )
            },
            &move |server, _, rng| {
                server.challenge_with(&ALICE, decoy, rng).unwrap();
                if decoy {
                    Challenged::Decoy(DecoyReason::NoAccount)
                } else {
                    Challenged::Account
                }
            },
        )
    };
    // The account's own verifier: the right password logs in.
    let a = planned("alice", ClientCredentials::Password(PASSWORD), false);
    assert!(a.established.is_some());
    // The same keys marked a decoy (say, a deactivated row keeping its
    // salt and count): even the right password ends `unauthorized`.
    let a = planned("alice", ClientCredentials::Password(PASSWORD), true);
    assert!(a.established.is_none());
    assert_eq!(
        a.server_error,
        Some(ConnectionError::Rejected {
            code: RefusalCode::Unauthorized,
            cause: RefusalCause::InvalidProof
        })
    );
    assert_eq!(a.from_server[1], refusal(RefusalCode::Unauthorized));

    // Credentials in a mechanism the hello did not offer are the driver's
    // bug: refused with the handshake untouched, which still waits.
    let mut rng = TestRng(7);
    let login = ClientLogin::<256>::new(
        "carol",
        ClientCredentials::Keys(&ALICE_KEYS),
        scram::ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let mut server =
        ServerHandshake::<Vec<u8>>::new(vec![0; 1024], ServerConfig::default(), at(0)).unwrap();
    let mut wire: Wire =
        hello_frame(1, login.mechanisms().bits(), 512, login.client_first()).into();
    feed(&mut server, &mut wire, usize::MAX);
    assert!(matches!(server.poll(), Ok(Some(ServerStep::Login(_)))));
    assert_eq!(
        server.challenge_with(&CAROL, false, &mut rng),
        Err(SendError::NotExpected)
    );
    let mut tx = [0u8; 512];
    assert!(server.poll_transmit(&mut tx).is_none(), "nothing sent");
    assert!(matches!(server.poll(), Ok(Some(ServerStep::Login(_)))));
    assert_eq!(server.challenge_with(&ALICE, true, &mut rng), Ok(()));
    assert!(server.poll_transmit(&mut tx).is_some(), "the challenge");
    assert_eq!(
        server.challenge_with(&ALICE, false, &mut rng),
        Err(SendError::NotExpected),
        "once"
    );
}

#[test]
fn receive_storage_can_be_taken_back_between_frames_only() {
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    assert!(server.conn.idle_receive_storage().is_some());
    let frame = raw.seal(&Message::Ping { nonce: 9 });
    // Part of a frame is in: the storage stays.
    server.inbox.extend(&frame[..3]);
    server.run(at(0), &mut down);
    assert!(server.conn.idle_receive_storage().is_none());
    server.inbox.extend(&frame[3..]);
    server.run(at(0), &mut down);
    assert_eq!(raw.open_all(&mut down), [Message::Pong { nonce: 9 }]);
    // Handled: it may go, and other storage of its size takes its place.
    let storage = server.conn.idle_receive_storage().unwrap();
    let size = storage.len();
    *storage = vec![0; size];
    server.inbox.extend(raw.seal(&Message::Ping { nonce: 10 }));
    server.run(at(0), &mut down);
    assert_eq!(raw.open_all(&mut down), [Message::Pong { nonce: 10 }]);
    assert_eq!(server.error, None);
}

#[test]
fn the_call_size_rule_is_the_same_outside_the_connection() {
    let (_raw, server) = raw_client_login(ServerConfig::default());
    for method in ["echo", "a_much_longer_method_name"] {
        assert_eq!(
            tether_core::connection::max_args_len(server.conn.peer_max_frame(), method),
            server.conn.max_args_len(method)
        );
    }
}

/// Sends a raw hello (or any bytes) to a server handshake; returns what it
/// sent back and its error.
fn server_gets(bytes: &[u8]) -> (Vec<Handshake<'static>>, Option<ConnectionError>) {
    let mut server =
        ServerHandshake::<Vec<u8>>::new(vec![0; 1024], ServerConfig::default(), at(0)).unwrap();
    let mut wire: Wire = bytes.iter().copied().collect();
    feed(&mut server, &mut wire, usize::MAX);
    let error = server.poll().err();
    let mut out = Wire::new();
    let mut tx = [0u8; 512];
    while let Some(f) = server.poll_transmit(&mut tx) {
        out.extend(f);
    }
    let mut sent = Vec::new();
    record_handshakes(&out, &mut sent);
    (sent, error)
}

fn hello_frame(version: u8, mechanisms: u8, max_frame: u16, client_first: &str) -> Vec<u8> {
    let hello = Handshake::Hello(Hello {
        version,
        mechanisms: Mechanisms::from_bits(mechanisms),
        max_frame,
        client_first,
    });
    let mut out = [0u8; 600];
    encode_message(&hello, &mut out, 512).unwrap().to_vec()
}

#[test]
fn what_the_hello_alone_decides() {
    let first = "n,,n=alice,r=abcdefgh";
    let cases: [(Vec<u8>, RefusalCode, RefusalCause); 7] = [
        (
            hello_frame(2, 3, 512, first),
            RefusalCode::Version,
            RefusalCause::Version(2),
        ),
        (
            hello_frame(1, 3, 511, first),
            RefusalCode::Protocol,
            RefusalCause::Violation(Violation::MaxFrameTooSmall(511)),
        ),
        (
            hello_frame(1, 3, 512, "p=tls-unique,,n=alice,r=abc"),
            RefusalCode::Protocol,
            RefusalCause::Scram(ScramError::ChannelBindingUnsupported),
        ),
        // Offers no mechanism at all, or only unknown ones.
        (
            hello_frame(1, 0, 512, first),
            RefusalCode::Unsupported,
            RefusalCause::NoMechanism,
        ),
        (
            hello_frame(1, 4, 512, first),
            RefusalCode::Unsupported,
            RefusalCause::NoMechanism,
        ),
        // A proof first.
        (
            {
                let mut out = [0u8; 64];
                let p = Handshake::Proof(Proof { client_final: "x" });
                encode_message(&p, &mut out, 512).unwrap().to_vec()
            },
            RefusalCode::Protocol,
            RefusalCause::Violation(Violation::UnexpectedMessage),
        ),
        // Garbage postcard.
        (
            vec![0, 2, 9, 9],
            RefusalCode::Protocol,
            RefusalCause::Violation(Violation::Undecodable(DecodeError::UnknownVariant)),
        ),
    ];
    for (bytes, code, cause) in cases {
        let (sent, error) = server_gets(&bytes);
        assert_eq!(sent, [refusal(code)], "{cause:?}");
        assert_eq!(error, Some(ConnectionError::Rejected { code, cause }));
    }
}

#[test]
fn zero_length_and_oversized_prefixes_in_the_handshake_are_refused_at_the_header() {
    // hostile.rs: zero-length prefix in the handshake.
    let (sent, error) = server_gets(&[0, 0, 1, 2, 3]);
    assert_eq!(sent, [refusal(RefusalCode::Protocol)]);
    assert_eq!(
        error,
        Some(ConnectionError::Rejected {
            code: RefusalCode::Protocol,
            cause: RefusalCause::Frame(FrameError::EmptyFrame)
        })
    );
    // 513 before login: refused on the two header bytes, no body awaited.
    let (sent, error) = server_gets(&[0x02, 0x01]);
    assert_eq!(sent, [refusal(RefusalCode::Protocol)]);
    assert_eq!(
        error,
        Some(ConnectionError::Rejected {
            code: RefusalCode::Protocol,
            cause: RefusalCause::Frame(FrameError::TooLong { len: 513, max: 512 })
        })
    );
}

#[test]
fn driver_refusals_carry_retry_after_only_when_transient() {
    for (code, retry, sent_retry) in [
        (RefusalCode::Throttled, 300, 300),
        (RefusalCode::Busy, 1, 1),
        (RefusalCode::Unauthorized, 300, 0),
    ] {
        let mut server =
            ServerHandshake::<Vec<u8>>::new(vec![0; 1024], ServerConfig::default(), at(0)).unwrap();
        let mut wire: Wire = hello_frame(1, 1, 512, "n,,n=alice,r=abc").into();
        feed(&mut server, &mut wire, usize::MAX);
        assert!(matches!(server.poll(), Ok(Some(ServerStep::Login(_)))));
        // Still paused on the same step until the driver acts.
        assert!(matches!(server.poll(), Ok(Some(ServerStep::Login(_)))));
        assert_eq!(
            server.welcome(1, at(0), &mut [0; 512]).err(),
            Some(SendError::NotExpected)
        );
        server.refuse(code, retry).unwrap();
        let mut tx = [0u8; 512];
        let frame = server.poll_transmit(&mut tx).unwrap().to_vec();
        assert_eq!(
            message::decode::<Handshake>(&frame[2..]).unwrap(),
            Handshake::Refused(Refusal {
                code,
                retry_after_secs: sent_retry
            })
        );
        assert_eq!(server.poll_transmit(&mut tx), None, "the refusal is last");
        assert_eq!(
            server.poll().err(),
            Some(ConnectionError::Rejected {
                code,
                cause: RefusalCause::Server
            })
        );
        assert_eq!(
            server.challenge(None, &DECOY, &mut TestRng(0)),
            Err(SendError::Closed)
        );
    }
}

#[test]
fn the_handshake_times_out_silently() {
    let mut server =
        ServerHandshake::<Vec<u8>>::new(vec![0; 1024], ServerConfig::default(), at(1000)).unwrap();
    assert_eq!(server.poll_timeout(), Some(at(11_000)));
    server.handle_timeout(at(10_999));
    assert!(server.poll().is_ok());
    server.handle_timeout(at(11_000));
    assert_eq!(server.poll().err(), Some(ConnectionError::HandshakeTimeout));
    assert_eq!(server.poll_transmit(&mut [0; 512]), None);
    assert_eq!(server.poll_timeout(), None);

    // The client waits for each answer from when its message left.
    let mut client = ClientHandshake::<4>::new(
        leak(512),
        "alice",
        ClientCredentials::Keys(&ALICE_KEYS),
        &ClientConfig::default().with_handshake_timeout(Duration::from_secs(2)),
        &mut TestRng(6),
    )
    .unwrap();
    assert_eq!(client.poll_timeout(), None);
    assert!(client.poll_transmit(at(500), &mut [0; 512]).is_some());
    assert_eq!(client.poll_timeout(), Some(at(2500)));
    client.handle_timeout(at(2500));
    assert_eq!(
        client.poll(at(2500)).err(),
        Some(ConnectionError::HandshakeTimeout)
    );
}

#[test]
fn a_too_small_receive_buffer_is_refused() {
    let err = ClientHandshake::<4>::new(
        leak(511),
        "alice",
        ClientCredentials::Keys(&ALICE_KEYS),
        &ClientConfig::default(),
        &mut TestRng(6),
    )
    .err();
    assert_eq!(
        err,
        Some(ConnectionError::Frame(FrameError::BufferTooSmall {
            needed: 512,
            available: 511
        }))
    );
}

// -------------------------------------------------- a raw peer's view

/// One side of a session whose keys the test holds: it seals and opens
/// frames itself, to send what no machine would.
struct Raw {
    sealer: Sealer,
    opener: Opener,
    /// The other direction's key, to forge reflected frames.
    reflect: Sealer,
    /// The sending key itself (a raw client's K_c2s), computed by the test.
    key: Option<[u8; 32]>,
}

impl Raw {
    /// A correctly sequenced and tagged frame whose message is `payload`,
    /// whatever its bytes (tagged by the test's own HMAC).
    fn authentic(&mut self, payload: &[u8]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let seq = self.sealer.next_seq();
        let mut frame = ((8 + payload.len() + 16) as u16).to_be_bytes().to_vec();
        frame.extend(seq.to_be_bytes());
        frame.extend(payload);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key.unwrap()).unwrap();
        mac.update(&frame[HEADER_LEN..]);
        frame.extend(&mac.finalize().into_bytes()[..16]);
        frame
    }

    fn seal(&mut self, msg: &Message<'_>) -> Vec<u8> {
        let mut out = vec![0u8; 70_000];
        self.sealer.seal(msg, &mut out, 65535).unwrap().to_vec()
    }

    /// Every session message in `wire`, opened (the wire is emptied).
    fn open_all(&mut self, wire: &mut Wire) -> Vec<Message<'static>> {
        let bytes: Vec<u8> = wire.drain(..).collect();
        let mut buf = vec![0u8; 65535];
        let mut d = FrameDecoder::new(&mut buf[..], 65535);
        let mut rest = &bytes[..];
        let mut msgs = Vec::new();
        while !rest.is_empty() {
            let (used, body) = d.push(rest).unwrap();
            rest = &rest[used..];
            if let Some(body) = body {
                let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
                msgs.push(self.opener.open(body).unwrap());
            }
        }
        msgs
    }
}

/// A raw client logged in to a real server machine (with `config`).
fn raw_client_login(config: ServerConfig) -> (Raw, ServerSide) {
    let mut rng = TestRng(7);
    let login = ClientLogin::<256>::new(
        "alice",
        ClientCredentials::Keys(&ALICE_KEYS),
        scram::ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let mut server = ServerHandshake::<Vec<u8>, 4, 2>::new(vec![0; 4096], config, at(0)).unwrap();
    let login_first = login.client_first().to_string();
    let mut wire: Wire =
        hello_frame(1, login.mechanisms().bits(), 512, login.client_first()).into();
    feed(&mut server, &mut wire, usize::MAX);
    let Ok(Some(ServerStep::Login(req))) = server.poll() else {
        panic!()
    };
    let account = lookup(req.username);
    server.challenge(account, &DECOY, &mut rng).unwrap();
    let mut tx = [0u8; 512];
    let frame = server.poll_transmit(&mut tx).unwrap();
    let Handshake::Challenge(c) = message::decode(&frame[2..]).unwrap() else {
        panic!()
    };
    let proof = login.handle_challenge(c.mechanism, c.server_first).unwrap();
    let msg = Handshake::Proof(Proof {
        client_final: proof.client_final(),
    });
    let mut out = [0u8; 512];
    let mut wire: Wire = encode_message(&msg, &mut out, 512)
        .unwrap()
        .iter()
        .copied()
        .collect();
    feed(&mut server, &mut wire, usize::MAX);
    assert!(matches!(server.poll(), Ok(Some(ServerStep::Verified(_)))));
    let mut tx2 = [0u8; 512];
    let (conn, frame) = server.welcome(11, at(0), &mut tx2).unwrap();
    let Handshake::Welcome(w) = message::decode(&frame[2..]).unwrap() else {
        panic!()
    };
    // K_c2s from ClientKey and the AuthMessage (PROTOCOL.md section 5).
    let key = {
        use hmac::{KeyInit, Mac};
        let hmac = |key: &[u8], parts: &[&[u8]]| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            for p in parts {
                mac.update(p);
            }
            <[u8; 32]>::from(mac.finalize().into_bytes())
        };
        let bare = &login_first[3..];
        let without_proof = &proof.client_final()[..proof.client_final().rfind(",p=").unwrap()];
        let auth = [bare, ",", c.server_first, ",", without_proof].concat();
        let k = hmac(
            ALICE_KEYS.client_key.as_bytes(),
            &[b"tether/1 session", &[0], auth.as_bytes()],
        );
        hmac(&k, &[b"c2s"])
    };
    let done = proof.handle_server_final(w.server_final).unwrap();
    let (sealer, opener) = done.session.clone().into_halves(Role::Client);
    let (reflect, _) = done.session.into_halves(Role::Server);
    (
        Raw {
            sealer,
            opener,
            reflect,
            key: Some(key),
        },
        Side::new(conn),
    )
}

/// The welcome a raw server sends.
#[derive(Clone, Copy)]
struct Welcome512 {
    heartbeat_secs: u16,
    impostor: bool,
}

impl Default for Welcome512 {
    fn default() -> Self {
        Self {
            heartbeat_secs: 30,
            impostor: false,
        }
    }
}

/// A real device machine logged in to a raw server.
fn raw_server_login(w: Welcome512) -> (Raw, DeviceSide) {
    let result = raw_server_attempt(w);
    let (raw, device) = result.unwrap();
    (raw, device)
}

fn raw_server_attempt(w: Welcome512) -> Result<(Raw, DeviceSide), (ConnectionError, Wire)> {
    let mut rng = TestRng(8);
    let mut device = ClientHandshake::<4>::new(
        leak(512),
        "alice",
        ClientCredentials::Keys(&ALICE_KEYS),
        &ClientConfig::default(),
        &mut rng,
    )
    .unwrap();
    let mut tx = [0u8; 512];
    let frame = device.poll_transmit(at(0), &mut tx).unwrap();
    let Handshake::Hello(hello) = message::decode(&frame[2..]).unwrap() else {
        panic!()
    };
    let login = ServerLogin::<512>::new(hello.client_first)
        .unwrap()
        .challenge(&ALICE, &mut rng)
        .unwrap();
    let mut out = [0u8; 512];
    let challenge = Handshake::Challenge(Challenge {
        mechanism: Mechanism::ScramSha256,
        server_first: login.server_first(),
    });
    let mut wire: Wire = encode_message(&challenge, &mut out, 512)
        .unwrap()
        .iter()
        .copied()
        .collect();
    feed(&mut device, &mut wire, usize::MAX);
    assert!(device.poll(at(0)).unwrap().is_none());
    let frame = device.poll_transmit(at(0), &mut tx).unwrap();
    let Handshake::Proof(proof) = message::decode(&frame[2..]).unwrap() else {
        panic!()
    };
    let done = login.verify(proof.client_final).unwrap();
    let forged = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    let welcome = Handshake::Welcome(Welcome {
        server_final: if w.impostor {
            forged
        } else {
            done.server_final()
        },
        session_id: 5,
        max_frame: 4096,
        heartbeat_secs: w.heartbeat_secs,
    });
    let mut wire: Wire = encode_message(&welcome, &mut out, 512)
        .unwrap()
        .iter()
        .copied()
        .collect();
    feed(&mut device, &mut wire, usize::MAX);
    let est = match device.poll(at(0)) {
        Ok(est) => est.unwrap(),
        Err(e) => {
            let mut sent = Wire::new();
            while let Some(f) = device.poll_transmit(at(0), &mut tx) {
                sent.extend(f);
            }
            return Err((e, sent));
        }
    };
    let (sealer, opener) = done.session.clone().into_halves(Role::Server);
    let (reflect, _) = done.session.into_halves(Role::Client);
    Ok((
        Raw {
            sealer,
            opener,
            reflect,
            key: None,
        },
        Side::new(est.connection),
    ))
}

#[test]
fn an_impostor_server_is_refused_and_hears_nothing_more() {
    let Err((e, sent)) = raw_server_attempt(Welcome512 {
        impostor: true,
        ..Welcome512::default()
    }) else {
        panic!("an impostor was accepted")
    };
    assert_eq!(
        e,
        ConnectionError::Scram(ScramError::InvalidServerSignature)
    );
    assert!(sent.is_empty());
}

// ------------------------------------------ hostile input, server side

/// Sends `frame` (after a good echo) to a fresh server session; expects
/// its goodbye and error.
fn server_killed_by(
    make: impl FnOnce(&mut Raw) -> Vec<u8>,
    goodbye: Option<GoodbyeReason>,
    error: ConnectionError,
) {
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    let call = raw.seal(&Message::Call {
        id: 1,
        method: "echo",
        args: &enc(&"ready"),
    });
    server.inbox.extend(call);
    server.run(at(0), &mut down);
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Reply {
            id: 1,
            result: &enc(&"ready")
        }]
    );
    let frame = make(&mut raw);
    server.inbox.extend(frame);
    server.run(at(0), &mut down);
    assert_eq!(server.error, Some(error));
    let sent = raw.open_all(&mut down);
    assert_eq!(
        sent,
        goodbye
            .map(|reason| Message::Goodbye { reason })
            .into_iter()
            .collect::<Vec<_>>()
    );
    // Nothing more, whatever comes.
    server.inbox.extend(raw.seal(&Message::Ping { nonce: 1 }));
    server.run(at(1), &mut down);
    assert!(down.is_empty());
}

#[test]
fn zero_length_and_oversized_prefixes_in_a_session_end_it_with_protocol_error() {
    server_killed_by(
        |_| vec![0, 0],
        Some(GoodbyeReason::ProtocolError),
        ConnectionError::Frame(FrameError::EmptyFrame),
    );
    // The server's max frame is 4096 (its buffer): 4097 fails at the header.
    server_killed_by(
        |_| vec![0x10, 0x01],
        Some(GoodbyeReason::ProtocolError),
        ConnectionError::Frame(FrameError::TooLong {
            len: 4097,
            max: 4096,
        }),
    );
}

#[test]
fn frames_failing_their_tag_end_the_session_with_bad_tag() {
    let ping = Message::Ping { nonce: 1 };
    let bad_tag = ConnectionError::Session(SessionError::BadTag);
    let bye = Some(GoodbyeReason::BadTag);
    // One bit of the tag flipped.
    server_killed_by(
        |r| {
            let mut f = r.seal(&ping);
            *f.last_mut().unwrap() ^= 1;
            f
        },
        bye,
        bad_tag,
    );
    // One bit of the message flipped.
    server_killed_by(
        |r| {
            let mut f = r.seal(&ping);
            f[HEADER_LEN + 8] ^= 1;
            f
        },
        bye,
        bad_tag,
    );
    // The sequence number changed under the tag.
    server_killed_by(
        |r| {
            let mut f = r.seal(&ping);
            f[HEADER_LEN + 7] ^= 1;
            f
        },
        bye,
        bad_tag,
    );
    // Tagged with the server-to-client key (a reflected frame).
    server_killed_by(
        |r| {
            let mut out = [0u8; 64];
            r.reflect.seal(&ping, &mut out, 512).unwrap().to_vec()
        },
        bye,
        bad_tag,
    );
    // No room for seq, message and tag.
    server_killed_by(
        |_| {
            let mut f = vec![0, 24];
            f.extend([0u8; 24]);
            f
        },
        bye,
        ConnectionError::Session(SessionError::TooShort { len: 24 }),
    );
    // An authentic frame whose message does not decode.
    server_killed_by(
        |r| r.authentic(&[0x09]),
        Some(GoodbyeReason::ProtocolError),
        ConnectionError::Session(SessionError::Decode(DecodeError::UnknownVariant)),
    );
}

#[test]
fn replayed_and_reordered_frames_end_the_session() {
    // Replay: the same authentic call twice; it runs once.
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    let call = raw.seal(&Message::Call {
        id: 77,
        method: "echo",
        args: &enc(&"once"),
    });
    server.inbox.extend(call.clone());
    server.run(at(0), &mut down);
    server.inbox.extend(call);
    server.run(at(0), &mut down);
    assert_eq!(
        raw.open_all(&mut down),
        [
            Message::Reply {
                id: 77,
                result: &enc(&"once")
            },
            Message::Goodbye {
                reason: GoodbyeReason::BadTag
            }
        ]
    );
    assert_eq!(server.seen.len(), 1, "the call ran once");
    assert_eq!(
        server.error,
        Some(ConnectionError::Session(SessionError::Replayed {
            seq: 0,
            expected: 1
        }))
    );
    // Reorder: two calls sealed in order, sent in the other; neither runs.
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let a = raw.seal(&Message::Call {
        id: 1,
        method: "echo",
        args: &enc(&"x"),
    });
    let b = raw.seal(&Message::Call {
        id: 2,
        method: "echo",
        args: &enc(&"x"),
    });
    server.inbox.extend(b);
    server.inbox.extend(a);
    server.run(at(0), &mut down);
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Goodbye {
            reason: GoodbyeReason::BadTag
        }]
    );
    assert!(server.seen.is_empty());
    assert_eq!(
        server.error,
        Some(ConnectionError::Session(SessionError::OutOfOrder {
            seq: 1,
            expected: 0
        }))
    );
}

#[test]
fn replies_to_calls_never_made_or_answered_already_are_protocol_errors() {
    for msg in [
        Message::Reply {
            id: 4242,
            result: &[1],
        },
        Message::Error {
            id: 4243,
            code: ErrorCode::FAILED,
            message: "for nobody",
        },
    ] {
        let (mut raw, mut server) = raw_client_login(ServerConfig::default());
        let mut down = Wire::new();
        server.inbox.extend(raw.seal(&msg));
        server.run(at(0), &mut down);
        let violation = match msg {
            Message::Reply { id, .. } => Violation::UnknownReply(id),
            Message::Error { id, .. } => Violation::UnknownError(id),
            _ => unreachable!(),
        };
        assert_eq!(server.error, Some(ConnectionError::Protocol(violation)));
        assert_eq!(
            raw.open_all(&mut down),
            [Message::Goodbye {
                reason: GoodbyeReason::ProtocolError
            }]
        );
    }
    // A call the server really made, answered twice.
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    let mut tx = [0u8; 512];
    let (id, frame) = server
        .conn
        .call::<Echo>(at(0), &"ping me", Duration::from_secs(5), &mut tx)
        .unwrap();
    down.extend(frame);
    assert!(matches!(
        raw.open_all(&mut down)[..],
        [Message::Call { .. }]
    ));
    let reply = Message::Reply {
        id,
        result: &enc(&"ping me"),
    };
    server.inbox.extend(raw.seal(&reply));
    server.inbox.extend(raw.seal(&reply));
    server.run(at(0), &mut down);
    assert_eq!(
        server.seen,
        [Seen::Reply {
            id,
            result: enc(&"ping me")
        }]
    );
    assert_eq!(
        server.error,
        Some(ConnectionError::Protocol(Violation::UnknownReply(id)))
    );
}

#[test]
fn a_silent_device_is_closed_after_three_heartbeats() {
    let (mut raw, mut server) = raw_client_login(ServerConfig::default().with_heartbeat_secs(10));
    let mut down = Wire::new();
    // The server never pings.
    assert_eq!(server.conn.poll_timeout(), Some(at(30_000)));
    server.conn.handle_timeout(at(29_999));
    server.run(at(29_999), &mut down);
    assert!(down.is_empty() && server.error.is_none());
    // Any frame resets the clock.
    server.inbox.extend(raw.seal(&Message::Pong { nonce: 3 }));
    server.run(at(29_999), &mut down);
    assert_eq!(server.conn.poll_timeout(), Some(at(59_999)));
    server.conn.handle_timeout(at(59_999));
    server.run(at(59_999), &mut down);
    assert_eq!(server.error, Some(ConnectionError::IdleTimeout));
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Goodbye {
            reason: GoodbyeReason::IdleTimeout
        }]
    );
}

#[test]
fn calls_beyond_the_limit_are_busy_and_duplicates_end_the_session() {
    let (mut raw, mut server) =
        raw_client_login(ServerConfig::default().with_max_calls_in_flight(2));
    server.policy = Policy::Hold;
    let mut down = Wire::new();
    for id in 1..=3 {
        server.inbox.extend(raw.seal(&Message::Call {
            id,
            method: "slow",
            args: &[],
        }));
    }
    server.run(at(0), &mut down);
    assert_eq!(server.held.len(), 2);
    assert_eq!(server.refused, [(3, ErrorCode::BUSY)]);
    assert_eq!(server.conn.refusing(), None, "sent: no longer refusing");
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Error {
            id: 3,
            code: ErrorCode::BUSY,
            message: "too many calls in flight"
        }]
    );
    // Answering one makes room.
    let frame = server.answer_held(1, at(0), &[]);
    down.extend(frame);
    server.inbox.extend(raw.seal(&Message::Call {
        id: 4,
        method: "slow",
        args: &[],
    }));
    server.run(at(0), &mut down);
    assert_eq!(server.held.len(), 2);
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Reply { id: 1, result: &[] }]
    );
    // A call whose id is in flight.
    server.inbox.extend(raw.seal(&Message::Call {
        id: 4,
        method: "again",
        args: &[],
    }));
    server.run(at(0), &mut down);
    assert_eq!(
        server.error,
        Some(ConnectionError::Protocol(Violation::DuplicateCall(4)))
    );
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Goodbye {
            reason: GoodbyeReason::ProtocolError
        }]
    );
}

#[test]
fn every_call_gets_an_answer() {
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    // A call the application drops without taking its token.
    server.policy = Policy::Ignore;
    server.inbox.extend(raw.seal(&Message::Call {
        id: 1,
        method: "x",
        args: &[],
    }));
    server.run(at(0), &mut down);
    assert_eq!(
        raw.open_all(&mut down),
        [Message::Error {
            id: 1,
            code: ErrorCode::FAILED,
            message: "call not answered"
        }]
    );
    assert_eq!(server.conn.answers_owed(), 0);
    assert_eq!(
        server.refused,
        [],
        "an unanswered call is failed, not refused"
    );
    // The device accepts 512 bytes: a reply larger than that, and an error
    // whose message (naming a 480-byte method, issue 13) would not fit.
    server.policy = Policy::Hold;
    let long = "m".repeat(480);
    for id in [2, 3] {
        server.inbox.extend(raw.seal(&Message::Call {
            id,
            method: &long,
            args: &[],
        }));
    }
    server.run(at(0), &mut down);
    let mut tx = vec![0u8; 4096];
    let token = server.held.remove(0);
    let frame = server
        .conn
        .reply(token, at(0), &mut tx, &[7u8; 600])
        .unwrap();
    assert!(frame.len() <= HEADER_LEN + 512);
    down.extend(frame);
    let token = server.held.remove(0);
    let message = format!("no method {long:?}");
    let frame = server
        .conn
        .error(token, at(0), &mut tx, ErrorCode::UNKNOWN_METHOD, &message)
        .unwrap();
    assert!(frame.len() <= HEADER_LEN + 512, "cut to the device's max");
    down.extend(frame);
    let got = raw.open_all(&mut down);
    assert_eq!(
        got[0],
        Message::Error {
            id: 2,
            code: ErrorCode::FAILED,
            message: REPLY_TOO_LARGE
        }
    );
    let Message::Error {
        id: 3,
        code,
        message: cut,
    } = got[1]
    else {
        panic!("{:?}", got[1])
    };
    assert_eq!(code, ErrorCode::UNKNOWN_METHOD);
    assert!(message.starts_with(cut) && cut.len() < message.len());
    // A multi-byte character is never split.
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    server.policy = Policy::Hold;
    server.inbox.extend(raw.seal(&Message::Call {
        id: 1,
        method: "x",
        args: &[],
    }));
    server.run(at(0), &mut down);
    let token = server.held.remove(0);
    let message = "é".repeat(400);
    let frame = server
        .conn
        .error(token, at(0), &mut tx, ErrorCode::FAILED, &message)
        .unwrap();
    down.extend(frame);
    let got = raw.open_all(&mut down);
    let Message::Error { message: cut, .. } = got[0] else {
        panic!()
    };
    assert!(cut.chars().all(|c| c == 'é') && !cut.is_empty());
}

#[test]
fn shutting_down_answers_new_calls_and_lets_running_ones_finish() {
    let (mut raw, mut server) = raw_client_login(ServerConfig::default());
    let mut down = Wire::new();
    server.policy = Policy::Hold;
    server.inbox.extend(raw.seal(&Message::Call {
        id: 1,
        method: "slow",
        args: &[],
    }));
    server.run(at(0), &mut down);
    server.conn.start_shutdown();
    server.inbox.extend(raw.seal(&Message::Call {
        id: 2,
        method: "new",
        args: &[],
    }));
    server.run(at(0), &mut down);
    assert_eq!(server.refused, [(2, ErrorCode::SHUTTING_DOWN)]);
    let frame = server.answer_held(1, at(0), &[1]);
    down.extend(frame);
    assert_eq!(server.conn.answers_owed(), 0);
    server.conn.close(GoodbyeReason::Shutdown);
    server.run(at(0), &mut down);
    assert_eq!(
        raw.open_all(&mut down),
        [
            Message::Error {
                id: 2,
                code: ErrorCode::SHUTTING_DOWN,
                message: "shutting down"
            },
            Message::Reply {
                id: 1,
                result: &[1]
            },
            Message::Goodbye {
                reason: GoodbyeReason::Shutdown
            }
        ]
    );
}

// ------------------------------------------ hostile input, device side

#[test]
fn a_forged_frame_ends_the_device_session_and_it_sends_nothing() {
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    let mut up = Wire::new();
    let mut frame = raw.seal(&Message::Ping { nonce: 1 });
    *frame.last_mut().unwrap() ^= 1;
    device.inbox.extend(frame);
    device.run(at(0), &mut up);
    assert_eq!(
        device.error,
        Some(ConnectionError::Session(SessionError::BadTag))
    );
    assert!(up.is_empty());
    // Its calls fail too: nothing leaves.
    let mut tx = [0u8; 512];
    assert_eq!(
        device
            .conn
            .call::<Echo>(at(0), &"x", Duration::from_secs(1), &mut tx)
            .err(),
        Some(SendError::Closed)
    );
}

#[test]
fn a_reply_to_no_call_is_a_protocol_error_on_the_device_too() {
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    let mut up = Wire::new();
    device.inbox.extend(raw.seal(&Message::Reply {
        id: 999,
        result: &[0],
    }));
    device.run(at(0), &mut up);
    assert_eq!(
        device.error,
        Some(ConnectionError::Protocol(Violation::UnknownReply(999)))
    );
    assert_eq!(
        raw.open_all(&mut up),
        [Message::Goodbye {
            reason: GoodbyeReason::ProtocolError
        }]
    );
}

#[test]
fn the_device_pings_when_idle_and_gives_up_on_a_silent_server() {
    let (mut raw, mut device) = raw_server_login(Welcome512 {
        heartbeat_secs: 10,
        ..Welcome512::default()
    });
    let mut up = Wire::new();
    assert_eq!(device.conn.poll_timeout(), Some(at(10_000)));
    device.conn.handle_timeout(at(10_000));
    device.run(at(10_000), &mut up);
    assert_eq!(raw.open_all(&mut up), [Message::Ping { nonce: 1 }]);
    // The server pings; the device answers with the same nonce.
    device
        .inbox
        .extend(raw.seal(&Message::Ping { nonce: 4242 }));
    device.run(at(12_000), &mut up);
    assert_eq!(raw.open_all(&mut up), [Message::Pong { nonce: 4242 }]);
    // Silent server: a ping per interval of its own silence, then the end
    // at three intervals, without a goodbye.
    let mut pings = 0;
    let mut now = 12_000;
    while device.error.is_none() {
        now = device.conn.poll_timeout().unwrap().as_millis();
        device.conn.handle_timeout(at(now));
        device.run(at(now), &mut up);
        pings += raw
            .open_all(&mut up)
            .iter()
            .filter(|m| matches!(m, Message::Ping { .. }))
            .count();
    }
    assert_eq!(device.error, Some(ConnectionError::IdleTimeout));
    assert_eq!(now, 42_000, "three intervals after the server's last frame");
    assert!(pings >= 2, "{pings} pings");
}

#[test]
fn no_heartbeat_when_the_server_announces_zero() {
    let (_raw, mut device) = raw_server_login(Welcome512 {
        heartbeat_secs: 0,
        ..Welcome512::default()
    });
    assert_eq!(device.conn.poll_timeout(), None);
    device.conn.handle_timeout(at(u64::MAX / 2));
    let mut up = Wire::new();
    device.run(at(u64::MAX / 2), &mut up);
    assert!(up.is_empty() && device.error.is_none());
}

#[test]
fn call_timeouts_abandon_calls_and_their_late_replies_are_dropped() {
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    let mut up = Wire::new();
    let mut tx = [0u8; 512];
    let (late, frame) = device
        .conn
        .call::<Echo>(at(0), &"first", Duration::from_millis(200), &mut tx)
        .unwrap();
    up.extend(frame);
    assert_eq!(device.conn.poll_timeout(), Some(at(200)));
    device.conn.handle_timeout(at(200));
    device.run(at(200), &mut up);
    assert_eq!(device.seen, [Seen::TimedOut { id: late }]);
    assert_eq!(device.conn.calls_in_flight(), 0);
    let (id, frame) = device
        .conn
        .call::<Echo>(at(300), &"second", Duration::from_secs(5), &mut tx)
        .unwrap();
    up.extend(frame);
    raw.open_all(&mut up);
    device.inbox.extend(raw.seal(&Message::Reply {
        id: late,
        result: &enc(&"late"),
    }));
    device.inbox.extend(raw.seal(&Message::Reply {
        id,
        result: &enc(&"second"),
    }));
    device.run(at(400), &mut up);
    assert_eq!(
        device.seen[1..],
        [Seen::Reply {
            id,
            result: enc(&"second")
        }]
    );
    assert!(device.error.is_none());
}

#[test]
fn abandoned_calls_never_hold_the_table_for_ever() {
    // Four slots; the server answers nothing. Each call times out and a new
    // one takes the oldest abandoned slot, again and again.
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    let mut up = Wire::new();
    let mut tx = [0u8; 512];
    let mut now = 0;
    for i in 0..20u32 {
        let r = device
            .conn
            .call::<Echo>(at(now), &"x", Duration::from_millis(10), &mut tx);
        let (id, frame) = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(id, i + 1);
        up.extend(frame);
        now += 10;
        device.conn.handle_timeout(at(now));
        device.run(at(now), &mut up);
    }
    assert_eq!(device.conn.calls_in_flight(), 0);
    raw.open_all(&mut up);
    // Late answers to any of them (in the table or forgotten) are dropped.
    for id in [1, 7, 16, 20] {
        device
            .inbox
            .extend(raw.seal(&Message::Reply { id, result: &[] }));
    }
    device.run(at(now), &mut up);
    assert!(device.error.is_none());
    // Five waiting calls do not fit four slots.
    for _ in 0..4 {
        device
            .conn
            .call::<Echo>(at(now), &"y", Duration::from_secs(60), &mut tx)
            .unwrap();
    }
    assert_eq!(
        device
            .conn
            .call::<Echo>(at(now), &"y", Duration::from_secs(60), &mut tx)
            .err(),
        Some(SendError::TooManyCalls)
    );
    // And an id never issued is still a protocol error.
    device.inbox.extend(raw.seal(&Message::Reply {
        id: 99,
        result: &[],
    }));
    device.run(at(now), &mut up);
    assert_eq!(
        device.error,
        Some(ConnectionError::Protocol(Violation::UnknownReply(99)))
    );
}

#[test]
fn a_call_too_large_for_the_server_is_not_sent_and_costs_no_id() {
    let (_raw, mut device) = raw_server_login(Welcome512::default());
    let mut small = [0u8; 512];
    let big = "x".repeat(600);
    assert!(matches!(
        device
            .conn
            .call::<Echo>(at(0), &big.as_str(), Duration::from_secs(1), &mut small),
        Err(SendError::TooLarge { max }) if max < 512
    ));
    // The server accepts 4096, the buffer is the limit here; a bigger one
    // carries it.
    let mut big_tx = vec![0u8; 2048];
    let (id, frame) = device
        .conn
        .call::<Echo>(at(0), &big.as_str(), Duration::from_secs(1), &mut big_tx)
        .unwrap();
    assert_eq!(id, 1);
    assert!(frame.len() > 600);
    assert!(device.conn.max_args_len("echo") < 4096);
}

#[test]
fn a_server_call_is_answered_before_the_next_is_read_and_a_second_one_meanwhile_is_busy() {
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    device.policy = Policy::Hold;
    let mut up = Wire::new();
    for id in [1, 2] {
        device.inbox.extend(raw.seal(&Message::Call {
            id,
            method: "device_info",
            args: &[],
        }));
    }
    device.run(at(0), &mut up);
    assert_eq!(
        raw.open_all(&mut up),
        [Message::Error {
            id: 2,
            code: ErrorCode::BUSY,
            message: "too many calls in flight"
        }]
    );
    // Typed answer, encoded in place.
    let token = device.held.remove(0);
    let mut tx = [0u8; 512];
    let status = DeviceStatus {
        firmware: "t 1.0",
        uptime_secs: 3,
    };
    let frame = device
        .conn
        .reply_typed::<DeviceInfo>(token, at(0), &mut tx, &status)
        .unwrap();
    up.extend(frame);
    assert_eq!(
        raw.open_all(&mut up),
        [Message::Reply {
            id: 1,
            result: &enc(&status)
        }]
    );
}

#[test]
fn end_of_input_between_frames_and_inside_one() {
    let (_raw, mut device) = raw_server_login(Welcome512::default());
    device.conn.handle_eof();
    assert_eq!(
        device.conn.poll_event(at(0)).err(),
        Some(ConnectionError::Disconnected)
    );
    let (_raw, mut device) = raw_server_login(Welcome512::default());
    let mut wire: Wire = [0u8, 9, 1].into();
    feed(&mut device.conn, &mut wire, usize::MAX);
    device.conn.handle_eof();
    assert_eq!(
        device.conn.poll_event(at(0)).err(),
        Some(ConnectionError::Frame(FrameError::Truncated { missing: 8 }))
    );
}

#[test]
fn byte_by_byte_delivery_changes_nothing() {
    let mut p = Pair::new();
    p.device.chunk = 1;
    p.server.chunk = 1;
    let id = p.device_calls::<Echo>(&"slowly", 5000);
    p.settle();
    assert_eq!(
        p.device.seen,
        [Seen::Reply {
            id,
            result: enc(&"slowly")
        }]
    );
}

#[test]
fn the_last_reply_can_be_had_again_until_the_next_poll_or_input() {
    let (mut raw, mut device) = raw_server_login(Welcome512::default());
    let mut tx = [0u8; 512];
    let (id, _) = device
        .conn
        .call::<Echo>(at(0), &"x", Duration::from_millis(100), &mut tx)
        .unwrap();
    let (late, _) = device
        .conn
        .call::<Echo>(at(0), &"y", Duration::from_millis(50), &mut tx)
        .unwrap();
    let mut wire: Wire = raw
        .seal(&Message::Error {
            id,
            code: ErrorCode::FAILED,
            message: "nope",
        })
        .into();
    feed(&mut device.conn, &mut wire, usize::MAX);
    let Ok(Some(Event::Reply(first))) = device.conn.poll_event(at(0)) else {
        panic!()
    };
    let first = (
        first.id,
        first.result.map(<[u8]>::to_vec).map_err(|e| e.to_string()),
    );
    let again = device.conn.last_reply().unwrap();
    assert_eq!(
        (
            again.id,
            again.result.map(<[u8]>::to_vec).map_err(|e| e.to_string())
        ),
        first
    );
    assert_eq!(
        again.result,
        Err(CallFailure::Remote {
            code: ErrorCode::FAILED,
            message: "nope"
        })
    );
    assert!(device.conn.poll_event(at(0)).unwrap().is_none());
    assert!(device.conn.last_reply().is_none());
    device.conn.handle_timeout(at(50));
    assert!(matches!(
        device.conn.poll_event(at(50)),
        Ok(Some(Event::Reply(r))) if r.id == late && r.result == Err(CallFailure::TimedOut)
    ));
    assert_eq!(
        device.conn.last_reply().map(|r| (r.id, r.result)),
        Some((late, Err(CallFailure::TimedOut)))
    );
    device.conn.commit(0);
    assert!(device.conn.last_reply().is_none());
}
