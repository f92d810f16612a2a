//! Login lookups on SQLite, answered by dedicated threads.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own and
//! hands every statement there and back over a channel, and its pool pings
//! a connection when it is taken and again when it is returned: three
//! thread hand-offs per lookup, which made the lookup half of the server's
//! CPU in a login (bench/README.md). Here [`READER_THREADS`] threads each
//! own a read-only connection with the lookup statement prepared once; a
//! lookup is queued, and a thread that wakes up answers every queued lookup
//! before it sleeps again, so under load one wake-up serves many logins.
//!
//! Read-only, no statement left open between lookups: the database is
//! never locked by an idle server (Django must be able to write at any
//! time). A connection that fails is dropped and reopened on the next
//! lookup (a database file that is missing or being restored comes back by
//! itself), so is one opened before the file was replaced by rename
//! (`FileWatch`, checked before each batch), and none is kept longer than
//! [`MAX_LIFETIME`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;
use tracing::debug;

use crate::realm::lock;

use super::sqlite_file::FileWatch;
use super::{StoreError, UserRecord};

/// Threads answering lookups.
pub const READER_THREADS: usize = 2;
/// Lookups one thread takes from the queue at a time.
const TAKE: usize = 64;
/// A connection is reopened after this long (as the sqlx pool's
/// `max_lifetime`).
pub const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

type Reply = oneshot::Sender<Result<Option<UserRecord>, StoreError>>;

struct Job {
    username: String,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// What a reader thread needs to run the lookup.
#[derive(Clone)]
struct Lookup {
    path: PathBuf,
    watch: Arc<FileWatch>,
    sql: Arc<str>,
    binds: Vec<String>,
    busy_timeout: Duration,
}

/// The lookup threads of one store. Dropping it stops them.
pub(super) struct SqliteReader {
    shared: Arc<Shared>,
}

impl SqliteReader {
    /// The database file of a `sqlite:` URL when lookups can be answered by
    /// opening it read-only; `None` (the sqlx pool answers instead) for
    /// in-memory databases and URLs with options other than `mode`.
    pub(super) fn file_of(url: &str) -> Option<PathBuf> {
        use std::str::FromStr as _;
        let (_, query) = url.split_once('?').unwrap_or((url, ""));
        let plain_options = query
            .split('&')
            .filter(|p| !p.is_empty())
            .all(|p| matches!(p, "mode=ro" | "mode=rw" | "mode=rwc"));
        if !plain_options || url.contains(":memory:") {
            return None;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        Some(options.get_filename().to_path_buf())
    }

    /// Starts the threads. Nothing is opened until the first lookup.
    pub(super) fn start(
        path: PathBuf,
        watch: Arc<FileWatch>,
        sql: Arc<str>,
        binds: Vec<String>,
        busy_timeout: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let lookup = Lookup {
            path,
            watch,
            sql,
            binds,
            busy_timeout,
        };
        for n in 0..READER_THREADS {
            let (shared, lookup) = (shared.clone(), lookup.clone());
            std::thread::Builder::new()
                .name(format!("tether-sqlite-{n}"))
                .spawn(move || serve(&shared, &lookup))?;
        }
        Ok(Self { shared })
    }

    /// Queues a lookup; the answer comes through the returned receiver.
    pub(super) fn lookup(
        &self,
        username: &str,
    ) -> oneshot::Receiver<Result<Option<UserRecord>, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let mut queue = lock(&self.shared.queue);
        let was_empty = queue.jobs.is_empty();
        queue.jobs.push_back(Job {
            username: username.to_string(),
            reply,
        });
        drop(queue);
        // A thread that finds work keeps going until the queue is empty.
        if was_empty {
            self.shared.ready.notify_one();
        }
        answer
    }

    /// Stops the threads (lookups still queued are answered first).
    pub(super) fn close(&self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

impl Drop for SqliteReader {
    fn drop(&mut self) {
        self.close();
    }
}

fn serve(shared: &Shared, lookup: &Lookup) {
    let mut conn: Option<(Connection, Instant)> = None;
    let mut jobs = Vec::with_capacity(TAKE);
    loop {
        {
            let mut queue = lock(&shared.queue);
            while queue.jobs.is_empty() {
                if queue.closed {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            let n = queue.jobs.len().min(TAKE);
            jobs.extend(queue.jobs.drain(..n));
            // More than one thread's share: wake another.
            if !queue.jobs.is_empty() {
                shared.ready.notify_one();
            }
        }
        // A file replaced since the connection was opened: read the new one.
        if conn.as_ref().is_some_and(|(_, opened)| {
            opened.elapsed() > MAX_LIFETIME || lookup.watch.is_stale(*opened)
        }) {
            conn = None;
        }
        for job in jobs.drain(..) {
            // The login gave up waiting (lookup timeout, client gone).
            if job.reply.is_closed() {
                continue;
            }
            let result = match &conn {
                Some((c, _)) => query(c, lookup, &job.username),
                None => {
                    // Taken before opening: a replacement noticed later
                    // always makes this connection stale.
                    let opened = Instant::now();
                    match open(lookup) {
                        Ok(c) => {
                            let r = query(&c, lookup, &job.username);
                            conn = Some((c, opened));
                            r
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let result = result.map_err(|e| {
                debug!(error = %e, "sqlite lookup failed; the connection will be reopened");
                conn = None;
                classify(e)
            });
            let _ = job.reply.send(result);
        }
    }
}

fn open(lookup: &Lookup) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        &lookup.path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Wait for a writer's lock at most as long as a lookup may take.
    conn.busy_timeout(lookup.busy_timeout)?;
    Ok(conn)
}

fn query(
    conn: &Connection,
    lookup: &Lookup,
    username: &str,
) -> rusqlite::Result<Option<UserRecord>> {
    let mut statement = conn.prepare_cached(&lookup.sql)?;
    let params = lookup
        .binds
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(username));
    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let flag = |i: usize| -> rusqlite::Result<Option<bool>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v != 0))
    };
    Ok(Some(UserRecord {
        id: row.get(0)?,
        username: row.get(1)?,
        password: row.get(2)?,
        is_active: flag(3)?.unwrap_or(false),
        is_superuser: flag(4)?.unwrap_or(false),
        has_perm: flag(5)?,
        in_group: flag(6)?,
    }))
}

/// Busy, locked, missing or unreadable: retry later. Anything else (no such
/// table or column, a type mismatch) is the configuration not matching the
/// schema.
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::CannotOpen
                    | C::SystemIoFailure
                    | C::NotADatabase
                    | C::DatabaseCorrupt
                    | C::OutOfMemory
                    | C::FileLockingProtocolFailed
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Query(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_urls_are_read_directly() {
        assert_eq!(
            SqliteReader::file_of("sqlite:///tmp/db.sqlite3"),
            Some(PathBuf::from("/tmp/db.sqlite3"))
        );
        assert_eq!(
            SqliteReader::file_of("sqlite://db.sqlite3?mode=rwc"),
            Some(PathBuf::from("db.sqlite3"))
        );
        assert_eq!(SqliteReader::file_of("sqlite::memory:"), None);
        assert_eq!(SqliteReader::file_of("sqlite://x.db?mode=memory"), None);
        assert_eq!(SqliteReader::file_of("sqlite://x.db?immutable=1"), None);
    }
}
