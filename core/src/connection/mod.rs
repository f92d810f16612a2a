//! The connection state machine: the one copy of Tether's connection
//! rules, fed bytes and time by a driver that only moves them (quinn-proto
//! and rustls are the model; the driver may be a blocking socket, an async
//! runtime or a test's vectors).
//!
//! A connection is a handshake, then an established connection:
//!
//! | side | handshake | established |
//! |---|---|---|
//! | device | [`ClientHandshake`] | [`ClientConnection`] |
//! | server | [`ServerHandshake`] | [`ServerConnection`] |
//!
//! Two types, so that no call can be made before login and the
//! handshake's state (SCRAM, up to 1.5 KiB on the server) is gone once the
//! session runs. Both established sides are one type, [`Connection`]: the
//! session rules are the same, with the differences of role listed below.
//!
//! ## Driving one
//!
//! Every machine has the same five entry points:
//!
//! - [`receive_buffer`](Connection::receive_buffer) /
//!   [`commit`](Connection::commit): the transport reads into the first,
//!   which is exactly what the current frame still misses (its length
//!   prefix, then its body), and says how much arrived with the second.
//!   One [`FrameDecoder`](crate::frame::FrameDecoder) reads every frame;
//!   nothing is read ahead, nothing copied. A read of 0 bytes (end of
//!   stream) is [`handle_eof`](Connection::handle_eof).
//! - `poll_transmit(out)`: the next frame this side owes, written at the
//!   start of `out`. Frames the application sends (calls, replies,
//!   notifications) are sealed into the caller's buffer by the method that
//!   sends them and returned to be written at once.
//! - `poll` / [`poll_event`](Connection::poll_event): handles at most one
//!   received frame and says what happened.
//! - `poll_timeout` / `handle_timeout(now)`: the next deadline, and what
//!   happens when it passes. Time is an [`Instant`] in milliseconds from an
//!   origin of the driver's choosing.
//!
//! The loop: `poll` until it returns `Ok(None)`, handling what it returns
//! (answers the application writes at once); then write every frame
//! `poll_transmit` gives, and if there was one, `poll` again (a frame
//! may have waited for it); else wait for input or the timeout. An error
//! from `poll` is final: write what `poll_transmit` still gives (a
//! refusal, a goodbye), then close the transport.
//!
//! ```
//! # use tether_core::connection::*;
//! # use tether_core::message::ErrorCode;
//! # fn demo(conn: &mut ClientConnection<'_>, now: Instant) -> Result<(), ConnectionError> {
//! let mut tx = [0u8; 512];
//! loop {
//!     if let Some(event) = conn.poll_event(now)? {
//!         if let Event::Call(call) = event {
//!             let token = call.into_token();
//!             let frame = conn.error(token, now, &mut tx, ErrorCode::UNKNOWN_METHOD, "no")
//!                 .expect("an error answer always fits");
//!             let _ = frame; // write it
//!         }
//!         continue;
//!     }
//!     let mut sent = false;
//!     while let Some(frame) = conn.poll_transmit(now, &mut tx) {
//!         let _ = frame; // write it
//!         sent = true;
//!     }
//!     if !sent {
//!         break; // read into conn.receive_buffer(), or sleep until conn.poll_timeout()
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! `examples/blocking.rs` is a whole device over a blocking `TcpStream`
//! (and a server to log in to); the crate docs show the flow.
//!
//! ## What the machine decides
//!
//! **Handshake order and refusals** (server): the hello alone decides
//! `protocol` (undecodable or not a hello, `max_frame` below 512, a bad
//! client-first-message), `version` and `unsupported` (no offered
//! mechanism the server can run). Then it pauses ([`ServerStep::Login`])
//! for the driver's lookup, which goes on with
//! [`challenge`](ServerHandshake::challenge) (the account's verifier, or a
//! decoy: an account whose mechanism was not offered gets one too, so the
//! client cannot tell accounts apart) or refuses (`throttled`, `busy`,
//! `unavailable`). A wrong proof, or any proof to a decoy, is
//! `unauthorized`; a malformed one `protocol`. After a good proof it pauses
//! again ([`ServerStep::Verified`]) for the realm, then
//! [`welcome`](ServerHandshake::welcome)s. A refusal is the last frame.
//! The client checks the challenge and the server's signature and sends
//! nothing after a refusal or a failed check.
//!
//! **Frame sizes**: 512 bytes each way before login; after it, each side
//! receives up to its own announced `max_frame` (its buffer) and the
//! machine keeps the peer's, never sending more. A length prefix of 0 or
//! above the maximum fails at its second byte.
//!
//! **Calls and ids**: ids are issued in order from 1 (never 0); every call
//! has a deadline. A call past its deadline is reported as
//! [`CallFailure::TimedOut`] and abandoned; its late reply is dropped.
//! Abandoned calls keep their slot of the table until the late reply
//! comes or a new call needs the slot and the table is at its bound (the
//! oldest is reclaimed, its id forgotten): no slot is lost to a peer that
//! never answers. The tables are bounded by the connection's `CALLS` and
//! `ANSWERS`, and live where its [`Tables`] says: [`Fixed`] arrays (the
//! default; a device's), or with the `alloc` feature `Growable` vectors
//! that grow to the bound on demand and whose storage the driver frees
//! when the connection is quiet ([`Connection::release_tables`]; a
//! server's). A reply to an id not in flight is a protocol error, unless the id is no newer than the
//! newest forgotten one (then it is dropped as late: the table can no
//! longer tell). The peer's calls are owed an answer each: a call beyond
//! the limit of calls running is answered `busy`, during shutdown
//! `shutting_down`, and one whose [`ReplyToken`] was never taken `failed`
//! — every call gets an answer. A reply larger than the peer accepts
//! becomes `failed` "reply too large", and an error message is cut to fit.
//!
//! **Heartbeat** (`heartbeat_secs` = H from the welcome; 0 turns it off):
//! the client pings after H seconds without sending, or without receiving
//! (once per silence); the server never pings. Pong nonces echo the ping's
//! and are not checked: any authenticated frame proves the peer alive.
//! Either side ends the connection after 3 × H seconds without a frame:
//! the server with `Goodbye(idle_timeout)`, the client without a word (its
//! server is presumably gone).
//!
//! **Goodbyes**: a goodbye is the last frame each way; nothing is sent
//! after one, and nothing answers one.
//!
//! | the peer sends | server answers | client answers |
//! |---|---|---|
//! | a length prefix of 0 or above the maximum | `Goodbye(protocol_error)` | `Goodbye(protocol_error)` |
//! | a frame failing its tag or sequence ([`SessionError::goodbye_reason`](crate::session::SessionError::goodbye_reason) `bad_tag`) | `Goodbye(bad_tag)` | nothing: it may not come from the server |
//! | an authentic frame that does not decode | `Goodbye(protocol_error)` | `Goodbye(protocol_error)` |
//! | a reply to a call not in flight, a duplicate call id | `Goodbye(protocol_error)` | `Goodbye(protocol_error)` |
//! | nothing for 3 × H | `Goodbye(idle_timeout)` | nothing |
//! | `Goodbye` | nothing | nothing |

mod calls;
mod client;
#[cfg(feature = "v2")]
mod client_v2;
mod error;
mod established;
mod server;
#[cfg(feature = "v2")]
mod server_v2;

use core::time::Duration;

#[cfg(feature = "alloc")]
pub use calls::Growable;
pub use calls::{Fixed, Tables};
pub use client::{ClientConfig, ClientConnection, ClientHandshake, Established};
#[cfg(feature = "v2")]
pub use client_v2::ClientHandshakeV2;
pub use error::{ConnectionError, RefusalCause, SendError, Violation};
pub use established::{
    CallFailure, Connection, Event, IncomingCall, Notification, REPLY_TOO_LARGE, Reply, ReplyToken,
    max_args_len,
};
pub use server::{
    Challenged, Decoy, DecoyReason, LoginRequest, ServerConfig, ServerConnection, ServerHandshake,
    ServerStep, Verified,
};
#[cfg(feature = "v2")]
pub use server_v2::{KeyUsed, ServerKeys};

/// Heartbeat intervals without a frame after which either side ends the
/// connection (the idle limit, [`ConnectionError::IdleTimeout`]).
pub const IDLE_HEARTBEATS: u16 = 3;

/// The idle limit of a connection whose heartbeat is `heartbeat_secs`
/// ([`IDLE_HEARTBEATS`] intervals); `None` when the heartbeat is off (0).
/// The machine's own rule, for a driver that bounds something else by it
/// (tether-server: how long a write to a device that reads nothing may
/// stay blocked).
pub const fn idle_limit(heartbeat_secs: u16) -> Option<Duration> {
    if heartbeat_secs == 0 {
        return None;
    }
    Some(Duration::from_secs(
        IDLE_HEARTBEATS as u64 * heartbeat_secs as u64,
    ))
}

/// Bytes of the client's SCRAM client-first-message buffer
/// (`n,,n=<user>,r=<nonce>`): usernames up to about 200 bytes (escaped).
pub const LOGIN_MESSAGE_LEN: usize = 256;

/// A point in time: milliseconds since an origin the driver chooses (boot,
/// process start), never going backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `d` later, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis(d)))
    }

    /// The time from `earlier` to this instant (zero if `earlier` is later).
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whole milliseconds of `d`, saturating (no 128-bit arithmetic). One copy
/// in flash: every conversion of a driver and of the machine calls it.
#[inline(never)]
pub(crate) fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}
