//! A client built directly on tether-core, for what tether-firmware's client
//! cannot do by design: 64 calls in flight on one session (the device client
//! keeps at most `MAX_CALLS_IN_FLIGHT` = 4, in a fixed table). Same
//! protocol, same SCRAM login with cached keys, same session tags; it only
//! writes several calls per syscall when several slots are free.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_core::frame::{HEADER_LEN, MIN_MAX_FRAME, encode_message, parse_header};
use tether_core::message::{self, Handshake, Hello, Message, PROTOCOL_VERSION, Proof};
use tether_core::method::{self, builtin::Echo};
use tether_core::scram::{CachedKeys, ClientConfig, ClientCredentials, ClientLogin};
use tether_core::session::{Opener, Role, Sealer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{Window, rng};
use crate::load::{ARG, Throughput};

/// The largest frame this client accepts.
const MAX_FRAME: u16 = 4096;

pub struct RawSession {
    stream: TcpStream,
    sealer: Sealer,
    opener: Opener,
    peer_max: usize,
}

pub(crate) async fn read_frame(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let len = parse_header(header, buf.len()).map_err(|e| format!("frame: {e}"))?;
    s.read_exact(&mut buf[..len])
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(len)
}

pub(crate) async fn send_handshake(s: &mut TcpStream, msg: &Handshake<'_>) -> Result<(), String> {
    let mut buf = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
    let frame = encode_message(msg, &mut buf, MIN_MAX_FRAME as usize)
        .map_err(|e| format!("encode: {e}"))?;
    s.write_all(frame).await.map_err(|e| format!("write: {e}"))
}

/// Logs in with cached keys (tether-core's SCRAM client).
pub async fn login(addr: SocketAddr, user: &str, keys: &CachedKeys) -> Result<RawSession, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rng = rng();
    let login = ClientLogin::<256>::new(
        user,
        ClientCredentials::Keys(keys),
        ClientConfig::default(),
        &mut rng,
    )
    .map_err(|e| format!("scram: {e}"))?;
    let hello = Handshake::Hello(Hello {
        version: PROTOCOL_VERSION,
        mechanisms: login.mechanisms(),
        max_frame: MAX_FRAME,
        client_first: login.client_first(),
    });
    send_handshake(&mut s, &hello).await?;
    let mut buf = vec![0u8; MIN_MAX_FRAME as usize];
    let n = read_frame(&mut s, &mut buf).await?;
    let proof = match message::decode::<Handshake>(&buf[..n]).map_err(|e| e.to_string())? {
        Handshake::Challenge(c) => login
            .handle_challenge(c.mechanism, c.server_first)
            .map_err(|e| format!("scram: {e}"))?,
        other => return Err(format!("expected a challenge, got {other:?}")),
    };
    send_handshake(
        &mut s,
        &Handshake::Proof(Proof {
            client_final: proof.client_final(),
        }),
    )
    .await?;
    let n = read_frame(&mut s, &mut buf).await?;
    let welcome = match message::decode::<Handshake>(&buf[..n]).map_err(|e| e.to_string())? {
        Handshake::Welcome(w) => w,
        other => return Err(format!("expected a welcome, got {other:?}")),
    };
    let done = proof
        .handle_server_final(welcome.server_final)
        .map_err(|e| format!("scram: {e}"))?;
    let (sealer, opener) = done.session.into_halves(Role::Client);
    Ok(RawSession {
        stream: s,
        sealer,
        opener,
        peer_max: welcome.max_frame as usize,
    })
}

/// Received bytes, read in large chunks and cut into frames where they lie:
/// one read syscall brings many frames, none is copied out.
struct Inbox {
    buf: Vec<u8>,
    /// The next frame's first byte.
    start: usize,
    /// End of the bytes received.
    end: usize,
}

impl Inbox {
    fn new() -> Self {
        Self {
            buf: vec![0u8; 256 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Reads what has arrived (at least one byte) after the frames taken;
    /// `late` is the error when nothing comes by `deadline`.
    async fn fill(
        &mut self,
        stream: &mut TcpStream,
        deadline: Instant,
        late: &str,
    ) -> Result<(), String> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = stream.read(&mut self.buf[self.end..]);
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => Err(late.to_string()),
            Ok(Ok(0)) => Err("server closed the session".into()),
            Ok(Ok(n)) => {
                self.end += n;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("read: {e}")),
        }
    }

    /// The next whole frame's body, if one has arrived.
    fn next_frame(&mut self) -> Result<Option<&[u8]>, String> {
        let (start, end) = (self.start, self.end);
        if end - start < HEADER_LEN {
            return Ok(None);
        }
        let len = parse_header([self.buf[start], self.buf[start + 1]], MAX_FRAME as usize)
            .map_err(|e| format!("frame: {e}"))?;
        if end - start < HEADER_LEN + len {
            return Ok(None);
        }
        self.start += HEADER_LEN + len;
        Ok(Some(
            &self.buf[start + HEADER_LEN..start + HEADER_LEN + len],
        ))
    }
}

/// `echo` calls with `in_flight` always outstanding until the window
/// closes; then waits for the last replies and says goodbye. One task:
/// whenever replies free slots, the next calls are sealed into one buffer
/// and written with one syscall.
pub async fn pipelined(
    session: RawSession,
    in_flight: usize,
    window: Window,
) -> Result<Throughput, String> {
    let RawSession {
        mut stream,
        mut sealer,
        mut opener,
        peer_max,
    } = session;
    let mut args = [0u8; 64];
    let args_len = method::encode_args::<Echo>(&ARG, &mut args)
        .map_err(|e| e.to_string())?
        .len();
    let mut out = Vec::with_capacity(in_flight * 128);
    let mut frame = vec![0u8; HEADER_LEN + peer_max];
    let mut inbox = Inbox::new();
    let mut id: u32 = 0;
    let mut outstanding = 0usize;
    let mut counted = 0usize;
    let mut errors = 0usize;
    let mut first_error = None;
    let deadline = window.stop + Duration::from_secs(30);
    // With one call in flight, the latency of each.
    let mut samples = crate::common::Samples::default();
    let mut sent_at = Instant::now();
    loop {
        if outstanding < in_flight && Instant::now() < window.stop {
            sent_at = Instant::now();
            out.clear();
            while outstanding < in_flight {
                id = id.wrapping_add(1).max(1);
                let call = Message::Call {
                    id,
                    method: "echo",
                    args: &args[..args_len],
                };
                let f = sealer
                    .seal(&call, &mut frame, peer_max)
                    .map_err(|e| format!("seal: {e}"))?;
                out.extend_from_slice(f);
                outstanding += 1;
            }
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        if outstanding == 0 {
            break;
        }
        inbox
            .fill(&mut stream, deadline, "replies stopped coming")
            .await?;
        let mut done = 0;
        while let Some(body) = inbox.next_frame()? {
            match opener.open(body).map_err(|e| format!("open: {e}"))? {
                Message::Reply { .. } => done += 1,
                Message::Error { code, message, .. } => {
                    done += 1;
                    errors += 1;
                    first_error.get_or_insert(format!("server answered {code}: {message}"));
                }
                Message::Ping { .. } | Message::Pong { .. } => {}
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        outstanding -= done;
        let now = Instant::now();
        if now >= window.start && now <= window.stop {
            counted += done;
            if in_flight == 1 && done == 1 {
                samples.push(now - sent_at);
            }
        }
    }
    let bye = Message::Goodbye {
        reason: tether_core::message::GoodbyeReason::Normal,
    };
    if let Ok(f) = sealer.seal(&bye, &mut frame, peer_max) {
        let _ = stream.write_all(f).await;
    }
    let mut out = if samples.0.is_empty() {
        Throughput::from_count(counted, window.secs())
    } else {
        Throughput::from_samples(samples, window.secs())
    };
    out.errors = errors;
    out.first_error = first_error;
    Ok(out)
}

/// The device side of the server-to-device stage, on tether-core alone:
/// calls the server's `bench_s2d` and answers the `echo` calls the server
/// then makes, until `bench_s2d`'s reply arrives. Every read is answered
/// with one write (all the replies it holds sealed into one buffer), so
/// the device costs one read and one write syscall per batch and the stage
/// measures the server rather than tether-firmware's one-reply-per-write
/// client.
pub async fn answer_s2d(
    session: RawSession,
    args: &crate::libserver::S2dArgs,
    deadline: Instant,
) -> Result<crate::libserver::S2dStats, String> {
    use crate::libserver::S2d;
    let RawSession {
        mut stream,
        mut sealer,
        mut opener,
        peer_max,
    } = session;
    let mut frame = vec![0u8; HEADER_LEN + peer_max];
    let mut encoded = [0u8; 64];
    let encoded_len = method::encode_args::<S2d>(args, &mut encoded)
        .map_err(|e| e.to_string())?
        .len();
    const BENCH_ID: u32 = 1;
    let call = Message::Call {
        id: BENCH_ID,
        method: <S2d as method::Method>::NAME,
        args: &encoded[..encoded_len],
    };
    let f = sealer
        .seal(&call, &mut frame, peer_max)
        .map_err(|e| format!("seal: {e}"))?;
    stream
        .write_all(f)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::with_capacity(64 * 128);
    let mut inbox = Inbox::new();
    loop {
        inbox
            .fill(&mut stream, deadline, "bench_s2d did not answer in time")
            .await?;
        out.clear();
        let mut stats = None;
        while let Some(body) = inbox.next_frame()? {
            let answer = match opener.open(body).map_err(|e| format!("open: {e}"))? {
                Message::Call {
                    id,
                    method: "echo",
                    args,
                } => Some(Message::Reply { id, result: args }),
                Message::Call { id, .. } => Some(Message::Error {
                    id,
                    code: tether_core::message::ErrorCode::UNKNOWN_METHOD,
                    message: "",
                }),
                Message::Ping { nonce } => Some(Message::Pong { nonce }),
                Message::Reply {
                    id: BENCH_ID,
                    result,
                } => {
                    stats = Some(
                        method::decode_reply::<S2d>(result)
                            .map_err(|e| format!("bench_s2d's reply: {e}"))?,
                    );
                    None
                }
                Message::Pong { .. } => None,
                other => return Err(format!("unexpected {other:?}")),
            };
            if let Some(answer) = answer {
                let f = sealer
                    .seal(&answer, &mut frame, peer_max)
                    .map_err(|e| format!("seal: {e}"))?;
                out.extend_from_slice(f);
            }
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        if let Some(stats) = stats {
            let bye = Message::Goodbye {
                reason: tether_core::message::GoodbyeReason::Normal,
            };
            if let Ok(f) = sealer.seal(&bye, &mut frame, peer_max) {
                let _ = stream.write_all(f).await;
            }
            return Ok(stats);
        }
    }
}
