//! The login: tether-server's driver of tether-core's
//! [`ServerHandshake`], which owns the order of the handshake and every
//! refusal the hello or the proof decides (docs/CONNECTION.md). This file
//! moves its bytes and makes the server's own decisions where the machine
//! pauses: throttles, limits, the database lookup, the decoy's shape, the
//! realm.
//!
//!
//! 1. Read the hello (frames of at most 512 bytes until the welcome).
//! 2. Refuse, in this order: `version` (other protocol version), `protocol`
//!    (undecodable or unexpected frame, bad client-first-message),
//!    `unsupported` (the hello offers no mechanism this server runs),
//!    `throttled` (the username or address is blocked), `busy` (too many
//!    handshakes or sessions), `unavailable` (the lookup failed or timed
//!    out). None of these depends on the account.
//! 3. Challenge with the account's verifier or a decoy of the same shape
//!    ([`crate::decoy`]): unknown, inactive or unauthorised users, rows
//!    whose hash cannot do SCRAM and rows needing a mechanism the client did
//!    not offer get a decoy; their proof fails like a wrong password.
//! 4. Verify the proof: failure is `unauthorized` and counts towards the
//!    throttle; success makes the avatar, then sends the welcome.
//!
//! Every refusal is the last frame; the connection then closes. Refusals are
//! logged with the peer address and username; never a password, proof, key
//! or hash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tether_core::connection::{
    self, ConnectionError, Growable, RefusalCause, ServerHandshake, ServerStep, Violation,
};
use tether_core::frame::{HEADER_LEN, MIN_MAX_FRAME};
use tether_core::message::{GoodbyeReason, RefusalCode};
use tether_core::scram::Mechanisms;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::admission::Ticket;
use crate::decoy;
use crate::default_realm::SessionEntry;
use crate::lease::RxStorage;
use crate::log_limit::Noisy;
use crate::metrics::{Direction, Metrics, Rejection};
use crate::realm::{Avatar as _, CredentialDigest, Mind, Realm, SessionEnd, SessionInfo, User};
use crate::server::{ServerConfig, SessionSlot, Shared};
use crate::session::{ANSWERS, CALLS, Established, clock};
use crate::stream::Stream;
use crate::untrusted::Untrusted;

/// How a handshake ended without a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginEnd {
    /// Refused with this code (already sent and logged).
    Refused(RefusalCode),
    /// The peer went away or the socket failed.
    Closed,
    /// No hello within the hello timeout.
    NoHello,
    /// Silent, the connection gave its slot to a newcomer.
    Evicted,
}

type Handshake = ServerHandshake<RxStorage, CALLS, ANSWERS, Growable>;

/// A refusal being sent, boxed: its future holds the connection, an output
/// frame and the drain's buffer (10.9 KiB), and inline it would make every
/// login's future that much larger, moved and copied with it (the
/// handshake's future: 20.6 KiB with refusals inline, 6.2 KiB without).
type Refusal<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = LoginEnd> + Send + 'a>>;

/// Where the machine paused, owned (the handshake is borrowed no longer).
enum Step {
    /// The hello is in: look the username up.
    Login {
        username: String,
        mechanisms: Mechanisms,
        max_frame: u16,
    },
    /// The proof is good.
    Verified,
}

/// The handshake and its socket.
struct Conn {
    hs: Handshake,
    stream: Stream,
    peer: SocketAddr,
    metrics: Metrics,
    /// The session place this login holds once it asked for one: given
    /// back before a refusal is written, so that a device retrying at once
    /// does not find it still taken.
    slot: Option<SessionSlot>,
}

impl Conn {
    /// Moves bytes until the machine pauses ([`Step`]) or fails (the
    /// refusal it owes, if any, is still to be sent).
    async fn step(&mut self) -> Result<Step, ConnectionError> {
        let mut out = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
        loop {
            match self.hs.poll()? {
                Some(ServerStep::Login(req)) => {
                    return Ok(Step::Login {
                        username: req.username.to_owned(),
                        mechanisms: req.mechanisms,
                        max_frame: req.max_frame,
                    });
                }
                Some(ServerStep::Verified(_)) => return Ok(Step::Verified),
                Some(_) | None => {}
            }
            if let Some(frame) = self.hs.poll_transmit(&mut out) {
                if self.stream.write_all(frame).await.is_err() || self.stream.flush().await.is_err()
                {
                    return Err(ConnectionError::Disconnected);
                }
                continue;
            }
            match self.stream.read(self.hs.receive_buffer()).await {
                Ok(0) | Err(_) => return Err(self.hs.handle_eof()),
                Ok(n) => self.hs.commit(n),
            }
        }
    }

    /// The end of a failed step: the machine's refusal is sent (and
    /// logged with `reason`, the code's name unless given), or the peer
    /// went away.
    fn failed<'a>(
        self,
        e: ConnectionError,
        username: Option<&'a str>,
        reason: Option<&'static str>,
        detail: &'a str,
    ) -> Refusal<'a> {
        Box::pin(async move {
            match e {
                ConnectionError::Rejected { code, cause } => {
                    if let Some(r) = rejection(cause) {
                        self.metrics.rejected(r);
                    }
                    let detail = if detail.is_empty() {
                        cause.to_string()
                    } else {
                        detail.to_string()
                    };
                    let reason = reason.unwrap_or(code.as_str());
                    self.send_refusal(code, username, reason, &detail).await
                }
                e => {
                    debug!(peer = %self.peer, error = %e, "closed during the handshake");
                    LoginEnd::Closed
                }
            }
        })
    }

    /// Refuses the login with the driver's own `code`; the log line's
    /// `reason` is the code's name.
    fn refuse<'a>(
        mut self,
        code: RefusalCode,
        retry_after: Duration,
        username: Option<&'a str>,
        detail: &'a str,
    ) -> Refusal<'a> {
        Box::pin(async move {
            let secs = retry_after.as_secs_f64().ceil().clamp(0.0, u16::MAX as f64) as u16;
            if self.hs.refuse(code, secs).is_err() {
                return LoginEnd::Closed;
            }
            self.send_refusal(code, username, code.as_str(), detail)
                .await
        })
    }

    /// Logs the refusal the machine owes, sends it, closes our side and
    /// lets the peer read it.
    async fn send_refusal(
        mut self,
        code: RefusalCode,
        username: Option<&str>,
        reason: &'static str,
        detail: &str,
    ) -> LoginEnd {
        self.slot = None;
        let user = Untrusted(username.unwrap_or("-"));
        let detail = Untrusted(detail);
        if self.metrics.log_limit().allow(Noisy::LoginRefused) {
            match code {
                RefusalCode::Unavailable => {
                    warn!(peer = %self.peer, %user, code = %code, %reason, %detail, "login refused")
                }
                _ => {
                    info!(peer = %self.peer, %user, code = %code, %reason, %detail, "login refused")
                }
            }
        }
        let mut out = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
        if let Some(frame) = self.hs.poll_transmit(&mut out)
            && self.stream.write_all(frame).await.is_ok()
            && self.stream.flush().await.is_ok()
        {
            let _ = self.stream.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), drain(&mut self.stream)).await;
        }
        LoginEnd::Refused(code)
    }
}

/// Reads and discards input until the peer closes or 64 KiB went by: so
/// that closing does not reset the connection before the peer read the
/// refusal.
async fn drain(stream: &mut Stream) {
    let mut buf = [0u8; 1024];
    let mut seen = 0;
    while seen < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen += n,
        }
    }
}

/// The metric counting a refusal the machine decided.
fn rejection(cause: RefusalCause) -> Option<Rejection> {
    match cause {
        RefusalCause::Frame(_) => Some(Rejection::HandshakeBadFrame),
        RefusalCause::Violation(Violation::UnexpectedMessage) => {
            Some(Rejection::HandshakeUnexpected)
        }
        RefusalCause::Violation(Violation::Undecodable(_)) => Some(Rejection::HandshakeUndecodable),
        _ => None,
    }
}

/// Runs one login. `ticket` is its place among the handshakes (held until
/// the login ends); `busy` is the reason to refuse it `busy` when it got no
/// slot (admission.rs).
pub(crate) async fn handshake<R: Realm>(
    shared: &Arc<Shared<R>>,
    stream: Stream,
    peer: SocketAddr,
    ticket: Ticket,
    busy: Option<&'static str>,
    config: &ServerConfig,
) -> Result<(Box<Established<R::Avatar>>, SessionSlot), LoginEnd> {
    let max_frame = config.max_frame.max(MIN_MAX_FRAME);
    let machine = connection::ServerConfig::default()
        .with_max_frame(max_frame)
        .with_heartbeat_secs(config.session.heartbeat_secs())
        .with_handshake_timeout(config.handshake_timeout)
        .with_max_calls_in_flight(config.session.max_calls_in_flight);
    let rx = RxStorage::new(max_frame.into());
    // Made in place: a local of its own would keep a second copy of the
    // machine's space in the login's future.
    let mut conn = Conn {
        hs: match shared.noise.get() {
            // Protocol v2 beside v1 (the first byte tells them apart).
            Some(keys) => Handshake::new_v2(rx, machine, clock::now(), keys, &mut rand::rng()),
            None => Handshake::new(rx, machine, clock::now()),
        }
        .map_err(|_| LoginEnd::Closed)?,
        stream,
        peer,
        metrics: shared.metrics.clone(),
        slot: None,
    };
    let zero = Duration::ZERO;

    // 1. Hello, within the hello timeout; a silent connection may lose its
    // slot to a newcomer meanwhile. The machine refuses what the hello
    // alone decides.
    let first = tokio::select! {
        r = tokio::time::timeout(config.hello_timeout, conn.step()) => r,
        _ = ticket.evicted.cancelled() => return Err(LoginEnd::Evicted),
    };
    let Ok(first) = first else {
        return Err(LoginEnd::NoHello);
    };
    ticket.hello_received();
    let (typed, offered, client_max_frame) = match first {
        Ok(Step::Login {
            username,
            mechanisms,
            max_frame,
        }) => (username, mechanisms, usize::from(max_frame)),
        Ok(Step::Verified) => return Err(LoginEnd::Closed),
        Err(e) => return Err(conn.failed(e, None, None, "").await),
    };
    let user = Some(typed.as_str());

    // 2. Throttle, limits, lookup.
    // Charged now, given back unless the proof is refused (throttle.rs).
    let attempt = match shared.throttle.begin(&typed, peer.ip()) {
        Ok(attempt) => attempt,
        Err(wait) => {
            return Err(conn
                .refuse(RefusalCode::Throttled, wait, user, "too many failed logins")
                .await);
        }
    };
    if let Some(why) = busy {
        return Err(conn
            .refuse(RefusalCode::Busy, Duration::from_secs(1), user, why)
            .await);
    }
    conn.slot = shared.settings.sessions.try_take();
    if conn.slot.is_none() {
        return Err(conn
            .refuse(
                RefusalCode::Busy,
                Duration::from_secs(5),
                user,
                "too many sessions",
            )
            .await);
    }
    let row = match shared.store.lookup(&typed).await {
        Ok(row) => row,
        Err(e) => {
            let detail = e.to_string();
            return Err(conn
                .refuse(
                    RefusalCode::Unavailable,
                    Duration::from_secs(5),
                    user,
                    &detail,
                )
                .await);
        }
    };
    // The name stored in the row may be throttled when the typed one is
    // not (another spelling the collation matches): such a login cannot
    // succeed, but refusing it now would tell that the row exists, so it
    // goes on with a decoy like any other that cannot.
    let stored_throttled = row.as_ref().is_some_and(|row| {
        row.username != typed
            && shared
                .throttle
                .check_user(&row.username, peer.ip())
                .is_some()
    });
    // On MySQL's case-insensitive collations the row may be `alice` for a
    // typed `ALICE`: failures count for both names.
    let stored_name = row
        .as_ref()
        .map(|r| r.username.clone())
        .filter(|name| *name != typed);
    // The account's verifier, or a decoy of the same shape (decoy.rs).
    let account = row.as_ref().map(|r| decoy::Account {
        password: &r.password,
        may_log_in: r.is_authorised() && !stored_throttled,
        is_active: r.is_active,
    });
    let plan = decoy::plan(
        offered,
        account,
        &typed,
        shared.secret.as_bytes(),
        &shared.decoy_mix(),
    );
    let credentials = plan.credentials;
    let decoy = match plan.decoy {
        Some(decoy::DecoyReason::NotAllowed) if stored_throttled => {
            Some(decoy::DecoyReason::Throttled)
        }
        other => other,
    };
    if let Some(why) = &decoy {
        debug!(%peer, user = %Untrusted(&typed), why = %Untrusted(&why.to_string()), "decoy challenge");
    }
    let account = if decoy.is_none() { row } else { None };

    // 3. Challenge, 4. proof: the machine's.
    if let Err(e) = conn
        .hs
        .challenge_with(&credentials, decoy.is_some(), &mut rand::rng())
    {
        debug!(%peer, error = %e, "challenge failed");
    }
    let verified = conn.step().await;
    let account = match (verified, account) {
        (Ok(Step::Verified), Some(account)) => account,
        (Ok(_), _) => return Err(LoginEnd::Closed),
        (
            Err(
                e @ ConnectionError::Rejected {
                    code: RefusalCode::Unauthorized,
                    ..
                },
            ),
            _,
        ) => {
            attempt.failed(stored_name.as_deref());
            // The real reason, for the operator only: the device was told
            // `unauthorized` like any wrong password.
            let (reason, detail) = match &decoy {
                Some(why) => (why.kind(), why.to_string()),
                None => ("wrong_proof", "wrong password".to_string()),
            };
            return Err(conn.failed(e, user, Some(reason), &detail).await);
        }
        (Err(e), _) => return Err(conn.failed(e, user, None, "").await),
    };
    attempt.succeeded(&account.username);

    // 5. Session: avatar, welcome.
    let session_id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let info = SessionInfo {
        id: session_id,
        peer,
        user: User {
            id: account.id,
            username: account.username.clone(),
            is_superuser: account.is_superuser,
            permission: shared
                .store
                .config()
                .require_perm
                .as_ref()
                .map(|p| p.to_string()),
            group: shared.store.config().require_group.clone(),
        },
        mechanism: credentials.mechanism,
        started: SystemTime::now(),
        credential: CredentialDigest::of(&account.password),
    };
    let mind = Mind::new(
        session_id,
        peer,
        account.username.clone(),
        config.session.outbound_queue.max(4),
        config.session.call_timeout,
        client_max_frame,
        shared.metrics.calls(Direction::ToDevice),
    );
    // Listed before the avatar is made and the welcome leaves: a device
    // that is logged in can be found (admin API, `Registry::mind`) from that
    // moment on, and the account's session cap (per_user.rs) is decided
    // under the registry's lock, so logins at once cannot all slip in.
    let listed = shared.live.insert_capped(
        SessionEntry {
            info: info.clone(),
            mind: mind.clone(),
        },
        config.max_sessions_per_user,
        config.sessions_per_user_policy,
    );
    match listed {
        Err(()) => {
            let detail = format!(
                "the account has {} sessions, its limit",
                config.max_sessions_per_user
            );
            return Err(conn
                .refuse(RefusalCode::Busy, Duration::from_secs(5), user, &detail)
                .await);
        }
        Ok(replaced) => {
            for old in replaced {
                info!(%peer, user = %account.username, session = session_id, replaced = old.session_id(),
                    "the account is at its session limit: its oldest session is replaced");
                old.close(GoodbyeReason::Replaced);
            }
        }
    }
    let avatar = match shared.realm.avatar(&info, mind.clone()).await {
        Ok(avatar) => Arc::new(avatar),
        Err(code) => {
            shared.live.remove(session_id);
            return Err(conn.refuse(code, zero, user, "refused by the realm").await);
        }
    };
    let mut out = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
    let Some(session_permit) = conn.slot.take() else {
        // Taken above, before any step that returns without a refusal.
        return Err(LoginEnd::Closed);
    };
    let hs = &conn.hs;
    let protocol = hs.protocol_version();
    let pattern = hs.noise_pattern().map_or("none", |p| match p {
        tether_core::noise::Pattern::Nn => "NN",
        tether_core::noise::Pattern::Nk => "NK",
    });
    // Which static key an NK device pinned: during a rotation, the
    // operator retires the previous key once no login says `previous`.
    let hs_key_used = hs.key_used();
    let server_key = hs_key_used.map_or("none", |k| match k {
        tether_core::connection::KeyUsed::Current => "current",
        tether_core::connection::KeyUsed::Previous => "previous",
    });
    // The machine is moved out of `conn` (not into a local of its own,
    // which would be a second copy of its space in the login's future).
    let mut stream = conn.stream;
    let welcomed = match conn.hs.welcome(session_id, clock::now(), &mut out) {
        Ok((established, frame)) => match stream.write_all(frame).await {
            Ok(()) if stream.flush().await.is_ok() => Some(established),
            _ => None,
        },
        Err(e) => {
            warn!(%peer, error = %e, "the welcome cannot be sent");
            None
        }
    };
    let Some(established) = welcomed else {
        shared.live.remove(session_id);
        mind.shut();
        // The avatar exists: its life ends with `detached` all the same.
        avatar.detached(SessionEnd::Closed).await;
        return Err(LoginEnd::Closed);
    };
    info!(%peer, user = %Untrusted(&account.username), session = session_id, mechanism = %credentials.mechanism,
        protocol, noise = pattern, server_key, "login");
    shared.metrics.login_protocol(protocol);
    if let Some(key) = hs_key_used {
        shared
            .metrics
            .login_server_key(key == tether_core::connection::KeyUsed::Previous);
    }
    shared.store.record_login(account.id);
    Ok((
        Box::new(Established {
            stream,
            conn: Box::new(established),
            info,
            avatar,
            mind,
            metrics: shared.metrics.clone(),
            config: config.session,
        }),
        session_permit,
    ))
}
