//! tether-core on a Cortex-M4 under QEMU (skeleton: boots, prints, exits).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::panic::PanicInfo;

use cortex_m as _;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use tether_core as _;

#[entry]
fn main() -> ! {
    hprintln!("qemu-core-test: booted");
    if cfg!(feature = "selftest-panic") {
        panic!("selftest-panic: deliberate failure");
    }
    hprintln!("qemu-core-test: PASS");
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Any panic fails the run: report it and leave QEMU with a non-zero status.
#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("qemu-core-test: FAIL: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}
