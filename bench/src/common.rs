//! What every workload shares: the users of the Django-made database, the
//! devices' cached keys, latency statistics, /proc readings.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use serde::Deserialize;
use tether_core::django;
use tether_core::scram::{CachedKeys, Mechanism, ServerCredentials};

/// `bench/django_users.py`'s manifest of the database it made.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Django's version.
    pub django: String,
    /// Number of users: `{prefix}{i}` for i in 0..users.
    pub users: usize,
    /// Username prefix.
    pub prefix: String,
    /// The distinct passwords; user i has `passwords[i % len]`.
    pub passwords: Vec<String>,
    /// One Django hash per password (`make_password`, Django's default
    /// hasher and iterations); every user with that password has this row.
    pub hashes: Vec<String>,
}

impl Manifest {
    /// Reads the manifest.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let m: Self = serde_json::from_str(&text)
            .map_err(|e| format!("bad manifest {}: {e}", path.display()))?;
        if m.users == 0 || m.passwords.is_empty() || m.passwords.len() != m.hashes.len() {
            return Err(format!("manifest {} is inconsistent", path.display()));
        }
        Ok(m)
    }

    /// Username of user `i`.
    pub fn username(&self, i: usize) -> String {
        format!("{}{}", self.prefix, i % self.users)
    }

    /// The PBKDF2 iteration count of the rows.
    pub fn iterations(&self) -> u32 {
        django::parse(&self.hashes[0]).map_or(0, |h| h.iterations)
    }
}

/// The users and the keys a device caches after its first login (RFC 5802
/// 5.1): derived here once per distinct password with PBKDF2 at the row's
/// iteration count, exactly as a device does, and checked against Django's
/// own hash. Every login of the benchmark then uses the cached keys, as a
/// provisioned device does.
pub struct Users {
    pub names: Vec<String>,
    keys: Vec<CachedKeys>,
}

impl Users {
    pub fn derive(m: &Manifest) -> Result<Self, String> {
        let handles: Vec<_> = m
            .passwords
            .iter()
            .zip(&m.hashes)
            .map(|(password, hash)| {
                let (password, hash) = (password.clone(), hash.clone());
                std::thread::spawn(move || -> Result<CachedKeys, String> {
                    let row = django::parse(&hash).map_err(|e| format!("Django hash: {e}"))?;
                    let keys = CachedKeys::derive(
                        row.mechanism,
                        &password,
                        row.salt.as_bytes(),
                        row.iterations,
                    )
                    .map_err(|e| format!("derive: {e}"))?;
                    let from_row =
                        django::credentials(&hash).map_err(|e| format!("Django hash: {e}"))?;
                    let from_keys = ServerCredentials::from_cached_keys(&keys)
                        .map_err(|e| format!("derive: {e}"))?;
                    if from_keys != from_row || row.mechanism != Mechanism::ScramSha256 {
                        return Err("a password does not match its Django hash".into());
                    }
                    Ok(keys)
                })
            })
            .collect();
        let mut keys = Vec::new();
        for h in handles {
            keys.push(h.join().map_err(|_| "key derivation panicked")??);
        }
        Ok(Self {
            names: (0..m.users).map(|i| m.username(i)).collect(),
            keys,
        })
    }

    /// Username and cached keys of user `i` (modulo the user count).
    pub fn get(&self, i: usize) -> (&str, &CachedKeys) {
        let i = i % self.names.len();
        (&self.names[i], &self.keys[i % self.keys.len()])
    }
}

/// The firmware client's settings for the v1 rows (logins, calls, idle,
/// hostile): a host logs in over v2 by default, and these rows stay
/// comparable with earlier runs; the `v2` stage measures v2.
pub fn v1_config() -> tether_firmware::Config {
    tether_firmware::Config::default().with_protocol(tether_firmware::Protocol::V1)
}

/// A CSPRNG a task can own (Send).
pub fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::from_rng(&mut rand::rng())
}

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn summary(mut self) -> Summary {
        self.0.sort_unstable();
        let q = |p: f64| -> Duration {
            if self.0.is_empty() {
                return Duration::ZERO;
            }
            let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
            Duration::from_nanos(self.0[i])
        };
        Summary {
            n: self.0.len(),
            p50: q(0.50),
            p99: q(0.99),
        }
    }
}

/// Percentiles of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
}

/// The measuring window of a throughput run: an operation counts when it
/// completes inside it (warm-up before `start`; nothing starts after `stop`).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub stop: Instant,
}

impl Window {
    pub fn new(warmup: Duration, measure: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            stop: start + measure,
        }
    }

    pub fn counts(&self, _began: Instant, now: Instant) -> bool {
        now >= self.start && now <= self.stop
    }

    pub fn secs(&self) -> f64 {
        (self.stop - self.start).as_secs_f64()
    }
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| "bad /proc stat field".to_string())
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; getconf agrees.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Resident set size of a process in bytes (VmRSS).
pub fn rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// The load averages (1, 5, 15 min).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        let n = r.round() as u64;
        // Thousands separators.
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}
