//! Notifications and session events, delivered to the Django project per
//! session: in order, one at a time, at least once (docs/DJANGO.md 1.4).
//!
//! Each session has a queue. A task delivers it while it holds anything
//! (started by the first item, finished when the queue is empty, so an idle
//! session costs no task): a `2xx` is delivered; `408`, `429`, `5xx`, a
//! timeout or no connection is retried after [`BACKOFF_START`], doubling up
//! to [`BACKOFF_MAX`]; any other answer counts as delivered and refused. An
//! item keeps its request id on every retry, so Django can drop a
//! duplicate. The queue outlives the session: what the device sent is
//! delivered after it disconnects.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use reqwest::StatusCode;
use tracing::{Instrument as _, debug, warn};

use super::metrics::{DeliveryKind, DeliveryOutcome};
use super::{BACKOFF_MAX, BACKOFF_START, Exchange, Inner, MAX_QUEUED_BYTES, Origin};
use crate::realm::lock;

/// One notification or event.
pub(crate) struct Item {
    pub kind: DeliveryKind,
    /// `notify/{quote(N)}` or `event`.
    pub route: String,
    pub body: Bytes,
    pub content_type: &'static str,
    /// The same on every attempt.
    pub request_id: String,
}

#[derive(Default)]
struct State {
    items: VecDeque<Arc<Item>>,
    /// Notifications among `items` (events are not bounded).
    notifications: usize,
    /// A task is delivering this queue.
    running: bool,
}

/// One session's queue.
pub(crate) struct Queue {
    origin: Origin,
    state: std::sync::Mutex<State>,
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Refused(String),
    Retry(String),
}

impl Queue {
    pub(crate) fn new(origin: Origin) -> Self {
        Self {
            origin,
            state: Default::default(),
        }
    }

    /// Appends an item. A notification is only queued while fewer than
    /// the session's bound are waiting and all queues together hold less
    /// than [`MAX_QUEUED_BYTES`] (`false`: dropped); events always are.
    /// Starts the delivery task if none runs.
    pub(crate) fn push(self: &Arc<Self>, item: Item, inner: &Arc<Inner>) -> bool {
        let mut state = lock(&self.state);
        if item.kind == DeliveryKind::Notify {
            let bytes = item.body.len();
            if state.notifications >= inner.queue
                || inner.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES
            {
                return false;
            }
            inner.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            state.notifications += 1;
        }
        state.items.push_back(Arc::new(item));
        inner.metrics.queue_depth.inc();
        if !state.running {
            state.running = true;
            let (queue, inner2) = (self.clone(), inner.clone());
            let span = tracing::debug_span!("delivery", session = %self.origin.session);
            inner.tracker.spawn(deliver(queue, inner2).instrument(span));
        }
        true
    }

    /// The first item, or `None` (and the task stops) when empty.
    fn front(&self) -> Option<Arc<Item>> {
        let mut state = lock(&self.state);
        let front = state.items.front().cloned();
        if front.is_none() {
            state.running = false;
        }
        front
    }

    /// Removes the first item (delivered or refused).
    fn pop(&self, inner: &Inner) {
        let mut state = lock(&self.state);
        if let Some(item) = state.items.pop_front() {
            inner.metrics.queue_depth.dec();
            if item.kind == DeliveryKind::Notify {
                state.notifications -= 1;
                inner
                    .queued_bytes
                    .fetch_sub(item.body.len(), Ordering::Relaxed);
            }
        }
    }

    /// Gives up on everything queued (shutdown).
    fn abandon(&self, inner: &Inner) {
        let mut state = lock(&self.state);
        for item in state.items.drain(..) {
            inner.metrics.queue_depth.dec();
            inner
                .metrics
                .delivery(item.kind, DeliveryOutcome::Abandoned, 1);
            inner.abandoned.fetch_add(1, Ordering::Relaxed);
            if item.kind == DeliveryKind::Notify {
                inner
                    .queued_bytes
                    .fetch_sub(item.body.len(), Ordering::Relaxed);
            }
        }
        state.notifications = 0;
        state.running = false;
    }
}

/// Delivers a queue until it is empty (or the forwarder stops).
async fn deliver(queue: Arc<Queue>, inner: Arc<Inner>) {
    let mut backoff = BACKOFF_START;
    while let Some(item) = queue.front() {
        let attempt = async {
            let _slot = inner.deliveries.acquire().await;
            attempt(&inner, &queue.origin, &item).await
        };
        let attempt = tokio::select! {
            a = attempt => a,
            _ = inner.stop.cancelled() => return queue.abandon(&inner),
        };
        match attempt {
            Attempt::Delivered => {
                debug!(route = %item.route, request_id = %item.request_id, "delivered");
                inner
                    .metrics
                    .delivery(item.kind, DeliveryOutcome::Delivered, 1);
                queue.pop(&inner);
                backoff = BACKOFF_START;
            }
            Attempt::Refused(why) => {
                inner
                    .metrics
                    .delivery(item.kind, DeliveryOutcome::Refused, 1);
                if let Some(more) = inner.refusal_log.check() {
                    warn!(
                        route = %item.route,
                        request_id = %item.request_id,
                        refusal = %why,
                        also_refused_since_last_report = more,
                        "the application refused a delivery; not retried"
                    );
                }
                queue.pop(&inner);
                backoff = BACKOFF_START;
            }
            Attempt::Retry(why) => {
                inner.metrics.retries.inc();
                if let Some(more) = inner.retry_log.check() {
                    warn!(
                        route = %item.route,
                        request_id = %item.request_id,
                        error = %why,
                        retry_in_ms = backoff.as_millis() as u64,
                        also_failed_since_last_report = more,
                        "delivery to the application failed; retrying"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.stop.cancelled() => return queue.abandon(&inner),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn attempt(inner: &Inner, origin: &Origin, item: &Item) -> Attempt {
    let exchange = inner
        .post(
            &item.route,
            &item.request_id,
            origin,
            item.body.clone(),
            item.content_type,
            // The body is only read to keep the connection reusable.
            |_, _| Some(4096),
        )
        .await;
    match exchange {
        Exchange::Timeout => Attempt::Retry(inner.timeout_message()),
        Exchange::Unreachable(cause) => Attempt::Retry(inner.unreachable_message(&cause)),
        Exchange::Answered { status, .. } => {
            let text = super::status_text(status);
            if status.is_success() {
                Attempt::Delivered
            } else if status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
            {
                Attempt::Retry(format!("HTTP {text}"))
            } else {
                Attempt::Refused(format!("HTTP {text}"))
            }
        }
    }
}
