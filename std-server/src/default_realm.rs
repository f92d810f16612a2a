//! The `tether` binary's realm: logs `alice connected` / `alice
//! disconnected` (with session id and peer), answers the built-in methods
//! ([`Echo`], [`WhoAmI`], [`ServerTime`]) and keeps a [`Registry`] of live
//! sessions through which server code can reach any device.
//!
//! With a [`Forwarder`] ([`DefaultRealm::forward_to`], `tether serve
//! --forward`) every other call, every notification and the session's
//! `connected` / `disconnected` events go to the Django project
//! (docs/DJANGO.md); without one, other calls get `unknown_method` and
//! notifications are ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tether_core::message::RefusalCode;
use tether_core::method::Method;
use tether_core::method::builtin::{DeviceInfo, Echo, Identity, ServerTime, WhoAmI};
use tracing::{info, warn};

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
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Each entry shared (its avatar holds the same one): a map node holds
    /// a pointer per session instead of the whole entry (~200 bytes, in
    /// nodes about half full: 365 bytes per session and registry).
    sessions: Arc<Mutex<BTreeMap<u64, Arc<SessionEntry>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All live sessions, by id.
    pub fn list(&self) -> Vec<SessionEntry> {
        lock(&self.sessions)
            .values()
            .map(|e| SessionEntry::clone(e))
            .collect()
    }

    /// The mind of a session.
    pub fn mind(&self, session_id: u64) -> Option<Mind> {
        lock(&self.sessions)
            .get(&session_id)
            .map(|e| e.mind.clone())
    }

    /// The minds of every session of a user.
    pub fn minds_of(&self, username: &str) -> Vec<Mind> {
        lock(&self.sessions)
            .values()
            .filter(|e| e.info.user.username == username)
            .map(|e| e.mind.clone())
            .collect()
    }

    /// The mind of the user's newest live session (the highest session id:
    /// ids grow with each login), skipping sessions already closing: the
    /// device to call when a user may have reconnected and left an older
    /// session behind.
    pub fn newest_of(&self, username: &str) -> Option<Mind> {
        lock(&self.sessions)
            .values()
            .rev()
            .find(|e| e.info.user.username == username && !e.mind.is_closing())
            .map(|e| e.mind.clone())
    }

    pub(crate) fn insert(&self, entry: Arc<SessionEntry>) {
        lock(&self.sessions).insert(entry.info.id, entry);
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
            .values()
            .filter(|e| e.info.user.id == user && !e.mind.is_closing())
            .map(|e| e.info.id)
            .collect();
        let replaced = match per_user::decide(&live, cap, policy) {
            per_user::Decision::Refuse => return Err(()),
            per_user::Decision::Admit => Vec::new(),
            per_user::Decision::Replace(ids) => ids
                .iter()
                .filter_map(|id| sessions.get(id).map(|e| e.mind.clone()))
                .collect(),
        };
        sessions.insert(entry.info.id, Arc::new(entry));
        Ok(replaced)
    }

    pub(crate) fn remove(&self, session_id: u64) {
        lock(&self.sessions).remove(&session_id);
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
        info!(session = info.id, peer = %info.peer, "{} connected", Untrusted(&info.user.username));
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
