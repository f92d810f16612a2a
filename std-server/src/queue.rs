//! The session's queue of messages from other tasks ([`Outbound`]): the
//! [`Mind`](crate::Mind)'s calls and notifications, the answers of calls
//! that had to wait.
//!
//! A bounded multi-producer, single-consumer queue like tokio's `mpsc`,
//! but sized for a session that is idle almost always: it lives inside the
//! mind's shared state and holds no allocation while empty (a `VecDeque`
//! allocates on the first message). tokio's bounded channel costs an idle
//! session ~1.1 KiB: its shared state is cache-line padded (512 bytes with
//! the `Arc`) and its first block of 32 slots is allocated up front (544
//! bytes) (bench/README.md, issue 14).
//!
//! Senders wait for room (a semaphore permit per queued message, given back
//! when the session takes it); [`close`](Queue::close) fails every sender,
//! waiting or later, and drops what was queued. The consumer waits by
//! polling ([`poll_recv`](Queue::poll_recv)): its waker is kept beside the
//! messages, so a session waiting for one holds no waiter in its future.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use tokio::sync::Semaphore;

use crate::realm::lock;
use crate::session::Outbound;

/// The queue was closed: the session has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// The messages, and the consumer's waker when it waits.
#[derive(Debug, Default)]
struct Items {
    queued: VecDeque<Outbound>,
    consumer: Option<Waker>,
}

/// A bounded queue of [`Outbound`] messages with one consumer, the
/// session's task.
#[derive(Debug)]
pub(crate) struct Queue {
    items: Mutex<Items>,
    /// Room left; closed with the queue.
    room: Semaphore,
}

impl Queue {
    /// A queue of `capacity` messages (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(Items::default()),
            room: Semaphore::new(capacity.max(1)),
        }
    }

    /// Queues `o`, waiting for room; fails once the queue is closed.
    /// Cancel-safe: dropped before it completes, `o` was not queued.
    pub(crate) async fn send(&self, o: Outbound) -> Result<(), Closed> {
        let permit = self.room.acquire().await.map_err(|_| Closed)?;
        let consumer;
        {
            let mut items = lock(&self.items);
            // Checked under the lock that `close` drains under: nothing is
            // queued after the drain.
            if self.room.is_closed() {
                return Err(Closed);
            }
            items.queued.push_back(o);
            consumer = items.consumer.take();
        }
        permit.forget();
        if let Some(waker) = consumer {
            waker.wake();
        }
        Ok(())
    }

    /// The next message, without waiting.
    pub(crate) fn try_recv(&self) -> Option<Outbound> {
        let o = lock(&self.items).queued.pop_front()?;
        self.room.add_permits(1);
        Some(o)
    }

    /// The next message, waiting for one (for the consumer only; cancel-safe).
    pub(crate) async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message, or `Pending` with the consumer's waker kept until
    /// a message comes or [`wake`](Self::wake) (for the consumer only).
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut items = lock(&self.items);
        match items.queued.pop_front() {
            Some(o) => {
                drop(items);
                self.room.add_permits(1);
                Poll::Ready(o)
            }
            None => {
                items.register(cx);
                Poll::Pending
            }
        }
    }

    /// Forgets the consumer's waker: it is awake, and polls again before
    /// it waits.
    pub(crate) fn unregister(&self) {
        let consumer = lock(&self.items).consumer.take();
        drop(consumer);
    }

    /// Fails every sender from now on and drops what is queued (a
    /// [`Mind`](crate::Mind) call's waiter then learns the session closed).
    pub(crate) fn close(&self) {
        self.room.close();
        let dropped = std::mem::take(&mut lock(&self.items).queued);
        drop(dropped);
    }
}

impl Items {
    fn register(&mut self, cx: &mut Context<'_>) {
        match &mut self.consumer {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn notify(n: u8) -> Outbound {
        Outbound::Notify(Box::new((n.to_string(), vec![n])))
    }

    fn id(o: &Outbound) -> u8 {
        match o {
            Outbound::Notify(b) => b.1[0],
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn keeps_order_bounds_and_closes() {
        let q = Arc::new(Queue::new(2));
        q.send(notify(1)).await.unwrap();
        q.send(notify(2)).await.unwrap();
        // Full: the third sender waits until the consumer takes one.
        let q2 = q.clone();
        let third = tokio::spawn(async move { q2.send(notify(3)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        assert_eq!(id(&q.recv().await), 1);
        third.await.unwrap().unwrap();
        assert_eq!(id(&q.try_recv().unwrap()), 2);
        assert_eq!(id(&q.recv().await), 3);
        assert!(q.try_recv().is_none());
        // A waiting consumer is woken by a later send.
        let q2 = q.clone();
        let waiting = tokio::spawn(async move { id(&q2.recv().await) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.send(notify(4)).await.unwrap();
        assert_eq!(waiting.await.unwrap(), 4);
        // Closed: queued messages are dropped, senders fail.
        q.send(notify(5)).await.unwrap();
        q.close();
        assert!(q.try_recv().is_none());
        assert_eq!(q.send(notify(6)).await, Err(Closed));
    }

    #[tokio::test]
    async fn close_fails_a_waiting_sender() {
        let q = Arc::new(Queue::new(1));
        q.send(notify(1)).await.unwrap();
        let q2 = q.clone();
        let waiting = tokio::spawn(async move { q2.send(notify(2)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert_eq!(waiting.await.unwrap(), Err(Closed));
    }
}
