//! The per-connection session after login: one reader, one writer, calls
//! both ways with several in flight, heartbeat and idle timeout, goodbye.
//!
//! - The writer task owns the socket's write half and the [`Sealer`]: every
//!   outgoing message goes through its queue, so sequence numbers follow the
//!   order of the frames on the wire.
//! - The reader owns the read half and the [`Opener`]. A device's `Call`
//!   runs in its own task (at most [`SessionConfig::max_calls_in_flight`]
//!   at once; more get `BUSY`); a `Reply`/`Error` goes to the [`Mind`] call
//!   waiting for it; a `Ping` is answered with a `Pong`.
//! - Nothing received for three heartbeat intervals ends the session with
//!   `Goodbye { IdleTimeout }`. A frame failing authentication, a replay, a
//!   bad length or an answer to no call ends it at once.
//! - On graceful shutdown, new calls get `SHUTTING_DOWN`, the calls in
//!   flight both ways may finish within the deadline, then the server sends
//!   `Goodbye { Shutdown }`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_core::frame::{FrameError, HEADER_LEN};
use tether_core::message::{ErrorCode, GoodbyeReason, Message};
use tether_core::session::{Opener, Sealer, SessionError};
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, warn};

use crate::metrics::{CallMetrics, CallOutcome, Direction, Metrics, Rejection};
use crate::realm::{Avatar, IncomingCall, Mind, RemoteError, SessionEnd, SessionInfo, lock};
use crate::wire::{FrameReader, ReadError};

/// A message for the writer task.
#[derive(Debug)]
pub(crate) enum Outbound {
    Call {
        id: u32,
        method: String,
        args: Vec<u8>,
    },
    Reply {
        id: u32,
        result: Vec<u8>,
    },
    Error {
        id: u32,
        code: ErrorCode,
        message: String,
    },
    Notify {
        method: String,
        args: Vec<u8>,
    },
    Pong {
        nonce: u32,
    },
    /// Send this goodbye (if any), then close the write side.
    Close(Option<GoodbyeReason>),
}

/// Session limits and timers.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Interval announced to the device; the session ends after three
    /// intervals without a frame (default 30 s).
    pub heartbeat: Duration,
    /// Calls from the device running at once per session (default 32).
    pub max_calls_in_flight: usize,
    /// Default timeout of [`Mind::call`] (default 30 s).
    pub call_timeout: Duration,
    /// How long in-flight calls may take to finish on graceful shutdown
    /// (default 10 s).
    pub shutdown_deadline: Duration,
    /// Outgoing messages queued per session before senders wait (default 64).
    pub outbound_queue: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            max_calls_in_flight: 32,
            call_timeout: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(10),
            outbound_queue: 64,
        }
    }
}

impl SessionConfig {
    /// The heartbeat in whole seconds as sent in the welcome (1..=65535).
    pub fn heartbeat_secs(&self) -> u16 {
        self.heartbeat.as_secs().clamp(1, u16::MAX as u64) as u16
    }

    /// How long a session may stay silent: three heartbeat intervals.
    pub fn idle_timeout(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// A logged-in connection, handed from the login to the session.
pub(crate) struct Established<A> {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub sealer: Sealer,
    pub opener: Opener,
    pub info: SessionInfo,
    pub avatar: Arc<A>,
    pub mind: Mind,
    pub rx: mpsc::Receiver<Outbound>,
    /// Largest frame body the device accepts.
    pub peer_max_frame: usize,
    pub metrics: Metrics,
}

struct Ending {
    end: SessionEnd,
    goodbye: Option<GoodbyeReason>,
}

impl Ending {
    fn new(end: SessionEnd, goodbye: Option<GoodbyeReason>) -> Self {
        Self { end, goodbye }
    }
}

/// Runs a session to its end.
pub(crate) async fn run<A: Avatar>(
    est: Established<A>,
    config: SessionConfig,
    shutdown: CancellationToken,
) -> SessionEnd {
    let Established {
        mut reader,
        writer,
        sealer,
        mut opener,
        info,
        avatar,
        mind,
        rx,
        peer_max_frame,
        metrics,
    } = est;
    let peer = info.peer;
    let span = tracing::info_span!("session", id = info.id, user = %info.user.username, %peer);
    let writer_task =
        tokio::spawn(write_loop(writer, sealer, rx, peer_max_frame, peer).instrument(span.clone()));
    let calls = TaskTracker::new();
    let cancel_calls = CancellationToken::new();
    let shutting_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight: Arc<Mutex<HashSet<u32>>> = Arc::default();

    let attached = tokio::spawn({
        let avatar = avatar.clone();
        async move { avatar.attached().await }.instrument(span.clone())
    });

    let ending = async {
        let ctx = ReadCtx {
            avatar: &avatar,
            mind: &mind,
            calls: &calls,
            cancel_calls: &cancel_calls,
            shutting_down: &shutting_down,
            in_flight: &in_flight,
            config: &config,
            metrics: &metrics,
            from_device: metrics.calls(Direction::FromDevice),
        };
        let reading = read_loop(&mut reader, &mut opener, &ctx);
        tokio::pin!(reading);
        tokio::select! {
            ending = &mut reading => ending,
            _ = mind.shared.close.cancelled() => {
                let reason = mind.close_reason().unwrap_or(GoodbyeReason::Kicked);
                Ending::new(SessionEnd::Kicked(reason), Some(reason))
            }
            _ = shutdown.cancelled() => {
                shutting_down.store(true, std::sync::atomic::Ordering::Release);
                debug!("shutting down: letting calls in flight finish");
                let drain = async {
                    calls.close();
                    calls.wait().await;
                    mind.wait_idle().await;
                };
                tokio::select! {
                    ending = &mut reading => ending,
                    finished = tokio::time::timeout(config.shutdown_deadline, drain) => {
                        if finished.is_err() {
                            warn!("calls still in flight at the shutdown deadline; cancelling them");
                        }
                        Ending::new(SessionEnd::Shutdown, Some(GoodbyeReason::Shutdown))
                    }
                }
            }
        }
    }
    .instrument(span.clone())
    .await;

    // The mind stops working; calls from the device still running are cancelled.
    mind.shut();
    cancel_calls.cancel();
    calls.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), calls.wait()).await;
    let tx = mind.shared.tx.clone();
    let closing = async {
        let _ = tx.send(Outbound::Close(ending.goodbye)).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    let mut writer_task = writer_task;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    if !attached.is_finished() {
        let mut attached = attached;
        if tokio::time::timeout(Duration::from_secs(1), &mut attached)
            .await
            .is_err()
        {
            attached.abort();
        }
    }
    drop(reader);
    let end = ending.end;
    match &end {
        SessionEnd::ProtocolError(e) => {
            warn!(session = info.id, user = %info.user.username, %peer, error = %e, "session closed: protocol error")
        }
        other => {
            debug!(session = info.id, user = %info.user.username, %peer, end = %other, "session ended")
        }
    }
    avatar.detached(end.clone()).instrument(span).await;
    end
}

struct ReadCtx<'a, A> {
    avatar: &'a Arc<A>,
    mind: &'a Mind,
    calls: &'a TaskTracker,
    cancel_calls: &'a CancellationToken,
    shutting_down: &'a Arc<std::sync::atomic::AtomicBool>,
    in_flight: &'a Arc<Mutex<HashSet<u32>>>,
    config: &'a SessionConfig,
    metrics: &'a Metrics,
    from_device: CallMetrics,
}

async fn read_loop<A: Avatar>(
    reader: &mut FrameReader<OwnedReadHalf>,
    opener: &mut Opener,
    ctx: &ReadCtx<'_, A>,
) -> Ending {
    let tx = &ctx.mind.shared.tx;
    loop {
        let body = match tokio::time::timeout(ctx.config.idle_timeout(), reader.next()).await {
            Err(_) => {
                return Ending::new(SessionEnd::IdleTimeout, Some(GoodbyeReason::IdleTimeout));
            }
            Ok(Err(ReadError::Closed)) => return Ending::new(SessionEnd::Closed, None),
            Ok(Err(ReadError::Frame(e))) => {
                ctx.metrics.rejected(Rejection::BadFrame);
                return Ending::new(
                    SessionEnd::ProtocolError(format!("bad frame: {e}")),
                    Some(GoodbyeReason::ProtocolError),
                );
            }
            Ok(Err(e @ (ReadError::Truncated | ReadError::Io(_)))) => {
                return Ending::new(SessionEnd::Io(e.to_string()), None);
            }
            Ok(Ok(body)) => body,
        };
        let msg = match opener.open(body) {
            Ok(msg) => msg,
            Err(e) => {
                ctx.metrics.rejected(match e {
                    SessionError::BadTag => Rejection::BadTag,
                    SessionError::Replayed { .. } => Rejection::Replayed,
                    SessionError::OutOfOrder { .. } => Rejection::OutOfOrder,
                    SessionError::TooShort { .. } => Rejection::TooShort,
                    _ => Rejection::Undecodable,
                });
                let reason = match e {
                    SessionError::BadTag
                    | SessionError::Replayed { .. }
                    | SessionError::OutOfOrder { .. }
                    | SessionError::TooShort { .. } => GoodbyeReason::BadTag,
                    _ => GoodbyeReason::ProtocolError,
                };
                return Ending::new(SessionEnd::ProtocolError(e.to_string()), Some(reason));
            }
        };
        match msg {
            Message::Call { id, method, args } => {
                ctx.mind
                    .shared
                    .calls_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if ctx.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                    ctx.from_device
                        .record(CallOutcome::Rejected, Duration::ZERO);
                    let _ = tx
                        .send(Outbound::Error {
                            id,
                            code: ErrorCode::SHUTTING_DOWN,
                            message: "server is shutting down".into(),
                        })
                        .await;
                    continue;
                }
                let admitted = {
                    let mut set = lock(ctx.in_flight);
                    if set.contains(&id) {
                        None
                    } else if set.len() >= ctx.config.max_calls_in_flight {
                        Some(false)
                    } else {
                        set.insert(id);
                        Some(true)
                    }
                };
                match admitted {
                    None => {
                        ctx.metrics.rejected(Rejection::DuplicateCall);
                        return Ending::new(
                            SessionEnd::ProtocolError(format!("call id {id} already in flight")),
                            Some(GoodbyeReason::ProtocolError),
                        );
                    }
                    Some(false) => {
                        ctx.from_device
                            .record(CallOutcome::Rejected, Duration::ZERO);
                        let _ = tx
                            .send(Outbound::Error {
                                id,
                                code: ErrorCode::BUSY,
                                message: "too many calls in flight".into(),
                            })
                            .await;
                        continue;
                    }
                    Some(true) => {}
                }
                let call = IncomingCall {
                    id,
                    method: method.to_string(),
                    args: args.to_vec(),
                };
                let avatar = ctx.avatar.clone();
                let in_flight = ctx.in_flight.clone();
                let cancel = ctx.cancel_calls.clone();
                let tx = tx.clone();
                let recorded = ctx.from_device.clone();
                ctx.calls.spawn(
                    async move {
                        let started = Instant::now();
                        let method = call.method.clone();
                        // Its own task, so that a panicking handler answers
                        // FAILED instead of leaving the call unanswered.
                        let mut handler =
                            tokio::spawn(async move { avatar.call(call).await }.in_current_span());
                        let result = tokio::select! {
                            r = &mut handler => r.unwrap_or_else(|e| {
                                warn!(id, %method, error = %e, "call handler failed");
                                Err(RemoteError::failed("internal error"))
                            }),
                            _ = cancel.cancelled() => {
                                handler.abort();
                                recorded.record(CallOutcome::Closed, started.elapsed());
                                return;
                            }
                        };
                        recorded.record(
                            if result.is_ok() {
                                CallOutcome::Ok
                            } else {
                                CallOutcome::Error
                            },
                            started.elapsed(),
                        );
                        lock(&in_flight).remove(&id);
                        let out = match result {
                            Ok(result) => Outbound::Reply { id, result },
                            Err(RemoteError { code, message }) => {
                                debug!(id, %method, %code, "call failed");
                                Outbound::Error { id, code, message }
                            }
                        };
                        let _ = tx.send(out).await;
                    }
                    .in_current_span(),
                );
            }
            Message::Reply { id, result } => {
                if !ctx.mind.resolve(id, Ok(result.to_vec())) {
                    ctx.metrics.rejected(Rejection::UnknownReply);
                    return Ending::new(
                        SessionEnd::ProtocolError(format!("reply to call {id}, not in flight")),
                        Some(GoodbyeReason::ProtocolError),
                    );
                }
            }
            Message::Error { id, code, message } => {
                let err = RemoteError::new(code, message);
                if !ctx.mind.resolve(id, Err(err)) {
                    ctx.metrics.rejected(Rejection::UnknownReply);
                    return Ending::new(
                        SessionEnd::ProtocolError(format!("error for call {id}, not in flight")),
                        Some(GoodbyeReason::ProtocolError),
                    );
                }
            }
            Message::Notify { method, args } => {
                let avatar = ctx.avatar.clone();
                let (method, args) = (method.to_string(), args.to_vec());
                let cancel = ctx.cancel_calls.clone();
                ctx.calls.spawn(
                    async move {
                        tokio::select! {
                            _ = avatar.notify(method, args) => {}
                            _ = cancel.cancelled() => {}
                        }
                    }
                    .in_current_span(),
                );
            }
            Message::Ping { nonce } => {
                let _ = tx.send(Outbound::Pong { nonce }).await;
            }
            Message::Pong { .. } => {}
            Message::Goodbye { reason } => {
                debug!(%reason, "device said goodbye");
                return Ending::new(SessionEnd::Goodbye(reason), None);
            }
        }
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut sealer: Sealer,
    mut rx: mpsc::Receiver<Outbound>,
    peer_max: usize,
    peer: SocketAddr,
) {
    let mut buf = vec![0u8; HEADER_LEN + peer_max];
    while let Some(out) = rx.recv().await {
        let (msg, last) = match &out {
            Outbound::Call { id, method, args } => (
                Message::Call {
                    id: *id,
                    method,
                    args,
                },
                false,
            ),
            Outbound::Reply { id, result } => (Message::Reply { id: *id, result }, false),
            Outbound::Error { id, code, message } => (
                Message::Error {
                    id: *id,
                    code: *code,
                    message,
                },
                false,
            ),
            Outbound::Notify { method, args } => (Message::Notify { method, args }, false),
            Outbound::Pong { nonce } => (Message::Pong { nonce: *nonce }, false),
            Outbound::Close(Some(reason)) => (Message::Goodbye { reason: *reason }, true),
            Outbound::Close(None) => break,
        };
        let frame = match sealer.seal(&msg, &mut buf, peer_max) {
            Ok(frame) => frame,
            Err(SessionError::Frame(
                FrameError::TooLong { .. } | FrameError::BufferTooSmall { .. },
            )) => {
                let Message::Reply { id, .. } = msg else {
                    warn!(%peer, "message too large for the device's max frame; dropped");
                    continue;
                };
                let error = Message::Error {
                    id,
                    code: ErrorCode::FAILED,
                    message: "reply larger than the device's max frame",
                };
                match sealer.seal(&error, &mut buf, peer_max) {
                    Ok(frame) => frame,
                    Err(e) => {
                        warn!(%peer, error = %e, "cannot seal error reply");
                        break;
                    }
                }
            }
            Err(e) => {
                warn!(%peer, error = %e, "cannot seal message; closing");
                break;
            }
        };
        if let Err(e) = writer.write_all(frame).await {
            debug!(%peer, error = %e, "write failed");
            return;
        }
        if last {
            break;
        }
    }
    let _ = writer.shutdown().await;
}
