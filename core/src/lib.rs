//! # tether-core
//!
//! The sans-IO protocol core of Tether: devices log in to a server against a
//! Django user database with SCRAM (the password never crosses the wire and
//! the server never runs PBKDF2), then exchange authenticated calls both ways.
//!
//! `no_std`, no allocator (but for the `alloc` feature's growable call
//! tables, for servers), no unsafe, no I/O: callers feed bytes in and get
//! bytes and values out. The server (tether-server) and the firmware client
//! (tether-firmware) only move these bytes.
//!
//! | module | owns |
//! |---|---|
//! | [`frame`] | length-prefixed frames, incremental decoder |
//! | [`message`] | handshake and session messages (postcard) |
//! | [`scram`] | SCRAM-SHA-256/SHA-1 client and server state machines |
//! | [`django`] | Django `pbkdf2_*` hashes as SCRAM verifiers |
//! | [`session`] | per-direction keys, sequence numbers and tags |
//! | [`method`] | typed methods shared by device and server |
//! | [`connection`] | the connection state machines: handshake order, calls, heartbeat, goodbye |
//! | `noise` | protocol v2's Noise NN and NK handshakes (feature `v2`) |
//!
//! The whole flow, both ends in one place: a device's and a server's
//! connection machine ([`connection`]), bytes handed from one to the other
//! (in real life each end runs on its own machine and a driver moves the
//! bytes: `examples/blocking.rs` does it over a `TcpStream`):
//!
//! ```
//! use core::time::Duration;
//! use tether_core::connection::{
//!     ClientConfig, ClientHandshake, Decoy, Event, Instant, ServerConfig, ServerHandshake, ServerStep,
//! };
//! use tether_core::method::{self, builtin::Echo};
//! use tether_core::scram::{ClientCredentials, Mechanism};
//! # struct Rng(u8);
//! # impl rand_core::TryRng for Rng {
//! #     type Error = core::convert::Infallible;
//! #     fn try_next_u32(&mut self) -> Result<u32, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u32) }
//! #     fn try_next_u64(&mut self) -> Result<u64, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u64) }
//! #     fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), Self::Error> { for b in d { self.0 = self.0.wrapping_add(1); *b = self.0 } Ok(()) }
//! # }
//! # impl rand_core::TryCryptoRng for Rng {}
//! # let (mut device_rng, mut server_rng) = (Rng(0), Rng(100));
//! /// What a transport does: the bytes into the receiving machine.
//! macro_rules! deliver {
//!     ($to:expr, $bytes:expr) => {{
//!         let mut bytes: &[u8] = $bytes;
//!         while !bytes.is_empty() {
//!             let dest = $to.receive_buffer(); // exactly what the frame still misses
//!             let n = dest.len().min(bytes.len());
//!             dest[..n].copy_from_slice(&bytes[..n]);
//!             $to.commit(n);
//!             bytes = &bytes[n..];
//!         }
//!     }};
//! }
//! // The server's row for alice, as Django stored it (password "wonderland").
//! let row = "pbkdf2_sha256$4096$W8ZxHXvUYrZMB2ce3tJeqs$Gf7trYHHXjQXenT0TXmV2mr2SsIdi492WLVThfHnB/k=";
//! let decoy = Decoy { secret: b"the server's secret", iterations: 1_000_000, mechanism: Mechanism::ScramSha256 };
//! let now = Instant::from_millis(0);
//! let (mut device_rx, mut wire) = ([0u8; 512], [0u8; 512]);
//!
//! // Device: the hello (the machine builds it).
//! let mut device = ClientHandshake::<4>::new(&mut device_rx, "alice",
//!     ClientCredentials::Password("wonderland"), &ClientConfig::default(), &mut device_rng)?;
//! let mut server = ServerHandshake::<Vec<u8>>::new(vec![0; 4096], ServerConfig::default(), now)?;
//! deliver!(server, device.poll_transmit(now, &mut wire).unwrap());
//!
//! // Server: pauses for the lookup, then challenges (no PBKDF2 on the server).
//! let Some(ServerStep::Login(request)) = server.poll()? else { unreachable!() };
//! assert_eq!(request.username, "alice");
//! let account = tether_core::django::credentials(row).ok();
//! server.challenge(account, &decoy, &mut server_rng)?;
//! deliver!(device, server.poll_transmit(&mut wire).unwrap());
//!
//! // Device: checks the challenge, runs PBKDF2 once, proves.
//! assert!(device.poll(now)?.is_none());
//! deliver!(server, device.poll_transmit(now, &mut wire).unwrap());
//!
//! // Server: the proof is good; the welcome hands over the session.
//! let Some(ServerStep::Verified(_)) = server.poll()? else { unreachable!() };
//! let (mut server_conn, welcome) = server.welcome(1, now, &mut wire)?;
//! deliver!(device, welcome);
//! let established = device.poll(now)?.expect("the server proved itself");
//! // established.keys can be saved: later logins use ClientCredentials::Keys, no PBKDF2.
//! let mut device_conn = established.connection;
//!
//! // A call, its arguments encoded straight into the sealed frame, and its reply.
//! let mut tx = [0u8; 512];
//! let (id, frame) = device_conn.call::<Echo>(now, &"hi", Duration::from_secs(5), &mut tx)?;
//! deliver!(server_conn, frame);
//! let Some(Event::Call(call)) = server_conn.poll_event(now)? else { unreachable!() };
//! assert!(call.is::<Echo>());
//! let token = call.into_token();
//! deliver!(device_conn, server_conn.reply_typed::<Echo>(token, now, &mut wire, &"hi")?);
//! let Some(Event::Reply(reply)) = device_conn.poll_event(now)? else { unreachable!() };
//! let result = reply.result.expect("a reply, not a failure");
//! assert_eq!((reply.id, method::decode_reply::<Echo>(result)?), (id, "hi"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Wire format, byte by byte: `docs/PROTOCOL.md` in the repository.
//!
//! Caveat: a raw Django pbkdf2 row is password-equivalent for this protocol
//! (someone holding a copy of `auth_user` can log a device in, though not
//! learn the password). Protect the database as you would the passwords.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
#[macro_use]
extern crate std;

mod b64;
mod b85;
mod codec;
pub mod connection;
pub mod django;
pub mod frame;
pub mod message;
pub mod method;
#[cfg(feature = "v2")]
pub mod noise;
pub mod scram;
pub mod session;
mod sha256;

pub use rand_core;
