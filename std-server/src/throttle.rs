//! Failed-login throttling (issue 13, item 7): failures from one address
//! must not lock an account out for the addresses that have not failed,
//! guessing spread over many addresses must stay bounded, and a success
//! must not hand an attacker fresh guesses.
//!
//! Every refused proof (wrong password, unknown, inactive or unauthorised
//! user, a hash that cannot do SCRAM: all look the same) is a failure. It
//! counts in three buckets, each a few free failures that then come back
//! one per interval (a token bucket, kept as GCRA's one timestamp per key):
//!
//! | bucket | key | free failures | then one more per | stops |
//! |---|---|---|---|---|
//! | pair | username and source address | 5 | 5 min | this address guessing this account |
//! | address | source address (IPv6: its /64) | 20 | 30 s | one address spraying many usernames |
//! | account | username | 10 | 5 min | many addresses guessing one account; applies only to addresses the account has not logged in from |
//!
//! - An attacker on one address stops at its pair bucket: 5 guesses, then
//!   12 an hour. The account's owner elsewhere is not affected.
//! - Many addresses together stop at the account bucket: 10 guesses, then
//!   12 an hour for all of them, whatever their number. While it is empty,
//!   logins for that account from addresses it never logged in from are
//!   refused `throttled`; addresses it logged in from in the last 30 days
//!   (kept per account and address) go on, each limited by its own pair.
//! - A success resets nothing: an attacker's counts are never refunded by
//!   the owner's logins. Buckets refill with time only.
//! - Buckets are checked when a login's hello arrives, before the database
//!   is read. Logins of an account in flight from addresses it has not
//!   logged in from count as if they will fail: attempts sent at once
//!   cannot slip past the account bucket between its check and their
//!   failure (the others wait a second). The pair and address buckets do
//!   not hold back logins in flight (a fleet behind one NAT logs in at
//!   once); their race is bounded by the per-address handshake share.
//!
//! Refused logins are told `throttled` with the seconds until the next
//! failure would be allowed. Memory is bounded: each table keeps at most
//! `max_entries` keys (default 100,000; about 170 bytes each), dropping
//! the least recently charged; every insertion, lookup and eviction costs
//! O(1), whatever the table holds.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::metrics::ThrottleMetrics;

/// Throttle settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures for one username from one address before it waits
    /// (default 5).
    pub pair_free_failures: u32,
    /// Failures for one username, from any address, before addresses it
    /// has not logged in from wait (default 10).
    pub user_free_failures: u32,
    /// Failures from one address, any username, before it waits (default 20).
    pub addr_free_failures: u32,
    /// After its free failures, a pair or username may fail once more per
    /// interval (default 5 min).
    pub refill: Duration,
    /// The same for an address (default 30 s).
    pub addr_refill: Duration,
    /// How long an address an account logged in from lets it past the
    /// account bucket (default 30 days).
    pub remember_logins: Duration,
    /// Most keys in each table (default 100,000).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            pair_free_failures: 5,
            user_free_failures: 10,
            addr_free_failures: 20,
            refill: Duration::from_secs(300),
            addr_refill: Duration::from_secs(30),
            remember_logins: Duration::from_secs(30 * 24 * 3600),
            max_entries: 100_000,
        }
    }
}

impl ThrottleConfig {
    /// No throttling at all.
    pub fn disabled() -> Self {
        Self {
            pair_free_failures: u32::MAX,
            user_free_failures: u32::MAX,
            addr_free_failures: u32::MAX,
            ..Self::default()
        }
    }
}

/// A token bucket as GCRA keeps it: `burst` failures at once, then one per
/// `every`.
#[derive(Debug, Clone, Copy)]
struct Rate {
    burst: u32,
    every: Duration,
}

impl Rate {
    /// The debt an attempt may find and still pass; `None`: unlimited.
    fn allowance(self) -> Option<Duration> {
        if self.burst == u32::MAX {
            return None;
        }
        self.every.checked_mul(self.burst.saturating_sub(1))
    }

    /// How long until an attempt may pass, if it may not now. `tat` is when
    /// the bucket's debt is paid off.
    fn wait(self, tat: Instant, now: Instant) -> Option<Duration> {
        let allowance = self.allowance()?;
        let debt = tat.saturating_duration_since(now);
        if self.burst == 0 {
            return Some(debt.max(self.every));
        }
        debt.checked_sub(allowance).filter(|d| !d.is_zero())
    }
}

/// A key's bucket: when its failures' debt is paid off, and how many of
/// its logins are between their check and their proof.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
    in_flight: u32,
}

/// One kind of key, least recently charged first.
struct Table<K: Hash + Eq> {
    rate: Rate,
    buckets: LruCache<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            rate,
            buckets: LruCache::new(capacity.max(1)),
        }
    }

    fn unlimited(&self) -> bool {
        self.rate.allowance().is_none()
    }

    /// How long the key's failures make it wait, if they do.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        self.rate.wait(self.buckets.peek(key)?.tat, now)
    }

    /// Whether its logins in flight, were they all to fail, would leave no
    /// room for one more.
    fn full_in_flight(&self, key: &K, now: Instant) -> bool {
        let Some(b) = self.buckets.peek(key) else {
            return false;
        };
        let tat = b.tat.max(now) + self.rate.every.saturating_mul(b.in_flight);
        b.in_flight > 0 && self.rate.wait(tat, now).is_some()
    }

    fn bucket(&mut self, key: &K, now: Instant) -> &mut Bucket {
        // `get_mut` makes the key the most recent; a new key evicts the
        // least recent when the table is full.
        if self.buckets.get_mut(key).is_none() {
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tat: now,
                    in_flight: 0,
                },
            );
        }
        self.buckets.get_mut(key).expect("just inserted")
    }

    /// One more failure; `true` when the key is blocked after it.
    fn charge(&mut self, key: &K, now: Instant) -> bool {
        if self.unlimited() {
            return false;
        }
        let every = self.rate.every;
        let b = self.bucket(key, now);
        b.tat = b.tat.max(now) + every;
        let tat = b.tat;
        self.rate.wait(tat, now).is_some()
    }

    /// A login of the key starts (see [`Self::full_in_flight`]).
    fn enter(&mut self, key: &K, now: Instant) {
        if !self.unlimited() {
            self.bucket(key, now).in_flight += 1;
        }
    }

    /// A login of the key has its answer.
    fn leave(&mut self, key: &K) {
        if let Some(b) = self.buckets.peek_mut(key) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }

    /// Keys blocked at `now` (a scan: for metrics scrapes only).
    fn blocked_count(&self, now: Instant) -> usize {
        self.buckets
            .iter()
            .filter(|(_, b)| self.rate.wait(b.tat, now).is_some())
            .count()
    }
}

type Pair = (String, IpAddr);

struct Tables {
    config: ThrottleConfig,
    users: Table<String>,
    addrs: Table<IpAddr>,
    pairs: Table<Pair>,
    /// Addresses each account logged in from, and when last.
    known: LruCache<Pair, Instant>,
}

/// The throttle state shared by all connections.
pub struct Throttle {
    tables: Mutex<Tables>,
    metrics: ThrottleMetrics,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

/// The rates of the user, address and pair tables.
fn rates(c: &ThrottleConfig) -> [Rate; 3] {
    let rate = |burst, every| Rate { burst, every };
    [
        rate(c.user_free_failures, c.refill),
        rate(c.addr_free_failures, c.addr_refill),
        rate(c.pair_free_failures, c.refill),
    ]
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

/// A login in progress: it counts among its account's logins in flight
/// (from an address the account has not logged in from) until it is
/// dropped; [`Attempt::failed`] charges its buckets.
#[derive(Debug)]
pub struct Attempt<'t> {
    throttle: &'t Throttle,
    user: String,
    addr: IpAddr,
    /// Counted in flight for the account bucket.
    in_flight: bool,
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Self::with_metrics(config, ThrottleMetrics::default())
    }

    pub(crate) fn with_metrics(config: ThrottleConfig, metrics: ThrottleMetrics) -> Self {
        let n = config.max_entries;
        let [users, addrs, pairs] = rates(&config);
        Self {
            tables: Mutex::new(Tables {
                config,
                users: Table::new(users, n),
                addrs: Table::new(addrs, n),
                pairs: Table::new(pairs, n),
                known: LruCache::new(n.max(1)),
            }),
            metrics,
        }
    }

    /// The settings.
    pub fn config(&self) -> ThrottleConfig {
        self.lock().config
    }

    /// New settings, keeping what the tables hold: each key's failures
    /// are measured against the new free failures and refill intervals
    /// from now on, and the tables shrink (least recently charged keys
    /// first) or grow to the new `max_entries`.
    pub fn reconfigure(&self, config: ThrottleConfig) {
        let [users, addrs, pairs] = rates(&config);
        let n = config.max_entries.max(1);
        let mut t = self.lock();
        t.config = config;
        t.users.rate = users;
        t.addrs.rate = addrs;
        t.pairs.rate = pairs;
        t.users.buckets.set_capacity(n);
        t.addrs.buckets.set_capacity(n);
        t.pairs.buckets.set_capacity(n);
        t.known.set_capacity(n);
    }

    /// How many usernames and how many addresses are blocked now (a scan
    /// of the tables: for metrics scrapes, not for the login path).
    pub fn blocked_counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let t = self.lock();
        (t.users.blocked_count(now), t.addrs.blocked_count(now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a login of `username` from `addr`, or refuses it with how
    /// long to wait. From an address the account has not logged in from,
    /// it counts in flight until it ends: if all the logins in flight failed
    /// the account bucket would be empty, so no more start (retry after 1 s:
    /// they end within a handshake).
    pub fn begin(&self, username: &str, addr: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let (user, addr) = (user_key(username), address_key(addr));
        let pair = (user, addr);
        let mut t = self.lock();
        let known = {
            let remember = t.config.remember_logins;
            is_known(&mut t.known, &pair, now, remember)
        };
        let wait = [
            t.pairs.wait(&pair, now),
            t.addrs.wait(&addr, now),
            if known {
                None
            } else {
                t.users.wait(&pair.0, now)
            },
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        if !known {
            if t.users.full_in_flight(&pair.0, now) {
                return Err(Duration::from_secs(1));
            }
            t.users.enter(&pair.0, now);
        }
        drop(t);
        Ok(Attempt {
            throttle: self,
            user: pair.0,
            addr,
            in_flight: !known,
        })
    }

    /// How long `username` (the name stored in the row, when it differs
    /// from the typed one) must wait from `addr`, if it must.
    pub fn check_user(&self, username: &str, addr: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let pair = (user_key(username), address_key(addr));
        let mut t = self.lock();
        let known = {
            let remember = t.config.remember_logins;
            is_known(&mut t.known, &pair, now, remember)
        };
        let user = if known {
            None
        } else {
            t.users.wait(&pair.0, now)
        };
        t.pairs.wait(&pair, now).max(user)
    }
}

fn is_known(
    known: &mut LruCache<Pair, Instant>,
    pair: &Pair,
    now: Instant,
    keep: Duration,
) -> bool {
    match known.peek(pair) {
        Some(at) if now.saturating_duration_since(*at) < keep => true,
        Some(_) => {
            known.remove(pair);
            false
        }
        None => false,
    }
}

impl Attempt<'_> {
    /// The proof was refused: a failure for the pair, the address and the
    /// account. `stored` is the row's username when it differs from the
    /// typed one (MySQL's case-insensitive collations): it fails too.
    pub fn failed(self, stored: Option<&str>) {
        let now = Instant::now();
        let th = self.throttle;
        let mut t = th.lock();
        let pair = (self.user.clone(), self.addr);
        if t.pairs.charge(&pair, now) {
            th.metrics.pair_blocks.inc();
        }
        if t.addrs.charge(&self.addr, now) {
            th.metrics.address_blocks.inc();
        }
        // A known address's failures count for the account too (it only
        // passes the account bucket's check).
        if t.users.charge(&self.user, now) {
            th.metrics.user_blocks.inc();
        }
        if let Some(stored) = stored.map(user_key).filter(|s| *s != self.user) {
            let pair = (stored, self.addr);
            if t.pairs.charge(&pair, now) {
                th.metrics.pair_blocks.inc();
            }
            if t.users.charge(&pair.0, now) {
                th.metrics.user_blocks.inc();
            }
        }
    }

    /// The login succeeded: nothing is reset (an attacker's failures stay
    /// counted); the address is remembered for the account (`stored`: the
    /// row's username).
    pub fn succeeded(self, stored: &str) {
        let now = Instant::now();
        let mut t = self.throttle.lock();
        for user in [self.user.clone(), user_key(stored)] {
            t.known.insert((user, self.addr), now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.in_flight {
            self.throttle.lock().users.leave(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            pair_free_failures: 2,
            user_free_failures: 3,
            addr_free_failures: 4,
            refill: Duration::from_secs(60),
            addr_refill: Duration::from_secs(10),
            remember_logins: Duration::from_secs(3600),
            max_entries: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A failed login; `Err(wait)` when it was refused before the proof.
    fn fail(t: &Throttle, user: &str, addr: &str) -> Result<(), Duration> {
        t.begin(user, ip(addr)).map(|a| a.failed(None))
    }

    #[test]
    fn one_address_is_stopped_by_its_pair_and_nobody_else_is() {
        let t = Throttle::new(cfg());
        let attacker = "192.0.2.1";
        assert_eq!(fail(&t, "alice", attacker), Ok(()));
        assert_eq!(fail(&t, "alice", attacker), Ok(()));
        // Two free failures for the pair, then one a minute.
        let wait = fail(&t, "alice", attacker).unwrap_err();
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(
            t.begin("ALICE", ip(attacker)).is_err(),
            "usernames are case-blind"
        );
        // alice from elsewhere, and others from the attacker's address, go on.
        t.begin("alice", ip("198.51.100.7"))
            .unwrap()
            .succeeded("alice");
        assert!(t.begin("bob", ip(attacker)).is_ok());
    }

    #[test]
    fn many_addresses_share_the_accounts_bucket_known_addresses_do_not() {
        let t = Throttle::new(cfg());
        // alice logged in from her usual address once.
        t.begin("alice", ip("198.51.100.7"))
            .unwrap()
            .succeeded("alice");
        // Three free failures for the account, from three addresses...
        for k in 1..=3 {
            assert_eq!(fail(&t, "alice", &format!("192.0.2.{k}")), Ok(()));
        }
        // ...then every address she never logged in from waits,
        for k in 4..=20 {
            assert!(t.begin("alice", ip(&format!("192.0.2.{k}"))).is_err());
        }
        // while her own address goes on, and so do other accounts.
        t.begin("alice", ip("198.51.100.7"))
            .unwrap()
            .succeeded("alice");
        assert!(t.begin("bob", ip("192.0.2.9")).is_ok());
        assert_eq!(t.blocked_counts(), (1, 0));
    }

    #[test]
    fn reconfigure_keeps_the_failures_and_applies_the_new_rates() {
        let t = Throttle::new(cfg());
        let addr = "192.0.2.1";
        assert_eq!(fail(&t, "alice", addr), Ok(()));
        assert_eq!(fail(&t, "bob", addr), Ok(()));
        // Fewer free failures: the pair's one failure is all it has now.
        t.reconfigure(ThrottleConfig {
            pair_free_failures: 1,
            ..cfg()
        });
        assert_eq!(t.config().pair_free_failures, 1);
        assert!(fail(&t, "alice", addr).is_err());
        // More: bob, who had failed once, has three more.
        t.reconfigure(ThrottleConfig {
            pair_free_failures: 4,
            user_free_failures: 10,
            addr_free_failures: 10,
            ..cfg()
        });
        for _ in 0..3 {
            assert_eq!(fail(&t, "bob", addr), Ok(()));
        }
        assert!(fail(&t, "bob", addr).is_err());
        // A smaller table forgets the least recently charged keys.
        t.reconfigure(ThrottleConfig {
            max_entries: 1,
            ..cfg()
        });
        assert!(t.lock().pairs.buckets.len() <= 1);
    }

    #[test]
    fn a_success_gives_back_nothing_but_its_own_charge() {
        let t = Throttle::new(cfg());
        let shared = "192.0.2.1";
        assert_eq!(fail(&t, "alice", shared), Ok(()));
        // The owner logs in from the attacker's address (a shared NAT)...
        t.begin("alice", ip(shared)).unwrap().succeeded("alice");
        // ...which resets nothing: one more failure, then the pair waits.
        assert_eq!(fail(&t, "alice", shared), Ok(()));
        assert!(fail(&t, "alice", shared).is_err());
    }

    #[test]
    fn logins_in_flight_count_for_the_accounts_bucket_only() {
        let t = Throttle::new(cfg());
        // Three at once from three new addresses: the account's three free
        // failures, were they all to fail...
        let attempts: Vec<_> = (1..=3)
            .map(|k| t.begin("alice", ip(&format!("192.0.2.{k}"))).unwrap())
            .collect();
        // ...so a fourth waits for them (a second: they end within a handshake).
        assert_eq!(
            t.begin("alice", ip("192.0.2.4")).err(),
            Some(Duration::from_secs(1))
        );
        // Logins of other accounts from one address are not held back by
        // each other (a fleet behind one NAT logs in at once).
        let fleet: Vec<_> = (0..50)
            .map(|i| t.begin(&format!("device{i}"), ip("198.51.100.1")).unwrap())
            .collect();
        drop(fleet);
        // One ends without a proof: room again. Then all four fail.
        let mut attempts = attempts;
        drop(attempts.pop());
        attempts.push(t.begin("alice", ip("192.0.2.4")).unwrap());
        for a in attempts {
            a.failed(None);
        }
        let wait = t.begin("alice", ip("192.0.2.5")).unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }

    #[test]
    fn addresses_are_throttled_across_usernames_and_by_their_64() {
        let t = Throttle::new(cfg());
        for i in 0..4 {
            assert_eq!(fail(&t, &format!("u{i}"), "2001:db8::1"), Ok(()));
        }
        assert!(t.begin("new", ip("2001:db8::ffff")).is_err());
        assert!(t.begin("new", ip("2001:db8:0:1::1")).is_ok());
        assert_eq!(
            address_key(ip("::ffff:192.0.2.1")),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_stored_name_fails_too() {
        let t = Throttle::new(cfg());
        let a = "192.0.2.1";
        // MySQL's PAD SPACE collations find `alice` for `alice `.
        t.begin("alice ", ip(a)).unwrap().failed(Some("alice"));
        t.begin("alice  ", ip(a)).unwrap().failed(Some("alice"));
        assert!(t.check_user("alice", ip(a)).is_some());
        assert!(t.check_user("alice", ip("192.0.2.2")).is_none());
    }

    #[test]
    fn tables_are_bounded_and_disabled_throttles_keep_nothing() {
        let t = Throttle::new(cfg());
        for i in 0..1000 {
            let _ = fail(
                &t,
                &format!("u{i}"),
                &format!("10.0.{}.{}", i / 256, i % 256),
            );
        }
        let tables = t.lock();
        assert!(tables.users.buckets.len() <= 100 && tables.pairs.buckets.len() <= 100);
        drop(tables);
        let off = Throttle::new(ThrottleConfig::disabled());
        for _ in 0..100 {
            assert_eq!(fail(&off, "alice", "192.0.2.1"), Ok(()));
        }
        assert!(off.lock().users.buckets.is_empty());
    }
}
