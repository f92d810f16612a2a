//! Reconnect delays: exponential backoff with jitter, honouring the
//! server's `retry_after_secs`. Runtime-independent (the embassy helper uses
//! it; a host loop can too).

use core::time::Duration;

use tether_core::rand_core::Rng;

use crate::error::Error;
use crate::session::ms;

/// Exponential backoff with "equal jitter": the n-th consecutive failure
/// waits a random time in `[d/2, d]` with `d = min(initial * 2^(n-1), max)`,
/// so a fleet of devices that lost the server together does not return in
/// lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    current_ms: u64,
}

impl Default for Backoff {
    /// 1 s doubling up to 60 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Backoff {
    /// Backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial_ms = ms(initial).max(1);
        Self {
            initial_ms,
            max_ms: ms(max).max(initial_ms),
            current_ms: initial_ms,
        }
    }

    /// After a success: the next failure waits about `initial` again.
    pub fn reset(&mut self) {
        self.current_ms = self.initial_ms;
    }

    /// The delay before the next attempt, at least `floor` (the server's
    /// retry-after); doubles the base for the attempt after.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R, floor: Duration) -> Duration {
        Duration::from_millis(self.next_delay_ms(rng, ms(floor)))
    }

    /// [`next_delay`](Self::next_delay) in milliseconds.
    pub(crate) fn next_delay_ms<R: Rng + ?Sized>(&mut self, rng: &mut R, floor_ms: u64) -> u64 {
        let d = self.current_ms;
        self.current_ms = d.saturating_mul(2).min(self.max_ms);
        let half = d / 2;
        let jitter = if half == 0 {
            0
        } else {
            rng.next_u64() % (half + 1)
        };
        (d - half + jitter).max(floor_ms)
    }
}

/// What to do after a failed login or a lost session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the backoff delay (at least this long: the server's
    /// `retry_after_secs`, or zero).
    Later(Duration),
    /// Do not retry: the account, the server or the firmware must change
    /// (`unauthorized`, `unsupported`, `version`, `protocol` refusals, cached
    /// keys that no longer fit without a password, buffers too small).
    Never,
}

impl<E> Error<E> {
    /// The reconnect policy for this error: [`Retry::Never`] for what
    /// retrying cannot fix, otherwise [`Retry::Later`] with the server's
    /// `retry_after_secs` as the floor (`throttled`, `unavailable`, `busy`).
    pub fn retry(&self) -> Retry {
        if self.is_transient() {
            Retry::Later(Duration::from_secs(
                self.retry_after_secs().unwrap_or(0).into(),
            ))
        } else {
            Retry::Never
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seq(u64);
    impl tether_core::rand_core::TryRng for Seq {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.try_next_u64()? as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Ok(self.0 >> 11)
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), Self::Error> {
            d.fill(0);
            Ok(())
        }
    }

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_honours_the_floor() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut rng = Seq(1);
        let mut bases = [0u64; 6];
        for base in &mut bases {
            let d = b.next_delay(&mut rng, Duration::ZERO).as_millis() as u64;
            *base = d;
        }
        for (d, cap) in bases.iter().zip([1000, 2000, 4000, 8000, 8000, 8000]) {
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d} not in [{}, {cap}]",
                cap / 2
            );
        }
        assert_eq!(
            b.next_delay(&mut rng, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        b.reset();
        assert!(b.next_delay(&mut rng, Duration::ZERO) <= Duration::from_secs(1));
    }

    #[test]
    fn retry_policy_follows_the_refusal_code() {
        use tether_core::message::RefusalCode as C;
        let refused = |code, secs| Error::<()>::Refused {
            code,
            retry_after_secs: secs,
        };
        assert_eq!(refused(C::Unauthorized, 0).retry(), Retry::Never);
        assert_eq!(refused(C::Unsupported, 0).retry(), Retry::Never);
        assert_eq!(refused(C::Version, 0).retry(), Retry::Never);
        assert_eq!(
            refused(C::Throttled, 30).retry(),
            Retry::Later(Duration::from_secs(30))
        );
        assert_eq!(
            refused(C::Unavailable, 0).retry(),
            Retry::Later(Duration::ZERO)
        );
        assert_eq!(
            refused(C::Busy, 5).retry(),
            Retry::Later(Duration::from_secs(5))
        );
        assert_eq!(
            Error::<()>::Disconnected.retry(),
            Retry::Later(Duration::ZERO)
        );
        assert_eq!(
            Error::<()>::Login(tether_core::scram::ScramError::CachedKeysMismatch).retry(),
            Retry::Never
        );
    }
}
