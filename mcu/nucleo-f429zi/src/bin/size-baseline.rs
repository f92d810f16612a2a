//! `./size`'s baseline: the example's board, DHCP, DNS lookup, logging and
//! TCP socket with a plain TCP exchange instead of Tether. The example
//! minus this is tether-firmware + tether-core + the example's application.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

// The example's board bring-up (its `main` runs `device_main`) and settings.
#[path = "../board.rs"]
mod board;
#[allow(dead_code)] // the account and the protocol settings
#[path = "../settings.rs"]
mod settings;
#[path = "shared/plain_tcp.rs"]
mod plain_tcp;

use plain_tcp::device_main;

/// Nothing done with the bytes received.
fn received(_rng: &mut board::Trng, _buf: &[u8; 64], _n: usize) {}
