//! The login handshake, exactly as `docs/CONNECTION.md` orders it.
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

use tether_core::frame::{HEADER_LEN, MIN_MAX_FRAME, encode_handshake};
use tether_core::message::{
    Challenge, GoodbyeReason, Handshake, PROTOCOL_VERSION, Refusal, RefusalCode, Welcome,
};
use tether_core::scram::{ScramError, ServerLogin};
use tether_core::session::Role;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info, warn};

use crate::admission::Ticket;
use crate::decoy;
use crate::default_realm::SessionEntry;
use crate::log_limit::Noisy;
use crate::metrics::{Direction, Metrics, Rejection};
use crate::realm::{Avatar as _, CredentialDigest, Mind, Realm, SessionEnd, SessionInfo, User};
use crate::server::Shared;
use crate::session::Established;
use crate::untrusted::Untrusted;
use crate::wire::{FrameReader, ReadError};

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

struct Conn {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    peer: SocketAddr,
    metrics: Metrics,
}

impl Conn {
    async fn send(&mut self, msg: &Handshake<'_>) -> Result<(), LoginEnd> {
        let mut buf = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
        let frame = encode_handshake(msg, &mut buf, MIN_MAX_FRAME as usize).map_err(|e| {
            warn!(peer = %self.peer, error = %e, "handshake message does not fit a frame");
            LoginEnd::Closed
        })?;
        self.writer
            .write_all(frame)
            .await
            .map_err(|_| LoginEnd::Closed)
    }

    /// Sends the refusal, closes our side and lets the peer read it; the
    /// log line's `reason` is the code's name.
    async fn refuse(
        self,
        code: RefusalCode,
        retry_after: Duration,
        username: Option<&str>,
        detail: &str,
    ) -> LoginEnd {
        let reason = code.as_str();
        self.refuse_because(code, retry_after, username, reason, detail)
            .await
    }

    /// [`Conn::refuse`] with the reason logged (server side only: the wire
    /// carries `code`).
    async fn refuse_because(
        mut self,
        code: RefusalCode,
        retry_after: Duration,
        username: Option<&str>,
        reason: &'static str,
        detail: &str,
    ) -> LoginEnd {
        let retry_after_secs = if code.is_transient() {
            retry_after.as_secs_f64().ceil().clamp(0.0, u16::MAX as f64) as u16
        } else {
            0
        };
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
        let refusal = Handshake::Refused(Refusal {
            code,
            retry_after_secs,
        });
        if self.send(&refusal).await.is_ok() {
            let _ = self.writer.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_millis(500), self.reader.drain(64 * 1024))
                .await;
        }
        LoginEnd::Refused(code)
    }

    /// The next handshake frame, or the refusal to send.
    async fn next(&mut self) -> Result<&[u8], Result<String, LoginEnd>> {
        match self.reader.next().await {
            Ok(body) => Ok(body),
            Err(ReadError::Frame(e)) => {
                self.metrics.rejected(Rejection::HandshakeBadFrame);
                Err(Ok(format!("bad frame: {e}")))
            }
            Err(ReadError::Closed) => {
                debug!(peer = %self.peer, "closed during the handshake");
                Err(Err(LoginEnd::Closed))
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "handshake read failed");
                Err(Err(LoginEnd::Closed))
            }
        }
    }
}

fn scram_detail(e: ScramError) -> String {
    format!("SCRAM: {e}")
}

/// Runs one login. `ticket` is its place among the handshakes (held until
/// the login ends); `busy` is the reason to refuse it `busy` when it got no
/// slot (admission.rs).
pub(crate) async fn handshake<R: Realm>(
    shared: &Arc<Shared<R>>,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    busy: Option<&'static str>,
) -> Result<(Established<R::Avatar>, OwnedSemaphorePermit), LoginEnd> {
    let config = &shared.config;
    let (reader, writer) = stream.into_split();
    let capacity = (config.max_frame as usize).max(MIN_MAX_FRAME as usize);
    let mut reader = FrameReader::new(reader, capacity);
    reader.set_max(MIN_MAX_FRAME as usize);
    let mut conn = Conn {
        reader,
        writer,
        peer,
        metrics: shared.metrics.clone(),
    };
    let zero = Duration::ZERO;

    // 1. Hello, within the hello timeout; a silent connection may lose its
    // slot to a newcomer meanwhile.
    let first = tokio::select! {
        r = tokio::time::timeout(config.hello_timeout, conn.next()) => r,
        _ = ticket.evicted.cancelled() => return Err(LoginEnd::Evicted),
    };
    let Ok(first) = first else {
        return Err(LoginEnd::NoHello);
    };
    ticket.hello_received();
    let body = match first {
        Ok(body) => body,
        Err(Ok(detail)) => {
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, None, &detail)
                .await);
        }
        Err(Err(end)) => return Err(end),
    };
    let hello = match Handshake::decode(body) {
        Ok(Handshake::Hello(hello)) => hello,
        Ok(_) => {
            conn.metrics.rejected(Rejection::HandshakeUnexpected);
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, None, "expected a hello")
                .await);
        }
        Err(e) => {
            conn.metrics.rejected(Rejection::HandshakeUndecodable);
            let detail = format!("undecodable hello: {e}");
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, None, &detail)
                .await);
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let detail = format!("client speaks protocol version {}", hello.version);
        return Err(conn.refuse(RefusalCode::Version, zero, None, &detail).await);
    }
    if hello.max_frame < MIN_MAX_FRAME {
        let detail = format!("client max frame {} below 512", hello.max_frame);
        return Err(conn
            .refuse(RefusalCode::Protocol, zero, None, &detail)
            .await);
    }
    let client_max_frame = hello.max_frame as usize;
    let offered = hello.mechanisms;
    let login = match ServerLogin::<512>::new(hello.client_first) {
        Ok(login) => login,
        Err(e) => {
            let detail = scram_detail(e);
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, None, &detail)
                .await);
        }
    };
    let typed = login.username().to_string();
    let user = Some(typed.as_str());
    if !decoy::runnable(offered) {
        let detail = format!(
            "the client offers no mechanism this server runs (bits {:#04x})",
            offered.bits()
        );
        return Err(conn
            .refuse(RefusalCode::Unsupported, zero, user, &detail)
            .await);
    }

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
    let Ok(session_permit) = shared.sessions.clone().try_acquire_owned() else {
        return Err(conn
            .refuse(
                RefusalCode::Busy,
                Duration::from_secs(5),
                user,
                "too many sessions",
            )
            .await);
    };
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

    // 3. Challenge.
    let challenge = login.challenge(&credentials, &mut rand::rng());
    let challenge = match challenge {
        Ok(c) => c,
        Err(e) => {
            let detail = scram_detail(e);
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, user, &detail)
                .await);
        }
    };
    let msg = Handshake::Challenge(Challenge {
        mechanism: credentials.mechanism,
        server_first: challenge.server_first(),
    });
    conn.send(&msg).await?;

    // 4. Proof.
    let body = match conn.next().await {
        Ok(body) => body,
        Err(Ok(detail)) => {
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, user, &detail)
                .await);
        }
        Err(Err(end)) => return Err(end),
    };
    let proof = match Handshake::decode(body) {
        Ok(Handshake::Proof(proof)) => proof,
        Ok(_) => {
            conn.metrics.rejected(Rejection::HandshakeUnexpected);
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, user, "expected a proof")
                .await);
        }
        Err(e) => {
            conn.metrics.rejected(Rejection::HandshakeUndecodable);
            let detail = format!("undecodable proof: {e}");
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, user, &detail)
                .await);
        }
    };
    let verified = challenge.verify(proof.client_final);
    let (success, account) = match (verified, account) {
        (Ok(success), Some(account)) => (success, account),
        (Ok(_), None) | (Err(ScramError::InvalidProof), _) => {
            attempt.failed(stored_name.as_deref());
            // The real reason, for the operator only: the device was told
            // `unauthorized` like any wrong password.
            let (reason, detail) = match &decoy {
                Some(why) => (why.kind(), why.to_string()),
                None => ("wrong_proof", "wrong password".to_string()),
            };
            return Err(conn
                .refuse_because(RefusalCode::Unauthorized, zero, user, reason, &detail)
                .await);
        }
        (Err(e), _) => {
            let detail = scram_detail(e);
            return Err(conn
                .refuse(RefusalCode::Protocol, zero, user, &detail)
                .await);
        }
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
    let (tx, rx) = mpsc::channel(config.session.outbound_queue.max(4));
    let mind = Mind::new(
        session_id,
        peer,
        account.username.clone(),
        tx,
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
    let welcome = Handshake::Welcome(Welcome {
        server_final: success.server_final(),
        session_id,
        max_frame: config.max_frame,
        heartbeat_secs: config.session.heartbeat_secs(),
    });
    if let Err(end) = conn.send(&welcome).await {
        shared.live.remove(session_id);
        mind.shut();
        // The avatar exists: its life ends with `detached` all the same.
        avatar.detached(SessionEnd::Closed).await;
        return Err(end);
    }
    info!(%peer, user = %Untrusted(&account.username), session = session_id, mechanism = %credentials.mechanism, "login");
    shared.store.record_login(account.id);
    let Conn {
        mut reader, writer, ..
    } = conn;
    reader.set_max(config.max_frame as usize);
    let (sealer, opener) = success.session.into_halves(Role::Server);
    Ok((
        Established {
            reader,
            writer,
            sealer,
            opener,
            info,
            avatar,
            mind,
            rx,
            peer_max_frame: client_max_frame,
            metrics: shared.metrics.clone(),
        },
        session_permit,
    ))
}
