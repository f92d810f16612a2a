//! Time: the one thing the client needs from the runtime besides bytes.
//!
//! Timeouts, heartbeats and reconnect delays are computed in milliseconds of
//! a monotonic [`Clock`] that the application passes in. The crate ships two:
//! [`TokioClock`] (feature `std`, for the host: `tether call`, tests) and
//! [`EmbassyClock`] (feature `embassy-time`, for firmware). Any other runtime
//! needs only `now_ms` and a sleep.

use core::future::Future;

/// A monotonic millisecond clock with an async sleep.
///
/// ```
/// use core::future::Future;
/// /// A clock for a runtime of your own: a tick counter and a timer future.
/// struct MyClock;
/// impl tether_firmware::Clock for MyClock {
///     fn now_ms(&self) -> u64 { 0 /* read your tick counter */ }
///     fn sleep_until_ms(&self, deadline_ms: u64) -> impl Future<Output = ()> {
///         async move { let _ = deadline_ms; /* await your timer */ }
///     }
/// }
/// ```
pub trait Clock {
    /// Milliseconds since an arbitrary fixed origin; never goes backwards.
    fn now_ms(&self) -> u64;

    /// Completes once [`now_ms`](Self::now_ms) has reached `deadline_ms`
    /// (at once if it already has). Dropping the future cancels the sleep.
    fn sleep_until_ms(&self, deadline_ms: u64) -> impl Future<Output = ()>;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }

    fn sleep_until_ms(&self, deadline_ms: u64) -> impl Future<Output = ()> {
        (**self).sleep_until_ms(deadline_ms)
    }
}

/// The [`Clock`] of a tokio runtime (`tokio::time`, so `tokio::time::pause`
/// works in tests). Milliseconds count from the clock's creation.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

#[cfg(feature = "std")]
impl TokioClock {
    /// A clock starting at 0 now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

#[cfg(feature = "std")]
impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn sleep_until_ms(&self, deadline_ms: u64) -> impl Future<Output = ()> {
        let at = self
            .origin
            .checked_add(core::time::Duration::from_millis(deadline_ms));
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => core::future::pending().await,
            }
        }
    }
}

/// A timer at `deadline_ms` (one copy of the conversion for every sleep).
#[cfg(feature = "embassy-time")]
#[inline(never)]
fn timer_at(deadline_ms: u64) -> embassy_time::Timer {
    let max = embassy_time::Instant::MAX.as_millis();
    embassy_time::Timer::at(embassy_time::Instant::from_millis(deadline_ms.min(max)))
}

/// The [`Clock`] of embassy-time (`embassy_time::Instant`, so the board's
/// time driver).
#[cfg(feature = "embassy-time")]
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbassyClock;

#[cfg(feature = "embassy-time")]
impl Clock for EmbassyClock {
    fn now_ms(&self) -> u64 {
        embassy_time::Instant::now().as_millis()
    }

    fn sleep_until_ms(&self, deadline_ms: u64) -> impl Future<Output = ()> {
        timer_at(deadline_ms)
    }
}
