//! The two buffers a session works in, provided by the application.

/// The two buffers a session works in, provided by the application (a
/// `static`, a task's locals, or a [`BufferStore`]). Their sizes are the
/// client's main RAM cost:
///
/// | buffer | holds | size |
/// |---|---|---|
/// | `rx` | one received frame body | at least 512 bytes; its length (up to 65535) is the largest frame the device announces and accepts |
/// | `tx` | one frame being sent: its 2-byte length, 8-byte sequence number, message and 16-byte tag | 512 is plenty for the handshake; a call needs 26 + 13 + method name + arguments |
///
/// Arguments of calls and notifications, and the answers the handler
/// writes, are encoded straight into their place in `tx`: no third buffer,
/// no copy. The session itself adds about 600 bytes on a 64-bit host, less
/// on 32-bit (two HMAC-SHA-256 states, the call table, the timers).
#[derive(Debug)]
pub struct Buffers<'b> {
    /// Receive buffer: one frame body.
    pub rx: &'b mut [u8],
    /// Transmit buffer: one whole frame.
    pub tx: &'b mut [u8],
}

/// Owned buffers of fixed sizes, for a `static` (with `static_cell`) or a
/// task's state: `RX + TX` bytes.
///
/// ```
/// use tether_firmware::BufferStore;
/// let mut store: BufferStore = BufferStore::new(); // 512 + 512 bytes
/// let buffers = store.buffers();
/// assert_eq!(buffers.rx.len(), 512);
/// ```
#[derive(Debug)]
pub struct BufferStore<const RX: usize = 512, const TX: usize = 512> {
    rx: [u8; RX],
    tx: [u8; TX],
}

impl<const RX: usize, const TX: usize> BufferStore<RX, TX> {
    /// Zeroed buffers (usable in a `static` initializer).
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
        }
    }

    /// Borrows the buffers for a session.
    pub fn buffers(&mut self) -> Buffers<'_> {
        Buffers {
            rx: &mut self.rx,
            tx: &mut self.tx,
        }
    }
}

impl<const RX: usize, const TX: usize> Default for BufferStore<RX, TX> {
    fn default() -> Self {
        Self::new()
    }
}
