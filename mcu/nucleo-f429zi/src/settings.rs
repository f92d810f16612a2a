//! The example's settings: the server, the account, the protocol. Edit
//! these for your deployment.

use tether_firmware::Config;

/// The Tether server's name (a dotted IPv4 address works too) and port.
pub const SERVER_NAME: &str = "tether.example.com";
pub const SERVER_PORT: u16 = tether_core::frame::DEFAULT_PORT;
/// The account used when the flash holds none (development only: a
/// provisioned device reads its username and keys from `KEY_REGION`).
pub const USERNAME: &str = "sensor-7";
/// The password for a first login when the flash holds no keys; `None` for
/// a device provisioned at the factory (the password never reaches it).
pub const PASSWORD: Option<&str> = Some("change me");
/// Protocol v2 (feature `v2`): the server's static public key, pinned
/// (`tether keys --server` prints it): the login runs Noise_NK and every
/// frame is encrypted. Replace it with your server's.
#[cfg(feature = "v2")]
pub const SERVER_KEY: [u8; 32] = [
    0x8f, 0x40, 0xc5, 0xad, 0xb6, 0x8f, 0x25, 0x62, 0x4a, 0xe5, 0xb2, 0x14, 0xea, 0x76, 0x7a, 0x6e,
    0xc9, 0x4d, 0x82, 0x9d, 0x3d, 0x7b, 0x5e, 0x1a, 0xd1, 0xba, 0x6f, 0x3e, 0x21, 0x38, 0x28, 0x5f,
];

/// The client's settings, in flash: Django 4.2's iteration floor;
/// with feature `v2`, protocol v2 towards the pinned server key.
#[cfg(not(feature = "v2"))]
pub static CONFIG: Config = Config::new().with_min_iterations(600_000);
#[cfg(feature = "v2")]
pub static CONFIG: Config = Config::new()
    .with_min_iterations(600_000)
    .with_server_key(SERVER_KEY);
