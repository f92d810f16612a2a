//! # tether-server
//!
//! The Django side of Tether: devices log in with the accounts a Django site
//! manages (its own `auth_user` table, read with one indexed query per
//! login), then call methods on the server while the server calls methods on
//! them. All protocol logic (framing, SCRAM, session tags, messages) is
//! tether-core's; this crate moves bytes, reads the database and runs the
//! sessions on tokio.
//!
//! | module | owns |
//! |---|---|
//! | [`admin`] | the admin HTTP API (axum): sessions, calls to devices, kick, health, metrics |
//! | [`metrics`] | Prometheus metrics (logins, sessions, calls, database, throttle, frames); feature `metrics` |
//! | [`fd_limit`] | the file descriptor limit: raised at start, checked against the limits, a spare to refuse `busy` when none is left |
//! | [`log_limit`] | rate-limited log lines for what an outsider can cause at will |
//! | [`untrusted`] | text from outside made safe to log ([`untrusted::Untrusted`]) |
//! | [`store`] | Django credential store (SQLite, PostgreSQL, MySQL/MariaDB: features `sqlite`, `postgres`, `mysql`), permission and group gates, `last_login`, TTL cache |
//! | [`throttle`] | failed-login backoff per username and per address |
//! | [`secret`] | the server secret behind decoy challenges |
//! | [`decoy`] | which challenge a login gets: the account's verifier or a decoy shaped like the rows |
//! | [`realm`] | [`Realm`], [`Avatar`], [`Mind`]: the seed's roles |
//! | [`revalidate`] | revocation: sessions whose user may no longer log in end with `Goodbye(Revoked)` |
//! | [`default_realm`] | the binary's realm and its [`Registry`] of live sessions |
//! | [`forward`] | `--forward`: device calls, notifications and session events to the Django project over HTTP (docs/DJANGO.md) |
//! | [`server`] | listener, limits, graceful shutdown |
//! | [`per_user`] | how many sessions one account may hold, and what a login beyond that does |
//! | [`admission`] | which new connections get a handshake slot: per-address share, random early drop, eviction of silent connections |
//! | [`session`] | per-connection session task (calls both ways, heartbeat) |
//! | [`dispatch`] | [`dispatch::Methods`]: an avatar's methods as one async closure each |
//!
//! The `tether` binary (its command line and `tether demo`) is built on
//! this API alone; it is not part of it.
//!
//! **Cargo features**, all in the default features: `cli` (the `tether`
//! binary: clap, rpassword; implies `admin`, `sqlite` and `metrics`),
//! `admin` (the admin API: axum, hyper), `sqlite`, `postgres`, `mysql` (the
//! database drivers: a URL of one left out is refused with
//! [`StoreError::Config`] naming its feature), `metrics` (prometheus-client:
//! without it nothing is recorded and the admin API's `/metrics` answers
//! `404`). The smallest build that serves devices is
//! `default-features = false, features = ["sqlite"]` (or `postgres`, or
//! `mysql`). With no database feature the crate compiles, but
//! [`Store::open`] refuses every URL, so no server starts.
//!
//! The login itself (`login`, private) follows `docs/CONNECTION.md` step by
//! step.
//!
//! Caveat: a Django `pbkdf2_*` row is password-equivalent for this protocol
//! (whoever holds a copy of the table can log a device in as that user,
//! though not learn the password). Protect the database accordingly.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod admission;
pub mod decoy;
pub mod default_realm;
pub mod dispatch;
pub mod fd_limit;
pub mod forward;
mod lease;
pub mod log_limit;
mod login;
pub mod metrics;
pub mod per_user;
mod queue;
pub mod realm;
pub mod revalidate;
pub mod secret;
pub mod server;
pub mod server_key;
pub mod session;
pub mod store;
mod stream;
pub mod throttle;
mod timefmt;
pub mod untrusted;

#[cfg(feature = "admin")]
pub use admin::{Admin, AdminConfig, AdminToken};
pub use default_realm::{DefaultRealm, Registry};
pub use metrics::Metrics;
pub use realm::{
    Avatar, CallError, CallResult, IncomingCall, Mind, Realm, RemoteError, Reply, SessionEnd,
    SessionInfo, User,
};
pub use secret::ServerSecret;
pub use server::{LISTEN_BACKLOG, NoiseKeys, Server, ServerConfig, ServerHandle, listen};
pub use session::SessionConfig;
pub use store::{Store, StoreConfig, StoreError};
pub use throttle::ThrottleConfig;
