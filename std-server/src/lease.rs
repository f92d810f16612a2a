//! Buffers lent to a connection only while bytes are in flight.
//!
//! An idle session holds no read or write buffer: its receive storage
//! ([`RxStorage`]) takes one from the pool when a frame's body starts to
//! arrive and gives it back once the frame is handled; the read-ahead and
//! the write batch do the same around each read and each write. The pool
//! is per worker thread (no lock) and small: it keeps a few buffers warm
//! for the sessions that are busy at the moment, not one per session.

use std::cell::RefCell;

/// Buffers kept per thread at most; more are freed.
const POOL_DEPTH: usize = 32;
/// Buffers larger than this are freed rather than pooled.
const POOL_MAX_BUFFER: usize = 128 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of at least `len` bytes (its length is exactly `len`).
pub(crate) fn take(len: usize) -> Vec<u8> {
    let pooled = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|b| b.capacity() >= len)?;
        Some(p.swap_remove(i))
    });
    let mut buf = pooled.unwrap_or_default();
    // The pool's buffers were zeroed up to their length once; resizing
    // touches only what is new.
    buf.resize(len, 0);
    buf
}

/// Gives a buffer back to this thread's pool.
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > POOL_MAX_BUFFER {
        return;
    }
    // Keep it initialised (no unsafe code): its whole capacity is zeroed
    // or holds old bytes, either is fine for the next taker's reads.
    let cap = buf.capacity();
    buf.resize(cap, 0);
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_DEPTH {
            p.push(buf);
        }
    });
}

/// Zeroes standing in for the bytes of storage that is not lent: what a
/// frame decoder reads of its storage while idle is only its length.
static ZEROS: [u8; u16::MAX as usize] = [0; u16::MAX as usize];

/// A frame decoder's body storage of a fixed size, held only while a
/// frame's body is being received or handled: writing to it
/// ([`AsMut`]) borrows a buffer from the pool, [`release`](Self::release)
/// gives it back.
#[derive(Debug, Default)]
pub(crate) struct RxStorage {
    size: usize,
    buf: Option<Vec<u8>>,
}

impl RxStorage {
    /// Storage of `size` bytes (at most 65,535), nothing lent yet.
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size: size.min(ZEROS.len()),
            buf: None,
        }
    }

    /// Gives the buffer back (its bytes are no longer needed).
    pub(crate) fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            give(buf);
        }
    }
}

impl AsRef<[u8]> for RxStorage {
    fn as_ref(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => buf,
            None => &ZEROS[..self.size],
        }
    }
}

impl AsMut<[u8]> for RxStorage {
    fn as_mut(&mut self) -> &mut [u8] {
        let size = self.size;
        self.buf.get_or_insert_with(|| take(size))
    }
}

impl Drop for RxStorage {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_lent_on_write_and_keeps_its_size() {
        let mut s = RxStorage::new(8192);
        assert_eq!(s.as_ref().len(), 8192);
        assert!(s.buf.is_none());
        s.as_mut()[0] = 7;
        assert_eq!(s.as_ref()[0], 7);
        s.release();
        assert!(s.buf.is_none());
        assert_eq!(s.as_ref().len(), 8192);
        // The pool hands the same buffer out again.
        assert_eq!(take(100).len(), 100);
    }
}
