//! Protocol v2's Noise initiator on a Cortex-M4 (QEMU mps2-an386): the
//! device side of docs/PROTOCOL.md's v2 draft vectors, for measuring.
//!
//! - `--features nk`: `Noise_NK` with the pinned server key: writes frame 1
//!   (the Hello encrypted), reads frame 2 (the Challenge), opens the
//!   server's Welcome frame and seals the call frame;
//! - `--features nn`: `Noise_NN`: frames 1 and 2, seals the Hello frame and
//!   opens the Challenge frame;
//! - neither: the baseline, the same I/O and the same constants without
//!   Noise, so that `size` reports the flash Noise adds.
//!
//! Every output is compared with the draft's vectors; QEMU exits 0 only if
//! all matched. The stack below `main` is painted first and the high-water
//! mark printed. `noise_measure_begin` / `noise_measure_end` bracket the
//! handshake for an instruction-counting QEMU plugin (see ./size).
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};

#[allow(dead_code)]
mod vectors;

#[entry]
fn main() -> ! {
    stack::paint();
    // Called through black_box'd pointers: never inlined, always present.
    black_box(noise_measure_begin as extern "C" fn())();
    let ok = run();
    black_box(noise_measure_end as extern "C" fn())();
    let used = stack::high_water();
    hprintln!("{} ok={} stack={}", variant(), ok, used);
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {}
}

// The markers' bodies differ, or the linker folds them into one function.
#[inline(never)]
#[unsafe(no_mangle)]
extern "C" fn noise_measure_begin() {
    black_box(0x6265_6769_u32);
}

#[inline(never)]
#[unsafe(no_mangle)]
extern "C" fn noise_measure_end() {
    black_box(0x656e_6400_u32);
}

fn variant() -> &'static str {
    if cfg!(feature = "nk") {
        "nk"
    } else if cfg!(feature = "nn") {
        "nn"
    } else {
        "baseline"
    }
}

/// The baseline touches every constant the handshakes use.
#[cfg(not(any(feature = "nn", feature = "nk")))]
#[inline(never)]
fn run() -> bool {
    use vectors::*;
    let mut x = 0u8;
    for v in [
        &SERVER_PUBLIC[..],
        &DEVICE_EPHEMERAL,
        NK_HELLO,
        NK_MSG1,
        NK_MSG2,
        NK_WELCOME,
        NK_CALL_PLAIN,
        NK_CALL,
        NN_MSG1,
        NN_MSG2,
        NN_HELLO,
        NN_CHALLENGE,
    ] {
        for b in black_box(v) {
            x ^= b;
        }
    }
    black_box(x) != 1
}

#[cfg(any(feature = "nn", feature = "nk"))]
#[inline(never)]
fn run() -> bool {
    handshake::run()
}

#[cfg(any(feature = "nn", feature = "nk"))]
mod handshake {
    use core::hint::black_box;

    use tether_core::noise::{Initiator, TAG_LEN, Transport};
    use tether_core::rand_core::{TryCryptoRng, TryRng};

    use super::vectors::*;

    /// Hands out the vector's ephemeral key (a device uses its TRNG).
    struct Fixed;

    impl TryRng for Fixed {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
            dest.copy_from_slice(black_box(&DEVICE_EPHEMERAL[..dest.len()]));
            Ok(())
        }
    }
    impl TryCryptoRng for Fixed {}

    fn prologue(pattern: u8) -> [u8; 10] {
        let mut p = *b"tether/2\x02\x00";
        p[9] = pattern;
        p
    }

    /// Seals `plain` as a v2 session frame body (seq || ciphertext || tag).
    fn seal<'b>(t: &mut Transport, plain: &[u8], out: &'b mut [u8]) -> Option<&'b [u8]> {
        out[..8].copy_from_slice(&t.send.nonce().to_be_bytes());
        out[8..8 + plain.len()].copy_from_slice(plain);
        let n = t.send.encrypt_with_ad(&[], &mut out[8..], plain.len()).ok()?;
        Some(&out[..8 + n])
    }

    /// Opens a v2 session frame body in place.
    fn open<'b>(t: &mut Transport, body: &'b mut [u8]) -> Option<&'b [u8]> {
        let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        if seq != t.recv.nonce() || body.len() < 8 + TAG_LEN {
            return None;
        }
        t.recv.decrypt_with_ad(&[], &mut body[8..]).ok().map(|p| &*p)
    }

    pub fn run() -> bool {
        let mut out = [0u8; 512];
        let mut buf = [0u8; 512];
        #[cfg(feature = "nk")]
        {
            let Ok((device, m1)) = Initiator::nk(&prologue(1), black_box(&SERVER_PUBLIC))
                .write_message(black_box(NK_HELLO), &mut out, &mut Fixed)
            else {
                return false;
            };
            if m1 != NK_MSG1 {
                return false;
            }
            buf[..NK_MSG2.len()].copy_from_slice(black_box(NK_MSG2));
            let Ok((mut t, challenge)) = device.read_message(&mut buf[..NK_MSG2.len()]) else {
                return false;
            };
            if challenge.first() != Some(&1) {
                return false;
            }
            let mut frame = [0u8; 128];
            frame[..NK_WELCOME.len()].copy_from_slice(black_box(NK_WELCOME));
            match open(&mut t, &mut frame[..NK_WELCOME.len()]) {
                Some(welcome) if welcome.first() == Some(&3) => {}
                _ => return false,
            }
            // The call is the device's second frame (the Proof was its first).
            t.send.set_nonce(1);
            seal(&mut t, black_box(NK_CALL_PLAIN), &mut out) == Some(NK_CALL)
        }
        #[cfg(all(feature = "nn", not(feature = "nk")))]
        {
            let Ok((device, m1)) =
                Initiator::nn(&prologue(0)).write_message(&[], &mut out, &mut Fixed)
            else {
                return false;
            };
            if m1 != NN_MSG1 {
                return false;
            }
            buf[..NN_MSG2.len()].copy_from_slice(black_box(NN_MSG2));
            let Ok((mut t, _)) = device.read_message(&mut buf[..NN_MSG2.len()]) else {
                return false;
            };
            if seal(&mut t, black_box(NK_HELLO), &mut out) != Some(NN_HELLO) {
                return false;
            }
            let mut frame = [0u8; 160];
            frame[..NN_CHALLENGE.len()].copy_from_slice(black_box(NN_CHALLENGE));
            matches!(open(&mut t, &mut frame[..NN_CHALLENGE.len()]), Some(c) if c.first() == Some(&1))
        }
    }
}

/// Stack painting: the measurement's only unsafe code (not in tether-core).
mod stack {
    const PAINT: u32 = 0xCAFE_F00D;

    unsafe extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }

    fn bottom() -> usize {
        (&raw const _stack_end) as usize
    }

    fn top() -> usize {
        (&raw const _stack_start) as usize
    }

    /// Fills the stack from its bottom to a little below the current frame.
    #[inline(never)]
    pub fn paint() {
        let sp = cortex_m::register::msp::read() as usize;
        let mut addr = bottom();
        while addr < sp - 64 {
            // SAFETY: [bottom, sp - 64) is this stack's unused part: nothing
            // lives there yet, and the linker reserves it (memory.x).
            unsafe { (addr as *mut u32).write_volatile(PAINT) };
            addr += 4;
        }
    }

    /// Bytes of stack used since `paint`, counted from the top.
    #[inline(never)]
    pub fn high_water() -> usize {
        let mut addr = bottom();
        // SAFETY: reads within the stack region (memory.x).
        while addr < top() && unsafe { (addr as *const u32).read_volatile() } == PAINT {
            addr += 4;
        }
        top() - addr
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
