//! Failed-login throttling per username and per source address, with
//! exponential backoff.
//!
//! Every refused proof (wrong password, unknown, inactive or unauthorised
//! user: all look the same) counts one failure for the username and one for
//! the source address (IPv6 addresses by their /64, since one host usually
//! owns the whole prefix). Once a key has more failures than its free
//! allowance, each further failure blocks it for `base * 2^(n-1)`, capped at
//! `max_delay`: with the defaults a username is blocked for 1 s after its
//! 6th failure in a row, 2 s after the 7th, 4 s after the 8th, ... and at
//! most 5 minutes. A key with no failure for `forget_after` (15 minutes)
//! starts over. A successful login clears its username (not its address, so
//! one valid account does not let an address guess others freely).
//!
//! While blocked, logins for that username or from that address are refused
//! with `throttled` and the seconds to wait, before the database is read.
//!
//! Defaults ([`ThrottleConfig::default`]):
//!
//! | | free failures | first block | max block | forget after |
//! |---|---|---|---|---|
//! | per username | 5 | 1 s | 300 s | 15 min |
//! | per address | 20 | 1 s | 300 s | 15 min |
//!
//! Memory is bounded: at most `max_entries` keys of each kind are kept;
//! when full, the key that failed longest ago is dropped. Every insertion
//! and eviction costs O(1), whatever the table holds.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::metrics::ThrottleMetrics;

/// Throttle settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures per username before blocking starts (default 5).
    pub user_free_failures: u32,
    /// Failures per source address before blocking starts (default 20).
    pub addr_free_failures: u32,
    /// The first block (default 1 s); it doubles with each further failure.
    pub base_delay: Duration,
    /// The longest block (default 300 s).
    pub max_delay: Duration,
    /// A key without failures for this long is forgotten (default 15 min).
    pub forget_after: Duration,
    /// Most tracked keys of each kind (default 100,000).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            user_free_failures: 5,
            addr_free_failures: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(15 * 60),
            max_entries: 100_000,
        }
    }
}

impl ThrottleConfig {
    /// No throttling at all.
    pub fn disabled() -> Self {
        Self {
            user_free_failures: u32::MAX,
            addr_free_failures: u32::MAX,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// The failures of one kind of key, least recently failed first: every
/// insertion, lookup and eviction is O(1) whatever the table holds (a
/// linked hash map); when full, the key that failed longest ago goes.
struct Table<K: Hash + Eq> {
    entries: LruCache<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: LruCache::new(capacity.max(1)),
        }
    }

    fn blocked(&mut self, key: &K, now: Instant, cfg: &ThrottleConfig) -> Option<Duration> {
        let entry = self.entries.peek(key)?;
        if now.saturating_duration_since(entry.last) >= cfg.forget_after {
            self.entries.remove(key);
            return None;
        }
        entry
            .blocked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Counts a failure; `true` when it (re)starts a block.
    fn fail(&mut self, key: K, free: u32, now: Instant, cfg: &ThrottleConfig) -> bool {
        // `get_mut` makes the key the most recent; a new key evicts the
        // least recent when the table is full.
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        failures: 0,
                        last: now,
                        blocked_until: None,
                    },
                );
                self.entries.get_mut(&key).expect("just inserted")
            }
        };
        if now.saturating_duration_since(entry.last) >= cfg.forget_after {
            *entry = Entry {
                failures: 0,
                last: now,
                blocked_until: None,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if entry.failures > free {
            let exp = (entry.failures - free - 1).min(30);
            let delay = cfg
                .base_delay
                .checked_mul(1u32 << exp)
                .unwrap_or(cfg.max_delay)
                .min(cfg.max_delay);
            entry.blocked_until = Some(now + delay);
            return true;
        }
        false
    }

    /// Keys blocked at `now` (a scan: for metrics scrapes only).
    fn blocked_count(&self, now: Instant) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| e.blocked_until.is_some_and(|until| until > now))
            .count()
    }
}

/// The throttle state shared by all connections.
pub struct Throttle {
    config: ThrottleConfig,
    users: Mutex<Table<String>>,
    addrs: Mutex<Table<IpAddr>>,
    metrics: ThrottleMetrics,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The key of a source address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by
/// its /64 prefix.
pub fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The key of a username: lowercased, so that `Alice` and `alice` (the same
/// row on MySQL's case-insensitive collations) share their failures.
fn user_key(username: &str) -> String {
    username.to_lowercase()
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Self::with_metrics(config, ThrottleMetrics::default())
    }

    pub(crate) fn with_metrics(config: ThrottleConfig, metrics: ThrottleMetrics) -> Self {
        Self {
            config,
            users: Mutex::new(Table::new(config.max_entries)),
            addrs: Mutex::new(Table::new(config.max_entries)),
            metrics,
        }
    }

    /// How many usernames and how many addresses are blocked now (a scan
    /// of the tables: for metrics scrapes, not for the login path).
    pub fn blocked_counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let users = lock(&self.users).blocked_count(now);
        let addrs = lock(&self.addrs).blocked_count(now);
        (users, addrs)
    }

    /// The settings.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// How long the username or the address is still blocked, if it is.
    pub fn check(&self, username: &str, addr: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let user = lock(&self.users).blocked(&user_key(username), now, &self.config);
        let addr = lock(&self.addrs).blocked(&address_key(addr), now, &self.config);
        user.max(addr)
    }

    /// How long the username alone is still blocked, if it is.
    pub fn check_user(&self, username: &str) -> Option<Duration> {
        lock(&self.users).blocked(&user_key(username), Instant::now(), &self.config)
    }

    /// Records a failed login for the username and the address.
    pub fn failure(&self, username: &str, addr: IpAddr) {
        let now = Instant::now();
        let cfg = &self.config;
        if lock(&self.users).fail(user_key(username), cfg.user_free_failures, now, cfg) {
            self.metrics.user_blocks.inc();
        }
        if lock(&self.addrs).fail(address_key(addr), cfg.addr_free_failures, now, cfg) {
            self.metrics.address_blocks.inc();
        }
    }

    /// Records a failure for a username only (e.g. the stored username when
    /// it differs from the typed one).
    pub fn user_failure(&self, username: &str) {
        let now = Instant::now();
        let cfg = &self.config;
        if lock(&self.users).fail(user_key(username), cfg.user_free_failures, now, cfg) {
            self.metrics.user_blocks.inc();
        }
    }

    /// Records a successful login: the username starts over.
    pub fn success(&self, username: &str) {
        lock(&self.users).entries.remove(&user_key(username));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            user_free_failures: 2,
            addr_free_failures: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            forget_after: Duration::from_secs(60),
            max_entries: 3,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = Throttle::new(cfg());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        t.failure("alice", ip);
        t.failure("Alice", ip);
        assert_eq!(t.check("alice", other), None);
        let mut last = Duration::ZERO;
        for expected in [1, 2, 4, 8, 8] {
            t.failure("alice", other);
            let d = t.check("ALICE", "192.0.2.3".parse().unwrap()).unwrap();
            assert!(d <= Duration::from_secs(expected) && d > last / 2, "{d:?}");
            assert!(d > Duration::from_millis(expected * 1000 - 100));
            last = d;
        }
        assert_eq!(t.blocked_counts(), (1, 1));
        t.success("alice");
        assert_eq!(t.check_user("alice"), None);
    }

    #[test]
    fn addresses_are_throttled_across_usernames() {
        let t = Throttle::new(cfg());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..5 {
            t.failure(&format!("u{i}"), ip);
        }
        // Same /64.
        assert!(t.check("new", "2001:db8::ffff".parse().unwrap()).is_some());
        assert!(t.check("new", "2001:db8:0:1::1".parse().unwrap()).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let t = Throttle::new(cfg());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..10 {
            t.user_failure(&format!("u{i}"));
        }
        assert!(lock(&t.users).entries.len() <= 3);
        t.failure("x", ip);
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
