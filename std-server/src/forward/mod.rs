//! Forwarding to the Django project: `tether serve --forward URL`.
//!
//! The contract is docs/DJANGO.md; this module is its server side and the
//! only code that speaks HTTP to Django:
//!
//! - [`signing`]: `quote`, the signed headers.
//! - [`ForwardSession::call`]: a device call the server does not answer
//!   itself becomes `POST {URL}/call/{method}`; the HTTP answer becomes the
//!   device's `Reply` or `Error` (section 1.3). Bounded per session and in
//!   all ([`ForwardConfig::max_calls_per_session`],
//!   [`ForwardConfig::max_calls`]): beyond them the device gets `BUSY` at
//!   once. Never retried (a call is not idempotent); every call gets an
//!   answer within [`ForwardConfig::timeout`].
//! - notifications and session events (`delivery`): per session, in order,
//!   at least once, retried with backoff; a bounded queue that outlives
//!   the session.
//!
//! One HTTP client (reqwest, hyper's pool) keeps connections to Django
//! alive between requests; https works with the system's roots (rustls).
//! Redirects are not followed (a signed POST must not turn into a GET
//! elsewhere), and no proxy from the environment is used.
//!
//! The binary's realm ([`DefaultRealm::forward_to`](crate::DefaultRealm::forward_to))
//! answers the built-in methods and hands everything else here.

pub(crate) mod delivery;
pub(crate) mod metrics;
pub mod signing;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{StatusCode, Url};
use tether_core::message::{ErrorCode, GoodbyeReason};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::realm::{CallResult, Mind, RemoteError, SessionEnd, SessionInfo, lock};
use delivery::{Item, Queue};
use metrics::{CallOutcome, DeliveryKind, DeliveryOutcome, ForwardMetrics};
pub use signing::{ForwardSecret, Origin, quote};

/// The environment variable of `--forward`.
pub const URL_ENV: &str = "TETHER_FORWARD_URL";
/// The environment variable of `--forward-secret`.
pub const SECRET_ENV: &str = "TETHER_FORWARD_SECRET";
/// The methods the binary's realm answers itself unless handed to Django
/// ([`ForwardConfig::builtins`]).
pub const BUILTINS: [&str; 3] = ["echo", "whoami", "server_time"];
/// Queued notification bytes (arguments), all sessions together, beyond
/// which new notifications are dropped whatever their session's queue
/// holds: 10,000 sessions with full queues of large notifications would
/// otherwise hold gigabytes while Django is down.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// The first retry of a delivery waits this long; each next one twice as
/// long, up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// The longest wait between two delivery attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Idle keep-alive connections are closed after this long, before a
/// typical server closes them (gunicorn's `--keep-alive` is 2 s): reusing
/// a connection the server is closing at that moment fails the request.
pub const POOL_IDLE: Duration = Duration::from_secs(1);

/// How long `tether serve` goes on delivering notifications and events
/// after its sessions have ended on shutdown.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

const OCTET_STREAM: &str = "application/octet-stream";
const JSON: &str = "application/json";

/// How to reach the Django project.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The base URL of the application's views, e.g.
    /// `http://127.0.0.1:8000/tether` (`http` or `https`).
    pub url: String,
    /// The shared secret (`--forward-secret`).
    pub secret: ForwardSecret,
    /// Longest a forwarded request may take, connection included (default
    /// 10 s): a call then gets `TIMEOUT`, a delivery is retried.
    pub timeout: Duration,
    /// Built-in methods ([`BUILTINS`]) handed to Django instead of being
    /// answered by the server (`--forward-builtin`).
    pub builtins: Vec<String>,
    /// Notifications waiting per session (default 256); more are dropped.
    pub queue: usize,
    /// Forwarded calls in flight, all sessions together (default 256).
    pub max_calls: usize,
    /// Forwarded calls in flight per session (default 8).
    pub max_calls_per_session: usize,
}

impl ForwardConfig {
    /// The defaults for a URL and secret.
    pub fn new(url: impl Into<String>, secret: ForwardSecret) -> Self {
        Self {
            url: url.into(),
            secret,
            timeout: Duration::from_secs(10),
            builtins: Vec::new(),
            queue: 256,
            max_calls: 256,
            max_calls_per_session: 8,
        }
    }
}

/// A forwarding configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The URL is not an http(s) base URL.
    #[error("--forward {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// `--forward-builtin` names no built-in method.
    #[error("--forward-builtin {0:?}: not a built-in method (echo, whoami, server_time)")]
    Builtin(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The connection to the Django project, shared by every session.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    client: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: String,
    /// `host:port` of the base URL, named in errors.
    host: String,
    secret: ForwardSecret,
    timeout: Duration,
    builtins: Vec<String>,
    queue: usize,
    calls: Arc<Semaphore>,
    max_calls: usize,
    per_session: usize,
    /// Deliveries in flight, all sessions together (as many as calls).
    deliveries: Semaphore,
    queued_bytes: AtomicUsize,
    pub(crate) metrics: ForwardMetrics,
    /// Delivery tasks; [`Forwarder::close`] waits for them.
    tracker: TaskTracker,
    /// Stops the delivery tasks (at the end of [`Forwarder::close`]).
    stop: CancellationToken,
    abandoned: AtomicU64,
    drop_log: Every,
    retry_log: Every,
    refusal_log: Every,
}

impl Forwarder {
    /// Checks the configuration and builds the HTTP client; records into
    /// `metrics`.
    pub fn new(config: ForwardConfig, metrics: &Metrics) -> Result<Self, ForwardError> {
        let bad = |why: &str| ForwardError::Url {
            url: config.url.clone(),
            why: why.to_string(),
        };
        let url = Url::parse(&config.url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("expected an http:// or https:// URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a base URL has no query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "no credentials in the URL: requests are signed with --forward-secret",
            ));
        }
        let Some(host) = url.host_str() else {
            return Err(bad("no host"));
        };
        let host = match url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        for name in &config.builtins {
            if !BUILTINS.contains(&name.as_str()) {
                return Err(ForwardError::Builtin(name.clone()));
            }
        }
        // The process's TLS provider: ring (rustls 0.23.48 deprecates it
        // for lacking post-quantum key exchange, which only aws-lc-rs has;
        // that one needs cmake and doubles the build). A second install is
        // refused harmlessly.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let max_calls = config.max_calls.max(1);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(max_calls * 2)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("tether-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ForwardError::Client(error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base: config.url.trim_end_matches('/').to_string(),
                host,
                secret: config.secret,
                timeout: config.timeout,
                builtins: config.builtins,
                queue: config.queue.max(1),
                calls: Arc::new(Semaphore::new(max_calls)),
                max_calls,
                per_session: config.max_calls_per_session.max(1),
                deliveries: Semaphore::new(max_calls),
                queued_bytes: AtomicUsize::new(0),
                metrics: metrics.forward(),
                tracker: TaskTracker::new(),
                stop: CancellationToken::new(),
                abandoned: AtomicU64::new(0),
                drop_log: Every::new(Duration::from_secs(10)),
                retry_log: Every::new(Duration::from_secs(10)),
                refusal_log: Every::new(Duration::from_secs(10)),
            }),
        })
    }

    /// The base URL requests go to (for the startup log).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// Whether the built-in `method` is handed to Django.
    pub fn forwards_builtin(&self, method: &str) -> bool {
        self.inner.builtins.iter().any(|b| b == method)
    }

    /// Forwarding for a new session: queues its `connected` event.
    pub fn session(&self, info: &SessionInfo, mind: &Mind) -> ForwardSession {
        let origin = Origin {
            user_id: info.user.id.to_string(),
            username: quote(&info.user.username),
            session: info.id.to_string(),
            peer: info.peer.to_string(),
        };
        let session = ForwardSession {
            inner: self.inner.clone(),
            queue: Arc::new(Queue::new(origin.clone())),
            origin,
            info: info.clone(),
            in_flight: Arc::new(Semaphore::new(self.inner.per_session)),
            peer_max_frame: mind.shared.peer_max_frame,
            ended: AtomicBool::new(false),
        };
        session.event("connected", None);
        session
    }

    /// Delivers what is queued for at most `grace` (the sessions have
    /// ended: their `disconnected` events are queued last), then stops
    /// delivering; what is left is counted `abandoned` and logged.
    pub async fn close(&self, grace: Duration) {
        let inner = &self.inner;
        inner.tracker.close();
        if tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_err()
        {
            inner.stop.cancel();
            inner.tracker.wait().await;
        }
        let abandoned = inner.abandoned.load(Ordering::Relaxed);
        if abandoned > 0 {
            warn!(
                abandoned,
                url = %inner.base,
                "notifications and events still undelivered at shutdown; dropped"
            );
        }
    }
}

/// One session's forwarding: its calls, notifications and events.
pub struct ForwardSession {
    inner: Arc<Inner>,
    origin: Origin,
    info: SessionInfo,
    queue: Arc<Queue>,
    in_flight: Arc<Semaphore>,
    peer_max_frame: usize,
    ended: AtomicBool,
}

impl fmt::Debug for ForwardSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardSession")
            .field("session", &self.info.id)
            .finish_non_exhaustive()
    }
}

/// The outcome of one HTTP exchange.
enum Exchange {
    /// The status, headers and (up to the limit) body.
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        /// More body than the limit.
        truncated: bool,
    },
    /// No answer within the timeout.
    Timeout,
    /// No connection, or it broke: the cause.
    Unreachable(String),
}

impl Inner {
    /// POSTs `body` to `route`, signed for `origin`, and reads at most
    /// `limit` bytes of the answer's body (`None`: the body is not read).
    async fn post(
        &self,
        route: &str,
        request_id: &str,
        origin: &Origin,
        body: Bytes,
        content_type: &'static str,
        limit: impl Fn(StatusCode, &HeaderMap) -> Option<usize>,
    ) -> Exchange {
        use signing::header as h;
        let signed = self
            .secret
            .sign(unix_secs(), route, request_id, origin, &body);
        let request = self
            .client
            .post(format!("{}/{route}", self.base))
            .header(CONTENT_TYPE, content_type)
            .header(h::TIMESTAMP, &signed.timestamp)
            .header(h::REQUEST_ID, request_id)
            .header(h::USER_ID, &origin.user_id)
            .header(h::USERNAME, &origin.username)
            .header(h::SESSION, &origin.session)
            .header(h::PEER, &origin.peer)
            .header(h::SIGNATURE, &signed.signature)
            .body(body)
            .timeout(self.timeout);
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return self.failed(&e),
        };
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let Some(limit) = limit(status, &headers) else {
            return Exchange::Answered {
                status,
                headers,
                body: Bytes::new(),
                truncated: false,
            };
        };
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        let room = limit - body.len();
                        body.extend_from_slice(&chunk[..room]);
                        return Exchange::Answered {
                            status,
                            headers,
                            body: body.into(),
                            truncated: true,
                        };
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return self.failed(&e),
            }
        }
        Exchange::Answered {
            status,
            headers,
            body: body.into(),
            truncated: false,
        }
    }

    fn failed(&self, e: &reqwest::Error) -> Exchange {
        if e.is_timeout() {
            Exchange::Timeout
        } else {
            Exchange::Unreachable(error_chain(e))
        }
    }

    fn timeout_message(&self) -> String {
        format!(
            "no answer from the application within {} (--forward-timeout)",
            human_duration(self.timeout)
        )
    }

    fn unreachable_message(&self, cause: &str) -> String {
        format!("cannot reach the application at {}: {cause}", self.host)
    }
}

impl ForwardSession {
    /// Forwards a device call and maps the answer (docs/DJANGO.md 1.3).
    pub async fn call(&self, method: &str, args: Vec<u8>) -> CallResult {
        let metrics = &self.inner.metrics;
        let Ok(_session_slot) = self.in_flight.clone().try_acquire_owned() else {
            metrics.call(CallOutcome::Busy, None);
            return Err(RemoteError::new(
                ErrorCode::BUSY,
                format!(
                    "too many calls to the application in flight for this session ({})",
                    self.inner.per_session
                ),
            ));
        };
        let Ok(_slot) = self.inner.calls.clone().try_acquire_owned() else {
            metrics.call(CallOutcome::Busy, None);
            return Err(RemoteError::new(
                ErrorCode::BUSY,
                format!(
                    "too many calls to the application in flight ({})",
                    self.inner.max_calls
                ),
            ));
        };
        let route = format!("call/{}", quote(method));
        let limit = self.peer_max_frame;
        let started = Instant::now();
        let exchange = self
            .inner
            .post(
                &route,
                &request_id(),
                &self.origin,
                Bytes::from(args),
                OCTET_STREAM,
                // A 5xx body (perhaps a debug page) is never read.
                |status, headers| {
                    (status.is_success() || (status.is_client_error() && is_text_plain(headers)))
                        .then_some(limit)
                },
            )
            .await;
        let (outcome, result) = self.answer(method, exchange);
        metrics.call(outcome, Some(started.elapsed()));
        result
    }

    fn answer(&self, method: &str, exchange: Exchange) -> (CallOutcome, CallResult) {
        let (status, headers, body, truncated) = match exchange {
            Exchange::Timeout => {
                let message = self.inner.timeout_message();
                return (
                    CallOutcome::Timeout,
                    Err(RemoteError::new(ErrorCode::TIMEOUT, message)),
                );
            }
            Exchange::Unreachable(cause) => {
                let message = self.inner.unreachable_message(&cause);
                return (CallOutcome::Unreachable, Err(RemoteError::failed(message)));
            }
            Exchange::Answered {
                status,
                headers,
                body,
                truncated,
            } => (status, headers, body, truncated),
        };
        if status.is_success() {
            if truncated {
                return (
                    CallOutcome::TooLarge,
                    Err(RemoteError::failed(format!(
                        "the application's reply to {method} is larger than the device's frame \
                         ({} bytes)",
                        self.peer_max_frame
                    ))),
                );
            }
            return (CallOutcome::Ok, Ok(body.to_vec()));
        }
        (
            if status.is_client_error() {
                CallOutcome::ClientError
            } else {
                CallOutcome::ServerError
            },
            Err(map_error(method, status, &headers, &body)),
        )
    }

    /// Queues a device notification for delivery (in order, at least
    /// once). Dropped, counted and logged (at a bounded rate) when the
    /// session's queue, or all queues together, are full.
    pub fn notify(&self, method: &str, args: Vec<u8>) {
        let inner = &self.inner;
        let item = Item {
            kind: DeliveryKind::Notify,
            route: format!("notify/{}", quote(method)),
            body: Bytes::from(args),
            content_type: OCTET_STREAM,
            request_id: request_id(),
        };
        if !self.queue.push(item, &self.inner) {
            inner
                .metrics
                .delivery(DeliveryKind::Notify, DeliveryOutcome::Dropped, 1);
            if let Some(more) = inner.drop_log.check() {
                warn!(
                    session = self.info.id,
                    user = %self.info.user.username,
                    method,
                    also_dropped_since_last_report = more,
                    queue = inner.queue,
                    "notification dropped: the delivery queue to the application is full"
                );
            }
        }
    }

    /// Queues the `disconnected` event; the session's queue is delivered
    /// to its end, then its task finishes.
    pub fn disconnected(&self, end: &SessionEnd) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.event("disconnected", Some(end_reason(end)));
        }
    }

    fn event(&self, event: &str, reason: Option<&str>) {
        let info = &self.info;
        let mut body = serde_json::json!({
            "event": event,
            "session_id": info.id,
            "user_id": info.user.id,
            "username": info.user.username,
            "peer": info.peer.to_string(),
            "at": crate::timefmt::rfc3339_micros(SystemTime::now()),
        });
        if let Some(reason) = reason {
            body["reason"] = reason.into();
        }
        let item = Item {
            kind: DeliveryKind::Event,
            route: "event".into(),
            body: Bytes::from(body.to_string()),
            content_type: JSON,
            request_id: request_id(),
        };
        // Events are never dropped: two per session.
        self.queue.push(item, &self.inner);
    }
}

impl Drop for ForwardSession {
    fn drop(&mut self) {
        // An avatar always hears `detached`; this is a safety net for a
        // session dropped without it.
        if !self.ended.load(Ordering::Acquire) {
            self.disconnected(&SessionEnd::Closed);
        }
    }
}

/// The `reason` of a `disconnected` event (docs/DJANGO.md 1.4).
pub fn end_reason(end: &SessionEnd) -> &'static str {
    match end {
        SessionEnd::Goodbye(GoodbyeReason::ProtocolError | GoodbyeReason::BadTag) => {
            "protocol_error"
        }
        SessionEnd::Goodbye(_) => "normal",
        SessionEnd::Closed => "closed",
        SessionEnd::IdleTimeout => "idle_timeout",
        SessionEnd::Shutdown => "shutdown",
        SessionEnd::Kicked(reason) => match reason {
            GoodbyeReason::Replaced => "replaced",
            GoodbyeReason::Revoked => "revoked",
            GoodbyeReason::Shutdown => "shutdown",
            GoodbyeReason::IdleTimeout => "idle_timeout",
            GoodbyeReason::ProtocolError | GoodbyeReason::BadTag => "protocol_error",
            GoodbyeReason::Normal | GoodbyeReason::Kicked => "kicked",
        },
        SessionEnd::ProtocolError(_) => "protocol_error",
        SessionEnd::Io(_) => "io_error",
    }
}

/// A non-2xx answer as the device's error (docs/DJANGO.md 1.3).
fn map_error(method: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> RemoteError {
    let text = (status.is_client_error() && is_text_plain(headers) && !body.is_empty())
        .then(|| String::from_utf8_lossy(body).trim_end().to_string())
        .filter(|t| !t.is_empty());
    let message = |fixed: String| text.clone().unwrap_or(fixed);
    if status.is_client_error()
        && let Some(code) = headers
            .get(signing::header::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|c| *c >= ErrorCode::APPLICATION.0)
    {
        return RemoteError::new(
            ErrorCode(code),
            message(format!("{method} failed in the application ({code})")),
        );
    }
    match status.as_u16() {
        404 => RemoteError::new(
            ErrorCode::UNKNOWN_METHOD,
            message(format!("the application has no method {method:?}")),
        ),
        400 | 422 => RemoteError::new(
            ErrorCode::BAD_ARGUMENTS,
            message(format!("the application refused the arguments of {method}")),
        ),
        403 => RemoteError::new(
            ErrorCode::FORBIDDEN,
            message("refused by the application".into()),
        ),
        400..=499 => RemoteError::failed(message(format!(
            "the application answered HTTP {}",
            status_text(status)
        ))),
        500..=599 => {
            RemoteError::failed(format!("application error: HTTP {}", status_text(status)))
        }
        _ => RemoteError::failed(format!(
            "the application answered HTTP {} (redirects are not followed: check the --forward URL)",
            status_text(status)
        )),
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn is_text_plain(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/plain"))
}

/// A new request id: 32 lower-case hex characters.
fn request_id() -> String {
    use rand::Rng as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The error and its causes, innermost last, without repeating the URL
/// (it may be long; the host is named by the caller).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        let text = e.to_string();
        // reqwest's own text names the URL in parentheses.
        return text.split(" (").next().unwrap_or(&text).to_string();
    }
    parts.join(": ")
}

/// A gate for log lines: open at most once per period; counts what it
/// held back meanwhile.
struct Every {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)`: log now (`n` events were held back since the last line);
    /// `None`: stay quiet.
    fn check(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// `--forward-secret` as given: checked when the forwarder is built (a
/// parse error would print it). Never printed.
#[cfg(feature = "cli")]
#[derive(Clone)]
pub struct SecretArg(String);

#[cfg(feature = "cli")]
impl fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretArg(<redacted>)")
    }
}

#[cfg(feature = "cli")]
impl SecretArg {
    fn parse(s: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self(s.to_string()))
    }
}

/// The `tether serve` options of forwarding (flattened into its
/// arguments).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct ForwardArgs {
    /// Forward every call the server does not answer itself, every device
    /// notification and the session events to the Django project under
    /// this base URL (http:// or https://), e.g.
    /// http://127.0.0.1:8000/tether (docs/DJANGO.md). Needs
    /// --forward-secret.
    #[arg(long = "forward", env = URL_ENV, value_name = "URL")]
    pub forward: Option<String>,
    /// The secret that signs forwarded requests (at least 16 characters;
    /// the same value in the Django settings). Never logged.
    #[arg(long, env = SECRET_ENV, hide_env_values = true, value_name = "SECRET",
          value_parser = SecretArg::parse)]
    pub forward_secret: Option<SecretArg>,
    /// Longest a forwarded request may take; a call then gets `timeout`, a
    /// notification or event is retried.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub forward_timeout: f64,
    /// Hand this built-in method (echo, whoami, server_time) to Django
    /// too, so that the application overrides it. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub forward_builtin: Vec<String>,
    /// Notifications waiting per session while Django is slow or down;
    /// more are dropped (counted in /metrics, logged).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub forward_queue: usize,
    /// Forwarded calls in flight, all sessions together (more get `busy`).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub forward_max_calls: usize,
    /// Forwarded calls in flight per session (more get `busy`).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub forward_max_calls_per_session: usize,
}

#[cfg(feature = "cli")]
impl ForwardArgs {
    /// The forwarder these options ask for (`None` without `--forward`).
    pub fn forwarder(&self, metrics: &Metrics) -> Result<Option<Forwarder>, String> {
        let Some(url) = &self.forward else {
            return Ok(None);
        };
        let Some(SecretArg(secret)) = &self.forward_secret else {
            return Err(format!(
                "--forward needs --forward-secret (or {SECRET_ENV}): at least {} characters, \
                 the same value the Django project checks signatures with",
                signing::MIN_SECRET_LEN
            ));
        };
        // Checked here, not by clap, whose error would print the value.
        let secret = ForwardSecret::new(secret).map_err(|e| format!("--forward-secret: {e}"))?;
        let timeout = Duration::try_from_secs_f64(self.forward_timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or("--forward-timeout must be a positive number of seconds")?;
        let config = ForwardConfig {
            timeout,
            builtins: self.forward_builtin.clone(),
            queue: self.forward_queue,
            max_calls: self.forward_max_calls,
            max_calls_per_session: self.forward_max_calls_per_session,
            ..ForwardConfig::new(url.clone(), secret)
        };
        Forwarder::new(config, metrics)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Logs the forwarding setup once at start.
pub fn log_start(forwarder: &Forwarder) {
    let inner = &forwarder.inner;
    info!(
        url = %inner.base,
        timeout_secs = inner.timeout.as_secs_f64(),
        max_calls = inner.max_calls,
        max_calls_per_session = inner.per_session,
        queue = inner.queue,
        builtins_forwarded = ?inner.builtins,
        "forwarding calls, notifications and session events to the application"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn statuses_map_as_the_contract_says() {
        let none = HeaderMap::new();
        let text = headers(&[("content-type", "text/plain; charset=utf-8")]);
        let m = |s: u16, h: &HeaderMap, b: &[u8]| {
            map_error("m", StatusCode::from_u16(s).unwrap(), h, b)
        };
        assert_eq!(m(404, &none, b"").code, ErrorCode::UNKNOWN_METHOD);
        assert_eq!(m(400, &none, b"").code, ErrorCode::BAD_ARGUMENTS);
        assert_eq!(m(422, &none, b"").code, ErrorCode::BAD_ARGUMENTS);
        let refused = m(403, &none, b"<html>");
        assert_eq!(refused.code, ErrorCode::FORBIDDEN);
        assert_eq!(refused.message, "refused by the application");
        assert_eq!(m(403, &text, b"not yours\n").message, "not yours");
        let conflict = m(409, &none, b"");
        assert_eq!(conflict.code, ErrorCode::FAILED);
        assert!(conflict.message.contains("409 Conflict"), "{conflict:?}");
        let app = headers(&[
            ("x-tether-error-code", "1042"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(
            m(409, &app, b"valve stuck"),
            RemoteError::new(ErrorCode(1042), "valve stuck")
        );
        // Below 1000 the header is ignored: the status decides.
        let low = headers(&[("x-tether-error-code", "7")]);
        assert_eq!(m(404, &low, b"").code, ErrorCode::UNKNOWN_METHOD);
        // A 5xx body is never passed on.
        let boom = m(500, &text, b"Traceback: secret stuff");
        assert_eq!(boom.code, ErrorCode::FAILED);
        assert_eq!(
            boom.message,
            "application error: HTTP 500 Internal Server Error"
        );
        assert!(
            m(302, &none, b"")
                .message
                .contains("redirects are not followed")
        );
    }

    #[test]
    fn end_reasons_are_the_contracts_names() {
        assert_eq!(
            end_reason(&SessionEnd::Goodbye(GoodbyeReason::Normal)),
            "normal"
        );
        assert_eq!(
            end_reason(&SessionEnd::Kicked(GoodbyeReason::Revoked)),
            "revoked"
        );
        assert_eq!(
            end_reason(&SessionEnd::Kicked(GoodbyeReason::Kicked)),
            "kicked"
        );
        assert_eq!(end_reason(&SessionEnd::Io("x".into())), "io_error");
        assert_eq!(end_reason(&SessionEnd::IdleTimeout), "idle_timeout");
    }

    #[test]
    fn request_ids_are_32_hex() {
        let id = request_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(id, request_id());
    }

    #[test]
    fn log_gate_counts_what_it_holds_back() {
        let gate = Every::new(Duration::from_secs(3600));
        assert_eq!(gate.check(), Some(0));
        assert_eq!(gate.check(), None);
        assert_eq!(gate.check(), None);
        lock(&gate.state).0 = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(gate.check(), Some(2));
    }
}
