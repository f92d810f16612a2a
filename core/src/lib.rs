//! # tether-core
//!
//! The sans-IO protocol core of Tether: devices log in to a server against a
//! Django user database with SCRAM (the password never crosses the wire and
//! the server never runs PBKDF2), then exchange authenticated calls both ways.
//!
//! `no_std`, no allocator, no unsafe, no I/O: callers feed bytes in and get
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
//! | `noise` | protocol v2's Noise NN and NK handshakes (feature `v2`) |
//!
//! The whole flow, both ends in one place (in real life each end runs on its
//! own machine and only the frames cross the network):
//!
//! ```
//! use tether_core::frame::{encode_message, FrameDecoder};
//! use tether_core::message::{self, Challenge, Handshake, Hello, Message, Proof, Welcome};
//! use tether_core::scram::{ClientConfig, ClientCredentials, ClientLogin, ServerLogin};
//! use tether_core::session::Role;
//! # struct Rng(u8);
//! # impl rand_core::TryRng for Rng {
//! #     type Error = core::convert::Infallible;
//! #     fn try_next_u32(&mut self) -> Result<u32, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u32) }
//! #     fn try_next_u64(&mut self) -> Result<u64, Self::Error> { self.0 = self.0.wrapping_add(1); Ok(self.0 as u64) }
//! #     fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), Self::Error> { for b in d { self.0 = self.0.wrapping_add(1); *b = self.0 } Ok(()) }
//! # }
//! # impl rand_core::TryCryptoRng for Rng {}
//! # let (mut device_rng, mut server_rng) = (Rng(0), Rng(100));
//! // The server's row for alice, as Django stored it (password "wonderland").
//! let row = "pbkdf2_sha256$4096$W8ZxHXvUYrZMB2ce3tJeqs$Gf7trYHHXjQXenT0TXmV2mr2SsIdi492WLVThfHnB/k=";
//! let (mut wire, mut buf) = ([0u8; 512], [0u8; 512]);
//!
//! // Device: hello with the SCRAM client-first-message.
//! let login = ClientLogin::<256>::new("alice", ClientCredentials::Password("wonderland"),
//!     ClientConfig::default(), &mut device_rng).unwrap();
//! let hello = Handshake::Hello(Hello { version: message::PROTOCOL_VERSION,
//!     mechanisms: login.mechanisms(), max_frame: 512, client_first: login.client_first() });
//! let frame = encode_message(&hello, &mut wire, 512).unwrap();
//!
//! // Server: decode the frame, look up the user, challenge.
//! let mut decoder = FrameDecoder::new(&mut buf, 512);
//! let (_, body) = decoder.push(frame).unwrap();
//! let Handshake::Hello(hello) = message::decode(body.unwrap()).unwrap() else { panic!() };
//! let server = ServerLogin::<512>::new(hello.client_first).unwrap();
//! assert_eq!(server.username(), "alice");
//! let creds = tether_core::django::credentials(row).unwrap(); // no PBKDF2 here
//! let server = server.challenge(&creds, &mut server_rng).unwrap();
//! let challenge = Challenge { mechanism: creds.mechanism, server_first: server.server_first() };
//!
//! // Device: prove (runs PBKDF2 once); server: verify and prove itself.
//! let device = login.handle_challenge(challenge.mechanism, challenge.server_first).unwrap();
//! let proof = Proof { client_final: device.client_final() };
//! let done = server.verify(proof.client_final).unwrap();
//! let welcome = Welcome { server_final: done.server_final(), session_id: 1, max_frame: 512,
//!     heartbeat_secs: 30 };
//! let device = device.handle_server_final(welcome.server_final).unwrap();
//! // device.keys can be saved: later logins use ClientCredentials::Keys, no PBKDF2.
//!
//! // Both: authenticated session frames.
//! let (mut device_tx, _device_rx) = device.session.into_halves(Role::Client);
//! let (_server_tx, mut server_rx) = done.session.into_halves(Role::Server);
//! let call = Message::Call { id: 1, method: "echo", args: b"\x02hi" };
//! let frame = device_tx.seal(&call, &mut wire, 512).unwrap();
//! let mut decoder = FrameDecoder::new(&mut buf, 512);
//! let (_, body) = decoder.push(frame).unwrap();
//! assert_eq!(server_rx.open(body.unwrap()).unwrap(), call);
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

#[cfg(test)]
#[macro_use]
extern crate std;

mod b64;
mod b85;
mod codec;
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
