//! The transport and the clock: where the session's bytes are read and
//! written, and its time is read. No protocol here.

use embassy_futures::select::{Either, select};
use embedded_io_async::{ReadReady, Write};
use tether_core::connection::Instant;

use crate::clock::Clock;
use crate::error::{Error, TimeoutKind};

/// A transport, its clock, and what is written but held back.
pub(crate) struct Io<T, C> {
    pub(crate) transport: T,
    pub(crate) clock: C,
    pub(crate) write_timeout_ms: u64,
    /// Written but not flushed: answers to a burst of frames leave together
    /// once no more input waits.
    pub(crate) unflushed: bool,
}

impl<T: Write + ReadReady, C: Clock> Io<T, C> {
    pub(crate) fn now(&self) -> Instant {
        Instant::from_millis(self.clock.now_ms())
    }

    /// Writes `frame` whole (nothing: only what is held back), then flushes
    /// unless `flush` is false and more input is already received (the
    /// answers to a burst of frames leave together: on a host, one system
    /// call instead of one per frame). At most the write timeout.
    pub(crate) async fn send(
        &mut self,
        mut frame: &[u8],
        flush: bool,
    ) -> Result<(), Error<T::Error>> {
        let flush = flush || !self.transport.read_ready().unwrap_or(false);
        if frame.is_empty() && !(flush && self.unflushed) {
            return Ok(());
        }
        let deadline = self.clock.now_ms().saturating_add(self.write_timeout_ms);
        let transport = &mut self.transport;
        let write = async {
            while !frame.is_empty() {
                match transport.write(frame).await {
                    Ok(0) => return Err(Error::Disconnected),
                    // (`n` <= `frame.len()`; `get` flashes no panic path.)
                    Ok(n) => frame = frame.get(n..).unwrap_or_default(),
                    Err(e) => return Err(Error::Transport(e)),
                }
            }
            if flush {
                transport.flush().await.map_err(Error::Transport)?;
            }
            Ok(())
        };
        match select(write, self.clock.sleep_until_ms(deadline)).await {
            Either::First(r) => r?,
            Either::Second(()) => return Err(Error::Timeout(TimeoutKind::Write)),
        }
        self.unflushed = !flush;
        Ok(())
    }
}
