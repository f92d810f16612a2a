//! A Tether device on a NUCLEO-F429ZI: the STM32F429ZI's Ethernet MAC (RMII,
//! LAN8742A PHY on the board) under embassy-net, and tether-firmware's
//! `embassy::Link` logging in to a Tether server and keeping the session:
//!
//! - gets its address by DHCP and finds the server by DNS (`SERVER_NAME`),
//!   again before every reconnection;
//! - logs in as the account kept in flash (`KEY_REGION`: username and keys,
//!   written at the factory by `firmware-client/examples/provision.rs`, or
//!   saved here after a first login), so that no reboot repeats PBKDF2 and
//!   a provisioned device never holds the password;
//! - on a first boot with `PASSWORD` and no keys in flash (feature
//!   `first-login`, on by default): `Link` probes
//!   the account's salt and iteration count, runs PBKDF2 with no connection
//!   open (a minute or more at Django's 1,000,000 iterations; progress is
//!   logged), logs in with the derived keys, and this example saves them;
//! - answers the server's calls: `device_info` (firmware, uptime), `echo`,
//!   and `set_led` (switches LD1, PB0);
//! - notifies the server `button` when the blue user button (PC13) is
//!   pressed, staying reachable while it waits (`serve_until`);
//! - reconnects with exponential backoff and jitter.
//!
//! Logs go out over RTT with defmt (`cargo run --release` under probe-rs).
//!
//! The files: `src/settings.rs` holds the server, the account and the
//! protocol (edit them); `src/board.rs` brings the board up (clocks,
//! Ethernet, DHCP) in `main`, then runs `device_main`, the application in
//! `src/app.rs`; this file puts them together and keeps the account's keys
//! in flash (`Store`). `src/bin/size-*.rs` are not part of the example:
//! they are the variants `./size` measures it against, on the same
//! `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use defmt::{info, warn};
use tether_core::scram::CachedKeys;
use tether_firmware::storage::{KeyStore, StorageError, Stored};

mod app;
mod board;
mod settings;

/// What runs once the board is up (`board`'s `main` calls it).
use app::device_main;
use board::KeyFlash;

/// The key store's region, as offsets into flash bank 2's 128 KiB sectors
/// (`Bank2Region3`, which starts at 0x0812_0000): its last two sectors,
/// 0x081C_0000..0x0820_0000. Code runs from bank 1, so saving keys never
/// stalls it. `provision --board nucleo-f429zi` writes the same region.
const KEY_REGION: core::ops::Range<u32> = 0x000A_0000..0x000E_0000;

/// The account and its keys are kept in flash, in `KEY_REGION`.
type Store = KeyStore<KeyFlash>;

impl app::Keys for Store {
    async fn open(flash: KeyFlash) -> (Self, Option<Stored>) {
        let mut store = match KeyStore::new(flash, KEY_REGION) {
            Ok(store) => store,
            Err(_) => defmt::panic!("KEY_REGION is not whole sectors of Bank2Region3"),
        };
        let stored = match store.load().await {
            Ok(stored) => stored,
            Err(e) => {
                warn!("key store: {}; using the built-in account", why(&e));
                None
            }
        };
        (store, stored)
    }

    async fn save(&mut self, username: &str, keys: &CachedKeys) {
        match KeyStore::save(self, username, Some(keys)).await {
            Ok(()) => info!("keys saved to flash: the next boot skips PBKDF2"),
            Err(e) => warn!("key store: {}", why(&e)),
        }
    }

    async fn forget(&mut self) {
        if let Err(e) = self.forget_keys().await {
            warn!("key store: {}", why(&e));
        }
    }
}

/// A key store error in a few words (tether-firmware's own defmt
/// formatting comes with its `defmt` feature, which ./size leaves off).
fn why<E>(e: &StorageError<E>) -> &'static str {
    match e {
        StorageError::Flash(_) => "flash error",
        StorageError::Corrupted => "region corrupted, erase and provision again",
        StorageError::UnknownFormat(_) => "record of another format",
        _ => "unusable record",
    }
}
