//! The `tether` binary's realm: logs `alice disconnected` (with session id,
//! peer and reason; the server's own `login` line says when a session
//! began, so `alice connected` is a debug line), answers the built-in methods
//! ([`Echo`], [`WhoAmI`], [`ServerTime`]) and keeps a [`Registry`] of live
//! sessions through which server code can reach any device.
//!
//! With a [`Forwarder`] ([`DefaultRealm::forward_to`], `tether serve
//! --forward`) every other call, every notification and the session's
//! `connected` / `disconnected` events go to the Django project
//! (docs/DJANGO.md); without one, other calls get `unknown_method` and
//! notifications are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tether_core::message::RefusalCode;
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, Echo, Identity, ServerTime, WhoAmI};
use tracing::{debug, info, warn};

use crate::forward::{BUILTINS, ForwardSession, Forwarder};
use crate::per_user;
use crate::realm::{
    Avatar, CallResult, IncomingCall, Mind, Realm, SessionEnd, SessionInfo, lock, reply,
};
use crate::untrusted::Untrusted;

/// A live session as the registry lists it.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// What the realm was told at login.
    pub info: SessionInfo,
    /// The handle to call the device.
    pub mind: Mind,
}

/// The live sessions, by session id. Cheap to clone (shared).
///
/// Indexed by account and by username as well, so that a login (the
/// per-user cap) and the admin API's calls to a user's devices touch that
/// user's sessions only, not every session under the lock.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<Sessions>>,
}

#[derive(Debug, Default)]
struct Sessions {
    /// Each entry shared (its avatar holds the same one): a map node holds
    /// a pointer per session instead of the whole entry (~200 bytes, in
    /// nodes about half full: 365 bytes per session and registry).
    by_id: BTreeMap<u64, Arc<SessionEntry>>,
    /// (user id, session id): an account's sessions, oldest first.
    by_user: BTreeSet<(i64, u64)>,
    /// (hash of the username, session id): a username's sessions, oldest
    /// first, with another name's when two hash alike (each checked
    /// against its entry). A hash instead of the name: 16 bytes per
    /// session, no allocation.
    by_name: BTreeSet<(u64, u64)>,
    /// Keys chosen per process.
    hasher: RandomState,
}

impl Sessions {
    fn name_key(&self, username: &str) -> u64 {
        self.hasher.hash_one(username)
    }

    /// The sessions of `username`, oldest first.
    fn named<'s>(
        &'s self,
        username: &'s str,
    ) -> impl DoubleEndedIterator<Item = &'s Arc<SessionEntry>> {
        let key = self.name_key(username);
        self.by_name
            .range((key, 0)..=(key, u64::MAX))
            .filter_map(|(_, id)| self.by_id.get(id))
            .filter(move |e| e.info.user.username == username)
    }

    fn insert(&mut self, entry: Arc<SessionEntry>) {
        let id = entry.info.id;
        // Session ids are never reused; should one be, the old entry goes
        // whole.
        self.remove(id);
        self.by_user.insert((entry.info.user.id, id));
        self.by_name
            .insert((self.name_key(&entry.info.user.username), id));
        self.by_id.insert(id, entry);
    }

    fn remove(&mut self, session_id: u64) {
        if let Some(e) = self.by_id.remove(&session_id) {
            self.by_user.remove(&(e.info.user.id, session_id));
            let key = self.name_key(&e.info.user.username);
            self.by_name.remove(&(key, session_id));
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).by_id.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All live sessions, by id.
    pub fn list(&self) -> Vec<SessionEntry> {
        lock(&self.sessions)
            .by_id
            .values()
            .map(|e| SessionEntry::clone(e))
            .collect()
    }

    /// The live sessions of a user, oldest first.
    pub fn list_of(&self, username: &str) -> Vec<SessionEntry> {
        lock(&self.sessions)
            .named(username)
            .map(|e| SessionEntry::clone(e))
            .collect()
    }

    /// The mind of a session.
    pub fn mind(&self, session_id: u64) -> Option<Mind> {
        lock(&self.sessions)
            .by_id
            .get(&session_id)
            .map(|e| e.mind.clone())
    }

    /// The minds of every session of a user, oldest first.
    pub fn minds_of(&self, username: &str) -> Vec<Mind> {
        lock(&self.sessions)
            .named(username)
            .map(|e| e.mind.clone())
            .collect()
    }

    /// The mind of the user's newest live session (the highest session id:
    /// ids grow with each login), skipping sessions already closing: the
    /// device to call when a user may have reconnected and left an older
    /// session behind.
    pub fn newest_of(&self, username: &str) -> Option<Mind> {
        lock(&self.sessions)
            .named(username)
            .rev()
            .find(|e| !e.mind.is_closing())
            .map(|e| e.mind.clone())
    }

    pub(crate) fn insert(&self, entry: Arc<SessionEntry>) {
        lock(&self.sessions).insert(entry);
    }

    /// Lists a new session unless its account is at `cap` live sessions
    /// ([`per_user`]): `Ok` with the sessions to close for it (their minds,
    /// oldest first), `Err` when it is refused. Sessions already closing
    /// do not count.
    pub(crate) fn insert_capped(
        &self,
        entry: SessionEntry,
        cap: usize,
        policy: per_user::Policy,
    ) -> Result<Vec<Mind>, ()> {
        let mut sessions = lock(&self.sessions);
        let user = entry.info.user.id;
        // By id, so oldest first.
        let live: Vec<u64> = sessions
            .by_user
            .range((user, 0)..=(user, u64::MAX))
            .filter(|(_, id)| sessions.by_id.get(id).is_some_and(|e| !e.mind.is_closing()))
            .map(|&(_, id)| id)
            .collect();
        let replaced = match per_user::decide(&live, cap, policy) {
            per_user::Decision::Refuse => return Err(()),
            per_user::Decision::Admit => Vec::new(),
            per_user::Decision::Replace(ids) => ids
                .iter()
                .filter_map(|id| sessions.by_id.get(id).map(|e| e.mind.clone()))
                .collect(),
        };
        sessions.insert(Arc::new(entry));
        Ok(replaced)
    }

    pub(crate) fn remove(&self, session_id: u64) {
        lock(&self.sessions).remove(session_id);
    }
}

/// What the default realm reports, for programs that embed it (the demo
/// prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealmEvent {
    /// A device logged in.
    Connected {
        /// Session id.
        session: u64,
        /// Username.
        username: String,
        /// Peer address.
        peer: SocketAddr,
    },
    /// The device answered `device_info`.
    DeviceInfo {
        /// Session id.
        session: u64,
        /// The firmware it reported.
        firmware: String,
        /// Its uptime.
        uptime_secs: u64,
    },
    /// A device's session ended.
    Disconnected {
        /// Session id.
        session: u64,
        /// Username.
        username: String,
        /// Why.
        end: SessionEnd,
    },
}

/// The binary's realm.
#[derive(Debug, Clone, Default)]
pub struct DefaultRealm {
    registry: Registry,
    ask_device_info: bool,
    events: Option<tokio::sync::mpsc::UnboundedSender<RealmEvent>>,
    forward: Option<Forwarder>,
}

impl DefaultRealm {
    /// A realm with an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also calls [`DeviceInfo`] on each device once it is attached, and
    /// logs the answer.
    pub fn ask_device_info(mut self, yes: bool) -> Self {
        self.ask_device_info = yes;
        self
    }

    /// Sends [`RealmEvent`]s to a channel.
    pub fn with_events(mut self, tx: tokio::sync::mpsc::UnboundedSender<RealmEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Hands every call the realm does not answer itself (and the
    /// built-ins the forwarder names), every notification and the session
    /// events to the Django project.
    pub fn forward_to(mut self, forwarder: Forwarder) -> Self {
        self.forward = Some(forwarder);
        self
    }

    /// The registry of live sessions.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }
}

/// The default realm's avatar for one session.
#[derive(Debug)]
pub struct DefaultAvatar {
    /// The session's info and mind, shared with the registry's entry.
    entry: Arc<SessionEntry>,
    registry: Registry,
    ask_device_info: bool,
    events: Option<tokio::sync::mpsc::UnboundedSender<RealmEvent>>,
    /// Boxed: most servers do not forward, and every idle session would
    /// carry the room for it (~250 bytes).
    forward: Option<Box<(Forwarder, ForwardSession)>>,
}

impl Realm for DefaultRealm {
    type Avatar = DefaultAvatar;

    async fn avatar(
        &self,
        session: &SessionInfo,
        mind: Mind,
    ) -> Result<DefaultAvatar, RefusalCode> {
        // Listed before the welcome is sent (the server calls `detached`
        // even when the welcome cannot be sent, which unlists it).
        let entry = Arc::new(SessionEntry {
            info: session.clone(),
            mind,
        });
        self.registry.insert(entry.clone());
        // Queues `connected` now, so it is delivered before anything the
        // device sends.
        let forward = self
            .forward
            .as_ref()
            .map(|f| Box::new((f.clone(), f.session(session, &entry.mind))));
        Ok(DefaultAvatar {
            entry,
            registry: self.registry.clone(),
            ask_device_info: self.ask_device_info,
            events: self.events.clone(),
            forward,
        })
    }
}

impl DefaultAvatar {
    fn emit(&self, event: RealmEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Avatar for DefaultAvatar {
    async fn call(&self, call: IncomingCall) -> CallResult {
        if let Some((forwarder, session)) = self.forward.as_deref()
            && (!BUILTINS.contains(&call.method()) || forwarder.forwards_builtin(call.method()))
        {
            return session.call(&call.method, call.args).await;
        }
        match call.method() {
            Echo::NAME => reply::<Echo>(&call.args::<Echo>()?),
            WhoAmI::NAME => {
                call.args::<WhoAmI>()?;
                reply::<WhoAmI>(&Identity {
                    user_id: self.entry.info.user.id,
                    username: &self.entry.info.user.username,
                    session_id: self.entry.info.id,
                    is_superuser: self.entry.info.user.is_superuser,
                })
            }
            ServerTime::NAME => {
                call.args::<ServerTime>()?;
                reply::<ServerTime>(&unix_millis(SystemTime::now()))
            }
            _ => Err(call.unknown_method()),
        }
    }

    async fn notify(&self, method: String, args: Vec<u8>) {
        // Queued at once (the session's first poll): the order is kept.
        if let Some((_, session)) = self.forward.as_deref() {
            session.notify(&method, args);
        }
    }

    async fn attached(&self) {
        let info = &self.entry.info;
        // The server's `login` line (info) already says this, with more:
        // one info line per login is a measurable share of a login's cost.
        debug!(session = info.id, peer = %info.peer, "{} connected", Untrusted(&info.user.username));
        self.emit(RealmEvent::Connected {
            session: info.id,
            username: info.user.username.clone(),
            peer: info.peer,
        });
        if self.ask_device_info {
            match self
                .entry
                .mind
                .call_timeout::<DeviceInfo>(&(), Duration::from_secs(10))
                .await
            {
                Ok(reply) => {
                    let status = reply.get();
                    info!(
                        session = info.id,
                        firmware = %Untrusted(status.firmware),
                        uptime_secs = status.uptime_secs,
                        "{}'s device answered device_info",
                        Untrusted(&info.user.username)
                    );
                    self.emit(RealmEvent::DeviceInfo {
                        session: info.id,
                        firmware: status.firmware.to_string(),
                        uptime_secs: status.uptime_secs,
                    });
                }
                Err(e) => {
                    // A remote error carries the device's own message.
                    let error = e.to_string();
                    warn!(session = info.id, error = %Untrusted(&error), "device_info failed")
                }
            }
        }
    }

    async fn detached(&self, end: SessionEnd) {
        let info = &self.entry.info;
        self.registry.remove(info.id);
        if let Some((_, session)) = self.forward.as_deref() {
            session.disconnected(&end);
        }
        info!(session = info.id, peer = %info.peer, reason = %end, "{} disconnected", Untrusted(&info.user.username));
        self.emit(RealmEvent::Disconnected {
            session: info.id,
            username: info.user.username.clone(),
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use tether_core::message::GoodbyeReason;
    use tether_core::scram::Mechanism;

    use super::*;
    use crate::metrics::{Direction, Metrics};
    use crate::realm::{CredentialDigest, User};

    fn entry(session: u64, user: i64, username: &str) -> SessionEntry {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mind = Mind::new(
            session,
            peer,
            username.into(),
            4,
            Duration::from_secs(1),
            512,
            Metrics::new().calls(Direction::ToDevice),
        );
        let info = SessionInfo {
            id: session,
            peer,
            user: User {
                id: user,
                username: username.into(),
                is_superuser: false,
                permission: None,
                group: None,
            },
            mechanism: Mechanism::ScramSha256,
            started: SystemTime::now(),
            credential: CredentialDigest::of(""),
        };
        SessionEntry { info, mind }
    }

    fn ids(minds: &[Mind]) -> Vec<u64> {
        minds.iter().map(Mind::session_id).collect()
    }

    /// A registry with alice's sessions 3, 7, 12 among 3,000 of others
    /// (each their own account, one named like alice's id for the index).
    fn crowded() -> Registry {
        let r = Registry::new();
        for s in 1..=3_000u64 {
            let (user, name) = match s {
                3 | 7 | 12 => (1, "alice".to_string()),
                _ => (s as i64 + 100, format!("user{s}")),
            };
            r.insert(Arc::new(entry(s, user, &name)));
        }
        r
    }

    #[test]
    fn a_users_sessions_are_found_oldest_first_among_many() {
        let r = crowded();
        assert_eq!(r.len(), 3_000);
        assert_eq!(ids(&r.minds_of("alice")), [3, 7, 12]);
        let listed: Vec<u64> = r.list_of("alice").iter().map(|e| e.info.id).collect();
        assert_eq!(listed, [3, 7, 12]);
        assert_eq!(r.newest_of("alice").unwrap().session_id(), 12);
        assert_eq!(ids(&r.minds_of("user5")), [5]);
        assert!(r.minds_of("alic").is_empty() && r.newest_of("nobody").is_none());
        // A session asked to close is skipped by newest_of, still listed.
        r.mind(12).unwrap().close(GoodbyeReason::Kicked);
        assert_eq!(r.newest_of("alice").unwrap().session_id(), 7);
        assert_eq!(ids(&r.minds_of("alice")), [3, 7, 12]);
        r.remove(7);
        assert_eq!(ids(&r.minds_of("alice")), [3, 12]);
        assert_eq!(r.newest_of("alice").unwrap().session_id(), 3);
    }

    #[test]
    fn the_per_user_cap_counts_the_accounts_live_sessions_only() {
        let r = crowded();
        // Three live: at a cap of 3 the oldest makes room.
        let replaced =
            r.insert_capped(entry(3_001, 1, "alice"), 3, per_user::Policy::ReplaceOldest);
        assert_eq!(ids(&replaced.unwrap()), [3]);
        // The closing one no longer counts (the realm closes the replaced).
        r.mind(3).unwrap().close(GoodbyeReason::Replaced);
        assert!(
            r.insert_capped(entry(3_002, 1, "alice"), 3, per_user::Policy::Refuse)
                .is_err()
        );
        r.remove(12);
        assert!(
            r.insert_capped(entry(3_002, 1, "alice"), 3, per_user::Policy::Refuse)
                .unwrap()
                .is_empty()
        );
        // Another account is not capped by alice's sessions.
        assert!(
            r.insert_capped(entry(3_003, 2, "bob"), 1, per_user::Policy::Refuse)
                .unwrap()
                .is_empty()
        );
        assert_eq!(ids(&r.minds_of("alice")), [3, 7, 3_001, 3_002]);
    }

    #[test]
    fn removing_every_session_empties_the_indexes() {
        let r = crowded();
        for s in 1..=3_000 {
            r.remove(s);
        }
        r.remove(5);
        let inner = lock(&r.sessions);
        assert!(inner.by_id.is_empty() && inner.by_user.is_empty() && inner.by_name.is_empty());
    }
}
