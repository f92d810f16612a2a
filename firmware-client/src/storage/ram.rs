//! NOR flash in RAM (features `storage` + `std`): for host tools that build
//! a flash image (factory provisioning) and for tests that cut the power.
//!
//! It behaves as NOR flash does: erased bytes read `0xFF`, a write can only
//! clear bits, an erase sets a whole page back to `0xFF`. Each written word
//! and each erased page is one *step*; [`RamFlash::schedule`] makes the
//! power fail at a given step, either before it starts or half-way through
//! it (a word half programmed, a page half erased), after which every
//! operation fails until [`RamFlash::power_on`].

use std::vec::Vec;

use embedded_storage_async::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Where a scheduled power failure strikes, counting steps (words written,
/// pages erased) from the last [`RamFlash::power_on`] or [`RamFlash::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Steps `0..n` complete, step `n` never starts.
    Before(u64),
    /// Steps `0..n` complete, step `n` is torn: half of the word's bits
    /// programmed, or the first half of the page erased.
    Torn(u64),
}

/// Why a [`RamFlash`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// The power failed (scheduled by [`RamFlash::schedule`]); nothing works
    /// until [`RamFlash::power_on`].
    PowerCut,
    /// Offset or length not a multiple of the write or erase size.
    NotAligned,
    /// Beyond the end of the flash.
    OutOfBounds,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::PowerCut => NorFlashErrorKind::Other,
            Self::NotAligned => NorFlashErrorKind::NotAligned,
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

/// NOR flash of `WRITE`-byte words and `ERASE`-byte pages, in RAM.
#[derive(Debug, Clone)]
pub struct RamFlash<const WRITE: usize, const ERASE: usize> {
    data: Vec<u8>,
    steps: u64,
    cut: Option<PowerCut>,
    off: bool,
}

impl<const WRITE: usize, const ERASE: usize> RamFlash<WRITE, ERASE> {
    /// Erased flash of `pages` pages.
    pub fn new(pages: usize) -> Self {
        Self::from_image(std::vec![0xFF; pages * ERASE])
    }

    /// Flash holding `image` (a whole number of pages).
    ///
    /// # Panics
    /// If `image` is not a whole number of pages.
    pub fn from_image(image: Vec<u8>) -> Self {
        assert!(
            image.len().is_multiple_of(ERASE),
            "a flash image is whole pages"
        );
        Self {
            data: image,
            steps: 0,
            cut: None,
            off: false,
        }
    }

    /// The contents.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The contents, mutably (to flip bits in a test).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Steps taken since power-on: the number of places a power cut can
    /// strike in the operations done so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Makes the power fail at `cut` (steps counted since power-on).
    pub fn schedule(&mut self, cut: PowerCut) {
        self.cut = Some(cut);
    }

    /// Whether the power has failed.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// A reboot: power back, no cut scheduled, steps counted from zero.
    pub fn power_on(&mut self) {
        self.off = false;
        self.cut = None;
        self.steps = 0;
    }

    /// Takes one step: `Ok(true)` to do it whole, `Ok(false)` to tear it
    /// (the power fails after), `Err` when the power is already gone.
    fn step(&mut self) -> Result<bool, RamFlashError> {
        if self.off {
            return Err(RamFlashError::PowerCut);
        }
        let n = self.steps;
        self.steps += 1;
        match self.cut {
            Some(PowerCut::Before(at)) if at == n => {
                self.off = true;
                Err(RamFlashError::PowerCut)
            }
            Some(PowerCut::Torn(at)) if at == n => Ok(false),
            _ => Ok(true),
        }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, RamFlashError> {
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(RamFlashError::NotAligned);
        }
        match start.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(start),
            _ => Err(RamFlashError::OutOfBounds),
        }
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for RamFlash<WRITE, ERASE> {
    type Error = RamFlashError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for RamFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        if self.off {
            return Err(RamFlashError::PowerCut);
        }
        let start = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.data[start..start + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for RamFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let start = self.check(offset, bytes.len(), WRITE)?;
        for (i, word) in bytes.chunks(WRITE).enumerate() {
            let at = start + i * WRITE;
            let whole = self.step()?;
            let cell = &mut self.data[at..at + WRITE];
            for (j, (c, b)) in cell.iter_mut().zip(word).enumerate() {
                // NOR programming only clears bits. A torn word has only
                // its first half programmed, and its middle byte only half.
                let mask = match (whole, (2 * j).cmp(&WRITE)) {
                    (true, _) | (false, core::cmp::Ordering::Less) => 0x00,
                    (false, core::cmp::Ordering::Equal) => 0xF0,
                    (false, core::cmp::Ordering::Greater) => 0xFF,
                };
                *c &= *b | mask;
            }
            if !whole {
                self.off = true;
                return Err(RamFlashError::PowerCut);
            }
        }
        Ok(())
    }

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        let len = (to as usize)
            .checked_sub(from as usize)
            .ok_or(RamFlashError::OutOfBounds)?;
        let start = self.check(from, len, ERASE)?;
        for page in (start..start + len).step_by(ERASE) {
            if self.step()? {
                self.data[page..page + ERASE].fill(0xFF);
            } else {
                self.data[page..page + ERASE / 2].fill(0xFF);
                self.off = true;
                return Err(RamFlashError::PowerCut);
            }
        }
        Ok(())
    }
}
