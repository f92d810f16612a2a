//! tether-core's `ServerHandshake` and `ServerConnection` (the server's
//! connection machine) run in memory, fed raw and fuzzer-chosen bytes by a
//! driver that only moves them, on a manual clock.
//!
//! The server side has two accounts: `user` (the RFC 7677 exchange of
//! docs/PROTOCOL.md: SCRAM-SHA-256, password "pencil") and `sha1user`
//! (SCRAM-SHA-1); every other name gets a decoy. Its application answers
//! `echo` with the arguments, holds `hold` calls (answered by an op
//! below), and answers anything else `unknown_method` with the method's
//! name in the message (long names must be cut to fit).
//!
//! Input: `[mode] rest`.
//! - mode even: `rest` is the client's whole byte stream from the first
//!   byte (hello, SCRAM messages, garbage, cut frames), read in chunks of
//!   `mode / 2 % 8 + 1` bytes times a power of two.
//! - mode odd: a genuine login as `user` (a raw client holding the session
//!   keys, max frame 512 + `mode` * 8, or 1024 with mode & 2 clear; the
//!   login is deterministic, so it runs once per process for each max frame
//!   and every input gets a copy: the inputs go to the session, and the
//!   handshake is fuzzed by the even modes), then records
//!   `[op] [len] payload(len)`:
//!   op % 5 == 0: payload decoded as a `Message` and sealed (valid tag and
//!   sequence), or if it does not decode sent as a body with a bogus tag;
//!   op % 5 == 1: payload written raw;
//!   op % 5 == 2: the clock moves `payload[0]` × 250 ms;
//!   op % 5 == 3: the server calls the device (`echo`, payload as arguments,
//!   1 s timeout), or with op & 8 answers its oldest held call;
//!   op % 5 == 4: the client answers the server's calls (result payload, or
//!   with op & 8 an error), oldest first.
//!
//! Checked beyond "no panic": every frame the server sends decodes (as a
//! `Handshake` before login; a raw stream is never welcomed), fits the
//! client's maximum, opens with the session keys in sequence, and nothing
//! follows a refusal or a goodbye; every call the client makes gets exactly
//! one answer unless the session ends; no answer for a call never made; a
//! server error is final (returned again, nothing sent after its goodbye).
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tether_core::connection::{
    ConnectionError, Decoy, Event, Instant, ReplyToken, ServerConfig, ServerConnection,
    ServerHandshake, ServerStep,
};
use tether_core::frame::{FrameDecoder, encode_message};
use tether_core::message::{self, ErrorCode, Handshake, Hello, Message, Proof};
use tether_core::scram::{
    CachedKeys, ClientConfig, ClientCredentials, ClientLogin, Mechanism, ServerCredentials,
};
use tether_core::session::{Opener, Role, Sealer};
use tether_fuzz::{CLIENT_KEYS, Counter, SERVER_CREDENTIALS};

static SHA1_USER: LazyLock<ServerCredentials> = LazyLock::new(|| {
    let keys = CachedKeys::derive(Mechanism::ScramSha1, "pencil", b"sha1salt", 4096).expect("keys");
    ServerCredentials::from_cached_keys(&keys).expect("sha1")
});

const DECOY: Decoy<'static> = Decoy {
    secret: b"fuzzing secret, 16+ bytes",
    iterations: 4096,
    mechanism: Mechanism::ScramSha256,
};

/// The server's max frame (the smallest allowed): records carry at most 255
/// bytes, and raw bytes can announce any length.
const SERVER_MAX: u16 = 512;
type Server = ServerConnection<Vec<u8>, 4, 4>;

fn lookup(username: &str) -> Option<ServerCredentials> {
    match username {
        "user" => Some(SERVER_CREDENTIALS.clone()),
        "sha1user" => Some(SHA1_USER.clone()),
        _ => None,
    }
}

/// What the server sent: its frames back to back and where each ends (one
/// buffer reused for every frame: an allocation per frame under
/// AddressSanitizer was a large share of an input's time).
#[derive(Default)]
struct Sent {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Sent {
    fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ends.push(self.bytes.len());
    }

    fn frames(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }

    /// The one frame sent, if exactly one was.
    fn only(&self) -> Option<&[u8]> {
        (self.ends.len() == 1).then_some(&self.bytes[..])
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// The server's driver: the handshake, then the connection, with its
/// application; everything it sends lands in `out`.
struct Driver {
    handshake: Option<ServerHandshake<Vec<u8>, 4, 4>>,
    conn: Option<Server>,
    error: Option<ConnectionError>,
    held: Vec<ReplyToken>,
    /// The call being answered, copied out of the machine's buffer (kept
    /// for the next call: no allocation per call).
    method: String,
    args: Vec<u8>,
    now: u64,
    rng: Counter,
    tx: Vec<u8>,
}

impl Driver {
    fn new() -> Self {
        let config = ServerConfig::default()
            .with_max_frame(SERVER_MAX)
            .with_heartbeat_secs(10)
            .with_max_calls_in_flight(3);
        let handshake = ServerHandshake::new(
            vec![0; SERVER_MAX as usize],
            config,
            Instant::from_millis(0),
        )
        .expect("buffer");
        Self::with(Some(handshake), None)
    }

    fn with(handshake: Option<ServerHandshake<Vec<u8>, 4, 4>>, conn: Option<Server>) -> Self {
        Self {
            handshake,
            conn,
            error: None,
            held: Vec::new(),
            method: String::new(),
            args: Vec::new(),
            now: 0,
            rng: Counter(7),
            // The device accepts at most 512 + 255 * 8 bytes.
            tx: vec![0; 2 + 2552],
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// Runs until nothing moves without more input, reading `inbox` in
    /// reads of at most `chunk` bytes.
    fn run(&mut self, inbox: &mut VecDeque<u8>, chunk: usize, out: &mut Sent) {
        loop {
            if self.error.is_some() {
                self.drain(out);
                if let Some(conn) = &mut self.conn {
                    // Final: the same error again, nothing more to send.
                    assert_eq!(
                        conn.poll_event(Instant::from_millis(self.now)).err(),
                        self.error
                    );
                    assert!(
                        conn.poll_transmit(Instant::from_millis(self.now), &mut self.tx)
                            .is_none()
                    );
                }
                return;
            }
            let progressed = if self.conn.is_some() {
                self.step_connection(out)
            } else {
                self.step_handshake(out)
            };
            if progressed {
                continue;
            }
            if self.drain(out) {
                continue;
            }
            if !self.read(inbox, chunk) {
                return;
            }
        }
    }

    /// One poll of the handshake; true if something happened.
    fn step_handshake(&mut self, out: &mut Sent) -> bool {
        let hs = self.handshake.as_mut().expect("handshake");
        match hs.poll() {
            Err(e) => {
                self.error = Some(e);
                true
            }
            Ok(None) => false,
            Ok(Some(ServerStep::Login(req))) => {
                assert!(req.mechanisms.bits() != 0 && req.max_frame >= 512);
                let account = lookup(req.username);
                hs.challenge(account, &DECOY, &mut self.rng)
                    .expect("challenge after a login step");
                true
            }
            Ok(Some(ServerStep::Verified(v))) => {
                assert!(v.username == "user" || v.username == "sha1user");
                let now = Instant::from_millis(self.now);
                let (conn, frame) = hs.welcome(1, now, &mut self.tx).expect("welcome");
                out.push(frame);
                self.conn = Some(conn);
                self.handshake = None;
                true
            }
            Ok(Some(other)) => panic!("{other:?}"),
        }
    }

    /// One poll of the connection, with the application's answers.
    fn step_connection(&mut self, out: &mut Sent) -> bool {
        let now = Instant::from_millis(self.now);
        let conn = self.conn.as_mut().expect("connection");
        let event = match conn.poll_event(now) {
            Err(e) => {
                self.error = Some(e);
                return true;
            }
            Ok(None) => return false,
            Ok(Some(event)) => event,
        };
        match event {
            Event::Call(call) => {
                self.method.clear();
                self.method.push_str(call.method());
                self.args.clear();
                self.args.extend_from_slice(call.args());
                let token = call.into_token();
                let frame = match self.method.as_str() {
                    "echo" => conn.reply(token, now, &mut self.tx, &self.args),
                    "hold" => {
                        self.held.push(token);
                        return true;
                    }
                    _ => conn.error(
                        token,
                        now,
                        &mut self.tx,
                        ErrorCode::UNKNOWN_METHOD,
                        &format!("no method {:?}", self.method),
                    ),
                };
                out.push(frame.expect("an answer always fits"));
            }
            Event::Notify(_) | Event::Reply(_) => {}
            other => panic!("{other:?}"),
        }
        true
    }

    /// Sends what the machine owes; true if anything.
    fn drain(&mut self, out: &mut Sent) -> bool {
        let now = Instant::from_millis(self.now);
        let mut sent = false;
        if let Some(conn) = &mut self.conn {
            while let Some(frame) = conn.poll_transmit(now, &mut self.tx) {
                out.push(frame);
                sent = true;
            }
        } else if let Some(hs) = &mut self.handshake {
            while let Some(frame) = hs.poll_transmit(&mut self.tx) {
                out.push(frame);
                sent = true;
            }
        }
        sent
    }

    /// One read; false when the inbox is empty (or the machine takes no
    /// input).
    fn read(&mut self, inbox: &mut VecDeque<u8>, chunk: usize) -> bool {
        if inbox.is_empty() {
            return false;
        }
        let dest = match (&mut self.conn, &mut self.handshake) {
            (Some(conn), _) => conn.receive_buffer(),
            (None, Some(hs)) => hs.receive_buffer(),
            _ => return false,
        };
        if dest.is_empty() {
            return false;
        }
        let (front, _) = inbox.as_slices();
        let n = dest.len().min(front.len()).min(chunk);
        dest[..n].copy_from_slice(&front[..n]);
        inbox.drain(..n);
        match (&mut self.conn, &mut self.handshake) {
            (Some(conn), _) => conn.commit(n),
            (None, Some(hs)) => hs.commit(n),
            _ => {}
        }
        true
    }

    /// The clock moves on; timers run.
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = Instant::from_millis(self.now);
        if let Some(conn) = &mut self.conn {
            conn.handle_timeout(now);
        } else if let Some(hs) = &mut self.handshake {
            hs.handle_timeout(now);
        }
    }

    /// The stream ended.
    fn eof(&mut self, out: &mut Sent) {
        if let Some(conn) = &mut self.conn {
            conn.handle_eof();
        } else if let Some(hs) = &mut self.handshake {
            hs.handle_eof();
        }
        let mut none = VecDeque::new();
        self.run(&mut none, 1, out);
        assert!(self.error.is_some(), "end of input must end the connection");
    }
}

/// The raw client: it holds the session keys and checks what the server
/// sends.
#[derive(Clone)]
struct Client {
    sealer: Sealer,
    opener: Opener,
    max: usize,
    decoder_buf: Vec<u8>,
    /// Our calls waiting for an answer (true: a `hold` call, which the
    /// server's application answers only when told to).
    asked: BTreeMap<u32, bool>,
    /// The server's calls we have not answered.
    owed: VecDeque<u32>,
    /// A goodbye came: nothing may follow.
    ended: bool,
    /// We sent bytes the server may not frame as we did.
    desynced: bool,
    out: Vec<u8>,
}

impl Client {
    /// Checks and records every frame the server sent.
    fn receive(&mut self, frames: &mut Sent) {
        for frame in frames.frames() {
            let mut decoder = FrameDecoder::new(&mut self.decoder_buf[..], self.max);
            let (used, body) = decoder
                .push(frame)
                .unwrap_or_else(|e| panic!("server sent a bad frame: {e}"));
            assert_eq!(used, frame.len(), "one frame per transmit");
            let body = body.expect("whole frame");
            assert!(!self.ended, "a frame after the server's goodbye");
            let msg = self
                .opener
                .open(body)
                .unwrap_or_else(|e| panic!("server frame does not open: {e}"));
            match msg {
                Message::Reply { id, .. } | Message::Error { id, .. } => {
                    assert!(
                        self.asked.remove(&id).is_some(),
                        "answer to call {id}, not asked or answered twice"
                    );
                }
                Message::Call { id, .. } => self.owed.push_back(id),
                Message::Goodbye { .. } => self.ended = true,
                Message::Ping { .. } => panic!("the server never pings"),
                Message::Notify { .. } | Message::Pong { .. } => {}
            }
        }
        frames.clear();
    }

    /// Seals `msg` onto the server's inbox (not if it is too large for the
    /// server).
    fn seal(&mut self, msg: &Message<'_>, server_max: usize, inbox: &mut VecDeque<u8>) {
        let Ok(frame) = self.sealer.seal(msg, &mut self.out, server_max) else {
            return;
        };
        inbox.extend(frame.iter());
        match msg {
            Message::Call { id, method, .. } => {
                // A duplicate id ends the session; either way one answer.
                self.asked.insert(*id, *method == "hold");
            }
            Message::Reply { id, .. } | Message::Error { id, .. } => {
                self.owed.retain(|o| o != id);
            }
            _ => {}
        }
    }
}

/// A genuine login as `user`; returns the client and the driver, logged in.
fn login(max: u16, out: &mut Sent) -> (Client, Driver) {
    let mut driver = Driver::new();
    let mut rng = Counter(3);
    let login = ClientLogin::<256>::new(
        "user",
        ClientCredentials::Keys(&CLIENT_KEYS),
        ClientConfig::default(),
        &mut rng,
    )
    .expect("client-first");
    let mut wire = [0u8; 512];
    let hello = Handshake::Hello(Hello {
        version: 1,
        mechanisms: login.mechanisms(),
        max_frame: max,
        client_first: login.client_first(),
    });
    let mut inbox: VecDeque<u8> = encode_message(&hello, &mut wire, 512)
        .expect("hello")
        .iter()
        .copied()
        .collect();
    driver.run(&mut inbox, usize::MAX, out);
    let Some(challenge) = out.only() else {
        panic!("a genuine hello gets one challenge: {:02x?}", out.bytes)
    };
    let Ok(Handshake::Challenge(c)) = message::decode::<Handshake>(&challenge[2..]) else {
        panic!("genuine hello not challenged")
    };
    let proof = login
        .handle_challenge(c.mechanism, c.server_first)
        .expect("challenge");
    let msg = Handshake::Proof(Proof {
        client_final: proof.client_final(),
    });
    let mut inbox: VecDeque<u8> = encode_message(&msg, &mut wire, 512)
        .expect("proof")
        .iter()
        .copied()
        .collect();
    out.clear();
    driver.run(&mut inbox, usize::MAX, out);
    let Some(welcome) = out.only() else {
        panic!("a genuine proof gets one welcome")
    };
    let Ok(Handshake::Welcome(w)) = message::decode::<Handshake>(&welcome[2..]) else {
        panic!("genuine proof not welcomed")
    };
    assert_eq!(w.max_frame, SERVER_MAX);
    let done = proof
        .handle_server_final(w.server_final)
        .expect("server signature");
    out.clear();
    let (sealer, opener) = done.session.into_halves(Role::Client);
    let client = Client {
        sealer,
        opener,
        max: max as usize,
        decoder_buf: vec![0; max as usize],
        asked: BTreeMap::new(),
        owed: VecDeque::new(),
        ended: false,
        desynced: false,
        out: vec![0; 2 + SERVER_MAX as usize],
    };
    (client, driver)
}

fn raw_stream(chunk: usize, stream: &[u8]) {
    let mut driver = Driver::new();
    let mut inbox: VecDeque<u8> = stream.iter().copied().collect();
    let mut out = Sent::default();
    driver.run(&mut inbox, chunk, &mut out);
    if driver.error.is_none() {
        driver.eof(&mut out);
    }
    let mut refused = false;
    for frame in out.frames() {
        let len = u16::from_be_bytes([frame[0], frame[1]]) as usize;
        assert!(
            len == frame.len() - 2 && len <= 512,
            "handshake frame of {len}"
        );
        assert!(!refused, "a frame after the refusal");
        match message::decode::<Handshake>(&frame[2..]) {
            Ok(Handshake::Challenge(_)) => {}
            Ok(Handshake::Refused(_)) => refused = true,
            Ok(Handshake::Welcome(_)) => panic!("a raw stream was welcomed"),
            other => panic!("server sent {other:?}"),
        }
    }
    assert!(driver.conn.is_none());
}

/// The logins made so far, by the client's max frame: each is made once
/// and copied for every input that uses it.
static LOGINS: LazyLock<Mutex<BTreeMap<u16, (Client, Server)>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn session(max: u16, mut rest: &[u8]) {
    let mut out = Sent::default();
    let (mut client, conn) = LOGINS
        .lock()
        .expect("logins")
        .entry(max)
        .or_insert_with(|| {
            let (client, driver) = login(max, &mut Sent::default());
            (client, driver.conn.expect("logged in"))
        })
        .clone();
    let mut driver = Driver::with(None, Some(conn));
    let server_max = SERVER_MAX as usize;
    let mut inbox = VecDeque::new();
    while let [op, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (payload, after) = tail.split_at(n);
        rest = after;
        match op % 5 {
            0 => match message::decode::<Message>(payload) {
                Ok(msg) => client.seal(&msg, server_max, &mut inbox),
                Err(_) => {
                    inbox.extend((payload.len() as u16).to_be_bytes());
                    inbox.extend(payload);
                    client.desynced = true;
                }
            },
            1 => {
                inbox.extend(payload);
                client.desynced |= !payload.is_empty();
            }
            2 => driver.advance(u64::from(payload.first().copied().unwrap_or(1)) * 250),
            3 => {
                let now = driver.now();
                if let Some(conn) = &mut driver.conn {
                    if op & 8 != 0 {
                        if !driver.held.is_empty() {
                            let token = driver.held.remove(0);
                            if let Ok(frame) = conn.reply(token, now, &mut driver.tx, payload) {
                                out.push(frame);
                            }
                        }
                    } else if let Ok((_, frame)) =
                        conn.call_with(now, "echo", Duration::from_secs(1), &mut driver.tx, |buf| {
                            let n = payload.len().min(buf.len());
                            buf[..n].copy_from_slice(&payload[..n]);
                            Ok(n)
                        })
                    {
                        out.push(frame);
                    }
                }
            }
            _ => {
                while let Some(id) = client.owed.pop_front() {
                    let msg = if op & 8 == 0 {
                        Message::Reply {
                            id,
                            result: payload,
                        }
                    } else {
                        Message::Error {
                            id,
                            code: ErrorCode::FAILED,
                            message: "fuzz",
                        }
                    };
                    client.seal(&msg, server_max, &mut inbox);
                }
            }
        }
        driver.run(&mut inbox, usize::MAX, &mut out);
        client.receive(&mut out);
    }
    // Every call was answered (but those the application holds), unless
    // the session ended or our stream went out of step with its framing.
    if driver.error.is_none() && !client.desynced && inbox.is_empty() {
        let unanswered: Vec<_> = client.asked.iter().filter(|(_, hold)| !**hold).collect();
        assert!(unanswered.is_empty(), "calls {unanswered:?} never answered");
    }
    driver.eof(&mut out);
    client.receive(&mut out);
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        let chunk = ((mode / 2 % 8) as usize + 1) << (mode / 16);
        raw_stream(chunk, rest);
    } else {
        let max = if mode & 2 != 0 {
            512 + u16::from(*mode) * 8
        } else {
            1024
        };
        session(max, rest);
    }
});
