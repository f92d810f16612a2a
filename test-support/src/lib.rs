//! Helpers shared by the tests of the Tether crates (dev-dependency only,
//! never in a build that ships):
//!
//! - [`TestRng`]: a deterministic splitmix64 generator standing in for a
//!   device's TRNG, so that a failing test replays exactly;
//! - [`Msg`]: a session [`Message`] with owned fields, to hold, compare and
//!   print what a peer received;
//! - [`free_port`]: a loopback port for a server a test starts as a process;
//! - `wire` (feature `tokio`): a test peer's frame reader over a tokio
//!   stream;
//! - `client` (feature `client`): a device over a tokio stream driven by
//!   tether-core's v1 and v2 client machines.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "tokio")]
pub mod wire;

use tether_core::message::{ErrorCode, GoodbyeReason, Message};
use tether_core::rand_core::{TryCryptoRng, TryRng};

/// A loopback port free a moment ago (nothing listens on it now): for a
/// server started as a separate process, told its port up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A deterministic RNG (splitmix64) for tests only: it marks itself a
/// `CryptoRng` because the code under test asks for one, and it is not one.
#[derive(Debug, Clone)]
pub struct TestRng(pub u64);

impl TryRng for TestRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dest.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for TestRng {}

/// A session message with owned fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// [`Message::Call`].
    Call {
        /// Call id.
        id: u32,
        /// Method name.
        method: String,
        /// Postcard-encoded arguments.
        args: Vec<u8>,
    },
    /// [`Message::Reply`].
    Reply {
        /// The call's id.
        id: u32,
        /// Postcard-encoded result.
        result: Vec<u8>,
    },
    /// [`Message::Error`].
    Error {
        /// The call's id.
        id: u32,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// [`Message::Notify`].
    Notify {
        /// Method name.
        method: String,
        /// Postcard-encoded arguments.
        args: Vec<u8>,
    },
    /// [`Message::Ping`].
    Ping {
        /// Echoed by the pong.
        nonce: u32,
    },
    /// [`Message::Pong`].
    Pong {
        /// The ping's nonce.
        nonce: u32,
    },
    /// [`Message::Goodbye`].
    Goodbye {
        /// Why the sender closes.
        reason: GoodbyeReason,
    },
}

impl From<Message<'_>> for Msg {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Call { id, method, args } => Self::Call {
                id,
                method: method.into(),
                args: args.into(),
            },
            Message::Reply { id, result } => Self::Reply {
                id,
                result: result.into(),
            },
            Message::Error { id, code, message } => Self::Error {
                id,
                code,
                message: message.into(),
            },
            Message::Notify { method, args } => Self::Notify {
                method: method.into(),
                args: args.into(),
            },
            Message::Ping { nonce } => Self::Ping { nonce },
            Message::Pong { nonce } => Self::Pong { nonce },
            Message::Goodbye { reason } => Self::Goodbye { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_splitmix64() {
        // splitmix64's reference output for seed 0.
        let mut rng = TestRng(0);
        assert_eq!(rng.try_next_u64().unwrap(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.try_next_u64().unwrap(), 0x6e78_9e6a_a1b9_65f4);
        let mut bytes = [0u8; 11];
        TestRng(0).try_fill_bytes(&mut bytes).unwrap();
        assert_eq!(bytes[..8], 0xe220_a839_7b1d_cdafu64.to_le_bytes());
    }

    #[test]
    fn messages_convert_field_by_field() {
        let m = Message::Error {
            id: 7,
            code: ErrorCode::BUSY,
            message: "busy",
        };
        assert_eq!(
            Msg::from(m),
            Msg::Error {
                id: 7,
                code: ErrorCode::BUSY,
                message: "busy".into()
            }
        );
    }
}
