//! File descriptors: every connection (device or admin), database
//! connection and file the server holds is one, and a process may hold at
//! most its soft `RLIMIT_NOFILE`.
//!
//! - At start `tether serve` raises the soft limit to the hard one
//!   ([`raise_limit`]: many systems start services at a soft 1,024 with a
//!   much higher hard limit) and warns, in one line with the numbers, when
//!   the configured limits may need more ([`Budget`]).
//! - When descriptors run out anyway, the device listener's `accept` fails
//!   with `EMFILE` and the connection would wait in the kernel's queue
//!   until the device gives up. A spare descriptor is kept in reserve
//!   for that moment: it is closed, the waiting connection accepted and
//!   refused `busy` (with a retry delay), and the spare reopened, so the
//!   device learns at once to come back later. The accept loop backs off
//!   between failures instead of spinning, and its warnings go through
//!   [`crate::log_limit`].

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_core::connection::{ServerConfig, ServerHandshake};
use tether_core::frame::{HEADER_LEN, MIN_MAX_FRAME};
use tether_core::message::RefusalCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::lease::RxStorage;
use crate::log_limit::Noisy;
use crate::metrics::{LoginOutcome, Metrics};
use crate::session::clock;

/// Descriptors the process uses besides connections: standard streams,
/// listeners, the runtime's epoll and wakers, the signal pipe, the SQLite
/// readers' files, the spare, and room for what libraries open (`tether
/// serve` on SQLite holds 14 when idle).
pub const PROCESS_DESCRIPTORS: u64 = 64;

/// The seconds a device refused for lack of descriptors is told to wait.
pub const RETRY_AFTER_SECS: u16 = 5;

/// How long the accept loop waits after a failure it cannot answer.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The soft limit before and after [`raise_limit`], and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (on Linux at most
/// `fs.nr_open`, the kernel's ceiling when the hard limit is unlimited).
#[cfg(unix)]
pub fn raise_limit() -> io::Result<Limits> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let mut target = hard;
    if let Some(nr_open) = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        target = target.min(nr_open);
    }
    let soft = rlimit::increase_nofile_limit(target)?;
    Ok(Limits { before, soft, hard })
}

/// No `RLIMIT_NOFILE` here.
#[cfg(not(unix))]
pub fn raise_limit() -> io::Result<Limits> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no RLIMIT_NOFILE on this system",
    ))
}

/// What the configured limits may hold open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `--max-sessions`.
    pub sessions: u64,
    /// `--max-handshakes`.
    pub handshakes: u64,
    /// Connections waiting beyond the handshakes to be told `busy`.
    pub pending: u64,
    /// The admin API's connections (0 without `--admin`;
    /// [`crate::admin::listener::descriptors`]).
    pub admin: u64,
    /// `--db-connections`.
    pub database: u64,
}

impl Budget {
    /// Descriptors these limits may need, [`PROCESS_DESCRIPTORS`] included.
    pub fn needed(&self) -> u64 {
        self.sessions
            + self.handshakes
            + self.pending
            + self.admin
            + self.database
            + PROCESS_DESCRIPTORS
    }

    /// The warning to give when `limit` is below [`Self::needed`].
    pub fn check(&self, limit: u64) -> Option<String> {
        let needed = self.needed();
        (limit < needed).then(|| {
            format!(
                "the file descriptor limit ({limit}) is below what the limits may hold: \
                 {} sessions + {} handshakes + {} waiting + {} admin connections + {} database \
                 connections + {PROCESS_DESCRIPTORS} for the process = {needed}; raise the hard \
                 limit (ulimit -Hn, systemd LimitNOFILE=) or lower --max-sessions; when \
                 descriptors run out, logins are refused busy",
                self.sessions, self.handshakes, self.pending, self.admin, self.database
            )
        })
    }
}

/// Whether an `accept` error means the process or the system has no
/// descriptor left.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE 24 (the process), ENFILE 23 (the system); both Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// One descriptor held in reserve for refusing a device when the others are
/// gone (see the module docs).
#[derive(Debug)]
pub(crate) struct Spare {
    file: Option<File>,
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

impl Spare {
    pub(crate) fn new() -> Self {
        Self { file: open_spare() }
    }

    /// Handles a failed `accept` of the device listener: out of
    /// descriptors, the spare makes room to refuse one waiting device
    /// `busy` (here, so that the descriptor goes back to the spare, not to
    /// the next connection: at most half a second); otherwise (or without
    /// a spare) it waits 100 ms. Either way the loop cannot spin.
    pub(crate) async fn accept_failed(
        &mut self,
        listener: &TcpListener,
        error: io::Error,
        metrics: &Metrics,
    ) {
        let out = is_out_of_descriptors(&error);
        if out && let Some(spare) = self.file.take() {
            drop(spare);
            // The descriptor just freed takes the connection waiting first.
            let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
            if let Ok(Ok((stream, peer))) = accepted {
                if metrics.log_limit().allow(Noisy::OutOfDescriptors) {
                    warn!(
                        %peer,
                        %error,
                        "no file descriptor left: login refused busy (raise the limit or lower --max-sessions)"
                    );
                }
                refuse_busy(stream, peer, metrics.clone()).await;
                self.file = open_spare();
                return;
            }
        } else if metrics.log_limit().allow(if out {
            Noisy::OutOfDescriptors
        } else {
            Noisy::AcceptFailed
        }) {
            warn!(%error, "accept failed; retrying in 100 ms");
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
        if self.file.is_none() {
            self.file = open_spare();
        }
    }
}

/// Sends `Refused { busy }` without waiting for the hello, then reads what
/// the device sends until it closes (at most 64 KiB, 250 ms), so that
/// closing does not reset the connection before the device read the
/// refusal. Takes half a second at most.
async fn refuse_busy(mut stream: TcpStream, peer: SocketAddr, metrics: Metrics) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; HEADER_LEN + MIN_MAX_FRAME as usize];
    // The machine's refusal, before any hello (its receive storage is
    // never lent: nothing is read into it).
    let storage = RxStorage::new(MIN_MAX_FRAME.into());
    let Ok(mut hs) =
        ServerHandshake::<RxStorage>::new(storage, ServerConfig::default(), clock::now())
    else {
        return;
    };
    if hs.refuse(RefusalCode::Busy, RETRY_AFTER_SECS).is_err() {
        return;
    }
    let Some(frame) = hs.poll_transmit(&mut buf) else {
        return;
    };
    let sent = tokio::time::timeout(Duration::from_millis(250), stream.write_all(frame)).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = stream.shutdown().await;
        let drain = async {
            let mut sink = [0u8; 1024];
            let mut seen = 0;
            while seen < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen += n,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
    }
    tracing::debug!(%peer, "refused busy: no file descriptor left");
    metrics.login(
        LoginOutcome::Refused,
        Some(RefusalCode::Busy),
        started.elapsed(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_every_limit_and_says_so() {
        let b = Budget {
            sessions: 10_000,
            handshakes: 64,
            pending: 256,
            admin: 128,
            database: 8,
        };
        assert_eq!(
            b.needed(),
            10_000 + 64 + 256 + 128 + 8 + PROCESS_DESCRIPTORS
        );
        assert_eq!(b.check(20_000), None);
        let w = b.check(1_024).unwrap();
        assert!(w.contains("limit (1024)"), "{w}");
        assert!(w.contains("10000 sessions + 64 handshakes + 256 waiting + 128 admin connections + 8 database connections"), "{w}");
        assert!(w.contains("= 10520"), "{w}");
        assert!(!w.contains('\n'));
    }

    #[test]
    fn out_of_descriptors_is_emfile_or_enfile() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(104)));
        assert!(!is_out_of_descriptors(&io::Error::other("x")));
    }
}
