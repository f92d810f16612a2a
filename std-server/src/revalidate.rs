//! Revocation: a live session ends with `Goodbye(Revoked)` once its user
//! may no longer log in (docs/DJANGO.md section 3).
//!
//! Every [`ServerConfig::revalidate`](crate::ServerConfig::revalidate)
//! interval (`--revalidate`, default 30 s) one task re-reads the rows of
//! the users of all live sessions with one query ([`Store::revalidate`]:
//! `WHERE id IN (...)`, the login's own columns and gates) and ends the
//! sessions whose user
//!
//! - was deleted (no row),
//! - was deactivated (`is_active` false),
//! - has other credentials than at login (a password change, or Django
//!   re-hashing it; compared as SHA-256 digests of the SCRAM verifier, so a
//!   row rewritten as the same verifier is no change, and nothing is kept
//!   that could log in), or
//! - no longer passes `--require-perm` / `--require-group`.
//!
//! Only sessions listed before the query started are judged, so a login
//! that read a newer row than the query is never revoked by it. A failed
//! query revokes nothing (logged, counted; retried next interval). A
//! revoked user's cached lookups are forgotten, so the next login reads the
//! database.
//!
//! [`revoke`] ends a user's sessions at once (the admin API's `POST
//! /revoke`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tether_core::message::GoodbyeReason;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::default_realm::{Registry, SessionEntry};
use crate::metrics::{Counter, Family, Registry as MetricsRegistry};
use crate::realm::CredentialDigest;
use crate::store::{Store, UserRecord};

/// Why a session was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The user's row is gone.
    Deleted,
    /// `is_active` is false.
    Inactive,
    /// The stored password hash changed.
    Password,
    /// The user no longer holds the required permission or group.
    Permission,
    /// Revoked through the admin API.
    Admin,
}

impl Cause {
    const ALL: [Self; 5] = [
        Self::Deleted,
        Self::Inactive,
        Self::Password,
        Self::Permission,
        Self::Admin,
    ];

    /// The metrics label, and the word in the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Inactive => "inactive",
            Self::Password => "password",
            Self::Permission => "permission",
            Self::Admin => "admin",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Deleted => "the user was deleted",
            Self::Inactive => "the user was deactivated",
            Self::Password => "the stored password hash changed",
            Self::Permission => "the user lost the required permission or group",
            Self::Admin => "revoked through the admin API",
        }
    }
}

/// Handles of the revocation series (cheap to clone).
///
/// | metric | type | labels |
/// |---|---|---|
/// | `tether_revocations_total` | counter | `cause`: `deleted`, `inactive`, `password`, `permission`, `admin` (sessions ended with `Goodbye(Revoked)`) |
/// | `tether_revalidations_total` | counter | `outcome`: `ok`, `error` (the periodic query) |
#[derive(Debug, Clone)]
pub(crate) struct RevocationMetrics {
    revocations: [Counter; 5],
    ok: Counter,
    error: Counter,
}

impl RevocationMetrics {
    /// Registers the series (all at zero).
    pub(crate) fn register(registry: &mut MetricsRegistry) -> Self {
        let revocations = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "revocations",
            "Sessions ended with Goodbye(Revoked), by cause",
            revocations.clone(),
        );
        let checks = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "revalidations",
            "Periodic re-reads of the live sessions' users, by outcome",
            checks.clone(),
        );
        Self {
            revocations: Cause::ALL
                .map(|c| revocations.get_or_create_owned(&[("cause", c.name())])),
            ok: checks.get_or_create_owned(&[("outcome", "ok")]),
            error: checks.get_or_create_owned(&[("outcome", "error")]),
        }
    }

    fn revoked(&self, cause: Cause) {
        self.revocations[cause as usize].inc();
    }
}

/// Whose sessions [`revoke`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The user with this primary key.
    UserId(i64),
    /// The user with this username (`USERNAME_FIELD`, as stored).
    Username(String),
}

/// Ends every live session of a user with `Goodbye(Revoked)` at once and
/// forgets the store's cached lookups of that user; the ids of the
/// sessions ended (empty when none was live).
pub fn revoke(live: &Registry, store: &Store, who: &Who) -> Vec<u64> {
    let metrics = store.metrics().revocations();
    let mut ended = Vec::new();
    let mut user_id = match who {
        Who::UserId(id) => Some(*id),
        Who::Username(_) => None,
    };
    for entry in live.list() {
        let user = &entry.info.user;
        let matches = match who {
            Who::UserId(id) => user.id == *id,
            Who::Username(name) => user.username == *name,
        };
        if matches && !entry.mind.is_closed() {
            user_id = Some(user.id);
            end(&entry, Cause::Admin, &metrics);
            ended.push(entry.info.id);
        }
    }
    let username = match who {
        Who::Username(name) => Some(name.as_str()),
        Who::UserId(_) => None,
    };
    store.forget(user_id, username);
    ended
}

fn end(entry: &SessionEntry, cause: Cause, metrics: &RevocationMetrics) {
    info!(
        session = entry.info.id,
        peer = %entry.info.peer,
        cause = cause.name(),
        "{}'s session revoked: {}",
        entry.info.user.username,
        cause.describe()
    );
    metrics.revoked(cause);
    entry.mind.close(GoodbyeReason::Revoked);
}

/// Why `entry` may no longer run, judged on its user's fresh row
/// (`None`: deleted).
fn judge(entry: &SessionEntry, row: Option<&UserRecord>) -> Option<Cause> {
    let Some(row) = row else {
        return Some(Cause::Deleted);
    };
    if !row.is_active {
        Some(Cause::Inactive)
    } else if CredentialDigest::of(&row.password) != entry.info.credential {
        Some(Cause::Password)
    } else if !row.is_authorised() {
        Some(Cause::Permission)
    } else {
        None
    }
}

/// One round: re-reads the users of the sessions live now and ends those
/// that may no longer run. The number of sessions ended.
pub(crate) async fn revalidate_once(live: &Registry, store: &Store) -> Result<usize, String> {
    let metrics = store.metrics().revocations();
    // Listed before the query starts (see the module docs).
    let entries: Vec<SessionEntry> = live
        .list()
        .into_iter()
        .filter(|e| !e.mind.is_closed())
        .collect();
    if entries.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = entries
        .iter()
        .map(|e| e.info.user.id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = match store.revalidate(&ids).await {
        Ok(rows) => {
            metrics.ok.inc();
            rows
        }
        Err(e) => {
            metrics.error.inc();
            return Err(e.to_string());
        }
    };
    let rows: HashMap<i64, UserRecord> = rows.into_iter().map(|r| (r.id, r)).collect();
    let mut ended = 0;
    let mut forgotten = HashSet::new();
    for entry in &entries {
        if let Some(cause) = judge(entry, rows.get(&entry.info.user.id)) {
            end(entry, cause, &metrics);
            ended += 1;
            if forgotten.insert(entry.info.user.id) {
                store.forget(Some(entry.info.user.id), Some(&entry.info.user.username));
            }
        }
    }
    debug!(
        sessions = entries.len(),
        users = ids.len(),
        ended,
        "revalidated"
    );
    Ok(ended)
}

/// Revalidates every `every` until `stop`.
pub(crate) async fn run(
    live: Registry,
    store: Arc<Store>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: nobody is live yet
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        match revalidate_once(&live, &store).await {
            Ok(_) if failing => {
                failing = false;
                info!("revalidation works again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e,
                    "cannot re-read the users of live sessions; nobody is revoked until it works \
                     (retried every interval)");
            }
            Err(e) => debug!(error = %e, "revalidation still failing"),
        }
    }
}
