//! Factory provisioning: writes a device's username and keys into the key
//! store's flash format (`tether_firmware::storage`), as an image to flash
//! at the key region's address. The password never reaches the device: the
//! keys come from `tether keys`, run on a host against the Django database.
//!
//! ```sh
//! tether keys --user sensor-7 --database sqlite:db.sqlite3 --format postcard > sensor-7.hex
//! cargo run -p tether-firmware --features std,storage --example provision -- \
//!     --board nucleo-f429zi --user sensor-7 --keys "$(cat sensor-7.hex)" --out sensor-7.bin
//! # then the command it prints, e.g.
//! probe-rs download --chip STM32F429ZITx --binary-format bin --base-address 0x081c0000 sensor-7.bin
//! ```
//!
//! The image is the whole key region (erased pages around one record), built
//! with the same `KeyStore` code the firmware reads it with, and read back
//! before it is written out. `--board` picks the region of one of the
//! examples in mcu/ (their `KEY_REGION`); `--write-size`, `--erase-size`,
//! `--pages` and `--address` describe any other flash.

use std::process::ExitCode;

use embassy_futures::block_on;
use tether_core::scram::CachedKeys;
use tether_firmware::storage::{KeyStore, RamFlash};

/// A board's key region: the flash geometry of its driver and where the
/// region starts (as an absolute address for the flasher).
struct Region {
    write_size: usize,
    erase_size: usize,
    pages: usize,
    address: u32,
    /// How to write the image on this board (`{file}`, `{address}`).
    flash_with: &'static str,
}

/// The examples' key regions; each firmware has the same numbers as
/// `KEY_REGION` in its `src/main.rs`.
fn board(name: &str) -> Option<Region> {
    Some(match name {
        // Bank 2's last two 128 KiB sectors (22, 23): code runs from bank 1,
        // so writing keys never stalls it. embassy-stm32: 4-byte writes.
        "nucleo-f429zi" => Region {
            write_size: 4,
            erase_size: 128 * 1024,
            pages: 2,
            address: 0x081C_0000,
            flash_with: "probe-rs download --chip STM32F429ZITx --binary-format bin --base-address {address} {file}",
        },
        // The last two 4 KiB sectors of the ESP32-C3's 4 MiB flash (beyond
        // the partition table's app and data partitions).
        "esp32c3" => Region {
            write_size: 4,
            erase_size: 4096,
            pages: 2,
            address: 0x003F_E000,
            flash_with: "espflash write-bin {address} {file}",
        },
        _ => return None,
    })
}

fn usage() -> &'static str {
    "usage: provision --user NAME --keys HEX --out FILE \
     (--board nucleo-f429zi|esp32c3 | --write-size N --erase-size N --pages N --address ADDR)\n\
     HEX is `tether keys --format postcard`'s output."
}

fn parse_number(flag: &str, s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    parsed.map_err(|_| format!("{flag}: {s:?} is not a number"))
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err("--keys: odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                .map_err(|_| format!("--keys: not hex at character {i}"))
        })
        .collect()
}

/// Builds the image on flash of this geometry: one record, read back.
fn image<const W: usize, const E: usize>(
    pages: usize,
    user: &str,
    keys: &CachedKeys,
) -> Result<Vec<u8>, String> {
    let flash = RamFlash::<W, E>::new(pages);
    let mut store = KeyStore::new(flash, 0..(pages * E) as u32).map_err(|e| e.to_string())?;
    block_on(store.save(user, Some(keys))).map_err(|e| e.to_string())?;
    let back = block_on(store.load()).map_err(|e| e.to_string())?;
    match back {
        Some(s) if s.username.as_str() == user && s.keys.as_ref() == Some(keys) => {}
        _ => return Err("the image did not read back as written".into()),
    }
    Ok(store.into_inner().as_bytes().to_vec())
}

/// The flash geometries the tool knows (sizes are the drivers' constants).
fn image_for(region: &Region, user: &str, keys: &CachedKeys) -> Result<Vec<u8>, String> {
    macro_rules! geometries {
        ($(($w:literal, $e:literal)),* $(,)?) => {
            match (region.write_size, region.erase_size) {
                $(($w, $e) => image::<$w, $e>(region.pages, user, keys),)*
                (w, e) => Err(format!(
                    "no flash of {w}-byte writes and {e}-byte pages here; known: {}",
                    [$(concat!(stringify!($w), "/", stringify!($e))),*].join(", ")
                )),
            }
        };
    }
    geometries!(
        (1, 4096),
        (4, 4096),
        (4, 16384),
        (4, 131072),
        (8, 2048),
        (8, 4096),
        (16, 8192),
        (32, 131072),
        (256, 4096),
    )
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    let user = get("--user").ok_or("--user is required")?;
    let keys_hex = get("--keys").ok_or("--keys is required")?;
    let out = get("--out").ok_or("--out is required")?;
    let mut region = match get("--board") {
        Some(name) => board(&name).ok_or_else(|| format!("--board: no board {name:?}"))?,
        None => Region {
            write_size: 0,
            erase_size: 0,
            pages: 2,
            address: 0,
            flash_with: "flash {file} at {address}",
        },
    };
    if let Some(v) = get("--write-size") {
        region.write_size = parse_number("--write-size", &v)? as usize;
    }
    if let Some(v) = get("--erase-size") {
        region.erase_size = parse_number("--erase-size", &v)? as usize;
    }
    if let Some(v) = get("--pages") {
        region.pages = parse_number("--pages", &v)? as usize;
    }
    if let Some(v) = get("--address") {
        region.address = u32::try_from(parse_number("--address", &v)?)
            .map_err(|_| "--address: beyond 32 bits")?;
    }
    if region.write_size == 0 || region.erase_size == 0 {
        return Err("give --board, or --write-size and --erase-size".into());
    }
    if region.pages < 2 {
        return Err("--pages: the key store needs at least 2".into());
    }
    let raw = decode_hex(&keys_hex)?;
    let keys: CachedKeys = tether_core::message::decode(&raw)
        .map_err(|e| format!("--keys: not `tether keys --format postcard` output ({e:?})"))?;
    if !keys.mechanism.is_enabled() {
        return Err("--keys: SCRAM-SHA-1 keys; build with the sha1 feature".into());
    }
    let bytes = image_for(&region, &user, &keys)?;
    std::fs::write(&out, &bytes).map_err(|e| format!("{out}: {e}"))?;
    let address = format!("{:#010x}", region.address);
    eprintln!(
        "{out}: {} bytes, key region for {user} ({} iterations); write it with:",
        bytes.len(),
        keys.iterations
    );
    println!(
        "{}",
        region
            .flash_with
            .replace("{address}", &address)
            .replace("{file}", &out)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provision: {e}\n{}", usage());
            ExitCode::FAILURE
        }
    }
}
