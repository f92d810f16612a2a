//! The admin HTTP API (axum): lets a Django site reach its devices and an
//! operator see the server.
//!
//! | request | answer |
//! |---|---|
//! | `GET /sessions[?username=U]` | `200` `{"sessions": [{"id", "username", "user_id", "is_superuser", "peer", "mechanism", "connected_since", "connected_since_unix_ms", "calls_in", "calls_out", "calls_in_flight"}]}`, oldest first |
//! | `POST /sessions/{username}/call/{method}[?session=ID][&timeout=SECS]` | calls the device and waits for its reply (see below) |
//! | `DELETE /sessions/{username}[?session=ID]` | kicks (`Goodbye { Kicked }`): `200` `{"kicked": [ids]}`, or `404` |
//! | `POST /revoke` `{"user_id": 42}` or `{"username": "alice"}` | ends every session of that user with `Goodbye { Revoked }` and forgets cached lookups of it: `200` `{"revoked": [ids]}` (empty when none was live) |
//! | `GET /livez` | `200` `{"status": "alive"}`: the process answers; the only request that needs no token (for liveness probes) |
//! | `GET /healthz` | `200` `{"status": "ok", "database": "ok", "sessions": N}` when the database answers the login query, else `503` `{"status": "unavailable", "database": "<error>"}` |
//! | `GET /openapi.json` | this API as an OpenAPI 3 document ([`OPENAPI`]) |
//! | `GET /metrics` | `200`, Prometheus text format 0.0.4 ([`crate::metrics`]); in a build without the cargo feature `metrics`, `404` `{"error": "no_metrics", "message": ...}` naming the feature |
//!
//! **Calls.** The request body is the method's arguments:
//! - `Content-Type: application/json` for the typed methods the API knows
//!   (the built-ins `echo`, `whoami`, `server_time`, `device_info`, and any
//!   added with [`Admin::with_json_method`]): the body is the arguments as
//!   JSON (empty or `null` for none); the answer is `200`
//!   `{"session_id": ID, "method": M, "reply": <the reply as JSON>}`.
//! - anything else (e.g. `application/octet-stream`): the body is the
//!   postcard-encoded arguments, passed as they are; the answer is `200`
//!   with the device's postcard reply as `application/octet-stream` and the
//!   session in the `x-tether-session-id` header.
//!
//! Errors are JSON `{"error": KIND, "message": ...}`: `404 not_connected`
//! (no live session for that username, or not that `session`), `504
//! timeout` (no reply within the timeout: `?timeout=SECS`, default
//! [`AdminConfig::call_timeout`], at most [`AdminConfig::max_call_timeout`]),
//! `502 remote_error` with the device's `code`, `code_name` and `message`,
//! `502 bad_reply` (a typed reply that does not decode), `502
//! session_closed` (the session ended during the call), `413 too_large`
//! (the arguments do not fit the device's frame), `415
//! unsupported_media_type` (JSON for a method without a known type), `400
//! bad_json` / `bad_arguments` / `bad_body` / `bad_query`, `408 body_timeout` (the body
//! did not arrive within [`AdminConfig::idle_timeout`]), `413 too_large`
//! (a body over [`MAX_BODY`]).
//!
//! **Several sessions of one username** (one account on several devices, or
//! a device that reconnected before its old session timed out): a call goes
//! to the newest session (the highest id), or to `?session=ID`; `DELETE`
//! kicks every session of the username, or only `?session=ID`.
//!
//! **Authentication.** With a token ([`AdminToken`], from the environment
//! variable `TETHER_ADMIN_TOKEN` in `tether serve`), every request but
//! `/livez`, including `/healthz` and `/metrics`, needs `Authorization: Bearer <token>`; the
//! token is compared in constant time (SHA-256 of both sides, compared with
//! `subtle`) and a missing or wrong one gets `401`. Without a token the API
//! only listens on loopback addresses: [`Admin::bind`] refuses any other.
//!
//! Every request is logged (target `tether_server::admin`) with its method,
//! path, status, latency and peer; never a header, so never the token.
//! Requests answered `401` are logged within the rate limit of
//! [`crate::log_limit`].
//!
//! **Limits** (the [`listener`]): at most [`AdminConfig::max_connections`]
//! connections (when all are taken, a new connection whose whole request
//! has arrived takes the place of the one that has waited longest for a
//! request; others are closed at once), a header timeout, an idle timeout
//! and a [`MAX_BODY`] request body.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tether_server::{Admin, AdminConfig, AdminToken, DefaultRealm, Server, ServerConfig,
//!     ServerSecret, Store, StoreConfig};
//! let store = Arc::new(Store::open(StoreConfig::new("sqlite://db.sqlite3"))?);
//! let server = Server::bind("0.0.0.0:7420", ServerConfig::default(), store,
//!     DefaultRealm::new(), ServerSecret::random()).await?;
//! let config = AdminConfig { token: AdminToken::from_env()?, ..AdminConfig::default() };
//! let admin = Admin::new(&server, config).bind("127.0.0.1:7421").await?;
//! let handle = server.handle();
//! tokio::spawn(admin.run(async move { handle.shutting_down().await }));
//! server.run().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tether_core::message::GoodbyeReason;
use tether_core::method::builtin::{DeviceInfo, Echo, ServerTime, WhoAmI};
use tether_core::method::{self, Method, ToDevice};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::default_realm::{Registry, SessionEntry, unix_millis};
use crate::log_limit::Noisy;
use crate::metrics::Metrics;
use crate::realm::{CallError, Mind, Realm, encode_args};
use crate::server::Server;
use crate::store::Store;
use crate::untrusted::Untrusted;

pub mod listener;

/// The environment variable `tether serve` reads the admin token from.
pub const TOKEN_ENV: &str = "TETHER_ADMIN_TOKEN";

/// The fewest characters an admin token may have.
pub const MIN_TOKEN_LEN: usize = 16;

/// The largest request body accepted (a call's arguments; frames are at
/// most 65,535 bytes anyway).
pub const MAX_BODY: usize = 64 * 1024;

/// What can stop the admin API from starting.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token is unusable.
    #[error("admin token: {0}")]
    Token(String),
    /// A non-loopback address without a token.
    #[error(
        "refusing to serve the admin API on {0} without a token: set {TOKEN_ENV} \
         (at least {MIN_TOKEN_LEN} characters), or listen on a loopback address such as 127.0.0.1"
    )]
    NotLoopback(SocketAddr),
    /// [`Admin::router`] without a token: nested in an application's
    /// router it would skip [`Admin::bind`]'s loopback check and serve
    /// anyone who reaches the application.
    #[error(
        "refusing to build the admin router without a token: set AdminConfig::token, \
         or call Admin::allow_unauthenticated when the application authenticates in front of it"
    )]
    Unauthenticated,
    /// The address does not resolve or cannot be bound.
    #[error("admin API on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What failed.
        error: std::io::Error,
    },
}

/// The admin API's bearer token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// A token: at least [`MIN_TOKEN_LEN`] characters, visible ASCII (it
    /// travels in an HTTP header). `openssl rand -hex 32` makes a good one.
    pub fn new(token: &str) -> Result<Self, AdminError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(AdminError::Token(format!(
                "too short: at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminError::Token(
                "only visible ASCII characters (no spaces)".into(),
            ));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// The token in [`TOKEN_ENV`], if set (and not empty).
    pub fn from_env() -> Result<Option<Self>, AdminError> {
        match std::env::var(TOKEN_ENV) {
            Ok(t) if t.is_empty() => Ok(None),
            Ok(t) => Self::new(&t).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(AdminError::Token(format!("{TOKEN_ENV} is not valid UTF-8")))
            }
        }
    }

    /// Whether `presented` is the token, in constant time (both sides are
    /// hashed first, so not even the length is compared directly).
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The bearer token; `None`: no authentication, loopback only.
    pub token: Option<AdminToken>,
    /// How long a call waits for the device's reply unless the request
    /// says `?timeout=` (default 10 s).
    pub call_timeout: Duration,
    /// The longest `?timeout=` honoured (default 300 s).
    pub max_call_timeout: Duration,
    /// How long `DELETE` waits for the kicked sessions to end (default 2 s).
    pub kick_wait: Duration,
    /// Open connections at once (default 128); when all are taken, see
    /// [`listener`].
    pub max_connections: usize,
    /// How long a request head may take to arrive, from the connection's
    /// start or the end of the previous response (default 10 s).
    pub header_timeout: Duration,
    /// How long a request body may take to arrive, and a response may wait
    /// for the client to read it (default 30 s).
    pub idle_timeout: Duration,
    /// Serve HTTPS with this certificate and key ([`tls_config`]); `None`:
    /// plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS configuration (rustls, ring) from PEM files: the certificate chain
/// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("admin TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "admin TLS certificate {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("admin TLS key {}: {e}", key.display()))?;
    // ring, as for forwarding (src/forward): rustls deprecates it for
    // lacking post-quantum key exchange, which only aws-lc-rs has (cmake,
    // twice the build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("admin TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            call_timeout: Duration::from_secs(10),
            max_call_timeout: Duration::from_secs(300),
            kick_wait: Duration::from_secs(2),
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Turns JSON into a typed method's postcard arguments and its postcard
/// reply into JSON.
#[derive(Clone, Copy)]
struct JsonMethod {
    args: fn(&Value) -> Result<Vec<u8>, String>,
    reply: fn(&[u8]) -> Result<Value, String>,
}

fn json_args<'a, M: Method>(value: &'a Value) -> Result<Vec<u8>, String> {
    let args: M::Args<'a> = Deserialize::deserialize(value).map_err(|e| e.to_string())?;
    encode_args::<M>(&args).map_err(|e| e.to_string())
}

fn json_reply<M: Method>(bytes: &[u8]) -> Result<Value, String> {
    let reply = method::decode_reply::<M>(bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(&reply).map_err(|e| e.to_string())
}

fn json_method<M: Method>() -> JsonMethod {
    JsonMethod {
        args: json_args::<M>,
        reply: json_reply::<M>,
    }
}

#[derive(Clone)]
struct AdminState {
    sessions: Registry,
    store: Arc<Store>,
    metrics: Metrics,
    config: AdminConfig,
    json: HashMap<&'static str, JsonMethod>,
    /// [`Admin::allow_unauthenticated`] was called.
    unauthenticated: bool,
}

/// The admin API of a server.
#[derive(Clone)]
pub struct Admin {
    state: Arc<AdminState>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin API of `server` (its sessions, store and metrics).
    pub fn new<R: Realm>(server: &Server<R>, config: AdminConfig) -> Self {
        Self::from_parts(server.sessions(), server.store().clone(), config)
    }

    /// The admin API over a registry of sessions and a store (whose
    /// [`Store::metrics`] `/metrics` serves).
    pub fn from_parts(sessions: Registry, store: Arc<Store>, config: AdminConfig) -> Self {
        let mut json = HashMap::new();
        json.insert(Echo::NAME, json_method::<Echo>());
        json.insert(WhoAmI::NAME, json_method::<WhoAmI>());
        json.insert(ServerTime::NAME, json_method::<ServerTime>());
        json.insert(DeviceInfo::NAME, json_method::<DeviceInfo>());
        Self {
            state: Arc::new(AdminState {
                sessions,
                metrics: store.metrics().clone(),
                store,
                config,
                json,
                unauthenticated: false,
            }),
        }
    }

    /// Lets calls of `M` take and return JSON (through `M`'s serde types),
    /// like the built-in methods.
    pub fn with_json_method<M: ToDevice>(mut self) -> Self {
        Arc::make_mut(&mut self.state)
            .json
            .insert(M::NAME, json_method::<M>());
        self
    }

    /// Lets [`router`](Self::router) build without a token: the
    /// application authenticates requests in front of it (its own
    /// middleware), or serves it only where everyone who reaches it may
    /// administer the server. Nothing warns afterwards.
    pub fn allow_unauthenticated(mut self) -> Self {
        Arc::make_mut(&mut self.state).unauthenticated = true;
        self
    }

    /// The axum router (authentication, logging and body limit included),
    /// to nest in an application's own router:
    ///
    /// ```no_run
    /// # fn f(server: &tether_server::Server<tether_server::DefaultRealm>) -> Result<(), tether_server::admin::AdminError> {
    /// use tether_server::{Admin, AdminConfig, AdminToken};
    /// let config = AdminConfig { token: Some(AdminToken::new("a long random admin token")?), ..Default::default() };
    /// let app = axum::Router::<()>::new().nest("/tether", Admin::new(server, config).router()?);
    /// # let _ = app; Ok(()) }
    /// ```
    ///
    /// Fails with [`AdminError::Unauthenticated`] when the configuration
    /// has no token, unless [`allow_unauthenticated`](Self::allow_unauthenticated)
    /// says so: a nested router is not behind [`bind`](Self::bind)'s
    /// loopback check.
    pub fn router(&self) -> Result<Router, AdminError> {
        if self.state.config.token.is_none() && !self.state.unauthenticated {
            return Err(AdminError::Unauthenticated);
        }
        Ok(self.router_unchecked())
    }

    /// The router, whatever the token (`bind` checks the address instead).
    fn router_unchecked(&self) -> Router {
        let state = self.state.clone();
        let authenticated = Router::new()
            .route("/sessions", get(list_sessions))
            .route("/sessions/{username}", delete(kick))
            .route("/sessions/{username}/call/{method}", post(call))
            .route("/revoke", post(revoke))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(state.clone(), authenticate));
        Router::new()
            .route("/livez", get(livez))
            .merge(authenticated)
            .layer(middleware::from_fn_with_state(state.clone(), log_request))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state)
    }

    /// Binds the API on `addr` (resolved; every address must be loopback
    /// unless a token is set).
    pub async fn bind(self, addr: &str) -> Result<AdminServer, AdminError> {
        let bind_error = |error| AdminError::Bind {
            addr: addr.to_string(),
            error,
        };
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(bind_error)?
            .collect();
        check_address(&resolved, self.state.config.token.is_some())?;
        let listener = TcpListener::bind(resolved.as_slice())
            .await
            .map_err(bind_error)?;
        if self.state.config.token.is_none() {
            warn!(
                "admin API without a token: anyone who can connect to the loopback address may use it"
            );
        }
        Ok(AdminServer {
            listener,
            router: self.router_unchecked(),
            config: self.state.config.clone(),
            metrics: self.state.metrics.clone(),
        })
    }
}

/// Refuses a non-loopback address unless there is a token.
pub fn check_address(addrs: &[SocketAddr], has_token: bool) -> Result<(), AdminError> {
    if has_token {
        return Ok(());
    }
    match addrs.iter().find(|a| !is_loopback(a)) {
        Some(a) => Err(AdminError::NotLoopback(*a)),
        None => Ok(()),
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A bound admin API, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
    config: AdminConfig,
    metrics: Metrics,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then stops accepting and lets the
    /// requests in progress finish (at most 5 s).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let addr = self.local_addr();
        info!(
            max_connections = self.config.max_connections,
            url = %format!(
                "{}://{addr}/",
                if self.config.tls.is_some() { "https" } else { "http" }
            ),
            "admin API listening"
        );
        listener::serve(
            self.listener,
            self.router,
            self.config,
            self.metrics,
            shutdown,
        )
        .await;
    }
}

type St = State<Arc<AdminState>>;

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": kind, "message": message.into() })),
    )
        .into_response()
}

async fn authenticate(State(state): St, request: Request, next: Next) -> Response {
    let Some(token) = &state.config.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        Some(p) if token.verify(p) => next.run(request).await,
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tether\""),
            );
            response
        }
    }
}

async fn log_request(State(state): St, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    // Rounded to the microsecond: `latency_ms=0.049`, not 0.049361999999999996.
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    let route = route.as_deref().unwrap_or("-");
    let path = Untrusted(&path);
    if status == 401 {
        if state.metrics.log_limit().allow(Noisy::AdminUnauthorized) {
            warn!(%method, %path, %route, status, latency_ms, %peer, "admin request");
        }
    } else if status >= 500 {
        warn!(%method, %path, %route, status, latency_ms, %peer, "admin request");
    } else {
        info!(%method, %path, %route, status, latency_ms, %peer, "admin request");
    }
    response
}

/// A query string that does not parse: `400 bad_query` in JSON, like
/// every other error (axum's own answer is plain text). Called once per
/// request: the size of the error does not matter.
#[allow(clippy::result_large_err)]
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Response> {
    q.map(|Query(v)| v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[derive(Serialize)]
struct SessionView {
    id: u64,
    username: String,
    user_id: i64,
    is_superuser: bool,
    peer: String,
    mechanism: String,
    connected_since: String,
    connected_since_unix_ms: u64,
    calls_in: u64,
    calls_out: u64,
    calls_in_flight: usize,
}

fn view(e: &SessionEntry) -> SessionView {
    SessionView {
        id: e.info.id,
        username: e.info.user.username.clone(),
        user_id: e.info.user.id,
        is_superuser: e.info.user.is_superuser,
        peer: e.info.peer.to_string(),
        mechanism: e.info.mechanism.to_string(),
        connected_since: crate::timefmt::rfc3339_millis(e.info.started),
        connected_since_unix_ms: unix_millis(e.info.started),
        calls_in: e.mind.calls_in(),
        calls_out: e.mind.calls_out(),
        calls_in_flight: e.mind.calls_in_flight(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    username: Option<String>,
}

async fn list_sessions(State(state): St, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let entries = match &q.username {
        Some(username) => state.sessions.list_of(username),
        None => state.sessions.list(),
    };
    let sessions: Vec<SessionView> = entries
        .iter()
        .filter(|e| !e.mind.is_closed())
        .map(view)
        .collect();
    Json(json!({ "sessions": sessions })).into_response()
}

/// The live sessions of `username` (only `session` if given), oldest first.
fn sessions_of(state: &AdminState, username: &str, session: Option<u64>) -> Vec<Mind> {
    state
        .sessions
        .minds_of(username)
        .into_iter()
        .filter(|m| !m.is_closed())
        .filter(|m| session.is_none_or(|id| m.session_id() == id))
        .collect()
}

fn not_connected(username: &str, session: Option<u64>) -> Response {
    let message = match session {
        Some(id) => format!("{username} has no live session {id}"),
        None => format!("{username} is not connected"),
    };
    error(StatusCode::NOT_FOUND, "not_connected", message)
}

#[derive(Deserialize)]
struct CallQuery {
    session: Option<u64>,
    timeout: Option<f64>,
}

/// Whether reading a body failed on [`MAX_BODY`].
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json") || v.to_ascii_lowercase().ends_with("+json")
        })
}

async fn call(
    State(state): St,
    Path((username, method)): Path<(String, String)>,
    q: Result<Query<CallQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let timeout = match q.timeout {
        None => state.config.call_timeout,
        Some(t) if t.is_finite() && t > 0.0 => {
            Duration::from_secs_f64(t.min(state.config.max_call_timeout.as_secs_f64()))
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_timeout",
                "timeout must be a positive number of seconds",
            );
        }
    };
    // The body within the idle timeout and the size limit.
    let body = match tokio::time::timeout(
        state.config.idle_timeout,
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) if is_length_limit(&e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {MAX_BODY} bytes"),
            );
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {e}"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    state.config.idle_timeout.as_secs_f64()
                ),
            );
        }
    };
    let typed = if is_json(&headers) {
        let Some(codec) = state.json.get(method.as_str()).copied() else {
            let mut known: Vec<&str> = state.json.keys().copied().collect();
            known.sort_unstable();
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "JSON arguments are only for the typed methods ({}); send the postcard-encoded \
                     arguments of {method:?} as application/octet-stream",
                    known.join(", ")
                ),
            );
        };
        Some(codec)
    } else {
        None
    };
    let args = match typed {
        Some(codec) => {
            let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_json",
                            format!("the body is not JSON: {e}"),
                        );
                    }
                }
            };
            match (codec.args)(&value) {
                Ok(args) => args,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_arguments",
                        format!("not the arguments of {method}: {e}"),
                    );
                }
            }
        }
        None => body.to_vec(),
    };
    let Some(mind) = sessions_of(&state, &username, q.session).pop() else {
        return not_connected(&username, q.session);
    };
    let session_id = mind.session_id();
    let reply = match mind.call_raw(&method, args, timeout).await {
        Ok(reply) => reply,
        Err(CallError::Timeout) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "{username}'s device (session {session_id}) did not answer {method} within {} ms",
                    timeout.as_millis()
                ),
            );
        }
        Err(CallError::Remote(remote)) => {
            return (
                StatusCode::BAD_GATEWAY,
                Json(json!({
                    "error": "remote_error",
                    "code": remote.code.0,
                    "code_name": remote.code.name(),
                    "message": remote.message,
                    "session_id": session_id,
                })),
            )
                .into_response();
        }
        Err(CallError::Closed) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "session_closed",
                format!("session {session_id} ended before the device answered"),
            );
        }
        Err(CallError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the call does not fit in the device's largest frame",
            );
        }
        Err(e @ CallError::BadReply(_)) => {
            return error(StatusCode::BAD_GATEWAY, "bad_reply", e.to_string());
        }
    };
    match typed {
        Some(codec) => match (codec.reply)(&reply) {
            Ok(value) => Json(json!({
                "session_id": session_id,
                "method": method,
                "reply": value,
            }))
            .into_response(),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                "bad_reply",
                format!("the device's reply to {method} does not decode: {e}"),
            ),
        },
        None => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    header::HeaderName::from_static("x-tether-session-id"),
                    HeaderValue::from(session_id),
                ),
            ],
            reply,
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct KickQuery {
    session: Option<u64>,
}

async fn kick(
    State(state): St,
    Path(username): Path<String>,
    q: Result<Query<KickQuery>, QueryRejection>,
) -> Response {
    let q = match query(q) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let minds = sessions_of(&state, &username, q.session);
    if minds.is_empty() {
        return not_connected(&username, q.session);
    }
    for mind in &minds {
        info!(session = mind.session_id(), user = %Untrusted(&username), "kicked through the admin API");
        mind.close(GoodbyeReason::Kicked);
    }
    // Answer once the sessions have ended (bounded), so that a following
    // GET /sessions no longer lists them.
    let deadline = Instant::now() + state.config.kick_wait;
    while minds.iter().any(|m| !m.is_closed()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kicked: Vec<u64> = minds.iter().map(Mind::session_id).collect();
    Json(json!({ "kicked": kicked })).into_response()
}

/// `POST /revoke` `{"user_id": 42}` or `{"username": "alice"}`
/// ([`crate::revalidate::revoke`]).
async fn revoke(State(state): St, body: Bytes) -> Response {
    let who = match serde_json::from_slice::<Value>(&body) {
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not JSON: {e}"),
            );
        }
        Ok(v) => match (v.get("user_id"), v.get("username")) {
            (Some(id), None) if id.as_i64().is_some() => {
                crate::revalidate::Who::UserId(id.as_i64().unwrap_or_default())
            }
            (None, Some(name)) if name.as_str().is_some_and(|n| !n.is_empty()) => {
                crate::revalidate::Who::Username(name.as_str().unwrap_or_default().to_string())
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_arguments",
                    "expected {\"user_id\": <integer>} or {\"username\": \"<name>\"}",
                );
            }
        },
    };
    let ids = crate::revalidate::revoke(&state.sessions, &state.store, &who);
    // Answer once the sessions have ended (bounded), as DELETE does.
    let deadline = Instant::now() + state.config.kick_wait;
    while Instant::now() < deadline
        && ids
            .iter()
            .any(|id| state.sessions.mind(*id).is_some_and(|m| !m.is_closed()))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Json(json!({ "revoked": ids })).into_response()
}

/// The API's OpenAPI 3 document (hand-written, checked against the running
/// server by schemathesis: tests/openapi).
pub const OPENAPI: &str = include_str!("admin/openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// Liveness, without the token: the process answers HTTP. Nothing else is
/// checked or told.
async fn livez() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn healthz(State(state): St) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({
            "status": "ok",
            "database": "ok",
            "sessions": state.sessions.list().iter().filter(|e| !e.mind.is_closed()).count(),
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "database": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(feature = "metrics")]
async fn metrics(State(state): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /metrics` in a build without metrics: a scraper sees the target
/// down, and whoever reads the answer sees why.
#[cfg(not(feature = "metrics"))]
async fn metrics() -> Response {
    error(StatusCode::NOT_FOUND, "no_metrics", NO_METRICS)
}

/// The message of `GET /metrics` in a build without metrics.
#[cfg(not(feature = "metrics"))]
const NO_METRICS: &str =
    "this build has no metrics: enable tether-server's cargo feature `metrics`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        let t = AdminToken::new("0123456789abcdef-token").unwrap();
        assert!(t.verify("0123456789abcdef-token"));
        assert!(!t.verify("0123456789abcdef-tokeN"));
        assert!(!t.verify(""));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it, long enough").is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(***)");
    }

    #[test]
    fn only_loopback_without_a_token() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_address(&[a("127.0.0.1:1"), a("[::1]:1")], false).is_ok());
        assert!(check_address(&[a("127.0.0.2:1")], false).is_ok());
        assert!(check_address(&[a("[::ffff:127.0.0.1]:1")], false).is_ok());
        for bad in ["0.0.0.0:1", "[::]:1", "192.0.2.1:1"] {
            assert!(matches!(
                check_address(&[a("127.0.0.1:1"), a(bad)], false),
                Err(AdminError::NotLoopback(_))
            ));
            assert!(check_address(&[a(bad)], true).is_ok());
        }
    }

    #[test]
    fn json_methods_round_trip() {
        let echo = json_method::<Echo>();
        let args = (echo.args)(&json!("h\u{e9} \"quoted\"")).unwrap();
        assert_eq!(
            method::decode_args::<Echo>(&args).unwrap(),
            "h\u{e9} \"quoted\""
        );
        assert_eq!((echo.reply)(&args).unwrap(), json!("h\u{e9} \"quoted\""));
        assert!((echo.args)(&json!(3)).is_err());
        let info = json_method::<DeviceInfo>();
        assert!((info.args)(&Value::Null).unwrap().is_empty());
    }

    /// A build without the `metrics` feature answers `GET /metrics` with a
    /// JSON 404 that names the feature (the OpenAPI document lists it).
    #[cfg(not(feature = "metrics"))]
    #[tokio::test]
    async fn metrics_without_the_feature_is_a_404_naming_it() {
        let response = metrics().await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({
                "error": "no_metrics",
                "message": "this build has no metrics: enable tether-server's cargo feature `metrics`",
            })
        );
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["paths"]["/metrics"]["get"]["responses"]["404"].is_object());
    }
}
