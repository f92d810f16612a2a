//! PBKDF2's cost per iteration on a Cortex-M, as instructions: derives
//! SCRAM-SHA-256 keys (what a device does at its first login) with
//! `ITERATIONS[i]` iterations between calls to `count_start` and
//! `count_stop`; the QEMU plugin `mcu/noise-size/insn-count.c` counts the
//! instructions between them (`scripts/mcu pbkdf2` runs it). The difference
//! of two runs divided by the difference of their iteration counts is the
//! cost of one iteration, without the fixed part.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::hint::black_box;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use tether_core::scram::{CachedKeys, Mechanism};

use cortex_m as _;

const ITERATIONS: [u32; 2] = [1_000, 3_000];

/// Marker: counting starts when this is entered.
#[inline(never)]
fn count_start() {
    black_box(1u32);
}

/// Marker: the count since `count_start` is printed when this is entered.
#[inline(never)]
fn count_stop() {
    black_box(2u32);
}

#[entry]
fn main() -> ! {
    for n in ITERATIONS {
        count_start();
        let keys = CachedKeys::derive(
            Mechanism::ScramSha256,
            black_box("correct horse battery staple"),
            black_box(b"W8ZxHXvUYrZMB2ce3tJeqs"),
            black_box(n),
        );
        count_stop();
        black_box(&keys);
        hprintln!("pbkdf2-cost: derived keys with {} iterations", n);
    }
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}
