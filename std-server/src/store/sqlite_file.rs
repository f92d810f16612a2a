//! A SQLite database file replaced by rename (`mv`, `rsync`, a restore
//! from backup) is a new file at the same path: a connection opened before
//! keeps reading the old, deleted one. [`FileWatch`] tells: it compares the
//! path's device and inode with what it saw last, and every connection
//! opened before a change it noticed is stale. The lookup threads check
//! before each batch of lookups and the sqlx pool before handing out a
//! connection, so the first lookup after a replacement reads the new file.
//! A `stat` costs about a microsecond; SQLite's own locking makes several
//! such calls per read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::realm::lock;

/// Device and inode (Unix); `None` when the file cannot be read.
type Identity = Option<(u64, u64)>;

fn identity(path: &Path) -> Identity {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        // No inode: a replacement shows as a new modification time.
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos().into()))
    }
}

/// Watches one database file for replacement.
#[derive(Debug)]
pub(crate) struct FileWatch {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    seen: Identity,
    /// When a change was last noticed.
    changed: Option<Instant>,
}

impl FileWatch {
    pub(crate) fn new(path: PathBuf) -> Self {
        let seen = identity(&path);
        Self {
            path,
            state: Mutex::new(State {
                seen,
                changed: None,
            }),
        }
    }

    /// Whether a connection opened at `opened` may be reading a file that
    /// is no longer at the path (replaced, or removed).
    pub(crate) fn is_stale(&self, opened: Instant) -> bool {
        let now = identity(&self.path);
        let mut state = lock(&self.state);
        if now != state.seen {
            if state.seen.is_some() {
                tracing::info!(
                    file = %self.path.display(),
                    "the SQLite database file was replaced or removed; reopening it"
                );
            }
            state.seen = now;
            state.changed = Some(Instant::now());
        }
        state.changed.is_some_and(|changed| opened <= changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_file_makes_older_connections_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        std::fs::write(&path, b"one").unwrap();
        let watch = FileWatch::new(path.clone());
        let opened = Instant::now();
        assert!(!watch.is_stale(opened));
        // Written in place: the same file.
        std::fs::write(&path, b"one, longer").unwrap();
        assert!(!watch.is_stale(opened));
        let other = dir.path().join("new.sqlite3");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(watch.is_stale(opened));
        let reopened = Instant::now();
        assert!(watch.is_stale(opened), "stays stale");
        assert!(!watch.is_stale(reopened));
        std::fs::remove_file(&path).unwrap();
        assert!(watch.is_stale(reopened), "removed");
    }
}
