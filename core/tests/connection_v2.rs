//! Protocol v2 in tether-core's connection machines (docs/PROTOCOL.md,
//! "Protocol version 2"): a real [`ClientHandshakeV2`] and a real
//! [`ServerHandshake`] (made with `new_v2`) exchanging bytes in memory,
//! and the attacks of issue 15: a relay running Noise with both ends, a
//! flipped bit anywhere, replays, a wrong pinned key.

mod common;

use std::sync::LazyLock;
use std::time::Duration;

use common::TestRng;
use tether_core::connection::{
    ClientConfig, ClientConnection, ClientHandshakeV2, ConnectionError, Decoy, Event, Instant,
    KeyUsed, RefusalCause, ServerConfig, ServerConnection, ServerHandshake, ServerKeys, ServerStep,
};
use tether_core::frame::HEADER_LEN;
use tether_core::message::{self, Handshake, Hello, RefusalCode};
use tether_core::method::builtin::Echo;
use tether_core::noise::{Initiator, Pattern, Responder, StaticKeypair, TAG_LEN, Transport};
use tether_core::scram::{
    CachedKeys, ClientCredentials, Mechanism, Mechanisms, ScramError, ServerCredentials,
};
use tether_core::session::SessionError;

static ALICE: LazyLock<ServerCredentials> = LazyLock::new(common::credentials);
static ALICE_KEYS: LazyLock<CachedKeys> = LazyLock::new(|| {
    CachedKeys::derive(Mechanism::ScramSha256, "pw", &ALICE.salt, ALICE.iterations).unwrap()
});
static SERVER_KEY: LazyLock<StaticKeypair> =
    LazyLock::new(|| StaticKeypair::generate(&mut TestRng(42)));
static OLD_KEY: LazyLock<StaticKeypair> =
    LazyLock::new(|| StaticKeypair::generate(&mut TestRng(41)));

const DECOY: Decoy<'static> = Decoy {
    secret: b"a server secret of 16+ bytes",
    iterations: 4096,
    mechanism: Mechanism::ScramSha256,
};

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn keys() -> ServerKeys {
    ServerKeys {
        current: Some(SERVER_KEY.clone()),
        previous: Some(OLD_KEY.clone()),
        require_encryption: false,
    }
}

fn leak(len: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; len].into_boxed_slice())
}

fn device(pin: Option<&[u8; 32]>, seed: u64) -> ClientHandshakeV2<'static, 'static> {
    ClientHandshakeV2::new(
        leak(1024),
        "alice",
        ClientCredentials::Keys(&ALICE_KEYS),
        pin,
        &ClientConfig::default(),
        &mut TestRng(seed),
    )
    .unwrap()
}

fn server(keys: ServerKeys, seed: u64) -> ServerHandshake<Vec<u8>, 4, 2> {
    ServerHandshake::new_v2(
        vec![0; 4096],
        ServerConfig::default(),
        at(0),
        keys,
        &mut TestRng(seed),
    )
    .unwrap()
}

/// Every frame that crossed the wire, in order, with its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    Up(Vec<u8>),
    Down(Vec<u8>),
}

/// How a login ended.
struct Outcome {
    established: Option<(ClientConnection<'static>, ServerConnection<Vec<u8>, 4, 2>)>,
    client_error: Option<ConnectionError>,
    server_error: Option<ConnectionError>,
    frames: Vec<Frame>,
    key_used: Option<KeyUsed>,
    pattern: Option<Pattern>,
}

/// Runs a login; `tamper` may change (or drop: empty) each frame on its way.
fn login(
    mut client: ClientHandshakeV2<'static, 'static>,
    mut server: ServerHandshake<Vec<u8>, 4, 2>,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> Outcome {
    let mut rng = TestRng(7);
    let mut tx = vec![0u8; 1024];
    let mut out = Outcome {
        established: None,
        client_error: None,
        server_error: None,
        frames: Vec::new(),
        key_used: None,
        pattern: None,
    };
    let mut server_conn = None;
    let mut n = 0;
    let mut deliver = |frame: &[u8], into: &mut dyn FnMut(&mut [u8]) -> usize| {
        let mut f = frame.to_vec();
        tamper(n, &mut f);
        n += 1;
        let mut rest = &mut f[..];
        while !rest.is_empty() {
            let used = into(rest);
            if used == 0 {
                break;
            }
            rest = &mut rest[used..];
        }
        f
    };
    for _ in 0..10 {
        while let Some(frame) = client.poll_transmit(at(0), &mut tx) {
            let f = deliver(frame, &mut |bytes| push(&mut server, bytes));
            out.frames.push(Frame::Up(f));
        }
        if out.server_error.is_none() && server_conn.is_none() {
            loop {
                match server.poll() {
                    Ok(Some(ServerStep::Login(req))) => {
                        assert_eq!(req.username, "alice");
                        server
                            .challenge(Some(ALICE.clone()), &DECOY, &mut rng)
                            .unwrap();
                    }
                    Ok(Some(ServerStep::Verified(_))) => {
                        out.key_used = server.key_used();
                        out.pattern = server.noise_pattern();
                        assert_eq!(server.protocol_version(), 2);
                        let (conn, frame) = server.welcome(7, at(0), &mut tx).unwrap();
                        let f = deliver(frame, &mut |bytes| push(&mut client, bytes));
                        out.frames.push(Frame::Down(f));
                        server_conn = Some(conn);
                        break;
                    }
                    Ok(Some(other)) => panic!("{other:?}"),
                    Ok(None) => {}
                    Err(e) => out.server_error = Some(e),
                }
                let mut sent = false;
                while let Some(frame) = server.poll_transmit(&mut tx) {
                    let f = deliver(frame, &mut |bytes| push(&mut client, bytes));
                    out.frames.push(Frame::Down(f));
                    sent = true;
                }
                if !sent || out.server_error.is_some() {
                    break;
                }
            }
        }
        match client.poll(at(0)) {
            Ok(Some(est)) => {
                out.established = Some((est.connection, server_conn.take().unwrap()));
                return out;
            }
            Ok(None) => {}
            Err(e) => {
                out.client_error = Some(e);
                return out;
            }
        }
        if out.server_error.is_some() && out.frames.len() > 20 {
            break;
        }
    }
    out
}

/// Something the tests feed bytes into.
trait Input {
    fn receive_buffer(&mut self) -> &mut [u8];
    fn commit(&mut self, n: usize);
}
impl Input for tether_core::connection::ClientHandshake<'_, '_> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}
impl Input for ClientHandshakeV2<'_, '_> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}
impl Input for ServerHandshake<Vec<u8>, 4, 2> {
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}
impl<B: AsRef<[u8]> + AsMut<[u8]>, const C: usize, const A: usize> Input
    for tether_core::connection::Connection<B, C, A>
{
    fn receive_buffer(&mut self) -> &mut [u8] {
        self.receive_buffer()
    }
    fn commit(&mut self, n: usize) {
        self.commit(n)
    }
}

/// Moves as much of `bytes` into `m` as it asks for; returns how much.
fn push(m: &mut impl Input, bytes: &[u8]) -> usize {
    let mut used = 0;
    while used < bytes.len() {
        let dest = m.receive_buffer();
        if dest.is_empty() {
            break;
        }
        let n = dest.len().min(bytes.len() - used);
        dest[..n].copy_from_slice(&bytes[used..used + n]);
        m.commit(n);
        used += n;
    }
    used
}

/// The device calls Echo and the server answers; then the server calls
/// Echo on the device. Returns the frames of the calls.
fn calls_both_ways(
    client: &mut ClientConnection<'static>,
    server: &mut ServerConnection<Vec<u8>, 4, 2>,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut tx = vec![0u8; 1024];
    let (id, frame) = client
        .call::<Echo>(
            at(1),
            &"the device's secret argument",
            Duration::from_secs(5),
            &mut tx,
        )
        .unwrap();
    frames.push(Frame::Up(frame.to_vec()));
    assert_eq!(push(server, frame), frame.len());
    let Some(Event::Call(call)) = server.poll_event(at(1)).unwrap() else {
        panic!("the server gets the call")
    };
    assert_eq!(call.method(), "echo");
    let args = call.args().to_vec();
    let token = call.into_token();
    let frame = server.reply(token, at(1), &mut tx, &args).unwrap();
    frames.push(Frame::Down(frame.to_vec()));
    assert_eq!(push(client, frame), frame.len());
    match client.poll_event(at(1)).unwrap() {
        Some(Event::Reply(r)) => {
            assert_eq!(r.id, id);
            let reply: &str = postcard::from_bytes(r.result.unwrap()).unwrap();
            assert_eq!(reply, "the device's secret argument");
        }
        other => panic!("{other:?}"),
    }
    let (_, frame) = server
        .call::<Echo>(
            at(2),
            &"the server's secret argument",
            Duration::from_secs(5),
            &mut tx,
        )
        .unwrap();
    frames.push(Frame::Down(frame.to_vec()));
    assert_eq!(push(client, frame), frame.len());
    let Some(Event::Call(call)) = client.poll_event(at(2)).unwrap() else {
        panic!("the device gets the call")
    };
    let args = call.args().to_vec();
    let token = call.into_token();
    let frame = client.reply(token, at(2), &mut tx, &args).unwrap();
    frames.push(Frame::Up(frame.to_vec()));
    assert_eq!(push(server, frame), frame.len());
    assert!(matches!(
        server.poll_event(at(2)).unwrap(),
        Some(Event::Reply(_))
    ));
    frames
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn bytes(frames: &[Frame]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| match f {
            Frame::Up(b) | Frame::Down(b) => b.clone(),
        })
        .collect()
}

#[test]
fn nk_login_then_calls_and_nothing_readable_on_the_wire() {
    let mut o = login(
        device(Some(SERVER_KEY.public()), 1),
        server(keys(), 2),
        |_, _| {},
    );
    let (mut client, mut server) = o.established.take().expect("logged in over NK");
    assert_eq!(o.pattern, Some(Pattern::Nk));
    assert_eq!(o.key_used, Some(KeyUsed::Current));
    // NK: frame 1, message 2 (the challenge), sealed proof, sealed welcome.
    assert_eq!(o.frames.len(), 4, "{:?}", o.frames);
    assert_eq!(&o.frames[0], &Frame::Up(o.frames_up(0)));
    let mut frames = o.frames.clone();
    frames.extend(calls_both_ways(&mut client, &mut server));
    let wire = bytes(&frames);
    for secret in [
        &b"alice"[..],
        b"n=alice",
        b"echo",
        b"secret argument",
        b"tether-noise",
        b"r=",
    ] {
        assert!(
            !contains(&wire, secret),
            "{:?} is on the wire",
            String::from_utf8_lossy(secret)
        );
    }
    assert_eq!(client.session_id(), 7);
}

impl Outcome {
    fn frames_up(&self, i: usize) -> Vec<u8> {
        match &self.frames[i] {
            Frame::Up(b) => b.clone(),
            Frame::Down(_) => panic!("frame {i} went down"),
        }
    }
}

#[test]
fn nn_login_then_calls_and_nothing_readable_on_the_wire() {
    let mut o = login(device(None, 3), server(keys(), 4), |_, _| {});
    let (mut client, mut server) = o.established.take().expect("logged in over NN");
    assert_eq!(o.pattern, Some(Pattern::Nn));
    assert_eq!(o.key_used, None);
    // NN: frame 1 (e), message 2 (e, ee), then hello, challenge, proof,
    // welcome, all sealed.
    assert_eq!(o.frames.len(), 6, "{:?}", o.frames);
    let Frame::Up(f1) = &o.frames[0] else {
        panic!()
    };
    assert_eq!(f1.len(), HEADER_LEN + 2 + 32);
    assert_eq!(&f1[2..4], &[2, 0]);
    let Frame::Down(f2) = &o.frames[1] else {
        panic!()
    };
    assert_eq!(f2.len(), HEADER_LEN + 32 + TAG_LEN);
    let mut frames = o.frames.clone();
    frames.extend(calls_both_ways(&mut client, &mut server));
    let wire = bytes(&frames);
    for secret in [&b"alice"[..], b"echo", b"secret argument", b"tether-noise"] {
        assert!(!contains(&wire, secret));
    }
}

#[test]
fn a_device_on_the_previous_key_logs_in_and_is_counted() {
    let mut o = login(
        device(Some(OLD_KEY.public()), 5),
        server(keys(), 6),
        |_, _| {},
    );
    assert!(o.established.take().is_some());
    assert_eq!(o.key_used, Some(KeyUsed::Previous));
}

#[test]
fn a_wrong_pinned_key_is_refused_in_the_clear_and_the_device_stops() {
    let stranger = StaticKeypair::generate(&mut TestRng(99));
    let o = login(
        device(Some(stranger.public()), 7),
        server(keys(), 8),
        |_, _| {},
    );
    assert!(o.established.is_none());
    assert_eq!(
        o.server_error,
        Some(ConnectionError::Rejected {
            code: RefusalCode::UnknownKey,
            cause: RefusalCause::Noise(tether_core::noise::NoiseError::Decrypt),
        })
    );
    match o.client_error {
        Some(ConnectionError::Refused(r)) => assert_eq!(r.code, RefusalCode::UnknownKey),
        other => panic!("{other:?}"),
    }
    // Frame 1 and the clear refusal: nothing else was sent.
    assert_eq!(o.frames.len(), 2);
}

#[test]
fn a_device_refuses_a_server_that_does_not_hold_the_pinned_key() {
    // The impostor holds a key of its own and answers as an NK responder
    // would; the device pinned the real server's key.
    let impostor = StaticKeypair::generate(&mut TestRng(98));
    let mut client = device(Some(SERVER_KEY.public()), 9);
    let mut tx = vec![0u8; 1024];
    let f1 = client.poll_transmit(at(0), &mut tx).unwrap().to_vec();
    let mut m1 = f1[HEADER_LEN + 2..].to_vec();
    let prologue = prologue(1);
    // It cannot even read message 1.
    assert!(
        Responder::nk(&prologue, &impostor)
            .read_message(&mut m1)
            .is_err()
    );
    // Whatever it answers as message 2 (here: a genuine NK message 2 of a
    // session of its own) fails at the device, which sends nothing more.
    let (own, mut m1b) = {
        let (st, m) = Initiator::nk(&prologue, impostor.public())
            .write_message(b"x", &mut tx, &mut TestRng(1))
            .unwrap();
        (st, m.to_vec())
    };
    drop(own);
    let (resp, _) = Responder::nk(&prologue, &impostor)
        .read_message(&mut m1b)
        .unwrap();
    let (_, m2) = resp
        .write_message(&challenge_bytes(), &mut tx, &mut TestRng(2))
        .unwrap();
    let mut f2 = (m2.len() as u16).to_be_bytes().to_vec();
    f2.extend_from_slice(m2);
    push(&mut client, &f2);
    assert_eq!(
        client.poll(at(0)).unwrap_err(),
        ConnectionError::Noise(tether_core::noise::NoiseError::Decrypt)
    );
    assert!(client.poll_transmit(at(0), &mut tx).is_none());
}

fn challenge_bytes() -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = message::encode(
        &Handshake::Challenge(tether_core::message::Challenge {
            mechanism: Mechanism::ScramSha256,
            server_first: "r=abc,s=c2FsdA==,i=4096",
        }),
        &mut buf,
    )
    .unwrap()
    .len();
    buf.truncate(n);
    buf
}

fn prologue(pattern: u8) -> Vec<u8> {
    [&b"tether/2"[..], &[2, pattern]].concat()
}

#[test]
fn a_v1_device_still_logs_in_unless_encryption_is_required() {
    use tether_core::connection::ClientHandshake;
    let run = |keys: ServerKeys| {
        let mut client = ClientHandshake::<'static, 'static, 4>::new(
            leak(512),
            "alice",
            ClientCredentials::Keys(&ALICE_KEYS),
            &ClientConfig::default(),
            &mut TestRng(11),
        )
        .unwrap();
        let mut server = server(keys, 12);
        let mut tx = vec![0u8; 1024];
        let mut rng = TestRng(13);
        for _ in 0..4 {
            while let Some(f) = client.poll_transmit(at(0), &mut tx) {
                push(&mut server, f);
            }
            match server.poll() {
                Ok(Some(ServerStep::Login(_))) => {
                    server
                        .challenge(Some(ALICE.clone()), &DECOY, &mut rng)
                        .unwrap();
                }
                Ok(Some(ServerStep::Verified(_))) => {
                    assert_eq!(server.protocol_version(), 1);
                    let (_, f) = server.welcome(1, at(0), &mut tx).unwrap();
                    push(&mut client, f);
                }
                Ok(_) => {}
                Err(e) => {
                    while let Some(f) = server.poll_transmit(&mut tx) {
                        push(&mut client, f);
                    }
                    return (Err(e), client.poll(at(0)).map(|e| e.is_some()));
                }
            }
            while let Some(f) = server.poll_transmit(&mut tx) {
                push(&mut client, f);
            }
            if let Some(_est) = client.poll(at(0)).unwrap() {
                return (Ok(()), Ok(true));
            }
        }
        panic!("no end")
    };
    assert_eq!(run(keys()), (Ok(()), Ok(true)));
    let strict = ServerKeys {
        require_encryption: true,
        ..keys()
    };
    let (server_end, client_end) = run(strict);
    assert_eq!(
        server_end,
        Err(ConnectionError::Rejected {
            code: RefusalCode::Version,
            cause: RefusalCause::EncryptionRequired
        })
    );
    match client_end {
        Err(ConnectionError::Refused(r)) => assert_eq!(r.code, RefusalCode::Version),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------ attacks

/// A relay: Noise NN with the device as responder and, separately, with
/// the server as initiator; it decrypts every frame from one side and
/// re-encrypts it for the other, relaying SCRAM verbatim.
#[test]
fn a_relay_running_noise_with_both_ends_is_refused() {
    let mut client = device(None, 21);
    let mut server = server(keys(), 22);
    let mut tx = vec![0u8; 1024];
    let mut rng = TestRng(23);

    // Device -> relay: frame 1; the relay answers as the server would.
    let f1 = client.poll_transmit(at(0), &mut tx).unwrap().to_vec();
    let mut m1 = f1[HEADER_LEN + 2..].to_vec();
    let (resp, _) = Responder::nn(&prologue(0)).read_message(&mut m1).unwrap();
    let (mut to_device, m2) = resp.write_message(b"", &mut tx, &mut rng).unwrap();
    let mut f2 = (m2.len() as u16).to_be_bytes().to_vec();
    f2.extend_from_slice(m2);
    push(&mut client, &f2);
    assert!(client.poll(at(0)).unwrap().is_none());

    // Relay -> server: its own NN session.
    let (init, m1) = Initiator::nn(&prologue(0))
        .write_message(b"", &mut tx, &mut rng)
        .unwrap();
    let mut f1 = vec![0, (m1.len() + 2) as u8, 2, 0];
    f1.extend_from_slice(m1);
    push(&mut server, &f1);
    assert!(server.poll().unwrap().is_none());
    let m2 = server.poll_transmit(&mut tx).unwrap()[HEADER_LEN..].to_vec();
    let (mut to_server, _) = init.read_message(&mut m2.clone()).unwrap();
    assert_ne!(to_device.handshake_hash(), to_server.handshake_hash());

    // Relays sealed frames verbatim (after re-sealing) until someone stops.
    let mut refused = None;
    for _ in 0..4 {
        while let Some(f) = client.poll_transmit(at(0), &mut tx) {
            let plain = open(&mut to_device, f);
            push(&mut server, &seal(&mut to_server, &plain));
        }
        loop {
            match server.poll() {
                Ok(Some(ServerStep::Login(_))) => {
                    server
                        .challenge(Some(ALICE.clone()), &DECOY, &mut rng)
                        .unwrap();
                }
                Ok(Some(_)) => panic!("the relay logged in"),
                Ok(None) => break,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        while let Some(f) = server.poll_transmit(&mut tx) {
            let plain = open(&mut to_server, f);
            push(&mut client, &seal(&mut to_device, &plain));
        }
        if refused.is_some() {
            break;
        }
        assert!(client.poll(at(0)).unwrap().is_none());
    }
    assert_eq!(
        refused,
        Some(ConnectionError::Rejected {
            code: RefusalCode::Unauthorized,
            cause: RefusalCause::Scram(ScramError::ChannelBindingMismatch),
        })
    );
    // The device hears `unauthorized` (relayed) and logs nothing in.
    match client.poll(at(0)) {
        Err(ConnectionError::Refused(r)) => assert_eq!(r.code, RefusalCode::Unauthorized),
        other => panic!("{other:?}"),
    }
}

/// Opens a sealed v2 frame (seq || ciphertext || tag) with `t`.
fn open(t: &mut Transport, frame: &[u8]) -> Vec<u8> {
    let body = &frame[HEADER_LEN..];
    let seq = u64::from_be_bytes(body[..8].try_into().unwrap());
    let mut sealed = body[8..].to_vec();
    t.recv.set_nonce(seq);
    t.recv.decrypt_with_ad(&[], &mut sealed).unwrap().to_vec()
}

/// Seals `plain` as the next v2 frame with `t`.
fn seal(t: &mut Transport, plain: &[u8]) -> Vec<u8> {
    let seq = t.send.nonce();
    let mut body = seq.to_be_bytes().to_vec();
    let mut sealed = plain.to_vec();
    sealed.resize(plain.len() + TAG_LEN, 0);
    t.send
        .encrypt_with_ad(&[], &mut sealed, plain.len())
        .unwrap();
    body.extend_from_slice(&sealed);
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_flipped_bit_anywhere_in_the_login_fails_it() {
    for pin in [Some(SERVER_KEY.public()), None] {
        let reference = login(device(pin, 31), server(keys(), 32), |_, _| {});
        assert!(reference.established.is_some());
        let lens: Vec<usize> = reference
            .frames
            .iter()
            .map(|f| match f {
                Frame::Up(b) | Frame::Down(b) => b.len(),
            })
            .collect();
        for (i, &len) in lens.iter().enumerate() {
            // Every byte after the length prefix (a changed prefix is a
            // framing error, tested in connection.rs), one bit each.
            for byte in HEADER_LEN..len {
                let bit = 1u8 << (byte % 8);
                let o = login(device(pin, 31), server(keys(), 32), |n, f| {
                    if n == i {
                        f[byte] ^= bit;
                    }
                });
                assert!(
                    o.established.is_none(),
                    "{pin:?}: frame {i} byte {byte} flipped, yet logged in"
                );
                assert!(o.client_error.is_some() || o.server_error.is_some());
            }
        }
    }
}

#[test]
fn a_flipped_bit_in_a_session_frame_ends_the_session() {
    // Logins with the same seeds are the same: the same call frame, each
    // time with one byte changed, goes to a fresh copy of the session.
    let session = || {
        let mut o = login(
            device(Some(SERVER_KEY.public()), 41),
            server(keys(), 42),
            |_, _| {},
        );
        o.established.take().unwrap()
    };
    let (mut client, _) = session();
    let mut tx = vec![0u8; 512];
    let (_, frame) = client
        .call::<Echo>(at(1), &"x", Duration::from_secs(5), &mut tx)
        .unwrap();
    let frame = frame.to_vec();
    for byte in HEADER_LEN..frame.len() {
        let (_, mut server) = session();
        let mut f = frame.clone();
        f[byte] ^= 1 << (byte % 8);
        push(&mut server, &f);
        let e = server.poll_event(at(1)).unwrap_err();
        assert!(
            matches!(e, ConnectionError::Session(SessionError::BadTag)),
            "byte {byte}: {e:?}"
        );
    }
    let (_, mut server) = session();
    push(&mut server, &frame);
    assert!(matches!(server.poll_event(at(1)), Ok(Some(Event::Call(_)))));
}

#[test]
fn replays_fail_in_the_session_and_across_sessions() {
    let mut o = login(
        device(Some(SERVER_KEY.public()), 51),
        server(keys(), 52),
        |_, _| {},
    );
    let (mut client, mut server) = o.established.take().unwrap();
    let mut tx = vec![0u8; 512];
    let (_, frame) = client
        .call::<Echo>(at(1), &"x", Duration::from_secs(5), &mut tx)
        .unwrap();
    let frame = frame.to_vec();
    push(&mut server, &frame);
    let Some(Event::Call(call)) = server.poll_event(at(1)).unwrap() else {
        panic!()
    };
    let _ = call.into_token();
    // The same frame again: authentic, but its seq was used.
    push(&mut server, &frame);
    assert_eq!(
        server.poll_event(at(1)).unwrap_err(),
        ConnectionError::Session(SessionError::Replayed {
            seq: 1,
            expected: 2
        })
    );

    // A recorded login played to a new server: its frame 1 is read (it is
    // encrypted to the server's static key only), but the server's fresh
    // ephemeral key gives other session keys: the recorded proof fails.
    let Frame::Up(f1) = &o.frames[0] else {
        panic!()
    };
    let Frame::Up(proof) = &o.frames[2] else {
        panic!()
    };
    let mut fresh = server_v2(53);
    push(&mut fresh, f1);
    assert!(matches!(fresh.poll(), Ok(Some(ServerStep::Login(_)))));
    fresh
        .challenge(Some(ALICE.clone()), &DECOY, &mut TestRng(54))
        .unwrap();
    assert!(fresh.poll_transmit(&mut tx).is_some());
    push(&mut fresh, proof);
    assert!(matches!(
        fresh.poll(),
        Err(ConnectionError::Rejected {
            code: RefusalCode::Protocol,
            cause: RefusalCause::Noise(tether_core::noise::NoiseError::Decrypt)
        })
    ));
}

fn server_v2(seed: u64) -> ServerHandshake<Vec<u8>, 4, 2> {
    server(keys(), seed)
}

#[test]
fn a_v2_server_refuses_an_unbound_hello_inside_noise() {
    // A client that runs NK but sends v1's GS2 header (no binding).
    let mut tx = vec![0u8; 1024];
    let mut hello = vec![0u8; 256];
    let n = message::encode(
        &Handshake::Hello(Hello {
            version: 2,
            mechanisms: Mechanisms::from_bits(1),
            max_frame: 512,
            client_first: "n,,n=alice,r=abcdefgh",
        }),
        &mut hello,
    )
    .unwrap()
    .len();
    let (_, m1) = Initiator::nk(&prologue(1), SERVER_KEY.public())
        .write_message(&hello[..n], &mut tx, &mut TestRng(61))
        .unwrap();
    let mut f1 = ((m1.len() + 2) as u16).to_be_bytes().to_vec();
    f1.extend_from_slice(&[2, 1]);
    f1.extend_from_slice(m1);
    let mut s = server_v2(62);
    push(&mut s, &f1);
    assert_eq!(
        s.poll().unwrap_err(),
        ConnectionError::Rejected {
            code: RefusalCode::Protocol,
            cause: RefusalCause::Scram(ScramError::ChannelBindingUnsupported)
        }
    );
    // The refusal goes in NK's message 2, encrypted: not a clear body.
    let f2 = s.poll_transmit(&mut tx).unwrap();
    assert!(f2.len() >= HEADER_LEN + 32 + TAG_LEN);
}

#[test]
fn a_forged_clear_refusal_stops_the_device_without_fallback() {
    // An attacker answers frame 1 with a clear `version` refusal, hoping
    // the device retries in v1 (readable) or NN: it stops, sends nothing.
    for pin in [Some(SERVER_KEY.public()), None] {
        let mut client = device(pin, 71);
        let mut tx = vec![0u8; 1024];
        assert!(client.poll_transmit(at(0), &mut tx).is_some());
        push(&mut client, &[0, 3, 4, 4, 0]);
        match client.poll(at(0)) {
            Err(ConnectionError::Refused(r)) => assert_eq!(r.code, RefusalCode::Version),
            other => panic!("{other:?}"),
        }
        assert!(client.poll_transmit(at(0), &mut tx).is_none());
        assert_eq!(client.poll(at(0)).unwrap_err(), ConnectionError::Ended);
    }
}

#[test]
fn a_recorded_session_stays_secret_when_every_long_term_secret_leaks() {
    // Record an NK login and calls.
    let mut o = login(
        device(Some(SERVER_KEY.public()), 81),
        server(keys(), 82),
        |_, _| {},
    );
    let (mut client, mut server) = o.established.take().unwrap();
    let mut frames = o.frames.clone();
    frames.extend(calls_both_ways(&mut client, &mut server));

    // Later the server's private key, the row and the password all leak.
    // Frame 1 is encrypted to the static key only: it is read (the hello:
    // username, nonce), as v2.6 says.
    let Frame::Up(f1) = &frames[0] else { panic!() };
    let mut m1 = f1[HEADER_LEN + 2..].to_vec();
    let (attacker, hello) = Responder::nk(&prologue(1), &SERVER_KEY)
        .read_message(&mut m1)
        .expect("frame 1 is readable with the server's private key");
    assert!(contains(hello, b"n=alice"));
    // Message 2 needs an ephemeral private key (`ee`), which no one kept:
    // an attacker answering with its own gets other keys, under which
    // not one recorded frame after frame 1 opens.
    let mut tx = vec![0u8; 1024];
    let (mut keys, _) = attacker
        .write_message(b"", &mut tx, &mut TestRng(83))
        .unwrap();
    for (i, f) in frames.iter().enumerate().skip(1) {
        let (body, cipher) = match f {
            Frame::Up(b) => (b, &mut keys.recv),
            Frame::Down(b) => (b, &mut keys.send),
        };
        let body = &body[HEADER_LEN..];
        if i == 1 {
            // Message 2 itself: e || ciphertext; its payload does not open.
            let mut sealed = body[32..].to_vec();
            cipher.set_nonce(0);
            assert!(cipher.decrypt_with_ad(&[], &mut sealed).is_err());
            continue;
        }
        let seq = u64::from_be_bytes(body[..8].try_into().unwrap());
        let mut sealed = body[8..].to_vec();
        cipher.set_nonce(seq);
        assert!(
            cipher.decrypt_with_ad(&[], &mut sealed).is_err(),
            "frame {i} opened"
        );
    }
}
