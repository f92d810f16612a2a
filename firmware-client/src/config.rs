//! Client settings.

use core::time::Duration;

use tether_core::connection::ClientConfig;
use tether_core::scram;

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The SCRAM checks: `min_iterations`, the fewest PBKDF2 iterations
    /// accepted from a server (default
    /// [`DEFAULT_MIN_ITERATIONS`](tether_core::scram::DEFAULT_MIN_ITERATIONS), 4096; a
    /// server asking for fewer is refused before the device sends a proof,
    /// so an impostor cannot make the proof cheap to attack; raise it to what
    /// your Django deployment uses: 600,000 for Django 4.2, 1,000,000 for
    /// 5.2), and `max_iterations`, the most (an impostor cannot pin the
    /// device in PBKDF2 for hours).
    pub scram: scram::ClientConfig,
    /// How long to wait for each handshake message of the server (default
    /// 10 s). PBKDF2 on the device does not count.
    pub handshake_timeout: Duration,
    /// Timeout of [`Session::call`](crate::Session::call) (default 10 s).
    pub call_timeout: Duration,
    /// How long writing one frame may take before the session is given up
    /// (default 10 s).
    pub write_timeout: Duration,
    /// The protocol a login speaks (feature `v2`; [`Protocol`]'s default:
    /// v1 on a device, v2 over `Noise_NN` on a host), or as configured
    /// with [`with_server_key`](Self::with_server_key) or
    /// [`with_unpinned_v2`](Self::with_unpinned_v2).
    #[cfg(feature = "v2")]
    pub protocol: Protocol,
}

/// The protocol a login speaks (feature `v2`; docs/PROTOCOL.md, "Protocol
/// version 2"). A v2 login never falls back to v1, nor from
/// [`Pinned`](Self::Pinned) to [`Unpinned`](Self::Unpinned): a refusal
/// ends it.
///
/// The default depends on the build. On a device (no feature `std`) it is
/// [`V1`](Self::V1), so that turning the feature `v2` on changes nothing
/// until a login is configured for v2 (the server's key is provisioned
/// with the firmware). On a host (feature `std`, which turns `v2` on:
/// `host::connect`, `tether call`) it is [`Unpinned`](Self::Unpinned):
/// encrypted unless configured otherwise, and
/// [`Pinned`](Self::Pinned) as soon as the server's key is known.
#[cfg(feature = "v2")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// Protocol v1: SCRAM and authenticated (not encrypted) frames; the
    /// username, method names, arguments and replies are readable on the
    /// wire. The default on a device.
    V1,
    /// Protocol v2 over `Noise_NK`, towards the server's static public key
    /// (32 bytes, `tether keys --server` prints it), pinned in the
    /// firmware: everything after the device's ephemeral key is encrypted,
    /// the username included, and only the holder of the key's private
    /// half can answer. A server holding another key refuses
    /// `unknown_key` ([`Error::Refused`](crate::Error::Refused), not
    /// transient); an impostor's answer fails
    /// ([`Error::Noise`](crate::Error::Noise)).
    Pinned([u8; 32]),
    /// Protocol v2 over `Noise_NN`: encrypted against an eavesdropper, but
    /// the server is **not authenticated before SCRAM**. An active
    /// attacker who answers the Noise handshake himself reads the hello
    /// (the username) and the proof, with which he can run an offline
    /// dictionary attack on the password; he still cannot complete the
    /// login (the server's signature needs the account's Django row), so
    /// the device stops there. Use it only until the server's key can be
    /// pinned. The default on a host.
    Unpinned,
}

#[cfg(feature = "v2")]
impl Default for Protocol {
    fn default() -> Self {
        Self::build_default()
    }
}

#[cfg(feature = "v2")]
impl Protocol {
    /// The default of this build (for [`Config::new`], a `const fn`).
    const fn build_default() -> Self {
        if cfg!(feature = "std") {
            Self::Unpinned
        } else {
            Self::V1
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The default settings, as a `const fn` (as are the `with_` methods):
    /// a device can keep its settings in flash, `static CONFIG: Config =
    /// Config::new().with_min_iterations(600_000);`, and lend them to
    /// `embassy::Link` (feature `embassy-net`; no copy in RAM, the pinned
    /// server key included).
    pub const fn new() -> Self {
        Self {
            scram: scram::ClientConfig {
                min_iterations: scram::DEFAULT_MIN_ITERATIONS,
                max_iterations: scram::DEFAULT_MAX_ITERATIONS,
            },
            handshake_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            #[cfg(feature = "v2")]
            protocol: Protocol::build_default(),
        }
    }

    /// These settings with another iteration floor.
    pub const fn with_min_iterations(mut self, min_iterations: u32) -> Self {
        self.scram.min_iterations = min_iterations;
        self
    }

    /// These settings with another handshake timeout.
    pub const fn with_handshake_timeout(self, handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            ..self
        }
    }

    /// These settings with another call timeout.
    pub const fn with_call_timeout(self, call_timeout: Duration) -> Self {
        Self {
            call_timeout,
            ..self
        }
    }

    /// These settings with another write timeout.
    pub const fn with_write_timeout(self, write_timeout: Duration) -> Self {
        Self {
            write_timeout,
            ..self
        }
    }

    /// These settings with protocol v2 over `Noise_NK` towards
    /// `server_key`, the server's static public key (feature `v2`; see
    /// [`Protocol::Pinned`]).
    #[cfg(feature = "v2")]
    pub const fn with_server_key(self, server_key: [u8; 32]) -> Self {
        self.with_protocol(Protocol::Pinned(server_key))
    }

    /// These settings with protocol v2 over `Noise_NN`, which does not
    /// authenticate the server before SCRAM (feature `v2`; see
    /// [`Protocol::Unpinned`]).
    #[cfg(feature = "v2")]
    pub const fn with_unpinned_v2(self) -> Self {
        self.with_protocol(Protocol::Unpinned)
    }

    /// These settings with another protocol (feature `v2`).
    #[cfg(feature = "v2")]
    pub const fn with_protocol(self, protocol: Protocol) -> Self {
        Self { protocol, ..self }
    }

    /// The connection machine's part of these settings.
    pub(crate) fn connection(&self) -> ClientConfig {
        ClientConfig::default()
            .with_scram(self.scram)
            .with_handshake_timeout(self.handshake_timeout)
    }
}
