//! Typed methods: one definition, shared by the device and the server, ties
//! a method name to its argument and reply types.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tether_core::method::Method;
//!
//! /// Reads a sensor on the device.
//! pub struct ReadSensor;
//! #[derive(Serialize, Deserialize)]
//! pub struct Reading { pub celsius: f32 }
//! impl Method for ReadSensor {
//!     const NAME: &'static str = "read_sensor";
//!     type Args<'a> = &'a str; // sensor name
//!     type Reply<'a> = Reading;
//! }
//!
//! // The device calls it; the server answers.
//! impl tether_core::method::ToServer for ReadSensor {}
//!
//! let mut buf = [0u8; 32];
//! let args = tether_core::method::encode_args::<ReadSensor>(&"outdoor", &mut buf).unwrap();
//! assert_eq!(tether_core::method::decode_args::<ReadSensor>(args).unwrap(), "outdoor");
//! ```

use serde::{Deserialize, Serialize};

use crate::message::{DecodeError, EncodeError, decode, encode};

/// A remote method: its name on the wire and the postcard types of its
/// arguments and reply (which may borrow from the frame).
pub trait Method {
    /// The method name carried in `Call`.
    const NAME: &'static str;
    /// The argument type.
    type Args<'a>: Serialize + Deserialize<'a>;
    /// The reply type.
    type Reply<'a>: Serialize + Deserialize<'a>;
}

/// A method the device calls and the server answers (device -> server).
///
/// The direction is part of the type: the device's `Session::call` and
/// `notify` (tether-firmware) and the server's `IncomingCall::args` and
/// `reply` (tether-server) take only `ToServer` methods, so a call the
/// wrong way does not compile. A method both sides answer implements both
/// [`ToServer`] and [`ToDevice`].
pub trait ToServer: Method {}

/// A method the server calls and the device answers (server -> device):
/// the server's `Mind::call` and `notify` and the device's `Request::args`
/// and `Responder::ok` take only these. See [`ToServer`].
pub trait ToDevice: Method {}

/// Encodes a method's arguments.
pub fn encode_args<'o, M: Method>(
    args: &M::Args<'_>,
    out: &'o mut [u8],
) -> Result<&'o mut [u8], EncodeError> {
    encode(args, out)
}

/// Decodes a method's arguments (the whole slice must be used).
pub fn decode_args<M: Method>(bytes: &[u8]) -> Result<M::Args<'_>, DecodeError> {
    decode(bytes)
}

/// Encodes a method's reply.
pub fn encode_reply<'o, M: Method>(
    reply: &M::Reply<'_>,
    out: &'o mut [u8],
) -> Result<&'o mut [u8], EncodeError> {
    encode(reply, out)
}

/// Decodes a method's reply (the whole slice must be used).
pub fn decode_reply<M: Method>(bytes: &[u8]) -> Result<M::Reply<'_>, DecodeError> {
    decode(bytes)
}

/// Methods every Tether server answers and the demo device serves.
pub mod builtin {
    use super::*;

    /// Returns its argument (both directions: the server answers it, and
    /// so do devices that serve it).
    pub struct Echo;
    impl Method for Echo {
        const NAME: &'static str = "echo";
        type Args<'a> = &'a str;
        type Reply<'a> = &'a str;
    }
    impl ToServer for Echo {}
    impl ToDevice for Echo {}

    /// Who the session is logged in as.
    pub struct WhoAmI;
    impl Method for WhoAmI {
        const NAME: &'static str = "whoami";
        type Args<'a> = ();
        type Reply<'a> = Identity<'a>;
    }
    impl ToServer for WhoAmI {}

    /// The authenticated identity of a session.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Identity<'a> {
        /// The Django user's primary key.
        pub user_id: i64,
        /// The Django username (USERNAME_FIELD).
        pub username: &'a str,
        /// The server's id for this session.
        pub session_id: u64,
        /// Whether the user is a Django superuser.
        pub is_superuser: bool,
    }

    /// The server's clock, in milliseconds since the Unix epoch.
    pub struct ServerTime;
    impl Method for ServerTime {
        const NAME: &'static str = "server_time";
        type Args<'a> = ();
        type Reply<'a> = u64;
    }
    impl ToServer for ServerTime {}

    /// Device -> answers the server: what firmware runs and for how long.
    pub struct DeviceInfo;
    impl Method for DeviceInfo {
        const NAME: &'static str = "device_info";
        type Args<'a> = ();
        type Reply<'a> = DeviceStatus<'a>;
    }
    impl ToDevice for DeviceInfo {}

    /// A device's self-description.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct DeviceStatus<'a> {
        /// Firmware name and version.
        pub firmware: &'a str,
        /// Seconds since boot.
        pub uptime_secs: u64,
    }
}
