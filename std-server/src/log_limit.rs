//! Rate-limited log lines for what an outsider can make happen at will:
//! refused logins, connections shed or timed out, failed accepts, bad
//! frames, admin requests without the token. Written one per event they
//! would let a flood of connections write the log at the flood's rate (22,425
//! lines/s, 132 MB in two minutes, measured before this module).
//!
//! Each [`Noisy`] event may write [`LogLimitConfig::burst`] lines per
//! [`LogLimitConfig::interval`]; beyond that its lines are counted, not
//! written, and when the interval ends one summary line says how many were
//! left out, per event:
//!
//! ```text
//! WARN tether_server::log_limit: log lines left out (rate limit) interval_secs=10.0 suppressed=21990 counts="login_refused=21980 connection_dropped=10"
//! ```
//!
//! Every event is counted in `/metrics` whether or not its line was
//! written: `tether_log_events_total{event}` and
//! `tether_log_lines_suppressed_total{event}`.
//!
//! A call site asks before it logs:
//!
//! ```ignore
//! if metrics.log_limit().allow(Noisy::LoginRefused) {
//!     info!(%peer, code = %code, "login refused");
//! }
//! ```

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::metrics::{Counter, Family, Registry};

/// A log line an outsider can cause as often as they like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noisy {
    /// A login refused (any code).
    LoginRefused,
    /// A login that did not finish within the handshake timeout.
    LoginTimedOut,
    /// A connection closed at once: too many already waiting.
    ConnectionDropped,
    /// The device listener's `accept` failed.
    AcceptFailed,
    /// No file descriptor left: a device refused `busy` at accept.
    OutOfDescriptors,
    /// A session ended by a frame that failed authentication or decoding.
    SessionProtocolError,
    /// The admin listener's `accept` failed.
    AdminAcceptFailed,
    /// An admin connection closed to make room (all connections taken).
    AdminConnectionShed,
    /// An admin connection closed by its header or idle timeout.
    AdminConnectionTimedOut,
    /// An admin request answered 401 (no or a wrong token).
    AdminUnauthorized,
}

impl Noisy {
    /// Every event, in the order of [`Self::name`]'s table.
    pub const ALL: [Self; 10] = [
        Self::LoginRefused,
        Self::LoginTimedOut,
        Self::ConnectionDropped,
        Self::AcceptFailed,
        Self::OutOfDescriptors,
        Self::SessionProtocolError,
        Self::AdminAcceptFailed,
        Self::AdminConnectionShed,
        Self::AdminConnectionTimedOut,
        Self::AdminUnauthorized,
    ];

    /// The event's name in the summary line and the metrics' `event` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::LoginRefused => "login_refused",
            Self::LoginTimedOut => "login_timed_out",
            Self::ConnectionDropped => "connection_dropped",
            Self::AcceptFailed => "accept_failed",
            Self::OutOfDescriptors => "out_of_descriptors",
            Self::SessionProtocolError => "session_protocol_error",
            Self::AdminAcceptFailed => "admin_accept_failed",
            Self::AdminConnectionShed => "admin_connection_shed",
            Self::AdminConnectionTimedOut => "admin_connection_timed_out",
            Self::AdminUnauthorized => "admin_unauthorized",
        }
    }
}

/// How many lines of each [`Noisy`] event are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimitConfig {
    /// Lines of one event written per interval (default 10).
    pub burst: u32,
    /// The interval; a summary line follows each one in which lines were
    /// left out (default 10 s).
    pub interval: Duration,
}

impl Default for LogLimitConfig {
    fn default() -> Self {
        Self {
            burst: 10,
            interval: Duration::from_secs(10),
        }
    }
}

const EVENTS: usize = Noisy::ALL.len();

struct Window {
    config: LogLimitConfig,
    started: Instant,
    written: [u32; EVENTS],
    suppressed: [u64; EVENTS],
    /// A task will write the summary at the end of this window.
    summary_due: bool,
}

struct Inner {
    window: Mutex<Window>,
    events: [Counter; EVENTS],
    suppressed: [Counter; EVENTS],
}

/// The rate limiter of one server's noisy log lines (one per
/// [`Metrics`](crate::Metrics), reached with
/// [`Metrics::log_limit`](crate::Metrics::log_limit)). Cheap to clone.
#[derive(Clone)]
pub struct LogLimit {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLimit")
            .field("config", &lock(&self.inner.window).config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogLimit {
    /// A limiter whose counters are registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let events = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "log_events",
            "Events an outsider can cause at will, logged or not (see log_lines_suppressed)",
            events.clone(),
        );
        let suppressed = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "log_lines_suppressed",
            "Log lines of those events left out by the rate limit",
            suppressed.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                window: Mutex::new(Window {
                    config: LogLimitConfig::default(),
                    started: Instant::now(),
                    written: [0; EVENTS],
                    suppressed: [0; EVENTS],
                    summary_due: false,
                }),
                events: Noisy::ALL.map(|e| events.get_or_create_owned(&[("event", e.name())])),
                suppressed: Noisy::ALL
                    .map(|e| suppressed.get_or_create_owned(&[("event", e.name())])),
            }),
        }
    }

    /// Changes the limits (from the next event on).
    pub fn configure(&self, config: LogLimitConfig) {
        lock(&self.inner.window).config = LogLimitConfig {
            interval: config.interval.max(Duration::from_millis(1)),
            ..config
        };
    }

    /// Counts one `event`; `true` when its line may be written.
    pub fn allow(&self, event: Noisy) -> bool {
        let i = event as usize;
        self.inner.events[i].inc();
        let now = Instant::now();
        let mut w = lock(&self.inner.window);
        if now >= w.started + w.config.interval && !w.summary_due {
            // A quiet window ended with nothing left out: start a new one.
            w.started = now;
            w.written = [0; EVENTS];
        }
        if w.written[i] < w.config.burst {
            w.written[i] += 1;
            return true;
        }
        w.suppressed[i] += 1;
        self.inner.suppressed[i].inc();
        if !w.summary_due {
            w.summary_due = true;
            let end = w.started + w.config.interval;
            drop(w);
            self.summary_at(end);
        }
        false
    }

    /// Writes the summary of the window ending at `end` then (in a task;
    /// without a runtime, at once).
    fn summary_at(&self, end: Instant) {
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep_until(end).await;
                    this.summary();
                });
            }
            Err(_) => this.summary(),
        }
    }

    /// Writes the summary line of the current window and starts a new one.
    fn summary(&self) {
        let mut w = lock(&self.inner.window);
        let total: u64 = w.suppressed.iter().sum();
        let mut counts = String::new();
        for (event, n) in Noisy::ALL.iter().zip(w.suppressed) {
            if n > 0 {
                if !counts.is_empty() {
                    counts.push(' ');
                }
                let _ = write!(counts, "{}={n}", event.name());
            }
        }
        let interval_secs = w.config.interval.as_secs_f64();
        w.started = Instant::now();
        w.written = [0; EVENTS];
        w.suppressed = [0; EVENTS];
        w.summary_due = false;
        drop(w);
        if total > 0 {
            warn!(
                interval_secs,
                suppressed = total,
                counts = counts.as_str(),
                "log lines left out (rate limit)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Log lines captured from the current thread's subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&lock(&self.0))
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    #[cfg(feature = "metrics")]
    fn metric(registry: &Registry, series: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_writes_a_bounded_number_of_lines_and_one_summary_per_interval() {
        let captured = Captured::default();
        let writer = captured.clone();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        let mut registry = Registry::default();
        let limit = LogLimit::register(&mut registry);
        limit.configure(LogLimitConfig {
            burst: 3,
            interval: Duration::from_secs(10),
        });
        let flood = |n: usize, event: Noisy| {
            for i in 0..n {
                if limit.allow(event) {
                    tracing::info!(i, event = event.name(), "noisy line");
                }
            }
        };
        flood(10_000, Noisy::LoginRefused);
        flood(5, Noisy::ConnectionDropped);
        flood(2, Noisy::AdminUnauthorized);
        // Within the interval: the burst of each event, no summary yet.
        let lines = captured.lines();
        assert_eq!(lines.len(), 3 + 3 + 2, "{lines:#?}");
        assert!(lines.iter().all(|l| l.contains("noisy line")));
        // The interval ends: one summary with the counts.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let lines = captured.lines();
        assert_eq!(lines.len(), 9, "{lines:#?}");
        let summary = &lines[8];
        assert!(summary.contains("WARN"), "{summary}");
        assert!(summary.contains("log lines left out (rate limit)"));
        assert!(summary.contains("suppressed=9999"), "{summary}");
        assert!(
            summary.contains(r#"counts="login_refused=9997 connection_dropped=2""#),
            "{summary}"
        );
        #[cfg(feature = "metrics")]
        {
            assert_eq!(
                metric(&registry, r#"log_events_total{event="login_refused"}"#),
                10_000
            );
            assert_eq!(
                metric(
                    &registry,
                    r#"log_lines_suppressed_total{event="login_refused"}"#
                ),
                9_997
            );
            assert_eq!(
                metric(
                    &registry,
                    r#"log_lines_suppressed_total{event="admin_unauthorized"}"#
                ),
                0
            );
        }
        // The next interval has its own burst, and a quiet one no summary.
        flood(4, Noisy::LoginRefused);
        tokio::time::sleep(Duration::from_secs(11)).await;
        flood(1, Noisy::LoginRefused);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let lines = captured.lines();
        assert_eq!(lines.len(), 9 + 3 + 1 + 1, "{lines:#?}");
        assert!(
            lines[12].contains(r#"counts="login_refused=1""#),
            "{lines:#?}"
        );
        assert!(lines[13].contains("noisy line"));
    }
}
