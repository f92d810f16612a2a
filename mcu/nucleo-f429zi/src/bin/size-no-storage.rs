//! `./size`'s no-storage variant: the example with its keys kept in RAM
//! only (every boot starts from `USERNAME`/`PASSWORD`). The example minus
//! this is what keeping them in flash costs: tether-firmware's `KeyStore`,
//! sequential-storage and the flash driver.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use board::KeyFlash;
use tether_core::scram::CachedKeys;
use tether_firmware::storage::Stored;

// The example's application, board bring-up (its `main` runs
// `device_main`) and settings.
#[path = "../app.rs"]
mod app;
#[path = "../board.rs"]
mod board;
#[path = "../settings.rs"]
mod settings;

use app::device_main;

/// Keys kept nowhere.
type Store = ();

impl app::Keys for Store {
    async fn open(_flash: KeyFlash) -> (Self, Option<Stored>) {
        ((), None)
    }
    async fn save(&mut self, _username: &str, _keys: &CachedKeys) {}
    async fn forget(&mut self) {}
}
