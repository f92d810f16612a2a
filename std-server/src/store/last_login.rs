//! `last_login`, written in batches by one background task.
//!
//! Django's `update_last_login` writes one row per login. Done the same way
//! here, every login would be a commit of its own, and on Django's default
//! SQLite database (rollback journal) a commit creates, syncs and deletes
//! the journal while holding the write lock: logins would be serialised at
//! the disk's commit rate (about 700/s on the development machine, bench/
//! README.md). Instead each login queues `(user id, time)`, and one task
//! writes what is queued every [`FLUSH_INTERVAL`] (sooner once
//! [`FLUSH_ROWS`] are waiting) in one transaction, with one `UPDATE ...
//! WHERE id IN (...)` per [`BATCH_ROWS`] logins. A batch only spans logins
//! less than [`BATCH_SPAN`] apart and writes the latest of their times, so a
//! stored `last_login` is never more than that after the real login, even
//! when writes were held up.
//!
//! One commit per flush, and flushes a second apart, because on that same
//! rollback-journal database a commit also stops the login lookups: while
//! the writer holds its exclusive lock (taking it, syncing, deleting the
//! journal: 1-5 ms here) every reader waits, and SQLite's busy handler
//! sleeps at least a millisecond before it looks again. At 100 ms rounds
//! (sooner at 500 queued), 64 clients logging in paid about a tenth of
//! their rate for it (bench/README.md).
//!
//! A failed write keeps its logins queued for the next round (at most
//! [`MAX_QUEUED`]; beyond that, new logins are counted and dropped, with a
//! warning). `LastLoginWriter::close` writes what is left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sqlx::{AnyPool, AssertSqlSafe};
use tracing::warn;

use crate::realm::lock;

use super::{Backend, StoreError, django_timestamp};

/// How often queued logins are written (one transaction each time).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Queued logins that start a flush before [`FLUSH_INTERVAL`] is up.
pub const FLUSH_ROWS: usize = 20_000;
/// Rows per `UPDATE` statement.
pub const BATCH_ROWS: usize = 500;
/// Logins further apart than this never share one `UPDATE`'s timestamp.
pub const BATCH_SPAN: Duration = Duration::from_secs(1);
/// Logins kept queued while the database refuses writes.
pub const MAX_QUEUED: usize = 100_000;

/// Queues logins and writes them in batches (see the module docs).
pub(super) struct LastLoginWriter {
    shared: Arc<Shared>,
}

struct Shared {
    pool: AnyPool,
    backend: Backend,
    /// `UPDATE <table> SET "last_login" = `, the value and the id list follow.
    update_prefix: String,
    id_column: String,
    queued: Mutex<Vec<(i64, SystemTime)>>,
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
    /// One flush at a time, so that close() waits for the task's.
    flushing: tokio::sync::Mutex<()>,
    task_started: AtomicBool,
    closed: AtomicBool,
    timeout: Duration,
}

impl LastLoginWriter {
    pub(super) fn new(pool: AnyPool, backend: Backend, table: &str, timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                backend,
                update_prefix: format!(
                    "UPDATE {} SET {} = ",
                    backend.quote(table),
                    backend.quote("last_login")
                ),
                id_column: backend.quote("id"),
                queued: Mutex::new(Vec::new()),
                dropped: AtomicU64::new(0),
                wake: tokio::sync::Notify::new(),
                flushing: tokio::sync::Mutex::new(()),
                task_started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                timeout,
            }),
        }
    }

    /// Queues `last_login = now` for `user_id`. Must be called within a
    /// tokio runtime (the first call starts the writer task).
    pub(super) fn queue(&self, user_id: i64) {
        let shared = &self.shared;
        let len = {
            let mut queued = lock(&shared.queued);
            if queued.len() >= MAX_QUEUED {
                drop(queued);
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queued.push((user_id, SystemTime::now()));
            queued.len()
        };
        if !shared.task_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(shared.clone()));
        }
        if len == FLUSH_ROWS {
            shared.wake.notify_one();
        }
    }

    /// Writes what is queued now (the task does it by itself; this is for
    /// shutdown and tests).
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush().await
    }

    /// Stops the task after writing what is queued.
    pub(super) async fn close(&self) -> Result<(), StoreError> {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        self.shared.flush().await
    }
}

impl Drop for LastLoginWriter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            _ = shared.wake.notified() => {}
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = shared.flush().await {
            let queued = lock(&shared.queued).len();
            warn!(error = %e, queued, "could not write last_login; will retry");
        }
    }
}

impl Shared {
    async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                dropped,
                "last_login queue full ({MAX_QUEUED} logins) while the database refused writes; those logins were not recorded"
            );
        }
        let mut logins = std::mem::take(&mut *lock(&self.queued));
        if logins.is_empty() {
            return Ok(());
        }
        logins.sort_unstable_by_key(|&(_, at)| at);
        let written = tokio::time::timeout(self.timeout, self.write_all(&logins))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "last_login update: no answer within {} ms",
                    self.timeout.as_millis()
                )))
            });
        if written.is_err() {
            // Nothing was committed: keep every login, in front of what
            // came since.
            let mut queued = lock(&self.queued);
            let newer = std::mem::take(&mut *queued);
            logins.extend(newer);
            logins.truncate(MAX_QUEUED);
            *queued = logins;
        }
        written
    }

    /// Every batch of `logins` (sorted by time) in one transaction.
    async fn write_all(&self, logins: &[(i64, SystemTime)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        let mut rest = logins;
        while !rest.is_empty() {
            let n = batch_len(rest);
            self.write(&mut tx, &rest[..n]).await?;
            rest = &rest[n..];
        }
        tx.commit().await.map_err(StoreError::from_sqlx)
    }

    /// One `UPDATE` for a batch, at the batch's latest time.
    async fn write(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        batch: &[(i64, SystemTime)],
    ) -> Result<(), StoreError> {
        let Some(&(_, latest)) = batch.last() else {
            return Ok(());
        };
        let mut ids: Vec<i64> = batch.iter().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        let value = match self.backend {
            Backend::Postgres => "CAST($1 AS TIMESTAMPTZ)".to_string(),
            b => b.placeholder(1),
        };
        let marks: Vec<String> = (0..ids.len())
            .map(|i| self.backend.placeholder(i + 2))
            .collect();
        let sql = format!(
            "{}{value} WHERE {} IN ({})",
            self.update_prefix,
            self.id_column,
            marks.join(", ")
        );
        let mut query =
            sqlx::query(AssertSqlSafe(sql)).bind(django_timestamp(latest, self.backend));
        for id in ids {
            query = query.bind(id);
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }
}

/// How many of `logins` (sorted by time) go into the next `UPDATE`: at most
/// [`BATCH_ROWS`], all within [`BATCH_SPAN`] of the first.
fn batch_len(logins: &[(i64, SystemTime)]) -> usize {
    let Some(&(_, first)) = logins.first() else {
        return 0;
    };
    logins
        .iter()
        .take(BATCH_ROWS)
        .take_while(|&&(_, at)| at.duration_since(first).unwrap_or_default() <= BATCH_SPAN)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_in_rows_and_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(batch_len(&[]), 0);
        let close: Vec<_> = (0..1200).map(|i| (i, ms(i as u64 / 10))).collect();
        assert_eq!(batch_len(&close), BATCH_ROWS);
        let spread = [(1, ms(0)), (2, ms(400)), (3, ms(1000)), (4, ms(1001))];
        assert_eq!(batch_len(&spread), 3);
        assert_eq!(batch_len(&spread[3..]), 1);
    }
}
