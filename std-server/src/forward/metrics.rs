//! The forwarding series of `/metrics`, registered by
//! [`Metrics::new`](crate::Metrics::new) with every label value up front.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tether_forward_calls_total` | counter | `outcome`: `ok` (2xx), `client_error` (4xx), `server_error` (5xx, or another status), `timeout`, `unreachable` (connection refused, reset, DNS), `busy` (over a limit: not sent), `too_large` (a reply larger than the device's frame) |
//! | `tether_forward_call_duration_seconds` | histogram | | forwarded calls that were sent, to the end of the answer |
//! | `tether_forward_deliveries_total` | counter | `kind`: `notify`, `event`; `outcome`: `delivered` (2xx), `refused` (another 4xx: not retried), `dropped` (the queue was full), `abandoned` (still queued at shutdown) |
//! | `tether_forward_delivery_retries_total` | counter | | attempts that failed with 408, 429, 5xx, a timeout or no connection (retried) |
//! | `tether_forward_queue_depth` | gauge | | notifications and events waiting, all sessions |

use crate::metrics::{Counter, Family, Gauge, Histogram, Registry};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// How a forwarded call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    ClientError,
    ServerError,
    Timeout,
    Unreachable,
    Busy,
    TooLarge,
}

impl CallOutcome {
    const ALL: [Self; 7] = [
        Self::Ok,
        Self::ClientError,
        Self::ServerError,
        Self::Timeout,
        Self::Unreachable,
        Self::Busy,
        Self::TooLarge,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Busy => "busy",
            Self::TooLarge => "too_large",
        }
    }
}

/// What a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryKind {
    Notify,
    Event,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryOutcome {
    Delivered,
    Refused,
    Dropped,
    Abandoned,
}

impl DeliveryOutcome {
    const ALL: [Self; 4] = [
        Self::Delivered,
        Self::Refused,
        Self::Dropped,
        Self::Abandoned,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Refused => "refused",
            Self::Dropped => "dropped",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Handles of the forwarding series (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct ForwardMetrics {
    calls: [Counter; 7],
    call_duration: Histogram,
    /// `[notify, event]` x outcome.
    deliveries: [[Counter; 4]; 2],
    pub(crate) retries: Counter,
    pub(crate) queue_depth: Gauge,
}

const CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl ForwardMetrics {
    /// Registers the series (all at zero) and returns their handles.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let calls = Family::<Labels1, Counter>::default();
        registry.register(
            "forward_calls",
            "Device calls forwarded to the Django project, by outcome",
            calls.clone(),
        );
        let call_duration = Histogram::new(CALL_BUCKETS.iter().copied());
        registry.register(
            "forward_call_duration_seconds",
            "Forwarded calls that were sent: request to the end of the answer",
            call_duration.clone(),
        );
        let deliveries = Family::<Labels2, Counter>::default();
        registry.register(
            "forward_deliveries",
            "Notifications and session events for the Django project, by outcome",
            deliveries.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "forward_delivery_retries",
            "Delivery attempts that failed and are retried (408, 429, 5xx, timeout, no connection)",
            retries.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "forward_queue_depth",
            "Notifications and events waiting to be delivered, all sessions",
            queue_depth.clone(),
        );
        let kind = |k: &'static str| {
            DeliveryOutcome::ALL
                .map(|o| deliveries.get_or_create_owned(&[("kind", k), ("outcome", o.name())]))
        };
        Self {
            calls: CallOutcome::ALL.map(|o| calls.get_or_create_owned(&[("outcome", o.name())])),
            call_duration,
            deliveries: [kind("notify"), kind("event")],
            retries,
            queue_depth,
        }
    }

    /// Counts a forwarded call; `sent` is how long the HTTP exchange took
    /// (`None`: it was not sent).
    pub(crate) fn call(&self, outcome: CallOutcome, sent: Option<std::time::Duration>) {
        self.calls[outcome as usize].inc();
        if let Some(d) = sent {
            self.call_duration.observe(d.as_secs_f64());
        }
    }

    /// Counts a delivery (or `n` of them, for a dropped or abandoned batch).
    pub(crate) fn delivery(&self, kind: DeliveryKind, outcome: DeliveryOutcome, n: u64) {
        self.deliveries[kind as usize][outcome as usize].inc_by(n);
    }
}
