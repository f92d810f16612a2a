//! # tether-firmware
//!
//! The Tether client for devices: `no_std`, no allocator, no unsafe, async
//! over any transport with [`embedded_io_async::Read`],
//! [`Write`](embedded_io_async::Write) and
//! [`ReadReady`](embedded_io_async::ReadReady). A device logs in to a Tether server against the server's
//! Django user database (SCRAM: the password never crosses the wire, and the
//! server proves it holds the account's verifier), then calls the server and
//! answers the server's calls over authenticated frames. Every rule of the
//! protocol (SCRAM, framing, handshake order, call ids, heartbeats, goodbyes)
//! is tether-core's connection machine ([`tether_core::connection`]); this
//! crate drives it: it moves bytes, keeps time and runs the application's
//! handler.
//!
//! | piece | what |
//! |---|---|
//! | [`Session::login`] | password or cached-keys login (v1, or v2 with the feature `v2`); returns the keys to persist |
//! | [`Session::call`], [`Session::send_call`] + [`Session::next_reply`] | typed calls ([`Method`](tether_core::method::Method)) with timeouts, several in flight |
//! | [`Session::notify`], [`Handler::on_notify`] | notifications both ways |
//! | [`Handler`] | the mind: answers the server's calls, served while idle and while the device waits for its own replies |
//! | [`Session::serve`], [`serve_for`](Session::serve_for), [`serve_until`](Session::serve_until) | stay reachable while idle; heartbeats |
//! | [`Session::close`] | clean goodbye |
//! | [`Error`], [`CallError`] | what happened: refused with which code, server closed, tag mismatch, timeout, transport |
//! | [`Clock`] | time from the runtime: `EmbassyClock` (`embassy-time`), `TokioClock` (`std`) |
//! | `host` (feature `std`) | `connect(addr, ...)` over a tokio `TcpStream` |
//! | `embassy` (feature `embassy-net`) | TcpSocket connect, login, keep the session: reconnect with [`Backoff`] (exponential, jitter), cached keys; the server by name (feature `dns`) |
//! | `storage` (feature `storage`) | the username and cached keys in NOR flash, power-cut safe; factory provisioning |
//!
//! ## The whole thing
//!
//! ```no_run
//! use core::time::Duration;
//! use embedded_io_async::{Read, ReadReady, Write};
//! use tether_core::method::builtin::{DeviceInfo, DeviceStatus, Echo, WhoAmI};
//! use tether_core::method::Method;
//! use tether_core::rand_core::CryptoRng;
//! use tether_core::scram::{CachedKeys, ClientCredentials};
//! use tether_firmware::{
//!     Buffers, CallError, Clock, Config, Error, Handler, Request, Responded, Responder, Session,
//! };
//!
//! /// A method of this application: the device reports a temperature.
//! struct Temperature;
//! impl Method for Temperature {
//!     const NAME: &'static str = "temperature";
//!     type Args<'a> = f32;
//!     type Reply<'a> = ();
//! }
//! impl tether_core::method::ToServer for Temperature {}
//!
//! /// The mind: how the device answers the server.
//! struct Mind;
//! impl Handler for Mind {
//!     async fn on_call(&mut self, req: Request<'_>, reply: Responder<'_>) -> Responded {
//!         if req.is::<DeviceInfo>() {
//!             reply.ok::<DeviceInfo>(&DeviceStatus { firmware: "sensor 1.0", uptime_secs: 7 })
//!         } else if req.is::<Echo>() {
//!             match req.args::<Echo>() {
//!                 Ok(text) => reply.ok::<Echo>(&text),
//!                 Err(_) => reply.bad_arguments(),
//!             }
//!         } else {
//!             reply.unknown_method()
//!         }
//!     }
//!     async fn on_notify(&mut self, method: &str, _args: &[u8]) {
//!         let _ = method; // e.g. "config_changed"
//!     }
//! }
//!
//! /// One connection's life: `io` is a connected TCP socket (embassy-net's
//! /// `TcpSocket`, or `host::transport` over a tokio stream). `ReadReady`
//! /// lets the session flush once per burst of frames; a transport that
//! /// cannot tell answers `Ok(false)` (a flush per frame).
//! async fn run<T: Read + Write + ReadReady, C: Clock>(
//!     io: T,
//!     clock: C,
//!     rng: &mut impl CryptoRng,
//!     saved_keys: Option<&CachedKeys>,
//! ) -> Result<(), Error<T::Error>> {
//!     // 512 + 512 bytes, caller-owned (a static or the task's state).
//!     let (mut rx, mut tx) = ([0u8; 512], [0u8; 512]);
//!     let buffers = Buffers { rx: &mut rx, tx: &mut tx };
//!     // Cached keys skip PBKDF2; the password is needed once.
//!     let credentials = match saved_keys {
//!         Some(keys) => ClientCredentials::Keys(keys),
//!         None => ClientCredentials::Password("wonderland"),
//!     };
//!     let config = Config::default().with_min_iterations(600_000);
//!     let login = match Session::login(io, buffers, clock, "sensor-7", credentials, rng, &config).await {
//!         Ok(login) => login,
//!         // Wrong password, unknown or inactive user: do not retry.
//!         Err(e @ Error::Refused { .. }) if !e.is_transient() => return Err(e),
//!         Err(e) => return Err(e),
//!     };
//!     if login.derived {
//!         let _persist_me: &CachedKeys = &login.keys; // write to flash
//!     }
//!     let mut session = login.session;
//!     let mut mind = Mind;
//!
//!     // A typed call; the server may call the device meanwhile (Mind answers).
//!     let me = session.call::<WhoAmI, _>(&(), &mut mind).await.map_err(session_error)?;
//!     let _ = me.username;
//!
//!     // Several calls in flight, replies in any order.
//!     let a = session.send_call::<Echo>(&"a", Duration::from_secs(5)).await.map_err(session_error)?;
//!     let b = session.send_call::<Echo>(&"b", Duration::from_secs(5)).await.map_err(session_error)?;
//!     for _ in 0..2 {
//!         let reply = session.next_reply(&mut mind).await?;
//!         if let Some(echoed) = a.take(&reply) { assert_eq!(echoed, Ok("a")) }
//!         if let Some(echoed) = b.take(&reply) { assert_eq!(echoed, Ok("b")) }
//!     }
//!
//!     // Report every minute; stay reachable (calls, pings, heartbeats) in between.
//!     for _ in 0..3 {
//!         session.notify::<Temperature>(&21.5).await.map_err(session_error)?;
//!         session.serve_for(&mut mind, Duration::from_secs(60)).await?;
//!     }
//!     session.close().await?; // goodbye
//!     Ok(())
//! }
//!
//! /// Call failures that leave the session up are only logged here.
//! fn session_error<E>(e: CallError<'_, E>) -> Error<E> {
//!     match e {
//!         CallError::Session(e) => e,
//!         _ => Error::Ended,
//!     }
//! }
//! ```
//!
//! ## Time
//!
//! Timeouts and heartbeats need a clock that works under embassy and under
//! tokio alike, so the session takes a [`Clock`]: milliseconds and a sleep.
//! `EmbassyClock` (feature `embassy-time`) and `TokioClock` (feature
//! `std`) are provided; anything else is four lines. Nothing runs in the
//! background: the session's methods read, answer pings, send heartbeats and
//! run the handler while they wait, so an idle device calls
//! [`Session::serve`] (or [`serve_for`](Session::serve_for),
//! [`serve_until`](Session::serve_until)).
//!
//! ## RAM
//!
//! Caller-provided [`Buffers`] (or a const-generic [`BufferStore`]): `rx` (at
//! least 512, the largest frame the device accepts) and `tx` (one outgoing
//! frame, into which arguments and answers are encoded in place), one byte
//! of RAM per byte of buffer. Besides them: the [`Session`] (776 bytes on a 64-bit host,
//! less on 32-bit: tether-core's `ClientConnection` with two HMAC-SHA-256
//! states for the frame tags, the call table and the timers; the transport)
//! while a session runs, or the `login` future (about 1 KiB, mostly
//! tether-core's SCRAM state) while logging in, never both.
//!
//! Flash and static RAM on a real board (NUCLEO-F429ZI, `embassy::Link`)
//! are measured by `mcu/nucleo-f429zi/size` and listed in the crate's
//! README (section 3), not here, so that they stay current: CI fails when
//! this crate and tether-core together outgrow 16 KiB of flash.
//!
//! ## Features
//!
//! `std` (host adapter over tokio, `TokioClock`; implies `v2`, and a
//! host's logins are v2 by default), `embassy-time`
//! (`EmbassyClock`), `embassy-net` (the reconnecting TcpSocket helper),
//! `dns` (the server by name), `storage` (username and keys in NOR flash),
//! `v2` (protocol v2: encrypted sessions, see below), `defmt` / `log`
//! (logging; silent without them).
//!
//! ## Protocol v2 (feature `v2`)
//!
//! v1 authenticates both ends and every frame, but what a device sends is
//! readable on the wire, its username included. With the feature `v2`, a
//! login configured for it runs a Noise handshake first, SCRAM bound to it,
//! and every frame after is sealed with ChaCha20-Poly1305
//! (docs/PROTOCOL.md, "Protocol version 2"); calls, notifications and
//! heartbeats are the same API.
//!
//! - `Config::with_server_key(key)` (`Protocol::Pinned`): `Noise_NK`
//!   towards the server's static public key (`tether keys --server` prints
//!   it), pinned in the firmware. Nothing after the device's ephemeral key
//!   is readable, the username included, and only the key's holder can
//!   answer; a server holding another key refuses `unknown_key`.
//! - `Config::with_unpinned_v2()` (`Protocol::Unpinned`): `Noise_NN`:
//!   encrypted, but **the server is not authenticated before SCRAM**, so
//!   an active attacker can read the username and the proof (and attack
//!   the password offline, as a passive one can in v1), though not
//!   complete the login. The default on a host (feature `std`, which turns
//!   `v2` on).
//! - Otherwise, on a device, the login is v1, feature or not. A v2 login
//!   never falls back to v1.
//!
//! Without the feature none of the v2 code is compiled (the v1 flash
//! budget); with it, both patterns and v1 are in the build. Its flash,
//! stack and the handshake's time on a Cortex-M4 are in the README.
//!
//! ## Caveat
//!
//! A first login with a password runs PBKDF2 at the account's iteration
//! count (Django 5.2: 1,000,000), which takes over a minute on a 168 MHz
//! Cortex-M4 (about 10,300 instructions per iteration, counted under QEMU:
//! see the README) and blocks its executor meanwhile, far longer than the
//! server's handshake timeout (`tether serve --handshake-timeout`, 10 s by
//! default); the server then closes the connection and the derived keys
//! are lost with it. Provision such devices with keys derived on a host:
//! `tether keys --user NAME --database URL --format postcard` prints the
//! [`CachedKeys`](tether_core::scram::CachedKeys) as postcard hex, which
//! `examples/provision.rs` turns into an image of the `storage` module's
//! key region. Or raise the server's handshake timeout for the first logins.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[macro_use]
mod fmt;
#[macro_use]
mod outline;

mod backoff;
mod buffers;
mod calls;
mod clock;
mod config;
mod dispatch;
mod error;
mod handler;
mod handshake;
mod io;
mod session;

#[cfg(feature = "embassy-net")]
pub mod embassy;
#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "storage")]
pub mod storage;

pub use backoff::{Backoff, Retry};
pub use buffers::{BufferStore, Buffers};
pub use calls::{Pending, Reply};
pub use clock::Clock;
#[cfg(feature = "embassy-time")]
pub use clock::EmbassyClock;
#[cfg(feature = "std")]
pub use clock::TokioClock;
pub use config::Config;
#[cfg(feature = "v2")]
pub use config::Protocol;
pub use dispatch::{Methods, NoRoute, Refusal, Route, Routes};
#[cfg(feature = "alloc")]
pub use error::OwnedCallError;
pub use error::{CallError, Error, Failure, TimeoutKind};
pub use handler::{Handler, Request, Responded, Responder};
pub use handshake::Established;
#[cfg(feature = "first-login")]
pub use handshake::{Probed, derive_keys, probe};
pub use session::{MAX_CALLS_IN_FLIGHT, Session};
pub use tether_core::connection::LOGIN_MESSAGE_LEN;

pub use embedded_io_async;
pub use tether_core;
