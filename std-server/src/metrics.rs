//! Prometheus metrics of a server (prometheus-client, text format 0.0.4).
//!
//! **Cargo feature `metrics`** (in the default features, and implied by
//! `cli`). Without it, prometheus-client is not built: [`Metrics`] and
//! everything that records into it stay, but every series is a zero-sized
//! stand-in whose recording methods are empty, so recording compiles to
//! nothing; [`Metrics::render`] and [`CONTENT_TYPE`] do not exist, and the
//! admin API's `GET /metrics` answers `404` `{"error": "no_metrics"}`
//! naming the feature.
//!
//! Every [`Store`](crate::Store) owns a [`Metrics`]; the [`Server`](crate::Server)
//! bound on that store records into the same one, so one scrape shows the
//! logins, sessions, calls and database lookups of that server. Give several
//! stores one registry with [`Store::with_metrics`](crate::Store::with_metrics).
//! [`Metrics::render`] produces the text that `GET /metrics` of the admin API
//! serves ([`crate::admin`]).
//!
//! Every series is created up front (all label values are known: refusal
//! codes, outcomes, reasons), so recording is an atomic add on a handle held
//! by the code that records it: no map lookup and no lock, except the
//! histograms' own short mutex. The throttle gauges are computed when
//! scraped.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tether_logins_total` | counter | `outcome` = `success`, `refused`, `timeout`, `closed`, `dropped`, `evicted` | handshakes by how they ended (`timeout`: the handshake or hello timeout; `closed`: the peer went away; `dropped`: closed at once, random early drop or too many connections waiting; `evicted`: a connection that had sent nothing gave its slot to a newcomer) |
//! | `tether_logins_by_protocol_total` | counter | `version` = `1`, `2` | successful logins by protocol version (2: Noise, encrypted) |
//! | `tether_logins_by_server_key_total` | counter | `key` = `current`, `previous` | successful v2 NK logins by the server key the device pinned (during a key rotation: retire the previous key once `previous` stops rising) |
//! | `tether_login_refusals_total` | counter | `code` = `unauthorized`, `unsupported`, `throttled`, `unavailable`, `version`, `protocol`, `busy`, `unknown_key` | refusals by code |
//! | `tether_handshakes_in_progress` | gauge | | connections between accept and welcome or refusal |
//! | `tether_handshake_duration_seconds` | histogram | `outcome` = `success`, `refused` | accept to welcome or refusal |
//! | `tether_throttle_blocks_total` | counter | `scope` = `user`, `address`, `pair` (username from one address) | failures that left their bucket empty (throttle.rs) |
//! | `tether_throttled_users` | gauge | | usernames blocked now |
//! | `tether_throttled_addresses` | gauge | | source addresses (IPv6: /64) blocked now |
//! | `tether_sessions_active` | gauge | | live sessions |
//! | `tether_session_ends_total` | counter | `reason` = `goodbye`, `closed`, `idle_timeout`, `shutdown`, `kicked`, `protocol_error`, `io` | sessions ended, by why |
//! | `tether_calls_total` | counter | `direction` = `from_device`, `to_device`; `outcome` = `ok`, `error`, `timeout`, `closed`, `rejected` | calls by outcome |
//! | `tether_call_duration_seconds` | histogram | `direction` | from the call to its answer |
//! | `tether_db_lookup_duration_seconds` | histogram | | credential lookups that reached the database |
//! | `tether_db_lookup_errors_total` | counter | `kind` = `unavailable`, `query` | failed lookups |
//! | `tether_db_cache_hits_total` | counter | | lookups answered by the cache |
//! | `tether_frames_rejected_total` | counter | `phase` = `handshake`, `session`; `reason` | frames that ended a login or session: `bad_frame` (length), `undecodable`, `unexpected`, `bad_tag`, `replayed`, `out_of_order`, `too_short`, `unknown_reply`, `duplicate_call` |
//! | `tether_admin_connections` | gauge | | open connections to the admin API |
//! | `tether_log_events_total` | counter | `event` ([`Noisy`](crate::log_limit::Noisy)) | events an outsider can cause at will, whether their log line was written or not |
//! | `tether_log_lines_suppressed_total` | counter | `event` | their lines left out by the rate limit ([`crate::log_limit`]) |
//!
//! | `tether_forward_*` | | | forwarding to the Django project, listed in std-server/README.md |
//! | `tether_revocations_total` | counter | `cause` = `deleted`, `inactive`, `password`, `permission`, `admin` | sessions ended with `Goodbye(Revoked)` ([`crate::revalidate`]) |
//! | `tether_revalidations_total` | counter | `outcome` = `ok`, `error` | the periodic re-reads of the live sessions' users |
//!
//! `from_device` calls are the device's calls answered by the avatar
//! (`rejected`: refused `busy` or `shutting_down` without running);
//! `to_device` calls are [`Mind`](crate::Mind) calls (`rejected`: too large
//! for the device's frame).

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

#[cfg(feature = "metrics")]
pub(crate) use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tether_core::message::RefusalCode;

#[cfg(not(feature = "metrics"))]
mod disabled;
#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::{Counter, Family, Gauge, Histogram, Registry};

use crate::log_limit::LogLimit;
use crate::throttle::Throttle;

/// The `Content-Type` of [`Metrics::render`]'s output.
#[cfg(feature = "metrics")]
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// How a handshake ended, for `tether_logins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginOutcome {
    Success,
    Refused,
    Timeout,
    Closed,
    Dropped,
    Evicted,
}

impl LoginOutcome {
    const ALL: [Self; 6] = [
        Self::Success,
        Self::Refused,
        Self::Timeout,
        Self::Closed,
        Self::Dropped,
        Self::Evicted,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Dropped => "dropped",
            Self::Evicted => "evicted",
        }
    }
}

const REFUSAL_CODES: [RefusalCode; 8] = [
    RefusalCode::Unauthorized,
    RefusalCode::Unsupported,
    RefusalCode::Throttled,
    RefusalCode::Unavailable,
    RefusalCode::Version,
    RefusalCode::Protocol,
    RefusalCode::Busy,
    RefusalCode::UnknownKey,
];

fn refusal_index(code: RefusalCode) -> usize {
    match code {
        RefusalCode::Unauthorized => 0,
        RefusalCode::Unsupported => 1,
        RefusalCode::Throttled => 2,
        RefusalCode::Unavailable => 3,
        RefusalCode::Version => 4,
        RefusalCode::Protocol => 5,
        RefusalCode::Busy => 6,
        RefusalCode::UnknownKey => 7,
    }
}

/// Whose call, for `tether_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    FromDevice,
    ToDevice,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    Error,
    Timeout,
    Closed,
    Rejected,
}

impl CallOutcome {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Error,
        Self::Timeout,
        Self::Closed,
        Self::Rejected,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a session ended, for `tether_session_ends_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Goodbye,
    Closed,
    IdleTimeout,
    Shutdown,
    Kicked,
    ProtocolError,
    Io,
}

impl EndReason {
    const ALL: [Self; 7] = [
        Self::Goodbye,
        Self::Closed,
        Self::IdleTimeout,
        Self::Shutdown,
        Self::Kicked,
        Self::ProtocolError,
        Self::Io,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Goodbye => "goodbye",
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Shutdown => "shutdown",
            Self::Kicked => "kicked",
            Self::ProtocolError => "protocol_error",
            Self::Io => "io",
        }
    }
}

/// Why a frame was rejected, for `tether_frames_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    HandshakeBadFrame,
    HandshakeUndecodable,
    HandshakeUnexpected,
    BadFrame,
    BadTag,
    Replayed,
    OutOfOrder,
    TooShort,
    Undecodable,
    UnknownReply,
    DuplicateCall,
}

impl Rejection {
    const ALL: [Self; 11] = [
        Self::HandshakeBadFrame,
        Self::HandshakeUndecodable,
        Self::HandshakeUnexpected,
        Self::BadFrame,
        Self::BadTag,
        Self::Replayed,
        Self::OutOfOrder,
        Self::TooShort,
        Self::Undecodable,
        Self::UnknownReply,
        Self::DuplicateCall,
    ];

    fn labels(self) -> Labels2 {
        let (phase, reason) = match self {
            Self::HandshakeBadFrame => ("handshake", "bad_frame"),
            Self::HandshakeUndecodable => ("handshake", "undecodable"),
            Self::HandshakeUnexpected => ("handshake", "unexpected"),
            Self::BadFrame => ("session", "bad_frame"),
            Self::BadTag => ("session", "bad_tag"),
            Self::Replayed => ("session", "replayed"),
            Self::OutOfOrder => ("session", "out_of_order"),
            Self::TooShort => ("session", "too_short"),
            Self::Undecodable => ("session", "undecodable"),
            Self::UnknownReply => ("session", "unknown_reply"),
            Self::DuplicateCall => ("session", "duplicate_call"),
        };
        [("phase", phase), ("reason", reason)]
    }
}

/// Handles of the call metrics of one direction (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct CallMetrics {
    outcomes: [Counter; 5],
    duration: Histogram,
}

impl CallMetrics {
    /// Records a finished call.
    pub(crate) fn record(&self, outcome: CallOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].inc();
        if outcome != CallOutcome::Rejected {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
}

/// Handles of the database metrics (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics {
    pub(crate) lookup_duration: Histogram,
    pub(crate) unavailable: Counter,
    pub(crate) query_errors: Counter,
    pub(crate) cache_hits: Counter,
}

/// Handles of the throttle metrics (cheap to clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct ThrottleMetrics {
    pub(crate) user_blocks: Counter,
    pub(crate) address_blocks: Counter,
    pub(crate) pair_blocks: Counter,
}

// Without the `metrics` feature, what only a scrape reads is never read.
struct Inner {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    registry: Registry,
    logins: [Counter; 6],
    logins_by_protocol: [Counter; 2],
    logins_by_server_key: [Counter; 2],
    refusals: [Counter; 8],
    handshakes_in_progress: Gauge,
    handshake_success: Histogram,
    handshake_refused: Histogram,
    throttle: ThrottleMetrics,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    throttled_users: Gauge,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    throttled_addresses: Gauge,
    sessions_active: Gauge,
    session_ends: [Counter; 7],
    from_device: CallMetrics,
    to_device: CallMetrics,
    store: StoreMetrics,
    rejections: [Counter; 11],
    forward: crate::forward::metrics::ForwardMetrics,
    revocations: crate::revalidate::RevocationMetrics,
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    admin_connections: Gauge,
    log_limit: LogLimit,
    /// Throttles whose blocked keys are counted at scrape time.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    throttles: Mutex<Vec<Weak<Throttle>>>,
}

/// The metrics of one server (or of several sharing a store). Cheap to
/// clone: clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_histogram(buckets: &'static [f64]) -> impl Fn() -> Histogram + Clone {
    move || Histogram::new(buckets.iter().copied())
}

/// Handshakes: PBKDF2 is the device's, so a login is network round trips
/// plus one database query.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const DB_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

impl Metrics {
    /// A fresh registry with every series at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tether");

        let logins = Family::<Labels1, Counter>::default();
        registry.register("logins", "Handshakes by how they ended", logins.clone());
        let logins =
            LoginOutcome::ALL.map(|o| logins.get_or_create_owned(&[("outcome", o.name())]));

        let by_protocol = Family::<Labels1, Counter>::default();
        registry.register(
            "logins_by_protocol",
            "Successful logins by protocol version (2: Noise, encrypted)",
            by_protocol.clone(),
        );
        let logins_by_protocol =
            ["1", "2"].map(|v| by_protocol.get_or_create_owned(&[("version", v)]));

        let by_key = Family::<Labels1, Counter>::default();
        registry.register(
            "logins_by_server_key",
            "Successful v2 NK logins by the server key the device pinned",
            by_key.clone(),
        );
        let logins_by_server_key =
            ["current", "previous"].map(|k| by_key.get_or_create_owned(&[("key", k)]));

        let refusals = Family::<Labels1, Counter>::default();
        registry.register("login_refusals", "Login refusals by code", refusals.clone());
        let refusals = REFUSAL_CODES.map(|c| refusals.get_or_create_owned(&[("code", c.as_str())]));

        let handshakes_in_progress = Gauge::default();
        registry.register(
            "handshakes_in_progress",
            "Connections between accept and welcome or refusal",
            handshakes_in_progress.clone(),
        );
        let handshake_duration = Family::<Labels1, Histogram, _>::new_with_constructor(
            seconds_histogram(HANDSHAKE_BUCKETS),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from accept to welcome or refusal",
            handshake_duration.clone(),
        );
        let handshake_success = handshake_duration.get_or_create_owned(&[("outcome", "success")]);
        let handshake_refused = handshake_duration.get_or_create_owned(&[("outcome", "refused")]);

        let blocks = Family::<Labels1, Counter>::default();
        registry.register(
            "throttle_blocks",
            "Failed logins that started or extended a throttle block",
            blocks.clone(),
        );
        let throttle = ThrottleMetrics {
            user_blocks: blocks.get_or_create_owned(&[("scope", "user")]),
            address_blocks: blocks.get_or_create_owned(&[("scope", "address")]),
            pair_blocks: blocks.get_or_create_owned(&[("scope", "pair")]),
        };
        let throttled_users = Gauge::default();
        registry.register(
            "throttled_users",
            "Usernames blocked by the throttle now",
            throttled_users.clone(),
        );
        let throttled_addresses = Gauge::default();
        registry.register(
            "throttled_addresses",
            "Source addresses (IPv6 by /64) blocked by the throttle now",
            throttled_addresses.clone(),
        );

        let sessions_active = Gauge::default();
        registry.register("sessions_active", "Live sessions", sessions_active.clone());
        let ends = Family::<Labels1, Counter>::default();
        registry.register("session_ends", "Sessions ended, by reason", ends.clone());
        let session_ends =
            EndReason::ALL.map(|r| ends.get_or_create_owned(&[("reason", r.name())]));

        let calls = Family::<Labels2, Counter>::default();
        registry.register("calls", "Calls by direction and outcome", calls.clone());
        let call_duration =
            Family::<Labels1, Histogram, _>::new_with_constructor(seconds_histogram(CALL_BUCKETS));
        registry.register(
            "call_duration_seconds",
            "Time from a call to its answer",
            call_duration.clone(),
        );
        let direction = |d: &'static str| CallMetrics {
            outcomes: CallOutcome::ALL
                .map(|o| calls.get_or_create_owned(&[("direction", d), ("outcome", o.name())])),
            duration: call_duration.get_or_create_owned(&[("direction", d)]),
        };
        let from_device = direction("from_device");
        let to_device = direction("to_device");

        let lookup_duration = Histogram::new(DB_BUCKETS.iter().copied());
        registry.register(
            "db_lookup_duration_seconds",
            "Credential lookups that reached the database",
            lookup_duration.clone(),
        );
        let db_errors = Family::<Labels1, Counter>::default();
        registry.register(
            "db_lookup_errors",
            "Failed credential lookups",
            db_errors.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "db_cache_hits",
            "Credential lookups answered by the cache",
            cache_hits.clone(),
        );
        let store = StoreMetrics {
            lookup_duration,
            unavailable: db_errors.get_or_create_owned(&[("kind", "unavailable")]),
            query_errors: db_errors.get_or_create_owned(&[("kind", "query")]),
            cache_hits,
        };

        let rejected = Family::<Labels2, Counter>::default();
        registry.register(
            "frames_rejected",
            "Frames that ended a login or a session, by reason",
            rejected.clone(),
        );
        let rejections = Rejection::ALL.map(|r| rejected.get_or_create_owned(&r.labels()));

        // Forwarding to Django: crate::forward::metrics.
        let forward = crate::forward::metrics::ForwardMetrics::register(&mut registry);
        // Revocations: crate::revalidate.
        let revocations = crate::revalidate::RevocationMetrics::register(&mut registry);
        let admin_connections = Gauge::default();
        registry.register(
            "admin_connections",
            "Open connections to the admin API",
            admin_connections.clone(),
        );
        let log_limit = LogLimit::register(&mut registry);

        Self {
            inner: Arc::new(Inner {
                logins_by_protocol,
                logins_by_server_key,
                registry,
                logins,
                refusals,
                handshakes_in_progress,
                handshake_success,
                handshake_refused,
                throttle,
                throttled_users,
                throttled_addresses,
                sessions_active,
                session_ends,
                from_device,
                to_device,
                store,
                rejections,
                forward,
                revocations,
                admin_connections,
                log_limit,
                throttles: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4; serve it
    /// with [`CONTENT_TYPE`]). Only with the `metrics` feature.
    #[cfg(feature = "metrics")]
    pub fn render(&self) -> String {
        let (mut users, mut addresses) = (0, 0);
        {
            let mut throttles = crate::realm::lock(&self.inner.throttles);
            throttles.retain(|t| t.strong_count() > 0);
            for throttle in throttles.iter().filter_map(Weak::upgrade) {
                let (u, a) = throttle.blocked_counts();
                users += u;
                addresses += a;
            }
        }
        self.inner.throttled_users.set(users as i64);
        self.inner.throttled_addresses.set(addresses as i64);
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Counts this throttle's blocked keys at each scrape.
    pub(crate) fn watch_throttle(&self, throttle: &Arc<Throttle>) {
        #[cfg(feature = "metrics")]
        crate::realm::lock(&self.inner.throttles).push(Arc::downgrade(throttle));
        #[cfg(not(feature = "metrics"))]
        let _ = throttle;
    }

    pub(crate) fn throttle(&self) -> ThrottleMetrics {
        self.inner.throttle.clone()
    }

    pub(crate) fn store(&self) -> StoreMetrics {
        self.inner.store.clone()
    }

    pub(crate) fn forward(&self) -> crate::forward::metrics::ForwardMetrics {
        self.inner.forward.clone()
    }

    pub(crate) fn revocations(&self) -> crate::revalidate::RevocationMetrics {
        self.inner.revocations.clone()
    }

    pub(crate) fn calls(&self, direction: Direction) -> CallMetrics {
        match direction {
            Direction::FromDevice => self.inner.from_device.clone(),
            Direction::ToDevice => self.inner.to_device.clone(),
        }
    }

    /// A connection entered the handshake; the returned guard leaves it.
    pub(crate) fn handshake_started(&self) -> HandshakeGuard {
        self.inner.handshakes_in_progress.inc();
        HandshakeGuard {
            gauge: self.inner.handshakes_in_progress.clone(),
        }
    }

    /// Records how a handshake ended.
    pub(crate) fn login(
        &self,
        outcome: LoginOutcome,
        refusal: Option<RefusalCode>,
        elapsed: Duration,
    ) {
        self.inner.logins[outcome as usize].inc();
        if let Some(code) = refusal {
            self.inner.refusals[refusal_index(code)].inc();
        }
        match outcome {
            LoginOutcome::Success => self.inner.handshake_success.observe(elapsed.as_secs_f64()),
            LoginOutcome::Refused => self.inner.handshake_refused.observe(elapsed.as_secs_f64()),
            _ => {}
        }
    }

    /// A login succeeded over protocol `version` (1 or 2).
    pub(crate) fn login_protocol(&self, version: u8) {
        let i = usize::from(version == 2);
        self.inner.logins_by_protocol[i].inc();
    }

    /// A v2 NK login succeeded with the device pinning the server's
    /// previous key (`true`) or its current one.
    pub(crate) fn login_server_key(&self, previous: bool) {
        self.inner.logins_by_server_key[usize::from(previous)].inc();
    }

    /// A session started; the returned guard ends it.
    pub(crate) fn session_started(&self) -> SessionGuard {
        self.inner.sessions_active.inc();
        SessionGuard {
            metrics: self.clone(),
        }
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.inner.rejections[why as usize].inc();
    }

    /// The rate limit of the log lines an outsider can cause
    /// ([`crate::log_limit`]).
    pub fn log_limit(&self) -> &LogLimit {
        &self.inner.log_limit
    }

    /// An admin connection opened; the returned guard closes it.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn admin_connection(&self) -> GaugeGuard {
        self.inner.admin_connections.inc();
        GaugeGuard {
            gauge: self.inner.admin_connections.clone(),
        }
    }
}

/// Decrements a gauge when dropped.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) struct GaugeGuard {
    gauge: Gauge,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Decrements `tether_handshakes_in_progress` when dropped.
pub(crate) struct HandshakeGuard {
    gauge: Gauge,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Decrements `tether_sessions_active` when dropped.
pub(crate) struct SessionGuard {
    metrics: Metrics,
}

impl SessionGuard {
    /// Records why the session ended.
    pub(crate) fn ended(&self, end: &crate::realm::SessionEnd) {
        use crate::realm::SessionEnd as E;
        let reason = match end {
            E::Goodbye(_) => EndReason::Goodbye,
            E::Closed => EndReason::Closed,
            E::IdleTimeout => EndReason::IdleTimeout,
            E::Shutdown => EndReason::Shutdown,
            E::Kicked(_) => EndReason::Kicked,
            E::ProtocolError(_) => EndReason::ProtocolError,
            E::Io(_) => EndReason::Io,
        };
        self.metrics.inner.session_ends[reason as usize].inc();
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics.inner.sessions_active.dec();
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start() {
        let m = Metrics::new();
        m.login(
            LoginOutcome::Refused,
            Some(RefusalCode::Throttled),
            Duration::from_millis(3),
        );
        let text = m.render();
        for line in [
            "tether_logins_total{outcome=\"success\"} 0",
            "tether_logins_total{outcome=\"refused\"} 1",
            "tether_login_refusals_total{code=\"throttled\"} 1",
            "tether_login_refusals_total{code=\"unauthorized\"} 0",
            "tether_handshakes_in_progress 0",
            "tether_sessions_active 0",
            "tether_throttled_addresses 0",
            "tether_calls_total{direction=\"to_device\",outcome=\"timeout\"} 0",
            "tether_frames_rejected_total{phase=\"session\",reason=\"bad_tag\"} 0",
            "tether_db_lookup_errors_total{kind=\"unavailable\"} 0",
            "tether_handshake_duration_seconds_count{outcome=\"refused\"} 1",
            "# TYPE tether_db_lookup_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let guard = m.handshake_started();
        assert!(m.render().contains("tether_handshakes_in_progress 1\n"));
        drop(guard);
        assert!(m.render().contains("tether_handshakes_in_progress 0\n"));
    }
}
