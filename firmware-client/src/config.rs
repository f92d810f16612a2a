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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scram: scram::ClientConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// These settings with another iteration floor.
    pub fn with_min_iterations(mut self, min_iterations: u32) -> Self {
        self.scram.min_iterations = min_iterations;
        self
    }

    /// These settings with another handshake timeout.
    pub fn with_handshake_timeout(self, handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            ..self
        }
    }

    /// These settings with another call timeout.
    pub fn with_call_timeout(self, call_timeout: Duration) -> Self {
        Self {
            call_timeout,
            ..self
        }
    }

    /// These settings with another write timeout.
    pub fn with_write_timeout(self, write_timeout: Duration) -> Self {
        Self {
            write_timeout,
            ..self
        }
    }

    /// The connection machine's part of these settings.
    pub(crate) fn connection(&self) -> ClientConfig {
        ClientConfig::default()
            .with_scram(self.scram)
            .with_handshake_timeout(self.handshake_timeout)
    }
}
