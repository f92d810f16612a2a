//! A small Tether server built from tether-core primitives (plain tokio, no
//! tether-server), scripted by each test.
#![allow(dead_code)]

use std::time::Duration;

use tether_core::django;
use tether_core::frame::{self, encode_message};
use tether_core::message::{
    self, Challenge, GoodbyeReason, Handshake, Message, Refusal, RefusalCode, Welcome,
};
use tether_core::method::Method as _;
use tether_core::method::builtin::Echo;
use tether_core::scram::{Mechanism, ServerCredentials, ServerLogin};
use tether_core::session::{Opener, Role, Sealer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// alice / wonderland at 4096 iterations (tether-core's doc example row).
pub const ALICE_ROW: &str =
    "pbkdf2_sha256$4096$W8ZxHXvUYrZMB2ce3tJeqs$Gf7trYHHXjQXenT0TXmV2mr2SsIdi492WLVThfHnB/k=";
pub const ALICE_PASSWORD: &str = "wonderland";

/// Deterministic, standing in for a device's TRNG.
pub use tether_test_support::TestRng;

pub use tether_test_support::Msg;

/// How the test server behaves during the handshake.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A real server with this row.
    Honest,
    /// Does not know the verifier: skips the check and sends a made-up
    /// server signature.
    Impostor,
    /// Refuses the hello.
    Refuse(Refusal),
}

/// One server-side connection.
pub struct Peer {
    pub stream: TcpStream,
    wire: Vec<u8>,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
}

impl Peer {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            wire: vec![0; 70_000],
            sealer: None,
            opener: None,
        }
    }

    /// One frame body, or None at EOF.
    pub async fn read_body(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 2];
        if self.stream.read_exact(&mut header).await.is_err() {
            return None;
        }
        let len = frame::parse_header(header, u16::MAX as usize).expect("frame header");
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    pub async fn send_handshake(&mut self, msg: &Handshake<'_>) {
        let f = encode_message(msg, &mut self.wire, 512).expect("encode");
        let n = f.len();
        self.stream.write_all(&self.wire[..n]).await.expect("write");
    }

    /// Sends a session message.
    pub async fn send(&mut self, msg: &Message<'_>) {
        let f = self
            .sealer
            .as_mut()
            .expect("logged in")
            .seal(msg, &mut self.wire, 65535)
            .expect("seal");
        let n = f.len();
        self.stream.write_all(&self.wire[..n]).await.expect("write");
    }

    /// Sends raw frame bytes (for forged frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Seals a message into a frame without sending it.
    pub fn seal_frame(&mut self, msg: &Message<'_>) -> Vec<u8> {
        self.sealer
            .as_mut()
            .expect("logged in")
            .seal(msg, &mut self.wire, 65535)
            .expect("seal")
            .to_vec()
    }

    /// The frame of an `echo` call of `text` from the server.
    pub fn echo_call_frame(&mut self, id: u32, text: &str) -> Vec<u8> {
        self.seal_frame(&Message::Call {
            id,
            method: Echo::NAME,
            args: &enc(&text),
        })
    }

    /// Calls the device's `echo` with `text`.
    pub async fn call_echo(&mut self, id: u32, text: &str) {
        let frame = self.echo_call_frame(id, text);
        self.send_raw(&frame).await;
    }

    /// Asserts that the next message answers `echo` call `id` with `text`.
    pub async fn expect_echo_reply(&mut self, id: u32, text: &str) {
        assert_eq!(
            self.recv().await,
            Some(Msg::Reply {
                id,
                result: enc(&text)
            })
        );
    }

    /// Says goodbye `Shutdown`, as most scripted servers end.
    pub async fn say_shutdown(&mut self) {
        self.send(&Message::Goodbye {
            reason: GoodbyeReason::Shutdown,
        })
        .await;
    }

    /// The next session message, or None at EOF.
    pub async fn recv(&mut self) -> Option<Msg> {
        let body = self.read_body().await?;
        let msg = self
            .opener
            .as_mut()
            .expect("logged in")
            .open(&body)
            .expect("authentic frame");
        Some(msg.into())
    }

    /// The next message that is not a ping (pings are answered).
    pub async fn recv_no_ping(&mut self) -> Option<Msg> {
        loop {
            match self.recv().await? {
                Msg::Ping { nonce } => self.send(&Message::Pong { nonce }).await,
                m => return Some(m),
            }
        }
    }

    /// Whether the client closed the connection (EOF) within `t`, sending
    /// nothing more.
    pub async fn eof_within(&mut self, t: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(t, self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Session parameters the test server announces.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub heartbeat_secs: u16,
    pub max_frame: u16,
    pub session_id: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            heartbeat_secs: 30,
            max_frame: 512,
            session_id: 77,
        }
    }
}

/// Runs the server side of the handshake on `stream` for `username` with
/// `row`. Returns the logged-in peer, or the refusal it sent.
pub async fn server_login(
    stream: TcpStream,
    username: &str,
    row: &str,
    mode: Mode,
    params: Params,
) -> Result<Peer, RefusalCode> {
    let mut peer = Peer::new(stream);
    let mut rng = TestRng(0xfeed);
    let body = peer.read_body().await.expect("hello");
    let Handshake::Hello(hello) = message::decode(&body).expect("handshake") else {
        panic!("expected hello")
    };
    assert_eq!(hello.version, message::PROTOCOL_VERSION);
    assert!(hello.max_frame >= 512);
    if let Mode::Refuse(r) = mode {
        peer.send_handshake(&Handshake::Refused(r)).await;
        return Err(r.code);
    }
    let login = ServerLogin::<512>::new(hello.client_first).expect("client-first");
    let creds = if login.username() == username {
        django::credentials(row).expect("row")
    } else {
        ServerCredentials::decoy(Mechanism::ScramSha256, b"secret", login.username(), 4096)
    };
    let login = login.challenge(&creds, &mut rng).expect("challenge");
    peer.send_handshake(&Handshake::Challenge(Challenge {
        mechanism: creds.mechanism,
        server_first: login.server_first(),
    }))
    .await;
    let Some(body) = peer.read_body().await else {
        return Err(RefusalCode::Protocol); // the client gave up
    };
    let Handshake::Proof(proof) = message::decode(&body).expect("handshake") else {
        panic!("expected proof")
    };
    let refuse = |code| {
        Handshake::Refused(Refusal {
            code,
            retry_after_secs: 0,
        })
    };
    let (server_final, session) = match mode {
        Mode::Impostor => (
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_string(),
            None,
        ),
        _ => match login.verify(proof.client_final) {
            Ok(done) => (done.server_final().to_string(), Some(done.session)),
            Err(_) => {
                peer.send_handshake(&refuse(RefusalCode::Unauthorized))
                    .await;
                return Err(RefusalCode::Unauthorized);
            }
        },
    };
    peer.send_handshake(&Handshake::Welcome(Welcome {
        server_final: &server_final,
        session_id: params.session_id,
        max_frame: params.max_frame,
        heartbeat_secs: params.heartbeat_secs,
    }))
    .await;
    if let Some(session) = session {
        let (sealer, opener) = session.into_halves(Role::Server);
        peer.sealer = Some(sealer);
        peer.opener = Some(opener);
    }
    Ok(peer)
}

/// A listener on an ephemeral loopback port.
pub async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// postcard-encodes a value (test convenience).
pub fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = message::encode(v, &mut buf).unwrap().len();
    buf.truncate(n);
    buf
}
